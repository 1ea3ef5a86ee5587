#!/usr/bin/env bash
# Checks what deploy/, sql/ and docs/ ship, with the tools each format has:
#
#   hadolint                 Dockerfile
#   deploy/check_deploy.py   compose and Kubernetes required fields, the
#                            dashboard and alert rules against metrics.rs,
#                            docs against metrics, alerts and config structs
#   promtool                 scrape config, alert rules, and their unit tests
#   systemd-analyze verify   the systemd unit
#
# With a local stack (PGFANOUT_TEST_* from `stack.sh start`) and PGFANOUT_BIN
# (the built binary), also: sql/pgfanout_role.sql and pgfanout_publication.sql
# applied twice (idempotent), then the binary run as an unprivileged user with
# the image's arguments, config layout and environment, as that role:
# `pgfanout check` must pass.
#
#   deploy/check-deploy.sh install    install the tools (apt, .venv)
#   deploy/check-deploy.sh            run the checks
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$REPO_ROOT/.venv"
PG_BIN=/usr/lib/postgresql/15/bin
cd "$REPO_ROOT"

log() { printf '[check-deploy] %s\n' "$*" >&2; }
die() {
    log "FAILED: $*"
    exit 1
}

as_root() {
    if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

install_tools() {
    local missing=()
    command -v promtool >/dev/null || missing+=(prometheus)
    command -v systemd-analyze >/dev/null || missing+=(systemd)
    command -v setpriv >/dev/null || missing+=(util-linux)
    if ((${#missing[@]})); then
        log "apt: installing ${missing[*]}"
        # policy-rc.d: the packages must not start a Prometheus server.
        local made_policy=0
        if [[ ! -e /usr/sbin/policy-rc.d ]]; then
            printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null &&
                as_root chmod 755 /usr/sbin/policy-rc.d && made_policy=1
        fi
        local rc=0
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
            rc=$?
        if [[ $made_policy == 1 ]]; then as_root rm -f /usr/sbin/policy-rc.d; fi
        ((rc == 0)) || die "apt-get install ${missing[*]} failed (exit $rc)"
    fi
    if [[ ! -x $VENV/bin/python ]]; then
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install --quiet -r deploy/requirements-check.txt
}

container_run() {
    local root bin cfg args status
    [[ -n ${PGFANOUT_TEST_PG_SOCKET_DIR:-} && -n ${PGFANOUT_BIN:-} ]] || {
        log "no local stack or PGFANOUT_BIN: skipping the least-privilege and container run"
        return 0
    }
    [[ $EUID -eq 0 ]] || {
        log "not root (cannot switch to nobody): skipping the least-privilege and container run"
        return 0
    }
    local psql=("$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PGFANOUT_TEST_PG_SOCKET_DIR" -p "$PGFANOUT_TEST_PG_PORT" -U postgres)
    local tables=public.users,public.reservations db=deploy_check_app
    "${psql[@]}" -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
    "${psql[@]}" -d "$db" -f sql/demo_schema.sql >/dev/null
    # The tables' owner is a plain role, not the superuser, as in production.
    "${psql[@]}" -d "$db" -c "DO \$\$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'deploy_check_owner') THEN CREATE ROLE deploy_check_owner; END IF; END\$\$" \
        -c "GRANT CREATE ON DATABASE $db TO deploy_check_owner" \
        -c "ALTER TABLE users OWNER TO deploy_check_owner" -c "ALTER TABLE reservations OWNER TO deploy_check_owner"
    local i
    for i in 1 2; do
        "${psql[@]}" -d "$db" -v role=deploy_check_pgfanout -v password=check-secret -v tables=$tables -f sql/pgfanout_role.sql >/dev/null
        "${psql[@]}" -d "$db" -c "SET ROLE deploy_check_owner" -v publication=pgfanout -v tables=$tables \
            -v full_identity=public.reservations -f sql/pgfanout_publication.sql >/dev/null
    done
    local role_row
    role_row=$("${psql[@]}" -d "$db" -Atc "SELECT rolsuper, rolreplication, rolcanlogin, has_table_privilege('deploy_check_pgfanout', 'public.users', 'SELECT'), has_table_privilege('deploy_check_pgfanout', 'public.properties', 'SELECT'), has_table_privilege('deploy_check_pgfanout', 'public.users', 'INSERT') FROM pg_roles WHERE rolname = 'deploy_check_pgfanout'")
    [[ $role_row == "f|t|t|t|f|f" ]] || die "sql/pgfanout_role.sql: role attributes/privileges are $role_row, want f|t|t|t|f|f (no superuser, replication, login, SELECT on listed tables only)"
    local published
    published=$("${psql[@]}" -d "$db" -Atc "SELECT string_agg(schemaname || '.' || tablename, ',' ORDER BY tablename) FROM pg_publication_tables WHERE pubname = 'pgfanout'")
    [[ $published == "public.reservations,public.users" ]] || die "sql/pgfanout_publication.sql: publication has '$published'"
    [[ $("${psql[@]}" -d "$db" -Atc "SELECT relreplident FROM pg_class WHERE oid = 'public.reservations'::regclass") == f ]] ||
        die "sql/pgfanout_publication.sql: full_identity did not set REPLICA IDENTITY FULL"
    # The heartbeat needs no grant: the role can emit a logical message.
    PGPASSWORD=check-secret "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGFANOUT_TEST_PG_PORT" -U deploy_check_pgfanout -d "$db" \
        -c "SELECT pg_logical_emit_message(false, 'pgfanout', 'check')" >/dev/null ||
        die "the least-privilege role cannot call pg_logical_emit_message (heartbeat)"

    # The image's layout under a throwaway root, owned as in the image.
    root=$(mktemp -d "${TMPDIR:-/tmp}/pgfanout-image.XXXXXX")
    chmod 755 "$root"
    install -D -m 0755 "$PGFANOUT_BIN" "$root/usr/local/bin/pgfanout"
    install -d -m 0755 "$root/etc/pgfanout"
    install -d -o nobody -g nogroup -m 0750 "$root/var/lib/pgfanout" "$root/var/lib/pgfanout/spill"
    # The Kubernetes ConfigMap's config, pointed at the local stack.
    "$VENV/bin/python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["data"]["pgfanout.toml"])' \
        deploy/kubernetes/configmap.yaml |
        sed -e "s#postgres://pgfanout@postgres:5432/app#postgres://deploy_check_pgfanout@127.0.0.1:$PGFANOUT_TEST_PG_PORT/$db#" \
            -e "s#redis://redis:6379/0#$PGFANOUT_TEST_REDIS_URL/0#" >"$root/etc/pgfanout/pgfanout.toml"
    chmod 0644 "$root/etc/pgfanout/pgfanout.toml"
    # ENTRYPOINT + CMD and ENV of the Dockerfile, paths moved under the root.
    mapfile -t args < <("$VENV/bin/python" - "$root" <<'PY'
import json, re, sys
root = sys.argv[1]
text = open("Dockerfile").read().replace("\\\n", " ")
words = json.loads(re.findall(r"^ENTRYPOINT (.*)$", text, re.M)[-1]) + json.loads(re.findall(r"^CMD (.*)$", text, re.M)[-1])
env = re.findall(r"(PGFANOUT_\w+)=(\S+)", " ".join(re.findall(r"^ENV (.*)$", text, re.M)))
relocate = lambda s: re.sub(r"(?<![\w/])/(etc|usr|var)/", root + r"/\1/", s)
for key, value in env:
    print(f"{key}={relocate(value)}")
print("--")
for word in words:
    print(relocate(word))
PY
)
    local envs=() cmd=() seen=0 word
    for word in "${args[@]}"; do
        if [[ $word == -- ]]; then seen=1; elif ((seen)); then cmd+=("$word"); else envs+=("$word"); fi
    done
    # `run` becomes `check`: same arguments, but it returns.
    [[ ${cmd[1]} == run ]] || die "the image's CMD does not start with run: ${cmd[*]}"
    cmd[1]=check
    log "as nobody: ${cmd[*]}"
    status=0
    (cd "$root/var/lib/pgfanout" && setpriv --reuid=nobody --regid=nogroup --clear-groups \
        env -i PATH=/usr/bin:/bin "${envs[@]}" PGFANOUT_SOURCE__PASSWORD=check-secret "${cmd[@]}") \
        >"$root/check.out" 2>&1 || status=$?
    cat "$root/check.out" >&2
    [[ $status == 0 ]] || die "pgfanout check as nobody with the image's arguments exited $status"
    grep -q "check-secret" "$root/check.out" && die "the password appears in check's output"
    rm -rf "$root"
    "${psql[@]}" -d postgres -c "DROP DATABASE $db" >/dev/null
    log "ok: sql/ role and publication (twice), image-shaped check as nobody"
}

# The shipped configs load: `check` gets past loading them (its findings about
# unreachable hosts are expected here) and reports no config error.
configs_load() {
    [[ -n ${PGFANOUT_BIN:-} ]] || return 0
    local dir file out
    dir=$(mktemp -d)
    "$VENV/bin/python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["data"]["pgfanout.toml"])' \
        deploy/kubernetes/configmap.yaml >"$dir/configmap.toml"
    for file in deploy/compose/pgfanout.toml deploy/pgfanout.example.toml "$dir/configmap.toml"; do
        out=$(PGFANOUT_NEO4J_PASSWORD=unused timeout 120 "$PGFANOUT_BIN" --log-format json check --config "$file" 2>&1) || true
        if grep -q "invalid config" <<<"$out" || ! grep -qE "^(problem|ok):" <<<"$out"; then
            die "$file does not load: $out"
        fi
    done
    rm -rf "$dir"
    log "ok: shipped configs load"
}

main() {
    [[ ${1:-} == install ]] && {
        install_tools
        return
    }
    local py=$VENV/bin/python
    if [[ -n ${PGFANOUT_BIN:-} && ! -x ${PGFANOUT_BIN:-} ]]; then
        log "no binary at $PGFANOUT_BIN (tests narrowed?): the runs that need it are skipped"
        unset PGFANOUT_BIN
    fi
    [[ -x $VENV/bin/hadolint ]] || die "tools missing: run deploy/check-deploy.sh install"
    "$VENV/bin/hadolint" Dockerfile || die "hadolint Dockerfile"
    "$py" deploy/check_deploy.py || die "deploy/docs static checks"
    for file in deploy/compose.yaml deploy/kubernetes/*.yaml deploy/prometheus/scrape-kubernetes.yml; do
        "$py" -c 'import sys, yaml; list(yaml.safe_load_all(open(sys.argv[1])))' "$file" || die "YAML parse of $file"
    done
    promtool check config deploy/prometheus/prometheus.yml >/dev/null || die "promtool check config"
    promtool check rules deploy/prometheus/pgfanout.rules.yml >/dev/null || die "promtool check rules"
    promtool test rules deploy/prometheus/pgfanout.rules.test.yml || die "promtool test rules"
    if command -v systemd-analyze >/dev/null; then
        # verify wants the ExecStart binary to exist: point it at any executable.
        local unit out
        unit=$(mktemp -d)/pgfanout.service
        sed "s#/usr/local/bin/pgfanout#${PGFANOUT_BIN:-/bin/true}#g" deploy/systemd/pgfanout.service >"$unit"
        out=$(systemd-analyze verify "$unit" 2>&1) || die "systemd-analyze verify: $out"
        [[ -z $out ]] || die "systemd-analyze verify warns: $out"
        rm -rf "$(dirname "$unit")"
    else
        log "systemd-analyze not available: unit checked statically only"
    fi
    configs_load
    container_run
    log "all deploy checks passed"
}

main "$@"
