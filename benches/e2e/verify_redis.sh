#!/usr/bin/env bash
# `pgfanout verify` of N rows in Redis (the 8-column `orders` table): the
# rows are streamed in first, then verify compares every row while pgfanout
# keeps running; the yardstick, in the same run, is reading the same table
# with `COPY (SELECT …) TO STDOUT` into /dev/null.
#
#   benches/e2e/verify_redis.sh                 # N=1000000, release build
#   N=200000 benches/e2e/verify_redis.sh
#   PROFILE=debug N=200000 benches/e2e/verify_redis.sh   # try it out without a release build
#   BASELINE_BIN=/tmp/pgfanout-old benches/e2e/verify_redis.sh  # also time another build, same data
#   PGFANOUT_BIN=/tmp/pgfanout-new benches/e2e/verify_redis.sh  # that binary throughout, no build
#
# Prints:
#   verify rows=N seconds=T rows_per_second=R exit=0 user_s=U sys_s=S peak_rss_kb=K   (verify's own CPU and memory)
#   baseline rows=N seconds=T rows_per_second=R exit=0   (with BASELINE_BIN)
#   copy rows=N seconds=T verify_ratio=…  (verify time / COPY time)
set -euo pipefail
# shellcheck source=benches/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${N:-1000000}
if [[ -z ${PGFANOUT_BIN:-} && ${PROFILE:-release} == release ]]; then
    (cd "$REPO_ROOT" && cargo build --release --quiet)
fi

bench_database bench_verify <<SQL
$ORDERS_TABLE
CREATE PUBLICATION bench_verify FOR TABLE orders;
SQL
bench_backlog bench_verify "$N" "$ORDERS_INSERT"

REDIS_BENCH_URL="${PGFANOUT_TEST_REDIS_URL%/}/8"
redis-cli -u "$REDIS_BENCH_URL" FLUSHDB >/dev/null
bench_source bench_verify >"$WORK/pgfanout.toml"
printf '[[sink]]\nname = "bench"\nkind = "redis"\nurl = "%s"\n[[sink.table]]\nsource = "public.orders"\n' \
    "$REDIS_BENCH_URL" >>"$WORK/pgfanout.toml"
bench_run "$WORK/pgfanout.toml" "$N"

start=$(date +%s.%N)
code=0
/usr/bin/time -o "$WORK/verify.time" -f '%U %S %M' \
    "${PGFANOUT_BIN:-$TARGET/${PROFILE:-release}/pgfanout}" --log-format json verify --config "$WORK/pgfanout.toml" \
    >"$WORK/verify.out" 2>"$WORK/verify.log" || code=$?
end=$(date +%s.%N)
tail -2 "$WORK/verify.out" >&2
read -r user_s sys_s rss_kb < <(tail -1 "$WORK/verify.time")
awk -v n="$N" -v start="$start" -v end="$end" -v code="$code" -v user="$user_s" -v sys="$sys_s" -v rss="$rss_kb" \
    'BEGIN { printf "verify rows=%d seconds=%.2f rows_per_second=%d exit=%d user_s=%.2f sys_s=%.2f peak_rss_kb=%d\n", n, end - start, n / (end - start), code, user, sys, rss }'
verify_seconds=$(awk -v start="$start" -v end="$end" 'BEGIN { printf "%.3f", end - start }')
if [[ -n ${BASELINE_BIN:-} ]]; then
    start=$(date +%s.%N)
    code=0
    "$BASELINE_BIN" --log-format json verify --config "$WORK/pgfanout.toml" >"$WORK/baseline.out" 2>&1 || code=$?
    end=$(date +%s.%N)
    awk -v n="$N" -v start="$start" -v end="$end" -v code="$code" \
        'BEGIN { printf "baseline rows=%d seconds=%.2f rows_per_second=%d exit=%d\n", n, end - start, n / (end - start), code }'
fi
bench_stop

start=$(date +%s.%N)
"${PSQL[@]}" -d bench_verify -c "COPY (SELECT * FROM orders) TO STDOUT" >/dev/null
end=$(date +%s.%N)
awk -v n="$N" -v start="$start" -v end="$end" -v verify="$verify_seconds" \
    'BEGIN { printf "copy rows=%d seconds=%.2f verify_ratio=%.1f\n", n, end - start, verify / (end - start) }'
redis-cli -u "$REDIS_BENCH_URL" FLUSHDB >/dev/null
