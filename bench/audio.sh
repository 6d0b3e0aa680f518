#!/usr/bin/env bash
# Concurrent bidirectional audio streams (seed 004), measured from both ends by
# `callstream-bench audio`: callstream, then the minimal pre-encoded pacer as the raw baseline,
# in the same run. Heavy: run it by hand, never in CI.
#
#   bench/audio.sh                                  # 1,000 streams, callstream then raw
#   STREAMS="1000 2000 3000" bench/audio.sh         # the ceiling: several sizes in one run
#   PIN=1 bench/audio.sh                            # gateway (or pacer) on CPU 0, generator on CPU 1
#   TARGETS=callstream DURATION=60 CONTENT_TYPE="audio/x-l16;rate=16000" bench/audio.sh
set -euo pipefail
cd "$(dirname "$0")/.."

STREAMS=${STREAMS:-1000}
TARGETS=${TARGETS:-"callstream raw"}
DURATION=${DURATION:-30}
WARMUP=${WARMUP:-10}
CONTENT_TYPE=${CONTENT_TYPE:-"audio/x-l16;rate=8000"}
PIN=${PIN:-0}
if [ "$PIN" = 1 ]; then SRV="taskset -c 0"; GEN="taskset -c 1"; else SRV=""; GEN=""; fi
OUT=${OUT:-bench-results/$(date +%Y%m%d-%H%M%S)-audio}
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"

cargo build --release -q -p callstream -p callstream-bench
BIN=target/release
ulimit -n "$(ulimit -Hn)"
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 1; rm -rf "$TMP"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }

for n in $STREAMS; do
  for target in $TARGETS; do
    case $target in
      callstream)
        # A fresh gateway per run: memory per stream is measured from its start.
        data=$TMP/cs-$n
        api=$($BIN/callstream keys create --init --data-dir "$data" --workspace bench --json | sed 's/.*"key":"\([^"]*\)".*/\1/')
        rt=$($BIN/callstream keys create --init --data-dir "$data" --workspace bench --runtime --json | sed 's/.*"key":"\([^"]*\)".*/\1/')
        CALLSTREAM_ALLOW_PRIVATE_WEBHOOK_TARGETS=true RUST_LOG=warn $SRV $BIN/callstream serve \
          --listen 127.0.0.1:8080 --data-dir "$data" 2> "$OUT/callstream-$n.log" &
        pid=$!; PIDS+=($pid); wait_port 8080
        $GEN $BIN/callstream-bench audio --target callstream --streams "$n" --duration "$DURATION" \
          --warmup "$WARMUP" --content-type "$CONTENT_TYPE" --runtime-key "$rt" --api-key "$api" \
          --pids "$pid" --label "callstream-$n" --json "$RESULTS"
        kill "$pid"; wait "$pid" 2>/dev/null || true
        ;;
      raw)
        # The pacer is started by the generator; pinned where the gateway runs.
        pacer_cpus=()
        [ "$PIN" = 1 ] && pacer_cpus=(--pacer-cpus 0)
        $GEN $BIN/callstream-bench audio --target raw "${pacer_cpus[@]}" --streams "$n" --duration "$DURATION" \
          --warmup "$WARMUP" --label "raw-$n" --json "$RESULTS"
        ;;
    esac
  done
done
echo "results: $RESULTS"
