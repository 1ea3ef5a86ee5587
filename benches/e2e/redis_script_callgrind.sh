#!/usr/bin/env bash
# What the Redis sink costs the Redis server, in instructions per row:
# counted by `valgrind --tool=callgrind` on a redis-server of its own (not the
# stack's), so the figure does not depend on the machine's load. A backlog of
# N inserts into the latency benchmark's `events` table, in transactions of
# 1 to 10 rows (sizes cycling, the same every run), is applied by `pgfanout
# run` (release build, or PGFANOUT_BIN) with one lane; the whole server
# process is counted, start-up included (a few million instructions).
#
#   benches/e2e/redis_script_callgrind.sh
#   PGFANOUT_BIN=/tmp/pgfanout-main N=20000 benches/e2e/redis_script_callgrind.sh
#
# Environment (defaults in brackets): N [20000] rows, LANES [1],
# PGFANOUT_BIN [release build of this checkout]. Prints
#   rows=N batches=B instructions=I instructions_per_row=I/N
# and leaves the profile in callgrind.out.redis-script (callgrind_annotate it).
set -euo pipefail
# shellcheck source=benches/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${N:-20000}
LANES=${LANES:-1}
[[ -n ${PGFANOUT_BIN:-} ]] || (cd "$REPO_ROOT" && cargo build --release --quiet --bin pgfanout)
command -v valgrind >/dev/null || {
    echo "valgrind is needed (apt-get install valgrind)" >&2
    exit 1
}

bench_database bench_script <<SQL
$EVENTS_TABLE
CREATE PUBLICATION bench_script FOR TABLE events;
SQL
"${PSQL[@]}" -d bench_script <<SQL
DO \$\$
DECLARE written int := 0; size int;
BEGIN
  FOR t IN 0 .. $N LOOP
    EXIT WHEN written >= $N;
    size := least(1 + t % 10, $N - written);
    INSERT INTO events (kind, amount) SELECT 'click', g * 1.5 FROM generate_series(1, size) g;
    written := written + size;
    COMMIT;
  END LOOP;
END
\$\$;
SQL

REDIS_PORT=$((30000 + RANDOM % 10000))
PROFILE_OUT=$PWD/callgrind.out.redis-script
valgrind --tool=callgrind --callgrind-out-file="$PROFILE_OUT" \
    "${PGFANOUT_TEST_REDIS_SERVER:-redis-server}" --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    >"$WORK/valgrind.log" 2>&1 &
REDIS_PID=$!
bench_on_exit() { kill "$REDIS_PID" 2>/dev/null || true; }
deadline=$((SECONDS + 60))
until redis-cli -p "$REDIS_PORT" PING >/dev/null 2>&1; do
    ((SECONDS < deadline)) || {
        cat "$WORK/valgrind.log" >&2
        exit 1
    }
    sleep 0.5
done

{
    bench_source bench_script && bench_stream_only
    printf '[[sink]]\nname = "cache"\nkind = "redis"\nurl = "redis://127.0.0.1:%s/0"\n\n' "$REDIS_PORT"
    printf '[[sink.table]]\nsource = "public.events"\n\n[sink.delivery]\nlanes = %s\n' "$LANES"
} >"$WORK/pgfanout.toml"
bench_run "$WORK/pgfanout.toml" "$N"
batches=$(curl -s "http://127.0.0.1:$HTTP_PORT/metrics" | awk '/^pgfanout_sink_batch_size_count/ { print $2 }')
bench_stop
# Callgrind writes the profile when the server exits.
redis-cli -p "$REDIS_PORT" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
wait "$REDIS_PID" 2>/dev/null || true
callgrind_annotate "$PROFILE_OUT" 2>/dev/null | awk -v rows="$N" -v batches="$batches" '/PROGRAM TOTALS/ {
    gsub(",", "", $1)
    printf "rows=%d batches=%d instructions=%d instructions_per_row=%d\n", rows, batches, $1, $1 / rows
}'
