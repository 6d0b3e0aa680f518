#!/usr/bin/env bash
# Issue 17's soak: one gateway (embedded SQLite, in-process bus) for WINDOWS x WINDOW_SECS
# (6 x 600 s: an hour), carrying the wide scenario (8,000 calls, 2 SSE subscribers each,
# 5 events/s per call) run after run, one run per window (each run's calls are ended after it, as
# a runtime would end them, and its 16,000 subscribers reconnect for the next), while
# bench/churner.py opens and closes CHURN streams a second and sends BAD malformed requests a
# second, each checked against its documented answer. Every SAMPLE_SECS the gateway's RSS, open
# descriptors and open connections are recorded. Prints per window: p99, delivery, RSS and
# descriptors at its end. Heavy: run it by hand, never in CI. Only 127.0.0.1 is a target; every
# loop is bounded.
#
# RATE overrides the wide scenario's 5 events/s per call: at 5 the two cores here are saturated
# by the gateway and the generator alone (docs/benchmarks.md), and the churn has no room.
#
#   bench/soak.sh
#   RATE=2.5 bench/soak.sh
#   WINDOWS=2 WINDOW_SECS=60 bench/soak.sh      # a short rehearsal
#   PERF_AT="240 2040" RATE=2.5 bench/soak.sh     # perf record (call graphs) for PERF_SECS (60)
#                                                 # from 240 s and from 2,040 s (windows 1 and 4)
#   BIN=/some/dir bench/soak.sh                   # binaries built earlier (no build here)
#   STAT_AT="300 2100" bench/soak.sh              # perf stat (syscalls, context switches) for
#                                                 # STAT_SECS (20) from each offset given
#
# samples.tsv also has the data directory's size (the SQLite database and its WAL), the
# gateway's live async tasks (callstream_runtime_tasks_alive), its CPU time so far (user +
# system, ms) and its context switches so far (every thread's, voluntary and not).
set -euo pipefail
cd "$(dirname "$0")/.."
WINDOWS=${WINDOWS:-6}
WINDOW_SECS=${WINDOW_SECS:-600}
CHURN=${CHURN:-50}
BAD=${BAD:-20}
SAMPLE_SECS=${SAMPLE_SECS:-60}
RATE=${RATE:-5}
OUT=${OUT:-bench-results/$(date +%Y%m%d-%H%M%S)-soak}
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
PERF_AT=${PERF_AT:-}
PERF_SECS=${PERF_SECS:-60}
STAT_AT=${STAT_AT:-}
STAT_SECS=${STAT_SECS:-20}
if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p callstream -p callstream-bench
  BIN=target/release
fi
ulimit -n "$(ulimit -Hn)"
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
key() { $BIN/callstream keys create --init --data-dir "$TMP/cs" "$@" --json | sed 's/.*"key":"\([^"]*\)".*/\1/'; }

API=$(key --workspace bench)
RT=$(key --workspace bench --runtime)
OTHER=$(key --workspace other)
OTHER_RT=$(key --workspace other --runtime)
RUST_LOG=warn $BIN/callstream serve --listen 127.0.0.1:8080 --data-dir "$TMP/cs" 2> "$OUT/callstream.log" &
CS_PID=$!; PIDS+=($CS_PID); wait_port 8080

TOTAL=$((WINDOWS * WINDOW_SECS))
# The gateway's resources, sampled while everything runs.
(
  printf 'seconds\trss_kib\tfds\tconnections_open\tdata_kib\ttasks_alive\tcpu_ms\tctx_switches\n'
  tick_ms=$(( 1000 / $(getconf CLK_TCK) ))
  start=$(date +%s)
  while kill -0 "$CS_PID" 2>/dev/null; do
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$CS_PID/status")
    fds=$(ls "/proc/$CS_PID/fd" | wc -l)
    metrics=$(curl -s --max-time 5 http://127.0.0.1:8080/metrics)
    open=$(awk '/^callstream_connections_open / {print $2}' <<< "$metrics")
    tasks=$(awk '/^callstream_runtime_tasks_alive / {print $2}' <<< "$metrics")
    data=$(du -sk "$TMP/cs" | cut -f1)
    # Fields 14 and 15 of /proc/<pid>/stat (utime, stime), counted after the command's ")".
    cpu=$(awk -v t="$tick_ms" '{ sub(/.*\) /, ""); print ($12 + $13) * t }' "/proc/$CS_PID/stat")
    ctx=$(cat /proc/"$CS_PID"/task/*/status 2>/dev/null | awk '/ctxt_switches:/ { n += $2 } END { print n }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(( $(date +%s) - start ))" "$rss" "$fds" "${open:-?}" "$data" "${tasks:-?}" "$cpu" "$ctx"
    sleep "$SAMPLE_SECS"
  done
) > "$OUT/samples.tsv" &
PIDS+=($!)

# Profiles at the given offsets (seconds from here), each PERF_SECS long.
if [ -n "$PERF_AT" ]; then
  (
    start=$(date +%s)
    for at in $PERF_AT; do
      sleep $(( at - ($(date +%s) - start) > 0 ? at - ($(date +%s) - start) : 0 ))
      perf record -q -F 99 --call-graph dwarf,8192 -p "$CS_PID" -o "$OUT/perf-$at.data" \
        -- sleep "$PERF_SECS" 2> "$OUT/perf-$at.err" || true
    done
  ) &
  PIDS+=($!)
fi

# Counters at the given offsets: the syscalls that carry frames and wake-ups, per STAT_SECS.
if [ -n "$STAT_AT" ]; then
  (
    start=$(date +%s)
    for at in $STAT_AT; do
      sleep $(( at - ($(date +%s) - start) > 0 ? at - ($(date +%s) - start) : 0 ))
      perf stat -x, -e task-clock,context-switches,syscalls:sys_enter_epoll_wait \
        -e syscalls:sys_enter_futex,syscalls:sys_enter_writev,syscalls:sys_enter_write \
        -e syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_read \
        -p "$CS_PID" -o "$OUT/stat-$at.csv" -- sleep "$STAT_SECS" 2> "$OUT/stat-$at.err" || true
    done
  ) &
  PIDS+=($!)
fi

python3 bench/churner.py --port 8080 --api-key "$API" --runtime-key "$RT" --other-key "$OTHER" \
  --other-runtime-key "$OTHER_RT" --churn "$CHURN" --bad "$BAD" --seconds "$TOTAL" \
  > "$OUT/churner.json" 2> "$OUT/churner.err" &
CHURNER=$!; PIDS+=($CHURNER)

for w in $(seq "$WINDOWS"); do
  $BIN/callstream-bench run --scenario wide --target callstream --transport sse --pids "$CS_PID" \
    --json "$RESULTS" --label "window-$w" --base http://127.0.0.1:8080 --api-key "$API" \
    --runtime-key "$RT" --duration "$WINDOW_SECS" --rate "$RATE" --end-channels | tee -a "$OUT/table.md"
  printf 'window %s ended at %s: rss %s KiB, %s descriptors\n' "$w" "$(date +%T)" \
    "$(awk '/^VmRSS:/ {print $2}' "/proc/$CS_PID/status")" "$(ls "/proc/$CS_PID/fd" | wc -l)" \
    | tee -a "$OUT/windows.txt"
done
wait "$CHURNER" || true
curl -s http://127.0.0.1:8080/metrics | grep -E '^callstream_(connections|history_bytes|frames_dropped|calls_live|http_requests_total)' > "$OUT/metrics.txt" || true
echo "churn and bad input: $(cat "$OUT/churner.json")" | tee -a "$OUT/windows.txt"
$BIN/callstream-bench report "$RESULTS" | tee "$OUT/summary.md"
cat "$OUT/samples.tsv"
echo "results in $OUT"
