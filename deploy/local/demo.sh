#!/usr/bin/env bash
# Live demo: a rental app's PostgreSQL database (sql/demo_schema.sql) under a
# steady write workload (sql/demo_workload.sql), fanned out by pgfanout to
# Redis, MongoDB (nx-27017), Cassandra and Neo4j. Prints a line per store
# every few seconds; Ctrl-C stops everything.
#
#   deploy/local/demo.sh
#
# PGFANOUT_BIN=path  use that binary instead of `cargo build --release`
# DEMO_INTERVAL=N    seconds between status prints (default 3)
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STACK="$REPO_ROOT/deploy/local/stack.sh"
PG_BIN=/usr/lib/postgresql/15/bin
METRICS_URL=http://127.0.0.1:9187/metrics
INTERVAL=${DEMO_INTERVAL:-3}
cd "$REPO_ROOT"

STACK_DIR=""
PGFANOUT_PID=""
WORKLOAD_PID=""
STATUS_PID=""

say() { printf '[demo] %s\n' "$*" >&2; }

# stop_pid PID: TERM, give it 10 s, then KILL.
stop_pid() {
    local pid=$1 i
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    echo >&2
    say "stopping"
    # Writers first, then the replicator, then the servers under them.
    stop_pid "$STATUS_PID"
    stop_pid "$WORKLOAD_PID"
    stop_pid "$PGFANOUT_PID"
    if [[ -n $STACK_DIR ]]; then
        "$STACK" stop "$STACK_DIR" || true
        rm -rf "$STACK_DIR"
    fi
    say "stopped"
    exit "$status"
}
trap cleanup EXIT
# Ctrl-C is how a demo ends: that is a clean exit, not a failure.
trap 'exit 0' INT
trap 'exit 143' TERM

psql_app() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PGFANOUT_TEST_PG_SOCKET_DIR" -p "$PG_PORT" -U postgres "$@"; }

build() {
    if [[ -n ${PGFANOUT_BIN:-} ]]; then
        BIN=$PGFANOUT_BIN
    else
        say "building pgfanout (cargo build --release)"
        cargo build --release
        BIN="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/pgfanout"
    fi
    [[ -x $BIN ]] || {
        say "no pgfanout binary at $BIN"
        exit 1
    }
}

start_stack() {
    "$STACK" install
    STACK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/pgfanout-demo.XXXXXX")
    "$STACK" start "$STACK_DIR"
    # shellcheck source=/dev/null
    source "$STACK_DIR/env"
    PG_PORT=$PGFANOUT_TEST_PG_PORT
    REDIS_PORT=${PGFANOUT_TEST_REDIS_URL##*:}
    CQL_PORT=${PGFANOUT_TEST_CASSANDRA_NODES##*:}
}

load_schema() {
    "$PG_BIN/createdb" -h "$PGFANOUT_TEST_PG_SOCKET_DIR" -p "$PG_PORT" -U postgres app
    psql_app -d app -f sql/demo_schema.sql
    # Cassandra's reservations_by_guest is keyed by guest_id: an update or
    # delete must carry the old guest, so the old row carries every column.
    psql_app -d app -c 'ALTER TABLE reservations REPLICA IDENTITY FULL'
    say "database 'app' loaded from sql/demo_schema.sql"
}

render_config() {
    CONFIG="$STACK_DIR/pgfanout.toml"
    sed -e "s/\${PG_PORT}/$PG_PORT/g" -e "s/\${REDIS_PORT}/$REDIS_PORT/g" \
        -e "s/\${MONGO_PORT}/${PGFANOUT_TEST_MONGODB_URL##*:}/g" \
        -e "s/\${CASSANDRA_NODES}/$PGFANOUT_TEST_CASSANDRA_NODES/g" \
        -e "s|\${NEO4J_URL}|$PGFANOUT_TEST_NEO4J_URL|g" \
        deploy/local/pgfanout.toml.in >"$CONFIG"
}

start_pgfanout() {
    if (exec 3<>/dev/tcp/127.0.0.1/9187) 2>/dev/null; then
        say "warning: something already listens on 127.0.0.1:9187 (pgfanout's http port)"
    fi
    # setsid (here and for the workload): a Ctrl-C reaches only this script,
    # whose cleanup then stops things in order.
    setsid "$BIN" run --config "$CONFIG" </dev/null >"$STACK_DIR/pgfanout.log" 2>&1 &
    PGFANOUT_PID=$!
    say "pgfanout running (pid $PGFANOUT_PID, config $CONFIG, log $STACK_DIR/pgfanout.log)"
}

start_workload() {
    setsid "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PGFANOUT_TEST_PG_SOCKET_DIR" \
        -p "$PG_PORT" -U postgres -d app -f sql/demo_workload.sql </dev/null >"$STACK_DIR/workload.log" 2>&1 &
    WORKLOAD_PID=$!
    say "workload running (a transaction every 0.5 s; log $STACK_DIR/workload.log)"
}

# One Redis value, whatever the sink chose to store it as.
show_key() {
    local key=$1
    case $(redis-cli -p "$REDIS_PORT" TYPE "$key") in
    hash) redis-cli -p "$REDIS_PORT" HGETALL "$key" | paste - - | sed 's/^/    /' ;;
    string) redis-cli -p "$REDIS_PORT" GET "$key" | sed 's/^/    /' ;;
    none) echo "    (not in Redis yet)" ;;
    *) echo "    (type $(redis-cli -p "$REDIS_PORT" TYPE "$key"))" ;;
    esac
}

count_keys() { redis-cli -p "$REDIS_PORT" --scan --pattern "$1" | wc -l; }

# Documents in MongoDB's app.reservations; Cassandra rows of
# rentals.reservations; Neo4j's Reservation nodes and their relationships.
mongo_count() {
    "$REPO_ROOT/.venv/bin/python" -c 'import sys, pymongo
print(pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=2000).app.reservations.count_documents({}))' \
        "$PGFANOUT_TEST_MONGODB_URL" 2>/dev/null || echo "?"
}
cassandra_count() {
    local ids
    ids=$("$REPO_ROOT/deploy/local/cql.py" "$CQL_PORT" "SELECT id FROM rentals.reservations" 2>/dev/null) || {
        echo "?"
        return
    }
    grep -c . <<<"$ids" || true
}
neo4j_count() {
    "$REPO_ROOT/.venv/bin/python" "$REPO_ROOT/deploy/local/cypher.py" "$PGFANOUT_TEST_NEO4J_URL" \
        "MATCH (r:Reservation) OPTIONAL MATCH (r)-[e]->() RETURN count(DISTINCT r) + ' Reservation nodes, ' + count(e) + ' relationships'" \
        2>/dev/null || echo "?"
}

status() {
    local pg_rows newest
    pg_rows=$(psql_app -d app -Atc 'SELECT count(*) FROM reservations')
    newest=$(psql_app -d app -Atc 'SELECT max(id) FROM reservations')
    echo "---- $(date +%T)  workload: $(tail -n1 "$STACK_DIR/workload.log" 2>/dev/null | cut -c11-)"
    echo "  postgres   reservations: $pg_rows rows"
    echo "  redis      $(count_keys 'reservation:*') reservation:* keys | property:* keys: $(count_keys 'property:*')" \
        "| all keys: $(redis-cli -p "$REDIS_PORT" DBSIZE)"
    echo "  mongodb    app.reservations: $(mongo_count) documents"
    echo "  cassandra  rentals.reservations: $(cassandra_count) rows"
    echo "  neo4j      $(neo4j_count)"
    echo "  newest: HGETALL reservation:$newest"
    show_key "reservation:$newest"
    echo "  metrics: curl $METRICS_URL"
}

main() {
    build
    start_stack
    load_schema
    render_config
    start_pgfanout
    start_workload
    say "psql -h $PGFANOUT_TEST_PG_SOCKET_DIR -p $PG_PORT -U postgres app   |   redis-cli -p $REDIS_PORT"
    say "deploy/local/cql.py $CQL_PORT 'SELECT * FROM rentals.reservations_by_guest LIMIT 5'"
    say ".venv/bin/python deploy/local/cypher.py $PGFANOUT_TEST_NEO4J_URL 'MATCH (u:User)<-[:BOOKED_BY]-(r)-[:FOR]->(p) RETURN u.full_name, p.title LIMIT 5'"
    say "Ctrl-C to stop"
    while true; do
        if ! kill -0 "$PGFANOUT_PID" 2>/dev/null; then
            say "pgfanout exited; last lines of its log:"
            tail -n 30 "$STACK_DIR/pgfanout.log" >&2
            exit 1
        fi
        if ! kill -0 "$WORKLOAD_PID" 2>/dev/null; then
            say "the workload stopped; last lines of its log:"
            tail -n 30 "$STACK_DIR/workload.log" >&2
            exit 1
        fi
        # In the background, then `wait`: a Ctrl-C interrupts `wait` at once.
        # Run in the foreground, psql would catch the SIGINT itself and bash
        # would then ignore it (it assumes the program handled it).
        {
            sleep "$INTERVAL"
            status
        } &
        STATUS_PID=$!
        wait "$STATUS_PID" || true
        STATUS_PID=""
    done
}

main "$@"
