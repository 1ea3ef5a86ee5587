# shellcheck shell=bash
# Shared by the benchmarks that race pgfanout against pg_recvlogical (sourced,
# not run): psql on the stack's socket, the two transports' connection
# strings, and the release binary.
#
# Expects PG_BIN, SOCKET_DIR, PORT, DB, REPO_ROOT and log/die to be set;
# SSLMODE (libpq's default, prefer, when unset) applies to TCP.

# sql DB SQL...: psql on the unix socket as postgres, unaligned, quiet.
sql() {
    local db=$1
    shift
    "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$SOCKET_DIR" -p "$PORT" -U postgres -d "$db" -c "$@"
}

# conninfo unix|tcp: the libpq connection string for DB over that transport.
conninfo() {
    case $1 in
    unix) echo "host=$SOCKET_DIR port=$PORT user=postgres dbname=$DB" ;;
    tcp) echo "host=127.0.0.1 port=$PORT user=postgres dbname=$DB sslmode=${SSLMODE:-prefer}" ;;
    *) die "unknown transport $1 (use unix or tcp)" ;;
    esac
}

# PGFANOUT_BIN: the given binary, else a release build of this checkout.
if [[ -z ${PGFANOUT_BIN:-} ]]; then
    log "building pgfanout (release)"
    cargo build --quiet --release --manifest-path "$REPO_ROOT/Cargo.toml" --bin pgfanout
    PGFANOUT_BIN="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/pgfanout"
fi
