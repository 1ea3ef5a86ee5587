//! The table reader against a real PostgreSQL: every row, in key order,
//! chunk by chunk, and each row exactly as pgoutput streams its insert.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pg_replication::{ConnectOptions, ReplicationConnection};
use pgfanout_core::{Assembled, ChangeOp, Row, TableName, TableSchema, TransactionAssembler};
use pgfanout_snapshot::{ChunkLimits, Rows, SnapshotTable, TableReader};
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

/// A watermark-like statement for [`TableReader::read_after_mark`].
const MARK: &str = "SELECT pg_catalog.pg_logical_emit_message(false, 'reader-test', 'mark')::text AS lsn, \
                    pg_catalog.pg_current_xact_id() AS flushes_at_commit";

/// Whether the connection answers in step, outside any transaction: a read
/// that left a message unread or a transaction open would show here.
async fn assert_in_step(connection: &mut ReplicationConnection, round: usize) {
    let probe = format!("SELECT {round} AS round, now() = pg_catalog.statement_timestamp() AS outside");
    let answer = tokio::time::timeout(Duration::from_secs(20), connection.simple_query(&probe))
        .await
        .unwrap_or_else(|_| panic!("round {round}: the probe after the read hung"))
        .unwrap();
    assert_eq!(answer.get(0, "round"), Some(round.to_string().as_str()), "round {round}: answers out of step");
    assert_eq!(answer.get(0, "outside"), Some("t"), "round {round}: a transaction was left open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_after_a_mark_of_keys_ranges_and_chunks_stay_in_step_under_writes() {
    let (url, client) = fresh_database("snapshot_reader_marks").await;
    client
        .batch_execute(
            "CREATE TABLE item (id int PRIMARY KEY, qty int NOT NULL, note text);
             ALTER TABLE item ALTER COLUMN note SET STORAGE EXTERNAL;
             INSERT INTO item SELECT i, i % 97, CASE WHEN i % 50 = 0 THEN repeat(md5(i::text), 200) ELSE 'n' END
             FROM generate_series(1, 3000) i;",
        )
        .await
        .unwrap();
    // Partial updates (the TOASTed note left out), key moves, deletes and
    // inserts all along, as the snapshot test's writer does.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (writer_client, writer_connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
        tokio::spawn(writer_connection);
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut round = 0u32;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let id = (round * 7919) % 3000 + 1;
                let statement = match round % 4 {
                    0 => format!("UPDATE item SET qty = qty + 1 WHERE id = {}", (id / 50).max(1) * 50),
                    1 => format!("UPDATE item SET id = id + 100000 WHERE id = {id}"),
                    2 => format!("DELETE FROM item WHERE id = {id}"),
                    _ => format!("INSERT INTO item VALUES ({id}, 1, 'new') ON CONFLICT DO NOTHING"),
                };
                writer_client.batch_execute(&statement).await.unwrap();
            }
        })
    };

    let mut connection = ReplicationConnection::connect(&ConnectOptions::parse(&url).unwrap()).await.unwrap();
    let types = Arc::new(TypeRegistry::new());
    let table = SnapshotTable::describe(&mut connection, &TableName::parse("item"), None, types).await.unwrap();
    let reader = TableReader::new(table, ChunkLimits { rows: 40, bytes: usize::MAX });
    let key = |id: u32| vec![id.to_string()];
    for round in 0..300usize {
        let id = (round as u32 * 104_729) % 3100 + 1;
        let read = async {
            match round % 5 {
                0 => {
                    let after = key(id);
                    let chunk = reader
                        .read_after_mark(&mut connection, Rows::After(Some(&after)), MARK)
                        .await
                        .map_err(|err| err.to_string())?;
                    assert!(chunk.rows.len() <= 40);
                    for row in &chunk.rows {
                        assert!(reader.key_of(row).unwrap()[0].parse::<u32>().unwrap() > id, "round {round}");
                    }
                    Ok(())
                }
                1 => {
                    let (after, through) = (key(id), key(id + 60));
                    let rows = Rows::Range { after: Some(&after), through: &through };
                    let chunk =
                        reader.read_after_mark(&mut connection, rows, MARK).await.map_err(|err| err.to_string())?;
                    assert!(!chunk.more, "round {round}: a range read again is never `more`");
                    for row in &chunk.rows {
                        let read = reader.key_of(row).unwrap()[0].parse::<u32>().unwrap();
                        assert!(read > id && read <= id + 60, "round {round}: {read} outside the range");
                    }
                    Ok(())
                }
                // Keys that exist, moved away, were deleted or never were:
                // a COPY of few rows or none.
                2 | 3 => {
                    let keys = vec![key(id), key(id + 100_000), key(900_000 + id)];
                    let chunk = reader
                        .read_after_mark(&mut connection, Rows::Keys(&keys), MARK)
                        .await
                        .map_err(|err| err.to_string())?;
                    assert!(!chunk.more);
                    for row in &chunk.rows {
                        assert!(keys.contains(&reader.key_of(row).unwrap()), "round {round}: a key not asked for");
                    }
                    Ok(())
                }
                // A mark that fails: the read's statements never run.
                _ => {
                    let keys = vec![key(id)];
                    let failed = reader.read_after_mark(&mut connection, Rows::Keys(&keys), "SELECT 1 / 0").await;
                    assert!(failed.is_err(), "round {round}: a failing mark fails the read");
                    Ok::<_, String>(())
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the read hung"))
            .unwrap_or_else(|err| panic!("round {round}: {err}"));
        assert_in_step(&mut connection, round).await;
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    connection.close().await.unwrap();
}

/// A re-read of many keys is a query of megabytes: over TLS (the default
/// `sslmode=prefer` takes it when the server offers it) its tail must not
/// stay in the client's TLS buffer while the client waits for the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_read_of_many_keys_is_sent_whole_and_answered() {
    let (url, client) = fresh_database("snapshot_reader_many_keys").await;
    client
        .batch_execute("CREATE TABLE item (id int PRIMARY KEY, note text); INSERT INTO item SELECT i, 'n' || i FROM generate_series(1, 1000) i;")
        .await
        .unwrap();
    let mut connection = ReplicationConnection::connect(&ConnectOptions::parse(&url).unwrap()).await.unwrap();
    let types = Arc::new(TypeRegistry::new());
    let table = SnapshotTable::describe(&mut connection, &TableName::parse("item"), None, types).await.unwrap();
    let reader = TableReader::new(table, ChunkLimits::default());
    for round in 0..5u32 {
        let keys: Vec<Vec<String>> = (1..=100_000u32).map(|id| vec![(id * 10 + round).to_string()]).collect();
        let read = async {
            reader.read_after_mark(&mut connection, Rows::Keys(&keys), MARK).await.map_err(|err| err.to_string())
        };
        let chunk = tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the re-read of 100,000 keys hung"))
            .unwrap_or_else(|err| panic!("round {round}: {err}"));
        let expected = keys.iter().filter(|key| key[0].parse::<u32>().unwrap() <= 1000).count();
        assert_eq!(chunk.rows.len(), expected, "round {round}: every existing key asked for, once");
        assert_in_step(&mut connection, round as usize).await;
    }
}
