#!/usr/bin/env bash
# The kernel's view of one server under the wide scenario: context switches, futex and send
# calls, CPU time, counted by `perf stat` over 6 s of steady load (the server alone on
# 127.0.0.1:8080, the generator beside it). For comparing two builds of the gateway:
#
#   bench/perf-stat.sh target/release/callstream after
#   bench/perf-stat.sh /tmp/cs-before-target/release/callstream before
#
# Prints the generator's line; the counts are in /tmp/perf-<label>.stat. NOPERF=1 runs the
# load without perf. Heavy: by hand only.
set -u
cd "$(dirname "$0")/.."
BIN=$1; L=$2
command -v perf >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; }
cargo build --release -q -p callstream-bench
ulimit -n "$(ulimit -Hn)"
D=$(mktemp -d)
key() { "$BIN" keys create --init --data-dir "$D" --workspace bench --json "$@" | sed 's/.*"key":"\([^"]*\)".*/\1/'; }
API=$(key); RT=$(key --runtime)
RUST_LOG=warn "$BIN" serve --listen 127.0.0.1:8080 --data-dir "$D" 2>/dev/null &
SP=$!
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/8080) 2>/dev/null && break; sleep 0.1; done
target/release/callstream-bench run --scenario wide --target callstream --base http://127.0.0.1:8080 \
  --api-key "$API" --runtime-key "$RT" --duration 15 --pids "$SP" > "/tmp/perf-$L.gen" 2>&1 &
G=$!
for _ in $(seq 600); do grep -q "subscriptions open" "/tmp/perf-$L.gen" 2>/dev/null && break; sleep 0.1; done
sleep 4
if [ -z "${NOPERF:-}" ]; then
  perf stat -e context-switches,cpu-migrations,task-clock,syscalls:sys_enter_sendto,syscalls:sys_enter_futex,syscalls:sys_enter_epoll_wait \
    -p "$SP" -o "/tmp/perf-$L.stat" -- sleep 6 >/dev/null 2>&1
fi
wait "$G"
kill "$SP"; sleep 1; rm -rf "$D"
grep "^| callstream" "/tmp/perf-$L.gen" | head -1
