"""Static checks of what deploy/ and docs/ ship, run by deploy/check-deploy.sh.

Each check compares a deployment file or a doc with the source of truth in
the code, so they cannot drift apart unnoticed:

- compose, Kubernetes manifests, Dockerfile and systemd unit carry the
  fields an operator relies on (probes, secrets, users, hardening);
- the Grafana dashboard charts every metric family of
  crates/core/src/metrics.rs, and every metric a dashboard expression or an
  alert rule names exists there;
- docs/metrics.md describes every metric, docs/runbook.md every alert, and
  docs/configuration.md every key of every config struct (src/config.rs,
  crates/*/src/config.rs and the core's mapping/delivery structs).

Usage: python deploy/check_deploy.py  (from the repository root). Prints one
line per problem and exits 1 when there is any.
"""

import json
import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROBLEMS = []


def problem(where, what):
    PROBLEMS.append(f"{where}: {what}")


def read(path):
    return (ROOT / path).read_text()


# ---------------------------------------------------------------------------
# What the code defines
# ---------------------------------------------------------------------------

def metric_families():
    """Metric name -> (type, labels) from crates/core/src/metrics.rs."""
    source = read("crates/core/src/metrics.rs")
    consts = dict(re.findall(r'pub const (\w+): &str = "(pgfanout_\w+)";', source))
    if len(consts) < 10:
        problem("crates/core/src/metrics.rs", f"found only {len(consts)} metric constants; has the file's layout changed?")
    return consts


# Files whose `#[derive(... Deserialize ...)]` structs are config sections.
CONFIG_SOURCES = [
    "src/config.rs",
    "crates/source/src/config.rs",
    "src/discard.rs",
    "crates/core/src/delivery.rs",
    "crates/core/src/mapping.rs",
    "crates/core/src/streamed.rs",
    "crates/core/src/tls.rs",
    "crates/sink-redis/src/config.rs",
    "crates/sink-mongodb/src/config.rs",
    "crates/sink-scylla/src/config.rs",
    "crates/sink-graph/src/config.rs",
]


def config_keys():
    """(file, struct, key, doc) for every field a config file can set: the
    fields of the `Deserialize` structs, and of the struct-like variants of
    `Deserialize` enums (e.g. each dead-letter `kind`)."""
    keys = []
    item = re.compile(
        r"#\[derive\(([^)]*)\)\]\s*((?:#\[[^\]]*\]\s*)*)pub (struct|enum) (\w+)\s*\{(.*?)\n\}", re.S
    )
    for path in CONFIG_SOURCES:
        source = read(path)
        for match in item.finditer(source):
            derives, _, what, name, body = match.groups()
            if "Deserialize" not in derives:
                continue
            if what == "struct":
                keys.extend((path, name, key, doc) for key, doc in fields(body, r"pub (\w+):"))
            else:
                for variant, inner in re.findall(r"^    (\w+) \{(.*?)^    \}", body, re.S | re.M):
                    keys.extend((path, f"{name}::{variant}", key, doc) for key, doc in fields(inner, r"(\w+):"))
    return keys


def fields(body, pattern):
    """(key, first doc line) of each field in a struct body, by serde name."""
    found, attrs, doc = [], [], []
    for line in body.splitlines():
        line = line.strip()
        if line.startswith("///"):
            doc.append(line[3:].strip())
            continue
        if line.startswith("#["):
            attrs.append(line)
            continue
        field = re.match(pattern, line)
        if field:
            serde = " ".join(a for a in attrs if a.startswith("#[serde"))
            if not (re.search(r"\bskip\b", serde) or "flatten" in serde):
                renamed = re.search(r'rename = "(\w+)"', serde)
                text = " ".join(doc)
                found.append((renamed.group(1) if renamed else field.group(1), text))
        attrs, doc = [], []
    return found

# Where each config struct sits in the TOML file, for docs/configuration.md.
SECTIONS = {
    "Config": "Top level",
    "SourceConfig": "`[source]`",
    "HttpConfig": "`[http]`",
    "PipelineConfig": "`[pipeline]`",
    "ArchiveConfig": "`[archive]` (the change archive; off when absent)",
    "SnapshotConfig": "`[snapshot]`",
    "DeliveryConfig": "`[sink.delivery]` (every sink kind)",
    "DeadLetterConfig::File": '`[sink.delivery.dead_letter]` with `kind = "file"`',
    "DeadLetterConfig::Redis": '`[sink.delivery.dead_letter]` with `kind = "redis"`',
    "DeadLetterConfig::Postgres": '`[sink.delivery.dead_letter]` with `kind = "postgres"`',
    "MappingConfig": "Column mapping (in each sink kind's `[[sink.table]]`)",
    "RedisSinkConfig": '`[[sink]]` with `kind = "redis"`',
    "RedisTableConfig": '`[[sink.table]]` of a Redis sink',
    "MongoSinkConfig": '`[[sink]]` with `kind = "mongodb"`',
    "TypeOptions": "`[sink.types]` of a MongoDB sink",
    "MongoTableConfig": "`[[sink.table]]` of a MongoDB sink",
    "AggregateConfig": "`[[sink.table.aggregate]]` of a MongoDB sink",
    "ScyllaSinkConfig": '`[[sink]]` with `kind = "scylla"` (Cassandra, ScyllaDB)',
    "ScyllaTableConfig": "`[[sink.table]]` of a Scylla sink",
    "TargetTableConfig": "`[[sink.table.target]]` of a Scylla sink",
    "GraphSinkConfig": '`[[sink]]` with `kind = "graph"` (FalkorDB, Neo4j)',
    "GraphTableConfig": "`[[sink.table]]` of a graph sink",
    "ForeignKeyConfig": "`[[sink.table.relationships]]` of a graph sink",
    "JoinConfig": "`[sink.table.relationship]` of a graph sink",
    "EndpointConfig": "`from` / `to` of a graph relationship table",
    "DerivedConfig": "`[[sink.derived]]` of a graph sink",
    "DiscardSinkConfig": '`[[sink]]` with `kind = "discard"`',
    "DiscardTableConfig": "`[[sink.table]]` of a discard sink",
    "TlsConfig": "`[sink.tls]` (Redis, MongoDB, Scylla and graph sinks)",
}
GENERATED_MARK = "<!-- Generated from the config structs by `python deploy/check_deploy.py --write-config-docs`; CI fails when it is out of date. -->"


def config_reference():
    """The generated part of docs/configuration.md: one table per struct."""
    out = [GENERATED_MARK, ""]
    current = None
    for path, struct, key, doc in config_keys():
        if struct != current:
            if current is not None:
                out.append("")
            current = struct
            out += [f"### {SECTIONS.get(struct, struct)}", "", f"Source: `{path}` (`{struct}`).", "",
                    "| key | meaning |", "| --- | --- |"]
        out.append(f"| `{key}` | {doc.replace('|', chr(92) + '|')} |")
    return "\n".join(out) + "\n"


def check_config_docs():
    where = "docs/configuration.md"
    text = read(where)
    if GENERATED_MARK not in text:
        problem(where, "the generated reference is missing; run python deploy/check_deploy.py --write-config-docs")
        return
    if text[text.index(GENERATED_MARK):] != config_reference():
        problem(where, "out of date with the config structs; run python deploy/check_deploy.py --write-config-docs")
    for struct in {struct for _, struct, _, _ in config_keys()} - set(SECTIONS):
        problem("deploy/check_deploy.py", f"SECTIONS lacks {struct}: say where it sits in the TOML file")


# ---------------------------------------------------------------------------
# deploy/
# ---------------------------------------------------------------------------

def check_compose():
    where = "deploy/compose.yaml"
    compose = yaml.safe_load(read(where))
    services = compose.get("services", {})
    for name in ["postgres", "redis", "mongodb", "cassandra", "neo4j", "pgfanout", "prometheus", "grafana"]:
        if name not in services:
            problem(where, f"service {name} is missing")
            continue
        if "image" not in services[name] and "build" not in services[name]:
            problem(where, f"service {name} has neither image nor build")
    postgres = services.get("postgres", {})
    if "wal_level=logical" not in " ".join(map(str, postgres.get("command", []))):
        problem(where, "postgres does not run with wal_level=logical")
    pgfanout = services.get("pgfanout", {})
    if "9187:9187" not in pgfanout.get("ports", []):
        problem(where, "pgfanout does not publish its metrics port 9187")
    if not any("PASSWORD" in key for key in pgfanout.get("environment", {})):
        problem(where, "pgfanout gets no password from the environment")
    for name, service in services.items():
        for volume in service.get("volumes", []):
            host = volume.split(":")[0]
            if host.startswith("."):
                if not (ROOT / "deploy" / host).exists():
                    problem(where, f"service {name} mounts {host}, which does not exist")
            elif host not in compose.get("volumes", {}):
                problem(where, f"service {name} mounts volume {host}, which is not declared")
    pgfanout_config = read("deploy/compose/pgfanout.toml")
    for host in ["postgres:5432", "redis:6379", "mongodb:27017", "cassandra:9042", "neo4j:7687"]:
        if host not in pgfanout_config:
            problem("deploy/compose/pgfanout.toml", f"no sink or source uses the compose service {host}")
    demo = read("deploy/local/pgfanout.toml.in")
    for table in re.findall(r'source = "([\w.]+)"', demo):
        if f'source = "{table}"' not in pgfanout_config:
            problem("deploy/compose/pgfanout.toml", f"the demo's table {table} is not routed as in deploy/local/pgfanout.toml.in")


def pgfanout_container(doc, where):
    containers = doc["spec"]["template"]["spec"]["containers"]
    found = [c for c in containers if c.get("name") == "pgfanout"]
    if not found:
        problem(where, f"{doc['kind']} has no container named pgfanout")
        return None
    return found[0]


def check_kubernetes():
    docs = {}
    for path in sorted((ROOT / "deploy/kubernetes").glob("*.yaml")):
        where = str(path.relative_to(ROOT))
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            for field in ["apiVersion", "kind", "metadata"]:
                if field not in doc:
                    problem(where, f"a document lacks {field}")
            if "name" not in doc.get("metadata", {}):
                problem(where, f"{doc.get('kind')} lacks metadata.name")
            docs.setdefault(doc.get("kind"), []).append((where, doc))
    for kind in ["ConfigMap", "Deployment", "StatefulSet", "Service", "ServiceMonitor"]:
        if kind not in docs:
            problem("deploy/kubernetes", f"no {kind}")
    config_maps = {doc["metadata"]["name"] for _, doc in docs.get("ConfigMap", [])}
    for where, doc in docs.get("ConfigMap", []):
        if "pgfanout.toml" not in doc.get("data", {}):
            problem(where, "the ConfigMap has no pgfanout.toml")
    for where, doc in docs.get("Deployment", []):
        if doc["spec"].get("replicas") != 1:
            problem(where, "the Deployment must have exactly 1 replica (one reader per slot)")
        if doc["spec"].get("strategy", {}).get("type") != "Recreate":
            problem(where, "the Deployment's strategy must be Recreate (the old pod must release the slot first)")
    for where, doc in docs.get("Deployment", []) + docs.get("StatefulSet", []):
        pod = doc["spec"]["template"]
        annotations = pod.get("metadata", {}).get("annotations", {})
        if annotations.get("prometheus.io/scrape") != "true" or annotations.get("prometheus.io/port") != "9187":
            problem(where, "the pod lacks prometheus.io/scrape and prometheus.io/port annotations")
        container = pgfanout_container(doc, where)
        if container is None:
            continue
        for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
            if container.get(probe, {}).get("httpGet", {}).get("path") != path:
                problem(where, f"pgfanout's {probe} is not an httpGet on {path}")
        resources = container.get("resources", {})
        if "requests" not in resources or "limits" not in resources:
            problem(where, "pgfanout's resources need requests and limits")
        env = container.get("env", [])
        if not any(e.get("valueFrom", {}).get("secretKeyRef") and e["name"] == "PGFANOUT_SOURCE__PASSWORD" for e in env):
            problem(where, "PGFANOUT_SOURCE__PASSWORD must come from a Secret (secretKeyRef)")
        if not container.get("securityContext", {}).get("runAsNonRoot"):
            problem(where, "pgfanout must run as non-root (securityContext.runAsNonRoot)")
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            if mount["name"] not in volumes and mount["name"] not in [
                t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])
            ]:
                problem(where, f"volumeMount {mount['name']} has no volume")
        for volume in volumes.values():
            name = volume.get("configMap", {}).get("name")
            if name and name not in config_maps:
                problem(where, f"volume {volume['name']} refers to ConfigMap {name}, which is not defined")
        if not any(m.get("mountPath") == "/etc/pgfanout" for m in container.get("volumeMounts", [])):
            problem(where, "the config is not mounted at /etc/pgfanout (the image's --config path)")
    for where, doc in docs.get("ServiceMonitor", []):
        if not any(e.get("port") == "metrics" for e in doc["spec"].get("endpoints", [])):
            problem(where, "the ServiceMonitor does not scrape the port named metrics")


def check_dockerfile():
    where = "Dockerfile"
    text = read(where)
    if len(re.findall(r"^FROM ", text, re.M)) < 2:
        problem(where, "not a multi-stage build")
    user = re.findall(r"^USER (\S+)", text, re.M)
    if not user or user[-1].split(":")[0] in ("root", "0"):
        problem(where, "the runtime stage must switch to a non-root USER")
    if not re.search(r"^HEALTHCHECK .*/healthz", text, re.M | re.S):
        problem(where, "no HEALTHCHECK on /healthz")
    if not re.search(r"^EXPOSE 9187", text, re.M):
        problem(where, "the metrics port 9187 is not EXPOSEd")


def check_systemd():
    where = "deploy/systemd/pgfanout.service"
    text = read(where)
    for setting in ["ProtectSystem=strict", "StateDirectory=", "EnvironmentFile=", "Restart=", "NoNewPrivileges=yes"]:
        if not re.search(rf"^{re.escape(setting)}", text, re.M):
            problem(where, f"{setting} is missing")
    if not re.search(r"^(DynamicUser=yes|User=\w+)", text, re.M):
        problem(where, "the service must run as a dynamic or dedicated user")


def expression_metrics(expr):
    names = set()
    for name in re.findall(r"\bpgfanout_\w+", expr):
        names.add(re.sub(r"_(bucket|sum|count)$", "", name))
    return names


def check_dashboard_and_rules(families):
    known = set(families.values())
    where = "deploy/grafana/pgfanout.json"
    dashboard = json.loads(read(where))
    used = set()
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            for name in expression_metrics(target.get("expr", "")):
                used.add(name)
                if name not in known:
                    problem(where, f"panel '{panel.get('title')}' uses {name}, which pgfanout does not export")
    for name in sorted(known - used):
        problem(where, f"no panel charts {name}")
    where = "deploy/prometheus/pgfanout.rules.yml"
    rules = yaml.safe_load(read(where))
    alerts = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            alerts.append(rule["alert"])
            for name in expression_metrics(rule["expr"]):
                if name not in known:
                    problem(where, f"alert {rule['alert']} uses {name}, which pgfanout does not export")
            if not rule.get("annotations", {}).get("runbook_url", "").startswith("docs/runbook.md#"):
                problem(where, f"alert {rule['alert']} has no runbook_url into docs/runbook.md")
    return alerts


# ---------------------------------------------------------------------------
# docs/
# ---------------------------------------------------------------------------

def check_docs(families, alerts):
    metrics_doc = read("docs/metrics.md")
    for name in families.values():
        row = re.search(rf"^\|\s*`{name}`\s*\|\s*(counter|gauge|histogram)\s*\|", metrics_doc, re.M)
        if not row:
            problem("docs/metrics.md", f"no table row `{name}` | counter/gauge/histogram | ...")
    for name in set(re.findall(r"`(pgfanout_\w+)`", metrics_doc)) - set(families.values()):
        problem("docs/metrics.md", f"describes {name}, which pgfanout does not export")
    runbook = read("docs/runbook.md")
    for alert in alerts:
        if not re.search(rf"^## {alert}$", runbook, re.M):
            problem("docs/runbook.md", f"no section '## {alert}'")
    check_config_docs()
    readme = read("README.md")
    for doc in ["docs/install.md", "docs/configuration.md", "docs/metrics.md", "docs/runbook.md"]:
        if doc not in readme:
            problem("README.md", f"does not link {doc}")


def main():
    if sys.argv[1:] == ["--write-config-docs"]:
        path = ROOT / "docs/configuration.md"
        text = path.read_text() if path.exists() else ""
        head = text[: text.index(GENERATED_MARK)] if GENERATED_MARK in text else text
        path.write_text(head + config_reference())
        return 0
    families = metric_families()
    check_compose()
    check_kubernetes()
    check_dockerfile()
    check_systemd()
    alerts = check_dashboard_and_rules(families)
    check_docs(families, alerts)
    for line in PROBLEMS:
        print(f"problem: {line}")
    if PROBLEMS:
        print(f"{len(PROBLEMS)} problems in deploy/ or docs/", file=sys.stderr)
        return 1
    print(f"deploy and docs checks: {len(families)} metrics, {len(alerts)} alerts, {len(config_keys())} config keys covered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
