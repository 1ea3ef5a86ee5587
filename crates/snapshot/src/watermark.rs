//! The watermark merge: how a chunk read on a SQL connection joins the
//! live stream without losing or resurrecting anything (the technique of
//! Netflix's DBLog and Debezium's incremental snapshots, made exact with the
//! read's transaction snapshot).
//!
//! ```text
//!  snapshot task                          stream task (Pipeline + StreamTap)
//!  open(sink, table)  ── registers ──►    pending chunk
//!  emit  "<run>:<id>:low"   ─ WAL ─►      low seen: record each later transaction's
//!  read chunk (REPEATABLE READ, S)          xid and the chunk table's keys it touched
//!  pg_xact_status(S's in-progress)
//!  chunk_read(rows, S, committed) ──►
//!  emit  "<run>:<id>:high"  ─ WAL ─►      high seen: drop every key a transaction
//!                                           invisible to S touched; inject the rest
//!  outcome ◄──────────────────────────      into that sink at this point
//! ```
//!
//! Why it is exact: a row read under snapshot S is the row as of S. A
//! streamed change the sink receives *before* the high watermark is either
//! visible to S (the chunk already holds its effect, so writing the chunk
//! row after it changes nothing) or invisible (the chunk row is older than
//! what the sink holds: the key is dropped from the chunk and the stream's
//! own change stands). Transactions invisible to S are those in S's
//! in-progress list or started after it; the latter, and the former that
//! commit after the low watermark, fall in the recorded window. One in S's
//! in-progress list whose commit record precedes the low watermark (a
//! commit whose WAL was flushed but not yet visible when S was taken) is
//! caught because `pg_xact_status` says committed and the window never saw
//! it: the chunk is then read again, if that transaction may have changed
//! the table. While a table is copied ([`WatermarkMerge::track`]) the merge
//! keeps the ids of the streamed transactions that changed it, so a
//! transaction the stream never delivered (one that changed no published
//! row: an unpublished table, or nothing at all) costs no second read; one
//! older than the tracking, or forgotten, still does. The same record
//! catches a transaction in S's in-progress list that the stream delivered
//! before the low watermark with a change to the table even when
//! `pg_xact_status` did not call it committed yet (a backend flushes its
//! commit record before it marks the commit in the commit log). Changes
//! *after* the high watermark carry versions that beat the chunk's
//! ([`Version::snapshot_row`]), and they reach the sink after the chunk, so
//! a later delete is never undone.
//!
//! A dropped key whose invisible change was an update that left a TOASTed
//! value out (the sink may hold a partial row) is returned in
//! [`ChunkOutcome::Merged::reread`] for the caller to read again by key:
//! only keys among the chunk's rows, and keys an update moved a row to. Any
//! other key such an update touched is no concern of this chunk: it lies in
//! another chunk's key range, whose own read or window covers the update,
//! or its row was inserted whole after the read. So a chunk's re-reads stay
//! within what it read, and several chunks of a table can be in flight.
//!
//! [`Version::snapshot_row`]: pgfanout_core::Version::snapshot_row

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use pgfanout_core::{Change, ChangeOp, ColumnValue, Injection, Row, StreamTap, TableName, TableSchema, Transaction};
use pgoutput::{LogicalMessage, Lsn, PgTimestamp, Xid};
use tokio::sync::oneshot;

use crate::reader::{KeyText, ReadVisibility};

/// Prefix of the watermark messages (`pg_logical_emit_message`).
pub const WATERMARK_PREFIX: &str = "pgfanout-snapshot";

/// How many of the run's own watermark transactions the merge remembers
/// (see [`WatermarkMerge::watermark_transaction`]): far more than can be in
/// progress around one read; one forgotten costs a chunk's read, no more.
const OWN_TRANSACTIONS_KEPT: usize = 1024;

/// How many ids of transactions that changed a table being copied the
/// merge remembers (see [`TableHistory`]): at 5,000 such transactions a
/// second, the last 13 s; one forgotten costs a chunk's read, no more.
const TABLE_TRANSACTIONS_KEPT: usize = 65_536;

/// What became of a chunk at its high watermark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// The chunk was injected into the sink's stream.
    Merged {
        /// The high watermark's LSN: the injected transaction's end, which
        /// the sink acknowledges once the rows are applied.
        high_watermark: Lsn,
        /// Rows injected.
        written: usize,
        /// Rows dropped because the stream changed their key meanwhile.
        dropped: usize,
        /// Dropped keys to read again (see the module doc).
        reread: Vec<KeyText>,
    },
    /// The chunk cannot be merged safely; read it again.
    Retry {
        /// Why, for logs.
        reason: &'static str,
    },
}

/// A chunk as read, handed to the merge before its high watermark.
#[derive(Debug, Clone)]
pub struct ReadChunk {
    /// The table's shape the rows have.
    pub schema: Arc<TableSchema>,
    /// The rows, in key order.
    pub rows: Vec<Row>,
    /// Where each row's key columns are, in key order: a row's key is made
    /// only when the window holds a change to compare it with.
    pub key_positions: Vec<usize>,
    /// What the read could see.
    pub visibility: ReadVisibility,
    /// Transactions of `visibility.in_progress` that had committed by the
    /// time the read ended (`pg_xact_status`), queried before the high
    /// watermark was emitted.
    pub committed_in_progress: Vec<u64>,
}

/// A chunk registered with the merge: the watermark texts to emit and where
/// the outcome arrives.
#[derive(Debug)]
pub struct ChunkTicket {
    /// The chunk's id within this process.
    pub id: u64,
    /// Content of the low watermark message.
    pub low: String,
    /// Content of the high watermark message.
    pub high: String,
    /// The outcome, sent when the stream reaches the high watermark.
    pub outcome: oneshot::Receiver<ChunkOutcome>,
}

/// The merge's shared state: snapshot tasks register chunks, the stream
/// task ([`WatermarkMerge::tap`]) resolves them.
#[derive(Clone, Default)]
pub struct WatermarkMerge {
    shared: Arc<Mutex<Shared>>,
}

#[derive(Default)]
struct Shared {
    /// Tells this process's watermarks from those of an earlier run that a
    /// restarted stream may deliver again.
    run: u64,
    next_id: u64,
    chunks: HashMap<u64, Pending>,
    /// Transaction ids of this run's watermark statements, most recent last.
    own_transactions: VecDeque<u64>,
    /// The tables being copied, and the transactions that changed them.
    histories: HashMap<TableName, TableHistory>,
}

/// The streamed transactions that changed a table while it is copied: what
/// tells a transaction a read could not see, committed before its low
/// watermark and so never in its window, from one that changed no
/// published row (the stream delivers no such transaction).
#[derive(Default)]
struct TableHistory {
    /// Copies of the table under way ([`WatermarkMerge::track`]).
    copies: usize,
    /// Ids (as streamed) of the transactions that changed the table, in
    /// stream order, the most recent [`TABLE_TRANSACTIONS_KEPT`].
    order: VecDeque<u32>,
    ids: HashSet<u32>,
    /// The transaction id of the first low watermark of a chunk opened
    /// since the tracking began: a transaction with a later id started after
    /// that, so it committed after the tracking began and is recorded here
    /// if it changed the table. `None` until such a chunk was read.
    complete_from: Option<u64>,
    /// The latest id forgotten to keep the history bounded.
    forgotten: Option<u32>,
}

impl TableHistory {
    fn record(&mut self, xid: u32) {
        if !self.ids.insert(xid) {
            return;
        }
        self.order.push_back(xid);
        if self.order.len() > TABLE_TRANSACTIONS_KEPT {
            if let Some(oldest) = self.order.pop_front() {
                self.ids.remove(&oldest);
                // Ids come roughly in order: keep the latest one forgotten.
                if self.forgotten.is_none_or(|latest| (oldest.wrapping_sub(latest) as i32) > 0) {
                    self.forgotten = Some(oldest);
                }
            }
        }
    }

    /// Whether transaction `xid` (64-bit, of a read whose snapshot's `xmax`
    /// is `reference`), which the window did not see, may have changed the
    /// table before the low watermark.
    fn may_have_changed(&self, xid: u64, reference: u64) -> bool {
        let Some(complete_from) = self.complete_from else { return true };
        xid < complete_from
            || self.ids.contains(&(xid as u32))
            || self.forgotten.is_some_and(|latest| widen(latest, reference) >= xid)
    }
}

/// Keeps a table's transactions recorded while held (see
/// [`WatermarkMerge::track`]); dropped, the history goes with the last copy.
pub struct TableTracking {
    merge: WatermarkMerge,
    table: TableName,
}

impl Drop for TableTracking {
    fn drop(&mut self) {
        let mut shared = self.merge.lock();
        if let Some(history) = shared.histories.get_mut(&self.table) {
            history.copies -= 1;
            if history.copies == 0 {
                shared.histories.remove(&self.table);
            }
        }
    }
}

/// How a transaction in the window touched a key.
#[derive(Debug, Default, Clone, Copy)]
struct Touch {
    /// An update left a TOASTed value out: the sink may hold a partial row.
    partial: bool,
    /// An update moved a row to this key (from another).
    moved_in: bool,
}

struct Pending {
    sink: String,
    table: TableName,
    key_names: Vec<String>,
    window_open: bool,
    /// Keys streamed transactions touched inside the window, by transaction id.
    touched: HashMap<(u32, KeyText), Touch>,
    seen_xids: HashSet<u32>,
    truncated_by: Vec<u32>,
    read: Option<ReadChunk>,
    outcome: Option<oneshot::Sender<ChunkOutcome>>,
}

impl WatermarkMerge {
    /// A merge whose watermarks carry `run` (unique per process start).
    pub fn new(run: u64) -> WatermarkMerge {
        WatermarkMerge { shared: Arc::new(Mutex::new(Shared { run, ..Shared::default() })) }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a chunk of `table` for `sink`, keyed by `key_names`; emit
    /// the ticket's low watermark next.
    pub fn open(&self, sink: &str, table: &TableName, key_names: Vec<String>) -> ChunkTicket {
        let mut shared = self.lock();
        shared.next_id += 1;
        let id = shared.next_id;
        let (sender, outcome) = oneshot::channel();
        shared.chunks.insert(
            id,
            Pending {
                sink: sink.to_owned(),
                table: table.clone(),
                key_names,
                window_open: false,
                touched: HashMap::new(),
                seen_xids: HashSet::new(),
                truncated_by: Vec::new(),
                read: None,
                outcome: Some(sender),
            },
        );
        let run = shared.run;
        ChunkTicket { id, low: format!("{run:x}:{id}:low"), high: format!("{run:x}:{id}:high"), outcome }
    }

    /// Hands over the rows read for chunk `id`; emit its high watermark next.
    pub fn chunk_read(&self, id: u64, chunk: ReadChunk) {
        if let Some(pending) = self.lock().chunks.get_mut(&id) {
            pending.read = Some(chunk);
        }
    }

    /// Notes the transaction id of a watermark statement that committed
    /// (the 64-bit `pg_current_xact_id()` it took to flush its message).
    /// Such a transaction writes no row, so a read that could not see it
    /// missed nothing: a chunk whose read ran beside another chunk's
    /// watermark is merged, not read again.
    pub fn watermark_transaction(&self, xid: u64) {
        let mut shared = self.lock();
        if shared.own_transactions.len() == OWN_TRANSACTIONS_KEPT {
            shared.own_transactions.pop_front();
        }
        shared.own_transactions.push_back(xid);
    }

    /// Records, from now until the returned tracking is dropped, which
    /// streamed transactions change `table`; take it before the copy opens
    /// its first chunk, and note each chunk's low watermark with
    /// [`WatermarkMerge::low_watermark_transaction`]. A read that could not
    /// see a transaction committed meanwhile then reads its chunk again only
    /// if that transaction may have changed the table.
    pub fn track(&self, table: &TableName) -> TableTracking {
        self.lock().histories.entry(table.clone()).or_default().copies += 1;
        TableTracking { merge: self.clone(), table: table.clone() }
    }

    /// [`WatermarkMerge::watermark_transaction`] for the low watermark of
    /// chunk `id`: also where its table's history is complete from, if that
    /// was not known yet (the chunk was opened after the tracking began, so
    /// its watermark's id was taken after it).
    pub fn low_watermark_transaction(&self, id: u64, xid: u64) {
        self.watermark_transaction(xid);
        let mut shared = self.lock();
        let Some(table) = shared.chunks.get(&id).map(|pending| pending.table.clone()) else { return };
        if let Some(history) = shared.histories.get_mut(&table) {
            history.complete_from.get_or_insert(xid);
        }
    }

    /// Forgets chunk `id` (its read failed).
    pub fn cancel(&self, id: u64) {
        self.lock().chunks.remove(&id);
    }

    /// The tap to give the pipeline.
    pub fn tap(&self) -> Box<dyn StreamTap> {
        Box::new(Tap { merge: self.clone() })
    }
}

struct Tap {
    merge: WatermarkMerge,
}

impl StreamTap for Tap {
    fn transaction(&mut self, transaction: &Transaction) {
        let mut shared = self.merge.lock();
        if !shared.histories.is_empty() {
            // One look-up per run of changes to the same table, not per change.
            let mut last: Option<&Arc<TableSchema>> = None;
            for change in &transaction.changes {
                if last.is_some_and(|last| Arc::ptr_eq(last, &change.table)) {
                    continue;
                }
                last = Some(&change.table);
                if let Some(history) = shared.histories.get_mut(&change.table.table) {
                    history.record(transaction.xid.0);
                }
            }
        }
        for pending in shared.chunks.values_mut().filter(|pending| pending.window_open) {
            pending.seen_xids.insert(transaction.xid.0);
            for change in &transaction.changes {
                if change.table.table == pending.table {
                    pending.record(transaction.xid, change);
                }
            }
        }
    }

    fn message(&mut self, message: &LogicalMessage) -> Vec<Injection> {
        if message.prefix != WATERMARK_PREFIX {
            return Vec::new();
        }
        let Ok(content) = std::str::from_utf8(&message.content) else { return Vec::new() };
        let mut parts = content.split(':');
        let (Some(run), Some(id), Some(mark), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Vec::new();
        };
        let mut shared = self.merge.lock();
        if u64::from_str_radix(run, 16).ok() != Some(shared.run) {
            return Vec::new();
        }
        let Ok(id) = id.parse::<u64>() else { return Vec::new() };
        match mark {
            "low" => {
                if let Some(pending) = shared.chunks.get_mut(&id) {
                    pending.window_open = true;
                }
                Vec::new()
            }
            "high" => match shared.chunks.remove(&id) {
                Some(pending) => {
                    let history = shared.histories.get(&pending.table);
                    pending.resolve(message.lsn, &shared.own_transactions, history).into_iter().collect()
                }
                None => Vec::new(),
            },
            _ => Vec::new(),
        }
    }
}

impl Pending {
    /// Records the keys `change` touches (old and new, when the key changed).
    fn record(&mut self, xid: Xid, change: &Change) {
        let (old, new) = change.op.images();
        if matches!(change.op, ChangeOp::Truncate) {
            self.truncated_by.push(xid.0);
            return;
        }
        let partial = new.is_some_and(|row| row.contains(&ColumnValue::UnchangedToast));
        let old_key = old.and_then(|row| stream_key(&change.table, row, &self.key_names));
        let new_key = new.and_then(|row| stream_key(&change.table, row, &self.key_names));
        let moved = old_key.is_some() && new_key.is_some() && old_key != new_key;
        if let Some(key) = old_key {
            self.touched.entry((xid.0, key)).or_default().partial |= partial;
        }
        if let Some(key) = new_key {
            let touch = self.touched.entry((xid.0, key)).or_default();
            touch.partial |= partial;
            touch.moved_in |= moved;
        }
    }

    /// The chunk's fate at the high watermark `lsn`; `own_transactions`
    /// are the run's watermark transactions (they write no row), `history`
    /// the table's, if it is tracked.
    fn resolve(
        mut self,
        lsn: Lsn,
        own_transactions: &VecDeque<u64>,
        history: Option<&TableHistory>,
    ) -> Option<Injection> {
        let outcome_sender = self.outcome.take();
        let send = |outcome: ChunkOutcome| {
            if let Some(sender) = outcome_sender {
                let _ = sender.send(outcome);
            }
        };
        let Some(read) = self.read.take() else {
            send(ChunkOutcome::Retry { reason: "the high watermark came before the chunk was read" });
            return None;
        };
        let visibility = &read.visibility;
        let missed = read.committed_in_progress.iter().any(|&xid| {
            !self.seen_xids.contains(&(xid as u32))
                && !own_transactions.contains(&xid)
                && history.is_none_or(|history| history.may_have_changed(xid, visibility.xmax))
        }) || history.is_some_and(|history| {
            // In progress for the read, yet streamed before the low watermark
            // with a change to the table: it committed before the low
            // watermark, whatever `pg_xact_status` said at the read's end
            // (its backend may not have marked it committed yet).
            visibility
                .in_progress
                .iter()
                .any(|&xid| history.ids.contains(&(xid as u32)) && !self.seen_xids.contains(&(xid as u32)))
        });
        if missed {
            send(ChunkOutcome::Retry {
                reason: "a transaction the read could not see committed before the low watermark",
            });
            return None;
        }
        if self.truncated_by.iter().any(|&xid| !visibility.sees(xid)) {
            send(ChunkOutcome::Retry { reason: "the table was truncated while the chunk was read" });
            return None;
        }
        let mut dropped_keys: HashSet<&KeyText> = HashSet::new();
        let mut partial_keys: Vec<(&KeyText, Touch)> = Vec::new();
        for ((xid, key), &touch) in &self.touched {
            if visibility.sees(*xid) {
                continue;
            }
            dropped_keys.insert(key);
            if touch.partial {
                partial_keys.push((key, touch));
            }
        }
        // Most windows touch no key of the table: the rows' keys are then
        // never needed.
        let keys: Vec<Option<KeyText>> = match dropped_keys.is_empty() {
            true => Vec::new(),
            false => read.rows.iter().map(|row| key_text(row, &read.key_positions)).collect(),
        };
        // See the module doc: only keys read, or moved to, are read again.
        let read_keys: HashSet<&KeyText> = match partial_keys.is_empty() {
            true => HashSet::new(),
            false => keys.iter().flatten().collect(),
        };
        let mut reread: Vec<KeyText> = Vec::new();
        for (key, touch) in partial_keys {
            if (touch.moved_in || read_keys.contains(key)) && !reread.contains(key) {
                reread.push(key.clone());
            }
        }
        drop(read_keys);
        let mut changes = Vec::with_capacity(read.rows.len());
        let mut dropped = 0;
        for (at, row) in read.rows.into_iter().enumerate() {
            if keys.get(at).and_then(Option::as_ref).is_some_and(|key| dropped_keys.contains(key)) {
                dropped += 1;
                continue;
            }
            let ordinal = u32::try_from(changes.len()).unwrap_or(u32::MAX);
            changes.push(Change { table: read.schema.clone(), op: ChangeOp::Insert { new: row }, ordinal });
        }
        let written = changes.len();
        let version = pgfanout_core::Version::snapshot_row(lsn, 0);
        let transaction =
            Transaction { xid: Xid(0), commit_lsn: version.commit_lsn, end_lsn: lsn, commit_time: now(), changes };
        send(ChunkOutcome::Merged { high_watermark: lsn, written, dropped, reread });
        Some(Injection { sink: self.sink, transaction })
    }
}

impl ReadVisibility {
    /// Whether the read saw the effects of transaction `xid` (a 32-bit id
    /// from the stream, placed in the epoch around the snapshot's `xmax`).
    pub fn sees(&self, xid: u32) -> bool {
        let full = widen(xid, self.xmax);
        full < self.xmin || (full < self.xmax && !self.in_progress.contains(&full))
    }
}

/// The 64-bit transaction id nearest `reference` whose low 32 bits are `xid`.
fn widen(xid: u32, reference: u64) -> u64 {
    let candidate = (reference & !0xFFFF_FFFF) | u64::from(xid);
    if candidate > reference.saturating_add(1 << 31) && candidate >= 1 << 32 {
        candidate - (1 << 32)
    } else if candidate.saturating_add(1 << 31) < reference {
        candidate + (1 << 32)
    } else {
        candidate
    }
}

/// The key of a row read as text, its values at `positions` in key order;
/// `None` if a key value is missing (NULL cannot be in a key, so only a
/// malformed row).
pub fn key_text(row: &Row, positions: &[usize]) -> Option<KeyText> {
    positions
        .iter()
        .map(|&position| match row.get(position)? {
            ColumnValue::Text(bytes) => std::str::from_utf8(bytes).ok().map(str::to_owned),
            _ => None,
        })
        .collect()
}

/// The key of a streamed row as the reader's key text: `key_names` looked up
/// in the stream's shape; `None` when a key value is absent.
fn stream_key(schema: &TableSchema, row: &Row, key_names: &[String]) -> Option<KeyText> {
    key_names
        .iter()
        .map(|name| {
            let position = schema.position(name)?;
            match row.get(position)? {
                ColumnValue::Text(bytes) => std::str::from_utf8(bytes).ok().map(str::to_owned),
                value @ ColumnValue::Binary(_) => schema.typed_value(position, value).ok()??.to_pg_text(),
                ColumnValue::Null | ColumnValue::UnchangedToast => None,
            }
        })
        .collect()
}

/// Now, as a commit time for injected chunks.
fn now() -> PgTimestamp {
    let unix_micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX));
    PgTimestamp(unix_micros - PgTimestamp::UNIX_EPOCH_OFFSET_MICROS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use pgfanout_core::ColumnSchema;
    use pgoutput::{Oid, ReplicaIdentity, TypeRegistry};

    fn schema() -> Arc<TableSchema> {
        Arc::new(TableSchema {
            oid: Oid(1),
            table: TableName::parse("t"),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                ColumnSchema { name: "id".into(), type_oid: Oid(23), is_key: true },
                ColumnSchema { name: "body".into(), type_oid: Oid(25), is_key: false },
            ],
            types: Arc::new(TypeRegistry::new()),
        })
    }

    fn text(value: &str) -> ColumnValue {
        ColumnValue::Text(Bytes::copy_from_slice(value.as_bytes()))
    }

    fn row(id: &str, body: ColumnValue) -> Row {
        vec![text(id), body]
    }

    fn transaction(xid: u32, commit: u64, ops: Vec<ChangeOp>) -> Transaction {
        let changes = ops
            .into_iter()
            .enumerate()
            .map(|(ordinal, op)| Change { table: schema(), op, ordinal: ordinal as u32 })
            .collect();
        Transaction {
            xid: Xid(xid),
            commit_lsn: Lsn(commit),
            end_lsn: Lsn(commit + 8),
            commit_time: PgTimestamp(0),
            changes,
        }
    }

    fn mark(content: &str, lsn: u64) -> LogicalMessage {
        LogicalMessage {
            xid: None,
            transactional: false,
            lsn: Lsn(lsn),
            prefix: WATERMARK_PREFIX.into(),
            content: Bytes::copy_from_slice(content.as_bytes()),
        }
    }

    fn read(ids: &[&str], visibility: ReadVisibility, committed_in_progress: Vec<u64>) -> ReadChunk {
        ReadChunk {
            schema: schema(),
            rows: ids.iter().map(|id| row(id, text("snap"))).collect(),
            key_positions: vec![0],
            visibility,
            committed_in_progress,
        }
    }

    /// Snapshot S = 100:110:[104]: 99 visible, 104 and 120 not.
    fn visibility() -> ReadVisibility {
        ReadVisibility { xmin: 100, xmax: 110, in_progress: vec![104] }
    }

    #[test]
    fn keys_changed_by_transactions_the_read_missed_are_dropped_and_the_rest_injected_at_the_high_mark() {
        let merge = WatermarkMerge::new(7);
        let mut tap = merge.tap();
        let ticket = merge.open("cache", &TableName::parse("t"), vec!["id".into()]);
        // Before the low watermark: not in the window, whatever it touched.
        tap.transaction(&transaction(120, 10, vec![ChangeOp::Delete { old: row("5", ColumnValue::Null) }]));
        assert!(tap.message(&mark(&ticket.low, 20)).is_empty());
        // Seen by the read: its effect is in the chunk already.
        tap.transaction(&transaction(99, 30, vec![ChangeOp::Insert { new: row("1", text("x")) }]));
        // Missed by the read: the stream's change stands.
        tap.transaction(&transaction(104, 40, vec![ChangeOp::Delete { old: row("2", ColumnValue::Null) }]));
        tap.transaction(&transaction(
            120,
            50,
            vec![ChangeOp::Update { old: Some(row("3", ColumnValue::Null)), new: row("30", text("moved")) }],
        ));
        merge.chunk_read(ticket.id, read(&["1", "2", "3", "4", "5"], visibility(), vec![104]));
        let injected = tap.message(&mark(&ticket.high, 60));
        assert_eq!(injected.len(), 1);
        let injection = &injected[0];
        assert_eq!(injection.sink, "cache");
        assert_eq!(injection.transaction.end_lsn, Lsn(60));
        assert_eq!(injection.transaction.commit_lsn, Lsn(59));
        let ids: Vec<_> = injection
            .transaction
            .changes
            .iter()
            .map(|change| match &change.op {
                ChangeOp::Insert { new } => new[0].as_bytes().map(|b| String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(ids, vec![Some("1".into()), Some("4".into()), Some("5".into())]);
        let ordinals: Vec<_> = injection.transaction.changes.iter().map(|change| change.ordinal).collect();
        assert_eq!(ordinals, vec![0, 1, 2]);
        let mut outcome = ticket.outcome;
        assert_eq!(
            outcome.try_recv().unwrap(),
            ChunkOutcome::Merged { high_watermark: Lsn(60), written: 3, dropped: 2, reread: vec![] }
        );
    }

    #[test]
    fn a_commit_the_read_missed_before_the_low_mark_makes_the_chunk_read_again() {
        let merge = WatermarkMerge::new(7);
        let mut tap = merge.tap();
        let ticket = merge.open("cache", &TableName::parse("t"), vec!["id".into()]);
        tap.message(&mark(&ticket.low, 20));
        merge.chunk_read(ticket.id, read(&["1"], visibility(), vec![104]));
        assert!(tap.message(&mark(&ticket.high, 60)).is_empty());
        let mut outcome = ticket.outcome;
        assert!(matches!(outcome.try_recv().unwrap(), ChunkOutcome::Retry { .. }));
    }

    /// A tracked copy of table t whose chunk's low watermark took
    /// transaction id `low_xid`; its read saw [`visibility`] and found 104
    /// committed by its end. Returns whether the chunk is read again, after
    /// the stream delivered `before_low` before its low watermark.
    fn tracked_read_again(low_xid: u64, before_low: Option<Transaction>) -> bool {
        let merge = WatermarkMerge::new(7);
        let mut tap = merge.tap();
        let _tracking = merge.track(&TableName::parse("t"));
        let ticket = merge.open("cache", &TableName::parse("t"), vec!["id".into()]);
        merge.low_watermark_transaction(ticket.id, low_xid);
        if let Some(transaction) = before_low {
            tap.transaction(&transaction);
        }
        tap.message(&mark(&ticket.low, 20));
        merge.chunk_read(ticket.id, read(&["1", "2"], visibility(), vec![104]));
        let injected = tap.message(&mark(&ticket.high, 60));
        let mut outcome = ticket.outcome;
        match outcome.try_recv().unwrap() {
            ChunkOutcome::Retry { .. } => true,
            ChunkOutcome::Merged { written, .. } => {
                assert_eq!((written, injected.len()), (2, 1));
                false
            }
        }
    }

    /// 104 committed before the read ended without the stream delivering
    /// it, so it changed no published row (an unpublished table's write, or
    /// nothing): the chunk stands. Untracked, it is read again (the merge
    /// cannot tell such a transaction from one it forgot).
    #[test]
    fn a_transaction_the_stream_never_delivered_costs_no_second_read_of_a_tracked_table() {
        assert!(!tracked_read_again(102, None));
        let changed_another_table = {
            let mut transaction = transaction(104, 10, vec![ChangeOp::Insert { new: row("1", text("x")) }]);
            let mut other = (*schema()).clone();
            other.table = TableName::parse("u");
            transaction.changes[0].table = Arc::new(other);
            transaction
        };
        assert!(!tracked_read_again(102, Some(changed_another_table)), "104 changed table u only");
    }

    /// 104 changed the table and committed before the low watermark while
    /// the read could not see it: read again, as untracked.
    #[test]
    fn a_tracked_transaction_that_changed_the_table_before_the_low_mark_makes_the_chunk_read_again() {
        let changed = transaction(104, 10, vec![ChangeOp::Delete { old: row("2", ColumnValue::Null) }]);
        assert!(tracked_read_again(102, Some(changed)));
    }

    /// 104 changed the table, was streamed before the low watermark, and
    /// was still in progress for the read; `pg_xact_status` at the read's
    /// end did not call it committed yet (its backend had flushed the
    /// commit record, not yet marked it in the commit log). The stream's
    /// record shows it committed before the low watermark: read again.
    #[test]
    fn a_streamed_change_the_read_saw_in_progress_makes_the_chunk_read_again_whatever_its_status() {
        let merge = WatermarkMerge::new(7);
        let mut tap = merge.tap();
        let _tracking = merge.track(&TableName::parse("t"));
        let ticket = merge.open("cache", &TableName::parse("t"), vec!["id".into()]);
        merge.low_watermark_transaction(ticket.id, 102);
        tap.transaction(&transaction(104, 10, vec![ChangeOp::Delete { old: row("2", ColumnValue::Null) }]));
        tap.message(&mark(&ticket.low, 20));
        merge.chunk_read(ticket.id, read(&["1", "2"], visibility(), vec![]));
        assert!(tap.message(&mark(&ticket.high, 60)).is_empty());
        let mut outcome = ticket.outcome;
        assert!(matches!(outcome.try_recv().unwrap(), ChunkOutcome::Retry { .. }));
    }

    /// 104 started before the tracking could have seen it commit (its id is
    /// below the first low watermark's): read again.
    #[test]
    fn a_transaction_older_than_the_tracking_makes_the_chunk_read_again() {
        assert!(tracked_read_again(105, None));
    }

    /// Past the history's bound the oldest ids are forgotten: a forgotten
    /// transaction counts as one that may have changed the table.
    #[test]
    fn a_forgotten_transaction_counts_as_one_that_changed_the_table() {
        let mut history = TableHistory { complete_from: Some(1_000), ..TableHistory::default() };
        for xid in 1_000..1_000 + TABLE_TRANSACTIONS_KEPT as u32 + 10 {
            history.record(xid);
        }
        assert_eq!(history.order.len(), TABLE_TRANSACTIONS_KEPT);
        assert!(history.may_have_changed(1_005, 1 << 20), "forgotten");
        assert!(history.may_have_changed(1_000 + TABLE_TRANSACTIONS_KEPT as u64, 1 << 20), "kept");
        assert!(!history.may_have_changed(1_000 + TABLE_TRANSACTIONS_KEPT as u64 + 20, 1 << 20), "never recorded");
    }

    /// The history lives while a copy of the table holds its tracking.
    #[test]
    fn the_history_goes_with_the_last_copy_of_the_table() {
        let merge = WatermarkMerge::new(7);
        let table = TableName::parse("t");
        let (first, second) = (merge.track(&table), merge.track(&table));
        drop(first);
        assert!(merge.lock().histories.contains_key(&table));
        drop(second);
        assert!(!merge.lock().histories.contains_key(&table));
    }

    #[test]
    fn another_chunks_watermark_the_read_could_not_see_needs_no_second_read() {
        let merge = WatermarkMerge::new(7);
        let mut tap = merge.tap();
        let ticket = merge.open("cache", &TableName::parse("t"), vec!["id".into()]);
        tap.message(&mark(&ticket.low, 20));
        // 104 is another chunk's watermark statement, in progress when the
        // read took its snapshot and committed (without a change) since.
        merge.watermark_transaction(104);
        merge.chunk_read(ticket.id, read(&["1", "2"], visibility(), vec![104]));
        assert_eq!(tap.message(&mark(&ticket.high, 60))[0].transaction.changes.len(), 2);
        let mut outcome = ticket.outcome;
        assert!(matches!(outcome.try_recv().unwrap(), ChunkOutcome::Merged { written: 2, .. }));
    }

    #[test]
    fn a_partial_update_the_read_missed_asks_for_its_key_again() {
        let merge = WatermarkMerge::new(7);
        let mut tap = merge.tap();
        let ticket = merge.open("cache", &TableName::parse("t"), vec!["id".into()]);
        tap.message(&mark(&ticket.low, 20));
        tap.transaction(&transaction(
            121,
            30,
            vec![ChangeOp::Update { old: None, new: row("2", ColumnValue::UnchangedToast) }],
        ));
        merge.chunk_read(ticket.id, read(&["1", "2"], visibility(), vec![]));
        let injected = tap.message(&mark(&ticket.high, 60));
        assert_eq!(injected[0].transaction.changes.len(), 1);
        let mut outcome = ticket.outcome;
        assert_eq!(
            outcome.try_recv().unwrap(),
            ChunkOutcome::Merged { high_watermark: Lsn(60), written: 1, dropped: 1, reread: vec![vec!["2".into()]] }
        );
    }

    #[test]
    fn only_keys_the_chunk_read_or_a_row_moved_to_are_read_again() {
        let merge = WatermarkMerge::new(7);
        let mut tap = merge.tap();
        let ticket = merge.open("cache", &TableName::parse("t"), vec!["id".into()]);
        tap.message(&mark(&ticket.low, 20));
        let partial = |id: &str| row(id, ColumnValue::UnchangedToast);
        tap.transaction(&transaction(
            121,
            30,
            vec![
                // Another chunk's key (not read here): that chunk covers it.
                ChangeOp::Update { old: None, new: partial("9") },
                // Moved from a key read here to one read by no chunk yet.
                ChangeOp::Update { old: Some(row("1", ColumnValue::Null)), new: partial("70") },
            ],
        ));
        merge.chunk_read(ticket.id, read(&["1", "2"], visibility(), vec![]));
        let injected = tap.message(&mark(&ticket.high, 60));
        assert_eq!(injected[0].transaction.changes.len(), 1, "key 1 is dropped, 2 written");
        let ChunkOutcome::Merged { mut reread, dropped, .. } = ticket.outcome.blocking_recv().unwrap() else {
            panic!("merged")
        };
        reread.sort();
        assert_eq!(dropped, 1);
        assert_eq!(reread, vec![vec!["1".to_owned()], vec!["70".to_owned()]]);
    }

    #[test]
    fn watermarks_of_another_run_or_prefix_are_ignored() {
        let merge = WatermarkMerge::new(7);
        let mut tap = merge.tap();
        let ticket = merge.open("cache", &TableName::parse("t"), vec!["id".into()]);
        merge.chunk_read(ticket.id, read(&["1"], visibility(), vec![]));
        let other_run = ticket.high.replacen('7', "8", 1);
        assert!(tap.message(&mark(&other_run, 60)).is_empty());
        let mut other_prefix = mark(&ticket.high, 60);
        other_prefix.prefix = "heartbeat".into();
        assert!(tap.message(&other_prefix).is_empty());
        assert_eq!(tap.message(&mark(&ticket.high, 70)).len(), 1, "the right mark still resolves it");
    }

    #[test]
    fn visibility_places_stream_xids_in_the_snapshot_epoch() {
        let epoch = 3u64 << 32;
        let around_wrap = ReadVisibility { xmin: epoch - 5, xmax: epoch + 5, in_progress: vec![epoch + 1] };
        assert!(around_wrap.sees(u32::MAX - 10), "old epoch, finished before xmin");
        assert!(around_wrap.sees(2), "new epoch, below xmax, not in progress");
        assert!(!around_wrap.sees(1), "in progress");
        assert!(!around_wrap.sees(9), "from xmax on");
    }
}
