#!/usr/bin/env bash
# Several gateway nodes, measured with the same generator as bench/compare.sh, in one run:
#
#   embedded   one node on SQLite and the in-process bus (the default set-up)
#   cluster1   one node on NATS + PostgreSQL
#   cluster2   two nodes on one NATS and one PostgreSQL: published at node A, subscribed at B
#   nchan2     two nginx + Nchan nodes on one Redis (nchan_redis_storage_mode distributed):
#              published at one, subscribed at the other
#
# Heavy: run it by hand, never in CI. Needs PostgreSQL at $PG_ADMIN (trust auth; it creates the
# roles callstream_owner and callstream_app if missing, and a database it drops at the end),
# nats-server 2.11+ ($CALLSTREAM_NATS_SERVER or PATH), redis-server and libnginx-mod-nchan.
#
#   bench/cluster.sh                                   # hot and wide, SSE, every target
#   SCENARIOS=hot TARGETS="cluster2 nchan2" bench/cluster.sh
#   SCENARIOS=custom TARGETS=cluster2 EXTRA_ARGS="--channels 200 --per-channel 1 --rate 100" bench/cluster.sh
#   BIN=/some/dir bench/cluster.sh                     # binaries built earlier (no build here)
#   NODE_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 bench/cluster.sh   # the nodes on another malloc
set -euo pipefail
cd "$(dirname "$0")/.."

SCENARIOS=${SCENARIOS:-"hot wide"}
TARGETS=${TARGETS:-"embedded cluster1 cluster2 nchan2"}
TRANSPORT=${TRANSPORT:-sse}
PG_ADMIN=${PG_ADMIN:-postgres://postgres@127.0.0.1:5432/postgres}
NATS_SERVER=${CALLSTREAM_NATS_SERVER:-nats-server}
OUT=${OUT:-bench-results/$(date +%Y%m%d-%H%M%S)-cluster-$TRANSPORT}
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"

[ -e /usr/lib/nginx/modules/ngx_nchan_module.so ] || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnginx-mod-nchan >/dev/null
}
if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p callstream -p callstream-bench
  BIN=target/release
fi
ulimit -n "$(ulimit -Hn)"

TMP=$(mktemp -d)
DB=cs_bench_$$
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  pkill -f "nginx -p $TMP" 2>/dev/null || true
  psql -q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }
json_key() { sed 's/.*"key":"\([^"]*\)".*/\1/'; }

# --- NATS (JetStream) and PostgreSQL ---
"$NATS_SERVER" -a 127.0.0.1 -p 4311 -js -sd "$TMP/nats" 2> "$OUT/nats.log" &
NATS_PID=$!; PIDS+=($NATS_PID); wait_port 4311
for role in "callstream_owner LOGIN BYPASSRLS" "callstream_app LOGIN"; do
  psql -q "$PG_ADMIN" -c "DO \$\$ BEGIN CREATE ROLE $role; EXCEPTION WHEN duplicate_object THEN NULL; END \$\$" >/dev/null
done
psql -q "$PG_ADMIN" -c "CREATE DATABASE $DB OWNER callstream_owner" >/dev/null
host=${PG_ADMIN#*@}; host=${host%%/*}
$BIN/callstream migrate --database-url "postgres://callstream_owner@$host/$DB"
APP_URL="postgres://callstream_app@$host/$DB"
PG_PIDS=$(pgrep -d, -x postgres || pgrep -d, postgres)

# --- callstream: node A (8080) and B (8082) on the cluster, one embedded node (8084) ---
API=$($BIN/callstream keys create --database-url "$APP_URL" --workspace bench --json | json_key)
RT=$($BIN/callstream keys create --database-url "$APP_URL" --workspace bench --runtime --json | json_key)
node() { # port, log
  RUST_LOG=warn CALLSTREAM_DATABASE_URL=$APP_URL CALLSTREAM_NATS_URL=nats://127.0.0.1:4311 \
    LD_PRELOAD=${NODE_PRELOAD:-} $BIN/callstream serve --listen "127.0.0.1:$1" --data-dir "$TMP/node-$1" 2> "$OUT/$2.log" &
  PIDS+=($!); wait_port "$1"
}
node 8080 node-a; A_PID=${PIDS[-1]}
node 8082 node-b; B_PID=${PIDS[-1]}
E_DATA=$TMP/embedded
E_API=$($BIN/callstream keys create --init --data-dir "$E_DATA" --workspace bench --json | json_key)
E_RT=$($BIN/callstream keys create --init --data-dir "$E_DATA" --workspace bench --runtime --json | json_key)
RUST_LOG=warn $BIN/callstream serve --listen 127.0.0.1:8084 --data-dir "$E_DATA" 2> "$OUT/embedded.log" &
E_PID=$!; PIDS+=($E_PID); wait_port 8084

# --- Redis and two nginx + Nchan nodes on it (8081 publishes, 8083 subscribes) ---
redis-server --port 6391 --bind 127.0.0.1 --save '' --appendonly no --daemonize no > "$OUT/redis.log" 2>&1 &
REDIS_PID=$!; PIDS+=($REDIS_PID); wait_port 6391
nchan_node() { # name, port
  mkdir -p "$TMP/$1/logs"
  cat > "$TMP/$1/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
daemon off;
worker_processes 1;
worker_rlimit_nofile 19500;
pid $TMP/$1/nginx.pid;
error_log $TMP/$1/logs/error.log warn;
events { worker_connections 19000; }
http {
  access_log off;
  client_body_temp_path $TMP/$1/body; proxy_temp_path $TMP/$1/proxy;
  fastcgi_temp_path $TMP/$1/fastcgi; uwsgi_temp_path $TMP/$1/uwsgi; scgi_temp_path $TMP/$1/scgi;
  nchan_shared_memory_size 256M;
  # The upstream { nchan_redis_server } + nchan_redis_pass form delivered nothing across the two
  # nodes here (Nchan 1.3.6); this form does. nchan_subscriber_first_message newest is left out:
  # slact/nchan#430 reports it breaks delivery with Redis.
  nchan_redis_url redis://127.0.0.1:6391;
  nchan_redis_storage_mode distributed;
  server {
    listen 127.0.0.1:$2 sndbuf=64k;
    location = /pub { nchan_publisher; nchan_channel_id \$arg_id; nchan_use_redis on; }
    location = /sub {
      nchan_subscriber; nchan_channel_id \$arg_id; nchan_use_redis on;
      nchan_eventsource_ping_interval 30; nchan_websocket_ping_interval 30;
    }
  }
}
CONF
  nginx -p "$TMP/$1" -c "$TMP/$1/nginx.conf" 2> "$OUT/$1.log" &
  PIDS+=($!); wait_port "$2"
}
nchan_node nchan-a 8081
nchan_node nchan-b 8083
# After a run it could not keep up with, Nchan goes on working off its backlog (one worker at
# a third of a core and 8 GB for minutes after the hot scenario): it is restarted, on an empty
# Redis, so that it cannot slow the runs that follow.
restart_nchan() {
  for n in nchan-a nchan-b; do kill "$(cat "$TMP/$n/nginx.pid")" 2>/dev/null || true; done
  sleep 1
  redis-cli -p 6391 flushall >/dev/null
  nchan_node nchan-a 8081
  nchan_node nchan-b 8083
}
# Waits (up to 60 s) until every process under test is idle: less than 5 % of a core.
cpu_ticks() { local t=0; for p in $(pgrep -f "callstream serve|nginx: worker|redis-server --port 6391|nats-server -a 127.0.0.1 -p 4311"); do
  t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo $t; }
settle() { for _ in $(seq 60); do a=$(cpu_ticks); sleep 1; b=$(cpu_ticks); [ $((b - a)) -lt 5 ] && return 0; done; echo "servers still busy after 60 s" >&2; }

nginx_pids() { m=$(cat "$TMP/$1/nginx.pid"); { echo "$m"; pgrep -P "$m"; } | paste -sd,; }

run() { # target scenario
  local target=$1 scenario=$2
  local args=(--scenario "$scenario" --transport "$TRANSPORT" --json "$RESULTS" --label "$target")
  case $target in
    embedded) args+=(--target callstream --base http://127.0.0.1:8084 --api-key "$E_API" --runtime-key "$E_RT" --pids "$E_PID") ;;
    cluster1) args+=(--target callstream --base http://127.0.0.1:8080 --api-key "$API" --runtime-key "$RT" --pids "$A_PID,$NATS_PID,$PG_PIDS") ;;
    cluster2) args+=(--target callstream --base http://127.0.0.1:8082 --publish http://127.0.0.1:8080 --api-key "$API" --runtime-key "$RT" --pids "$A_PID,$B_PID,$NATS_PID,$PG_PIDS") ;;
    nchan2) args+=(--target nchan --base http://127.0.0.1:8083 --publish http://127.0.0.1:8081 --pids "$(nginx_pids nchan-a),$(nginx_pids nchan-b),$REDIS_PID") ;;
  esac
  [ -n "${DURATION:-}" ] && args+=(--duration "$DURATION")
  # shellcheck disable=SC2086
  $BIN/callstream-bench run "${args[@]}" ${EXTRA_ARGS:-} | tee -a "$OUT/table.md"
  # The nodes' own counters after the run (frames dropped to full queues, NATS paths, …);
  # they add up over the runs of one invocation.
  local port
  case $target in embedded) port="8084" ;; cluster1) port="8080" ;; cluster2) port="8080 8082" ;; *) port="" ;; esac
  for p in $port; do
    curl -s "http://127.0.0.1:$p/metrics" | grep -v '^#' > "$OUT/metrics-$target-$scenario-$p.txt" || true
  done
}

for scenario in $SCENARIOS; do
  for target in $TARGETS; do
    settle
    run "$target" "$scenario" || echo "| $target | $scenario | failed |" | tee -a "$OUT/table.md"
    if [ "$target" = nchan2 ]; then restart_nchan; fi
  done
done
$BIN/callstream-bench report "$RESULTS" | tee "$OUT/summary.md"
echo "results in $OUT"
