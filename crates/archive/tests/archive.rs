//! The archive on a real file system: round trips, torn tails cut at every
//! byte offset, re-delivery archived once, seek, retention.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use pgfanout_archive::{Archive, ArchiveError, ArchiveOptions, ArchiveReader, FsyncPolicy, PieceHeader, Retention};
use pgfanout_core::{Change, ChangeOp, ColumnSchema, ColumnValue, TableName, TableSchema, Transaction};
use pgoutput::{Lsn, Oid, PgTimestamp, ReplicaIdentity, TypeRegistry, Xid};
use proptest::prelude::*;

fn table(name: &str, oid: u32) -> Arc<TableSchema> {
    Arc::new(TableSchema {
        oid: Oid(oid),
        table: TableName::new("public", name),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![
            ColumnSchema { name: "id".into(), type_oid: Oid(23), is_key: true },
            ColumnSchema { name: "note".into(), type_oid: Oid(25), is_key: false },
        ],
        types: Arc::new(TypeRegistry::new()),
    })
}

fn text(value: &str) -> ColumnValue {
    ColumnValue::Text(Bytes::copy_from_slice(value.as_bytes()))
}

/// Transaction `n`: commit LSN 1000·n, one insert per table of `tables`, an update and a delete.
fn transaction(n: u64, tables: &[Arc<TableSchema>]) -> Transaction {
    let mut changes = Vec::new();
    for table in tables {
        let id = text(&n.to_string());
        changes.push(Change {
            table: table.clone(),
            op: ChangeOp::Insert { new: vec![id.clone(), text("new")] },
            ordinal: 0,
        });
        changes.push(Change {
            table: table.clone(),
            op: ChangeOp::Update { old: None, new: vec![id.clone(), ColumnValue::UnchangedToast] },
            ordinal: 0,
        });
        changes.push(Change {
            table: table.clone(),
            op: ChangeOp::Delete { old: vec![id, ColumnValue::Null] },
            ordinal: 0,
        });
    }
    for (ordinal, change) in changes.iter_mut().enumerate() {
        change.ordinal = ordinal as u32 * 2;
    }
    Transaction {
        xid: Xid(n as u32),
        commit_lsn: Lsn(1000 * n),
        end_lsn: Lsn(1000 * n + 8),
        commit_time: PgTimestamp(n as i64 * 1_000_000),
        changes,
    }
}

fn header(transaction: &Transaction, ends_transaction: bool) -> PieceHeader {
    PieceHeader {
        commit_lsn: transaction.commit_lsn,
        end_lsn: transaction.end_lsn,
        commit_time: transaction.commit_time,
        xid: transaction.xid,
        ends_transaction,
    }
}

fn append_whole(archive: &mut Archive, transaction: &Transaction) {
    let changes: Vec<&Change> = transaction.changes.iter().collect();
    archive.append(header(transaction, true), &changes).unwrap();
}

fn options() -> ArchiveOptions {
    ArchiveOptions { fsync: FsyncPolicy::Os, ..ArchiveOptions::default() }
}

/// Every whole transaction of the archive from `from`, pieces merged.
fn read_all(dir: &Path, from: Lsn) -> Result<Vec<Transaction>, ArchiveError> {
    let mut reader = ArchiveReader::open(dir, Arc::new(TypeRegistry::new()))?;
    if from != Lsn::ZERO {
        reader.seek(from)?;
    }
    let mut whole = Vec::new();
    let mut open: Option<Transaction> = None;
    while let Some(piece) = reader.next_piece()? {
        let mut transaction = match open.take() {
            Some(mut open) if open.commit_lsn == piece.transaction.commit_lsn => {
                open.changes.extend(piece.transaction.changes);
                open
            }
            Some(open) => panic!("transaction at {} has no end", open.commit_lsn),
            None => piece.transaction,
        };
        if piece.ends_transaction {
            transaction.changes.sort_by_key(|change| change.ordinal);
            whole.push(transaction);
        } else {
            open = Some(transaction);
        }
    }
    assert!(open.is_none(), "the reader returned an unfinished transaction");
    Ok(whole)
}

#[test]
fn transactions_read_back_as_written_across_segments_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let tables = [table("a", 1), table("b", 2)];
    let expected: Vec<Transaction> = (1..=300).map(|n| transaction(n, &tables)).collect();
    let small_segments = ArchiveOptions { segment_bytes: 4096, ..options() };
    for chunk in expected.chunks(100) {
        let (mut archive, report) = Archive::open(dir.path(), small_segments).unwrap();
        assert_eq!(report.cut_bytes, 0);
        for transaction in chunk {
            append_whole(&mut archive, transaction);
        }
        archive.sync().unwrap();
    }
    assert!(std::fs::read_dir(dir.path()).unwrap().count() > 10, "expected several segments");
    assert_eq!(read_all(dir.path(), Lsn::ZERO).unwrap(), expected);
    // Seek to every transaction and between transactions.
    for n in [1u64, 2, 57, 150, 299, 300] {
        assert_eq!(read_all(dir.path(), Lsn(1000 * n)).unwrap(), expected[(n - 1) as usize..]);
        if n > 1 {
            assert_eq!(read_all(dir.path(), Lsn(1000 * n - 500)).unwrap(), expected[(n - 1) as usize..]);
        }
    }
    assert!(read_all(dir.path(), Lsn(400_000)).unwrap().is_empty());
}

#[test]
fn a_seek_before_the_oldest_transaction_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let tables = [table("a", 1)];
    let (mut archive, _) = Archive::open(dir.path(), options()).unwrap();
    append_whole(&mut archive, &transaction(5, &tables));
    match read_all(dir.path(), Lsn(4999)) {
        Err(ArchiveError::BeforeOldest { requested, oldest }) => {
            assert_eq!((requested, oldest), (Lsn(4999), Lsn(5000)));
            let message = ArchiveError::BeforeOldest { requested, oldest }.to_string();
            assert!(message.contains("0/1388") && message.contains("rebuild"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_torn_tail_is_cut_at_every_byte_offset_and_the_resent_stream_archived_once() {
    let source = tempfile::tempdir().unwrap();
    let tables = [table("a", 1), table("b", 2)];
    let expected: Vec<Transaction> = (1..=4).map(|n| transaction(n, &tables)).collect();
    let (mut archive, _) = Archive::open(source.path(), options()).unwrap();
    // The third transaction in two pieces, to cut inside a transaction too.
    for transaction in &expected {
        let changes: Vec<&Change> = transaction.changes.iter().collect();
        if transaction.xid == Xid(3) {
            archive.append(header(transaction, false), &changes[..2]).unwrap();
            archive.append(header(transaction, true), &changes[2..]).unwrap();
        } else {
            archive.append(header(transaction, true), &changes).unwrap();
        }
    }
    drop(archive);
    let segment = source.path().join("0000000000.seg");
    let bytes = std::fs::read(&segment).unwrap();
    let whole_len = |count: usize| {
        let dir = tempfile::tempdir().unwrap();
        let (mut archive, _) = Archive::open(dir.path(), options()).unwrap();
        for transaction in &expected[..count] {
            let changes: Vec<&Change> = transaction.changes.iter().collect();
            if transaction.xid == Xid(3) {
                archive.append(header(transaction, false), &changes[..2]).unwrap();
                archive.append(header(transaction, true), &changes[2..]).unwrap();
            } else {
                archive.append(header(transaction, true), &changes).unwrap();
            }
        }
        std::fs::metadata(dir.path().join("0000000000.seg")).map_or(0, |m| m.len())
    };
    let ends: Vec<u64> = (0..=expected.len()).map(whole_len).collect();
    for cut in 0..=bytes.len() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("0000000000.seg"), &bytes[..cut]).unwrap();
        let opened = Archive::open(dir.path(), options());
        if cut < 12 {
            // Not even a whole header: refused, not silently emptied.
            assert!(opened.is_err(), "cut at {cut}");
            continue;
        }
        let (mut archive, report) = opened.unwrap();
        let whole = ends.iter().rposition(|&end| end != 0 && end <= cut as u64).unwrap_or(0);
        assert_eq!(read_all(dir.path(), Lsn::ZERO).unwrap(), expected[..whole], "cut at {cut}");
        if ends.contains(&(cut as u64)) {
            assert_eq!(report.cut_bytes, 0, "cut at {cut}");
        }
        assert_eq!(archive.last_end_lsn(), whole.checked_sub(1).map(|at| expected[at].end_lsn), "cut at {cut}");
        // PostgreSQL re-sends from an earlier point: everything comes again.
        for transaction in &expected {
            append_whole(&mut archive, transaction);
        }
        assert_eq!(read_all(dir.path(), Lsn::ZERO).unwrap(), expected, "cut at {cut}");
    }
}

#[test]
fn pieces_written_again_after_a_retry_are_archived_once() {
    let dir = tempfile::tempdir().unwrap();
    let tables = [table("a", 1)];
    let first = transaction(1, &tables);
    let changes: Vec<&Change> = first.changes.iter().collect();
    let (mut archive, _) = Archive::open(dir.path(), options()).unwrap();
    archive.append(header(&first, false), &changes[..2]).unwrap();
    assert_eq!(archive.append(header(&first, false), &changes[..2]).unwrap(), 0);
    archive.append(header(&first, false), &changes[1..]).unwrap();
    archive.append(header(&first, true), &[]).unwrap();
    assert_eq!(archive.append(header(&first, true), &changes).unwrap(), 0);
    assert_eq!(read_all(dir.path(), Lsn::ZERO).unwrap(), vec![first]);
}

#[test]
fn a_seek_between_the_recorded_start_and_the_first_transaction_reads_from_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let tables = [table("a", 1)];
    let (mut archive, _) = Archive::open(dir.path(), options()).unwrap();
    archive.record_start(Lsn(3000)).unwrap();
    assert_eq!(archive.start_lsn(), Some(Lsn(3000)));
    // Nothing archived yet: a seek at the start reads nothing, one before it is refused.
    assert!(read_all(dir.path(), Lsn(3000)).unwrap().is_empty());
    append_whole(&mut archive, &transaction(5, &tables));
    append_whole(&mut archive, &transaction(6, &tables));
    // An archive with history keeps its start.
    archive.record_start(Lsn(4000)).unwrap();
    let (reopened, _) = Archive::open(dir.path(), options()).unwrap();
    assert_eq!(reopened.start_lsn(), Some(Lsn(3000)));

    let held = read_all(dir.path(), Lsn(3500)).unwrap();
    assert_eq!(held.iter().map(|t| t.xid).collect::<Vec<_>>(), [Xid(5), Xid(6)]);
    match read_all(dir.path(), Lsn(2999)) {
        Err(ArchiveError::BeforeOldest { oldest, .. }) => assert_eq!(oldest, Lsn(3000)),
        other => panic!("expected a refusal naming the start, got {other:?}"),
    }
}

#[test]
fn retention_moves_the_recorded_start_to_the_oldest_transaction_kept() {
    let dir = tempfile::tempdir().unwrap();
    let tables = [table("a", 1)];
    let options = ArchiveOptions {
        segment_bytes: 1024,
        retention: Retention { max_bytes: Some(4096), max_age: None },
        ..options()
    };
    let (mut archive, _) = Archive::open(dir.path(), options).unwrap();
    archive.record_start(Lsn(500)).unwrap();
    for n in 1..=100 {
        append_whole(&mut archive, &transaction(n, &tables));
        archive.apply_retention(SystemTime::now()).unwrap();
    }
    let oldest = archive.oldest_commit_lsn().unwrap();
    assert!(oldest > Lsn(1000));
    assert_eq!(archive.start_lsn(), Some(oldest));
    assert!(matches!(read_all(dir.path(), Lsn(600)), Err(ArchiveError::BeforeOldest { oldest: o, .. }) if o == oldest));
    let (reopened, _) = Archive::open(dir.path(), options).unwrap();
    assert_eq!(reopened.start_lsn(), Some(oldest));
}

#[test]
fn retention_by_size_removes_the_oldest_whole_segments_and_moves_the_oldest_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let tables = [table("a", 1)];
    let options = ArchiveOptions {
        segment_bytes: 2048,
        retention: Retention { max_bytes: Some(8192), max_age: None },
        ..options()
    };
    let (mut archive, _) = Archive::open(dir.path(), options).unwrap();
    for n in 1..=200 {
        append_whole(&mut archive, &transaction(n, &tables));
        archive.apply_retention(SystemTime::now()).unwrap();
    }
    assert!(archive.total_bytes() <= 8192 + 2048 + 512, "{} bytes", archive.total_bytes());
    let oldest = archive.oldest_commit_lsn().unwrap();
    assert!(oldest > Lsn(1000), "oldest {oldest}");
    let held = read_all(dir.path(), oldest).unwrap();
    assert_eq!(held.first().map(|t| t.commit_lsn), Some(oldest));
    assert_eq!(held.last().map(|t| t.commit_lsn), Some(Lsn(200_000)));
    assert!(
        matches!(read_all(dir.path(), Lsn(1000)), Err(ArchiveError::BeforeOldest { oldest: o, .. }) if o == oldest)
    );
}

#[test]
fn retention_by_age_keeps_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let tables = [table("a", 1)];
    let options = ArchiveOptions {
        segment_bytes: 1024,
        retention: Retention { max_bytes: None, max_age: Some(Duration::from_secs(60)) },
        ..options()
    };
    let (mut archive, _) = Archive::open(dir.path(), options).unwrap();
    for n in 1..=50 {
        append_whole(&mut archive, &transaction(n, &tables));
    }
    assert_eq!(archive.apply_retention(SystemTime::now()).unwrap(), 0);
    let removed = archive.apply_retention(SystemTime::now() + Duration::from_secs(3600)).unwrap();
    assert!(removed > 0);
    assert_eq!(read_all(dir.path(), archive.oldest_commit_lsn().unwrap()).unwrap().last().unwrap().xid, Xid(50));
}

fn arb_value() -> impl Strategy<Value = ColumnValue> {
    prop_oneof![
        Just(ColumnValue::Null),
        Just(ColumnValue::UnchangedToast),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| ColumnValue::Text(Bytes::from(b))),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(|b| ColumnValue::Binary(Bytes::from(b))),
    ]
}

fn arb_op() -> impl Strategy<Value = ChangeOp> {
    let row = || proptest::collection::vec(arb_value(), 2..=2);
    prop_oneof![
        row().prop_map(|new| ChangeOp::Insert { new }),
        (proptest::option::of(row()), row()).prop_map(|(old, new)| ChangeOp::Update { old, new }),
        row().prop_map(|old| ChangeOp::Delete { old }),
        Just(ChangeOp::Truncate),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random transactions (random pieces, gaps in ordinals, tiny segments)
    /// read back equal, from the start and from any seek point, and a cut at
    /// a random byte keeps exactly the transactions wholly before it.
    #[test]
    fn round_trip_seek_and_torn_tail(
        spec in proptest::collection::vec(
            (proptest::collection::vec((0usize..3, arb_op(), 0u32..3), 1..6), 0usize..4, any::<bool>()),
            1..25,
        ),
        seek_at in 0usize..25,
        cut_fraction in 0.0f64..1.0,
    ) {
        let tables = [table("a", 1), table("b", 2), table("c", 3)];
        let mut lsn = 100u64;
        let expected: Vec<(Transaction, usize)> = spec.iter().enumerate().map(|(n, (changes, split, big_gap))| {
            lsn += if *big_gap { 1 << 33 } else { 17 };
            let mut ordinal = 0u32;
            let changes = changes.iter().map(|(t, op, gap)| {
                ordinal += gap;
                let change = Change { table: tables[*t].clone(), op: op.clone(), ordinal };
                ordinal += 1;
                change
            }).collect::<Vec<_>>();
            let transaction = Transaction {
                xid: Xid(n as u32), commit_lsn: Lsn(lsn), end_lsn: Lsn(lsn + 9),
                commit_time: PgTimestamp(n as i64 - 5), changes,
            };
            (transaction, *split)
        }).collect();
        let dir = tempfile::tempdir().unwrap();
        let (mut archive, _) = Archive::open(dir.path(), ArchiveOptions { segment_bytes: 700, ..options() }).unwrap();
        for (transaction, split) in &expected {
            let changes: Vec<&Change> = transaction.changes.iter().collect();
            let split = (*split).min(changes.len());
            if split > 0 {
                archive.append(header(transaction, false), &changes[..split]).unwrap();
            }
            archive.append(header(transaction, true), &changes[split..]).unwrap();
        }
        drop(archive);
        let all: Vec<Transaction> = expected.iter().map(|(t, _)| t.clone()).collect();
        prop_assert_eq!(&read_all(dir.path(), Lsn::ZERO).unwrap(), &all);
        let at = seek_at.min(all.len() - 1);
        prop_assert_eq!(&read_all(dir.path(), all[at].commit_lsn).unwrap(), &all[at..].to_vec());
        if at > 0 {
            prop_assert_eq!(&read_all(dir.path(), Lsn(all[at].commit_lsn.0 - 1)).unwrap(), &all[at..].to_vec());
        }

        // Tear the last segment at a random byte.
        let mut segments: Vec<_> = std::fs::read_dir(dir.path()).unwrap()
            .map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "seg")).collect();
        segments.sort();
        let last = segments.last().unwrap();
        let len = std::fs::metadata(last).unwrap().len();
        let cut = 12 + ((len - 12) as f64 * cut_fraction) as u64;
        std::fs::OpenOptions::new().write(true).open(last).unwrap().set_len(cut).unwrap();
        let (mut archive, _) = Archive::open(dir.path(), options()).unwrap();
        let kept = read_all(dir.path(), Lsn::ZERO).unwrap();
        prop_assert!(all.starts_with(&kept));
        prop_assert_eq!(archive.last_end_lsn(), kept.last().map(|t| t.end_lsn));
        for transaction in &all {
            append_whole(&mut archive, transaction);
        }
        prop_assert_eq!(&read_all(dir.path(), Lsn::ZERO).unwrap(), &all);
    }
}

/// The sink as the worker drives it: whole transactions with their
/// checkpoint, a large one in pieces whose end comes as a checkpoint alone,
/// and a retried call; the archive holds each change once and its
/// checkpoint is the last whole transaction's end.
#[tokio::test]
async fn the_sink_archives_pieces_and_ends_by_checkpoint() {
    use pgfanout_archive::ArchiveSink;
    use pgfanout_core::{ChangeRef, Metrics, Sink};

    let dir = tempfile::tempdir().unwrap();
    let tables = [table("a", 1)];
    let metrics = Metrics::new().unwrap();
    let sink = ArchiveSink::open(dir.path(), options(), metrics.clone()).unwrap();
    assert_eq!(sink.load_checkpoint().await.unwrap(), None);
    let (first, large, last) = (transaction(1, &tables), transaction(2, &tables), transaction(3, &tables));
    fn refs(t: &Transaction) -> Vec<ChangeRef<'_>> {
        t.changes.iter().map(|change| ChangeRef { transaction: t, change }).collect()
    }
    let mut batch = refs(&first);
    batch.extend(refs(&large)[..1].iter().copied());
    sink.apply(&batch, Some(first.end_lsn)).await.unwrap();
    sink.apply(&batch, Some(first.end_lsn)).await.unwrap();
    assert_eq!(sink.load_checkpoint().await.unwrap(), Some(first.end_lsn));
    sink.apply(&refs(&large)[1..], None).await.unwrap();
    sink.apply(&[], Some(large.end_lsn)).await.unwrap();
    sink.apply(&refs(&last), Some(last.end_lsn)).await.unwrap();
    assert_eq!(sink.load_checkpoint().await.unwrap(), Some(last.end_lsn));
    assert_eq!(read_all(dir.path(), Lsn::ZERO).unwrap(), vec![first.clone(), large, last]);
    assert_eq!(metrics.archive_oldest_lsn.get() as u64, first.commit_lsn.0);
    assert!(metrics.archive_bytes.get() > 0);
    assert_eq!(metrics.archive_append_seconds.get_sample_count(), 5);

    sink.store_source("system 1 slot s").await.unwrap();
    drop(sink);
    let reopened = ArchiveSink::open(dir.path(), options(), Metrics::new().unwrap()).unwrap();
    assert_eq!(reopened.load_source().await.unwrap().as_deref(), Some("system 1 slot s"));
    assert_eq!(reopened.load_checkpoint().await.unwrap(), Some(Lsn(3008)));
}
