#!/usr/bin/env bash
# Protocol F on the five setups of ../shared/bench/PROTOCOL.md: ingest the
# shared traces into scratch stores, backtest each setup with `shardcast
# backtest` (extra flags are passed through, e.g. `--cell lstm`), and score
# the forecasts with the protocol's own scorer (needs numpy and pandas).
#
#   benches/protocol_f.sh [flags...]          SETUPS="nab_aws_5min_h12" to pick
#   SEEDS="1 2 3" benches/protocol_f.sh      each setup once per seed, and the mean
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${SHARDCAST_DATA:-../shared/data}
SCORER=${SHARDCAST_SCORER:-../shared/bench/score_forecasts.py}
OUT=${OUT:-out/protocol-f}
BIN=${BIN:-target/debug/shardcast}
PY=${PYTHON:-python3}
[ -x "$BIN" ] || cargo build
rm -rf "$OUT" && mkdir -p "$OUT"
$BIN ingest --store "$OUT/nab" "$DATA/nab/realAWSCloudwatch/*.csv" --app aws --series-from file-stem >/dev/null
$BIN ingest --store "$OUT/azure" "$DATA/azure_vm_cpu_2017/azure.csv" --app azure \
    --value-col "min cpu,avg cpu,max cpu" --series-from value-col >/dev/null
$BIN ingest --store "$OUT/taxi" "$DATA/nab/realKnownCause/nyc_taxi.csv" --app taxi --series-from file-stem >/dev/null
run() {
    local setup=$1; shift
    if [ -z "${SEEDS:-}" ]; then
        local start=$SECONDS
        $BIN backtest "$@" --out "$OUT/$setup.csv" >"$OUT/$setup.log" 2>&1
        echo "== $setup (fit + backtest $((SECONDS - start)) s, log in $OUT/$setup.log)"
        $PY "$SCORER" "$setup" "$OUT/$setup.csv" | tail -8
        return
    fi
    # One line per seed and their mean: single runs of the small setups
    # move by 0.05-0.1 relative WQL from the seed alone.
    echo "== $setup, seeds $SEEDS (relative WQL, 80% coverage)"
    local seed
    for seed in $SEEDS; do
        local tag="$setup.seed$seed" start=$SECONDS
        $BIN backtest "$@" --seed "$seed" --out "$OUT/$tag.csv" >"$OUT/$tag.log" 2>&1
        $PY "$SCORER" "$setup" "$OUT/$tag.csv" |
            awk -v s="$seed" -v t=$((SECONDS - start)) \
                '$1 == "relWQL_vs_seasonal_naive_gmean" { w = $2 } $1 == "cov80_mean" { c = $2 }
                 END { printf "seed %-6s %.4f  %.3f  (%d s)\n", s, w, c, t }'
    done | tee "$OUT/$setup.seeds"
    awk '{ w += $3; c += $4; n++ } END { printf "mean        %.4f  %.3f\n", w / n, c / n }' "$OUT/$setup.seeds"
}
for s in ${SETUPS:-nab_aws_5min_h12 nab_aws_hourly_h24 azure_vm_5min_h12 azure_vm_hourly_h24 nyc_taxi_30min_h48}; do
    case $s in
    nab_aws_5min_h12) run "$s" --store "$OUT/nab" --grid 5m --horizon 12 --test-points 288 "$@" ;;
    nab_aws_hourly_h24) run "$s" --store "$OUT/nab" --grid 1h --base-grid 5m --horizon 24 --test-points 72 "$@" ;;
    azure_vm_5min_h12) run "$s" --store "$OUT/azure" --grid 5m --horizon 12 --test-points 288 "$@" ;;
    azure_vm_hourly_h24) run "$s" --store "$OUT/azure" --grid 1h --horizon 24 --test-points 168 "$@" ;;
    nyc_taxi_30min_h48) run "$s" --store "$OUT/taxi" --grid 30m --horizon 48 --test-points 336 "$@" ;;
    *) echo "unknown setup $s" >&2; exit 2 ;;
    esac
done
