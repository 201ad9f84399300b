#!/usr/bin/env python3
"""Checks serve_onnx.py against `shardcast serve` on the same store and model.

Usage:
  check_serve_onnx.py --store DIR --model MODEL_DIR [--bin target/debug/shardcast]
                      [--tolerance 1e-4] [--latency N] [-- extra serve_onnx.py flags]

MODEL_DIR is `<models-dir>/<name>/<version>` holding the trained model and its
export (`shardcast export-onnx --model MODEL_DIR`). Starts both servers on
free loopback ports, asks both for every series of the store (the model's
13 levels at its horizon, and a short horizon at other levels, one of them
interpolated), a context override, and requests each must refuse, then
compares: timestamps, levels and provenance exactly, values within
`tolerance` relative (|a - b| <= tolerance * max(|a|, |b|, 1)). With
`--latency N`, also times N sequential Forecast calls (one client, one
channel, series in turn, after a warm-up; `--latency-horizon H` asks for H
steps instead of the model's horizon) against each server. Both servers
are stopped with SIGTERM and must exit cleanly. Exits 1 on any mismatch.
"""

import argparse
import math
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import serve_onnx  # noqa: E402

REPO = HERE.parent


def start(cmd, name):
    """Starts a server and returns (process, address) once it prints
    `listening on HOST:PORT`."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    err = []
    threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if line.startswith("listening on "):
            addr = line.split()[-1]
            threading.Thread(target=lambda: proc.stdout.read(), daemon=True).start()
            return proc, addr
        if time.monotonic() > deadline:
            break
    proc.kill()
    sys.exit(f"{name} did not start: {' '.join(cmd)}\n{''.join(err)}")


def stop(proc, name):
    proc.terminate()
    try:
        rc = proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return f"{name} did not stop within 20 s of SIGTERM"
    return None if rc == 0 else f"{name} exited with {rc} after SIGTERM"


def store_keys(store):
    root = serve_onnx.store_root(store)
    _, files = serve_onnx.read_manifest(root)
    t = serve_onnx.read_table(root, [f for f in files if f["table"] == "metrics"], ["app", "shard_type", "metric", "series"])
    rows = {tuple(str(v) for v in r.values()) for r in t.to_pylist()}
    return sorted(rows)


def call(stub, req):
    try:
        return stub.Forecast(req, timeout=30), None
    except grpc.RpcError as e:
        return None, e.code()


def compare(label, a, b, tol, worst):
    """Compares two Forecast messages (a: Python, b: Rust); returns problems."""
    fa, fb = a.forecast, b.forecast
    problems = []
    for field in ("model", "model_version", "step_ms", "last_observed_unix_ms"):
        if getattr(fa, field) != getattr(fb, field):
            problems.append(f"{label}: {field} {getattr(fa, field)} vs {getattr(fb, field)}")
    if list(fa.quantiles) != list(fb.quantiles):
        problems.append(f"{label}: quantiles {list(fa.quantiles)} vs {list(fb.quantiles)}")
    if fa.key != fb.key:
        problems.append(f"{label}: key differs")
    if len(fa.steps) != len(fb.steps):
        return problems + [f"{label}: {len(fa.steps)} steps vs {len(fb.steps)}"]
    scale = max((abs(v) for s in fb.steps for v in s.values), default=0.0) or 1.0
    for i, (sa, sb) in enumerate(zip(fa.steps, fb.steps)):
        if sa.timestamp_unix_ms != sb.timestamp_unix_ms:
            problems.append(f"{label}: step {i} at {sa.timestamp_unix_ms} vs {sb.timestamp_unix_ms}")
        if len(sa.values) != len(sb.values):
            problems.append(f"{label}: step {i} has {len(sa.values)} values vs {len(sb.values)}")
            continue
        for j, (x, y) in enumerate(zip(sa.values, sb.values)):
            d = abs(x - y)
            big = max(abs(x), abs(y))
            rel = d / big if big > 0 else 0.0
            worst["abs"] = max(worst["abs"], d)
            if rel > worst["rel"]:
                worst["rel"], worst["rel_at"] = rel, f"{label} step {i} level {fa.quantiles[j]}: {x!r} vs {y!r}"
            worst["scaled"] = max(worst["scaled"], d / scale)
            worst["n"] += 1
            if not (math.isfinite(x) and d <= tol * max(big, 1.0)):
                problems.append(f"{label}: step {i} level {fa.quantiles[j]}: {x} vs {y}")
    return problems


def latency(stub, pb, keys, n, horizon):
    reqs = [
        pb.ForecastRequest(key=pb.SeriesKey(app=k[0], shard_type=k[1], metric=k[2], series=k[3]), horizon=horizon)
        for k in keys
    ]
    for i in range(20):
        stub.Forecast(reqs[i % len(reqs)])
    times = []
    for i in range(n):
        t = time.perf_counter()
        stub.Forecast(reqs[i % len(reqs)])
        times.append(time.perf_counter() - t)
    times.sort()
    return {
        "mean": statistics.fmean(times) * 1e3,
        "p50": times[len(times) // 2] * 1e3,
        "p99": times[min(len(times) - 1, math.ceil(0.99 * len(times)) - 1)] * 1e3,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True)
    p.add_argument("--model", required=True, help="<models-dir>/<name>/<version>, exported to ONNX")
    p.add_argument("--bin", default=str(REPO / "target/debug/shardcast"))
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument("--latency", type=int, default=0, help="time N sequential calls per server")
    p.add_argument("--latency-horizon", type=int, default=0, help="horizon of the timed calls (0: the model's)")
    p.add_argument("extra", nargs="*", help="flags passed on to serve_onnx.py (after --)")
    args = p.parse_args()
    model_dir = Path(args.model).resolve()
    pb, pb_grpc = serve_onnx.load_stubs(str(REPO / "proto"))
    keys = store_keys(args.store)
    if not keys:
        sys.exit(f"no series in {args.store}")

    rust, rust_addr = start(
        [args.bin, "serve", "--store", args.store, "--models-dir", str(model_dir.parent.parent),
         "--model", model_dir.parent.name, "--listen", "127.0.0.1:0"],
        "shardcast serve",
    )
    py, py_addr = start(
        [sys.executable, str(HERE / "serve_onnx.py"), "--store", args.store, "--model", str(model_dir),
         "--listen", "127.0.0.1:0", *args.extra],
        "serve_onnx.py",
    )
    problems = []
    worst = {"abs": 0.0, "rel": 0.0, "rel_at": "", "scaled": 0.0, "n": 0}
    lat = {}
    try:
        stubs = {
            name: pb_grpc.ForecastServiceStub(grpc.insecure_channel(addr))
            for name, addr in (("python", py_addr), ("rust", rust_addr))
        }

        def both(label, req, expect=None):
            (a, ca), (b, cb) = call(stubs["python"], req), call(stubs["rust"], req)
            if ca != cb:
                problems.append(f"{label}: python {ca or 'OK'} vs rust {cb or 'OK'}")
            elif expect is not None and ca != expect:
                problems.append(f"{label}: both answered {ca or 'OK'}, expected {expect}")
            elif a is not None:
                problems.extend(compare(label, a, b, args.tolerance, worst))

        checked = 0
        for k in keys:
            key = pb.SeriesKey(app=k[0], shard_type=k[1], metric=k[2], series=k[3])
            name = "/".join(k)
            both(f"{name} (h=0, own levels)", pb.ForecastRequest(key=key))
            both(f"{name} (h=5, 4 levels)", pb.ForecastRequest(key=key, horizon=5, quantiles=[0.01, 0.5, 0.93, 0.99]))
            checked += 1
        k0 = pb.SeriesKey(app=keys[0][0], shard_type=keys[0][1], metric=keys[0][2], series=keys[0][3])
        ctx = pb.ContextOverride(start_unix_ms=1_400_000_100_000, values=[40.0 + 5 * math.sin(i / 20) for i in range(700)])
        both("context override", pb.ForecastRequest(key=k0, context=ctx))
        unknown = pb.SeriesKey(app="nope", shard_type="x", metric="y", series="z")
        both("context override, unknown series", pb.ForecastRequest(key=unknown, horizon=3, context=ctx))
        both("unknown series", pb.ForecastRequest(key=unknown), grpc.StatusCode.NOT_FOUND)
        both("no key", pb.ForecastRequest(), grpc.StatusCode.INVALID_ARGUMENT)
        both("empty key field", pb.ForecastRequest(key=pb.SeriesKey(app="aws")), grpc.StatusCode.INVALID_ARGUMENT)
        both("horizon too long", pb.ForecastRequest(key=k0, horizon=10_000), grpc.StatusCode.INVALID_ARGUMENT)
        both("level 1.5", pb.ForecastRequest(key=k0, quantiles=[0.5, 1.5]), grpc.StatusCode.INVALID_ARGUMENT)
        both("levels unordered", pb.ForecastRequest(key=k0, quantiles=[0.5, 0.1]), grpc.StatusCode.INVALID_ARGUMENT)
        both("empty context", pb.ForecastRequest(key=k0, context=pb.ContextOverride()), grpc.StatusCode.INVALID_ARGUMENT)
        if args.latency > 0:
            for name, stub in stubs.items():
                lat[name] = latency(stub, pb, keys, args.latency, args.latency_horizon)
    finally:
        for proc, name in ((py, "serve_onnx.py"), (rust, "shardcast serve")):
            msg = stop(proc, name)
            if msg:
                problems.append(msg)

    print(f"{checked} series, {worst['n']} values compared: max |python - rust| = {worst['abs']:.3g}, "
          f"max relative = {worst['rel']:.3g} (at {worst['rel_at']}), "
          f"max |python - rust| / largest |value| of its forecast = {worst['scaled']:.3g} (tolerance {args.tolerance:g})")
    for name, t in lat.items():
        print(f"{name:>6}: {args.latency} sequential Forecast calls (horizon {args.latency_horizon or 'model'}, "
              "13 levels), one client: "
              f"mean {t['mean']:.3f} ms, p50 {t['p50']:.3f} ms, p99 {t['p99']:.3f} ms")
    for line in problems:
        print("MISMATCH", line)
    if problems:
        sys.exit(1)
    print("OK: the Python reference server agrees with shardcast serve")


if __name__ == "__main__":
    main()
