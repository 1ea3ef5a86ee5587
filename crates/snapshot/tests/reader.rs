//! The table reader against a real PostgreSQL: every row, in key order,
//! chunk by chunk, and each row exactly as pgoutput streams its insert.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use pg_replication::{ConnectOptions, ReplicationConnection};
use pgfanout_core::{Assembled, ChangeOp, Row, TableName, TableSchema, TransactionAssembler};
use pgfanout_snapshot::{ChunkLimits, SnapshotTable, TableReader};
use pgoutput::TypeRegistry;
use tokio_postgres::{Client, NoTls};

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the tests with `make test`"))
}

/// A fresh database and a superuser SQL client connected to it.
async fn fresh_database(name: &str) -> (String, Client) {
    let admin_url = required_env("PGFANOUT_TEST_PG_URL");
    let (admin, connection) = tokio_postgres::connect(&admin_url, NoTls).await.unwrap();
    tokio::spawn(connection);
    admin
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active",
            &[&name],
        )
        .await
        .unwrap();
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    let url = format!("{}/{name}", admin_url.rsplit_once('/').unwrap().0);
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    (url, client)
}

const SCHEMA: &str = "
    CREATE TYPE mood AS ENUM ('calm', 'busy');
    CREATE TABLE line_item (
        order_id bigint, line text, amount numeric(12,3), attrs jsonb, tags text[], mood mood,
        seen timestamptz, note text, PRIMARY KEY (order_id, line));
    CREATE TABLE doc (id int PRIMARY KEY, body text, raw bytea);
    CREATE TABLE event (id int, day date, kind text, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
    CREATE TABLE event_a PARTITION OF event FOR VALUES FROM ('2020-01-01') TO ('2025-01-01');
    CREATE TABLE event_b PARTITION OF event FOR VALUES FROM ('2025-01-01') TO ('2030-01-01');
    CREATE PUBLICATION reader_pub FOR TABLE line_item, doc, event WITH (publish_via_partition_root = true);
";

const ROWS: &str = "
    INSERT INTO line_item SELECT i / 3,
        'l-' || (i % 3) || CASE WHEN i % 5 = 0 THEN ' ü''x' WHEN i % 11 = 0 THEN E'\\t\\\\' ELSE '' END,
        i * 1.125, jsonb_build_object('i', i, 'nested', jsonb_build_array(i, 'x')),
        ARRAY['a' || i, NULL, 'q\"uote'], CASE WHEN i % 2 = 0 THEN 'calm' ELSE 'busy' END::mood,
        '2024-02-29 12:00:00+00'::timestamptz + i * interval '1 minute', CASE WHEN i % 7 = 0 THEN NULL
        WHEN i % 7 = 1 THEN E'tab\\tnew\\nline\\r\\\\N \\\\ \\x01 \\b' WHEN i % 7 = 2 THEN '\\N' ELSE 'n' END
        FROM generate_series(1, 200) i;
    INSERT INTO doc SELECT i, (SELECT string_agg(md5(i::text || g::text), '') FROM generate_series(1, 3000) g),
        decode(md5(i::text), 'hex') FROM generate_series(1, 6) i;
    INSERT INTO event SELECT i, DATE '2021-06-01' + i * 10, 'k' || i FROM generate_series(1, 300) i;
";

/// The inserts of every published table as pgoutput streams them.
async fn streamed_inserts(client: &Client) -> BTreeMap<TableName, (Arc<TableSchema>, Vec<Row>)> {
    let rows = client
        .query(
            "SELECT data FROM pg_logical_slot_get_binary_changes('reader_slot', NULL, NULL, 'proto_version', '1', \
             'publication_names', 'reader_pub')",
            &[],
        )
        .await
        .unwrap();
    let mut decoder = pgoutput::Decoder::new(1);
    let mut assembler = TransactionAssembler::new();
    let mut inserts: BTreeMap<TableName, (Arc<TableSchema>, Vec<Row>)> = BTreeMap::new();
    for row in rows {
        let message = decoder.decode(Bytes::from(row.get::<_, Vec<u8>>(0))).unwrap();
        let changes = match assembler.push(message).unwrap() {
            Assembled::Committed(transaction) => transaction.changes,
            Assembled::CommittedInPieces(_, mut pieces) => {
                let mut changes = Vec::new();
                loop {
                    let piece = pieces.next_piece(usize::MAX, usize::MAX).unwrap();
                    if piece.is_empty() {
                        break changes;
                    }
                    changes.extend(piece);
                }
            }
            Assembled::Pending => Vec::new(),
        };
        {
            for change in changes {
                let ChangeOp::Insert { new } = change.op else { panic!("only inserts were made") };
                inserts
                    .entry(change.table.table.clone())
                    .or_insert_with(|| (change.table.clone(), Vec::new()))
                    .1
                    .push(new);
            }
        }
    }
    inserts
}

#[tokio::test]
async fn chunks_hold_every_row_in_key_order_exactly_as_streamed_inserts() {
    let (url, client) = fresh_database("snapshot_reader").await;
    client.batch_execute(SCHEMA).await.unwrap();
    client.batch_execute("SELECT pg_create_logical_replication_slot('reader_slot', 'pgoutput')").await.unwrap();
    // Decoding reads only flushed WAL: commit synchronously so every insert is there.
    client.batch_execute("SET synchronous_commit = on").await.unwrap();
    for statement in ROWS.split(';').filter(|statement| !statement.trim().is_empty()) {
        client.batch_execute(statement).await.unwrap();
    }
    let streamed = streamed_inserts(&client).await;
    assert_eq!(streamed.len(), 3, "the three tables were streamed");

    let mut connection = ReplicationConnection::connect(&ConnectOptions::parse(&url).unwrap()).await.unwrap();
    let types = Arc::new(TypeRegistry::new());
    for limits in [ChunkLimits { rows: 7, bytes: usize::MAX }, ChunkLimits { rows: 1000, bytes: 150_000 }] {
        for (table, (stream_schema, stream_rows)) in &streamed {
            let described =
                SnapshotTable::describe(&mut connection, table, Some("reader_pub"), types.clone()).await.unwrap();
            assert_eq!(described.schema.oid, stream_schema.oid, "{table}: relation oid");
            assert_eq!(described.schema.columns, stream_schema.columns, "{table}: columns as pgoutput sends them");
            assert_eq!(described.schema.replica_identity, stream_schema.replica_identity);
            let reader = TableReader::new(described, limits);
            let mut after = None;
            let mut read: Vec<Row> = Vec::new();
            let mut chunks = 0;
            loop {
                let chunk = reader.read_chunk(&mut connection, after.as_deref()).await.unwrap();
                chunks += 1;
                assert!(chunk.rows.len() <= limits.rows);
                read.extend(chunk.rows);
                after = chunk.last_key.or(after);
                if !chunk.more {
                    break;
                }
            }
            let mut expected = stream_rows.clone();
            expected.sort_by_key(|row| reader.key_of(row).map(|key| sort_key(table, &key)));
            let keys: Vec<_> = read.iter().map(|row| sort_key(table, &reader.key_of(row).unwrap())).collect();
            assert!(keys.windows(2).all(|pair| pair[0] < pair[1]), "{table}: rows in strictly increasing key order");
            assert_eq!(read.len(), expected.len(), "{table}: every row read once");
            assert_eq!(read, expected, "{table}: each row as its streamed insert");
            assert!(chunks >= expected.len().div_ceil(limits.rows), "{table}: {chunks} chunks");
        }
    }
    // The byte limit cuts chunks: each doc row holds ~96 kB of text.
    let doc = SnapshotTable::describe(&mut connection, &TableName::parse("doc"), None, types.clone()).await.unwrap();
    let reader = TableReader::new(doc, ChunkLimits { rows: 1000, bytes: 150_000 });
    let first = reader.read_chunk(&mut connection, None).await.unwrap();
    assert_eq!(first.rows.len(), 2, "the row crossing the byte limit ends the chunk");
    assert!(first.more);
    assert_eq!(first.last_key, Some(vec!["2".to_owned()]));
    connection.close().await.unwrap();
}

#[tokio::test]
async fn a_table_without_key_or_missing_is_refused_with_the_fix() {
    let (url, client) = fresh_database("snapshot_reader_refusals").await;
    client.batch_execute("CREATE TABLE loose (a int)").await.unwrap();
    let mut connection = ReplicationConnection::connect(&ConnectOptions::parse(&url).unwrap()).await.unwrap();
    let types = Arc::new(TypeRegistry::new());
    let err =
        SnapshotTable::describe(&mut connection, &TableName::parse("loose"), None, types.clone()).await.unwrap_err();
    assert!(err.to_string().contains("ADD PRIMARY KEY"), "{err}");
    let err = SnapshotTable::describe(&mut connection, &TableName::parse("absent"), None, types).await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

/// A key's sort order as PostgreSQL orders it for these tables (numbers as
/// numbers, text in the database's collation for plain ASCII-led text).
fn sort_key(table: &TableName, key: &[String]) -> (i64, String) {
    let first = key[0].parse::<i64>().unwrap();
    let second = if table.name == "event" { key[1].clone() } else { key.get(1).cloned().unwrap_or_default() };
    (first, second)
}
