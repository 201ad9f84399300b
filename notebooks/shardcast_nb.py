"""Helpers shared by the notebooks: where things are, and reading the store.

Settings come from the environment, with defaults for a person running the
notebooks by hand from a checkout:

- ``SHARDCAST_STORE``: the store (a directory or a ``file://`` URL);
  default ``out/demo/store``, which ``cargo run -- demo`` creates.
- ``SHARDCAST_SERVER``: ``host:port`` of ``shardcast serve``; default
  ``127.0.0.1:50051``, the server's own default.
- ``SHARDCAST_TOKEN``: bearer token, when the server was started with
  ``--token``.
- ``SHARDCAST_BIN``: the ``shardcast`` binary; default the newest of
  ``$CARGO_TARGET_DIR/{debug,release}/shardcast`` (``target/`` without it), then
  ``shardcast`` on ``PATH``.

Relative paths are taken from the current directory when they exist there,
else from the repository root (Jupyter runs a notebook in ``notebooks/``).

The store's rule that matters here: the live content is exactly the files
listed by the newest manifest, ``_manifest/<version>.json`` with the
largest version number. Older files stay on disk after a write replaces
them (until ``shardcast compact``), and a crashed write can leave files no
manifest names, so listing ``metrics/`` directly may double count rows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

REPO = Path(__file__).resolve().parent.parent
DEFAULT_STORE = "out/demo/store"
DEFAULT_SERVER = "127.0.0.1:50051"
KEY_COLUMNS = ["app", "shard_type", "metric", "series"]


def resolve_path(path: str | os.PathLike) -> Path:
    """`path`, from the current directory when it exists there, else from the repository root."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve()
    return (REPO / p).resolve()


def store_path() -> Path:
    """The store directory: ``$SHARDCAST_STORE`` or ``out/demo/store``."""
    raw = os.environ.get("SHARDCAST_STORE") or DEFAULT_STORE
    if raw.startswith("file://"):
        return Path(unquote(urlparse(raw).path))
    if "://" in raw:
        raise ValueError(
            f"SHARDCAST_STORE={raw}: these notebooks read local stores only "
            "(a directory or a file:// URL)"
        )
    return resolve_path(raw)


def server_address() -> str:
    """``host:port`` of the gRPC server: ``$SHARDCAST_SERVER`` or 127.0.0.1:50051."""
    return os.environ.get("SHARDCAST_SERVER") or DEFAULT_SERVER


def auth_metadata() -> list[tuple[str, str]]:
    """gRPC call metadata carrying ``$SHARDCAST_TOKEN``, when set."""
    token = os.environ.get("SHARDCAST_TOKEN")
    return [("authorization", f"Bearer {token}")] if token else []


def shardcast_bin() -> Path:
    """The ``shardcast`` binary (see the module docs for the search order)."""
    if os.environ.get("SHARDCAST_BIN"):
        return resolve_path(os.environ["SHARDCAST_BIN"])
    target = resolve_path(os.environ.get("CARGO_TARGET_DIR") or "target")
    built = [target / p / "shardcast" for p in ("debug", "release")]
    built = [p for p in built if p.is_file()]
    if built:
        return max(built, key=lambda p: p.stat().st_mtime)
    on_path = shutil.which("shardcast")
    if on_path:
        return Path(on_path)
    raise FileNotFoundError(
        "no shardcast binary: run `cargo build` at the repository root, or set SHARDCAST_BIN"
    )


def manifest_versions(store: Path) -> dict[int, Path]:
    """Every manifest of the store, by version.

    As the store does (``Store::manifest``): every object under
    ``_manifest/`` whose file name, without its ``.json`` suffix, parses as
    an unsigned 64-bit number is a manifest of that version (names are
    zero-padded, but the number decides, not the text); other names are
    ignored.
    """
    found = {}
    root = store / "_manifest"
    if root.is_dir():
        for p in root.rglob("*.json"):
            stem = p.name[: -len(".json")]
            if re.fullmatch(r"\+?[0-9]+", stem) and int(stem) < 2**64:
                found[int(stem)] = p
    return found


def newest_manifest(store: Path | None = None) -> dict:
    """The newest manifest as a dict (the empty store has version 0)."""
    store = store or store_path()
    if not store.is_dir():
        raise FileNotFoundError(
            f"no store at {store}: run `cargo run -- demo` at the repository root "
            "(it writes out/demo/store) or set SHARDCAST_STORE"
        )
    versions = manifest_versions(store)
    if not versions:
        return {"format": 1, "version": 0, "files": []}
    newest = versions[max(versions)]
    manifest = json.loads(newest.read_text())
    if manifest.get("format") != 1:
        raise ValueError(f"{newest}: manifest format {manifest.get('format')}, expected 1")
    return manifest


def live_files(manifest: dict, table: str) -> pd.DataFrame:
    """The manifest's entries for one table (``metrics`` or ``events``)."""
    cols = ["table", "path", "app", "day", "rows", "bytes", "min_ts", "max_ts"]
    files = pd.DataFrame([f for f in manifest["files"] if f["table"] == table], columns=cols)
    for c in ("min_ts", "max_ts"):
        files[c] = pd.to_datetime(files[c], unit="ms", utc=True)
    return files


def utc(t) -> pd.Timestamp:
    """``t`` as a UTC timestamp (naive times are taken as UTC, as the store does)."""
    t = pd.Timestamp(t)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _dataset(store: Path, manifest: dict, table: str, apps=None, start=None, end=None):
    files = live_files(manifest, table)
    if apps is not None:
        files = files[files["app"].isin(list(apps))]
    if start is not None:
        files = files[files["max_ts"] >= utc(start)]
    if end is not None:
        files = files[files["min_ts"] < utc(end)]
    if files.empty:
        return None
    # A list of files: no partition discovery from the `app=`/`day=`
    # directories (the files hold their own `app` column).
    return ds.dataset([str(store / p) for p in files["path"]], format="parquet")


def _ts_scalar(t) -> pa.Scalar:
    return pa.scalar(utc(t).to_pydatetime(), pa.timestamp("ms", "UTC"))


def read_metrics(
    store: Path | None = None,
    manifest: dict | None = None,
    *,
    apps=None,
    series=None,
    start=None,
    end=None,
) -> pd.DataFrame:
    """Live metric points as a DataFrame (``ts`` in UTC, key columns, ``value``).

    ``apps`` and ``start``/``end`` prune files by their manifest entries (as
    the server does) before the row filter; ``series`` keeps the named
    series ids.
    """
    store = store or store_path()
    manifest = manifest or newest_manifest(store)
    data = _dataset(store, manifest, "metrics", apps, start, end)
    if data is None:
        return pd.DataFrame(columns=["ts", *KEY_COLUMNS, "value"])
    filt = None

    def both(a, b):
        return b if a is None else a & b

    if series is not None:
        filt = both(filt, pc.field("series").isin(list(series)))
    if start is not None:
        filt = both(filt, pc.field("ts") >= _ts_scalar(start))
    if end is not None:
        filt = both(filt, pc.field("ts") < _ts_scalar(end))
    df = data.to_table(filter=filt).to_pandas()
    for c in KEY_COLUMNS:
        df[c] = df[c].astype(str)
    return df.sort_values(KEY_COLUMNS + ["ts"], kind="stable").reset_index(drop=True)


def read_events(store: Path | None = None, manifest: dict | None = None) -> pd.DataFrame:
    """The live events table (``start``, ``end``, ``kind``, ``scope``, ``name``)."""
    store = store or store_path()
    manifest = manifest or newest_manifest(store)
    data = _dataset(store, manifest, "events")
    if data is None:
        return pd.DataFrame(columns=["start", "end", "kind", "scope", "name"])
    return data.to_table().to_pandas().sort_values("start").reset_index(drop=True)
