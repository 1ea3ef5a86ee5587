#!/usr/bin/env bash
# What the change archive costs the pipeline, and how fast `replay` re-applies
# from it: copies of one logical slot (same WAL, same changes) drained by
# `pgfanout run` into the discarding sink with `[archive]` off and on, taking
# turns in one run; then `pgfanout replay` of the archived range into the
# discarding sink and into Redis.
#
#   benches/e2e/archive_on_off.sh          (or: make bench-archive)
#
# What it does:
#   1. uses the stack named by the PGFANOUT_TEST_* variables, or starts a throwaway one;
#   2. creates database pgfanout_archive with the 8-column `orders` table of lib.sh, a
#      publication and a pgoutput slot, then writes N rows in transactions of 1,000
#      (bench_backlog) and notes the WAL insert position as END;
#   3. REPEAT times, variants taking turns: copies the slot
#      (pg_copy_logical_replication_slot) and drains the copy with `pgfanout run`, one
#      discarding sink, `[archive]` off or on (a fresh folder, fsync = FSYNC), until every
#      sink (the archive too) has applied N changes (pgfanout_sink_applied_total over
#      /metrics); wall seconds from start to that point, and pgfanout's CPU seconds;
#   4. REPEAT times: `pgfanout replay --from <archive start> --to END` of the last archive
#      into the discarding sink, and into Redis (database 13 of the stack's server, flushed
#      before each run so that every change is written, not skipped by its version);
#   5. prints every run, the medians, and the archive-on / archive-off ratios.
#
# Environment (defaults in brackets):
#   N [500000]        rows (a multiple of 1,000)
#   REPEAT [3]        runs per variant
#   FSYNC [batch]     [archive] fsync: batch (one fsync per applied batch) or os
#   CALLGRIND=1       instead of timing: one run per variant under valgrind --tool=callgrind,
#                     printing instructions per change and their ratio (load-independent;
#                     use N=100000); profiles kept in CALLGRIND_OUT [a temporary folder]
#   PGFANOUT_BIN      pgfanout binary [release build of this checkout, built if needed]
set -euo pipefail

N=${N:-500000}
REPEAT=${REPEAT:-3}
FSYNC=${FSYNC:-batch}
DB=pgfanout_archive
REDIS_DB=13
# How often the drain polls /metrics: often for wall times; under callgrind,
# where a run lasts minutes, rarely, so that rendering the metrics (about
# 300 instructions per change at 10 ms) does not count as pipeline cost.
POLL_SECONDS=0.01
[[ ${CALLGRIND:-0} == 1 ]] && POLL_SECONDS=0.5

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}
((N % 1000 == 0)) || die "N must be a multiple of 1000, not $N"

# shellcheck source=benches/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PG_BIN=$PGFANOUT_TEST_PG_BIN
SOCKET_DIR=$PGFANOUT_TEST_PG_SOCKET_DIR
PORT=$PGFANOUT_TEST_PG_PORT
# shellcheck source=benches/e2e/pg.sh
source "$REPO_ROOT/benches/e2e/pg.sh"
REDIS_URL="${PGFANOUT_TEST_REDIS_URL%/}/$REDIS_DB"

bench_on_exit() {
    sql postgres "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '$DB'" \
        >/dev/null 2>&1 || true
    sql postgres "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
}

# applied SINK...: pgfanout_sink_applied_total of each SINK (summed over its
# series), from one scrape: the scrapes cost pgfanout CPU too, the same in both variants.
applied() {
    { curl -s "http://127.0.0.1:$HTTP_PORT/metrics" || true; } |
        awk -v sinks="$*" 'BEGIN { n = split(sinks, names, " ") }
            /^pgfanout_sink_applied_total/ { for (i = 1; i <= n; i++) if (index($0, "sink=\"" names[i] "\"")) sum[i] += $2 }
            END { for (i = 1; i <= n; i++) printf "%d ", sum[i] }'
}

# config SLOT ARCHIVE_DIR [cache]: the discarding sink (and Redis with "cache", for
# replay), the archive if a folder is given.
config() {
    cat <<TOML
[source]
url = "$(conninfo unix)"
slot = "$1"
publication = "$DB"
create_slot = false
heartbeat_interval_secs = 0

[http]
listen = "127.0.0.1:$HTTP_PORT"

[[sink]]
name = "discard"
kind = "discard"
[[sink.table]]
source = "public.orders"
TOML
    if [[ ${3:-} == cache ]]; then
        printf '\n[[sink]]\nname = "cache"\nkind = "redis"\nurl = "%s"\n' "$REDIS_URL"
        printf '[[sink.table]]\nsource = "public.orders"\nkey = "orders:{id}"\n'
    fi
    if [[ -n $2 ]]; then
        printf '\n[archive]\npath = "%s"\nfsync = "%s"\n' "$2" "$FSYNC"
    fi
}

# drain VARIANT RUN [WRAPPER...]: drains a fresh copy of the slot with pgfanout
# (archive off or on); prints "wall_seconds cpu_seconds".
drain() {
    local variant=$1 run=$2 slot="archive_bench_${1}_$2" archive="" started finished discarded archived
    shift 2
    [[ $variant == on ]] && archive=$WORK/archive
    rm -rf "$WORK/archive"
    sql "$DB" "SELECT pg_copy_logical_replication_slot('$DB', '$slot')" >/dev/null
    config "$slot" "$archive" >"$WORK/run.toml"
    started=$EPOCHREALTIME
    PGFANOUT_LOG=warn /usr/bin/time -o "$WORK/timing" -f '%U %S' "$@" "$PGFANOUT_BIN" --log-format text run \
        --config "$WORK/run.toml" 2>"$WORK/pgfanout.log" &
    PGFANOUT_PID=$!
    while :; do
        read -r discarded archived <<<"$(applied discard archive)"
        ((discarded >= N)) && { [[ -z $archive ]] || ((archived >= N)); } && break
        kill -0 "$PGFANOUT_PID" 2>/dev/null || {
            tail -20 "$WORK/pgfanout.log" >&2
            die "pgfanout stopped before applying $N changes"
        }
        sleep "$POLL_SECONDS"
    done
    finished=$EPOCHREALTIME
    # SIGTERM to pgfanout itself (the child of /usr/bin/time), so that time reports its CPU.
    pkill -TERM -P "$PGFANOUT_PID" || true
    wait "$PGFANOUT_PID" || log "pgfanout exited with status $? after SIGTERM"
    PGFANOUT_PID=""
    # The walsender lets go of the slot a moment after pgfanout is gone.
    while [[ $(sql "$DB" "SELECT active FROM pg_replication_slots WHERE slot_name = '$slot'") == t ]]; do sleep 0.05; done
    sql "$DB" "SELECT pg_drop_replication_slot('$slot')" >/dev/null
    read -r user system <"$WORK/timing"
    awk -v a="$started" -v b="$finished" -v u="$user" -v s="$system" 'BEGIN { printf "%.3f %.2f\n", b - a, u + s }'
}

# replay SINK: replays the last archive's whole range into SINK; prints "wall_seconds".
replay() {
    local started finished from
    [[ $1 == cache ]] && redis-cli -u "$REDIS_URL" FLUSHDB >/dev/null
    # The archive's start (an archive written before it recorded one: its first transaction).
    from=$(cat "$WORK/archive/start" 2>/dev/null ||
        "$PGFANOUT_BIN" inspect --archive "$WORK/archive" --count 1 | sed -n 's/.*"final_lsn":"\([^"]*\)".*/\1/p')
    config unused "$WORK/archive" cache >"$WORK/replay.toml"
    started=$EPOCHREALTIME
    PGFANOUT_LOG=warn "$PGFANOUT_BIN" --log-format text replay --config "$WORK/replay.toml" --from "$from" \
        --to "$END_LSN" --sink "$1" >"$WORK/replay.out" 2>"$WORK/replay.log" ||
        die "replay into $1 failed: $(tail -5 "$WORK/replay.log")"
    finished=$EPOCHREALTIME
    grep -q "\"changes\":$N," "$WORK/replay.out" || die "replay into $1 applied other than $N changes: $(cat "$WORK/replay.out")"
    awk -v a="$started" -v b="$finished" 'BEGIN { printf "%.3f\n", b - a }'
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
rate() { awk -v n="$N" -v s="$1" 'BEGIN { printf "%.0f", n / s }'; }

main() {
    command -v /usr/bin/time >/dev/null || die "/usr/bin/time is missing (apt-get install time)"
    log "database $DB: $N rows in transactions of 1,000"
    bench_database "$DB" <<SQL
$ORDERS_TABLE
CREATE PUBLICATION $DB FOR TABLE orders;
SQL
    bench_backlog "$DB" "$N" "$ORDERS_INSERT"
    END_LSN=$(sql "$DB" "SELECT pg_current_wal_insert_lsn()")
    if [[ ${CALLGRIND:-0} == 1 ]]; then
        local out=${CALLGRIND_OUT:-$WORK} variant total
        for variant in off on; do
            drain "$variant" cg valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.$variant.out" >/dev/null
            total=$(awk '/^(summary|totals):/ { print $2; exit }' "$out/callgrind.$variant.out")
            echo "$total" >"$WORK/instructions.$variant"
            printf 'archive %-3s instructions=%d per_change=%.0f profile=%s\n' "$variant" "$total" \
                "$(awk -v t="$total" -v n="$N" 'BEGIN { print t / n }')" "$out/callgrind.$variant.out"
        done
        printf 'instructions ratio on/off: %.3f\n' \
            "$(awk -v a="$(cat "$WORK/instructions.on")" -v b="$(cat "$WORK/instructions.off")" 'BEGIN { print a / b }')"
        return
    fi
    log "load before the runs: $(uptime)"
    printf '%-18s %4s %8s %7s %12s\n' variant run wall_s cpu_s changes_per_s
    local run variant seconds cpu
    for ((run = 1; run <= REPEAT; run++)); do
        for variant in off on; do
            read -r seconds cpu < <(drain "$variant" "$run")
            printf '%-18s %4d %8.2f %7.2f %12s\n' "pipeline_archive_$variant" "$run" "$seconds" "$cpu" "$(rate "$seconds")"
            echo "$seconds" >>"$WORK/wall.$variant"
            echo "$cpu" >>"$WORK/cpu.$variant"
        done
    done
    log "archive of the last run: $(du -sb "$WORK/archive" | cut -f1) bytes for $N changes"
    for ((run = 1; run <= REPEAT; run++)); do
        for variant in discard cache; do
            seconds=$(replay "$variant")
            printf '%-18s %4d %8.2f %7s %12s\n' "replay_$variant" "$run" "$seconds" - "$(rate "$seconds")"
            echo "$seconds" >>"$WORK/wall.replay_$variant"
        done
    done
    log "load after the runs: $(uptime)"
    echo
    local off on
    off=$(median <"$WORK/wall.off")
    on=$(median <"$WORK/wall.on")
    printf 'N=%s rows in transactions of 1,000, fsync=%s, medians of %s runs\n' "$N" "$FSYNC" "$REPEAT"
    printf 'pipeline archive off: %.2f s (%s changes/s), cpu %.2f s\n' "$off" "$(rate "$off")" "$(median <"$WORK/cpu.off")"
    printf 'pipeline archive on:  %.2f s (%s changes/s), cpu %.2f s\n' "$on" "$(rate "$on")" "$(median <"$WORK/cpu.on")"
    printf 'ratio on/off: wall %.3f, cpu %.3f\n' "$(awk -v a="$on" -v b="$off" 'BEGIN { print a / b }')" \
        "$(awk -v a="$(median <"$WORK/cpu.on")" -v b="$(median <"$WORK/cpu.off")" 'BEGIN { print a / b }')"
    for variant in discard cache; do
        seconds=$(median <"$WORK/wall.replay_$variant")
        printf 'replay into %-8s %.2f s (%s changes/s)\n' "$variant:" "$seconds" "$(rate "$seconds")"
    done
}

main
