//! Holding streamed (in-progress) transactions until they end.
//!
//! With `streaming` on, PostgreSQL sends a large transaction's changes while
//! it is still running, in Stream Start … Stream Stop blocks interleaved with
//! other transactions, and only later says whether it committed (Stream
//! Commit) or aborted (Stream Abort, for the whole transaction or for one of
//! its subtransactions). Nothing of it may reach a sink before the commit.
//!
//! [`StreamedTransactions`] keeps each such transaction's changes, tagged with
//! the subtransaction that made them. Memory is bounded: when the changes held
//! in memory, over all transactions, pass [`SpillSettings::memory_limit`], the
//! largest transaction's changes move to an anonymous temporary file (deleted
//! by the OS when closed, even after a crash). At Stream Commit the file is
//! read back in order, followed by what is still in memory, and changes of
//! aborted subtransactions are left out.
//!
//! Invariant: the changes of a committed transaction come out exactly in the
//! order they were added, minus those of aborted subtransactions.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;

use pgoutput::Xid;
use serde::{Deserialize, Serialize};

use crate::model::{Change, ChangeOp, TableSchema};

/// Where and when streamed transactions spill to disk.
#[derive(Debug, Clone)]
pub struct SpillSettings {
    /// Bytes of changes held in memory, over all streamed transactions,
    /// before the largest one is written to disk.
    pub memory_limit: usize,
    /// Folder for the temporary files; the system's temp folder when `None`.
    pub directory: Option<PathBuf>,
}

impl Default for SpillSettings {
    fn default() -> Self {
        SpillSettings { memory_limit: 64 * 1024 * 1024, directory: None }
    }
}

/// Failure to write or read a spill file.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot {action} the spill file of streamed transaction {xid}: check that pipeline.spill_dir (default: the \
     system temp folder) exists, is writable and has free space, or raise pipeline.spill_memory_mb"
)]
pub struct SpillError {
    /// The top-level transaction.
    pub xid: Xid,
    /// `write` or `read back`.
    pub action: &'static str,
    /// The underlying failure.
    #[source]
    pub source: std::io::Error,
}

/// One change as written to a spill file: its table by index into the
/// transaction's schema list (schemas stay in memory; they are few).
#[derive(Serialize, Deserialize)]
struct SpilledChange {
    subtransaction: u32,
    schema: u32,
    op: ChangeOp,
}

/// A streamed transaction's changes, in memory and possibly on disk.
#[derive(Debug)]
struct HeldTransaction {
    /// Changes not yet spilled, with the subtransaction that made each.
    in_memory: Vec<(Xid, Change)>,
    in_memory_bytes: usize,
    /// Length-prefixed postcard records of [`SpilledChange`], oldest first.
    spill: Option<BufWriter<File>>,
    /// Distinct table shapes of spilled changes.
    spilled_schemas: Vec<Arc<TableSchema>>,
    spilled_changes: usize,
    aborted_subtransactions: HashSet<Xid>,
}

impl HeldTransaction {
    fn new() -> Self {
        HeldTransaction {
            in_memory: Vec::new(),
            in_memory_bytes: 0,
            spill: None,
            spilled_schemas: Vec::new(),
            spilled_changes: 0,
            aborted_subtransactions: HashSet::new(),
        }
    }

    fn schema_index(&mut self, schema: &Arc<TableSchema>) -> u32 {
        let found = self.spilled_schemas.iter().position(|known| Arc::ptr_eq(known, schema));
        let index = found.unwrap_or_else(|| {
            self.spilled_schemas.push(Arc::clone(schema));
            self.spilled_schemas.len() - 1
        });
        // Fewer distinct shapes than changes, and changes are counted in u32.
        index as u32
    }

    fn spill(&mut self, settings: &SpillSettings) -> std::io::Result<()> {
        if self.spill.is_none() {
            let file = match &settings.directory {
                Some(directory) => tempfile::tempfile_in(directory)?,
                None => tempfile::tempfile()?,
            };
            self.spill = Some(BufWriter::with_capacity(1 << 20, file));
        }
        let changes = std::mem::take(&mut self.in_memory);
        for (subtransaction, change) in changes {
            let record = SpilledChange {
                subtransaction: subtransaction.0,
                schema: self.schema_index(&change.table),
                op: change.op,
            };
            let bytes = postcard::to_stdvec(&record).map_err(std::io::Error::other)?;
            let writer = self.spill.as_mut().expect("created above");
            writer.write_all(&(bytes.len() as u32).to_le_bytes())?;
            writer.write_all(&bytes)?;
            self.spilled_changes += 1;
        }
        self.in_memory_bytes = 0;
        Ok(())
    }

    /// Every surviving change in order, numbered from 0.
    fn into_changes(self) -> std::io::Result<Vec<Change>> {
        let mut changes = Vec::with_capacity(self.spilled_changes + self.in_memory.len());
        let aborted = &self.aborted_subtransactions;
        if let Some(writer) = self.spill {
            let mut file = writer.into_inner().map_err(|err| err.into_error())?;
            file.seek(SeekFrom::Start(0))?;
            let mut reader = BufReader::with_capacity(1 << 20, file);
            let mut record = Vec::new();
            for _ in 0..self.spilled_changes {
                let mut length = [0u8; 4];
                reader.read_exact(&mut length)?;
                record.resize(u32::from_le_bytes(length) as usize, 0);
                reader.read_exact(&mut record)?;
                let spilled: SpilledChange = postcard::from_bytes(&record).map_err(std::io::Error::other)?;
                if aborted.contains(&Xid(spilled.subtransaction)) {
                    continue;
                }
                let table = self.spilled_schemas.get(spilled.schema as usize).cloned().ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "spill record names an unknown schema")
                })?;
                changes.push(Change { table, op: spilled.op, ordinal: 0 });
            }
        }
        changes.extend(self.in_memory.into_iter().filter(|(sub, _)| !aborted.contains(sub)).map(|(_, change)| change));
        for (ordinal, change) in changes.iter_mut().enumerate() {
            change.ordinal = ordinal as u32;
        }
        Ok(changes)
    }
}

/// The streamed transactions not yet committed or aborted.
#[derive(Debug, Default)]
pub struct StreamedTransactions {
    settings: SpillSettings,
    held: HashMap<Xid, HeldTransaction>,
    in_memory_bytes: usize,
    spilled_bytes_total: u64,
}

impl StreamedTransactions {
    /// An empty holder spilling by `settings`.
    pub fn new(settings: SpillSettings) -> Self {
        StreamedTransactions { settings, ..Self::default() }
    }

    /// Whether no streamed transaction is open.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Bytes of changes currently held in memory.
    pub fn in_memory_bytes(&self) -> usize {
        self.in_memory_bytes
    }

    /// Bytes of changes written to spill files since start (approximate sizes).
    pub fn spilled_bytes_total(&self) -> u64 {
        self.spilled_bytes_total
    }

    /// Adds a change of `subtransaction` (the top-level xid itself for
    /// changes outside any subtransaction) to transaction `xid`.
    pub fn add(&mut self, xid: Xid, subtransaction: Xid, change: Change) -> Result<(), SpillError> {
        let size = change.approximate_size();
        let held = self.held.entry(xid).or_insert_with(HeldTransaction::new);
        held.in_memory.push((subtransaction, change));
        held.in_memory_bytes += size;
        self.in_memory_bytes += size;
        while self.in_memory_bytes > self.settings.memory_limit {
            let Some((&largest, _)) =
                self.held.iter().filter(|(_, t)| t.in_memory_bytes > 0).max_by_key(|(_, t)| t.in_memory_bytes)
            else {
                break;
            };
            let held = self.held.get_mut(&largest).expect("found above");
            let freed = held.in_memory_bytes;
            held.spill(&self.settings).map_err(|source| SpillError { xid: largest, action: "write", source })?;
            self.in_memory_bytes -= freed;
            self.spilled_bytes_total += freed as u64;
            tracing::debug!(xid = largest.0, bytes = freed, "streamed transaction spilled to disk");
        }
        Ok(())
    }

    /// Drops a whole transaction (`subtransaction == xid`) or one
    /// subtransaction's changes.
    pub fn abort(&mut self, xid: Xid, subtransaction: Xid) {
        if xid == subtransaction {
            if let Some(held) = self.held.remove(&xid) {
                self.in_memory_bytes -= held.in_memory_bytes;
            }
            return;
        }
        if let Some(held) = self.held.get_mut(&xid) {
            let before = held.in_memory_bytes;
            held.in_memory.retain(|(sub, _)| *sub != subtransaction);
            held.in_memory_bytes = held.in_memory.iter().map(|(_, change)| change.approximate_size()).sum();
            self.in_memory_bytes -= before - held.in_memory_bytes;
            // Spilled changes of the subtransaction are skipped when read back.
            held.aborted_subtransactions.insert(subtransaction);
        }
    }

    /// Ends a committed transaction: its surviving changes in order
    /// (empty if nothing of it was published or all of it was aborted).
    pub fn commit(&mut self, xid: Xid) -> Result<Vec<Change>, SpillError> {
        let Some(held) = self.held.remove(&xid) else { return Ok(Vec::new()) };
        self.in_memory_bytes -= held.in_memory_bytes;
        held.into_changes().map_err(|source| SpillError { xid, action: "read back", source })
    }

    /// Forgets every open transaction (the connection was lost; the server
    /// sends them again from the start).
    pub fn clear(&mut self) {
        self.held.clear();
        self.in_memory_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ColumnSchema, ColumnValue, TableName};
    use bytes::Bytes;
    use pgoutput::{Oid, ReplicaIdentity};

    fn schema() -> Arc<TableSchema> {
        Arc::new(TableSchema {
            types: Default::default(),
            oid: Oid(1),
            table: TableName::new("public", "t"),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![ColumnSchema { name: "id".into(), type_oid: Oid(25), is_key: true }],
        })
    }

    fn insert(table: &Arc<TableSchema>, id: usize) -> Change {
        Change {
            table: Arc::clone(table),
            op: ChangeOp::Insert { new: vec![ColumnValue::Text(Bytes::from(format!("{id:0100}")))] },
            ordinal: 0,
        }
    }

    fn ids(changes: &[Change]) -> Vec<usize> {
        changes
            .iter()
            .map(|c| match &c.op {
                ChangeOp::Insert { new } => std::str::from_utf8(new[0].as_bytes().unwrap()).unwrap().parse().unwrap(),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn committed_changes_come_back_in_order_across_spills() {
        let table = schema();
        // A limit of a few changes forces many spills in between.
        let mut held = StreamedTransactions::new(SpillSettings { memory_limit: 1000, directory: None });
        let (top, other) = (Xid(10), Xid(20));
        for id in 0..500 {
            held.add(top, top, insert(&table, id)).unwrap();
            held.add(other, other, insert(&table, 10_000 + id)).unwrap();
            assert!(held.in_memory_bytes() <= 1000);
        }
        assert!(held.spilled_bytes_total() > 0, "the limit forced spilling");
        let changes = held.commit(top).unwrap();
        assert_eq!(ids(&changes), (0..500).collect::<Vec<_>>());
        assert!(changes.iter().enumerate().all(|(i, c)| c.ordinal as usize == i));
        assert!(changes.iter().all(|c| Arc::ptr_eq(&c.table, &table)), "spilled changes keep their shared shape");
        assert_eq!(ids(&held.commit(other).unwrap()), (10_000..10_500).collect::<Vec<_>>());
        assert!(held.is_empty());
        assert_eq!(held.in_memory_bytes(), 0);
    }

    #[test]
    fn aborted_subtransactions_are_left_out_in_memory_and_on_disk() {
        let table = schema();
        let mut held = StreamedTransactions::new(SpillSettings { memory_limit: 2000, directory: None });
        let (top, savepoint) = (Xid(10), Xid(11));
        for id in 0..60 {
            let sub = if (20..40).contains(&id) { savepoint } else { top };
            held.add(top, sub, insert(&table, id)).unwrap();
        }
        held.abort(top, savepoint);
        let expected: Vec<usize> = (0..20).chain(40..60).collect();
        assert_eq!(ids(&held.commit(top).unwrap()), expected);
    }

    #[test]
    fn an_aborted_transaction_is_dropped_whole() {
        let table = schema();
        let mut held = StreamedTransactions::new(SpillSettings { memory_limit: 500, directory: None });
        for id in 0..50 {
            held.add(Xid(5), Xid(5), insert(&table, id)).unwrap();
        }
        held.abort(Xid(5), Xid(5));
        assert!(held.is_empty());
        assert_eq!(held.in_memory_bytes(), 0);
        assert!(held.commit(Xid(5)).unwrap().is_empty());
    }

    #[test]
    fn a_missing_spill_directory_is_a_clear_error() {
        let table = schema();
        let mut held = StreamedTransactions::new(SpillSettings {
            memory_limit: 10,
            directory: Some(PathBuf::from("/nonexistent/pgfanout-spill")),
        });
        let err = held.add(Xid(3), Xid(3), insert(&table, 1)).unwrap_err();
        assert_eq!(err.xid, Xid(3));
        assert!(err.to_string().contains("cannot write the spill file of streamed transaction"));
    }
}
