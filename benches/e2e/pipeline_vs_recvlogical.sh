#!/usr/bin/env bash
# The whole pipeline against `pg_recvlogical`: copies of one logical slot (same
# WAL, same changes) drained by pg_recvlogical and by `pgfanout run` with the
# discarding sink, over the unix socket and over TCP.
#
#   benches/e2e/pipeline_vs_recvlogical.sh          (or: make bench-pipeline)
#
# What it does:
#   1. uses the stack named by the PGFANOUT_TEST_PG_* variables, or starts a throwaway one;
#   2. creates database pgfanout_pipeline with an 8-column `orders` table, publication
#      `pipeline` and a pgoutput slot `pipe_origin`;
#   3. runs N row changes in transactions of 100: 60 inserts, 30 updates (of rows the
#      transaction inserted) and 10 deletes (of rows the one before inserted), and notes
#      the WAL insert position after them as the end LSN;
#   4. for every run copies `pipe_origin` (pg_copy_logical_replication_slot) and drains the
#      copy with
#        pg_recvlogical --start -o proto_version=1 -o publication_names=pipeline -E END -f /dev/null
#        pgfanout run   (one sink, kind = "discard", routing public.orders)
#      pg_recvlogical stops by itself at END, and so does pgfanout (`run --until-lsn END`: it
#      exits once its sink applied everything up to END and it confirmed END to the slot, which
#      the script checks). Both under /usr/bin/time: wall seconds, client CPU user and system
#      seconds, peak RSS. STOP=poll instead polls pgfanout_sink_applied_total over /metrics
#      every 10 ms and sends SIGTERM once all N changes are applied (for builds without
#      --until-lsn; the poller and the metrics it asks for cost CPU on the same two cores);
#      Meanwhile the walsender serving the slot copy is sampled from /proc every 20 ms: its
#      CPU seconds (user + system) until it exits are the server's cost of that client;
#   5. prints every run and, per variant and transport, the medians and the ratio of
#      pgfanout's wall time and CPU time to pg_recvlogical's.
#
# Environment (defaults in brackets):
#   N [1000000]              row changes (a multiple of 100)
#   REPEAT [3]               runs per variant and transport (taking turns)
#   TRANSPORTS ["unix tcp"]  unix-domain socket and/or loopback TCP (same sslmode for both tools)
#   SSLMODE [disable]        sslmode in both tools' connection strings (plain TCP by default,
#                            whether or not the stack's server has ssl on; require: TLS)
#   LANES [1]                delivery.lanes of the discarding sink
#   CALLGRIND=1              instead of timing: one run of pgfanout per transport under
#                            valgrind --tool=callgrind, printing instructions per change (stable
#                            on a loaded machine; use N=100000, it runs ~50x slower); the profiles
#                            are kept in CALLGRIND_OUT [a temporary folder] for callgrind_annotate
#   PGFANOUT_BIN             pgfanout binary [release build of this checkout, built if needed]
#   STOP [until]             how a pgfanout run ends: `until` (--until-lsn) or `poll` (see 4.)
#   BASELINE_BIN             a second pgfanout binary (say, a build of main) run as variant
#                            `baseline` in the same rounds: before/after figures taken in turns
#   KEEP_DB=1 / REUSE=1      keep the workload / reuse the one a KEEP_DB=1 run left (same N)
#   HUGE=ROWS                instead: the memory of one transaction inserting ROWS rows (in a
#                            database of its own). The server streams it, pgfanout holds it,
#                            spills it past spill_memory_mb and reads it back in pieces into
#                            the discarding sink; one run over the unix socket prints wall
#                            seconds, client CPU and peak RSS, for SPILL_MB / QUEUE_MB
#                            ([pipeline] spill_memory_mb / queue_mb, defaults 8 / 8, as pgfanout's). E.g.
#                            HUGE=10000000 KEEP_DB=1 (the insert alone takes minutes; add REUSE=1
#                            to run again on it)
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
N=${N:-1000000}
REPEAT=${REPEAT:-3}
TRANSPORTS=${TRANSPORTS:-unix tcp}
SSLMODE=${SSLMODE:-disable}
LANES=${LANES:-1}
HUGE=${HUGE:-}
[[ -z $HUGE ]] || N=$HUGE
# One database and origin slot per N, so that workloads of several sizes can be kept.
SUFFIX=$([[ $N == 1000000 ]] || echo "_$N")
[[ -z $HUGE ]] || SUFFIX=_huge_$HUGE
DB=pgfanout_pipeline$SUFFIX
PUBLICATION=pipeline
ORIGIN_SLOT=pipe_origin$SUFFIX
# Output settings pgfanout pins on its replication connections (crates/pg-replication),
# given to pg_recvlogical too so that the walsender does the same work for both.
PINNED_OPTIONS="-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3 -c timezone=UTC -c bytea_output=hex"

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}
[[ -n $HUGE ]] || ((N % 100 == 0)) || die "N must be a multiple of 100 (transactions of 100 changes), not $N"

STACK_DIR=""
WORK=$(mktemp -d)
PGFANOUT_PID=""
TIME_PID=""
cleanup() {
    local status=$?
    [[ -n $PGFANOUT_PID ]] && kill -TERM "$PGFANOUT_PID" 2>/dev/null
    [[ -n $TIME_PID ]] && wait "$TIME_PID" 2>/dev/null
    [[ -n $PGFANOUT_PID ]] && wait "$PGFANOUT_PID" 2>/dev/null
    if [[ -n ${PGFANOUT_TEST_PG_BIN:-} && ${KEEP_DB:-0} != 1 && ${REUSE:-0} != 1 ]]; then
        sql postgres "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '$DB'" \
            >/dev/null 2>&1 || true
        sql postgres "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    fi
    if [[ -n $STACK_DIR ]]; then
        "$REPO_ROOT/deploy/local/stack.sh" stop "$STACK_DIR" || true
        rm -rf "$STACK_DIR"
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT

if [[ -z ${PGFANOUT_TEST_PG_BIN:-} ]]; then
    STACK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/pgfanout-bench.XXXXXX")
    log "no stack in the environment: starting one in $STACK_DIR"
    "$REPO_ROOT/deploy/local/stack.sh" install
    STACK_JVM=0 "$REPO_ROOT/deploy/local/stack.sh" start "$STACK_DIR"
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
    sql postgres "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '$DB'" \
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
        CREATE PUBLICATION $PUBLICATION FOR TABLE orders;
        -- Transactions of 100 changes: 60 inserts, 30 updates, 10 deletes.
        CREATE PROCEDURE pipeline_workload(transactions bigint) LANGUAGE plpgsql AS \$\$
        DECLARE
            first bigint;
        BEGIN
            FOR t IN 0 .. transactions - 1 LOOP
                first := t * 60 + 1;
                INSERT INTO orders
                SELECT g, (g * 31) % 10000, 'new', (g % 100000) / 100.0, 'EUR',
                       '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 second', false,
                       CASE WHEN g % 5 = 0 THEN NULL ELSE 'order note ' || g END
                FROM generate_series(first, first + 59) g;
                UPDATE orders SET status = 'shipped', shipped = true, amount = amount + 1
                WHERE id BETWEEN first + 30 AND first + 59;
                -- The first transaction deletes 10 of its own rows, every later one 10
                -- that the one before inserted and left alone.
                DELETE FROM orders
                WHERE id BETWEEN CASE WHEN t = 0 THEN 1 ELSE first - 50 END AND CASE WHEN t = 0 THEN 10 ELSE first - 41 END;
                COMMIT;
            END LOOP;
        END \$\$;"
    sql "$DB" "SELECT pg_create_logical_replication_slot('$ORIGIN_SLOT', 'pgoutput')" >/dev/null
}

run_workload() {
    local started=$SECONDS
    if [[ -n $HUGE ]]; then
        log "workload: one transaction inserting $N rows"
        sql "$DB" "INSERT INTO orders
            SELECT g, (g * 31) % 10000, 'new', (g % 100000) / 100.0, 'EUR',
                   '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 second', false,
                   CASE WHEN g % 5 = 0 THEN NULL ELSE 'order note ' || g END
            FROM generate_series(1, $N) g"
    else
        log "workload: $N row changes in transactions of 100"
        sql "$DB" "CALL pipeline_workload($N / 100)"
    fi
    END_LSN=$(sql "$DB" "SELECT pg_current_wal_insert_lsn()")
    sql "$DB" "CREATE TABLE pipeline_run AS SELECT $N AS changes, '$END_LSN'::pg_lsn AS end_lsn"
    log "workload done in $((SECONDS - started)) s; end LSN $END_LSN; $(wal_to_decode) of WAL to decode"
}

wal_to_decode() {
    sql "$DB" "SELECT pg_size_pretty('$END_LSN'::pg_lsn - restart_lsn) FROM pg_replication_slots WHERE slot_name = '$ORIGIN_SLOT'"
}

reuse_workload() {
    [[ ${REUSE:-0} == 1 ]] || return 1
    local row
    row=$(sql "$DB" "SELECT changes || ' ' || end_lsn FROM pipeline_run" 2>/dev/null) || return 1
    [[ ${row%% *} == "$N" ]] || return 1
    END_LSN=${row#* }
    log "reusing $DB: $N row changes up to $END_LSN, $(wal_to_decode) of WAL to decode"
}

# applied_changes PORT: pgfanout_sink_applied_total summed over its series, read from
# /metrics with bash's /dev/tcp (no process started per poll: the poller stays cheap).
applied_changes() {
    local line sum=0
    exec 3<>"/dev/tcp/127.0.0.1/$1" || {
        echo 0
        return
    }
    printf 'GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
    while IFS= read -r line <&3; do
        if [[ $line == pgfanout_sink_applied_total* ]]; then
            line=${line##* }
            sum=$((sum + ${line%%.*}))
        fi
    done
    exec 3<&-
    echo "$sum"
}

# child_of PID: the process PID started (pgfanout under /usr/bin/time), once it has.
child_of() {
    local child="" tries=0
    while [[ -z $child ]]; do
        child=$(ps -o pid= --ppid "$1" | tr -d ' ')
        ((++tries < 500)) || die "process $1 started no child"
        [[ -n $child ]] || sleep 0.01
    done
    echo "$child"
}

# pgfanout_config SLOT TRANSPORT HTTP_PORT: a config draining SLOT into the discarding sink.
pgfanout_config() {
    cat <<TOML
[source]
url = "$(conninfo "$2")"
slot = "$1"
publication = "$PUBLICATION"
create_slot = false
heartbeat_interval_secs = 0

[http]
listen = "127.0.0.1:$3"

# The stream only: pg_recvlogical copies no existing rows either.
[snapshot]
enabled = false

[[sink]]
name = "discard"
kind = "discard"

[[sink.table]]
source = "public.orders"

[sink.delivery]
lanes = $LANES
$([[ -z $HUGE ]] || printf '\n[pipeline]\nspill_memory_mb = %s\nqueue_mb = %s\n' "${SPILL_MB:-8}" "${QUEUE_MB:-8}")
TOML
}

# walsender_cpu SLOT OUT: waits for the walsender that serves SLOT, samples its CPU time
# (user + system, from /proc) until it exits, then writes the last sample in seconds to OUT.
walsender_cpu() {
    local slot=$1 out=$2 pid="" stat ticks=0 tries=0 fields
    while [[ -z $pid ]]; do
        pid=$(sql "$DB" "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '$slot' AND active")
        ((++tries < 1000)) || break
        [[ -n $pid ]] || sleep 0.01
    done
    while [[ -n $pid ]] && read -r stat 2>/dev/null <"/proc/$pid/stat"; do
        # The process name is "(postgres)", without spaces: fields 14 and 15 are utime, stime.
        read -ra fields <<<"$stat"
        ticks=$((fields[13] + fields[14]))
        sleep 0.02
    done
    awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f\n", t / hz }' >"$out"
}

# timed VARIANT TRANSPORT RUN: drains a fresh copy of the slot; prints
# "wall_seconds user_seconds system_seconds max_rss_kb walsender_cpu_seconds waits", where
# waits counts the client's voluntary context switches (each a wake-up someone paid for).
timed() {
    local variant=$1 transport=$2 run=$3 slot="pipe_${1}_${2}_$3$SUFFIX" info timing sampler binary=$PGFANOUT_BIN
    sql "$DB" "SELECT pg_copy_logical_replication_slot('$ORIGIN_SLOT', '$slot')" >/dev/null
    info=$(conninfo "$transport")
    timing=$WORK/timing
    walsender_cpu "$slot" "$WORK/walsender" &
    sampler=$!
    [[ $variant != baseline ]] || binary=$BASELINE_BIN
    case $variant in
    pg_recvlogical)
        PGOPTIONS=$PINNED_OPTIONS /usr/bin/time -o "$timing" -f '%e %U %S %M %w' \
            "$PG_BIN/pg_recvlogical" -d "$info" --slot "$slot" --start -o proto_version=1 \
            -o publication_names=$PUBLICATION -E "$END_LSN" -f /dev/null --no-loop
        wait "$sampler"
        read -r seconds user system rss waits <"$timing"
        echo "$seconds $user $system $rss $(cat "$WORK/walsender") $waits"
        ;;
    pgfanout | baseline)
        local http_port=$((20000 + RANDOM % 20000)) started finished applied=0 confirmed
        pgfanout_config "$slot" "$transport" "$http_port" >"$WORK/pgfanout.toml"
        if [[ ${STOP:-until} == until ]]; then
            # Like pg_recvlogical -E: pgfanout exits by itself once every sink applied
            # everything up to END and it confirmed that to the slot.
            PGFANOUT_LOG=warn /usr/bin/time -o "$timing" -f '%e %U %S %M %w' \
                "$binary" --log-format text run --config "$WORK/pgfanout.toml" --until-lsn "$END_LSN" \
                >"$WORK/pgfanout.out" 2>"$WORK/pgfanout.log" ||
                die "pgfanout run --until-lsn failed: $(tail -5 "$WORK/pgfanout.log")"
            wait "$sampler"
            confirmed=$(sql "$DB" "SELECT confirmed_flush_lsn >= '$END_LSN' FROM pg_replication_slots WHERE slot_name = '$slot'")
            [[ $confirmed == t ]] || die "pgfanout exited before confirming $END_LSN"
            read -r seconds user system rss waits <"$timing"
            echo "$seconds $user $system $rss $(cat "$WORK/walsender") $waits"
            sql "$DB" "SELECT pg_drop_replication_slot('$slot')" >/dev/null
            return
        fi
        started=$EPOCHREALTIME
        # Its output goes to files, never to this function's stdout (a pipe the
        # caller reads to its end).
        PGFANOUT_LOG=warn /usr/bin/time -o "$timing" -f '%e %U %S %M %w' \
            "$binary" --log-format text run --config "$WORK/pgfanout.toml" \
            >"$WORK/pgfanout.out" 2>"$WORK/pgfanout.log" &
        TIME_PID=$!
        PGFANOUT_PID=$(child_of "$TIME_PID")
        while ((applied < N)); do
            kill -0 "$PGFANOUT_PID" 2>/dev/null || {
                tail -20 "$WORK/pgfanout.log" >&2
                die "pgfanout stopped before applying $N changes"
            }
            sleep 0.01
            applied=$(applied_changes "$http_port" 2>/dev/null || echo 0)
        done
        finished=$EPOCHREALTIME
        # SIGTERM goes to pgfanout itself: /usr/bin/time would die of it, leaving
        # pgfanout running and its figures unwritten. time then reports and exits.
        kill -TERM "$PGFANOUT_PID"
        # Every change was applied already; how it stopped does not change the figures.
        wait "$TIME_PID" || log "pgfanout exited with status $? after SIGTERM: $(tail -3 "$WORK/pgfanout.log")"
        PGFANOUT_PID="" TIME_PID=""
        read -r _ user system rss waits <"$timing"
        wait "$sampler"
        echo "$(awk -v a="$started" -v b="$finished" 'BEGIN { printf "%.3f", b - a }') $user $system $rss $(cat "$WORK/walsender") $waits"
        ;;
    esac
    sql "$DB" "SELECT pg_drop_replication_slot('$slot')" >/dev/null
}

# instructions TRANSPORT: drains a fresh copy of the slot with pgfanout under callgrind;
# prints the instructions it executed and their number per change.
instructions() {
    local transport=$1 slot="pipe_callgrind_$1$SUFFIX" http_port=$((20000 + RANDOM % 20000)) applied=0 out total
    out=${CALLGRIND_OUT:-$WORK}/callgrind.$transport.out
    sql "$DB" "SELECT pg_copy_logical_replication_slot('$ORIGIN_SLOT', '$slot')" >/dev/null
    pgfanout_config "$slot" "$transport" "$http_port" >"$WORK/pgfanout.toml"
    PGFANOUT_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$PGFANOUT_BIN" --log-format text run --config "$WORK/pgfanout.toml" >"$WORK/pgfanout.out" 2>"$WORK/pgfanout.log" &
    PGFANOUT_PID=$!
    while ((applied < N)); do
        kill -0 "$PGFANOUT_PID" 2>/dev/null || {
            tail -20 "$WORK/pgfanout.log" >&2
            die "pgfanout stopped before applying $N changes"
        }
        sleep 0.5
        applied=$(applied_changes "$http_port" 2>/dev/null || echo 0)
    done
    kill -TERM "$PGFANOUT_PID"
    wait "$PGFANOUT_PID" || die "pgfanout did not stop cleanly: $(tail -5 "$WORK/pgfanout.log")"
    PGFANOUT_PID=""
    sql "$DB" "SELECT pg_drop_replication_slot('$slot')" >/dev/null
    total=$(awk '/^(summary|totals):/ { print $2; exit }' "$out")
    printf '%-5s instructions=%d per_change=%.0f profile=%s\n' "$transport" "$total" \
        "$(awk -v t="$total" -v n="$N" 'BEGIN { print t / n }')" "$out"
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

main() {
    command -v /usr/bin/time >/dev/null || die "/usr/bin/time is missing (apt-get install time)"
    if ! reuse_workload; then
        prepare
        run_workload
    fi
    if [[ -n $HUGE ]]; then
        log "load before the run: $(uptime)"
        printf 'one transaction of %s inserted rows, spill_memory_mb=%s queue_mb=%s, over the unix socket\n' \
            "$N" "${SPILL_MB:-8}" "${QUEUE_MB:-8}"
        printf '%-15s %8s %7s %7s %10s\n' variant wall_s user_s sys_s max_rss_kb
        read -r seconds user system rss _ < <(timed pgfanout unix 1)
        printf '%-15s %8.2f %7.2f %7.2f %10d\n' pgfanout "$seconds" "$user" "$system" "$rss"
        return
    fi
    if [[ ${CALLGRIND:-0} == 1 ]]; then
        for transport in $TRANSPORTS; do instructions "$transport"; done
        return
    fi
    log "load before the runs: $(uptime)"
    local variants=(pg_recvlogical pgfanout) transport run variant
    [[ -z ${BASELINE_BIN:-} ]] || variants+=(baseline)
    printf '%-15s %-5s %4s %8s %7s %7s %7s %10s %12s %8s\n' variant via run wall_s user_s sys_s cpu_s max_rss_kb \
        walsender_s waits
    for transport in $TRANSPORTS; do
        for ((run = 1; run <= REPEAT; run++)); do
            for variant in "${variants[@]}"; do
                read -r seconds user system rss walsender waits < <(timed "$variant" "$transport" "$run")
                local cpu
                cpu=$(awk -v u="$user" -v s="$system" 'BEGIN { print u + s }')
                printf '%-15s %-5s %4d %8.2f %7.2f %7.2f %7.2f %10d %12.2f %8d\n' \
                    "$variant" "$transport" "$run" "$seconds" "$user" "$system" "$cpu" "$rss" "$walsender" "$waits"
                echo "$seconds" >>"$WORK/$variant.$transport.wall"
                echo "$user" >>"$WORK/$variant.$transport.user"
                echo "$system" >>"$WORK/$variant.$transport.sys"
                echo "$cpu" >>"$WORK/$variant.$transport.cpu"
                echo "$rss" >>"$WORK/$variant.$transport.rss"
                echo "$walsender" >>"$WORK/$variant.$transport.walsender"
                echo "$waits" >>"$WORK/$variant.$transport.waits"
            done
        done
    done
    log "load after the runs: $(uptime)"
    echo
    printf 'N=%s row changes (60 %% inserts, 30 %% updates, 10 %% deletes, 100 per transaction), %s runs each, medians;\n' \
        "$N" "$REPEAT"
    printf 'ratio = pgfanout / pg_recvlogical on the same transport\n'
    printf '%-15s %-5s %8s %7s %7s %7s %7s %9s %12s %8s\n' variant via wall_s ratio user_s sys_s cpu_s cpu_ratio walsender_s waits
    for transport in $TRANSPORTS; do
        local base_wall base_cpu
        base_wall=$(median <"$WORK/pg_recvlogical.$transport.wall")
        base_cpu=$(median <"$WORK/pg_recvlogical.$transport.cpu")
        for variant in "${variants[@]}"; do
            local wall cpu
            wall=$(median <"$WORK/$variant.$transport.wall")
            cpu=$(median <"$WORK/$variant.$transport.cpu")
            printf '%-15s %-5s %8.2f %7.2f %7.2f %7.2f %7.2f %9.2f %12.2f %8d  peak RSS %s kB\n' "$variant" "$transport" \
                "$wall" "$(awk -v a="$wall" -v b="$base_wall" 'BEGIN { print a / b }')" \
                "$(median <"$WORK/$variant.$transport.user")" "$(median <"$WORK/$variant.$transport.sys")" "$cpu" \
                "$(awk -v a="$cpu" -v b="$base_cpu" 'BEGIN { print a / b }')" \
                "$(median <"$WORK/$variant.$transport.walsender")" "$(median <"$WORK/$variant.$transport.waits")" \
                "$(sort -n "$WORK/$variant.$transport.rss" | tail -1)"
        done
    done
}

main
