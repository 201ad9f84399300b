#!/usr/bin/env bash
# Protocol P on the three traces of ../shared/bench/PROTOCOL.md: ingest them
# into one scratch store and replay each with `shardcast simulate` (reactive
# HPA rule, shardcast planner on the model's forecasts, oracle; each knob
# swept). Prints each summary table with the issue's targets; the per-step
# CSVs, charts, logs and trained models land in $OUT. Extra flags are passed
# to every simulate run (e.g. `--lead 20m`).
#
#   benches/protocol_p.sh [flags...]          TRACES="taxi" to pick
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${SHARDCAST_DATA:-../shared/data}
OUT=${OUT:-out/protocol-p}
BIN=${BIN:-target/debug/shardcast}
[ -x "$BIN" ] || cargo build
rm -rf "$OUT" && mkdir -p "$OUT"
STORE="$OUT/store"
$BIN ingest --store "$STORE" "$DATA/azure_vm_cpu_2017/azure.csv" --app azure --shard-type vm \
    --value-col "avg cpu" --series-from value-col >/dev/null
$BIN ingest --store "$STORE" "$DATA/nab/realAWSCloudwatch/elb_request_count_8c0756.csv" --app aws \
    --shard-type elb --series-from file-stem >/dev/null
$BIN ingest --store "$STORE" "$DATA/nab/realKnownCause/nyc_taxi.csv" --app taxi --shard-type rides \
    --series-from file-stem >/dev/null
run() {
    local name=$1; shift
    local start=$SECONDS
    echo "== $name: shardcast simulate --store $STORE $* --out $OUT/$name.csv"
    $BIN simulate --store "$STORE" "$@" --out "$OUT/$name.csv" --save-model "$OUT/$name-model" \
        2>"$OUT/$name.log"
    echo "   ($((SECONDS - start)) s; chart $OUT/$name.png, log $OUT/$name.log)"
}
for t in ${TRACES:-azure elb taxi}; do
    case $t in
    azure) run "$t" --series avg_cpu "$@" ;;
    elb) run "$t" --series elb_request_count_8c0756 "$@" ;;
    taxi) run "$t" --series nyc_taxi "$@" ;;
    *) echo "unknown trace $t (azure, elb, taxi)" >&2; exit 2 ;;
    esac
done
