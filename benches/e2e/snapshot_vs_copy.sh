#!/usr/bin/env bash
# The initial snapshot of an N-row table (the 8-column `orders` table) into
# the discarding sink and into Redis, next to `COPY (SELECT …) TO STDOUT` of
# the same table into /dev/null in the same run (the limit: PostgreSQL
# reading and sending the rows as text). Everything over the unix socket.
#
#   benches/e2e/snapshot_vs_copy.sh                 # N=1000000, release build, default chunk size
#   N=200000 CHUNK_ROWS=5000 benches/e2e/snapshot_vs_copy.sh
#   CHUNKS_IN_FLIGHT=1 benches/e2e/snapshot_vs_copy.sh   # one chunk at a time (no read-ahead)
#   PROFILE=debug N=100000 benches/e2e/snapshot_vs_copy.sh   # try it out without a release build
#   SINKS=discard benches/e2e/snapshot_vs_copy.sh              # one target only (discard, redis)
#   LOGS=/tmp/snap PGFANOUT_LOG=info,pgfanout_snapshot=debug benches/e2e/snapshot_vs_copy.sh
#                                   # keep pgfanout's logs (per-chunk timings at debug) in LOGS
#   PGFANOUT_BIN=/tmp/pgfanout-old benches/e2e/snapshot_vs_copy.sh   # that binary, no build
#   REUSE=1 benches/e2e/snapshot_vs_copy.sh   # the orders table an earlier run filled, if it has N rows
#   CALLGRIND=1 SINKS=discard N=200000 benches/e2e/snapshot_vs_copy.sh
#                                   # instead of timing: pgfanout under valgrind --tool=callgrind,
#                                   # printing its instructions per row (whole process; stable on a
#                                   # loaded machine, ~50x slower); profiles kept in CALLGRIND_OUT
#
# Prints, per target, seconds from pgfanout's start to the last row applied
# (connecting and creating the slot included), pgfanout's CPU time (user +
# system) over that run and PostgreSQL's (all its processes, while each ran):
#   copy rows=N seconds=T rows_per_second=R pg_cpu_seconds=P
#   snapshot sink=discard rows=N seconds=T rows_per_second=R of_copy=0.xx cpu_seconds=C pg_cpu_seconds=P
#   snapshot sink=redis rows=N seconds=T rows_per_second=R of_copy=0.xx cpu_seconds=C pg_cpu_seconds=P
set -euo pipefail
# shellcheck source=benches/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${N:-1000000}
SINKS=${SINKS:-discard redis}
PGFANOUT=${PGFANOUT_BIN:-$TARGET/${PROFILE:-release}/pgfanout}
if [[ -z ${PGFANOUT_BIN:-} && ${PROFILE:-release} == release ]]; then
    (cd "$REPO_ROOT" && cargo build --release --quiet --bin pgfanout)
fi

# The rows exist before pgfanout's slot does: they reach the sinks only
# through the snapshot.
if [[ ${REUSE:-0} == 1 ]] &&
    [[ $("${PSQL[@]}" -d bench_snapshot -Atc "SELECT count(*) FROM orders" 2>/dev/null) == "$N" ]]; then
    echo "reusing the $N-row orders table of database bench_snapshot" >&2
else
    bench_database bench_snapshot <<SQL
$ORDERS_TABLE
CREATE PUBLICATION bench_snapshot FOR TABLE orders;
SQL
    "${PSQL[@]}" -d bench_snapshot -c "SELECT pg_drop_replication_slot('bench_snapshot')" >/dev/null
    bench_backlog bench_snapshot "$N" "$ORDERS_INSERT"
    "${PSQL[@]}" -d bench_snapshot -c "VACUUM ANALYZE orders" >/dev/null
fi

# pg_cpu_ticks: CPU ticks of the PostgreSQL server so far: the postmaster's
# own and its exited children's (fields 14-17 of /proc/PID/stat), plus its
# live children's.
pg_cpu_ticks() {
    local postmaster
    postmaster=$(head -1 "$PGFANOUT_TEST_PG_DATA/postmaster.pid")
    { echo "$postmaster" && pgrep -P "$postmaster"; } | while read -r pid; do
        sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null || true
    done | awk '{ sum += $12 + $13 + $14 + $15 } END { print sum }'
}
HZ=$(getconf CLK_TCK)
# pg_children: how many processes the postmaster has now.
pg_children() {
    pgrep -c -P "$(head -1 "$PGFANOUT_TEST_PG_DATA/postmaster.pid")" || true
}

pg_start=$(pg_cpu_ticks)
children=$(pg_children)
start=$(date +%s.%N)
"${PSQL[@]}" -d bench_snapshot -c "COPY (SELECT * FROM orders) TO STDOUT" >/dev/null
end=$(date +%s.%N)
copy_seconds=$(awk -v start="$start" -v end="$end" 'BEGIN { printf "%.3f", end - start }')
# The COPY's backend counts once the postmaster has reaped it.
for _ in $(seq 100); do ((children >= $(pg_children))) && break; sleep 0.02; done
awk -v n="$N" -v s="$copy_seconds" -v pg="$(($(pg_cpu_ticks) - pg_start))" -v hz="$HZ" \
    'BEGIN { printf "copy rows=%d seconds=%.2f rows_per_second=%d pg_cpu_seconds=%.2f\n", n, s, n / s, pg / hz }'

# snapshot_run KIND SINK_LINES: a fresh slot, pgfanout with one sink, timed
# until the snapshot counted N rows applied.
snapshot_run() {
    local kind=$1 sink_lines=$2 copied cpu_ticks pg_start pg_ticks
    "${PSQL[@]}" -d bench_snapshot \
        -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'bench_snapshot'" \
        >/dev/null
    {
        bench_source bench_snapshot
        printf '[snapshot]\n'
        if [[ -n ${CHUNK_ROWS:-} ]]; then printf 'chunk_rows = %d\n' "$CHUNK_ROWS"; fi
        if [[ -n ${CHUNKS_IN_FLIGHT:-} ]]; then printf 'chunks_in_flight = %d\n' "$CHUNKS_IN_FLIGHT"; fi
        printf '\n'
        printf '[[sink]]\nname = "bench"\n%s\n[[sink.table]]\nsource = "public.orders"\n' "$sink_lines"
    } >"$WORK/$kind.toml"
    pg_start=$(pg_cpu_ticks)
    START=$(date +%s.%N)
    local profile=${CALLGRIND_OUT:-$WORK}/callgrind.$kind.out wrapper=()
    if [[ ${CALLGRIND:-0} == 1 ]]; then wrapper=(valgrind --tool=callgrind --callgrind-out-file="$profile"); fi
    "${wrapper[@]}" "$PGFANOUT" --log-format json run --config "$WORK/$kind.toml" 2>"$WORK/$kind.log" &
    PGFANOUT_PID=$!
    while :; do
        copied=$({ curl -s "http://127.0.0.1:$HTTP_PORT/metrics" || true; } |
            awk '/^pgfanout_snapshot_rows_total/ { sum += $2 } END { printf "%d", sum }')
        ((copied >= N)) && break
        kill -0 "$PGFANOUT_PID" 2>/dev/null || { tail -20 "$WORK/$kind.log" >&2; exit 1; }
        sleep 0.02
    done
    END=$(date +%s.%N)
    # utime + stime, fields 14 and 15 of /proc/PID/stat (after the command's parenthesis).
    cpu_ticks=$(sed 's/.*) //' "/proc/$PGFANOUT_PID/stat" | awk '{ print $12 + $13 }')
    pg_ticks=$(($(pg_cpu_ticks) - pg_start))
    bench_stop
    if [[ -n ${LOGS:-} ]]; then mkdir -p "$LOGS" && cp "$WORK/$kind.log" "$LOGS/"; fi
    if [[ ${CALLGRIND:-0} == 1 ]]; then
        local total
        total=$(awk '/^(summary|totals):/ { print $2; exit }' "$profile")
        printf 'snapshot sink=%s rows=%d instructions=%d per_row=%.0f profile=%s\n' "$kind" "$N" "$total" \
            "$(awk -v t="$total" -v n="$N" 'BEGIN { print t / n }')" "$profile"
        return
    fi
    awk -v kind="$kind" -v n="$N" -v start="$START" -v end="$END" -v copy="$copy_seconds" \
        -v cpu="$cpu_ticks" -v pg="$pg_ticks" -v hz="$HZ" \
        'BEGIN { s = end - start; printf "snapshot sink=%s rows=%d seconds=%.2f rows_per_second=%d of_copy=%.2f cpu_seconds=%.2f pg_cpu_seconds=%.2f\n", kind, n, s, n / s, copy / s, cpu / hz, pg / hz }'
}

for sink in $SINKS; do
    case $sink in
    discard) snapshot_run discard 'kind = "discard"' ;;
    redis)
        REDIS_BENCH_URL="${PGFANOUT_TEST_REDIS_URL%/}/9"
        redis-cli -u "$REDIS_BENCH_URL" FLUSHDB >/dev/null
        snapshot_run redis "kind = \"redis\"
url = \"$REDIS_BENCH_URL\""
        redis-cli -u "$REDIS_BENCH_URL" FLUSHDB >/dev/null
        ;;
    *) echo "unknown sink $sink (discard, redis)" >&2 && exit 2 ;;
    esac
done
