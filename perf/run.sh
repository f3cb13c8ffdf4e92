#!/usr/bin/env bash
# perf/run.sh: lior's end-to-end performance matrix and its two references, in one run.
#
# What it does, in order:
#   1. Builds lior and the perf tools in release mode (cargo build --release).
#   2. Installs Redis from the distribution's packages if it is missing
#      (apt-get install -y redis-server redis-tools; needs root, as on the project machines).
#   3. Starts `lior serve` pinned to SERVER_CORE (default 0) with a fresh data directory under
#      target/perf-work/ (the real disk, so recoverable means fdatasync), creates queue `bench`.
#   4. For RUNS rounds (default 3), for {100 B, 4 KiB} x {express, recoverable} x {1, 16}
#      sessions, runs `lior bench` pinned to CLIENT_CORE (default 1) for DURATION seconds
#      (default 5), purging the queue before each run so memory stays steady. In the same
#      round it measures:
#        - the raw loopback ceiling: perf/tcp_ceiling.rs, a plain TCP sender and receiver moving
#          the same frames with the same window (64) and one ack per read, same cores;
#        - Redis as a queue: redis-benchmark LPUSH with pipelining 64 (the same window),
#          -c SESSIONS clients, -d SIZE; for express against a Redis without persistence, for
#          recoverable against one with `appendonly yes` and `appendfsync always`; same cores.
#   5. Runs `lior bench --rate` at half the median maximum rate for the two target rows
#      (express 100 B 1 session, recoverable 100 B 16 sessions) RUNS times, for p99 latency.
#   6. Runs perf/amqp.sh: AMQP 1.0 produce and consume beside RabbitMQ (installed from the
#      distribution's packages), and MS-MQQB express in with one AMQP consumer out.
#   7. Writes perf/results/<date>.md (and latest.md, and the raw .jsonl) with medians and the
#      ratios lior/ceiling and lior/Redis, the kernel, the CPU and the command lines, and puts
#      the table into README.md between the perf markers.
#
# Everything it starts it stops again. Usage: perf/run.sh  (env: RUNS, DURATION, SERVER_CORE,
# CLIENT_CORE, SIZES, SESSIONS_LIST; CREDIT, CONSUME_COUNT for perf/amqp.sh). Takes about 8-10
# minutes with the defaults.
set -euo pipefail

RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
SIZES=${SIZES:-"100 4096"}
SESSIONS_LIST=${SESSIONS_LIST:-"1 16"}
WINDOW=64

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
STAMP=$(date -u +%Y-%m-%d-%H%M)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK="$TARGET/perf-work/$STAMP"
OUT="$ROOT/perf/results"
mkdir -p "$WORK" "$OUT"
JSONL="$OUT/$STAMP.jsonl"
: >"$JSONL"

say() { echo "perf/run.sh: $*" >&2; }

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

say "building release (lior, tcp_ceiling, perf_report)"
cargo build --release --quiet --bin lior --example tcp_ceiling --example perf_report
LIOR="$TARGET/release/lior"
CEIL="$TARGET/release/examples/tcp_ceiling"
REPORT="$TARGET/release/examples/perf_report"

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
    say "installing Redis from the distribution: apt-get install -y redis-server redis-tools"
    DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server redis-tools >/dev/null ||
        { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server redis-tools >/dev/null; }
fi

# --- lior serve ---------------------------------------------------------------------------
say "starting lior serve on core $SERVER_CORE"
taskset -c "$SERVER_CORE" "$LIOR" serve --listen 127.0.0.1:0 --api 127.0.0.1:0 \
    --data-dir "$WORK/lior-data" --cores "$SERVER_CORE" >"$WORK/serve.out" 2>"$WORK/serve.err" &
PIDS+=($!)
for _ in $(seq 300); do [ -s "$WORK/serve.out" ] && break; sleep 0.1; done
READY=$(head -1 "$WORK/serve.out")
LISTEN=$(sed -n 's/.* listen=\([^ ]*\).*/\1/p' <<<"$READY")
API=$(sed -n 's/.* api=\([^ ]*\).*/\1/p' <<<"$READY")
[ -n "$LISTEN" ] || { say "lior serve did not start within 30 s: $(cat "$WORK/serve.out" "$WORK/serve.err")"; exit 1; }
"$LIOR" queue create bench --api "$API" >/dev/null
TO='DIRECT=TCP:127.0.0.1\PRIVATE$\bench'

# --- the TCP ceiling's receiver -------------------------------------------------------------
taskset -c "$SERVER_CORE" "$CEIL" recv --listen 127.0.0.1:0 >"$WORK/ceil.out" &
PIDS+=($!)
for _ in $(seq 50); do [ -s "$WORK/ceil.out" ] && break; sleep 0.1; done
CEIL_ADDR=$(sed -n 's/listen=//p' "$WORK/ceil.out")

# --- Redis: one without persistence (express), one with appendfsync always (recoverable) ---
start_redis() { # port dir extra-args...
    local port=$1 dir=$2
    shift 2
    mkdir -p "$dir"
    taskset -c "$SERVER_CORE" redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" \
        --save '' --daemonize no --protected-mode no "$@" >"$dir/log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
    say "redis on port $port did not start: $(cat "$dir/log")"
    exit 1
}
REDIS_EXPRESS_PORT=16379
REDIS_DURABLE_PORT=16380
start_redis $REDIS_EXPRESS_PORT "$WORK/redis-express" --appendonly no
start_redis $REDIS_DURABLE_PORT "$WORK/redis-durable" --appendonly yes --appendfsync always

# --- one measurement each ----------------------------------------------------------------
bench_cmd() { # size delivery sessions [extra]
    echo taskset -c "$CLIENT_CORE" "$LIOR" bench --to "'$TO'" --connect "$LISTEN" --cores "$CLIENT_CORE" \
        --sessions "$3" --size "$1" --delivery "$2" --window $WINDOW --duration "$DURATION" --json --quiet "${@:4}"
}

run_lior() { # run size delivery sessions kind [extra...]
    local run=$1 size=$2 delivery=$3 sessions=$4 kind=$5
    shift 5
    "$LIOR" queue purge bench --api "$API" >/dev/null
    local j
    j=$(taskset -c "$CLIENT_CORE" "$LIOR" bench --to "$TO" --connect "$LISTEN" --cores "$CLIENT_CORE" \
        --sessions "$sessions" --size "$size" --delivery "$delivery" --window $WINDOW \
        --duration "$DURATION" --json --quiet "$@") || { say "lior bench failed: $j"; }
    [ -n "$j" ] && echo "{\"kind\":\"$kind\",\"run\":$run,${j#\{}" >>"$JSONL"
    say "run $run $kind $size B $delivery x$sessions: $(sed -n 's/.*"msgs_per_sec":\([0-9.]*\).*/\1/p' <<<"$j") msg/s"
}

run_ceiling() { # run size sessions
    local j
    j=$(taskset -c "$CLIENT_CORE" "$CEIL" send --connect "$CEIL_ADDR" --size "$2" --sessions "$3" \
        --duration "$DURATION" --window $WINDOW)
    echo "{\"kind\":\"ceiling\",\"run\":$1,\"delivery\":\"-\",${j#\{}" >>"$JSONL"
    say "run $1 ceiling $2 B x$3: $(sed -n 's/.*"msgs_per_sec":\([0-9.]*\).*/\1/p' <<<"$j") msg/s"
}

redis_lpush() { # port size clients n -> csv line
    taskset -c "$CLIENT_CORE" redis-benchmark -p "$1" -t lpush -P $WINDOW -c "$3" -d "$2" -n "$4" --csv 2>/dev/null |
        grep '^"LPUSH' | tail -1
}

run_redis() { # run size delivery sessions
    local run=$1 size=$2 delivery=$3 sessions=$4 port=$REDIS_EXPRESS_PORT probe=50000
    if [ "$delivery" = recoverable ]; then port=$REDIS_DURABLE_PORT; probe=5000; fi
    redis-cli -p "$port" flushall >/dev/null
    # redis-benchmark takes a count, not a duration: a short probe sizes the real run.
    local rate n csv
    rate=$(redis_lpush "$port" "$size" "$sessions" "$probe" | awk -F'"' '{print int($4)}')
    n=$((rate * DURATION))
    [ "$n" -lt 10000 ] && n=10000
    redis-cli -p "$port" flushall >/dev/null
    csv=$(redis_lpush "$port" "$size" "$sessions" "$n")
    # "LPUSH","rps","avg_ms","min_ms","p50_ms","p95_ms","p99_ms","max_ms"
    awk -F'"' -v run="$run" -v size="$size" -v d="$delivery" -v s="$sessions" -v n="$n" '{
        printf("{\"kind\":\"redis\",\"run\":%d,\"size\":%d,\"delivery\":\"%s\",\"sessions\":%d,\"sent\":%d,\"msgs_per_sec\":%s,\"mb_per_sec\":%.2f,\"latency_us\":{\"p50\":%.1f,\"p99\":%.1f,\"max\":%.1f}}\n",
            run, size, d, s, n, $4, $4 * size / 1e6, $10 * 1000, $14 * 1000, $16 * 1000) }' <<<"$csv" >>"$JSONL"
    say "run $run redis $size B $delivery x$sessions: $(awk -F'"' '{print $4}' <<<"$csv") req/s"
    redis-cli -p "$port" flushall >/dev/null
}

for run in $(seq "$RUNS"); do
    for size in $SIZES; do
        for sessions in $SESSIONS_LIST; do
            run_ceiling "$run" "$size" "$sessions"
            for delivery in express recoverable; do
                run_lior "$run" "$size" "$delivery" "$sessions" lior
                run_redis "$run" "$size" "$delivery" "$sessions"
            done
        done
    done
done

# --- p99 at half the maximum rate, for the two target rows -----------------------------------
median_rate() { # kind size delivery sessions
    grep "\"kind\":\"$1\"" "$JSONL" | grep "\"size\":$2," | grep "\"delivery\":\"$3\"" |
        grep "\"sessions\":$4," | sed -n 's/.*"msgs_per_sec":\([0-9.]*\).*/\1/p' | sort -n |
        awk '{a[NR]=$1} END {if (NR==0) print 0; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'
}
HALF_ROWS=("100 express 1" "100 recoverable 16")
for row in "${HALF_ROWS[@]}"; do
    read -r size delivery sessions <<<"$row"
    max=$(median_rate lior "$size" "$delivery" "$sessions" || true)
    max=${max:-0}
    half=$(awk -v m="$max" 'BEGIN {printf("%d", m / 2)}')
    [ "$half" -gt 0 ] || continue
    for run in $(seq "$RUNS"); do
        run_lior "$run" "$size" "$delivery" "$sessions" lior-half --rate "$half"
    done
done

# --- AMQP 1.0: lior beside RabbitMQ, and MS-MQQB in with AMQP out (perf/amqp.sh) -------------
AMQP_HEADER="$WORK/amqp-header.md"
LIOR="$LIOR" JSONL="$JSONL" WORK="$WORK" AMQP_HEADER="$AMQP_HEADER" RUNS="$RUNS" DURATION="$DURATION" \
    SERVER_CORE="$SERVER_CORE" CLIENT_CORE="$CLIENT_CORE" bash "$ROOT/perf/amqp.sh" ||
    say "perf/amqp.sh failed (the AMQP rows are missing)"

# --- two server cores: sessions land on both shards, the queue is owned by one ----------------
# A second lior on cores 0 and 1 (the client unpinned): the 16 sessions of a row are spread over
# both shards by the kernel's accept queue, and queue `bench` lives in one partition, so about
# half of the messages cross from one shard to the queue's owner.
say "starting lior serve on cores $SERVER_CORE,$CLIENT_CORE (the two-shard rows)"
"$LIOR" queue purge bench --api "$API" >/dev/null
"$LIOR" serve --listen 127.0.0.1:0 --api 127.0.0.1:0 --data-dir "$WORK/lior2-data" \
    --cores "$SERVER_CORE,$CLIENT_CORE" >"$WORK/serve2.out" 2>"$WORK/serve2.err" &
PIDS+=($!)
for _ in $(seq 300); do [ -s "$WORK/serve2.out" ] && break; sleep 0.1; done
READY2=$(head -1 "$WORK/serve2.out")
LISTEN2=$(sed -n 's/.* listen=\([^ ]*\).*/\1/p' <<<"$READY2")
API2=$(sed -n 's/.* api=\([^ ]*\).*/\1/p' <<<"$READY2")
[ -n "$LISTEN2" ] || { say "the two-core lior serve did not start: $(cat "$WORK/serve2.err")"; exit 1; }
"$LIOR" queue create bench --api "$API2" >/dev/null
for run in $(seq "$RUNS"); do
    for delivery in express recoverable; do
        "$LIOR" queue purge bench --api "$API2" >/dev/null
        j=$("$LIOR" bench --to "$TO" --connect "$LISTEN2" --sessions 16 --size 100 \
            --delivery "$delivery" --window $WINDOW --duration "$DURATION" --json --quiet) ||
            { say "lior bench (two cores) failed: $j"; }
        [ -n "$j" ] && echo "{\"kind\":\"lior-2cores\",\"run\":$run,${j#\{}" >>"$JSONL"
        say "run $run lior-2cores 100 B $delivery x16: $(sed -n 's/.*"msgs_per_sec":\([0-9.]*\).*/\1/p' <<<"$j") msg/s"
    done
done

# --- the report ----------------------------------------------------------------------------
HEADER="$WORK/header.md"
{
    echo "## lior performance, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) CPUs online;" \
        "kernel $(uname -r); $(. /etc/os-release && echo "$PRETTY_NAME")"
    echo "- lior $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty');" \
        "$(redis-server --version | cut -d' ' -f1-3)"
    echo "- load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (the machine is shared: compare ratios, not absolutes)"
    echo "- server side pinned to CPU $SERVER_CORE, client side to CPU $CLIENT_CORE; $RUNS runs of ${DURATION} s each; window $WINDOW everywhere"
    echo "- produced by \`perf/run.sh\`; raw numbers in \`perf/results/$STAMP.jsonl\`"
    echo
    echo "Command lines (SIZE in {100, 4096}, N in {1, 16}, D in {express, recoverable}):"
    echo
    echo '```'
    echo "taskset -c $SERVER_CORE lior serve --listen 127.0.0.1:0 --api 127.0.0.1:0 --data-dir DIR --cores $SERVER_CORE"
    echo "lior queue create bench; lior queue purge bench   # before every run"
    echo "$(bench_cmd SIZE D N)"
    echo "$(bench_cmd 100 D N --rate HALF_OF_MEDIAN_MAX)   # the latency rows"
    echo "taskset -c $SERVER_CORE tcp_ceiling recv --listen 127.0.0.1:0"
    echo "taskset -c $CLIENT_CORE tcp_ceiling send --connect ADDR --size SIZE --sessions N --duration $DURATION --window $WINDOW"
    echo "taskset -c $SERVER_CORE redis-server --save '' --appendonly no                          # express"
    echo "taskset -c $SERVER_CORE redis-server --save '' --appendonly yes --appendfsync always    # recoverable"
    echo "taskset -c $CLIENT_CORE redis-benchmark -t lpush -P $WINDOW -c N -d SIZE -n RATE*$DURATION --csv"
    echo "lior serve ... --cores $SERVER_CORE,$CLIENT_CORE; lior bench ... --sessions 16 --size 100 (unpinned)   # the two-shard rows"
    echo '```'
    [ -s "$AMQP_HEADER" ] && { echo; cat "$AMQP_HEADER"; }
} >"$HEADER"
"$REPORT" "$JSONL" "$HEADER" >"$OUT/$STAMP.md"
cp "$OUT/$STAMP.md" "$OUT/latest.md"
say "wrote perf/results/$STAMP.md"

# README.md: replace what lies between the perf markers with the new table.
if grep -q '<!-- perf:begin -->' README.md; then
    awk -v f="$OUT/latest.md" '
        /<!-- perf:begin -->/ {print; while ((getline l < f) > 0) print l; skip=1; next}
        /<!-- perf:end -->/ {skip=0}
        !skip {print}' README.md >"$WORK/README.md" && cp "$WORK/README.md" README.md
    say "updated the table in README.md"
fi
cat "$OUT/$STAMP.md"
rm -rf "$WORK/lior-data" "$WORK/lior2-data" "$WORK"/redis-*/appendonly* 2>/dev/null || true
