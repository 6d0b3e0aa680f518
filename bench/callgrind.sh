#!/usr/bin/env bash
# Counts the userspace instructions a server spends under a fixed load, with callgrind: a
# figure a noisy host cannot move (the kernel's share is not counted). Counting starts once
# every subscriber is connected and stops after the generator's run.
#
#   TARGET=callstream bench/callgrind.sh                    # 10 calls x 10 viewers, 20 events/s each, 10 s
#   TARGET=callstream PER=30 bench/callgrind.sh             # the same with 30 viewers per call
#   TARGET=callstream CHANNELS=100 PER=1 bench/callgrind.sh # ingest-heavy: 100 calls x 1 viewer
#   TARGET=raw bench/callgrind.sh                           # the raw baseline writer
#   SERVER_BIN=/other/build/release TARGET=callstream bench/callgrind.sh   # another build's server
#   KEEP=/tmp/cg TARGET=callstream bench/callgrind.sh       # keep the output for callgrind_annotate
#   TRANSPORT=ws TARGET=callstream bench/callgrind.sh      # subscribers over WebSocket
#
# Prints the generator's line and the total instructions. Per delivered frame: run PER=10 and
# PER=30 and divide the difference by the extra frames (docs/benchmarks.md). Heavy: by hand only.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
cargo build --release -q -p callstream -p callstream-bench
GEN=target/release/callstream-bench
SERVER_BIN=${SERVER_BIN:-target/release}
TARGET=${TARGET:-callstream}
ulimit -n "$(ulimit -Hn)"
TMP=$(mktemp -d)
SP=
cleanup() { [ -n "$SP" ] && kill "$SP" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
VG=(valgrind --tool=callgrind --instr-atstart=no "--callgrind-out-file=$TMP/callgrind.out")
if [ "$TARGET" = callstream ]; then
  key() { "$SERVER_BIN/callstream" keys create --init --data-dir "$TMP/cs" --workspace bench --json "$@" | sed 's/.*"key":"\([^"]*\)".*/\1/'; }
  API=$(key); RT=$(key --runtime)
  RUST_LOG=warn "${VG[@]}" "$SERVER_BIN/callstream" serve --listen 127.0.0.1:8080 --data-dir "$TMP/cs" 2> "$TMP/server.log" &
  SP=$!; PORT=8080
  ARGS=(--target callstream --base http://127.0.0.1:8080 --api-key "$API" --runtime-key "$RT")
else
  "${VG[@]}" "$GEN" raw-server --listen 127.0.0.1:8090 --publish 127.0.0.1:8091 2> "$TMP/server.log" &
  SP=$!; PORT=8090
  ARGS=(--target raw --base http://127.0.0.1:8090 --publish 127.0.0.1:8091)
fi
for _ in $(seq 200); do (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.3; done
"$GEN" run --pids "$SP" --duration "${DURATION:-10}" "${ARGS[@]}" --scenario custom \
  --transport "${TRANSPORT:-sse}" --channels "${CHANNELS:-10}" --per-channel "${PER:-10}" --rate "${RATE:-20}" > "$TMP/gen.out" 2> "$TMP/gen.err" &
G=$!
for _ in $(seq 600); do grep -q "subscriptions open" "$TMP/gen.err" 2>/dev/null && break; sleep 0.1; done
callgrind_control -i on "$SP" > /dev/null 2>&1
wait "$G"
callgrind_control -d "$SP" > /dev/null 2>&1
grep '^|' "$TMP/gen.out"
# The dump (`callgrind.out.1`) holds what was counted between switching on and the dump.
for _ in $(seq 50); do [ -s "$TMP/callgrind.out.1" ] && grep -q '^totals:' "$TMP/callgrind.out.1" && break; sleep 0.2; done
echo "instructions counted: $(sed -n 's/^totals: //p' "$TMP/callgrind.out.1")"
if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$TMP"/callgrind.out* "$KEEP"/; fi
