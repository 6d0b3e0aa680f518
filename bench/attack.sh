#!/usr/bin/env bash
# Issue 17, item 4, measured: the hot scenario's healthy SSE streams alone, then again while an
# attacker opens half-sent requests at RATE connections a second from SOURCES addresses and
# holds them (bench/attacker.py), starting DELAY seconds into the run, once the healthy streams
# are open (while the attack fills the gateway's total, new connections are refused: that is
# the limit's purpose). Prints both runs' delivery and latency, and what the gateway refused. Heavy: run it by hand, never in CI. Only 127.0.0.1 is a target; every loop is bounded.
#
#   bench/attack.sh
#   RATE=4000 SOURCES=40 DURATION=30 bench/attack.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-2000}
SOURCES=${SOURCES:-20}
DURATION=${DURATION:-20}
DELAY=${DELAY:-6}
OUT=${OUT:-bench-results/$(date +%Y%m%d-%H%M%S)-attack}
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
cargo build --release -q -p callstream -p callstream-bench
BIN=target/release
ulimit -n "$(ulimit -Hn)"
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

API=$($BIN/callstream keys create --init --data-dir "$TMP/cs" --workspace bench --json | sed 's/.*"key":"\([^"]*\)".*/\1/')
RT=$($BIN/callstream keys create --init --data-dir "$TMP/cs" --workspace bench --runtime --json | sed 's/.*"key":"\([^"]*\)".*/\1/')
RUST_LOG=warn $BIN/callstream serve --listen 127.0.0.1:8080 --data-dir "$TMP/cs" 2> "$OUT/callstream.log" &
CS_PID=$!; PIDS+=($CS_PID); wait_port 8080

run() {
  $BIN/callstream-bench run --scenario hot --target callstream --transport sse --pids "$CS_PID" \
    --json "$RESULTS" --label "$1" --base http://127.0.0.1:8080 --api-key "$API" --runtime-key "$RT" \
    --duration "$DURATION" | tee -a "$OUT/table.md"
}
run quiet
python3 bench/attacker.py --port 8080 --rate "$RATE" --sources "$SOURCES" --delay "$DELAY" \
  --seconds "$DURATION" > "$OUT/attacker.txt" &
ATTACKER=$!; PIDS+=($ATTACKER)
run under-attack
wait "$ATTACKER" || true
curl -s http://127.0.0.1:8080/metrics | grep -E '^callstream_connections' | tee "$OUT/metrics.txt"
echo "open descriptors of the gateway after: $(ls /proc/$CS_PID/fd | wc -l)" | tee -a "$OUT/metrics.txt"
cat "$OUT/attacker.txt"
$BIN/callstream-bench report "$RESULTS" | tee "$OUT/summary.md"
echo "results in $OUT"
