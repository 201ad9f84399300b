#!/usr/bin/env python3
"""Python reference server of protocol S: the exported model in onnxruntime
behind grpcio, answering `shardcast.forecast.v1.ForecastService/Forecast`.

Usage:
  serve_onnx.py --store DIR --model MODEL_DIR [--listen 127.0.0.1:0]
                [--workers N] [--threads T] [--ort-threads K]
                [--max-batch B] [--max-wait-us U] [--store-poll-ms P]

MODEL_DIR holds `model.onnx` and its input contract `model.onnx.json`
(`shardcast export-onnx --model MODEL_DIR`). The store is read with pyarrow:
the newest `_manifest/<version>.json` names the live Parquet files. Every
series is put on the model's grid the way `shardcast serve` does it (read
from the bin `window - 1` steps before its newest point, bins
`[floor(ts/step)*step, +step)`, mean per bin, empty bins linearly
interpolated), and its last `window` points, event indicator and scaler are
kept in memory as ready-made ONNX input rows. The store is polled for new
manifest versions (`--store-poll-ms`, 0: never) and reloaded when one lands.

Concurrency: a grpcio thread-pool server (`--threads` handler threads). With
`--max-batch 1` each handler runs the session itself; with more, handlers
hand their rows to one inference thread that runs the forecasts waiting
together (up to `--max-batch`, after at most `--max-wait-us`) as one batch,
as the Rust server does. `--workers N` starts N such server processes on one
port (SO_REUSEPORT; the kernel spreads connections, not calls, over them).

Prints `listening on HOST:PORT` once every process serves, and stops cleanly
on SIGTERM or SIGINT. The gRPC stubs are generated from `proto/` at start
with grpc_tools' bundled protoc into a temporary directory.
"""

import argparse
import importlib.resources
import json
import math
import multiprocessing as mp
import os
import queue
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path
from urllib.parse import unquote, urlparse

import grpc
import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

REPO = Path(__file__).resolve().parent.parent
FORECAST_PROTO = "shardcast/forecast/v1/forecast.proto"

MANIFEST_FORMAT = 1
MAX_BINS = 10_000_000
MAX_LEVELS = 99
MAX_KEY_FIELD = 256
MAX_CONTEXT_POINTS = 100_000
MAX_MESSAGE_BYTES = 16 << 20
KEY_SEP = "\x1f"  # control characters cannot occur in key fields
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc, Rust's char::is_control


# --------------------------------------------------------------------------
# gRPC stubs


def load_stubs(proto_root):
    """Generates the Python modules of forecast.proto and imports them."""
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="shardcast-pystubs-")
    try:
        include = str(importlib.resources.files("grpc_tools") / "_proto")
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{proto_root}",
                f"-I{include}",
                f"--python_out={out}",
                f"--grpc_python_out={out}",
                FORECAST_PROTO,
            ]
        )
        if rc != 0:
            sys.exit(f"protoc failed ({rc}) on {proto_root}/{FORECAST_PROTO}")
        sys.path.insert(0, out)
        try:
            from shardcast.forecast.v1 import forecast_pb2, forecast_pb2_grpc
        finally:
            sys.path.remove(out)
        return forecast_pb2, forecast_pb2_grpc
    finally:
        # The modules are in memory now.
        shutil.rmtree(out, ignore_errors=True)


# --------------------------------------------------------------------------
# The store


def store_root(location):
    if location.startswith("file://"):
        return Path(unquote(urlparse(location).path))
    return Path(location)


def manifest_version(root):
    """The newest manifest's version and file name (0, None when empty)."""
    best = (0, None)
    try:
        names = os.listdir(root / "_manifest")
    except FileNotFoundError:
        return best
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            v = int(name[:-5])
        except ValueError:
            continue
        if best[1] is None or v > best[0]:
            best = (v, name)
    return best


def read_manifest(root):
    version, name = manifest_version(root)
    if name is None:
        return 0, []
    with open(root / "_manifest" / name) as f:
        m = json.load(f)
    if m.get("format") != MANIFEST_FORMAT:
        raise RuntimeError(
            f"{root}/_manifest/{name}: manifest format {m.get('format')}, this script reads {MANIFEST_FORMAT}"
        )
    return m["version"], m["files"]


def read_table(root, files, columns):
    paths = [str(root / f["path"]) for f in files]
    if not paths:
        return None
    return ds.dataset(paths, format="parquet").to_table(columns=columns)


def resample_mean(ts, values, step):
    """Mean per bin `[k*step, (k+1)*step)` from the first point's bin to the
    last's; empty bins linearly interpolated. Returns (start_ms, float64[])."""
    ok = ~np.isnan(values)
    ts, values = ts[ok], values[ok]
    if ts.size == 0:
        raise ValueError("the series has no points")
    bins = ts // step
    first = int(bins.min())
    n = int(bins.max()) - first + 1
    if n > MAX_BINS:
        raise ValueError(f"{n} bins is more than the limit of {MAX_BINS}")
    bins -= first
    sums = np.bincount(bins, weights=values, minlength=n)
    counts = np.bincount(bins, minlength=n)
    has = counts > 0
    out = np.full(n, np.nan)
    out[has] = sums[has] / counts[has]
    if not has.all():
        # The first and last bins hold points, so every gap has both ends.
        idx = np.arange(n)
        prev = np.maximum.accumulate(np.where(has, idx, -1))
        nxt = np.minimum.accumulate(np.where(has, idx, n)[::-1])[::-1]
        gap = ~has
        k, lo, hi = idx[gap], prev[gap], nxt[gap]
        frac = (k - lo) / (hi - lo)
        out[gap] = out[lo] + (out[hi] - out[lo]) * frac
    return first * step, out


def series_scale(values):
    """(mean, mean absolute deviation) of float32 values, accumulated in
    float64, with the model's scale floor."""
    v = values.astype(np.float64)
    mean = v.sum() / max(v.size, 1)
    dev = np.abs(v - mean).sum() / max(v.size, 1)
    mean32, dev32 = np.float32(mean), np.float32(dev)
    floor = np.float32(1e-6) * max(abs(mean32), np.float32(1.0))
    return mean32, max(dev32, np.float32(floor))


class Events:
    """The store's events table, matched by scope."""

    def __init__(self, starts=(), ends=(), scopes=()):
        self.starts = np.asarray(starts, dtype=np.int64)
        self.ends = np.asarray(ends, dtype=np.int64)
        self.scopes = list(scopes)

    def indicator(self, app, shard_type, start, step, length):
        ind = np.zeros(length, dtype=np.float32)
        scoped = f"{app}/{shard_type}"
        for s, e, scope in zip(self.starts, self.ends, self.scopes):
            if scope != "*" and scope != app and scope != scoped:
                continue
            first = max((int(s) - start) // step, 0)
            last = min((int(e) - start) // step, length - 1)
            if first <= last:
                ind[first : last + 1] = 1.0
        return ind


class Model:
    """The ONNX graph, its contract and the session that runs it."""

    def __init__(self, model_dir, ort_threads):
        model_dir = Path(model_dir)
        with open(model_dir / "model.onnx.json") as f:
            c = json.load(f)
        if c.get("format") != "shardcast-onnx" or c.get("format_version") != 1:
            raise RuntimeError(f"{model_dir}/model.onnx.json: not a shardcast-onnx v1 contract")
        self.contract = c
        self.step = int(c["step_ms"])
        self.window = int(c["window"])
        self.context = int(c["context"])
        self.horizon = int(c["horizon"])
        self.levels = [float(q) for q in c["quantiles"]]
        self.input_names = [i["name"] for i in c["inputs"]]
        self.series_rows = {s["name"]: (s["row"], np.float32(s["mean"]), np.float32(s["deviation"])) for s in c["series"]}
        self.shard_type_rows = {t["name"]: t["row"] for t in c["shard_types"]}
        # `<models-dir>/<name>/<version>`, as `shardcast serve` names it.
        self.name = model_dir.resolve().parent.name
        try:
            self.version = int(model_dir.resolve().name)
        except ValueError:
            self.version = 0
        so = ort.SessionOptions()
        so.intra_op_num_threads = ort_threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(model_dir / "model.onnx"), so, providers=["CPUExecutionProvider"]
        )
        graph_inputs = [i.name for i in self.session.get_inputs()]
        if graph_inputs != self.input_names:
            raise RuntimeError(f"graph inputs {graph_inputs} differ from the contract's {self.input_names}")

    def run(self, feed):
        return self.session.run(["quantiles"], feed)[0]

    def row(self, app, shard_type, metric, series, start, values, events):
        """The ONNX input row (batch of 1) forecasting right after `values`
        (float32, oldest first, starting at `start`); `events` is the event
        indicator of those points and `horizon` more."""
        L, C, H = self.window, self.context, self.horizon
        n = values.size
        k = min(n, L)
        v = np.zeros((1, L), dtype=np.float32)
        v[0, L - k :] = values[n - k :]
        ev = np.zeros((1, C + H), dtype=np.float32)
        lo = max(0, C - n)
        ev[0, lo:] = events[n - C + lo : n + H]
        known = self.series_rows.get(f"{app}/{shard_type}/{metric}/{series}")
        if known is None:
            sid, (mean, dev) = 0, series_scale(values)
        else:
            sid, mean, dev = known
        full = {
            "values": v,
            "history_len": np.array([k], dtype=np.int64),
            "origin_ts": np.array([start + self.step * n], dtype=np.int64),
            "events": ev,
            "series_id": np.array([sid], dtype=np.int64),
            "shard_type_id": np.array([self.shard_type_rows.get(shard_type, 0)], dtype=np.int64),
            "series_scale": np.array([[mean, dev]], dtype=np.float32),
        }
        return {name: full[name] for name in self.input_names}


class Tail:
    """One series, ready to forecast."""

    __slots__ = ("feed", "last_observed", "error")

    def __init__(self, feed, last_observed, error=None):
        self.feed = feed
        self.last_observed = last_observed
        self.error = error


def load_store(root, model):
    """Every series' tail as a ready ONNX input row, and the events."""
    version, files = read_manifest(root)
    metrics = [f for f in files if f["table"] == "metrics"]
    event_files = [f for f in files if f["table"] == "events"]
    events = Events()
    if event_files:
        t = read_table(root, event_files, ["start", "end", "scope"])
        events = Events(
            pc.cast(t["start"], pa.int64()).to_numpy(),
            pc.cast(t["end"], pa.int64()).to_numpy(),
            t["scope"].to_pylist(),
        )
    tails = {}
    t = read_table(root, metrics, ["ts", "app", "shard_type", "metric", "series", "value"])
    if t is None or t.num_rows == 0:
        return version, tails, events
    keys = pc.binary_join_element_wise(
        *(pc.cast(t[c], pa.string()) for c in ("app", "shard_type", "metric", "series")), KEY_SEP
    )
    enc = pc.dictionary_encode(keys.combine_chunks())
    idx = enc.indices.to_numpy()
    names = enc.dictionary.to_pylist()
    ts = pc.cast(t["ts"], pa.int64()).to_numpy()
    val = t["value"].to_numpy()
    order = np.lexsort((ts, idx))
    idx, ts, val = idx[order], ts[order], val[order]
    cuts = np.flatnonzero(np.diff(idx)) + 1
    step, points = model.step, model.window
    for lo, hi in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [idx.size]))):
        key = tuple(names[idx[lo]].split(KEY_SEP))
        sts, sval = ts[lo:hi], val[lo:hi]
        # Read from the bin `points - 1` steps before the newest one, so the
        # first bin is whole (the Rust server's store query).
        first = (int(sts[-1]) // step) * step - step * (points - 1)
        keep = sts >= first
        try:
            start, grid = resample_mean(sts[keep], sval[keep], step)
        except ValueError as e:
            tails[key] = Tail(None, 0, str(e))
            continue
        values = grid.astype(np.float32)
        if values.size > points:
            cut = values.size - points
            values = values[cut:]
            start += step * cut
        ind = events.indicator(key[0], key[1], start, step, values.size + model.horizon)
        feed = model.row(*key, start, values, ind)
        tails[key] = Tail(feed, start + step * (values.size - 1))
    return version, tails, events


# --------------------------------------------------------------------------
# Serving


class Invalid(Exception):
    pass


def check_key_field(field, value):
    if not value:
        reason = "it is empty"
    elif len(value.encode()) > MAX_KEY_FIELD:
        reason = "it is longer than 256 bytes"
    elif CONTROL.search(value):
        reason = "it contains a control character"
    else:
        return
    raise Invalid(f"invalid request: key: series key field {field} {value[:64]!r}: {reason}")


class Batcher:
    """One inference thread running the forecasts that wait together as one
    batch (up to `max_batch`, gathering for at most `max_wait` seconds)."""

    def __init__(self, model, max_batch, max_wait):
        self.model = model
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.jobs = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="infer", daemon=True).start()

    def forecast(self, feed):
        done = futures.Future()
        self.jobs.put((feed, done))
        return done.result()

    def _loop(self):
        names = self.model.input_names
        while True:
            batch = [self.jobs.get()]
            until = time.perf_counter() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.jobs.get_nowait())
                    continue
                except queue.Empty:
                    pass
                left = until - time.perf_counter()
                if left <= 0:
                    break
                try:
                    batch.append(self.jobs.get(timeout=left))
                except queue.Empty:
                    break
            try:
                if len(batch) == 1:
                    out = self.model.run(batch[0][0])
                else:
                    feed = {n: np.concatenate([b[0][n] for b in batch]) for n in names}
                    out = self.model.run(feed)
                for i, (_, done) in enumerate(batch):
                    done.set_result(out[i])
            except Exception as e:  # noqa: BLE001 - answer every waiting caller
                for _, done in batch:
                    if not done.done():
                        done.set_exception(e)


def make_servicer(pb, pb_grpc, model, state, batcher):
    H = model.horizon
    own = model.levels
    step = model.step
    level_cache = {}

    def level_map(levels):
        """Columns and weights interpolating the model's levels at `levels`,
        as the Rust `QuantileForecast::interpolate` does."""
        m = level_cache.get(levels)
        if m is not None:
            return m
        lo, hi, w = [], [], []
        for level in levels:
            if level <= own[0]:
                lo.append(0), hi.append(0), w.append(0.0)
                continue
            for k in range(1, len(own)):
                if level <= own[k]:
                    lo.append(k - 1), hi.append(k), w.append((level - own[k - 1]) / (own[k] - own[k - 1]))
                    break
            else:
                lo.append(len(own) - 1), hi.append(len(own) - 1), w.append(0.0)
        m = (np.array(lo), np.array(hi), np.array(w, dtype=np.float32))
        if len(level_cache) > 1024:
            level_cache.clear()
        level_cache[levels] = m
        return m

    def check_levels(levels):
        if len(levels) > MAX_LEVELS:
            raise Invalid(f"invalid request: quantiles: {len(levels)} levels asked, at most {MAX_LEVELS}")
        for q in levels:
            if not (math.isfinite(q) and 0.0 < q < 1.0):
                raise Invalid(f"invalid request: quantiles: quantile level {q} is outside (0, 1)")
        if any(a >= b for a, b in zip(levels, levels[1:])):
            raise Invalid(f"invalid request: quantiles: quantile levels {list(levels)} are not strictly increasing")

    def override_feed(key, ctx):
        vals = np.asarray(ctx.values, dtype=np.float32)
        if vals.size == 0:
            raise Invalid("invalid request: context.values: empty: give at least one value")
        if vals.size > MAX_CONTEXT_POINTS:
            raise Invalid(f"invalid request: context.values: {vals.size} values, at most {MAX_CONTEXT_POINTS}")
        bad = np.flatnonzero(~np.isfinite(vals))
        if bad.size:
            i = int(bad[0])
            raise Invalid(f"invalid request: context.values[{i}]: {vals[i]} is not a finite number")
        start = ctx.start_unix_ms
        ind = state["events"].indicator(key.app, key.shard_type, start, step, vals.size + H)
        feed = model.row(key.app, key.shard_type, key.metric, key.series, start, vals, ind)
        return feed, start + step * (vals.size - 1)

    class Servicer(pb_grpc.ForecastServiceServicer):
        def Forecast(self, request, context):
            try:
                if not request.HasField("key"):
                    raise Invalid("invalid request: key: missing")
                key = request.key
                for f in ("app", "shard_type", "metric", "series"):
                    check_key_field(f, getattr(key, f))
                h = request.horizon or H
                if h > H:
                    raise Invalid(
                        f"invalid request: horizon: {h} steps asked, model {model.name} v{model.version} forecasts at most {H}"
                    )
                levels = tuple(request.quantiles)
                if levels:
                    check_levels(levels)
                if request.HasField("context"):
                    feed, last = override_feed(key, request.context)
                else:
                    tail = state["tails"].get((key.app, key.shard_type, key.metric, key.series))
                    if tail is None:
                        context.abort(
                            grpc.StatusCode.NOT_FOUND,
                            f"series {key.app}/{key.shard_type}/{key.metric}/{key.series} is not in the store",
                        )
                    if tail.error is not None:
                        context.abort(grpc.StatusCode.INTERNAL, f"store error: {tail.error}")
                    feed, last = tail.feed, tail.last_observed
            except Invalid as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            out = batcher.forecast(feed) if batcher else model.run(feed)[0]
            out = out[:h]
            if levels:
                lo, hi, w = level_map(levels)
                a, b = out[:, lo], out[:, hi]
                out = np.minimum(np.maximum(a + w * (b - a), a), b)
            else:
                levels = own
            fc = pb.Forecast(
                key=key,
                model=model.name,
                model_version=model.version,
                step_ms=step,
                quantiles=levels,
                last_observed_unix_ms=last,
            )
            t0 = last + step
            for i, row in enumerate(out.tolist()):
                fc.steps.add(timestamp_unix_ms=t0 + i * step, values=row)
            return pb.ForecastResponse(forecast=fc)

    return Servicer()


def poll_store(root, model, state, every, stop):
    while not stop.wait(every):
        try:
            version, _ = manifest_version(root)
            if version != state["version"]:
                v, tails, events = load_store(root, model)
                state.update(version=v, tails=tails, events=events)
        except Exception as e:  # noqa: BLE001 - keep serving the old view
            print(f"store reload failed: {e}", file=sys.stderr, flush=True)


def serve_one(args, bind, ready=None):
    """Runs one server process until SIGTERM/SIGINT. `bind` is HOST:PORT;
    calls `ready(port)` once serving."""
    pb, pb_grpc = load_stubs(args.proto)
    model = Model(args.model, args.ort_threads)
    root = store_root(args.store)
    version, tails, events = load_store(root, model)
    state = {"version": version, "tails": tails, "events": events}
    batcher = Batcher(model, args.max_batch, args.max_wait_us / 1e6) if args.max_batch > 1 else None
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.threads, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 1 if args.workers > 1 else 0),
        ],
    )
    pb_grpc.add_ForecastServiceServicer_to_server(make_servicer(pb, pb_grpc, model, state, batcher), server)
    port = server.add_insecure_port(bind)
    if port == 0:
        raise SystemExit(f"cannot listen on {bind}")
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    if args.store_poll_ms > 0:
        threading.Thread(
            target=poll_store, args=(root, model, state, args.store_poll_ms / 1000, stop), daemon=True
        ).start()
    print(
        f"[pid {os.getpid()}] model {model.name} v{model.version} ({len(model.series_rows)} series known), "
        f"{len(tails)} series from store version {version}",
        file=sys.stderr,
        flush=True,
    )
    ready(port)
    while not stop.wait(3600):
        pass
    server.stop(grace=2).wait()


def split_hostport(listen):
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"--listen {listen!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def fmt_hostport(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def worker_main(args, bind, conn):
    # A spawned child: the parent handles Ctrl-C and tells us with SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        serve_one(args, bind, lambda port: conn.send(port))
    except BaseException as e:
        try:
            conn.send(f"error: {e}")
        except Exception:  # noqa: BLE001
            pass
        raise


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="store directory or file:// URL")
    p.add_argument("--model", required=True, help="model directory with model.onnx and model.onnx.json")
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0 picks a free one)")
    p.add_argument("--workers", type=int, default=1, help="server processes sharing the port (default 1)")
    p.add_argument("--threads", type=int, default=16, help="gRPC handler threads per process (default 16)")
    p.add_argument("--ort-threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    p.add_argument("--max-batch", type=int, default=64, help="most forecasts per session run; 1: no batching")
    p.add_argument("--max-wait-us", type=int, default=100, help="longest a forecast waits for a batch to fill")
    p.add_argument("--store-poll-ms", type=int, default=1000, help="look for new store versions; 0: never")
    p.add_argument("--proto", default=str(REPO / "proto"), help="root of the .proto files")
    args = p.parse_args()
    if min(args.workers, args.threads, args.ort_threads, args.max_batch) < 1:
        p.error("--workers, --threads, --ort-threads and --max-batch must be at least 1")
    host, port = split_hostport(args.listen)

    if args.workers == 1:
        serve_one(args, fmt_hostport(host, port), lambda port: print(f"listening on {fmt_hostport(host, port)}", flush=True))
        return

    # Several processes on one port: reserve it here (SO_REUSEPORT, never
    # listened on) so that port 0 resolves once, then every child binds it.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((host, port))
    port = holder.getsockname()[1]
    bind = fmt_hostport(host, port)
    spawn = mp.get_context("spawn")
    procs, conns = [], []
    for _ in range(args.workers):
        parent, child = spawn.Pipe(duplex=False)
        proc = spawn.Process(target=worker_main, args=(args, bind, child), daemon=False)
        proc.start()
        child.close()
        procs.append(proc)
        conns.append(parent)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda s, f: stop.set())
    signal.signal(signal.SIGINT, lambda s, f: stop.set())
    failed = False
    for c in conns:
        try:
            msg = c.recv()
        except EOFError:
            msg = "error: exited before serving"
        if not isinstance(msg, int):
            print(f"a server process failed: {msg}", file=sys.stderr, flush=True)
            failed = True
            break
    if not failed:
        print(f"listening on {bind}", flush=True)
        while not stop.wait(0.5):
            if any(not pr.is_alive() for pr in procs):
                print("a server process exited", file=sys.stderr, flush=True)
                failed = True
                break
    for pr in procs:
        if pr.is_alive():
            pr.terminate()
    for pr in procs:
        pr.join(10)
        if pr.is_alive():
            pr.kill()
            pr.join()
    holder.close()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
