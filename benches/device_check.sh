#!/usr/bin/env bash
# The GPU checks, for a machine with an NVIDIA GPU and the CUDA toolkit
# (nvcc): builds the `cuda` feature, runs the CUDA training test (it trains
# the same small model on the GPU and the CPU and compares the forecasts),
# and times one backtest trained on each device.
#
#   benches/device_check.sh            # compute capability from nvidia-smi
#   CUDA_COMPUTE_CAP=80 benches/device_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CUDA_COMPUTE_CAP:-}" ]; then
    CUDA_COMPUTE_CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
fi
export CUDA_COMPUTE_CAP
cargo build --release -p shardcast --features cuda
cargo test --release -p shardcast-model --features cuda --lib cuda_training -- --nocapture
BIN=target/release/shardcast
DATA=${SHARDCAST_DATA:-../shared/data}
OUT=$(mktemp -d)
$BIN ingest --store "$OUT/nab" "$DATA/nab/realAWSCloudwatch/*.csv" --app aws --series-from file-stem >/dev/null
for device in cpu cuda; do
    echo "== nab_aws_5min_h12 trained on $device"
    $BIN backtest --store "$OUT/nab" --grid 5m --horizon 12 --test-points 288 \
        --device "$device" --out "$OUT/$device.csv" | tail -4
done
