#!/usr/bin/env bash
# perf/ab.sh: two lior binaries side by side in one run, so a change is judged by a ratio
# measured under the same machine noise, not by figures from different days.
#
# Usage: perf/ab.sh OLD_LIOR NEW_LIOR   (env: RUNS [5], DURATION [4], BENCH_ARGS [], SERVER_CORE [0],
#        CLIENT_CORE [1], ROWS ["100:express:1 100:recoverable:16 4096:express:1"])
#
# For each round and each row it runs OLD then NEW (alternating which goes first every round):
# a fresh `lior serve` pinned to SERVER_CORE with its own data directory under
# target/perf-work/ab-*, queue `bench` created, and `lior bench` (always NEW's bench, so the
# client is the same) pinned to CLIENT_CORE for DURATION seconds. It prints, per row, the median
# msgs/s and ack p99 of each binary and the ratio NEW/OLD, and writes the same table to
# perf/results/ab-<date>.md with the command line and both binaries' versions.
set -euo pipefail

OLD=${1:?usage: perf/ab.sh OLD_LIOR NEW_LIOR}
NEW=${2:?usage: perf/ab.sh OLD_LIOR NEW_LIOR}
RUNS=${RUNS:-5}
DURATION=${DURATION:-4}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
ROWS=${ROWS:-"100:express:1 100:recoverable:16 4096:express:1"}
# Extra `lior bench` arguments for every run, e.g. BENCH_ARGS="--rate 200000" for open-loop
# latency at a fixed rate.
BENCH_ARGS=${BENCH_ARGS:-}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STAMP=$(date -u +%Y-%m-%d-%H%M)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK="$TARGET/perf-work/ab-$STAMP"
OUT="$ROOT/perf/results/ab-$STAMP.md"
mkdir -p "$WORK" "$ROOT/perf/results"
RAW="$WORK/raw.tsv"
: >"$RAW"

say() { echo "perf/ab.sh: $*" >&2; }
SERVER_PID=
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

# one_run LABEL BINARY SIZE DELIVERY SESSIONS ROUND
one_run() {
    local label=$1 bin=$2 size=$3 delivery=$4 sessions=$5 round=$6
    local dir="$WORK/$label-$size-$delivery-$sessions-$round"
    mkdir -p "$dir"
    taskset -c "$SERVER_CORE" "$bin" serve --listen 127.0.0.1:0 --api 127.0.0.1:0 \
        --data-dir "$dir/data" --cores "$SERVER_CORE" >"$dir/serve.out" 2>"$dir/serve.err" &
    SERVER_PID=$!
    for _ in $(seq 300); do [ -s "$dir/serve.out" ] && break; sleep 0.1; done
    local ready listen api
    ready=$(head -1 "$dir/serve.out")
    listen=$(sed -n 's/.* listen=\([^ ]*\).*/\1/p' <<<"$ready")
    api=$(sed -n 's/.* api=\([^ ]*\).*/\1/p' <<<"$ready")
    [ -n "$listen" ] || { say "$label did not start: $(cat "$dir/serve.err")"; exit 1; }
    "$NEW" queue create bench --api "$api" >/dev/null
    local j
    j=$(taskset -c "$CLIENT_CORE" "$NEW" bench --to 'DIRECT=TCP:127.0.0.1\PRIVATE$\bench' \
        --connect "$listen" --cores "$CLIENT_CORE" --sessions "$sessions" --size "$size" \
        --delivery "$delivery" --duration "$DURATION" --json --quiet $BENCH_ARGS) || j='{}'
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
    rm -rf "$dir/data"
    local rate p99
    rate=$(grep -o '"msgs_per_sec":[0-9.]*' <<<"$j" | cut -d: -f2)
    p99=$(grep -o '"p99":[0-9.]*' <<<"$j" | head -1 | cut -d: -f2)
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$size" "$delivery" "$sessions" "${rate:-0}" "${p99:-0}" >>"$RAW"
    say "round $round $label $size B $delivery x$sessions: ${rate:-failed} msg/s, p99 ${p99:-?} us"
}

for round in $(seq "$RUNS"); do
    for row in $ROWS; do
        IFS=: read -r size delivery sessions <<<"$row"
        if [ $((round % 2)) -eq 1 ]; then
            one_run old "$OLD" "$size" "$delivery" "$sessions" "$round"
            one_run new "$NEW" "$size" "$delivery" "$sessions" "$round"
        else
            one_run new "$NEW" "$size" "$delivery" "$sessions" "$round"
            one_run old "$OLD" "$size" "$delivery" "$sessions" "$round"
        fi
    done
done

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
col() { awk -F'\t' -v l="$1" -v s="$2" -v d="$3" -v n="$4" -v c="$5" \
    '$1==l && $2==s && $3==d && $4==n {print $c}' "$RAW"; }
{
    echo "# A/B: $(date -u '+%Y-%m-%d %H:%M') UTC"
    echo
    echo "- old: \`$OLD\`; new: \`$NEW\`"
    echo "- $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores"
    echo "- server pinned to CPU $SERVER_CORE, client (new's \`lior bench\`, window 64) to CPU $CLIENT_CORE;"
    echo "  $RUNS rounds of ${DURATION} s per row and binary, alternating which binary runs first"
    echo "- command: \`RUNS=$RUNS DURATION=$DURATION BENCH_ARGS=\"$BENCH_ARGS\" ROWS=\"$ROWS\" perf/ab.sh OLD NEW\`"
    echo
    echo "| size | delivery | sessions | old msg/s | new msg/s | new/old | old p99 us | new p99 us |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
    for row in $ROWS; do
        IFS=: read -r size delivery sessions <<<"$row"
        o=$(col old "$size" "$delivery" "$sessions" 5 | median)
        n=$(col new "$size" "$delivery" "$sessions" 5 | median)
        op=$(col old "$size" "$delivery" "$sessions" 6 | median)
        np=$(col new "$size" "$delivery" "$sessions" 6 | median)
        r=$(awk -v o="$o" -v n="$n" 'BEGIN {if (o > 0) printf "%.2f", n / o; else print "-"}')
        printf '| %s B | %s | %s | %.0f | %.0f | %s | %.0f | %.0f |\n' "$size" "$delivery" "$sessions" "$o" "$n" "$r" "$op" "$np"
    done
} | tee "$OUT"
say "written to $OUT"
