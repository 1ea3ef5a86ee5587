#!/usr/bin/env bash
# End-to-end decode throughput: `pgfanout inspect` against `pg_recvlogical`, draining
# copies of one logical slot (same WAL, same changes) side by side.
#
#   benches/e2e/decode_vs_recvlogical.sh          (or: make bench)
#
# What it does:
#   1. uses the stack named by the PGFANOUT_TEST_PG_* variables, or starts a throwaway one
#      with deploy/local/stack.sh (stopped again on exit);
#   2. creates database pgfanout_bench with an `orders` table (8 columns of mixed types)
#      and publication `bench`, then a pgoutput slot `bench_origin`;
#   3. runs N row changes (70 % inserts, 30 % updates) in transactions of 100 to 1000 rows,
#      and notes the WAL insert position after them as the end LSN;
#   4. for every run copies `bench_origin` (pg_copy_logical_replication_slot: the copy
#      starts at the same point) and drains the copy up to the end LSN with
#        pg_recvlogical --start -o proto_version=1 -o publication_names=bench -E END -f /dev/null
#        pgfanout inspect --slot COPY --until-lsn END --format json|raw|none > /dev/null
#      timed with /usr/bin/time (wall seconds, the client's CPU seconds user+system, max
#      RSS), REPEAT times per variant and transport, in turns so that drift hits every
#      variant alike;
#   5. prints every run and, per variant, the median wall time and its ratio to
#      pg_recvlogical's median on the same transport, and the median client CPU time.
#
# The walsender (server side) is usually the bottleneck, so wall times of all variants are
# close and move together with the machine's load; the client CPU column shows what each
# client itself costs. On a shared machine, compare ratios from one run, never absolute times.
#
# pg_recvlogical writes raw bytes; `--format raw` does the same (plus decoding), `none`
# decodes and prints nothing, `json` renders every message. Both tools get the same
# walsender settings (PGOPTIONS), so the server does the same work for each.
#
# Environment (defaults in brackets):
#   N [1000000]            row changes in the workload
#   REPEAT [3]             runs per variant and transport
#   TRANSPORTS ["unix tcp"] unix-domain socket and/or loopback TCP
#   FORMATS ["raw none json"] pgfanout inspect output formats to time
#   PGFANOUT_BIN           pgfanout binary [release build of this checkout, built if needed]
#   KEEP_DB=1              keep the bench database and its slot afterwards
#   REUSE=1                reuse the database a KEEP_DB=1 run left (same N), skipping the workload
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
N=${N:-1000000}
REPEAT=${REPEAT:-3}
TRANSPORTS=${TRANSPORTS:-unix tcp}
FORMATS=${FORMATS:-raw none json}
DB=pgfanout_bench
ORIGIN_SLOT=bench_origin
# Output settings pgfanout pins on its replication connections (crates/pg-replication).
PINNED_OPTIONS="-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3 -c timezone=UTC -c bytea_output=hex"

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

STACK_DIR=""
cleanup() {
    local status=$?
    if [[ -n ${PGFANOUT_TEST_PG_BIN:-} && ${KEEP_DB:-0} != 1 && ${REUSE:-0} != 1 ]]; then
        sql postgres "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'bench\_%'" \
            >/dev/null 2>&1 || true
        sql postgres "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    fi
    if [[ -n $STACK_DIR ]]; then
        "$REPO_ROOT/deploy/local/stack.sh" stop "$STACK_DIR" || true
        rm -rf "$STACK_DIR"
    fi
    exit "$status"
}
trap cleanup EXIT

if [[ -z ${PGFANOUT_TEST_PG_BIN:-} ]]; then
    STACK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/pgfanout-bench.XXXXXX")
    log "no stack in the environment: starting one in $STACK_DIR"
    "$REPO_ROOT/deploy/local/stack.sh" install
    "$REPO_ROOT/deploy/local/stack.sh" start "$STACK_DIR"
    # shellcheck source=/dev/null
    source "$STACK_DIR/env"
fi
PG_BIN=$PGFANOUT_TEST_PG_BIN
SOCKET_DIR=$PGFANOUT_TEST_PG_SOCKET_DIR
PORT=$PGFANOUT_TEST_PG_PORT

# shellcheck source=benches/e2e/pg.sh
source "$REPO_ROOT/benches/e2e/pg.sh"

prepare() {
    log "database $DB: orders table, publication, slot"
    sql postgres "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'bench\_%'" \
        >/dev/null
    sql postgres "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
    sql postgres "CREATE DATABASE $DB"
    sql "$DB" "
        CREATE TABLE orders (
            id bigint PRIMARY KEY,
            customer_id integer NOT NULL,
            status text NOT NULL,
            amount numeric(12, 2) NOT NULL,
            currency char(3) NOT NULL,
            created_at timestamptz NOT NULL,
            shipped boolean NOT NULL,
            note text
        );
        CREATE PUBLICATION bench FOR TABLE orders;
        -- 70 % inserts, 30 % updates of recent rows, committed every 100-1000 changes.
        CREATE PROCEDURE bench_workload(total bigint) LANGUAGE plpgsql AS \$\$
        DECLARE
            done bigint := 0;
            next_id bigint := 1;
            size integer;
            inserts integer;
            updates integer;
        BEGIN
            WHILE done < total LOOP
                size := least(100 + (done * 7919) % 901, total - done);
                updates := least(size * 3 / 10, next_id - 1);
                inserts := size - updates;
                INSERT INTO orders
                SELECT g, (g * 31) % 10000, 'new', (g % 100000) / 100.0, 'EUR',
                       '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 second', false,
                       CASE WHEN g % 5 = 0 THEN NULL ELSE 'order note ' || g END
                FROM generate_series(next_id, next_id + inserts - 1) g;
                next_id := next_id + inserts;
                UPDATE orders SET status = 'shipped', shipped = true, amount = amount + 1
                WHERE id >= next_id - updates;
                done := done + size;
                COMMIT;
            END LOOP;
        END \$\$;"
    sql "$DB" "SELECT pg_create_logical_replication_slot('$ORIGIN_SLOT', 'pgoutput')" >/dev/null
}

run_workload() {
    log "workload: $N row changes"
    local started=$SECONDS
    sql "$DB" "CALL bench_workload($N)"
    END_LSN=$(sql "$DB" "SELECT pg_current_wal_insert_lsn()")
    sql "$DB" "CREATE TABLE bench_run AS SELECT $N AS changes, '$END_LSN'::pg_lsn AS end_lsn"
    log "workload done in $((SECONDS - started)) s; end LSN $END_LSN; $(wal_to_decode) of WAL to decode"
}

wal_to_decode() {
    sql "$DB" "SELECT pg_size_pretty('$END_LSN'::pg_lsn - restart_lsn) FROM pg_replication_slots WHERE slot_name = '$ORIGIN_SLOT'"
}

# Reuses a database left by KEEP_DB=1 when REUSE=1 and it was made for the same N.
reuse_workload() {
    [[ ${REUSE:-0} == 1 ]] || return 1
    local row
    row=$(sql "$DB" "SELECT changes || ' ' || end_lsn FROM bench_run" 2>/dev/null) || return 1
    [[ ${row%% *} == "$N" ]] || return 1
    END_LSN=${row#* }
    log "reusing $DB: $N row changes up to $END_LSN, $(wal_to_decode) of WAL to decode"
}

# timed VARIANT TRANSPORT RUN: drains a fresh copy of the slot; prints
# "wall_seconds user_seconds system_seconds max_rss_kb".
timed() {
    local variant=$1 transport=$2 run=$3 slot="bench_${1}_${2}_$3" info timing
    sql "$DB" "SELECT pg_copy_logical_replication_slot('$ORIGIN_SLOT', '$slot')" >/dev/null
    info=$(conninfo "$transport")
    timing=$(mktemp)
    case $variant in
    pg_recvlogical)
        PGOPTIONS=$PINNED_OPTIONS /usr/bin/time -o "$timing" -f '%e %U %S %M' \
            "$PG_BIN/pg_recvlogical" -d "$info" --slot "$slot" --start -o proto_version=1 \
            -o publication_names=bench -E "$END_LSN" -f /dev/null --no-loop
        ;;
    *)
        PGFANOUT_LOG=warn /usr/bin/time -o "$timing" -f '%e %U %S %M' \
            "$PGFANOUT_BIN" --log-format text inspect --url "$info" --slot "$slot" --publication bench \
            --until-lsn "$END_LSN" --format "${variant#pgfanout_}" >"$RESULTS/$slot.out"
        ;;
    esac
    cat "$timing"
    rm -f "$timing"
    sql "$DB" "SELECT pg_drop_replication_slot('$slot')" >/dev/null
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

main() {
    command -v /usr/bin/time >/dev/null || die "/usr/bin/time is missing (apt-get install time)"
    RESULTS=$(mktemp -d)
    if ! reuse_workload; then
        prepare
        run_workload
    fi
    local variants=(pg_recvlogical) format transport run variant
    for format in $FORMATS; do variants+=("pgfanout_$format"); done
    printf '%-16s %-5s %4s %9s %9s %10s\n' variant via run wall_s cpu_s max_rss_kb
    for transport in $TRANSPORTS; do
        for ((run = 1; run <= REPEAT; run++)); do
            for variant in "${variants[@]}"; do
                read -r seconds user system rss < <(timed "$variant" "$transport" "$run")
                local cpu
                cpu=$(awk -v u="$user" -v s="$system" 'BEGIN { print u + s }')
                printf '%-16s %-5s %4d %9.2f %9.2f %10d\n' "$variant" "$transport" "$run" "$seconds" "$cpu" "$rss"
                echo "$seconds" >>"$RESULTS/$variant.$transport"
                echo "$cpu" >>"$RESULTS/$variant.$transport.cpu"
            done
        done
    done
    # The none format's summary says how many messages were decoded.
    local summary
    summary=$(cat "$RESULTS"/bench_pgfanout_none_*_1.out 2>/dev/null | head -n1 || true)
    [[ -n $summary ]] && log "decoded per run: $summary"
    echo
    printf 'N=%s row changes, %s runs each; medians; ratio = wall time / pg_recvlogical wall time (same transport)\n' \
        "$N" "$REPEAT"
    printf '%-16s %-5s %9s %7s %9s\n' variant via wall_s ratio cpu_s
    for transport in $TRANSPORTS; do
        local base
        base=$(median <"$RESULTS/pg_recvlogical.$transport")
        for variant in "${variants[@]}"; do
            local m cpu
            m=$(median <"$RESULTS/$variant.$transport")
            cpu=$(median <"$RESULTS/$variant.$transport.cpu")
            printf '%-16s %-5s %9.2f %7.2f %9.2f\n' "$variant" "$transport" "$m" \
                "$(awk -v a="$m" -v b="$base" 'BEGIN { print a / b }')" "$cpu"
        done
    done
    rm -rf "$RESULTS"
}

main
