#!/usr/bin/env bash
# End-to-end throughput from PostgreSQL into one sink: how fast pgfanout
# (release build) decodes, assembles, routes, batches and applies a backlog
# of N row inserts (an 8-column `orders` table), and its peak memory; then
# the store's own ceiling, measured in the same run with the store's own
# tool, for the ratio.
#
#   benches/e2e/sink_throughput.sh discard      # no store: the pipeline alone
#   benches/e2e/sink_throughput.sh redis        # + redis-benchmark yardstick
#   N=200000 LANES=1 benches/e2e/sink_throughput.sh redis
#   SINK_OPTIONS='version_guard = false' TABLE_OPTIONS='truncate = "scan"' \
#       benches/e2e/sink_throughput.sh redis
#
# Uses the local stack from the environment (PGFANOUT_TEST_PG_URL, ...) when
# set, else starts a throwaway one. Prints:
#   sink=S changes=N seconds=T changes_per_second=R peak_rss_kb=K
#   (redis) yardstick=... requests_per_second=R ratio=...
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SINK=${1:-discard}
N=${N:-1000000}
LANES=${LANES:-4}
case $SINK in
discard | redis) ;;
*)
    echo "usage: $0 discard|redis" >&2
    exit 2
    ;;
esac
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

"${PSQL[@]}" -d postgres -c "SELECT pg_drop_replication_slot('bench_sink') FROM pg_replication_slots WHERE slot_name = 'bench_sink'" >/dev/null
"${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS bench_sink WITH (FORCE)" -c "CREATE DATABASE bench_sink" >/dev/null
"${PSQL[@]}" -d bench_sink >/dev/null <<'SQL'
CREATE TABLE orders (
    id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(12,2) NOT NULL, quantity int NOT NULL,
    paid boolean NOT NULL, placed_at timestamptz NOT NULL, reference uuid NOT NULL, attributes jsonb
);
CREATE PUBLICATION bench_sink FOR TABLE orders;
SELECT pg_create_logical_replication_slot('bench_sink', 'pgoutput');
SQL

# The backlog: N inserts in transactions of 1,000 rows.
"${PSQL[@]}" -d bench_sink >/dev/null <<SQL
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
url = "host=$PGFANOUT_TEST_PG_SOCKET_DIR port=$PGFANOUT_TEST_PG_PORT user=postgres dbname=bench_sink"
slot = "bench_sink"
publication = "bench_sink"
heartbeat_interval_secs = 0

[http]
listen = "127.0.0.1:$HTTP_PORT"

TOML
case $SINK in
discard)
    printf '[[sink]]\nname = "null"\nkind = "discard"\n' >>"$WORK/pgfanout.toml"
    ;;
redis)
    REDIS_BENCH_URL="${PGFANOUT_TEST_REDIS_URL%/}/9"
    redis-cli -u "$REDIS_BENCH_URL" FLUSHDB >/dev/null
    printf '[[sink]]\nname = "bench"\nkind = "redis"\nurl = "%s"\n' "$REDIS_BENCH_URL" >>"$WORK/pgfanout.toml"
    ;;
esac
# SINK_OPTIONS / TABLE_OPTIONS: extra TOML lines for the [[sink]] and its
# table, e.g. SINK_OPTIONS='version_guard = false' TABLE_OPTIONS='truncate = "scan"'.
printf '%b\n[[sink.table]]\nsource = "public.orders"\n%b\n[sink.delivery]\nlanes = %s\n' \
    "${SINK_OPTIONS:-}" "${TABLE_OPTIONS:-}" "$LANES" >>"$WORK/pgfanout.toml"

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
RATE=$(awk -v n="$N" -v start="$START" -v end="$END" 'BEGIN { printf "%.0f", n / (end - start) }')
awk -v sink="$SINK" -v n="$N" -v start="$START" -v end="$END" -v rate="$RATE" -v peak="$PEAK" \
    'BEGIN { printf "sink=%s changes=%d seconds=%.2f changes_per_second=%d peak_rss_kb=%d\n", sink, n, end - start, rate, peak }'
kill -TERM "$PGFANOUT_PID" && wait "$PGFANOUT_PID" || true
PGFANOUT_PID=""

if [[ $SINK == redis ]]; then
    # The store's own pipelined ceiling, 64 commands in flight: the stock
    # one-field HSET test, and an HSET of a whole row shaped like the orders
    # rows pgfanout wrote (8 fields, similar sizes).
    redis-cli -u "$REDIS_BENCH_URL" FLUSHDB >/dev/null
    HOST_PORT=${PGFANOUT_TEST_REDIS_URL#redis://}
    BENCH=(redis-benchmark -h "${HOST_PORT%:*}" -p "${HOST_PORT##*:}" --dbnum 9 -P 64 -n "$N" -r "$N" -q)
    yardstick() {
        local name=$1 rps
        shift
        rps=$("${BENCH[@]}" "$@" | tr '\r' '\n' | awk '/requests per second/ { for (i = 1; i <= NF; i++) if ($i == "requests") v = $(i - 1) } END { printf "%.0f", v }')
        awk -v name="$name" -v rps="$rps" -v rate="$RATE" \
            'BEGIN { printf "yardstick=%s requests_per_second=%d pgfanout_ratio=%.2f\n", name, rps, rate / rps }'
    }
    yardstick redis-benchmark-hset -t hset
    yardstick hset-8-fields HSET order:__rand_int__ id __rand_int__ customer "customer __rand_int__" \
        amount 123.99 quantity 3 paid t placed_at "2026-11-23 10:00:00.123456+00" \
        reference 6512bd43-d9ca-a6e0-2c99-0b0a82652dca attributes '{"n": 12345, "channel": "web"}'
    redis-cli -u "$REDIS_BENCH_URL" FLUSHDB >/dev/null
fi
rm -rf "$WORK"
