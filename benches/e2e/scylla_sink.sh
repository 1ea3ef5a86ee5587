#!/usr/bin/env bash
# End-to-end throughput of the Cassandra/ScyllaDB sink: pgfanout (release
# build) applying a backlog of N row inserts to two query tables on the
# in-memory CQL dev server (kassandra, single-threaded: it bounds the rate),
# with batching on; and the CQL requests per 1,000 row changes.
#
#   benches/e2e/scylla_sink.sh                       # N = 100,000 changes
#   N=20000 LANES=1 MAX_BATCH=100 benches/e2e/scylla_sink.sh
#
# Uses the local stack from the environment (PGFANOUT_TEST_PG_URL, ...) when
# set, else starts a throwaway one. Prints one line:
#   changes=N statements=S seconds=T changes_per_second=R requests=Q requests_per_1000_changes=P
# where `requests` counts query/prepare/execute/batch requests the server
# answered (each one round trip; those of one wave are sent concurrently).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
N=${N:-100000}
LANES=${LANES:-4}
MAX_BATCH=${MAX_BATCH:-100}
STACK_DIR=""
cleanup() {
    [[ -n ${PGFANOUT_PID:-} ]] && kill -TERM "$PGFANOUT_PID" 2>/dev/null && wait "$PGFANOUT_PID" 2>/dev/null || true
    [[ -n ${CQL_PID:-} ]] && kill "$CQL_PID" 2>/dev/null && wait "$CQL_PID" 2>/dev/null || true
    if [[ -n $STACK_DIR ]]; then
        "$REPO_ROOT/deploy/local/stack.sh" stop "$STACK_DIR" >/dev/null 2>&1 || true
        rm -rf "$STACK_DIR"
    fi
    [[ -n ${WORK:-} ]] && rm -rf "$WORK"
    return 0
}
trap cleanup EXIT

if [[ -z ${PGFANOUT_TEST_PG_URL:-} ]]; then
    STACK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/pgfanout-bench.XXXXXX")
    "$REPO_ROOT/deploy/local/stack.sh" start "$STACK_DIR" >&2
    # shellcheck source=/dev/null
    source "$STACK_DIR/env"
fi
(cd "$REPO_ROOT" && cargo build --release --quiet -p pgfanout -p pgfanout-cql-dev-server)
TARGET=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
BIN="$TARGET/release/pgfanout"
PSQL=("$PGFANOUT_TEST_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PGFANOUT_TEST_PG_SOCKET_DIR" -p "$PGFANOUT_TEST_PG_PORT" -U postgres)

"${PSQL[@]}" -d postgres -c "SELECT pg_drop_replication_slot('bench_scylla') FROM pg_replication_slots WHERE slot_name = 'bench_scylla'" >/dev/null
"${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS bench_scylla WITH (FORCE)" -c "CREATE DATABASE bench_scylla" >/dev/null
"${PSQL[@]}" -d bench_scylla >/dev/null <<'SQL'
CREATE TABLE reservations (
    id bigint PRIMARY KEY, guest_id int NOT NULL, property_id int NOT NULL, check_in date NOT NULL,
    status text NOT NULL, total_price numeric(12,2) NOT NULL, booked_at timestamptz NOT NULL, reference uuid NOT NULL
);
ALTER TABLE reservations REPLICA IDENTITY FULL;
CREATE PUBLICATION bench_scylla FOR TABLE reservations;
SELECT pg_create_logical_replication_slot('bench_scylla', 'pgoutput');
SQL

# The backlog: N inserts in transactions of 1,000 rows, 1,000 guests.
"${PSQL[@]}" -d bench_scylla >/dev/null <<SQL
DO \$\$
BEGIN
  FOR chunk IN 0 .. ($N - 1) / 1000 LOOP
    INSERT INTO reservations
    SELECT g, g % 1000, g % 97, date '2027-01-01' + (g % 365), 'pending', g % 1000 + 0.99, now(), md5(g::text)::uuid
    FROM generate_series(chunk * 1000 + 1, least((chunk + 1) * 1000, $N)) g;
    COMMIT;
  END LOOP;
END
\$\$;
SQL

WORK=$(mktemp -d)
CQL_PORT=$((30000 + RANDOM % 10000))
HTTP_PORT=$((20000 + RANDOM % 10000))
"$TARGET/release/pgfanout-cql-dev-server" "127.0.0.1:$CQL_PORT" >"$WORK/cql.log" 2>&1 &
CQL_PID=$!
cat >"$WORK/pgfanout.toml" <<TOML
[source]
url = "host=$PGFANOUT_TEST_PG_SOCKET_DIR port=$PGFANOUT_TEST_PG_PORT user=postgres dbname=bench_scylla"
slot = "bench_scylla"
publication = "bench_scylla"
heartbeat_interval_secs = 0

[http]
listen = "127.0.0.1:$HTTP_PORT"

[[sink]]
name = "analytics"
kind = "scylla"
nodes = ["127.0.0.1:$CQL_PORT"]
keyspace = "bench"
consistency = "one"
manage_schema = true
replication = "{'class': 'SimpleStrategy', 'replication_factor': 1}"
# What the dev server lacks (see crates/cql-dev-server).
write_timestamps = false
await_schema_agreement = false
fetch_schema_metadata = false
max_batch_statements = $MAX_BATCH
[[sink.table]]
source = "public.reservations"
types = { total_price = "text" }
[[sink.table.target]]
table = "reservations"
partition_key = ["id"]
[[sink.table.target]]
table = "reservations_by_guest"
partition_key = ["guest_id"]
clustering_key = ["id"]
columns = ["status", "total_price", "check_in"]
[sink.delivery]
lanes = $LANES
TOML

START=$(date +%s.%N)
"$BIN" --log-format json run --config "$WORK/pgfanout.toml" 2>"$WORK/pgfanout.log" &
PGFANOUT_PID=$!
while :; do
    # (Nothing answers until pgfanout listens: curl fails, the sum is 0.)
    APPLIED=$({ curl -s "http://127.0.0.1:$HTTP_PORT/metrics" || true; } |
        awk '/^pgfanout_sink_applied_total/ { sum += $2 } END { printf "%d", sum }')
    ((APPLIED >= N)) && break
    kill -0 "$PGFANOUT_PID" 2>/dev/null || { tail -20 "$WORK/pgfanout.log" >&2; exit 1; }
    sleep 0.05
done
END=$(date +%s.%N)
sleep 1.2 # the dev server reports its request count once a second
REQUESTS=$(grep -o 'requests=[0-9]*' "$WORK/cql.log" | tail -1 | cut -d= -f2)
awk -v n="$N" -v start="$START" -v end="$END" -v requests="${REQUESTS:-0}" \
    'BEGIN { s = end - start; printf "changes=%d statements=%d seconds=%.2f changes_per_second=%.0f requests=%d requests_per_1000_changes=%.1f\n", n, 2 * n, s, n / s, requests, requests * 1000 / n }'
