#!/usr/bin/env bash
# End-to-end throughput into MongoDB: N rows inserted in PostgreSQL (transactions of
# 1,000), then pgfanout (release build) drains them into the MongoDB-wire server; next to
# it, the store's own ceiling measured in the same run: bulk inserts of equivalent
# documents with the `mongodb` crate (crates/sink-mongodb/examples/bulk_ceiling.rs).
#
#   benches/e2e/mongodb_sink.sh                 # N = 200,000 rows
#   N=50000 LANES=1 benches/e2e/mongodb_sink.sh
#
# Uses the local stack from the environment (PGFANOUT_TEST_PG_URL,
# PGFANOUT_TEST_MONGODB_URL, ...) when set, else starts a throwaway one. `numeric` is
# written as text: nx-27017 cannot store Decimal128. Prints:
#   pgfanout: changes=N seconds=S changes_per_second=R peak_rss_kb=K round_trips_per_1000=T commands_per_1000=C
#   ceiling:  documents=N seconds=S documents_per_second=R      (insert_many)
#   guarded:  documents=N seconds=S documents_per_second=R      (the sink's guarded upserts, bare)
#   ratio=pgfanout/ceiling
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
N=${N:-200000}
LANES=${LANES:-4}
STACK_DIR=""
cleanup() {
    [[ -n ${PGFANOUT_PID:-} ]] && kill -TERM "$PGFANOUT_PID" 2>/dev/null && wait "$PGFANOUT_PID" 2>/dev/null || true
    if [[ -n $STACK_DIR ]]; then
        "$REPO_ROOT/deploy/local/stack.sh" stop "$STACK_DIR" >/dev/null 2>&1 || true
        rm -rf "$STACK_DIR"
    fi
}
trap cleanup EXIT

if [[ -z ${PGFANOUT_TEST_PG_URL:-} ]]; then
    STACK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/pgfanout-bench.XXXXXX")
    "$REPO_ROOT/deploy/local/stack.sh" start "$STACK_DIR" >&2
    # shellcheck source=/dev/null
    source "$STACK_DIR/env"
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
(cd "$REPO_ROOT" && cargo build --release --quiet && cargo build --release --quiet -p pgfanout-sink-mongodb --example bulk_ceiling)
BIN="$TARGET_DIR/release/pgfanout"
CEILING="$TARGET_DIR/release/examples/bulk_ceiling"
PSQL=("$PGFANOUT_TEST_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PGFANOUT_TEST_PG_SOCKET_DIR" -p "$PGFANOUT_TEST_PG_PORT" -U postgres)

"${PSQL[@]}" -d postgres -c "SELECT pg_drop_replication_slot('bench_mongodb') FROM pg_replication_slots WHERE slot_name = 'bench_mongodb'" >/dev/null
"${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS bench_mongodb WITH (FORCE)" -c "CREATE DATABASE bench_mongodb" >/dev/null
"${PSQL[@]}" -d bench_mongodb >/dev/null <<'SQL'
CREATE TABLE orders (
    id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(12,2) NOT NULL, quantity int NOT NULL,
    paid boolean NOT NULL, placed_at timestamptz NOT NULL, reference uuid NOT NULL, attributes jsonb
);
CREATE PUBLICATION bench_mongodb FOR TABLE orders;
SELECT pg_create_logical_replication_slot('bench_mongodb', 'pgoutput');
SQL

# The backlog: N inserts in transactions of 1,000 rows.
"${PSQL[@]}" -d bench_mongodb >/dev/null <<SQL
DO \$\$
BEGIN
  FOR chunk IN 0 .. ($N - 1) / 1000 LOOP
    INSERT INTO orders
    SELECT g, 'customer ' || g, g % 1000 + 0.99, g % 7, g % 2 = 0, now(), md5(g::text)::uuid,
           jsonb_build_object('channel', 'web', 'n', g)
    FROM generate_series(chunk * 1000 + 1, least((chunk + 1) * 1000, $N)) g;
    COMMIT;
  END LOOP;
END
\$\$;
SQL

WORK=$(mktemp -d)
HTTP_PORT=$((20000 + RANDOM % 10000))
cat >"$WORK/pgfanout.toml" <<TOML
[source]
url = "host=$PGFANOUT_TEST_PG_SOCKET_DIR port=$PGFANOUT_TEST_PG_PORT user=postgres dbname=bench_mongodb"
slot = "bench_mongodb"
publication = "bench_mongodb"
heartbeat_interval_secs = 0

[http]
listen = "127.0.0.1:$HTTP_PORT"

[[sink]]
name = "docs"
kind = "mongodb"
url = "$PGFANOUT_TEST_MONGODB_URL"
database = "bench_mongodb"
[sink.types]
numeric = "string"
[[sink.table]]
source = "public.orders"
[sink.delivery]
lanes = $LANES
TOML
"$CEILING" "$PGFANOUT_TEST_MONGODB_URL" 1 1 >/dev/null # warm the server up
# A previous run's documents and checkpoint would make every write a stale no-op.
"$REPO_ROOT/.venv/bin/python" -c "import pymongo, sys; pymongo.MongoClient(sys.argv[1]).drop_database('bench_mongodb')" "$PGFANOUT_TEST_MONGODB_URL"

START=$(date +%s.%N)
PGFANOUT_LOG="info,pgfanout_sink_mongodb=debug" "$BIN" --log-format json run --config "$WORK/pgfanout.toml" 2>"$WORK/pgfanout.log" &
PGFANOUT_PID=$!
PEAK=0
# Done when the sink has acknowledged every change (its checkpoint covers them).
while :; do
    APPLIED=$(curl -s "http://127.0.0.1:$HTTP_PORT/metrics" |
        awk '/^pgfanout_sink_applied_total/ { sum += $2 } END { printf "%d", sum }')
    RSS=$(awk '/VmHWM/ {print $2}' "/proc/$PGFANOUT_PID/status" 2>/dev/null || echo 0)
    ((RSS > PEAK)) && PEAK=$RSS
    ((APPLIED >= N)) && break
    kill -0 "$PGFANOUT_PID" 2>/dev/null || { tail -20 "$WORK/pgfanout.log" >&2; exit 1; }
    sleep 0.02
done
END=$(date +%s.%N)
# Round trips: per batch, its rounds (sequential), one more for the checkpoint; commands
# count every command sent (a round sends one per collection and kind, concurrently).
TRIPS=$(grep '"batch written"' "$WORK/pgfanout.log" | python3 -c '
import json, sys
trips = commands = 0
for line in sys.stdin:
    e = json.loads(line)
    f = e.get("fields", e)
    cp = 1 if str(f.get("checkpoint")) in ("true", "True") else 0
    trips += int(f.get("rounds", 0)) + cp
    commands += int(f.get("row_commands", 0)) + int(f.get("aggregate_commands", 0)) + cp
print(trips, commands)')
read -r ROUND_TRIPS COMMANDS <<<"$TRIPS"
RATE=$(awk -v n="$N" -v start="$START" -v end="$END" 'BEGIN { printf "%.0f", n / (end - start) }')
awk -v n="$N" -v start="$START" -v end="$END" -v peak="$PEAK" -v trips="$ROUND_TRIPS" -v commands="$COMMANDS" \
    'BEGIN { s = end - start; printf "pgfanout: changes=%d seconds=%.2f changes_per_second=%.0f peak_rss_kb=%d round_trips_per_1000=%.1f commands_per_1000=%.1f\n", n, s, n / s, peak, trips * 1000 / n, commands * 1000 / n }'
kill -TERM "$PGFANOUT_PID" && wait "$PGFANOUT_PID" 2>/dev/null || true
PGFANOUT_PID=""
CEILING_LINE=$("$CEILING" "$PGFANOUT_TEST_MONGODB_URL" "$N" 1000)
echo "ceiling:  $CEILING_LINE"
echo "guarded:  $("$CEILING" "$PGFANOUT_TEST_MONGODB_URL" "$N" 1000 guarded)"
CEILING_RATE=$(sed -n 's/.*documents_per_second=\([0-9]*\).*/\1/p' <<<"$CEILING_LINE")
awk -v a="$RATE" -v b="$CEILING_RATE" 'BEGIN { printf "ratio=%.2f\n", a / b }'
rm -rf "$WORK"
