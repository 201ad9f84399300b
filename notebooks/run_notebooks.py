#!/usr/bin/env python3
"""Runs the notebooks in this folder headless, in order, and fails on any cell error.

    .venv/bin/python notebooks/run_notebooks.py [NOTEBOOK ...] [--timeout S] [--save DIR]

Each notebook runs in a fresh kernel of *this* interpreter (a kernel spec
pointing at ``sys.executable`` is written to a temporary directory, so the
venv's packages are the ones used whatever kernels Jupyter knows), with
``notebooks/`` as its working directory and this process's environment
(``SHARDCAST_SERVER``, ``SHARDCAST_STORE``, ``SHARDCAST_BIN``, ...). The
notebooks on disk are not modified: ``--save DIR`` writes the executed
copies elsewhere. A failing cell is reported with its notebook, its index
and its error; the exit status is 1 when any notebook failed.

``--require-stripped`` first checks that the notebooks carry no outputs
(as they are committed); ``--strip`` removes outputs in place and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

HERE = Path(__file__).resolve().parent
KERNEL_NAME = "shardcast-notebooks"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def install_kernel_spec(root: Path) -> None:
    """A kernel spec named KERNEL_NAME that runs this interpreter, found
    through JUPYTER_PATH ahead of any other."""
    spec_dir = root / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python ({sys.executable})",
        "language": "python",
        "metadata": {"debugger": False},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    paths = [str(root), *filter(None, os.environ.get("JUPYTER_PATH", "").split(os.pathsep))]
    os.environ["JUPYTER_PATH"] = os.pathsep.join(paths)


def outputs_of(nb) -> int:
    return sum(
        1
        for c in nb.cells
        if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)
    )


def strip(nb) -> None:
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs = []
            c.execution_count = None


def cell_error(cell) -> str:
    """The error outputs of an executed cell, as plain text."""
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            parts.append("\n".join(out.get("traceback", [])) or f"{out.get('ename')}: {out.get('evalue')}")
    return ANSI.sub("", "\n".join(parts))


def run(path: Path, timeout: int, save: Path | None, sockets: Path) -> str | None:
    """Executes one notebook; returns a failure report, or None. The kernel
    talks over Unix sockets under ``sockets``, not loopback TCP."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        startup_timeout=120,
        kernel_name=KERNEL_NAME,
        allow_errors=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.km = client.create_kernel_manager()
    client.km.transport = "ipc"
    client.km.ip = str(sockets / path.stem[:2])
    failure = None
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    try:
        with client.setup_kernel():
            for n, index in enumerate(code_cells, 1):
                cell = nb.cells[index]
                try:
                    client.execute_cell(cell, index)
                except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
                    source = "\n".join(f"    {line}" for line in cell.source.splitlines()[:12])
                    detail = cell_error(cell) or ANSI.sub("", str(e))
                    failure = (
                        f"{path.name}: cell {index} (code cell {n} of {len(code_cells)}) failed:\n"
                        f"{source}\n{detail}"
                    )
                    break
    except Exception as e:  # the kernel did not start, or died outside a cell
        failure = f"{path.name}: {type(e).__name__}: {ANSI.sub('', str(e))}"
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, save / path.name)
    return failure


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/[0-9]*.ipynb")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per cell (default 300)")
    parser.add_argument("--save", type=Path, help="write the executed notebooks to this directory")
    parser.add_argument("--require-stripped", action="store_true", help="fail if a notebook has outputs")
    parser.add_argument("--strip", action="store_true", help="remove the outputs in place and exit")
    args = parser.parse_args()
    paths = [p.resolve() for p in args.notebooks] or sorted(HERE.glob("[0-9]*.ipynb"))
    if not paths:
        print(f"no notebooks in {HERE}", file=sys.stderr)
        return 1

    if args.strip:
        for p in paths:
            nb = nbformat.read(p, as_version=4)
            if outputs_of(nb):
                strip(nb)
                nbformat.write(nb, p)
                print(f"stripped {p.name}")
        return 0
    if args.require_stripped:
        dirty = [p.name for p in paths if outputs_of(nbformat.read(p, as_version=4))]
        if dirty:
            print(
                f"notebooks with outputs: {', '.join(dirty)} (commit them stripped: "
                "`python notebooks/run_notebooks.py --strip`)",
                file=sys.stderr,
            )
            return 1

    failures = []
    with tempfile.TemporaryDirectory(prefix="shardcast-kernel-") as tmp:
        install_kernel_spec(Path(tmp))
        for p in paths:
            started = time.monotonic()
            failure = run(p, args.timeout, args.save, Path(tmp))
            took = time.monotonic() - started
            print(f"{'FAILED' if failure else 'ok':<6} {p.name} ({took:.1f}s)", flush=True)
            if failure:
                failures.append(failure)
    for f in failures:
        print(f"\n{f}", file=sys.stderr)
    if failures:
        print(f"\n{len(failures)} of {len(paths)} notebooks failed", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
