#!/usr/bin/env bash
# Commit-to-applied latency into Redis under a steady stream: pgbench commits
# RATE transactions per second of 1-10 inserted rows each (synchronous_commit
# = on in its sessions) for DURATION seconds while `pgfanout run` replicates
# them into Redis; then the p50/p90/p99 of pgfanout_source_lag_seconds (commit
# time on the source to the moment the sink acknowledged the batch holding the
# transaction durably applied), interpolated within its buckets.
#
#   benches/e2e/latency.sh                          (or: make bench-latency)
#   RATE=1000 DURATION=20 benches/e2e/latency.sh
#
# Environment (defaults in brackets): RATE [5000] transactions/s, DURATION [60] s,
# CLIENTS [4] pgbench connections (they reach 5,000 tx/s on a quiet 2-core machine;
# on a loaded one each waits for its own commit's flush and the rate falls short:
# check the tps printed, and raise CLIENTS; 16 busy backends on two cores also
# delay everything else, see benches/README.md), LANES [4] delivery.lanes of the Redis sink,
# PIPELINE_OPTIONS (extra [pipeline] lines, e.g. 'max_batch_delay_ms = 20'),
# PGFANOUT_BIN [release build of this checkout].
#
# Prints what pgbench achieved (transactions, rate, its own commit latency),
# the CPU seconds of redis-server and pgfanout, how batches formed (batches,
# changes per batch, the worker's apply time per batch, script calls and the
# server's wall time per call: script_busy near 1 means redis-server spent the
# whole run inside the script, the bound) and
#   sink=redis transactions=T rows=R lag_p50_ms=… lag_p90_ms=… lag_p99_ms=… peak_rss_kb=…
set -euo pipefail
# shellcheck source=benches/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RATE=${RATE:-5000}
DURATION=${DURATION:-60}
CLIENTS=${CLIENTS:-4}
LANES=${LANES:-4}
if [[ -z ${PGFANOUT_BIN:-} ]]; then
    (cd "$REPO_ROOT" && cargo build --release --quiet --bin pgfanout)
    PGFANOUT_BIN=$TARGET/release/pgfanout
fi

bench_database bench_latency <<SQL
$EVENTS_TABLE
CREATE PUBLICATION bench_latency FOR TABLE events;
SQL

REDIS_URL="${PGFANOUT_TEST_REDIS_URL%/}/10"
redis-cli -u "$REDIS_URL" FLUSHDB >/dev/null
{
    bench_source bench_latency
    printf '[pipeline]\n%b\n\n' "${PIPELINE_OPTIONS:-}"
    printf '[[sink]]\nname = "cache"\nkind = "redis"\nurl = "%s"\n\n' "$REDIS_URL"
    printf '[[sink.table]]\nsource = "public.events"\n\n[sink.delivery]\nlanes = %s\n' "$LANES"
} >"$WORK/pgfanout.toml"

"$PGFANOUT_BIN" --log-format json run --config "$WORK/pgfanout.toml" 2>"$WORK/pgfanout.log" &
PGFANOUT_PID=$!
metrics() { curl -s "http://127.0.0.1:$HTTP_PORT/metrics" || true; }
deadline=$((SECONDS + 60))
until metrics | grep -q '^pgfanout_sink_up{sink="cache"} 1'; do
    ((SECONDS < deadline)) || {
        tail -20 "$WORK/pgfanout.log" >&2
        exit 1
    }
    kill -0 "$PGFANOUT_PID" || exit 1
    sleep 0.2
done
# Streaming once the slot is held by pgfanout's walsender.
until [[ $("${PSQL[@]}" -At -d postgres -c "SELECT active FROM pg_replication_slots WHERE slot_name = 'bench_latency'") == t ]]; do
    ((SECONDS < deadline)) || exit 1
    sleep 0.2
done

cat >"$WORK/insert.sql" <<'SQL'
\set rows random(1, 10)
INSERT INTO events (kind, amount) SELECT 'click', g * 1.5 FROM generate_series(1, :rows) g;
SQL
# CPU seconds of the Redis server (INFO cpu) and of pgfanout (/proc) so far.
store_cpu() { redis-cli -u "$REDIS_URL" INFO cpu | tr -d '\r' | awk -F: '/^used_cpu_(user|sys):/ { s += $2 } END { printf "%.2f", s }'; }
own_cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$PGFANOUT_PID/stat"; }
# Script calls (EVALSHA) and the server time they took so far: calls per
# second and the server's cost per call show how batches formed.
script_stats() { redis-cli -u "$REDIS_URL" INFO commandstats | tr -d '\r' | awk -F'[=,:]' '/^cmdstat_evalsha:/ { printf "%d %d", $3, $5 }'; }
# Sum and count of a sink histogram (pgfanout_sink_batch_size, pgfanout_sink_apply_seconds).
histogram_totals() { metrics | awk -v name="$1" '$1 ~ "^" name "_(sum|count)" { printf "%s ", $2 }'; }
STORE_CPU_BEFORE=$(store_cpu)
OWN_CPU_BEFORE=$(own_cpu)
read -r CALLS_BEFORE CALL_USEC_BEFORE <<<"$(script_stats)"
PGOPTIONS="-c synchronous_commit=on" "$PGFANOUT_TEST_PG_BIN/pgbench" -n -h "$PGFANOUT_TEST_PG_SOCKET_DIR" \
    -p "$PGFANOUT_TEST_PG_PORT" -U postgres -c "$CLIENTS" -j "$CLIENTS" -R "$RATE" -T "$DURATION" \
    -f "$WORK/insert.sql" bench_latency >"$WORK/pgbench.out" 2>&1
grep -E '^(number of transactions actually processed|latency average|tps)' "$WORK/pgbench.out" |
    sed 's/^/pgbench: /'

rows=$("${PSQL[@]}" -At -d bench_latency -c "SELECT count(*) FROM events")
deadline=$((SECONDS + 120))
until (($(metrics | awk '/^pgfanout_sink_applied_total/ { s += $2 } END { printf "%d", s }') >= rows)); do
    ((SECONDS < deadline)) || {
        echo "pgfanout did not apply the $rows rows within 120 s" >&2
        exit 1
    }
    sleep 0.2
done
peak=$(awk '/VmHWM/ { print $2 }' "/proc/$PGFANOUT_PID/status")
awk -v store="$(store_cpu)" -v store0="$STORE_CPU_BEFORE" -v own="$(own_cpu)" -v own0="$OWN_CPU_BEFORE" \
    'BEGIN { printf "redis_server_cpu_seconds=%.2f pgfanout_cpu_seconds=%.2f\n", store - store0, own - own0 }'
read -r CALLS CALL_USEC <<<"$(script_stats)"
read -r BATCH_CHANGES BATCHES <<<"$(histogram_totals pgfanout_sink_batch_size)"
read -r APPLY_SECONDS _ <<<"$(histogram_totals pgfanout_sink_apply_seconds)"
awk -v calls=$((CALLS - CALLS_BEFORE)) -v usec=$((CALL_USEC - CALL_USEC_BEFORE)) -v batches="$BATCHES" \
    -v changes="$BATCH_CHANGES" -v apply="$APPLY_SECONDS" -v duration="$DURATION" 'BEGIN {
    printf "batches=%d changes_per_batch=%.1f apply_ms_per_batch=%.2f script_calls=%d server_us_per_call=%.0f script_busy=%.2f\n",
        batches, changes / batches, apply * 1000 / batches, calls, usec / calls, usec / 1e6 / duration
}'
metrics | awk -v rows="$rows" -v peak="$peak" '
    /^pgfanout_source_lag_seconds_bucket\{.*sink="cache"/ {
        match($0, /le="[^"]*"/)
        le = substr($0, RSTART + 4, RLENGTH - 5)
        n++; bound[n] = (le == "+Inf") ? 1e9 : le + 0; cum[n] = $2
    }
    /^pgfanout_source_lag_seconds_count\{sink="cache"\}/ { total = $2 }
    function quantile(q,    i, target, lo, below) {
        target = q * total; lo = 0; below = 0
        for (i = 1; i <= n; i++) {
            if (cum[i] >= target) {
                if (bound[i] == 1e9) return lo * 1000
                return (lo + (bound[i] - lo) * (target - below) / (cum[i] - below)) * 1000
            }
            lo = bound[i]; below = cum[i]
        }
    }
    END {
        printf "sink=redis transactions=%d rows=%d lag_p50_ms=%.1f lag_p90_ms=%.1f lag_p99_ms=%.1f peak_rss_kb=%d\n",
            total, rows, quantile(0.5), quantile(0.9), quantile(0.99), peak
        printf "lag buckets (le seconds: transactions):"
        for (i = 1; i <= n && bound[i] <= 1; i++) printf " %s:%d", bound[i], cum[i] - (i > 1 ? cum[i - 1] : 0)
        printf "\n"
    }'
bench_stop
redis-cli -u "$REDIS_URL" FLUSHDB >/dev/null
