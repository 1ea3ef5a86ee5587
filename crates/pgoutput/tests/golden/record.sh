#!/usr/bin/env bash
# Re-records the golden pgoutput captures from a real PostgreSQL 15.
#
#   crates/pgoutput/tests/golden/record.sh [NAME...]
#
# With no NAME every capture listed in captures.txt is recorded again; otherwise only
# the named ones. Needs a running local stack (the PGFANOUT_TEST_PG_* variables):
#
#   deploy/local/stack.sh start /tmp/golden-stack && source /tmp/golden-stack/env
#   crates/pgoutput/tests/golden/record.sh
#   deploy/local/stack.sh stop /tmp/golden-stack
#
# For each capture (see captures.txt for the line format) it:
#   1. creates a fresh database golden_<name> and runs the part of the scenario SQL
#      above the `-- golden:capture` line (schema, publication: not captured);
#   2. creates a pgoutput slot with pg_recvlogical --create-slot (plus the slot options);
#   3. runs the part below the line (the statements whose changes are captured) and
#      notes the WAL insert position after it as the end LSN;
#   4. drains the slot with `pg_recvlogical --start … -f <name>.bin -E <end> --no-loop`
#      (drain `after`), or runs that same pg_recvlogical, without -E, during step 3 and
#      stops it with SIGINT once the slot has confirmed the end LSN (drain `during`);
#      pg_recvlogical writes each pgoutput message's bytes followed by '\n';
#   5. drops the slot and the database, then writes <name>.jsonl, the decoded form,
#      with `pgfanout inspect` (PGFANOUT_BIN, or the workspace binary via cargo run).
#
# The walsender runs with the output settings pgfanout pins on its own replication
# connections (DateStyle, IntervalStyle, extra_float_digits, TimeZone, bytea_output), so
# text values look as pgfanout receives them. Re-recording changes OIDs, xids, LSNs and
# times; the tests only rely on relations between them, never on their values. Commit the
# .bin and .jsonl files together.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$HERE/../../../.." && pwd)
# Output settings of pgfanout's replication connection (crates/pg-replication).
PINNED_OPTIONS="-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3 -c timezone=UTC -c bytea_output=hex"
# A drain that has not ended after this many seconds is stuck (wrong end LSN, server gone).
DRAIN_TIMEOUT=120

log() { printf '[record] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

for var in PGFANOUT_TEST_PG_SOCKET_DIR PGFANOUT_TEST_PG_PORT PGFANOUT_TEST_PG_BIN; do
    [[ -n ${!var:-} ]] || die "$var is not set: start a stack and source its env (see the top of this script)"
done
PG_BIN=$PGFANOUT_TEST_PG_BIN
export PGHOST=$PGFANOUT_TEST_PG_SOCKET_DIR PGPORT=$PGFANOUT_TEST_PG_PORT PGUSER=postgres

psql_in() {
    local db=$1
    shift
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -d "$db" "$@"
}

pgfanout() {
    if [[ -n ${PGFANOUT_BIN:-} ]]; then
        "$PGFANOUT_BIN" "$@"
    else
        cargo run --quiet --manifest-path "$REPO_ROOT/Cargo.toml" --bin pgfanout -- "$@"
    fi
}

trim() {
    local s=$1
    s=${s#"${s%%[![:space:]]*}"}
    printf '%s' "${s%"${s##*[![:space:]]}"}"
}

# The pgoutput options `pgfanout inspect` needs to decode a capture recorded with these
# pg_recvlogical options.
inspect_args() {
    local start_args=$1 args=()
    [[ $start_args =~ proto_version=([0-9]+) ]] || die "no proto_version in: $start_args"
    args+=(--proto-version "${BASH_REMATCH[1]}")
    if [[ $start_args =~ streaming=([a-z]+) ]]; then args+=("--streaming=${BASH_REMATCH[1]}"); fi
    if [[ $start_args == *binary=true* ]]; then args+=(--binary); fi
    printf '%s\n' "${args[@]}"
}

# The pg_recvlogical running in the background (drain `during`), stopped if we fail.
RECEIVER=""
stop_receiver() {
    if [[ -n $RECEIVER ]]; then
        kill -INT "$RECEIVER" 2>/dev/null || true
        wait "$RECEIVER" 2>/dev/null || true
        RECEIVER=""
    fi
}
trap stop_receiver EXIT

# Polls SQL until it returns t; dies after DRAIN_TIMEOUT seconds with WHAT.
wait_for() {
    local db=$1 sql=$2 what=$3 deadline=$((SECONDS + DRAIN_TIMEOUT))
    until [[ $(psql_in "$db" -At -c "$sql") == t ]]; do
        ((SECONDS < deadline)) || die "timed out waiting for $what"
        sleep 0.1
    done
}

record() {
    local name=$1 sql=$2 drain=$3 slot_args=$4 walsender=$5 start_args=$6
    # Slots are cluster-wide: name each after its capture so a stale one is easy to spot.
    local db="golden_$name" slot="golden_$name" file="$HERE/$sql"
    [[ -f $file ]] || die "$name: $sql not found"
    grep -qx -- '-- golden:capture' "$file" || die "$sql has no '-- golden:capture' line"
    log "$name: $sql (drain $drain)"

    # Leftovers of an interrupted run.
    psql_in postgres -o /dev/null \
        -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$slot'"
    psql_in postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
    sed '/^-- golden:capture$/,$d' "$file" | psql_in "$db" -o /dev/null -f -
    # shellcheck disable=SC2086 # option lists are split on purpose
    "$PG_BIN/pg_recvlogical" -d "$db" --slot "$slot" --create-slot -P pgoutput $slot_args

    local tmp="$HERE/.$name.bin.partial" end
    rm -f "$tmp"
    case $drain in
    after)
        sed '1,/^-- golden:capture$/d' "$file" | psql_in "$db" -o /dev/null -f -
        end=$(psql_in "$db" -At -c 'SELECT pg_current_wal_insert_lsn()')
        # shellcheck disable=SC2086
        PGOPTIONS="$PINNED_OPTIONS $walsender" timeout "$DRAIN_TIMEOUT" \
            "$PG_BIN/pg_recvlogical" -d "$db" --slot "$slot" --start $start_args \
            -f "$tmp" -E "$end" --no-loop -s 1 ||
            die "$name: pg_recvlogical did not drain the slot up to $end"
        ;;
    during)
        # shellcheck disable=SC2086
        PGOPTIONS="$PINNED_OPTIONS $walsender" "$PG_BIN/pg_recvlogical" -d "$db" --slot "$slot" \
            --start $start_args -f "$tmp" --no-loop -s 1 &
        RECEIVER=$!
        wait_for "$db" "SELECT active FROM pg_replication_slots WHERE slot_name = '$slot'" "pg_recvlogical to start"
        sed '1,/^-- golden:capture$/d' "$file" | psql_in "$db" -o /dev/null -f -
        end=$(psql_in "$db" -At -c 'SELECT pg_current_wal_insert_lsn()')
        # pg_recvlogical reports as written the end of what it wrote to the file, and the
        # walsender's position from keepalives once it has written everything before it.
        wait_for "$db" "SELECT coalesce(confirmed_flush_lsn >= '$end', false) FROM pg_replication_slots WHERE slot_name = '$slot'" \
            "pg_recvlogical to confirm $end"
        kill -INT "$RECEIVER"
        local receiver=$RECEIVER
        RECEIVER=""
        wait "$receiver" || die "$name: pg_recvlogical failed"
        ;;
    *) die "$name: drain must be 'after' or 'during', not '$drain'" ;;
    esac
    "$PG_BIN/pg_recvlogical" -d "$db" --slot "$slot" --drop-slot
    psql_in postgres -c "DROP DATABASE $db WITH (FORCE)"
    mv -f "$tmp" "$HERE/$name.bin"

    local args
    mapfile -t args < <(inspect_args "$start_args")
    pgfanout inspect --capture "$HERE/$name.bin" "${args[@]}" >"$HERE/$name.jsonl"
    log "$name: $(wc -c <"$HERE/$name.bin") bytes, $(wc -l <"$HERE/$name.jsonl") messages"
}

main() {
    local wanted=("$@") found=0 line name sql drain slot_args walsender start_args
    while IFS= read -r line; do
        [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
        IFS='|' read -r name sql drain slot_args walsender start_args <<<"$line"
        name=$(trim "$name")
        if ((${#wanted[@]})) && [[ " ${wanted[*]} " != *" $name "* ]]; then continue; fi
        record "$name" "$(trim "$sql")" "$(trim "$drain")" "$(trim "$slot_args")" "$(trim "$walsender")" \
            "$(trim "$start_args")"
        found=$((found + 1))
    done <"$HERE/captures.txt"
    ((found > 0)) || die "no capture matched: ${wanted[*]}"
    log "recorded $found capture(s); commit the .bin and .jsonl files together"
}

main "$@"
