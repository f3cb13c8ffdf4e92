#!/usr/bin/env bash
# perf/amqp.sh: lior's AMQP 1.0 rows beside RabbitMQ's AMQP 1.0 plugin, one client, one run
# (issue 11, "Performance").
#
# What it does, in order:
#   1. Installs RabbitMQ from the distribution's packages if missing
#      (apt-get install -y rabbitmq-server; needs root, as on the project machines) and enables
#      its AMQP 1.0 plugin offline into a throwaway plugins file
#      (rabbitmq-plugins enable --offline rabbitmq_amqp1_0).
#   2. Starts `lior serve --amqp-listen 127.0.0.1:0` pinned to SERVER_CORE (one shard), queue
#      `bench`; and RabbitMQ pinned to SERVER_CORE on 127.0.0.1:$RABBIT_PORT with a throwaway
#      data directory, one Erlang scheduler (+S 1:1, scheduler busy-wait off so the idle broker
#      takes no CPU from lior's runs), guest/guest on loopback; its queue is declared by a first
#      attach to `/queue/bench` (a non-durable classic queue) and then used as
#      `/amq/queue/bench`.
#   3. For RUNS rounds, the same client (`lior bench`, pinned to CLIENT_CORE) against both:
#        - AMQP produce, 100 B, 1 connection, unsettled, counted at `accepted`, DURATION s;
#        - AMQP consume, 100 B: a backlog of CONSUME_COUNT messages (filled by the same AMQP
#          producer) drained by 1 consumer with credit CREDIT, accepting each delivery;
#      and on lior only:
#        - MS-MQQB express 100 B, 1 session, window 64, full speed for DURATION s, plus one AMQP
#          consumer (credit CREDIT) draining the same queue: end-to-end rate (the consumer's),
#          queue depth when the producer stopped, end-to-end latency;
#        - the same at half the median end-to-end rate, open loop (`lior bench --rate`: messages
#          are due on a fixed schedule and stamped with the time they were due, so a stall shows
#          in every message it delays): end-to-end p50/p99/p99.9.
#   4. With PROFILE=1 (default; needs `perf`), samples both CPUs during the first full-speed
#      MS-MQQB-in/AMQP-out run and writes the top symbols next to the results
#      (<date>-amqp-profile.txt), for the "where the time goes" note.
#   5. Appends the rows to $JSONL (kinds amqp-produce-{lior,rabbitmq}, amqp-consume-{lior,
#      rabbitmq}, e2e-lior, e2e-lior-half) and the command lines to $AMQP_HEADER; perf/report.rs
#      turns them into the "AMQP 1.0" tables.
#
# Called by perf/run.sh with LIOR, JSONL, WORK, AMQP_HEADER set. Alone it builds, writes its own
# perf/results/<date>-amqp.md (marked SMOKE=1 in the header when asked) and leaves README alone:
#   SMOKE=1 RUNS=1 DURATION=2 CONSUME_COUNT=50000 perf/amqp.sh
set -euo pipefail

RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
CREDIT=${CREDIT:-1000}
# Unaccepted messages per producer, the same for both brokers (lior grants a link credit of 256,
# RabbitMQ 65,535: without a cap the two runs would not have the same settings).
AMQP_WINDOW=${AMQP_WINDOW:-256}
CONSUME_COUNT=${CONSUME_COUNT:-500000}
RABBIT_PORT=${RABBIT_PORT:-25672}
SIZE=100

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
say() { echo "perf/amqp.sh: $*" >&2; }

STANDALONE=0
if [ -z "${JSONL:-}" ]; then
    STANDALONE=1
    STAMP=$(date -u +%Y-%m-%d-%H%M)
    OUT="$ROOT/perf/results"
    WORK="$TARGET/perf-work/$STAMP-amqp"
    mkdir -p "$WORK" "$OUT"
    JSONL="$OUT/$STAMP-amqp.jsonl"
    : >"$JSONL"
    AMQP_HEADER="$WORK/amqp-header.md"
    say "building release (lior, perf_report)"
    cargo build --release --quiet --bin lior --example perf_report
    LIOR="$TARGET/release/lior"
fi
mkdir -p "$WORK"
: >"$AMQP_HEADER"

APIDS=()
RABBIT_ENV=()
# Erlang starts its port mapper daemon (epmd) with the broker; stop it again if it was not here.
EPMD_WAS_RUNNING=$(pgrep -x epmd >/dev/null && echo 1 || echo 0)
amqp_cleanup() {
    if [ ${#RABBIT_ENV[@]} -gt 0 ]; then
        env "${RABBIT_ENV[@]}" /usr/lib/rabbitmq/bin/rabbitmqctl -q -n "$RABBIT_NODE" shutdown >/dev/null 2>&1 || true
    fi
    for p in "${APIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ "$EPMD_WAS_RUNNING" = 0 ] && command -v epmd >/dev/null; then epmd -kill >/dev/null 2>&1 || true; fi
}
trap amqp_cleanup EXIT

# --- RabbitMQ ---------------------------------------------------------------------------------
if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
    say "installing RabbitMQ from the distribution: apt-get install -y rabbitmq-server"
    DEBIAN_FRONTEND=noninteractive apt-get install -y rabbitmq-server >/dev/null ||
        { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y rabbitmq-server >/dev/null; }
fi
# The packaged service is not used: the scripts under /usr/lib/rabbitmq/bin run as this user
# with everything under $RDIR (data, logs, plugins file, config, Erlang cookie).
RDIR="$WORK/rabbitmq"
rm -rf "$RDIR"
mkdir -p "$RDIR/mnesia" "$RDIR/log"
RABBIT_NODE="liorbench@localhost"
printf 'loopback_users.guest = true\nlisteners.tcp.1 = 127.0.0.1:%s\n' "$RABBIT_PORT" >"$RDIR/rabbitmq.conf"
RABBIT_ENV=(
    HOME="$RDIR"
    RABBITMQ_BASE="$RDIR"
    RABBITMQ_MNESIA_BASE="$RDIR/mnesia"
    RABBITMQ_LOG_BASE="$RDIR/log"
    RABBITMQ_ENABLED_PLUGINS_FILE="$RDIR/enabled_plugins"
    RABBITMQ_CONFIG_FILE="$RDIR/rabbitmq"
    RABBITMQ_PID_FILE="$RDIR/pid"
    RABBITMQ_NODENAME="$RABBIT_NODE"
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    RABBITMQ_NODE_PORT="$RABBIT_PORT"
    RABBITMQ_DIST_PORT=$((RABBIT_PORT + 1))
    ERL_CRASH_DUMP="$RDIR/erl_crash.dump"
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+S 1:1 +sbwt none +sbwtdcpu none +sbwtdio none"
)
rabbit() { env "${RABBIT_ENV[@]}" "/usr/lib/rabbitmq/bin/$1" "${@:2}"; }
rabbit rabbitmq-plugins enable --offline rabbitmq_amqp1_0 >/dev/null
say "starting RabbitMQ on core $SERVER_CORE, 127.0.0.1:$RABBIT_PORT"
taskset -c "$SERVER_CORE" env "${RABBIT_ENV[@]}" /usr/lib/rabbitmq/bin/rabbitmq-server >"$RDIR/server.out" 2>&1 &
APIDS+=($!)
# await_startup fails at once while the node is not reachable yet: ask again for up to 120 s.
RABBIT_UP=0
for _ in $(seq 120); do
    if rabbit rabbitmqctl -q -n "$RABBIT_NODE" await_startup --timeout 10 >/dev/null 2>&1; then
        RABBIT_UP=1
        break
    fi
    sleep 1
done
[ "$RABBIT_UP" = 1 ] || { say "RabbitMQ did not start: $(tail -5 "$RDIR/server.out")"; exit 1; }
RABBIT_VERSION=$(rabbit rabbitmqctl -q -n "$RABBIT_NODE" version 2>/dev/null || echo '?')
RABBIT_AMQP="127.0.0.1:$RABBIT_PORT"
RABBIT_AUTH=(--amqp-user guest --amqp-password guest)

# --- lior -------------------------------------------------------------------------------------
say "starting lior serve (AMQP) on core $SERVER_CORE"
taskset -c "$SERVER_CORE" "$LIOR" serve --listen 127.0.0.1:0 --api 127.0.0.1:0 --amqp-listen 127.0.0.1:0 \
    --data-dir "$WORK/lior-amqp-data" --cores "$SERVER_CORE" >"$WORK/serve-amqp.out" 2>"$WORK/serve-amqp.err" &
LIOR_PID=$!
APIDS+=($LIOR_PID)
for _ in $(seq 300); do [ -s "$WORK/serve-amqp.out" ] && break; sleep 0.1; done
READY=$(head -1 "$WORK/serve-amqp.out")
LISTEN=$(sed -n 's/.* listen=\([^ ]*\).*/\1/p' <<<"$READY")
API=$(sed -n 's/.* api=\([^ ]*\).*/\1/p' <<<"$READY")
LIOR_AMQP=$(sed -n 's/.* amqp=\([^ ]*\).*/\1/p' <<<"$READY")
[ -n "$LIOR_AMQP" ] || { say "lior serve did not start: $(cat "$WORK/serve-amqp.err")"; exit 1; }
"$LIOR" queue create bench --api "$API" >/dev/null
TO='DIRECT=TCP:127.0.0.1\PRIVATE$\bench'

# The RabbitMQ queue: a first attach to /queue/bench declares it.
"$LIOR" bench --produce-amqp /queue/bench --amqp "$RABBIT_AMQP" "${RABBIT_AUTH[@]}" --count 1 --quiet >/dev/null

# --- one measurement each -----------------------------------------------------------------------
purge() { # server
    if [ "$1" = lior ]; then
        "$LIOR" queue purge bench --api "$API" >/dev/null
    else
        rabbit rabbitmqctl -q -n "$RABBIT_NODE" purge_queue bench >/dev/null
    fi
}
peer_args() { # server -> the client's flags for it
    if [ "$1" = lior ]; then
        echo "--amqp $LIOR_AMQP --api $API"
    else
        echo "--amqp $RABBIT_AMQP --amqp-user guest --amqp-password guest --api 127.0.0.1:9"
    fi
}
address() { if [ "$1" = lior ]; then echo bench; else echo /amq/queue/bench; fi; }
record() { # kind run json
    [ -n "$3" ] && echo "{\"kind\":\"$1\",\"run\":$2,${3#\{}" >>"$JSONL"
}
field() { sed -n "s/.*\"$1\":\\([0-9.]*\\).*/\\1/p" <<<"$2" | head -1; }

run_produce() { # run server
    local j
    purge "$2"
    # shellcheck disable=SC2046
    j=$(taskset -c "$CLIENT_CORE" "$LIOR" bench --produce-amqp "$(address "$2")" $(peer_args "$2") \
        --connections 1 --size $SIZE --amqp-window "$AMQP_WINDOW" --duration "$DURATION" --json --quiet) ||
        say "produce $2 failed: $j"
    record "amqp-produce-$2" "$1" "$j"
    say "run $1 AMQP produce $2: $(field msgs_per_sec "$j") msg/s"
}

run_consume() { # run server
    local j fill
    purge "$2"
    # shellcheck disable=SC2046
    fill=$(taskset -c "$CLIENT_CORE" "$LIOR" bench --produce-amqp "$(address "$2")" $(peer_args "$2") \
        --connections 4 --size $SIZE --amqp-window "$AMQP_WINDOW" --count "$CONSUME_COUNT" --json --quiet) ||
        say "fill $2 failed: $fill"
    # shellcheck disable=SC2046
    j=$(taskset -c "$CLIENT_CORE" "$LIOR" bench --consume-amqp "$(address "$2")" $(peer_args "$2") \
        --consumers 1 --credit "$CREDIT" --count "$CONSUME_COUNT" --json --quiet) || say "consume $2 failed: $j"
    record "amqp-consume-$2" "$1" "$j"
    say "run $1 AMQP consume $2: $(sed -n 's/.*"amqp_consume":.*"msgs_per_sec":\([0-9.]*\).*/\1/p' <<<"$j") msg/s"
}

PROFILE=${PROFILE:-1}
PROFILE_OUT="${JSONL%.jsonl}"
PROFILE_OUT="${PROFILE_OUT%-amqp}-amqp-profile.txt"
run_e2e() { # run kind [extra...]
    local run=$1 kind=$2 j prof=""
    shift 2
    purge lior
    taskset -c "$CLIENT_CORE" "$LIOR" bench --to "$TO" --connect "$LISTEN" --cores "$CLIENT_CORE" \
        --sessions 1 --size $SIZE --delivery express --window 64 --duration "$DURATION" \
        --consume-amqp bench --amqp "$LIOR_AMQP" --api "$API" --credit "$CREDIT" --json --quiet "$@" \
        >"$WORK/e2e.json" 2>"$WORK/e2e.err" &
    local client=$!
    # Where the time goes: the first full-speed run's two processes (server and client) are
    # sampled, the other engineers' work on the machine is not.
    if [ "$PROFILE" = 1 ] && [ "$run" = 1 ] && [ "$kind" = e2e-lior ] && command -v perf >/dev/null; then
        perf record -q -F 999 -g -p "$LIOR_PID,$client" -o "$WORK/e2e.perf.data" \
            -- sleep "$DURATION" >/dev/null 2>&1 &
        prof=$!
    fi
    wait "$client" || say "e2e failed: $(cat "$WORK/e2e.err")"
    j=$(cat "$WORK/e2e.json")
    record "$kind" "$run" "$j"
    if [ -n "$prof" ]; then
        wait "$prof" || true
        {
            echo "# perf record -F 999 -g -p SERVE_PID,BENCH_PID during run 1 of e2e-lior (MS-MQQB express 100 B in, 1 AMQP consumer out)"
            echo "# perf report --no-children --sort pid,comm,symbol -g none --percent-limit 0.7  (server pid $LIOR_PID)"
            perf report -i "$WORK/e2e.perf.data" --no-children --sort pid,comm,symbol -g none \
                --percent-limit 0.7 --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' |
                sed 's/ *$//' | head -60
        } >"$PROFILE_OUT" || true
        rm -f "$WORK/e2e.perf.data"
        say "profile of the e2e run in $PROFILE_OUT"
    fi
    say "run $run $kind: produced $(field msgs_per_sec "$j") msg/s, drained $(sed -n 's/.*"amqp_consume":.*"received":[0-9]*,"msgs_per_sec":\([0-9.]*\).*/\1/p' <<<"$j") msg/s"
}

for run in $(seq "$RUNS"); do
    for server in lior rabbitmq; do
        run_produce "$run" "$server"
        run_consume "$run" "$server"
    done
    run_e2e "$run" e2e-lior
done

# Half the median end-to-end (drain) rate, open loop.
E2E_MEDIAN=$(grep '"kind":"e2e-lior"' "$JSONL" |
    sed -n 's/.*"amqp_consume":.*"received":[0-9]*,"msgs_per_sec":\([0-9.]*\).*/\1/p' | sort -n |
    awk '{a[NR]=$1} END {if (NR==0) print 0; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}')
HALF=$(awk -v m="$E2E_MEDIAN" 'BEGIN {printf("%d", m / 2)}')
if [ "$HALF" -gt 0 ]; then
    for run in $(seq "$RUNS"); do
        run_e2e "$run" e2e-lior-half --rate "$HALF"
    done
fi

{
    echo "- AMQP rows: RabbitMQ $RABBIT_VERSION (Debian package, plugin rabbitmq_amqp1_0), one Erlang scheduler on CPU $SERVER_CORE;" \
        "same client (\`lior bench\`) on CPU $CLIENT_CORE; lior one shard on CPU $SERVER_CORE; consumer credit $CREDIT; producer window $AMQP_WINDOW unaccepted messages; consume backlog $CONSUME_COUNT messages"
    echo
    echo "AMQP command lines (SERVER = lior: --amqp LIOR_AMQP, address bench; RabbitMQ: --amqp 127.0.0.1:$RABBIT_PORT --amqp-user guest --amqp-password guest, address /amq/queue/bench):"
    echo
    echo '```'
    echo "taskset -c $SERVER_CORE lior serve --listen 127.0.0.1:0 --api 127.0.0.1:0 --amqp-listen 127.0.0.1:0 --data-dir DIR --cores $SERVER_CORE"
    echo "taskset -c $SERVER_CORE rabbitmq-server   # RABBITMQ_* under a throwaway dir, +S 1:1 +sbwt none, listeners.tcp.1 = 127.0.0.1:$RABBIT_PORT"
    echo "taskset -c $CLIENT_CORE lior bench --produce-amqp ADDRESS SERVER --connections 1 --size $SIZE --amqp-window $AMQP_WINDOW --duration $DURATION --json --quiet"
    echo "taskset -c $CLIENT_CORE lior bench --produce-amqp ADDRESS SERVER --connections 4 --size $SIZE --amqp-window $AMQP_WINDOW --count $CONSUME_COUNT   # the backlog"
    echo "taskset -c $CLIENT_CORE lior bench --consume-amqp ADDRESS SERVER --consumers 1 --credit $CREDIT --count $CONSUME_COUNT --json --quiet"
    echo "taskset -c $CLIENT_CORE lior bench --to '$TO' --connect LISTEN --cores $CLIENT_CORE --sessions 1 --size $SIZE --delivery express --window 64 --duration $DURATION --consume-amqp bench --amqp LIOR_AMQP --api API --credit $CREDIT [--rate HALF]"
    echo '```'
} >>"$AMQP_HEADER"

if [ "$STANDALONE" = 1 ]; then
    HEADER="$WORK/header.md"
    {
        echo "## lior AMQP 1.0 performance, $(date -u '+%Y-%m-%d %H:%M UTC')${SMOKE:+ (SMOKE RUN: RUNS=$RUNS, DURATION=$DURATION s, CONSUME_COUNT=$CONSUME_COUNT; proves the script works, not a measurement)}"
        echo
        echo "- machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) CPUs online;" \
            "kernel $(uname -r); $(. /etc/os-release && echo "$PRETTY_NAME")"
        echo "- lior $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty')"
        echo "- load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (the machine is shared: compare ratios, not absolutes)"
        echo "- produced by \`perf/amqp.sh\`; raw numbers in \`perf/results/$(basename "$JSONL")\`"
        cat "$AMQP_HEADER"
    } >"$HEADER"
    "$TARGET/release/examples/perf_report" "$JSONL" "$HEADER" >"${JSONL%.jsonl}.md"
    say "wrote perf/results/$(basename "${JSONL%.jsonl}.md")"
    cat "${JSONL%.jsonl}.md"
fi
rm -rf "$WORK/lior-amqp-data" "$RDIR/mnesia" 2>/dev/null || true
