#!/usr/bin/env bash
# Runs the same scenarios, with the same generator, against callstream, Nchan (nginx),
# Pushpin and the raw baseline, one after the other on 127.0.0.1, and prints a table with
# ratios. Heavy: run it by hand, never in CI.
#
#   bench/compare.sh                      # every scenario, SSE
#   SCENARIOS="hot slow" TRANSPORT=ws bench/compare.sh
#   TARGETS="callstream nchan" DURATION=10 bench/compare.sh
#   PIN=1 SCENARIOS=custom EXTRA_ARGS="--channels 1 --per-channel 1000 --rate 100" bench/compare.sh
#   ACKS=errors SCENARIOS=wide bench/compare.sh   # callstream's runtime answers refusals only
#   JITTER_SECONDS=30 bench/compare.sh            # longer host-pause probe before and after
#   GATEWAY_BIN=/tmp/old/release/callstream TARGETS=callstream bench/compare.sh
#                                                 # another build of the gateway, same generator
set -euo pipefail
cd "$(dirname "$0")/.."

SCENARIOS=${SCENARIOS:-"idle hot wide slow"}
# Idle measures memory growth per stream, so it must run before any heavy scenario: a server's
# allocator keeps memory it once needed, and a hot run would hide (or inflate) the idle figure.
case " $SCENARIOS " in *" idle "*) SCENARIOS="idle $(echo " $SCENARIOS " | sed 's/ idle / /g')" ;; esac
TARGETS=${TARGETS:-"callstream nchan pushpin raw"}
TRANSPORT=${TRANSPORT:-sse}
# PIN=1 gives each side a core of its own: every server on CPU 0 (Nchan with one worker), the
# generator on CPU 1. Without it, server and generator share both cores, and the generator's
# own scheduling shows in the tail latency of every target alike.
PIN=${PIN:-0}
if [ "$PIN" = 1 ]; then SRV="taskset -c 0"; GEN="taskset -c 1"; NGINX_WORKERS=1; else SRV=""; GEN=""; NGINX_WORKERS=2; fi
# ACKS=errors publishes to callstream on /v1/runtime?acks=errors (only refusals answered);
# by default every message gets its `accepted`, as every peer's HTTP publish gets a response.
ACKS=${ACKS:-all}
OUT=${OUT:-bench-results/$(date +%Y%m%d-%H%M%S)-$TRANSPORT}
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"

# Peers from Debian's packages, installed only if missing.
missing=()
[ -e /usr/lib/nginx/modules/ngx_nchan_module.so ] || missing+=(libnginx-mod-nchan)
command -v pushpin >/dev/null 2>&1 || missing+=(pushpin)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release -q -p callstream -p callstream-bench
BIN=target/release
CS=${GATEWAY_BIN:-$BIN/callstream}
ulimit -n "$(ulimit -Hn)"

TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 1; pkill -f "nginx -p $TMP" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

wait_port() { for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }

# --- callstream: fresh data, keys from its own CLI ---
CS_DATA=$TMP/callstream
API=$($CS keys create --init --data-dir "$CS_DATA" --workspace bench --json | sed 's/.*"key":"\([^"]*\)".*/\1/')
RT=$($CS keys create --init --data-dir "$CS_DATA" --workspace bench --runtime --json | sed 's/.*"key":"\([^"]*\)".*/\1/')
RUST_LOG=warn $SRV $CS serve --listen 127.0.0.1:8080 --data-dir "$CS_DATA" 2> "$OUT/callstream.log" &
CS_PID=$!; PIDS+=($CS_PID); wait_port 8080

# --- Nchan on nginx, two workers (one per core) ---
mkdir -p "$TMP/nginx/logs"
cat > "$TMP/nginx/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
daemon off;
worker_processes $NGINX_WORKERS;
worker_rlimit_nofile 19500;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
events { worker_connections 19000; }
http {
  access_log off;
  client_body_temp_path $TMP/nginx/body; proxy_temp_path $TMP/nginx/proxy;
  fastcgi_temp_path $TMP/nginx/fastcgi; uwsgi_temp_path $TMP/nginx/uwsgi; scgi_temp_path $TMP/nginx/scgi;
  nchan_shared_memory_size 256M;
  server {
    # The same kernel send buffer as callstream's default (socket_send_buffer_bytes), so that
    # a stuck subscriber is stuck as soon on both (docs/benchmarks.md, slow consumers).
    listen 127.0.0.1:8081 sndbuf=64k;
    location = /pub { nchan_publisher; nchan_channel_id \$arg_id; }
    location = /sub {
      nchan_subscriber; nchan_channel_id \$arg_id;
      nchan_subscriber_first_message newest;
      nchan_eventsource_ping_interval 30; nchan_websocket_ping_interval 30;
    }
  }
}
CONF
$SRV nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" 2> "$OUT/nginx.log" &
PIDS+=($!); wait_port 8081

# --- Pushpin with raised rate limits; SSE and WebSocket (over HTTP) both held by our GRIP origin ---
mkdir -p "$TMP/pushpin/run" "$TMP/pushpin/log"
printf '*,path_beg=/ws 127.0.0.1:8092,over_http\n* 127.0.0.1:8092\n' > "$TMP/pushpin/routes"
sed -e "s|^rundir=.*|rundir=$TMP/pushpin/run|" -e "s|^logdir=.*|logdir=$TMP/pushpin/log|" \
    -e "s|^http_port=.*|http_port=127.0.0.1:7999|" -e "s|^client_maxconn=.*|client_maxconn=19000|" \
    -e "s|^routesfile=.*|routesfile=$TMP/pushpin/routes|" -e "s|^message_rate=.*|message_rate=10000000|" \
    -e "s|^message_hwm=.*|message_hwm=100000000|" -e "s|^log_level=.*|log_level=1|" \
    -e "s|^services=.*|services=condure,zurl,pushpin-proxy,pushpin-handler|" \
    -e 's|^\[proxy\]|[proxy]\nzurl_out_specs=ipc://{rundir}/{ipc_prefix}zurl-in\nzurl_out_stream_specs=ipc://{rundir}/{ipc_prefix}zurl-in-stream\nzurl_in_specs=ipc://{rundir}/{ipc_prefix}zurl-out|' \
    /etc/pushpin/pushpin.conf > "$TMP/pushpin/pushpin.conf"
# Debian's Pushpin talks to origins through a system-wide zurl; this one runs its own.
$SRV $BIN/callstream-bench grip-origin --listen 127.0.0.1:8092 2>/dev/null &
PIDS+=($!)
$SRV pushpin --config "$TMP/pushpin/pushpin.conf" > "$OUT/pushpin.log" 2>&1 &
PIDS+=($!); wait_port 7999; wait_port 5561

# --- the raw baseline ---
$SRV $BIN/callstream-bench raw-server --listen 127.0.0.1:8090 --publish 127.0.0.1:8091 2>/dev/null &
RAW_PID=$!; PIDS+=($RAW_PID); wait_port 8090

pids_of() {
  case $1 in
    callstream) echo "$CS_PID" ;;
    nchan) m=$(cat "$TMP/nginx/nginx.pid"); echo "$m,$(pgrep -P "$m" | paste -sd,)" ;;
    pushpin) pgrep -f "condure|pushpin-proxy|pushpin-handler|zurl|mongrel2" | paste -sd, ;;
    raw) echo "$RAW_PID" ;;
  esac
}

run() { # target scenario label [extra args...]
  local target=$1 scenario=$2 label=$3; shift 3
  local args=(--scenario "$scenario" --target "$target" --transport "$TRANSPORT" --pids "$(pids_of "$target")" --json "$RESULTS" --label "$label")
  case $target in
    callstream) args+=(--base http://127.0.0.1:8080 --api-key "$API" --runtime-key "$RT" --runtime-acks "$ACKS") ;;
    nchan) args+=(--base http://127.0.0.1:8081 --publish http://127.0.0.1:8081) ;;
    pushpin) args+=(--base http://127.0.0.1:7999 --publish http://127.0.0.1:5561) ;;
    raw) args+=(--base http://127.0.0.1:8090 --publish 127.0.0.1:8091) ;;
  esac
  [ -n "${DURATION:-}" ] && args+=(--duration "$DURATION")
  # EXTRA_ARGS shapes a custom scenario, e.g. "--channels 1 --per-channel 1000 --rate 100".
  # shellcheck disable=SC2086
  $GEN $BIN/callstream-bench run "${args[@]}" ${EXTRA_ARGS:-} "$@" | tee -a "$OUT/table.md"
}

# The host's own pauses (hypervisor steal) before and after: a tail latency is only as good as
# these allow, whatever the server (docs/benchmarks.md, "Host pauses").
$BIN/callstream-bench jitter --seconds "${JITTER_SECONDS:-10}" | sed 's/^/before: /' | tee "$OUT/jitter.txt"

for scenario in $SCENARIOS; do
  for target in $TARGETS; do
    [ "$target" = raw ] && [ "$TRANSPORT" = ws ] && continue
    run "$target" "$scenario" "$target" || echo "| $target | $scenario | failed |" | tee -a "$OUT/table.md"
    # The slow-consumer scenario is compared with the same run without the stuck clients.
    if [ "$scenario" = slow ]; then
      run "$target" slow "$target-no-stuck" --stuck 0 || true
    fi
  done
done
$BIN/callstream-bench jitter --seconds "${JITTER_SECONDS:-10}" | sed 's/^/after: /' | tee -a "$OUT/jitter.txt"
{ $BIN/callstream-bench report "$RESULTS"; echo; sed 's/^/    /' "$OUT/jitter.txt"; } | tee "$OUT/summary.md"
echo "results in $OUT"
