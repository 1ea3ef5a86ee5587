#!/usr/bin/env bash
# End-to-end throughput of the Cassandra/ScyllaDB sink: pgfanout (release
# build) applying a backlog of N row inserts to two query tables on the local
# stack's Apache Cassandra, with batching and write timestamps on; the CQL
# requests per 1,000 row changes; and, in the same run, the node's own
# ceiling for the same writes: a loop of prepared inserts (one row into both
# tables per statement pair, as many in flight as pgfanout's lanes ×
# concurrency), by the `store_ceiling` example.
#
#   benches/e2e/scylla_sink.sh                       # N = 100,000 changes
#   N=20000 LANES=1 MAX_BATCH=100 benches/e2e/scylla_sink.sh
#
# Uses the local stack from the environment (PGFANOUT_TEST_PG_URL, ...) when
# set, else starts a throwaway one. Prints one line:
#   changes=N statements=S seconds=T changes_per_second=R requests=Q requests_per_1000_changes=P ceiling_rows_per_second=C ratio=R/C
# where `requests` counts the requests Cassandra answered on pgfanout's
# connections (system_views.clients; each one round trip, those of one wave
# sent concurrently).
set -euo pipefail
# shellcheck source=benches/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${N:-100000}
LANES=${LANES:-4}
MAX_BATCH=${MAX_BATCH:-100}
(cd "$REPO_ROOT" && cargo build --release --quiet -p pgfanout --bins --example store_ceiling)
CQL_PORT=${PGFANOUT_TEST_CASSANDRA_NODES##*:}
CQL=("$REPO_ROOT/deploy/local/cql.py" "$CQL_PORT")
"${CQL[@]}" "DROP KEYSPACE IF EXISTS bench"

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

{ bench_source bench_scylla && bench_stream_only; } >"$WORK/pgfanout.toml"
cat >>"$WORK/pgfanout.toml" <<TOML
[[sink]]
name = "analytics"
kind = "scylla"
nodes = ["$PGFANOUT_TEST_CASSANDRA_NODES"]
keyspace = "bench"
consistency = "one"
manage_schema = true
replication = "{'class': 'SimpleStrategy', 'replication_factor': 1}"
max_batch_statements = $MAX_BATCH
[[sink.table]]
source = "public.reservations"
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

# Requests answered so far on other connections (this script's, the
# driver's of earlier runs) are subtracted.
requests_total() { "${CQL[@]}" "SELECT request_count FROM system_views.clients" | awk '{ s += $1 } END { print s + 0 }'; }
BEFORE=$(requests_total)
bench_run "$WORK/pgfanout.toml" "$N"
REQUESTS=$(($(requests_total) - BEFORE))
bench_stop
CEILING=$("$TARGET/release/examples/store_ceiling" cassandra "$PGFANOUT_TEST_CASSANDRA_NODES" "$N" $((LANES * 64)))
awk -v n="$N" -v start="$START" -v end="$END" -v requests="${REQUESTS:-0}" -v ceiling="$CEILING" \
    'BEGIN { s = end - start; printf "changes=%d statements=%d seconds=%.2f changes_per_second=%.0f requests=%d requests_per_1000_changes=%.1f ceiling_rows_per_second=%s ratio=%.2f\n", n, 2 * n, s, n / s, requests, requests * 1000 / n, ceiling, n / s / ceiling }'
