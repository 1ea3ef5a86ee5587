#!/usr/bin/env bash
# End-to-end throughput into MongoDB: N rows inserted in PostgreSQL (transactions of
# 1,000), then pgfanout (release build) drains them into the MongoDB-wire server; next to
# it, the store's own ceiling measured in the same run: bulk inserts of equivalent
# documents with the `mongodb` crate (crates/sink-mongodb/examples/bulk_ceiling.rs).
#
#   N=20000 benches/e2e/mongodb_sink.sh         # (default N = 200,000 rows)
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
# shellcheck source=benches/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${N:-200000}
LANES=${LANES:-4}
(cd "$REPO_ROOT" && cargo build --release --quiet && cargo build --release --quiet -p pgfanout-sink-mongodb --example bulk_ceiling)
CEILING="$TARGET/release/examples/bulk_ceiling"

bench_database bench_mongodb <<SQL
$ORDERS_TABLE
CREATE PUBLICATION bench_mongodb FOR TABLE orders;
SQL
bench_backlog bench_mongodb "$N" "$ORDERS_INSERT"

{
    bench_source bench_mongodb
    bench_stream_only
    cat <<TOML
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
} >"$WORK/pgfanout.toml"
"$CEILING" "$PGFANOUT_TEST_MONGODB_URL" 1 1 >/dev/null # warm the server up
# A previous run's documents and checkpoint would make every write a stale no-op.
"$REPO_ROOT/.venv/bin/python" -c "import pymongo, sys; pymongo.MongoClient(sys.argv[1]).drop_database('bench_mongodb')" "$PGFANOUT_TEST_MONGODB_URL"

BENCH_ENV="PGFANOUT_LOG=info,pgfanout_sink_mongodb=debug" bench_run "$WORK/pgfanout.toml" "$N"
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
awk -v n="$N" -v start="$START" -v end="$END" -v peak="$PEAK" -v trips="$ROUND_TRIPS" -v commands="$COMMANDS" \
    'BEGIN { s = end - start; printf "pgfanout: changes=%d seconds=%.2f changes_per_second=%.0f peak_rss_kb=%d round_trips_per_1000=%.1f commands_per_1000=%.1f\n", n, s, n / s, peak, trips * 1000 / n, commands * 1000 / n }'
bench_stop
CEILING_LINE=$("$CEILING" "$PGFANOUT_TEST_MONGODB_URL" "$N" 1000)
echo "ceiling:  $CEILING_LINE"
echo "guarded:  $("$CEILING" "$PGFANOUT_TEST_MONGODB_URL" "$N" 1000 guarded)"
CEILING_RATE=$(sed -n 's/.*documents_per_second=\([0-9]*\).*/\1/p' <<<"$CEILING_LINE")
awk -v a="$RATE" -v b="$CEILING_RATE" 'BEGIN { printf "ratio=%.2f\n", a / b }'
