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
//! by the OS when closed, even after a crash). At Stream Commit the changes
//! come back as [`CommittedChanges`], read piece by piece: first the file,
//! a bounded piece at a time (never the whole file at once), then what is
//! still in memory; changes of aborted subtransactions are left out. The
//! assembler holds an ordinary (non-streamed) transaction that grows large
//! here too, so every transaction is bounded the same way.
//!
//! Invariant: the changes of a committed transaction come out exactly in the
//! order they were added, minus those of aborted subtransactions, numbered
//! from 0 across pieces.

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

    /// Ends the transaction: its surviving changes, to be read in pieces.
    fn into_committed(self, xid: Xid) -> std::io::Result<CommittedChanges> {
        let spill = match self.spill {
            Some(writer) => {
                let mut file = writer.into_inner().map_err(|err| err.into_error())?;
                file.seek(SeekFrom::Start(0))?;
                Some(SpillReader {
                    reader: BufReader::with_capacity(READ_BUFFER_BYTES, file),
                    remaining: self.spilled_changes,
                    schemas: self.spilled_schemas,
                    record: Vec::new(),
                })
            }
            None => None,
        };
        Ok(CommittedChanges {
            xid,
            spill,
            in_memory_bytes: self.in_memory_bytes,
            in_memory: self.in_memory.into_iter(),
            aborted: self.aborted_subtransactions,
            next_ordinal: 0,
        })
    }
}

/// Bytes of the buffer a spill file is read back through.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// The unread rest of a spill file.
#[derive(Debug)]
struct SpillReader {
    reader: BufReader<File>,
    /// Records not read yet.
    remaining: usize,
    schemas: Vec<Arc<TableSchema>>,
    /// Buffer of the record being decoded, reused.
    record: Vec<u8>,
}

impl SpillReader {
    /// The next record, or `None` once every record was read.
    fn next_record(&mut self) -> std::io::Result<Option<(Xid, Change)>> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let mut length = [0u8; 4];
        self.reader.read_exact(&mut length)?;
        self.record.resize(u32::from_le_bytes(length) as usize, 0);
        self.reader.read_exact(&mut self.record)?;
        self.remaining -= 1;
        let spilled: SpilledChange = postcard::from_bytes(&self.record).map_err(std::io::Error::other)?;
        let table = self.schemas.get(spilled.schema as usize).cloned().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "spill record names an unknown schema")
        })?;
        Ok(Some((Xid(spilled.subtransaction), Change { table, op: spilled.op, ordinal: 0 })))
    }
}

/// A committed transaction's surviving changes, handed out in order, piece
/// by piece: first what was spilled, read back from the file a piece at a
/// time (never whole), then what stayed in memory. Ordinals run from 0
/// across pieces, counting only surviving changes.
#[derive(Debug)]
pub struct CommittedChanges {
    xid: Xid,
    spill: Option<SpillReader>,
    in_memory: std::vec::IntoIter<(Xid, Change)>,
    in_memory_bytes: usize,
    aborted: HashSet<Xid>,
    next_ordinal: u32,
}

impl CommittedChanges {
    /// Whether every change is in memory and they fit in one piece of at
    /// most `max_changes` changes and `max_bytes` bytes.
    pub fn fits(&self, max_changes: usize, max_bytes: usize) -> bool {
        self.spill.is_none() && self.in_memory.len() <= max_changes && self.in_memory_bytes <= max_bytes
    }

    /// The next changes in order: at most `max_changes`, and no more than
    /// `max_bytes` (approximate) unless a single change is larger. Empty
    /// once every change was handed out.
    pub fn next_piece(&mut self, max_changes: usize, max_bytes: usize) -> Result<Vec<Change>, SpillError> {
        let xid = self.xid;
        let mut piece = Vec::new();
        let mut bytes = 0;
        while piece.len() < max_changes.max(1) && bytes < max_bytes {
            let next = match &mut self.spill {
                Some(spill) => match spill.next_record() {
                    Ok(Some(record)) => Some(record),
                    Ok(None) => {
                        self.spill = None;
                        continue;
                    }
                    Err(source) => return Err(SpillError { xid, action: "read back", source }),
                },
                None => self.in_memory.next(),
            };
            let Some((subtransaction, mut change)) = next else { break };
            if self.aborted.contains(&subtransaction) {
                continue;
            }
            change.ordinal = self.next_ordinal;
            self.next_ordinal += 1;
            bytes += change.approximate_size();
            piece.push(change);
        }
        Ok(piece)
    }

    /// Every remaining change in one vector (for transactions that [`fit`](Self::fits)).
    pub fn into_vec(mut self) -> Result<Vec<Change>, SpillError> {
        let mut changes = Vec::with_capacity(self.in_memory.len());
        loop {
            let piece = self.next_piece(usize::MAX, usize::MAX)?;
            if piece.is_empty() {
                return Ok(changes);
            }
            changes.extend(piece);
        }
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

    /// Ends a committed transaction: its surviving changes in order, to be
    /// read in pieces (none if nothing of it was published or all of it was
    /// aborted). Whatever of it is still in memory stays there, no longer
    /// counted here, until the pieces are read.
    pub fn commit(&mut self, xid: Xid) -> Result<CommittedChanges, SpillError> {
        let held = self.held.remove(&xid).unwrap_or_else(HeldTransaction::new);
        self.in_memory_bytes -= held.in_memory_bytes;
        held.into_committed(xid).map_err(|source| SpillError { xid, action: "read back", source })
    }

    /// Whether transaction `xid` holds changes (in memory or spilled).
    pub fn holds(&self, xid: Xid) -> bool {
        self.held.contains_key(&xid)
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
        let changes = held.commit(top).unwrap().into_vec().unwrap();
        assert_eq!(ids(&changes), (0..500).collect::<Vec<_>>());
        assert!(changes.iter().enumerate().all(|(i, c)| c.ordinal as usize == i));
        assert!(changes.iter().all(|c| Arc::ptr_eq(&c.table, &table)), "spilled changes keep their shared shape");
        assert_eq!(ids(&held.commit(other).unwrap().into_vec().unwrap()), (10_000..10_500).collect::<Vec<_>>());
        assert!(held.is_empty());
        assert_eq!(held.in_memory_bytes(), 0);
    }

    #[test]
    fn a_spilled_transaction_is_read_back_in_bounded_pieces() {
        let table = schema();
        let mut held = StreamedTransactions::new(SpillSettings { memory_limit: 5_000, directory: None });
        let (top, savepoint) = (Xid(10), Xid(11));
        for id in 0..2_000 {
            let sub = if (500..600).contains(&id) { savepoint } else { top };
            held.add(top, sub, insert(&table, id)).unwrap();
        }
        held.abort(top, savepoint);
        let mut committed = held.commit(top).unwrap();
        assert!(!committed.fits(usize::MAX, usize::MAX), "most of it is on disk");
        let spilled = committed.spill.as_ref().unwrap().remaining;
        assert!(spilled > 1_900, "spilled {spilled}");

        let first = committed.next_piece(300, usize::MAX).unwrap();
        assert_eq!(first.len(), 300);
        // Only the piece was decoded from the file, not the rest of it.
        assert_eq!(committed.spill.as_ref().unwrap().remaining, spilled - 300);

        let mut pieces = vec![first];
        loop {
            // A byte bound of about two changes: pieces of two changes.
            let piece = committed.next_piece(300, 2 * insert(&table, 0).approximate_size()).unwrap();
            if piece.is_empty() {
                break;
            }
            assert!(piece.len() <= 2);
            pieces.push(piece);
        }
        let changes: Vec<Change> = pieces.into_iter().flatten().collect();
        let expected: Vec<usize> = (0..500).chain(600..2_000).collect();
        assert_eq!(ids(&changes), expected, "in order, without the aborted savepoint");
        assert!(changes.iter().enumerate().all(|(i, c)| c.ordinal as usize == i), "ordinals run across pieces");
        assert!(committed.next_piece(300, usize::MAX).unwrap().is_empty(), "stays exhausted");
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
        assert_eq!(ids(&held.commit(top).unwrap().into_vec().unwrap()), expected);
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
        assert!(held.commit(Xid(5)).unwrap().into_vec().unwrap().is_empty());
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
