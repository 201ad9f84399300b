"""Runs exported shardcast ONNX models in onnxruntime and compares their
output with the Candle forecasts the Rust test computed.

Usage: onnx_parity.py CASE.json [CASE.json ...]

Each case (written by tests/it/onnx.rs) names a model file, holds the input
tensors built by `Contract::inputs` and the expected `quantiles` from
`Model::forecast_rows`. The script also reads the input contract from the
model's `shardcast.contract` metadata, as a Python client would, and checks
that the session's inputs are the contract's. It prints one JSON line per
case and exits 1 when any case is off by more than
`tolerance * max(1, |expected|)`.
"""

import json
import sys

import numpy as np
import onnxruntime as ort


def run_case(path):
    with open(path) as f:
        case = json.load(f)
    # Default session options (all graph optimisations), as a server runs it.
    sess = ort.InferenceSession(case["model"], providers=["CPUExecutionProvider"])
    contract = json.loads(sess.get_modelmeta().custom_metadata_map["shardcast.contract"])
    names = [i.name for i in sess.get_inputs()]
    wanted = [i["name"] for i in contract["inputs"]]
    if names != wanted:
        raise SystemExit(f"{path}: session inputs {names} != contract inputs {wanted}")
    feeds = {}
    for spec in contract["inputs"]:
        t = case["inputs"][spec["name"]]
        if t["dtype"] != spec["dtype"]:
            raise SystemExit(f"{path}: input {spec['name']} is {t['dtype']}, contract says {spec['dtype']}")
        feeds[spec["name"]] = np.asarray(t["data"], dtype=t["dtype"]).reshape(t["shape"])
    (got,) = sess.run([contract["outputs"][0]["name"]], feeds)
    want = np.asarray(case["expected"], dtype=np.float32).reshape(case["expected_shape"])
    if got.shape != want.shape:
        raise SystemExit(f"{path}: output shape {got.shape}, expected {want.shape}")
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    rel = diff / np.maximum(1.0, np.abs(want.astype(np.float64)))
    # The same difference in units of each series' training deviation.
    dev = feeds["series_scale"][:, 1].astype(np.float64).reshape(-1, 1, 1)
    scaled = diff / dev
    crossings = int(np.sum(np.diff(got, axis=-1) < 0))
    ok = bool(rel.max() <= case["tolerance"]) and crossings == 0
    return {
        "case": case["name"],
        "batch": int(got.shape[0]),
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float(rel.max()),
        "max_diff_in_deviations": float(scaled.max()),
        "crossings": crossings,
        "ok": ok,
    }


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    results = [run_case(p) for p in sys.argv[1:]]
    for r in results:
        print(json.dumps(r))
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
