#!/usr/bin/env bash
# End-to-end pipeline throughput with the `discard` sink: how fast pgfanout
# (release build) decodes, assembles, routes, batches and acknowledges a
# backlog of N row changes, with no store cost, and its peak memory.
#
#   benches/e2e/pipeline_discard.sh            # N = 1,000,000 changes
#   N=200000 LANES=4 benches/e2e/pipeline_discard.sh
#
# Uses the local stack from the environment (PGFANOUT_TEST_PG_URL, ...) when
# set, else starts a throwaway one. Prints one line:
#   changes=N seconds=S changes_per_second=R peak_rss_kb=K
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
N=${N:-1000000}
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
(cd "$REPO_ROOT" && cargo build --release --quiet)
BIN="$REPO_ROOT/target/release/pgfanout"
PSQL=("$PGFANOUT_TEST_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PGFANOUT_TEST_PG_SOCKET_DIR" -p "$PGFANOUT_TEST_PG_PORT" -U postgres)

"${PSQL[@]}" -d postgres -c "SELECT pg_drop_replication_slot('bench_pipeline') FROM pg_replication_slots WHERE slot_name = 'bench_pipeline'" >/dev/null
"${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS bench_pipeline WITH (FORCE)" -c "CREATE DATABASE bench_pipeline" >/dev/null
"${PSQL[@]}" -d bench_pipeline >/dev/null <<'SQL'
CREATE TABLE orders (
    id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(12,2) NOT NULL, quantity int NOT NULL,
    paid boolean NOT NULL, placed_at timestamptz NOT NULL, reference uuid NOT NULL, attributes jsonb
);
CREATE PUBLICATION bench_pipeline FOR TABLE orders;
SELECT pg_create_logical_replication_slot('bench_pipeline', 'pgoutput');
SQL

# The backlog: N inserts in transactions of 1,000 rows.
"${PSQL[@]}" -d bench_pipeline >/dev/null <<SQL
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
url = "host=$PGFANOUT_TEST_PG_SOCKET_DIR port=$PGFANOUT_TEST_PG_PORT user=postgres dbname=bench_pipeline"
slot = "bench_pipeline"
publication = "bench_pipeline"
heartbeat_interval_secs = 0

[http]
listen = "127.0.0.1:$HTTP_PORT"

[[sink]]
name = "null"
kind = "discard"
[[sink.table]]
source = "public.orders"
[sink.delivery]
lanes = $LANES
TOML

START=$(date +%s.%N)
"$BIN" --log-format json run --config "$WORK/pgfanout.toml" 2>"$WORK/pgfanout.log" &
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
awk -v n="$N" -v start="$START" -v end="$END" -v peak="$PEAK" \
    'BEGIN { s = end - start; printf "changes=%d seconds=%.2f changes_per_second=%.0f peak_rss_kb=%d\n", n, s, n / s, peak }'
rm -rf "$WORK"
