#!/usr/bin/env bash
# End-to-end throughput of the graph sink: a backlog of N reservation
# inserts (each a node with two foreign-key relationships, whose targets are
# merged by key), applied with batching on, into FalkorDB (Cypher over RESP;
# round trips counted by FalkorDB itself, INFO commandstats: one MULTI/EXEC
# per sink call, plus the odd lone query) or Neo4j (Bolt; a sink call is one
# transaction, BEGIN + one RUN per statement + COMMIT, each a round trip,
# counted from the sink's "batch written" debug events; and the store's own
# ceiling in the same run: UNWIND batches of 1,000 MERGEs of the same shape,
# by the `store_ceiling` example).
#
#   benches/e2e/graph_sink.sh                  # N = 100,000 changes, 4 lanes, FalkorDB
#   STORE=neo4j N=20000 LANES=1 DERIVED=1 benches/e2e/graph_sink.sh
#
# With Neo4j, pgfanout first applies WARM_CHANGES [all N + 500] changes of
# the same backlog, and the ceiling 5,000 rows, before either is measured
# (the JVM and Cypher's runtime warm up as they go); the graph is emptied
# between. On a fresh JVM the first run still comes out lower than the next.
# DERIVED=1 adds the (User)-[:BOOKED_IN {count}]->(City) rule, recomputed per
# touched guest. Uses the local stack from the environment
# (PGFANOUT_TEST_PG_URL, PGFANOUT_TEST_FALKORDB_URL, ...) when set, else
# starts a throwaway one. Prints one line:
#   changes=N seconds=S changes_per_second=R ... round_trips_per_1000=P   (FalkorDB)
#   changes=N seconds=S changes_per_second=R ... round_trips_per_1000=P ceiling_rows_per_second=C ratio=R/C   (Neo4j)
set -euo pipefail
# shellcheck source=benches/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${N:-100000}
LANES=${LANES:-4}
DERIVED=${DERIVED:-0}
STORE=${STORE:-falkordb}
(cd "$REPO_ROOT" && cargo build --release --quiet -p pgfanout --bins --example store_ceiling)
FALKOR_PORT=${PGFANOUT_TEST_FALKORDB_URL##*:}
FALKOR=(redis-cli -p "${FALKOR_PORT%%/*}")
CYPHER=("$REPO_ROOT/.venv/bin/python" "$REPO_ROOT/deploy/local/cypher.py" "$PGFANOUT_TEST_NEO4J_URL")

bench_database bench_graph <<'SQL'
CREATE TABLE properties (id bigint PRIMARY KEY, city_id bigint NOT NULL, title text NOT NULL);
CREATE TABLE reservations (
    id bigint PRIMARY KEY, property_id bigint NOT NULL, guest_id bigint NOT NULL,
    check_in date NOT NULL, total numeric(12,2) NOT NULL, status text NOT NULL, created_at timestamptz NOT NULL
);
CREATE PUBLICATION bench_graph FOR TABLE properties, reservations;
SQL
"${PSQL[@]}" -d bench_graph -c "INSERT INTO properties SELECT g, g % 20, 'property ' || g FROM generate_series(1, 500) g" >/dev/null
# The backlog: N inserts in transactions of 1,000 rows, over 5,000 guests and 500 properties.
bench_backlog bench_graph "$N" "INSERT INTO reservations
    SELECT g, g % 500 + 1, g % 5000, date '2026-01-01' + g % 365, g % 1000 + 0.99, 'confirmed', now()
    FROM generate_series({lo}, {hi}) g"

if [[ $STORE == neo4j ]]; then
    "${CYPHER[@]}" "MATCH (n) CALL { WITH n DETACH DELETE n } IN TRANSACTIONS OF 10000 ROWS" >/dev/null
    STORE_LINES="transport = \"bolt\"
url = \"$PGFANOUT_TEST_NEO4J_URL\""
else
    "${FALKOR[@]}" GRAPH.DELETE bench_graph >/dev/null 2>&1 || true
    "${FALKOR[@]}" CONFIG RESETSTAT >/dev/null
    STORE_LINES="transport = \"falkordb\"
url = \"$PGFANOUT_TEST_FALKORDB_URL\"
graph = \"bench_graph\""
fi

{ bench_source bench_graph && bench_stream_only; } >"$WORK/pgfanout.toml"
cat >>"$WORK/pgfanout.toml" <<TOML
[[sink]]
name = "bench_graph"
kind = "graph"
$STORE_LINES
[[sink.table]]
source = "public.properties"
label = "Property"
relationships = [{ column = "city_id", type = "IN_CITY", to = "City" }]
[[sink.table]]
source = "public.reservations"
label = "Reservation"
relationships = [
  { column = "guest_id", type = "BOOKED_BY", to = "User" },
  { column = "property_id", type = "FOR", to = "Property" },
]
[sink.delivery]
lanes = $LANES
TOML
if [[ $DERIVED == 1 ]]; then
    cat >>"$WORK/pgfanout.toml" <<'TOML'
[[sink.derived]]
type = "BOOKED_IN"
match = "(source:User)<-[:BOOKED_BY]-(r:Reservation)-[:FOR]->(p:Property)-[:IN_CITY]->(target:City)"
count = "r"
on = { "public.reservations" = "r", "public.properties" = "p" }
TOML
fi

TOTAL=$((N + 500))
if [[ $STORE == neo4j ]]; then
    # Neo4j compiles its Cypher runtime and the JVM its code as they go:
    # both sides are warmed up before either is measured, so that neither
    # pgfanout's run nor the ceiling's pays for a cold server, whichever
    # comes first. pgfanout's statements: the first WARM_CHANGES changes of
    # the same backlog (a copy of the slot, a sink of another name; all of
    # it by default), then the graph is emptied; the ceiling's: 5,000 rows
    # of its own.
    WARM_CHANGES=${WARM_CHANGES:-$TOTAL}
    ((WARM_CHANGES > TOTAL)) && WARM_CHANGES=$TOTAL
    bench_copy_slot bench_graph bench_graph_warm
    sed -e 's/^slot = "bench_graph"$/slot = "bench_graph_warm"/' -e 's/^name = "bench_graph"$/name = "bench_graph_warm"/' \
        "$WORK/pgfanout.toml" >"$WORK/warm.toml"
    bench_run "$WORK/warm.toml" "$WARM_CHANGES"
    bench_stop
    "${CYPHER[@]}" "MATCH (n) CALL { WITH n DETACH DELETE n } IN TRANSACTIONS OF 10000 ROWS" >/dev/null
    "$TARGET/release/examples/store_ceiling" neo4j "$PGFANOUT_TEST_NEO4J_URL" 5000 1000 >/dev/null
    BENCH_ENV="PGFANOUT_LOG=info,pgfanout_sink_graph=debug"
fi
bench_run "$WORK/pgfanout.toml" "$TOTAL"
if [[ $STORE == neo4j ]]; then
    bench_stop
    read -r BATCHES ROUND_TRIPS < <(grep '"batch written"' "$WORK/pgfanout.log" | python3 -c '
import json, sys
batches = trips = 0
for line in sys.stdin:
    event = json.loads(line)
    fields = event.get("fields", event)
    batches += 1
    trips += int(fields.get("round_trips", 0))
print(batches, trips)')
    NODES=$("${CYPHER[@]}" "MATCH (r:Reservation) RETURN count(r)")
    [[ $NODES == "$N" ]] || { echo "expected $N reservation nodes, found $NODES" >&2; exit 1; }
    CEILING=$("$TARGET/release/examples/store_ceiling" neo4j "$PGFANOUT_TEST_NEO4J_URL" "$N" 1000)
    awk -v n="$TOTAL" -v start="$START" -v end="$END" -v batches="$BATCHES" -v trips="$ROUND_TRIPS" -v lanes="$LANES" \
        -v derived="$DERIVED" -v ceiling="$CEILING" \
        'BEGIN { s = end - start;
                 printf "store=neo4j changes=%d seconds=%.2f changes_per_second=%.0f lanes=%d derived=%d transactions=%d round_trips_per_1000=%.1f ceiling_rows_per_second=%s ratio=%.2f\n",
                        n, s, n / s, lanes, derived, batches, trips * 1000 / n, ceiling, n / s / ceiling }'
    exit 0
fi
# A call's MULTI/EXEC is one round trip; queries outside a transaction (index
# creation, the checkpoint read) are one each.
STATS=$("${FALKOR[@]}" INFO commandstats | tr -d '\r')
EXECS=$(sed -n 's/^cmdstat_exec:calls=\([0-9]*\).*/\1/p' <<<"$STATS")
QUERIES=$(sed -n 's/^cmdstat_graph.QUERY:calls=\([0-9]*\).*/\1/p' <<<"$STATS")
IN_TRANSACTIONS=$(sed -n 's/^cmdstat_multi:calls=\([0-9]*\).*/\1/p' <<<"$STATS")
NODES=$("${FALKOR[@]}" GRAPH.QUERY bench_graph "MATCH (r:Reservation) RETURN count(r)" | sed -n 2p)
[[ $NODES == "$N" ]] || { echo "expected $N reservation nodes, found $NODES" >&2; exit 1; }
awk -v n="$TOTAL" -v start="$START" -v end="$END" -v execs="${EXECS:-0}" -v queries="${QUERIES:-0}" \
    -v multis="${IN_TRANSACTIONS:-0}" -v lanes="$LANES" -v derived="$DERIVED" \
    'BEGIN { s = end - start;
             printf "changes=%d seconds=%.2f changes_per_second=%.0f lanes=%d derived=%d graph_queries=%d transactions=%d round_trips_per_1000=%.1f\n",
                    n, s, n / s, lanes, derived, queries, multis, execs * 1000 / n }'
