#!/usr/bin/env bash
# CPU of each process group of a bench/cluster.sh run, over SPAN seconds of it: started beside
# the run, it waits for the generator, lets 4 s of start-up pass, and reads /proc/<pid>/stat.
#
#   bench/cpu-split.sh 10 > split.txt & SCENARIOS=custom TARGETS=cluster2 ... bench/cluster.sh
#
# Groups: node A (8080) and B (8082) of cluster.sh, its nats-server (4311), every postgres
# process, and the generator with its subscriber processes. Prints "<group> <cores> cores", one line each.
set -euo pipefail
span=${1:-10}
for _ in $(seq 600); do pgrep -f "callstream-bench run" >/dev/null && break; sleep 0.5; done
sleep 4
ticks() {
  local t=0
  for p in $(pgrep -f "$1"); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}
declare -A pat=([nodeA]="serve --listen 127.0.0.1:8080" [nodeB]="serve --listen 127.0.0.1:8082"
  [nats]="nats-server -a 127.0.0.1 -p 4311" [postgres]="^postgres" [generator]="callstream-bench (run|subscribe)")
declare -A before
for k in "${!pat[@]}"; do before[$k]=$(ticks "${pat[$k]}"); done
sleep "$span"
hz=$(getconf CLK_TCK)
for k in "${!pat[@]}"; do
  after=$(ticks "${pat[$k]}")
  awk -v k="$k" -v d="$((after - ${before[$k]}))" -v hz="$hz" -v s="$span" \
    'BEGIN { printf "%s %.3f cores\n", k, d / hz / s }'
done
