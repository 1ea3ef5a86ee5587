# shellcheck shell=bash
# Shared by the end-to-end benchmarks (sourced, not run): the local stack, a
# fresh database with a publication and a slot, a backlog written in
# transactions of 1,000 rows, and the wait for a sink to apply it.
#
# After `source lib.sh`: REPO_ROOT, TARGET (cargo's target dir), PSQL (array),
# WORK (a temporary folder), HTTP_PORT; the stack's PGFANOUT_TEST_* variables
# (a throwaway stack is started when they are not set). A script may define
# `bench_on_exit` for its own cleanup; pgfanout (PGFANOUT_PID) and the
# throwaway stack are stopped on exit whatever happens.

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
STACK_DIR=""
WORK=$(mktemp -d)
HTTP_PORT=$((20000 + RANDOM % 10000))

bench_cleanup() {
    if [[ -n ${PGFANOUT_PID:-} ]]; then
        kill -TERM "$PGFANOUT_PID" 2>/dev/null && wait "$PGFANOUT_PID" 2>/dev/null
    fi
    if declare -F bench_on_exit >/dev/null; then bench_on_exit; fi
    if [[ -n $STACK_DIR ]]; then
        "$REPO_ROOT/deploy/local/stack.sh" stop "$STACK_DIR" >/dev/null 2>&1
        rm -rf "$STACK_DIR"
    fi
    rm -rf "$WORK"
    return 0
}
trap bench_cleanup EXIT

if [[ -z ${PGFANOUT_TEST_PG_URL:-} ]]; then
    STACK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/pgfanout-bench.XXXXXX")
    "$REPO_ROOT/deploy/local/stack.sh" start "$STACK_DIR" >&2
    # shellcheck source=/dev/null
    source "$STACK_DIR/env"
fi
PSQL=("$PGFANOUT_TEST_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PGFANOUT_TEST_PG_SOCKET_DIR" -p "$PGFANOUT_TEST_PG_PORT" -U postgres)

# bench_database NAME: a fresh database NAME (and no slot NAME) on the stack,
# set up by the SQL on stdin (tables and the publication NAME); then the
# slot NAME, so that everything written afterwards is the backlog.
bench_database() {
    local name=$1
    "${PSQL[@]}" -d postgres -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '$name' OR slot_name = '$name'" >/dev/null
    "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $name WITH (FORCE)" -c "CREATE DATABASE $name" >/dev/null
    "${PSQL[@]}" -d "$name" >/dev/null
    "${PSQL[@]}" -d "$name" -c "SELECT pg_create_logical_replication_slot('$name', 'pgoutput')" >/dev/null
}

# bench_copy_slot NAME COPY: slot COPY, a copy of slot NAME (database NAME)
# holding the same backlog, so two runs read the same changes.
bench_copy_slot() {
    "${PSQL[@]}" -d "$1" -c "SELECT pg_copy_logical_replication_slot('$1', '$2')" >/dev/null
}

# bench_backlog NAME N INSERT: N rows written into database NAME in
# transactions of 1,000 by INSERT, an `INSERT … SELECT … FROM
# generate_series({lo}, {hi}) g` whose {lo} and {hi} become each chunk's bounds.
bench_backlog() {
    local name=$1 n=$2 insert=$3
    insert=${insert//\{lo\}/chunk * 1000 + 1}
    insert=${insert//\{hi\}/least((chunk + 1) * 1000, $n)}
    "${PSQL[@]}" -d "$name" >/dev/null <<SQL
DO \$\$
BEGIN
  FOR chunk IN 0 .. ($n - 1) / 1000 LOOP
    $insert;
    COMMIT;
  END LOOP;
END
\$\$;
SQL
}

# bench_source NAME [SLOT]: the [source] and [http] sections of a config
# reading publication NAME from database NAME over the unix socket, from
# slot SLOT (default NAME).
bench_source() {
    cat <<TOML
[source]
url = "host=$PGFANOUT_TEST_PG_SOCKET_DIR port=$PGFANOUT_TEST_PG_PORT user=postgres dbname=$1"
slot = "${2:-$1}"
publication = "$1"
heartbeat_interval_secs = 0

[http]
listen = "127.0.0.1:$HTTP_PORT"

TOML
}

# bench_stream_only: the [snapshot] section of a config that applies the
# backlog only. The rows are in the tables before pgfanout starts, so a
# snapshot would copy them too, and its rows would count toward the applied
# total that bench_run waits for: the run would end with part of the stream
# still unapplied.
bench_stream_only() {
    printf '[snapshot]\nenabled = false\n\n'
}

# bench_run CONFIG N: starts pgfanout ($PGFANOUT_BIN, else the release build; PROFILE=debug for a
# debug one, only to try a script out) with CONFIG and waits
# until its sinks have applied N changes; sets START, END, RATE (changes/s)
# and PEAK (peak RSS in kB). Extra environment for pgfanout in BENCH_ENV.
bench_run() {
    local config=$1 n=$2 applied rss
    START=$(date +%s.%N)
    env ${BENCH_ENV:-} "${PGFANOUT_BIN:-$TARGET/${PROFILE:-release}/pgfanout}" --log-format json run --config "$config" 2>"$WORK/pgfanout.log" &
    PGFANOUT_PID=$!
    PEAK=0
    while :; do
        # (Nothing answers until pgfanout listens: curl fails, the sum is 0.)
        applied=$({ curl -s "http://127.0.0.1:$HTTP_PORT/metrics" || true; } |
            awk '/^pgfanout_sink_applied_total/ { sum += $2 } END { printf "%d", sum }')
        rss=$(awk '/VmHWM/ {print $2}' "/proc/$PGFANOUT_PID/status" 2>/dev/null || echo 0)
        ((rss > PEAK)) && PEAK=$rss
        ((applied >= n)) && break
        kill -0 "$PGFANOUT_PID" 2>/dev/null || { tail -20 "$WORK/pgfanout.log" >&2; exit 1; }
        sleep 0.02
    done
    END=$(date +%s.%N)
    RATE=$(awk -v n="$n" -v start="$START" -v end="$END" 'BEGIN { printf "%.0f", n / (end - start) }')
}

# bench_stop: stops pgfanout (SIGTERM, waits).
bench_stop() {
    kill -TERM "$PGFANOUT_PID" 2>/dev/null && wait "$PGFANOUT_PID" 2>/dev/null
    PGFANOUT_PID=""
    return 0
}

# The 8-column orders table (bigint, text, numeric, int, boolean,
# timestamptz, uuid, jsonb) and its rows, shared by the single-table benches.
ORDERS_TABLE="CREATE TABLE orders (
    id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(12,2) NOT NULL, quantity int NOT NULL,
    paid boolean NOT NULL, placed_at timestamptz NOT NULL, reference uuid NOT NULL, attributes jsonb
);"
ORDERS_INSERT="INSERT INTO orders
    SELECT g, 'customer ' || g, g % 1000 + 0.99, g % 7, g % 2 = 0, now(), md5(g::text)::uuid,
           jsonb_build_object('channel', 'web', 'n', g)
    FROM generate_series({lo}, {hi}) g"

# The `events` table of the latency benches: small rows of a steady stream.
EVENTS_TABLE="CREATE TABLE events (
    id bigserial PRIMARY KEY, kind text NOT NULL, amount numeric(12, 2) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);"
