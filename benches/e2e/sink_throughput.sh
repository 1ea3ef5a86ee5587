#!/usr/bin/env bash
# End-to-end throughput from PostgreSQL into one sink: how fast pgfanout
# (release build) decodes, assembles, routes, batches and applies a backlog
# of N row inserts (an 8-column `orders` table), and its peak memory; then
# the store's own ceiling, measured in the same run with the store's own
# tool, for the ratio.
#
#   benches/e2e/sink_throughput.sh discard      # no store: the pipeline alone
#   benches/e2e/sink_throughput.sh redis        # + redis-benchmark yardstick
#   N=200000 LANES=1 benches/e2e/sink_throughput.sh redis
#   PGFANOUT_BIN=/tmp/pgfanout-main N=200000 benches/e2e/sink_throughput.sh redis
#   SINK_OPTIONS='version_guard = false' TABLE_OPTIONS='truncate = "scan"' \
#       benches/e2e/sink_throughput.sh redis
#   CALLGRIND=1 N=50000 benches/e2e/sink_throughput.sh redis   # instructions per change
#
# Uses the local stack from the environment (PGFANOUT_TEST_PG_URL, ...) when
# set, else starts a throwaway one. For a store, the discarding pipeline
# first drains a copy of the same slot: the store's run is measured against
# it in the same run. Prints:
#   sink=S changes=N seconds=T changes_per_second=R peak_rss_kb=K   (discard, then the store)
#   ratio_to_discard=R
#   (redis) yardstick=... requests_per_second=R pgfanout_ratio=...
#   (redis) beside=NAME ... ceiling_ratio=R   (what sharing the CPUs allows; see below)
#
# CALLGRIND=1: instead of timing, pgfanout runs under `valgrind
# --tool=callgrind` (whole process, start-up included), which counts the
# instructions pgfanout itself executes: unlike wall time on a shared
# machine, that does not move with the load, so it is the before/after
# measure of the sink's own CPU. For a store the discarding pipeline is
# counted first on a copy of the same slot, and the difference is what the
# store's path costs pgfanout per change. Prints
#   sink=S changes=N instructions=I per_change=I/N profile=FILE   (discard, then the store)
#   store_path_per_change=...
# and keeps the profiles in CALLGRIND_OUT [the current folder] for
# callgrind_annotate. Valgrind runs the process ~50x slower: use N=50000.
set -euo pipefail
# shellcheck source=benches/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SINK=${1:-discard}
N=${N:-1000000}
LANES=${LANES:-4}
case $SINK in
discard | redis) ;;
*)
    echo "usage: $0 discard|redis" >&2
    exit 2
    ;;
esac
# PGFANOUT_BIN: another build to time (e.g. a copy of main's), without building.
[[ -n ${PGFANOUT_BIN:-} ]] || (cd "$REPO_ROOT" && cargo build --release --quiet)
if [[ ${CALLGRIND:-0} == 1 ]]; then
    command -v valgrind >/dev/null || {
        echo "valgrind is needed (apt-get install valgrind)" >&2
        exit 1
    }
    CALLGRIND_OUT=$(cd "${CALLGRIND_OUT:-.}" && pwd)
    REAL_BIN=${PGFANOUT_BIN:-$TARGET/release/pgfanout}
    # bench_run starts PGFANOUT_BIN: a wrapper that execs valgrind keeps
    # its pid, so stopping it (and waiting) lets callgrind write its profile.
    PGFANOUT_BIN=$WORK/pgfanout-under-callgrind
    printf '#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file="$CALLGRIND_FILE" %q "$@"\n' \
        "$REAL_BIN" >"$PGFANOUT_BIN"
    chmod +x "$PGFANOUT_BIN"
fi

bench_database bench_sink <<SQL
$ORDERS_TABLE
CREATE PUBLICATION bench_sink FOR TABLE orders;
SQL
bench_backlog bench_sink "$N" "$ORDERS_INSERT"

# table_lines: the [[sink.table]] and delivery settings every sink gets.
# SINK_OPTIONS / TABLE_OPTIONS: extra TOML lines for the [[sink]] and its
# table, e.g. SINK_OPTIONS='version_guard = false' TABLE_OPTIONS='truncate = "scan"'.
table_lines() {
    printf '%b\n[[sink.table]]\nsource = "public.orders"\n%b\n[sink.delivery]\nlanes = %s\n' \
        "${SINK_OPTIONS:-}" "${TABLE_OPTIONS:-}" "$LANES"
}
# cpu_seconds PID: user + system CPU seconds the process has used so far.
cpu_seconds() {
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"
}
# store_cpu_seconds: the Redis server's own CPU seconds so far (INFO cpu).
store_cpu_seconds() {
    redis-cli -u "$REDIS_BENCH_URL" INFO cpu | tr -d '\r' |
        awk -F: '/^used_cpu_(user|sys):/ { sum += $2 } END { printf "%.2f", sum }'
}
report() {
    if [[ ${CALLGRIND:-0} == 1 ]]; then
        # The profile is written when pgfanout stops.
        bench_stop
        local total
        total=$(awk '/^(summary|totals):/ { print $2; exit }' "$CALLGRIND_FILE")
        awk -v sink="$1" -v n="$N" -v total="$total" -v file="$CALLGRIND_FILE" \
            'BEGIN { printf "sink=%s changes=%d instructions=%d per_change=%.0f profile=%s\n", sink, n, total, total / n, file }'
        eval "INSTRUCTIONS_$1=$total"
        return
    fi
    awk -v sink="$1" -v n="$N" -v start="$START" -v end="$END" -v rate="$RATE" -v peak="$PEAK" -v cpu="$CPU" \
        'BEGIN { printf "sink=%s changes=%d seconds=%.2f changes_per_second=%d peak_rss_kb=%d pgfanout_cpu_seconds=%.2f\n", sink, n, end - start, rate, peak, cpu }'
}

if [[ $SINK != discard ]]; then
    # The discarding pipeline on the same backlog (a copy of the slot), just
    # before the store's run: the yardstick for the store's ratio.
    bench_copy_slot bench_sink bench_sink_discard
    if [[ $SINK == redis && ${CALLGRIND:-0} != 1 ]]; then
        # Two more copies, for the discarding pipeline beside Redis writers (below).
        bench_copy_slot bench_sink bench_sink_beside_hset
        bench_copy_slot bench_sink bench_sink_beside_rows
    fi
    # discard_config SLOT: the config of the discarding pipeline reading slot SLOT.
    discard_config() {
        bench_source bench_sink "$1" && bench_stream_only
        printf '[[sink]]\nname = "null"\nkind = "discard"\n'
        printf '[[sink.table]]\nsource = "public.orders"\n[sink.delivery]\nlanes = %s\n' "$LANES"
    }
    discard_config bench_sink_discard >"$WORK/discard.toml"
    export CALLGRIND_FILE=${CALLGRIND_OUT:-}/callgrind.out.sink-discard
    bench_run "$WORK/discard.toml" "$N"
    CPU=$(cpu_seconds "$PGFANOUT_PID")
    report discard
    bench_stop
    DISCARD_RATE=$RATE
fi

{ bench_source bench_sink && bench_stream_only; } >"$WORK/pgfanout.toml"
case $SINK in
discard)
    printf '[[sink]]\nname = "null"\nkind = "discard"\n' >>"$WORK/pgfanout.toml"
    ;;
redis)
    REDIS_BENCH_URL="${PGFANOUT_TEST_REDIS_URL%/}/9"
    redis-cli -u "$REDIS_BENCH_URL" FLUSHDB >/dev/null
    printf '[[sink]]\nname = "bench"\nkind = "redis"\nurl = "%s"\n' "$REDIS_BENCH_URL" >>"$WORK/pgfanout.toml"
    ;;
esac
table_lines >>"$WORK/pgfanout.toml"

STORE_CPU_BEFORE=$([[ $SINK == redis ]] && store_cpu_seconds || echo 0)
export CALLGRIND_FILE=${CALLGRIND_OUT:-}/callgrind.out.sink-$SINK
bench_run "$WORK/pgfanout.toml" "$N"
CPU=$(cpu_seconds "$PGFANOUT_PID")
report "$SINK"
if [[ $SINK == redis ]]; then
    # Where the time goes: the server runs the batch script single-threaded.
    awk -v before="$STORE_CPU_BEFORE" -v after="$(store_cpu_seconds)" \
        'BEGIN { printf "redis_server_cpu_seconds=%.2f\n", after - before }'
fi
bench_stop
if [[ ${CALLGRIND:-0} == 1 ]]; then
    if [[ $SINK != discard ]]; then
        awk -v store="$INSTRUCTIONS_redis" -v discard="$INSTRUCTIONS_discard" -v n="$N" \
            'BEGIN { printf "store_path_per_change=%.0f (the store run minus the discarding one)\n", (store - discard) / n }'
    fi
    exit 0
fi
if [[ $SINK != discard ]]; then
    awk -v rate="$RATE" -v discard="$DISCARD_RATE" \
        'BEGIN { printf "ratio_to_discard=%.2f (goal >= 0.8)\n", rate / discard }'
fi

if [[ $SINK == redis ]]; then
    # The store's own pipelined ceiling, 64 commands in flight: the stock
    # one-field HSET test, and an HSET of a whole row shaped like the orders
    # rows pgfanout wrote (8 fields, similar sizes).
    redis-cli -u "$REDIS_BENCH_URL" FLUSHDB >/dev/null
    HOST_PORT=${PGFANOUT_TEST_REDIS_URL#redis://}
    BENCH=(redis-benchmark -h "${HOST_PORT%:*}" -p "${HOST_PORT##*:}" --dbnum 9 -P 64 -n "$N" -r "$N" -q)
    # writer_rate: the requests per second redis-benchmark printed last.
    writer_rate() { tr '\r' '\n' | awk '/requests per second/ { for (i = 1; i <= NF; i++) if ($i == "requests") v = $(i - 1) } END { printf "%.0f", v }'; }
    yardstick() {
        local name=$1
        shift
        rps=$("${BENCH[@]}" "$@" | writer_rate)
        awk -v name="$name" -v rps="$rps" -v rate="$RATE" \
            'BEGIN { printf "yardstick=%s requests_per_second=%d pgfanout_ratio=%.2f\n", name, rps, rate / rps }'
    }
    ROW_HSET=(HSET order:__rand_int__ id __rand_int__ customer "customer __rand_int__"
        amount 123.99 quantity 3 paid t placed_at "2026-11-23 10:00:00.123456+00"
        reference 6512bd43-d9ca-a6e0-2c99-0b0a82652dca attributes '{"n": 12345, "channel": "web"}')
    yardstick redis-benchmark-hset -t hset
    yardstick hset-8-fields "${ROW_HSET[@]}"
    HSET_RATE=$rps
    redis-cli -u "$REDIS_BENCH_URL" FLUSHDB >/dev/null

    # What sharing the CPUs allows. The walsender, pgfanout and Redis run on
    # the same cores, so a sink at r rows/s needs the pipeline's work at r
    # and Redis's at r at the same time. `beside` drains one more copy of the
    # slot with the discarding pipeline while a writer puts N rows into
    # Redis: one more point (P, W) of what the two reach together, between
    # the pipeline alone (DISCARD_RATE, 0) and the writer alone (0, A). On
    # the straight line through the two points on either side of P = W, the
    # rate both reach estimates the most a sink could reach whose rows cost
    # Redis what the writer's rows cost and pgfanout nothing beyond the
    # discarding pipeline: a ceiling, estimated, not a measure. Two writers:
    # - hset-8-fields: redis-benchmark's bare HSET of a row (above);
    # - row-writes: what the sink's writes are without its script, sent by
    #   `redis-cli --pipe`: per row DEL (an insert replaces the key) and HSET
    #   of the version and the 8 columns, per 1,000 rows one SADD of their
    #   keys to the table's index set (for TRUNCATE).
    hset_writer() { "${BENCH[@]}" "${ROW_HSET[@]}" 2>&1 | writer_rate; }
    awk -v n="$N" 'function arg(text) { return "$" length(text) "\r\n" text "\r\n" }
        BEGIN {
            for (first = 1; first <= n; first += 1000) {
                last = first + 999 > n ? n : first + 999
                keys = ""
                for (g = first; g <= last; g++) {
                    key = "orders:" g
                    keys = keys arg(key)
                    printf "*2\r\n%s%s", arg("DEL"), arg(key)
                    printf "*20\r\n%s%s%s%s%s%s%s%s", arg("HSET"), arg(key), arg("_pgfanout_version"),
                        arg(sprintf("0000000001A2B3C4.%08X", g)), arg("id"), arg(g), arg("customer"), arg("customer " g)
                    printf "%s%s%s%s%s%s", arg("amount"), arg(g % 1000 ".99"), arg("quantity"), arg(g % 7),
                        arg("paid"), arg(g % 2 ? "f" : "t")
                    printf "%s%s%s%s%s%s", arg("placed_at"), arg("2026-11-23 10:00:00.123456+00"), arg("reference"),
                        arg("6512bd43-d9ca-a6e0-2c99-0b0a82652dca"), arg("attributes"), arg("{\"n\": " g ", \"channel\": \"web\"}")
                }
                printf "*%d\r\n%s%s%s", last - first + 3, arg("SADD"), arg("pgfanout:index:bench:public.orders"), keys
            }
        }' >"$WORK/row-writes.resp"
    row_writer() {
        local start
        start=$(date +%s.%N)
        redis-cli -u "$REDIS_BENCH_URL" --pipe <"$WORK/row-writes.resp" >/dev/null
        awk -v n="$N" -v start="$start" -v end="$(date +%s.%N)" 'BEGIN { printf "%.0f", n / (end - start) }'
    }
    ROW_WRITES_RATE=$(row_writer)
    redis-cli -u "$REDIS_BENCH_URL" FLUSHDB >/dev/null
    echo "yardstick=row-writes rows_per_second=$ROW_WRITES_RATE pgfanout_ratio=$(awk -v r="$RATE" -v w="$ROW_WRITES_RATE" 'BEGIN { printf "%.2f", r / w }')"
    # beside NAME ALONE_RATE WRITER SLOT: the point and the estimate for one writer.
    beside() {
        local name=$1 alone=$2 writer=$3 copy=$4 written
        discard_config "$copy" >"$WORK/beside.toml"
        "$writer" >"$WORK/beside.rate" &
        local writer_pid=$!
        bench_run "$WORK/beside.toml" "$N"
        bench_stop
        wait "$writer_pid"
        written=$(cat "$WORK/beside.rate")
        redis-cli -u "$REDIS_BENCH_URL" FLUSHDB >/dev/null
        awk -v name="$name" -v d="$DISCARD_RATE" -v a="$alone" -v p="$RATE" -v w="$written" 'BEGIN {
            if (w >= p) r = p + (d - p) * (w - p) / (d - p + w); else r = p * a / (p + a - w)
            printf "beside=%s pipeline_per_second=%d writes_per_second=%d shares_of_alone=%.2f+%.2f ceiling_ratio=%.2f\n", name, p, w, p / d, w / a, r / d
        }'
    }
    beside hset-8-fields "$HSET_RATE" hset_writer bench_sink_beside_hset
    beside row-writes "$ROW_WRITES_RATE" row_writer bench_sink_beside_rows
fi
