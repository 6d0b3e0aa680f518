#!/usr/bin/env bash
# Counts the instructions one call of a hot-path function costs, with callgrind, by running a
# criterion bench under valgrind for a fixed time and dividing the function's inclusive cost by
# the number of times it was called. Unlike bench/callgrind.sh (a whole server under load, whose
# count moves with timing), this one is the same on every run of the same build.
#
#   bench/callgrind-bench.sh PACKAGE BENCH FILTER FUNCTION
#   bench/callgrind-bench.sh callstream-server ingest one_partial 'benches/ingest.rs:ingest::parse'
#   bench/callgrind-bench.sh callstream-server ingest batch_of_10 'benches/ingest.rs:ingest::parse'
#   bench/callgrind-bench.sh callstream-surfaces encode '^encode/transcript_sse$' 'src/native.rs:callstream_surfaces::native::transcript_sse'
#   bench/callgrind-bench.sh callstream-surfaces encode '^encode/conversation_sse$' 'src/native.rs:callstream_surfaces::native::conversation_sse'
#
# FUNCTION is the end of a `file:function` name as callgrind_annotate prints it. An inlined
# function is still named, after the file its code came from, with the caller it was inlined
# into counted as its caller. Another commit:
# `git worktree add /tmp/old <rev>` and `DIR=/tmp/old CARGO_TARGET_DIR=/tmp/old-target`.
set -euo pipefail
[ $# -eq 4 ] || { sed -n 2,16p "$0"; exit 2; }
PACKAGE=$1 BENCH=$2 FILTER=$3 FUNCTION=$4
cd "${DIR:-$(dirname "$0")/..}"
command -v valgrind >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
EXE=$(cargo bench -q -p "$PACKAGE" --bench "$BENCH" --no-run --message-format=json \
  | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$OUT" "$EXE" --bench --profile-time 2 "$FILTER" >/dev/null 2>&1
# In the caller tree, a function's block is its callers ("<" lines: inclusive cost, call
# count), then the function itself ("*" line).
callgrind_annotate --inclusive=yes --tree=caller "$OUT" 2>/dev/null | FUNCTION=$FUNCTION python3 -c '
import os, re, sys
want = os.environ["FUNCTION"]
block = []
for line in sys.stdin:
    if re.match(r"\s*[\d,]+ \([ .\d]+%\)\s+<", line):
        block.append(line)
        continue
    star = re.match(r"\s*[\d,]+ \([ .\d]+%\)\s+\*\s+(.*?)(?: \[.*\])?$", line)
    if star and star.group(1).endswith(want):
        cost = calls = 0
        for caller in block:
            m = re.match(r"\s*([\d,]+) .*\(([\d,]+)x\)", caller)
            if m:
                cost += int(m.group(1).replace(",", ""))
                calls += int(m.group(2).replace(",", ""))
        if calls:
            print(f"{cost // calls} instructions per call ({calls} calls of {want.strip()})")
            sys.exit(0)
    block = []
sys.exit(f"no calls of {want!r} found")
'
