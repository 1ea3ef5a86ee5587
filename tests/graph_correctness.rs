//! End to end: the graph sink stays exactly equal to PostgreSQL where the
//! order of changes across tables matters — PostgreSQL → pgfanout → FalkorDB
//! and Neo4j on the local stack (each scenario on both; tests/common/graph.rs).
//!
//! The model: `accounts` (text keys, whitespace and quotes included) and
//! `items` that point at an account (a real foreign key, cascading) and at a
//! `Tag` node that no table defines (a node that exists only while some
//! item's relationship needs it). The graph is read back as sorted lines and
//! compared with the same lines computed by SQL, node by node, so a stub
//! node left behind, a duplicate or a key changed by one byte shows up.

mod common;

use std::time::{Duration, Instant};

use common::graph::{Backend, GraphStore};
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

fn config(db: &TestDatabase, slot: &str, http: &str, store: &GraphStore, name: &str, lanes: usize) -> String {
    format!(
        r#"{source}
[[sink]]
name = "{name}"
kind = "graph"
{store}
[sink.delivery]
lanes = {lanes}
{TABLES}"#,
        source = source_config(db, slot, http),
        store = store.sink_lines(),
    )
}

async fn graph_state(store: &mut GraphStore) -> Vec<String> {
    let mut lines = Vec::new();
    for (what, query) in GRAPH_STATE {
        for row in store.rows(query).await {
            let cells: Vec<String> = row.iter().map(|cell| cell.json().to_string()).collect();
            lines.push(format!("{what} {}", cells.join(" ")));
        }
    }
    lines.sort();
    lines
}

/// The first cells of a query's rows as JSON text (strings quoted).
async fn json_rows(store: &mut GraphStore, query: &str) -> Vec<Vec<String>> {
    store.rows(query).await.iter().map(|row| row.iter().map(|cell| cell.json().to_string()).collect()).collect()
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
async fn wait_for_match(db: &TestDatabase, store: &mut GraphStore, pgfanout: &Pgfanout, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let expected = sql_state(db).await;
        let actual = graph_state(store).await;
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

/// A database with the schema and its publication, and a running pgfanout
/// on slot `name` writing graph `name` on `backend` with `lanes` lanes.
async fn start(backend: Backend, name: &str, lanes: usize) -> (TestDatabase, GraphStore, Pgfanout) {
    let db = create_database(name).await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    db.client.batch_execute(&format!("CREATE PUBLICATION {name} FOR TABLE accounts, items")).await.unwrap();
    let store = GraphStore::open(backend, name).await;
    let http = format!("127.0.0.1:{}", free_port());
    let pgfanout = Pgfanout::start(name, &config(&db, name, &http, &store, name, lanes), &http);
    wait_ready(&http).await;
    (db, store, pgfanout)
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
async fn falkordb_keys_with_whitespace_and_quotes_round_trip_and_delete_exactly() {
    keys_with_whitespace_and_quotes_round_trip_and_delete_exactly(Backend::FalkorDb, "e2e_graph_keys").await;
}

#[tokio::test]
async fn neo4j_keys_with_whitespace_and_quotes_round_trip_and_delete_exactly() {
    keys_with_whitespace_and_quotes_round_trip_and_delete_exactly(Backend::Neo4j, "e2e_graph_keys_neo4j").await;
}

async fn keys_with_whitespace_and_quotes_round_trip_and_delete_exactly(backend: Backend, name: &str) {
    let (db, mut store, pgfanout) = start(backend, name, 1).await;
    for (i, key) in UNUSUAL_KEYS.iter().enumerate() {
        let name = format!("{key}/name");
        db.client.execute("INSERT INTO accounts VALUES ($1, $2)", &[key, &name]).await.unwrap();
        db.client.execute("INSERT INTO items VALUES ($1, $2, $3, $4)", &[&(i as i64), key, key, &name]).await.unwrap();
    }
    wait_for_match(&db, &mut store, &pgfanout, Duration::from_secs(30)).await;
    // Updates and deletes find each node by its exact key.
    db.client.batch_execute("UPDATE accounts SET name = 'renamed'; UPDATE items SET name = 'renamed'").await.unwrap();
    for (i, key) in UNUSUAL_KEYS.iter().enumerate().filter(|(i, _)| i % 3 != 2) {
        if i % 2 == 0 {
            db.client.execute("DELETE FROM accounts WHERE id = $1", &[key]).await.unwrap();
        } else {
            db.client.execute("DELETE FROM items WHERE id = $1", &[&(i as i64)]).await.unwrap();
        }
    }
    wait_for_match(&db, &mut store, &pgfanout, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn falkordb_deleted_accounts_never_come_back_as_stub_nodes() {
    deleted_accounts_never_come_back_as_stub_nodes(Backend::FalkorDb, "e2e_graph_stubs").await;
}

#[tokio::test]
async fn neo4j_deleted_accounts_never_come_back_as_stub_nodes() {
    deleted_accounts_never_come_back_as_stub_nodes(Backend::Neo4j, "e2e_graph_stubs_neo4j").await;
}

async fn deleted_accounts_never_come_back_as_stub_nodes(backend: Backend, name: &str) {
    let (db, mut store, pgfanout) = start(backend, name, 1).await;
    // (a) Three auto-committed statements per account; the account's insert
    // is in the graph before the other two, which then tend to share a batch.
    for account in 0..20i64 {
        let key = format!("a{account}");
        db.client.execute("INSERT INTO accounts VALUES ($1, 'x')", &[&key]).await.unwrap();
        let query = format!("MATCH (n:Account {{id: 'a{account}'}}) RETURN n.name");
        let deadline = Instant::now() + Duration::from_secs(20);
        while store.rows(&query).await.is_empty() {
            assert!(Instant::now() < deadline, "account a{account} never reached the graph");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        db.client.execute("INSERT INTO items VALUES ($1, $2, 't', 'i')", &[&account, &key]).await.unwrap();
        db.client.execute("DELETE FROM accounts WHERE id = $1", &[&key]).await.unwrap();
    }
    wait_for_match(&db, &mut store, &pgfanout, Duration::from_secs(30)).await;
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
    wait_for_match(&db, &mut store, &pgfanout, Duration::from_secs(30)).await;
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
    wait_for_match(&db, &mut store, &pgfanout, Duration::from_secs(30)).await;
    let tags = json_rows(&mut store, "MATCH (t:Tag) RETURN t.name ORDER BY t.name").await;
    assert_eq!(tags, vec![vec!["\"kept\"".to_owned()]], "only the tag a relationship needs is left");
}

#[tokio::test]
async fn falkordb_four_lanes_merging_few_targets_make_one_node_per_key() {
    four_lanes_merging_few_targets_make_one_node_per_key(Backend::FalkorDb, "e2e_graph_lanes").await;
}

/// On Neo4j, lanes commit side by side. The lanes keep changes touching one
/// node together; the sink's uniqueness constraints on node keys are what
/// make two writers merging one key at once (a second instance, a key the
/// lane keys missed) find one node: the second `MERGE` waits for the first
/// transaction's commit instead of creating its own node.
#[tokio::test]
async fn neo4j_four_lanes_merging_few_targets_make_one_node_per_key() {
    four_lanes_merging_few_targets_make_one_node_per_key(Backend::Neo4j, "e2e_graph_lanes_neo4j").await;
    let store = GraphStore::open(Backend::Neo4j, "e2e_graph_lanes_neo4j").await;
    let neo4j = store.neo4j.as_ref().unwrap();
    let mut constraints = Vec::new();
    let mut rows = neo4j
        .execute(neo4rs::query(
            "SHOW CONSTRAINTS YIELD type, labelsOrTypes, properties \
             WHERE type = 'UNIQUENESS' RETURN labelsOrTypes[0] + ' ' + properties[0] AS key",
        ))
        .await
        .unwrap();
    while let Some(row) = rows.next().await.unwrap() {
        constraints.push(row.get::<String>("key").unwrap());
    }
    for key in ["Account id", "Item id", "Tag name", "PgfanoutCheckpoint sink"] {
        assert!(constraints.iter().any(|known| known == key), "no uniqueness constraint on {key}: {constraints:?}");
    }
    // Two transactions merge one new Account key: the second is still
    // waiting while the first is open, and finds the first's node.
    let merge = "MERGE (n:Account {id: 'raced'})";
    let mut first = neo4j.start_txn().await.unwrap();
    first.run(neo4rs::query(merge)).await.unwrap();
    let second = {
        let neo4j = neo4j.clone();
        tokio::spawn(async move {
            let mut second = neo4j.start_txn().await.unwrap();
            second.run(neo4rs::query(merge)).await.unwrap();
            second.commit().await.unwrap();
        })
    };
    let waited = Instant::now();
    while !second.is_finished() && waited.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!second.is_finished(), "the second MERGE did not wait for the first transaction");
    first.commit().await.unwrap();
    second.await.unwrap();
    let mut store = store;
    let nodes = store.rows("MATCH (n:Account {id: 'raced'}) RETURN count(n)").await;
    assert_eq!(nodes[0][0].json(), serde_json::json!(1), "one node for the raced key");
}

async fn four_lanes_merging_few_targets_make_one_node_per_key(backend: Backend, name: &str) {
    let (db, mut store, pgfanout) = start(backend, name, 4).await;
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
    wait_for_match(&db, &mut store, &pgfanout, Duration::from_secs(60)).await;
    for (label, key) in [("Account", "id"), ("Tag", "name"), ("Item", "id")] {
        let counts = json_rows(
            &mut store,
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
async fn falkordb_a_random_workload_matches_sql_and_a_full_replay_changes_nothing() {
    a_random_workload_matches_sql_and_a_full_replay_changes_nothing(Backend::FalkorDb, "e2e_graph_random").await;
}

#[tokio::test]
async fn neo4j_a_random_workload_matches_sql_and_a_full_replay_changes_nothing() {
    a_random_workload_matches_sql_and_a_full_replay_changes_nothing(Backend::Neo4j, "e2e_graph_random_neo4j").await;
}

async fn a_random_workload_matches_sql_and_a_full_replay_changes_nothing(backend: Backend, name: &str) {
    const SEED: u64 = 0x5EED_0011;
    const OPERATIONS: usize = 3000;
    let db = create_database(name).await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    db.client.batch_execute(&format!("CREATE PUBLICATION {name} FOR TABLE accounts, items")).await.unwrap();
    // A second slot made before any change replays the whole history later.
    let replay_slot = format!("{name}_replay");
    db.client
        .batch_execute(&format!("SELECT pg_create_logical_replication_slot('{replay_slot}', 'pgoutput')"))
        .await
        .unwrap();
    let mut store = GraphStore::open(backend, name).await;
    let http = format!("127.0.0.1:{}", free_port());
    let mut pgfanout = Pgfanout::start(name, &config(&db, name, &http, &store, name, 4), &http);
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
    wait_for_match(&db, &mut store, &pgfanout, Duration::from_secs(120)).await;
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
    store.rows("MATCH (c:PgfanoutCheckpoint) DELETE c").await;
    let replay = Pgfanout::start(&replay_slot, &config(&db, &replay_slot, &http, &store, name, 4), &http);
    wait_ready(&http).await;
    let end = db.current_wal_lsn().await;
    wait_until("the replay slot catches up", Duration::from_secs(120), || async {
        db.confirmed_flush_lsn(&replay_slot).await >= end
    })
    .await;
    let replayed = graph_state(&mut store).await;
    assert!(
        replayed == state,
        "after the replay: {}\nlog:\n{}",
        describe_difference(&state, &replayed),
        replay.log_text()
    );
}
