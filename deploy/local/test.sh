#!/usr/bin/env bash
# Run the workspace's tests against a throwaway local stack (PostgreSQL 15,
# Redis, nx-27017, FalkorDB, Apache Cassandra, Neo4j), torn down afterwards
# whatever happens. The stack starts while the tests build: the JVM servers
# take half a minute, which the build hides.
#
#   deploy/local/test.sh [cargo test args...]
#
# PGFANOUT_KEEP_STACK=1 keeps the stack's folder (logs, data) after the run.
# PGFANOUT_TEST_TIMEOUT=N (seconds, default 2700) caps `cargo test`, build
# included, so a hung test fails the run with a message instead of eating
# CI's whole time budget.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STACK="$REPO_ROOT/deploy/local/stack.sh"
cd "$REPO_ROOT"

STACK_DIR=""
CARGO_PID=""
STACK_PID=""

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n $STACK_PID ]]; then wait "$STACK_PID" 2>/dev/null || true; fi
    # cargo runs in its own session (see below): end it and its test binaries.
    if [[ -n $CARGO_PID ]] && kill -0 "$CARGO_PID" 2>/dev/null; then
        kill -TERM -- "-$CARGO_PID" 2>/dev/null || true
        wait "$CARGO_PID" 2>/dev/null || true
    fi
    if [[ -n $STACK_DIR ]]; then
        "$STACK" stop "$STACK_DIR" || true
        if [[ ${PGFANOUT_KEEP_STACK:-0} == 1 ]]; then
            echo "[test] stack folder kept: $STACK_DIR" >&2
        else
            rm -rf "$STACK_DIR"
        fi
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

banner() {
    cat <<EOF
[test] local stack in $STACK_DIR
[test]   postgres  $PGFANOUT_TEST_PG_URL  (socket $PGFANOUT_TEST_PG_SOCKET_DIR)
[test]   redis     $PGFANOUT_TEST_REDIS_URL
[test]   mongodb   $PGFANOUT_TEST_MONGODB_URL  (nx-27017)
[test]   falkordb  $PGFANOUT_TEST_FALKORDB_URL  bolt $PGFANOUT_TEST_BOLT_URL
[test]   cassandra $PGFANOUT_TEST_CASSANDRA_NODES
[test]   neo4j     $PGFANOUT_TEST_NEO4J_URL
EOF
}

# run_cargo LIMIT ARGS...: cargo in the background, in its own session, so
# that a TERM sent to this script is handled at once (bash defers traps while
# a foreground child runs) and cleanup can end cargo's whole process group.
run_cargo() {
    local limit=$1 status=0
    shift
    setsid timeout --kill-after=30 "$limit" cargo "$@" </dev/null &
    CARGO_PID=$!
    wait "$CARGO_PID" || status=$?
    CARGO_PID=""
    return "$status"
}

main() {
    "$STACK" install
    "$REPO_ROOT/deploy/check-deploy.sh" install
    STACK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/pgfanout-stack.XXXXXX")
    local started=$SECONDS limit=${PGFANOUT_TEST_TIMEOUT:-2700} status=0
    "$STACK" start "$STACK_DIR" &
    STACK_PID=$!
    # The build (the whole of it: `cargo test` below only runs) while the
    # stack boots.
    run_cargo "$limit" test --workspace --locked --no-run "$@" || status=$?
    local stack_status=0
    wait "$STACK_PID" || stack_status=$?
    STACK_PID=""
    if [[ $stack_status != 0 ]]; then
        echo "[test] the local stack did not start (logs in $STACK_DIR)" >&2
        return "$stack_status"
    fi
    echo "[test] build and stack start took $((SECONDS - started)) s" >&2
    if [[ $status == 0 ]]; then
        # shellcheck source=/dev/null
        source "$STACK_DIR/env"
        banner
        run_cargo "$limit" test --workspace --locked "$@" || status=$?
    fi
    if [[ $status == 124 || $status == 137 ]]; then
        echo "[test] cargo test did not finish within ${limit}s (PGFANOUT_TEST_TIMEOUT); stopped it" >&2
    fi
    ((status == 0)) || return "$status"
    # Deployment files, SQL scripts and docs, with the binary cargo just built.
    PGFANOUT_BIN="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug/pgfanout" "$REPO_ROOT/deploy/check-deploy.sh"
}

main "$@"
