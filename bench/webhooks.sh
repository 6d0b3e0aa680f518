#!/usr/bin/env bash
# Issue 18's webhook figures: a fresh gateway (embedded SQLite, in-process bus) per run, a
# receiver in callstream-bench on 127.0.0.1, events sent one per ingest request at RATE/s:
# ingest alone (0 endpoints), then 1, 10 and 100 endpoints (deliveries per second, delivery and
# ingest latency); then recovery: the gateway killed with `kill -9` KILL_AFTER seconds into a
# run with 10 endpoints and restarted a second later, every accepted event awaited at every
# endpoint (duplicates and the time to the last delivery reported). Heavy: by hand, never in CI.
#
# Then fairness: one healthy endpoint measured beside another workspace's 40 silent ones.
#
#   bench/webhooks.sh
#   RATE=500 EVENTS=5000 bench/webhooks.sh
#   ENDPOINTS="10" PARTS="endpoints" bench/webhooks.sh    # one part alone
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-200}
EVENTS=${EVENTS:-2000}
KILL_AFTER=${KILL_AFTER:-5}
ENDPOINTS=${ENDPOINTS:-0 1 10 100}
PARTS=${PARTS:-endpoints fairness recovery}
part() { [[ " $PARTS " == *" $1 "* ]]; }
OUT=${OUT:-bench-results/$(date +%Y%m%d-%H%M%S)-webhooks}
mkdir -p "$OUT"
cargo build --release -q -p callstream -p callstream-bench
BIN=target/release
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
serve() { # data dir
  CALLSTREAM_ALLOW_PRIVATE_WEBHOOK_TARGETS=true RUST_LOG=warn \
    $BIN/callstream serve --listen 127.0.0.1:8080 --data-dir "$1" 2>> "$OUT/callstream.log" &
  CS_PID=$!; PIDS+=($CS_PID); wait_port 8080
}
key() { # data dir, workspace, flags
  $BIN/callstream keys create --init --data-dir "$1" --workspace "$2" --json "${@:3}" | sed 's/.*"key":"\([^"]*\)".*/\1/'; }

part endpoints && for endpoints in $ENDPOINTS; do
  DATA=$(mktemp -d)
  API=$(key "$DATA" bench); RT=$(key "$DATA" bench --runtime)
  serve "$DATA"
  $BIN/callstream-bench webhooks --api-key "$API" --runtime-key "$RT" --endpoints "$endpoints" \
    --events "$EVENTS" --rate "$RATE" --json "$OUT/results.jsonl" | tee -a "$OUT/table.md" \
    || echo "($endpoints endpoints: not every delivery within the wait; the row says how many)" | tee -a "$OUT/table.md"
  kill "$CS_PID"; wait "$CS_PID" 2>/dev/null || true; rm -rf "$DATA"
done

# Fairness: another workspace's 40 endpoints on a port that accepts and never answers, 5 events
# sent to them first, then one healthy endpoint measured at RATE.
if part fairness; then
DATA=$(mktemp -d)
API=$(key "$DATA" bench); RT=$(key "$DATA" bench --runtime)
NOISY_API=$(key "$DATA" noisy); NOISY_RT=$(key "$DATA" noisy --runtime)
serve "$DATA"
$BIN/callstream-bench webhooks --api-key "$API" --runtime-key "$RT" --endpoints 1 \
  --silent-endpoints 40 --silent-events 5 --silent-api-key "$NOISY_API" --silent-runtime-key "$NOISY_RT" \
  --events "$EVENTS" --rate "$RATE" --label "1 endpoint beside 40 silent ones" \
  --json "$OUT/results.jsonl" | tee -a "$OUT/table.md" \
  || echo "(beside silent endpoints: not every delivery within the wait)" | tee -a "$OUT/table.md"
kill "$CS_PID"; wait "$CS_PID" 2>/dev/null || true; rm -rf "$DATA"
fi

# Recovery after kill -9, under load.
if part recovery; then
DATA=$(mktemp -d)
API=$(key "$DATA" bench); RT=$(key "$DATA" bench --runtime)
serve "$DATA"
$BIN/callstream-bench webhooks --api-key "$API" --runtime-key "$RT" --endpoints 10 \
  --events "$EVENTS" --rate "$RATE" --through-restarts --label "kill -9 at ${KILL_AFTER} s" \
  --json "$OUT/results.jsonl" | tee -a "$OUT/table.md" &
BENCH=$!
sleep "$KILL_AFTER"
kill -9 "$CS_PID"; echo "killed at $(date +%T.%N)" | tee -a "$OUT/table.md"
sleep 1
serve "$DATA"; echo "restarted and ready at $(date +%T.%N)" | tee -a "$OUT/table.md"
wait "$BENCH"
rm -rf "$DATA"
fi
echo "results in $OUT"
