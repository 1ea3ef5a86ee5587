//! Append cost of the archive: 100-change transactions of a 4-column row
//! (about what `make bench-pipeline` sends), with and without an fsync per
//! batch of 10 transactions. Also prints the bytes the archive takes per
//! million changes.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgfanout_archive::{Archive, ArchiveOptions, FsyncPolicy, PieceHeader};
use pgfanout_core::{Change, ChangeOp, ColumnSchema, ColumnValue, TableName, TableSchema};
use pgoutput::{Lsn, Oid, PgTimestamp, ReplicaIdentity, TypeRegistry, Xid};

const CHANGES_PER_TRANSACTION: usize = 100;
const TRANSACTIONS_PER_BATCH: usize = 10;

fn changes() -> Vec<Change> {
    let table = Arc::new(TableSchema {
        oid: Oid(16_384),
        table: TableName::new("public", "reservation"),
        replica_identity: ReplicaIdentity::Default,
        columns: ["id", "guest_id", "status", "note"]
            .iter()
            .enumerate()
            .map(|(i, name)| ColumnSchema {
                name: (*name).into(),
                type_oid: Oid(if i < 2 { 20 } else { 25 }),
                is_key: i == 0,
            })
            .collect(),
        types: Arc::new(TypeRegistry::new()),
    });
    let text = |s: String| ColumnValue::Text(Bytes::from(s));
    (0..CHANGES_PER_TRANSACTION)
        .map(|i| Change {
            table: table.clone(),
            op: ChangeOp::Insert {
                new: vec![
                    text((1_000_000 + i).to_string()),
                    text((i * 7).to_string()),
                    text("confirmed".into()),
                    text(format!("note for row {i}")),
                ],
            },
            ordinal: i as u32,
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let changes = changes();
    let refs: Vec<&Change> = changes.iter().collect();
    let mut group = c.benchmark_group("archive_append");
    group.throughput(Throughput::Elements((CHANGES_PER_TRANSACTION * TRANSACTIONS_PER_BATCH) as u64));
    for (name, fsync) in
        [("batch_of_10_transactions_os", FsyncPolicy::Os), ("batch_of_10_transactions_fsync", FsyncPolicy::Batch)]
    {
        let dir = tempfile::tempdir_in(std::env::var("ARCHIVE_BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
        let options = ArchiveOptions { fsync, ..ArchiveOptions::default() };
        let (mut archive, _) = Archive::open(dir.path(), options).unwrap();
        let mut lsn = 1u64;
        let mut written = 0u64;
        let mut transactions = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                for _ in 0..TRANSACTIONS_PER_BATCH {
                    lsn += 10_000;
                    let header = PieceHeader {
                        commit_lsn: Lsn(lsn),
                        end_lsn: Lsn(lsn + 8),
                        commit_time: PgTimestamp(0),
                        xid: Xid(lsn as u32),
                        ends_transaction: true,
                    };
                    written += archive.append(header, &refs).unwrap();
                    transactions += 1;
                }
                archive.sync().unwrap();
            })
        });
        let per_million = written as f64 / (transactions * CHANGES_PER_TRANSACTION as u64) as f64 * 1e6;
        eprintln!("{name}: {:.1} MB per million changes", per_million / 1e6);
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
