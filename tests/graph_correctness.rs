//! End to end: the graph sink stays exactly equal to PostgreSQL where the
//! order of changes across tables matters — PostgreSQL → pgfanout → FalkorDB
//! on the local stack.
//!
//! The model: `accounts` (text keys, whitespace and quotes included) and
//! `items` that point at an account (a real foreign key, cascading) and at a
//! `Tag` node that no table defines (a node that exists only while some
//! item's relationship needs it). The graph is read back as sorted lines and
//! compared with the same lines computed by SQL, node by node, so a stub
//! node left behind, a duplicate or a key changed by one byte shows up.

mod common;

use std::time::{Duration, Instant};

use common::*;

const SCHEMA: &str = "
CREATE TABLE accounts (id text PRIMARY KEY, name text);
CREATE TABLE items (
    id bigint PRIMARY KEY,
    account_id text REFERENCES accounts ON DELETE CASCADE ON UPDATE CASCADE,
    tag text,
    name text
);
";

const TABLES: &str = r#"
[[sink.table]]
source = "public.accounts"
label = "Account"

[[sink.table]]
source = "public.items"
label = "Item"
relationships = [
  { column = "account_id", type = "OWNED_BY", to = "Account" },
  { column = "tag", type = "TAGGED", to = "Tag", to_key = "name" },
]
"#;

/// Graph and SQL descriptions of the same state, one line per node or
/// relationship (strings `{:?}`-quoted, so whitespace is visible).
const GRAPH_STATE: [(&str, &str); 5] = [
    ("account", "MATCH (n:Account) RETURN n.id, n.name"),
    ("item", "MATCH (n:Item) RETURN n.id, n.name"),
    ("tag", "MATCH (n:Tag) RETURN n.name"),
    ("owned_by", "MATCH (a:Item)-[:OWNED_BY]->(b) RETURN a.id, b.id"),
    ("tagged", "MATCH (a:Item)-[:TAGGED]->(b) RETURN a.id, b.name"),
];
const SQL_STATE: [(&str, &str); 5] = [
    ("account", "SELECT to_jsonb(id)::text, to_jsonb(name)::text FROM accounts"),
    ("item", "SELECT to_jsonb(id)::text, to_jsonb(name)::text FROM items"),
    ("tag", "SELECT DISTINCT to_jsonb(tag)::text FROM items WHERE tag IS NOT NULL"),
    ("owned_by", "SELECT to_jsonb(id)::text, to_jsonb(account_id)::text FROM items WHERE account_id IS NOT NULL"),
    ("tagged", "SELECT to_jsonb(id)::text, to_jsonb(tag)::text FROM items WHERE tag IS NOT NULL"),
];

fn config(db: &TestDatabase, slot: &str, http: &str, url: &str, graph: &str, lanes: usize) -> String {
    format!(
        r#"{source}
[[sink]]
name = "{graph}"
kind = "graph"
transport = "falkordb"
url = "{url}"
graph = "{graph}"
[sink.delivery]
lanes = {lanes}
{TABLES}"#,
        source = source_config(db, slot, http),
    )
}

/// A value of a compact FalkorDB reply, as JSON (what `to_jsonb` prints).
fn cell_json(value: &redis::Value) -> serde_json::Value {
    use redis::Value as V;
    let V::Array(pair) = value else { panic!("compact cell expected, got {value:?}") };
    match (&pair[0], &pair[1]) {
        (V::Int(1), _) => serde_json::Value::Null,
        (V::Int(2), V::BulkString(bytes)) => {
            serde_json::Value::String(String::from_utf8(bytes.clone()).expect("FalkorDB returned invalid UTF-8"))
        }
        (V::Int(3), V::Int(i)) => serde_json::Value::from(*i),
        other => panic!("unexpected compact cell {other:?}"),
    }
}

async fn graph_rows(falkor: &mut redis::aio::MultiplexedConnection, graph: &str, query: &str) -> Vec<Vec<String>> {
    let reply: redis::Value =
        redis::cmd("GRAPH.QUERY").arg(graph).arg(query).arg("--compact").query_async(falkor).await.unwrap();
    let redis::Value::Array(parts) = reply else { panic!("unexpected reply {reply:?}") };
    if parts.len() < 3 {
        return Vec::new();
    }
    let redis::Value::Array(rows) = &parts[1] else { panic!("rows expected") };
    rows.iter()
        .map(|row| match row {
            redis::Value::Array(cells) => cells.iter().map(|cell| cell_json(cell).to_string()).collect(),
            other => panic!("row expected, got {other:?}"),
        })
        .collect()
}

async fn graph_state(falkor: &mut redis::aio::MultiplexedConnection, graph: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for (what, query) in GRAPH_STATE {
        for row in graph_rows(falkor, graph, query).await {
            lines.push(format!("{what} {}", row.join(" ")));
        }
    }
    lines.sort();
    lines
}

async fn sql_state(db: &TestDatabase) -> Vec<String> {
    let mut lines = Vec::new();
    for (what, sql) in SQL_STATE {
        for row in db.client.query(sql, &[]).await.unwrap() {
            // `to_jsonb(…)::text`, re-printed by serde_json as the graph side is.
            let cells: Vec<String> = (0..row.len())
                .map(|i| serde_json::from_str::<serde_json::Value>(row.get(i)).unwrap().to_string())
                .collect();
            lines.push(format!("{what} {}", cells.join(" ")));
        }
    }
    lines.sort();
    lines
}

/// Waits until the graph describes what PostgreSQL holds; on timeout fails
/// with the lines that differ.
async fn wait_for_match(
    db: &TestDatabase,
    falkor: &mut redis::aio::MultiplexedConnection,
    graph: &str,
    pgfanout: &Pgfanout,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let expected = sql_state(db).await;
        let actual = graph_state(falkor, graph).await;
        if expected == actual {
            return;
        }
        if Instant::now() > deadline {
            panic!("{}\nlog:\n{}", describe_difference(&expected, &actual), pgfanout.log_text());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The lines only one side has (each line counted, so duplicates show).
fn describe_difference(expected: &[String], actual: &[String]) -> String {
    let mut missing = expected.to_vec();
    let mut extra = Vec::new();
    for line in actual {
        match missing.iter().position(|known| known == line) {
            Some(position) => {
                missing.remove(position);
            }
            None => extra.push(line.clone()),
        }
    }
    format!("graph differs from SQL: missing {missing:#?}\nextra {extra:#?}")
}

/// A connection to FalkorDB that waits up to 10 s for a reply (the
/// driver's default of 0.5 s fails reads on a loaded machine while a batch runs).
async fn falkor_connection(url: &str) -> redis::aio::MultiplexedConnection {
    let settings = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&settings)
        .await
        .unwrap_or_else(|err| panic!("cannot reach FalkorDB at {url}: {err}"))
}

async fn fresh_graph(url: &str, graph: &str) -> redis::aio::MultiplexedConnection {
    let mut connection = falkor_connection(url).await;
    let _ = redis::cmd("GRAPH.DELETE").arg(graph).query_async::<redis::Value>(&mut connection).await;
    connection
}

/// A database with the schema and its publication, and a running pgfanout
/// on slot `name` writing graph `name` with `lanes` lanes.
async fn start(name: &str, lanes: usize) -> (TestDatabase, redis::aio::MultiplexedConnection, Pgfanout, String) {
    let db = create_database(name).await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    db.client.batch_execute(&format!("CREATE PUBLICATION {name} FOR TABLE accounts, items")).await.unwrap();
    let url = required_env("PGFANOUT_TEST_FALKORDB_URL");
    let falkor = fresh_graph(&url, name).await;
    let http = format!("127.0.0.1:{}", free_port());
    let pgfanout = Pgfanout::start(name, &config(&db, name, &http, &url, name, lanes), &http);
    wait_ready(&http).await;
    (db, falkor, pgfanout, url)
}

async fn wait_ready(http: &str) {
    wait_until("pgfanout streams", Duration::from_secs(30), || async { http_get(http, "/readyz").await.is_some() })
        .await;
}

/// Key texts that a literal, a trim or an escape would change.
const UNUSUAL_KEYS: [&str; 14] = [
    " tzä",
    "tzä ",
    "tzä",
    "  ",
    "\ttab\t",
    "line\nbreak\r\n",
    "it's",
    "back\\slash\\",
    "quote\"d",
    "`tick`",
    "$rows {x}",
    "\u{a0}nbsp\u{2003}",
    "✓ 𝄞",
    "\\'",
];

#[tokio::test]
async fn keys_with_whitespace_and_quotes_round_trip_and_delete_exactly() {
    let (db, mut falkor, pgfanout, _) = start("e2e_graph_keys", 1).await;
    for (i, key) in UNUSUAL_KEYS.iter().enumerate() {
        let name = format!("{key}/name");
        db.client.execute("INSERT INTO accounts VALUES ($1, $2)", &[key, &name]).await.unwrap();
        db.client.execute("INSERT INTO items VALUES ($1, $2, $3, $4)", &[&(i as i64), key, key, &name]).await.unwrap();
    }
    wait_for_match(&db, &mut falkor, "e2e_graph_keys", &pgfanout, Duration::from_secs(30)).await;
    // Updates and deletes find each node by its exact key.
    db.client.batch_execute("UPDATE accounts SET name = 'renamed'; UPDATE items SET name = 'renamed'").await.unwrap();
    for (i, key) in UNUSUAL_KEYS.iter().enumerate().filter(|(i, _)| i % 3 != 2) {
        if i % 2 == 0 {
            db.client.execute("DELETE FROM accounts WHERE id = $1", &[key]).await.unwrap();
        } else {
            db.client.execute("DELETE FROM items WHERE id = $1", &[&(i as i64)]).await.unwrap();
        }
    }
    wait_for_match(&db, &mut falkor, "e2e_graph_keys", &pgfanout, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn deleted_accounts_never_come_back_as_stub_nodes() {
    let (db, mut falkor, pgfanout, url) = start("e2e_graph_stubs", 1).await;
    let graph = "e2e_graph_stubs";
    let mut reader = falkor_connection(&url).await;
    // (a) Three auto-committed statements per account; the account's insert
    // is in the graph before the other two, which then tend to share a batch.
    for account in 0..20i64 {
        let key = format!("a{account}");
        db.client.execute("INSERT INTO accounts VALUES ($1, 'x')", &[&key]).await.unwrap();
        let query = format!("MATCH (n:Account {{id: 'a{account}'}}) RETURN n.name");
        let deadline = Instant::now() + Duration::from_secs(20);
        while graph_rows(&mut reader, graph, &query).await.is_empty() {
            assert!(Instant::now() < deadline, "account a{account} never reached the graph");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        db.client.execute("INSERT INTO items VALUES ($1, $2, 't', 'i')", &[&account, &key]).await.unwrap();
        db.client.execute("DELETE FROM accounts WHERE id = $1", &[&key]).await.unwrap();
    }
    wait_for_match(&db, &mut falkor, graph, &pgfanout, Duration::from_secs(30)).await;
    // (b) An item upsert and the delete of its account in one transaction.
    db.client
        .batch_execute(
            "INSERT INTO accounts VALUES ('b', 'x'); INSERT INTO items VALUES (100, 'b', 'u', 'i');
             BEGIN; UPDATE items SET name = 'changed' WHERE id = 100; DELETE FROM accounts WHERE id = 'b'; COMMIT;
             INSERT INTO accounts VALUES ('c', 'x'); INSERT INTO items VALUES (101, 'c', 'v', 'i');
             BEGIN; INSERT INTO items VALUES (102, 'c', 'v', 'i'); DELETE FROM items WHERE id = 101;
             DELETE FROM accounts WHERE id = 'c'; COMMIT",
        )
        .await
        .unwrap();
    wait_for_match(&db, &mut falkor, graph, &pgfanout, Duration::from_secs(30)).await;
    // A node that only relationships make (no table defines Tag) goes with
    // the last relationship that needs it, moved away or deleted.
    db.client
        .batch_execute(
            "INSERT INTO accounts VALUES ('d', 'x');
             INSERT INTO items VALUES (200, 'd', 'kept', 'i'), (201, 'd', 'moved', 'i'), (202, 'd', 'gone', 'i'),
                                      (203, 'd', 'kept', 'i');
             UPDATE items SET tag = 'kept' WHERE id = 201; DELETE FROM items WHERE id IN (202, 203)",
        )
        .await
        .unwrap();
    wait_for_match(&db, &mut falkor, graph, &pgfanout, Duration::from_secs(30)).await;
    let tags = graph_rows(&mut falkor, graph, "MATCH (t:Tag) RETURN t.name ORDER BY t.name").await;
    assert_eq!(tags, vec![vec!["\"kept\"".to_owned()]], "only the tag a relationship needs is left");
}

#[tokio::test]
async fn four_lanes_merging_few_targets_make_one_node_per_key() {
    let (db, mut falkor, pgfanout, _) = start("e2e_graph_lanes", 4).await;
    let graph = "e2e_graph_lanes";
    db.client.batch_execute("INSERT INTO accounts SELECT 'acc' || i, 'x' FROM generate_series(0, 2) i").await.unwrap();
    // Many small transactions in flight at once, most pointing at three
    // accounts and four tags, with the accounts deleted and re-created in
    // between: the lanes split each batch, and every change that touches a
    // node must still be applied in stream order.
    let mut sql = String::new();
    for round in 0..10i64 {
        for i in 0..60i64 {
            let id = round * 1000 + i;
            sql.push_str(&format!(
                "INSERT INTO items VALUES ({id}, 'acc{account}', 'tag{tag}', 'n{id}');",
                account = i % 3,
                tag = i % 4,
            ));
        }
        let account = round % 3;
        sql.push_str(&format!(
            "DELETE FROM accounts WHERE id = 'acc{account}'; INSERT INTO accounts VALUES ('acc{account}', 'r{round}');"
        ));
    }
    db.client.batch_execute(&sql).await.unwrap();
    wait_for_match(&db, &mut falkor, graph, &pgfanout, Duration::from_secs(60)).await;
    for (label, key) in [("Account", "id"), ("Tag", "name"), ("Item", "id")] {
        let counts = graph_rows(
            &mut falkor,
            graph,
            &format!("MATCH (n:{label}) WITH n.{key} AS key, count(n) AS nodes WHERE nodes > 1 RETURN key, nodes"),
        )
        .await;
        assert!(counts.is_empty(), "{label} keys with several nodes: {counts:?}");
    }
}

/// A small deterministic generator (SplitMix64), so a failing run can be
/// repeated with its seed.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One statement of the random workload, chosen from the generator; every
/// statement succeeds whatever the state (conditions instead of errors).
fn random_statement(random: &mut Random) -> (String, Vec<String>) {
    let keys: Vec<String> = ["tzä", "a", "b c", "it's", "x\\y", "é"]
        .iter()
        .flat_map(|base| ["", " ", "  ", "\t"].iter().map(move |pad| format!("{pad}{base}")))
        .chain(["tzä ", " tzä ", "a "].map(String::from))
        .collect();
    let mut key = || keys[random.below(keys.len() as u64) as usize].clone();
    let (k1, k2) = (key(), key());
    let item = random.below(300).to_string();
    let tag = ["red", " red", "blue", "green "][random.below(4) as usize].to_owned();
    let sql = match random.below(100) {
        0..=17 => "INSERT INTO accounts VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET name = excluded.name",
        18..=25 => "UPDATE accounts SET name = $2 || $1 WHERE id = $1",
        26..=32 => "DELETE FROM accounts WHERE id = $1 AND length($2) >= 0",
        // A primary key change, cascading to the items.
        33..=37 => "UPDATE accounts SET id = $2 WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM accounts WHERE id = $2)",
        38..=62 => {
            return (
                "INSERT INTO items SELECT $1::text::bigint, id, $3, $2 FROM accounts WHERE id = $2 \
                 ON CONFLICT (id) DO UPDATE SET account_id = excluded.account_id, tag = excluded.tag"
                    .into(),
                vec![item, k1, tag],
            )
        }
        63..=74 => {
            return (
                "UPDATE items SET account_id = $2 WHERE id = $1::text::bigint AND EXISTS (SELECT 1 FROM accounts WHERE id = $2)"
                    .into(),
                vec![item, k1],
            )
        }
        75..=80 => return ("UPDATE items SET tag = NULLIF($2, 'blue') WHERE id = $1::text::bigint".into(), vec![item, tag]),
        81..=84 => return ("UPDATE items SET account_id = NULL WHERE id = $1::text::bigint".into(), vec![item]),
        85..=89 => return ("UPDATE items SET name = $2 WHERE id = $1::text::bigint".into(), vec![item, k1]),
        _ => return ("DELETE FROM items WHERE id = $1::text::bigint".into(), vec![item]),
    };
    (sql.into(), vec![k1, k2])
}

#[tokio::test]
async fn a_random_workload_matches_sql_and_a_full_replay_changes_nothing() {
    const SEED: u64 = 0x5EED_0011;
    const OPERATIONS: usize = 3000;
    let db = create_database("e2e_graph_random").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    db.client.batch_execute("CREATE PUBLICATION e2e_graph_random FOR TABLE accounts, items").await.unwrap();
    // A second slot made before any change replays the whole history later.
    db.client
        .batch_execute("SELECT pg_create_logical_replication_slot('e2e_graph_random_replay', 'pgoutput')")
        .await
        .unwrap();
    let url = required_env("PGFANOUT_TEST_FALKORDB_URL");
    let graph = "e2e_graph_random";
    let mut falkor = fresh_graph(&url, graph).await;
    let http = format!("127.0.0.1:{}", free_port());
    let mut pgfanout = Pgfanout::start(graph, &config(&db, graph, &http, &url, graph, 4), &http);
    wait_ready(&http).await;

    let mut writer = connect(&db.url).await;
    let mut random = Random(SEED);
    let started = Instant::now();
    let mut done = 0;
    while done < OPERATIONS {
        // Transactions of one to five statements.
        let size = (1 + random.below(5) as usize).min(OPERATIONS - done);
        let transaction = writer.transaction().await.unwrap();
        for _ in 0..size {
            let (sql, args) = random_statement(&mut random);
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                args.iter().map(|arg| arg as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
            transaction.execute(sql.as_str(), &params).await.unwrap();
        }
        transaction.commit().await.unwrap();
        done += size;
    }
    wait_for_match(&db, &mut falkor, graph, &pgfanout, Duration::from_secs(120)).await;
    let state = sql_state(&db).await;
    eprintln!(
        "random workload (seed {SEED:#x}): {OPERATIONS} statements, {} graph lines, matched after {:?}",
        state.len(),
        started.elapsed()
    );
    assert!(state.iter().any(|line| line.starts_with("account \" ")), "the workload keeps whitespace keys");

    // Replay the whole history on the finished graph from the second slot.
    pgfanout.signal("TERM");
    assert_eq!(pgfanout.wait_exit(Duration::from_secs(15)).await, Some(0));
    graph_rows(&mut falkor, graph, "MATCH (c:PgfanoutCheckpoint) DELETE c").await;
    let replay = Pgfanout::start(
        "e2e_graph_random_replay",
        &config(&db, "e2e_graph_random_replay", &http, &url, graph, 4),
        &http,
    );
    wait_ready(&http).await;
    let end = db.current_wal_lsn().await;
    wait_until("the replay slot catches up", Duration::from_secs(120), || async {
        db.confirmed_flush_lsn("e2e_graph_random_replay").await >= end
    })
    .await;
    let replayed = graph_state(&mut falkor, graph).await;
    assert!(
        replayed == state,
        "after the replay: {}\nlog:\n{}",
        describe_difference(&state, &replayed),
        replay.log_text()
    );
}
