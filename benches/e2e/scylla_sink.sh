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
# shellcheck source=benches/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${N:-100000}
LANES=${LANES:-4}
MAX_BATCH=${MAX_BATCH:-100}
bench_on_exit() {
    if [[ -n ${CQL_PID:-} ]]; then kill "$CQL_PID" 2>/dev/null && wait "$CQL_PID" 2>/dev/null; fi
    return 0
}
(cd "$REPO_ROOT" && cargo build --release --quiet -p pgfanout -p pgfanout-cql-dev-server)

bench_database bench_scylla <<'SQL'
CREATE TABLE reservations (
    id bigint PRIMARY KEY, guest_id int NOT NULL, property_id int NOT NULL, check_in date NOT NULL,
    status text NOT NULL, total_price numeric(12,2) NOT NULL, booked_at timestamptz NOT NULL, reference uuid NOT NULL
);
ALTER TABLE reservations REPLICA IDENTITY FULL;
CREATE PUBLICATION bench_scylla FOR TABLE reservations;
SQL
# The backlog: N inserts in transactions of 1,000 rows, 1,000 guests.
bench_backlog bench_scylla "$N" "INSERT INTO reservations
    SELECT g, g % 1000, g % 97, date '2027-01-01' + (g % 365), 'pending', g % 1000 + 0.99, now(), md5(g::text)::uuid
    FROM generate_series({lo}, {hi}) g"

CQL_PORT=$((30000 + RANDOM % 10000))
"$TARGET/release/pgfanout-cql-dev-server" "127.0.0.1:$CQL_PORT" >"$WORK/cql.log" 2>&1 &
CQL_PID=$!
bench_source bench_scylla >"$WORK/pgfanout.toml"
cat >>"$WORK/pgfanout.toml" <<TOML
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

bench_run "$WORK/pgfanout.toml" "$N"
sleep 1.2 # the dev server reports its request count once a second
REQUESTS=$(grep -o 'requests=[0-9]*' "$WORK/cql.log" | tail -1 | cut -d= -f2)
awk -v n="$N" -v start="$START" -v end="$END" -v requests="${REQUESTS:-0}" \
    'BEGIN { s = end - start; printf "changes=%d statements=%d seconds=%.2f changes_per_second=%.0f requests=%d requests_per_1000_changes=%.1f\n", n, 2 * n, s, n / s, requests, requests * 1000 / n }'
