//! Slot creation options against the local stack's PostgreSQL 15: temporary
//! slots, exported and used snapshots (what an initial table copy relies
//! on), two-phase slots, and the slot state read back.

mod common;

use std::time::Duration;

use common::{admin, admin_url, database_with_table, wait_until};
use pg_replication::{
    ConnectOptions, ReplicationConnection, ReplicationEvent, SlotOptions, SnapshotAction, StartOptions, StreamSettings,
};
use pgoutput::{Decoder, Lsn, PgOutputMessage, TupleColumn};
use tokio_postgres::Client;

async fn replication_connection(database: &str) -> ReplicationConnection {
    ReplicationConnection::connect(&ConnectOptions::parse(&admin_url(database)).unwrap()).await.unwrap()
}

async fn slot_exists(slot: &str) -> bool {
    let row = admin("postgres")
        .await
        .query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
        .await
        .unwrap();
    row.get::<_, i64>(0) == 1
}

async fn ids(client: &Client) -> Vec<i32> {
    client.query("SELECT id FROM cities ORDER BY id", &[]).await.unwrap().iter().map(|row| row.get(0)).collect()
}

/// The ids a session sees after adopting the exported `snapshot`.
async fn ids_in_snapshot(client: &Client, snapshot: &str) -> Result<Vec<i32>, tokio_postgres::Error> {
    client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ").await?;
    let adopted = client.batch_execute(&format!("SET TRANSACTION SNAPSHOT '{snapshot}'")).await;
    let seen = match adopted {
        Ok(()) => Ok(ids(client).await),
        Err(err) => Err(err),
    };
    client.batch_execute("ROLLBACK").await.unwrap();
    seen
}

#[tokio::test]
async fn temporary_slot_disappears_when_its_connection_closes() {
    let slot = "slot_commands_temporary";
    let mut connection = replication_connection("postgres").await;
    let created = connection.create_slot_with(slot, &SlotOptions::new().temporary(true)).await.unwrap();
    assert_eq!(created.slot_name, slot);
    assert_eq!(created.snapshot_name, None, "no snapshot was asked for");
    let state = connection.slot_state(slot).await.unwrap().expect("the slot exists while the connection lives");
    assert!(state.temporary);
    assert!(!state.two_phase);
    assert_eq!(state.plugin.as_deref(), Some("pgoutput"));

    connection.close().await.unwrap();
    wait_until(Duration::from_secs(10), "the temporary slot is gone", || async { !slot_exists(slot).await }).await;
}

#[tokio::test]
async fn exported_snapshot_shows_exactly_what_precedes_the_slot() {
    let sql = database_with_table("slot_commands_export", "export_pub").await;
    sql.batch_execute("INSERT INTO cities VALUES (1, 'Lisbon')").await.unwrap();

    let mut replication = replication_connection("slot_commands_export").await;
    let created = replication
        .create_slot_with("export_slot", &SlotOptions::new().snapshot(SnapshotAction::Export))
        .await
        .unwrap();
    let snapshot = created.snapshot_name.clone().expect("EXPORT returns the snapshot's name");
    sql.batch_execute("INSERT INTO cities VALUES (2, 'Porto')").await.unwrap();

    // Another session adopting the snapshot sees the row from before the
    // slot and not the one after it; the table itself has both.
    let reader = admin("slot_commands_export").await;
    assert_eq!(ids_in_snapshot(&reader, &snapshot).await.unwrap(), [1]);
    assert_eq!(ids(&reader).await, [1, 2]);

    // The slot streams from the consistent point: row 2 only, so copy + stream
    // sees each row exactly once. START_REPLICATION is the next command on
    // the creating connection, which ends the export.
    let settings = StreamSettings { status_interval: Duration::from_secs(1), ..StreamSettings::default() };
    let mut stream = replication
        .start_replication("export_slot", created.consistent_point, &StartOptions::new("export_pub"), settings)
        .await
        .unwrap();
    let mut decoder = Decoder::new(1);
    let mut streamed = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), stream.next_event())
            .await
            .expect("the insert arrives")
            .unwrap()
            .expect("the stream stays open");
        let ReplicationEvent::XLogData { payload, .. } = event else { continue };
        match decoder.decode(payload).unwrap() {
            PgOutputMessage::Insert(insert) => match &insert.new_tuple.columns[0] {
                TupleColumn::Text(id) => streamed.push(String::from_utf8(id.to_vec()).unwrap()),
                other => panic!("expected a text column, got {other:?}"),
            },
            PgOutputMessage::Commit(_) => break,
            _ => {}
        }
    }
    assert_eq!(streamed, ["2"]);

    let err = ids_in_snapshot(&reader, &snapshot).await.expect_err("the export ended with the next command");
    assert_eq!(err.code().map(|c| c.code()), Some("22023"), "invalid snapshot identifier: {err}");
    stream.stop().await.unwrap();
    replication_connection("slot_commands_export").await.drop_slot("export_slot", true).await.unwrap();
}

#[tokio::test]
async fn used_snapshot_becomes_the_creating_transaction_snapshot() {
    let sql = database_with_table("slot_commands_use", "use_pub").await;
    sql.batch_execute("INSERT INTO cities VALUES (1, 'Braga')").await.unwrap();

    let mut replication = replication_connection("slot_commands_use").await;
    replication.simple_query("BEGIN ISOLATION LEVEL REPEATABLE READ").await.unwrap();
    let created =
        replication.create_slot_with("use_slot", &SlotOptions::new().snapshot(SnapshotAction::Use)).await.unwrap();
    assert_eq!(created.snapshot_name, None, "USE does not export");
    sql.batch_execute("INSERT INTO cities VALUES (2, 'Faro')").await.unwrap();

    let seen = replication.simple_query("SELECT id FROM cities ORDER BY id").await.unwrap();
    let seen: Vec<_> = seen.rows.iter().map(|row| row[0].clone().unwrap()).collect();
    assert_eq!(seen, ["1"], "the transaction reads as of the slot's consistent point");
    replication.simple_query("COMMIT").await.unwrap();
    replication.drop_slot("use_slot", true).await.unwrap();
}

#[tokio::test]
async fn two_phase_slot_reports_its_options() {
    let slot = "slot_commands_two_phase";
    let mut connection = replication_connection("postgres").await;
    if connection.slot_state(slot).await.unwrap().is_some() {
        connection.drop_slot(slot, true).await.unwrap();
    }
    let created = connection.create_slot_with(slot, &SlotOptions::new().two_phase(true)).await.unwrap();
    assert!(created.consistent_point > Lsn::ZERO);
    let state = connection.slot_state(slot).await.unwrap().unwrap();
    assert!(state.two_phase);
    assert!(!state.temporary);
    assert_eq!(state.slot_type, "logical");
    assert_eq!(state.wal_status.as_deref(), Some("reserved"));
    connection.drop_slot(slot, true).await.unwrap();
    assert_eq!(connection.slot_state(slot).await.unwrap(), None);
}
