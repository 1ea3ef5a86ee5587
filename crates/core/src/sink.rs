//! The contract between the pipeline and a store.
//!
//! A [`Sink`] is driven by one worker task. Its input is at-least-once: after
//! a crash the same changes may come again, so every write must be
//! idempotent, and the sink's stored checkpoint lets the worker skip what the
//! store already holds.
//!
//! Calls may overlap: the worker splits a batch into *lanes* by key and calls
//! [`Sink::apply`] once per lane concurrently. Two lanes never share a key,
//! and within a call the changes of any one key are in commit order and must
//! be applied in that order. The checkpoint is handed over only once every
//! lane of the batch succeeded — with the batch's changes when there is a
//! single lane (so a store with transactions can write both atomically), in
//! a call of its own otherwise.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pgoutput::Lsn;

use crate::model::{Change, TableSchema, Transaction};

/// Whether retrying can help, and whether the error is about one change or
/// about the store.
///
/// Only [`ErrorKind::Permanent`] is about one change, and only it may send a
/// change to the dead-letter destination. The other two say nothing about
/// the change: the worker retries them whatever `on_error` says, so a store
/// that is full, read-only or unauthorised never turns the stream into dead
/// letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The store is unreachable, busy or timed out: retry the same batch.
    Transient,
    /// The store as a whole cannot take writes until an operator acts: out of
    /// memory, read-only replica, misconfigured persistence, no permission,
    /// failed authentication, a missing table or keyspace, a full disk.
    /// Retried (the worker blocks), never dead-lettered.
    StoreFailing,
    /// The store rejects this change itself (a value it cannot hold, a
    /// document too large): retrying alone will not help.
    Permanent,
}

impl ErrorKind {
    /// `transient`, `store` or `permanent`, for metric labels.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Transient => "transient",
            ErrorKind::StoreFailing => "store",
            ErrorKind::Permanent => "permanent",
        }
    }

    /// Every kind, for metric series that exist from the start.
    pub const ALL: [ErrorKind; 3] = [ErrorKind::Transient, ErrorKind::StoreFailing, ErrorKind::Permanent];
}

/// A failure reported by a sink, classified for the retry policy.
#[derive(Debug, thiserror::Error)]
#[error("sink {sink}: {message}")]
pub struct SinkError {
    /// Sink name from the config.
    pub sink: String,
    /// Retry classification.
    pub kind: ErrorKind,
    /// What failed, with context (table, key template, LSN).
    pub message: String,
    /// The store driver's error.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl SinkError {
    /// A transient error with its cause.
    pub fn transient(
        sink: &str,
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        SinkError {
            sink: sink.to_owned(),
            kind: ErrorKind::Transient,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// A store-wide failure with its cause (see [`ErrorKind::StoreFailing`]).
    pub fn store_failing(
        sink: &str,
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        SinkError {
            sink: sink.to_owned(),
            kind: ErrorKind::StoreFailing,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// [`Sink::wipe`] refused for `table`: `reason` says why and what to do instead.
    pub fn cannot_wipe(sink: &str, table: &str, reason: &str) -> Self {
        SinkError {
            sink: sink.to_owned(),
            kind: ErrorKind::Permanent,
            message: format!("cannot wipe table {table}: {reason}"),
            source: None,
        }
    }

    /// A permanent error; `source` may be absent when the sink itself found the problem.
    pub fn permanent(sink: &str, message: impl Into<String>) -> Self {
        SinkError { sink: sink.to_owned(), kind: ErrorKind::Permanent, message: message.into(), source: None }
    }
}

/// One change handed to a sink, with the transaction it belongs to.
#[derive(Debug, Clone, Copy)]
pub struct ChangeRef<'a> {
    /// The committed transaction (commit LSN, end LSN, commit time).
    pub transaction: &'a Transaction,
    /// The change.
    pub change: &'a Change,
}

impl ChangeRef<'_> {
    /// The change's version (see [`Version`]).
    pub fn version(&self) -> Version {
        Version { commit_lsn: self.transaction.commit_lsn, ordinal: self.change.ordinal }
    }
}

/// What a call of [`Sink::apply`] was doing, for error messages: the number
/// of changes and their commit LSN range, or the checkpoint alone.
pub fn describe_apply(changes: &[ChangeRef<'_>], checkpoint: Option<Lsn>) -> String {
    match (changes.first(), changes.last()) {
        (Some(first), Some(last)) => format!(
            "applying {} changes, commit LSNs {} to {}",
            changes.len(),
            first.transaction.commit_lsn,
            last.transaction.commit_lsn
        ),
        _ => format!("storing checkpoint {}", checkpoint.unwrap_or_default()),
    }
}

/// A [`Version`]'s sortable text ([`Version::sortable`]): 25 ASCII bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortableVersion([u8; Version::SORTABLE_LEN]);

impl SortableVersion {
    /// The text's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Hex digits and a dot, written by `Version::sortable`: always ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// A change's place in the stream: the commit LSN of its transaction, then
/// its position in the transaction. Versions grow strictly along the stream
/// (commits are sent in commit order, each at a higher LSN), so a store that
/// keeps the version with each row can refuse to move the row backwards when
/// changes come again after a crash or a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Commit LSN of the transaction.
    pub commit_lsn: Lsn,
    /// Position of the change in the transaction, from 0.
    pub ordinal: u32,
}

impl Version {
    /// Length of [`to_sortable_string`](Self::to_sortable_string)'s output.
    pub const SORTABLE_LEN: usize = 25;

    /// Fixed-width upper-case hex, `LLLLLLLLLLLLLLLL.OOOOOOOO`, whose byte
    /// order is the version order: for stores that compare versions as
    /// strings (Lua scripts, document filters, graph properties).
    pub fn to_sortable_string(&self) -> String {
        self.sortable().as_str().to_owned()
    }

    /// [`to_sortable_string`](Self::to_sortable_string)'s text on the
    /// stack, for encoders that write it per row without allocating.
    pub fn sortable(&self) -> SortableVersion {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let mut text = [b'.'; Version::SORTABLE_LEN];
        let lsn = self.commit_lsn.0;
        for (i, digit) in text[..16].iter_mut().enumerate() {
            *digit = HEX[(lsn >> (60 - 4 * i) & 0xf) as usize];
        }
        for (i, digit) in text[17..].iter_mut().enumerate() {
            *digit = HEX[(self.ordinal >> (28 - 4 * i) & 0xf) as usize];
        }
        SortableVersion(text)
    }

    /// The version of the `row`-th row of a snapshot chunk merged into the
    /// stream at the high watermark message whose LSN is `high_watermark`
    /// (the end of its WAL record, as pgoutput and
    /// `pg_logical_emit_message` report it).
    ///
    /// It is `(high_watermark - 1, row)`, strictly between every streamed
    /// change before the watermark and every one after it:
    /// - a transaction committed before the message has its commit record
    ///   wholly before the message's record, so its commit LSN (the record's
    ///   start) is at most `high_watermark - 2`: a snapshot row beats it;
    /// - a transaction committed after the message has its commit record
    ///   start at or after the message's end, `high_watermark`: it beats
    ///   every snapshot row, so a later update or delete always wins and a
    ///   re-applied (older) chunk never moves a row back.
    ///
    /// The chunk's transaction ends at `high_watermark`, after every
    /// earlier transaction's end and before every later one's, so sink
    /// checkpoints keep growing along the stream.
    pub fn snapshot_row(high_watermark: Lsn, row: u32) -> Version {
        Version { commit_lsn: Lsn(high_watermark.0.saturating_sub(1)), ordinal: row }
    }

    /// Reads [`to_sortable_string`](Self::to_sortable_string)'s output back.
    pub fn parse_sortable(text: &str) -> Option<Version> {
        let (lsn, ordinal) = text.split_once('.')?;
        if lsn.len() != 16 || ordinal.len() != 8 {
            return None;
        }
        Some(Version {
            commit_lsn: Lsn(u64::from_str_radix(lsn, 16).ok()?),
            ordinal: u32::from_str_radix(ordinal, 16).ok()?,
        })
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.commit_lsn, self.ordinal)
    }
}

/// From where `pgfanout replay` can re-apply transactions: the change
/// archive holds every transaction committed at or after this LSN. The
/// archive moves it forward (it starts, retention removes old segments); a
/// sink reads it to know how long what it keeps for re-applied changes is
/// still needed. [`Lsn::ZERO`] (the start, and an archive holding nothing
/// yet) means "from anywhere": keep everything.
#[derive(Debug, Clone, Default)]
pub struct ReplayHorizon(Arc<AtomicU64>);

impl ReplayHorizon {
    /// The oldest commit LSN a replay can start from.
    pub fn replayable_from(&self) -> Lsn {
        Lsn(self.0.load(Ordering::Acquire))
    }

    /// Sets where replays can start from now (only the archive does).
    pub fn set(&self, from: Lsn) {
        self.0.store(from.0, Ordering::Release);
    }
}

/// A destination store.
#[async_trait]
pub trait Sink: Send + Sync {
    /// The sink's name from the config, used in logs, metrics and checkpoints.
    fn name(&self) -> &str;

    /// Connects (or checks the connection) and reads the end LSN of the last
    /// transaction the store durably holds, if any.
    async fn load_checkpoint(&self) -> Result<Option<Lsn>, SinkError>;

    /// Reads the [`SourceRecord`](crate::SourceRecord) text stored beside
    /// the checkpoint (see [`Sink::store_source`]), `None` if there is none.
    async fn load_source(&self) -> Result<Option<String>, SinkError>;

    /// Durably stores `record` (a [`SourceRecord`](crate::SourceRecord)'s
    /// text) beside the checkpoint, replacing the previous one. It may be
    /// called while [`Sink::apply`] runs; it must not touch the checkpoint.
    async fn store_source(&self, record: &str) -> Result<(), SinkError>;

    /// Reads the snapshot progress text stored beside the checkpoint (see
    /// [`Sink::store_snapshot_progress`]), `None` if there is none. Default:
    /// none, for a sink that keeps no progress.
    async fn load_snapshot_progress(&self) -> Result<Option<String>, SinkError> {
        Ok(None)
    }

    /// Durably stores `progress` (the snapshot's record of which chunks of
    /// which tables the store holds) beside the checkpoint, replacing the
    /// previous one. Called only after the chunks it names were applied. It
    /// may be called while [`Sink::apply`] runs. Default: nothing is kept,
    /// so an interrupted snapshot of such a sink starts over (still correct:
    /// re-applied chunk rows never move a row back).
    async fn store_snapshot_progress(&self, progress: &str) -> Result<(), SinkError> {
        let _ = progress;
        Ok(())
    }

    /// Applies `changes` in order (per key) and, when `checkpoint` is given,
    /// stores it too, atomically with the changes where the store allows.
    /// `changes` may be empty (checkpoint only). On `Ok` everything passed is
    /// durable. On `Err` the worker calls again with the same arguments (or
    /// with the changes one at a time, to find one the store rejects), so a
    /// partial apply must be safe to repeat.
    async fn apply(&self, changes: &[ChangeRef<'_>], checkpoint: Option<Lsn>) -> Result<(), SinkError>;

    /// Pushes onto `keys` a hash for each store object `change` writes
    /// besides its own row (a graph node a foreign key merges), so that the
    /// worker keeps every change touching one object in one lane, in order
    /// (see [`crate::lanes`]). Default: none, the row alone.
    fn related_lane_keys(&self, change: &ChangeRef<'_>, keys: &mut Vec<u64>) {
        let _ = (change, keys);
    }

    /// Fewest changes worth a lane of their own: the worker splits a batch
    /// into at most `changes / min_lane_changes` of its configured lanes (at
    /// least one), so a small batch is one call carrying its checkpoint
    /// rather than several calls and then the checkpoint. Default 1: every
    /// configured lane is used.
    fn min_lane_changes(&self) -> usize {
        1
    }

    /// Problems that would make [`Sink::apply`] refuse changes of a table of
    /// this shape (as the sink receives it, after mapping), one line each
    /// with its fix: a key it cannot build (no primary key and no key
    /// columns in the config), key columns an update or delete does not
    /// carry, columns the table does not publish. `check` reports them and
    /// `run` refuses to start on them. The default finds none.
    fn table_problems(&self, table: &TableSchema) -> Vec<String> {
        let _ = table;
        Vec::new()
    }

    /// Removes what this sink wrote for `table` (its mapped shape), and
    /// only that: rows, documents, nodes and relationships other
    /// applications wrote stay. With `older_than`, only what pgfanout wrote
    /// at a version below it goes, each object checked and removed
    /// atomically, so a change the stream applies meanwhile (a newer
    /// version) survives: `rebuild --wipe` runs it while streaming goes on,
    /// after the sink applied every change before `older_than`. Without
    /// it, everything pgfanout wrote for the table goes (nothing streams
    /// meanwhile: the standalone rebuild). A store that cannot compare
    /// versions in place may, with `older_than`, also remove what the
    /// stream applied after it, because the caller copies the table right
    /// after the wipe returns: such a change was committed before the copy
    /// reads the table, so the copy writes it back. Returns the objects
    /// removed. Default: [`SinkError::cannot_wipe`].
    async fn wipe(&self, table: &TableSchema, older_than: Option<Version>) -> Result<u64, SinkError> {
        let _ = older_than;
        Err(SinkError::cannot_wipe(self.name(), &table.table.to_string(), "this sink kind does not implement it"))
    }

    /// Called once before the worker starts, only when a change archive is
    /// configured: `pgfanout replay` may re-apply, in order, any archived
    /// transaction committed at or after `horizon`'s LSN, so what the sink
    /// keeps to apply a change again exactly (beyond what its checkpoint
    /// covers) must be kept from there on. Without this call no replay is
    /// possible, and only crashes re-apply changes (those after the
    /// checkpoint). Default: the sink keeps nothing of the kind.
    fn keep_replayable(&self, horizon: ReplayHorizon) {
        let _ = horizon;
    }

    /// Read access to what the sink stored, for `verify`; `None` (the
    /// default) when the sink stores nothing it can read back.
    fn read_back(&self) -> Option<&dyn crate::readback::ReadBack> {
        None
    }
}

/// Where changes a store rejects go when a sink runs with
/// `on_error = "dead_letter"`.
#[async_trait]
pub trait DeadLetterQueue: Send + Sync {
    /// A short description for logs (`file /var/lib/…`, `redis stream …`).
    fn describe(&self) -> String;

    /// Durably records `change`, which sink `sink` rejected with `error`.
    async fn record(&self, sink: &str, change: ChangeRef<'_>, error: &str) -> Result<(), SinkError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn sortable_strings_order_like_versions(a in any::<(u64, u32)>(), b in any::<(u64, u32)>()) {
            let a = Version { commit_lsn: Lsn(a.0), ordinal: a.1 };
            let b = Version { commit_lsn: Lsn(b.0), ordinal: b.1 };
            let (text_a, text_b) = (a.to_sortable_string(), b.to_sortable_string());
            prop_assert_eq!(text_a.len(), Version::SORTABLE_LEN);
            prop_assert_eq!(a.cmp(&b), text_a.cmp(&text_b));
            prop_assert_eq!(Version::parse_sortable(&text_a), Some(a));
            prop_assert_eq!(text_a, format!("{:016X}.{:08X}", a.commit_lsn.0, a.ordinal));
        }

        #[test]
        fn snapshot_rows_sit_between_the_changes_around_their_watermark(
            watermark in 16u64..u64::MAX / 2, before in 2u64..1000, after in 0u64..1000,
            row in any::<u32>(), ordinal in any::<u32>(),
        ) {
            // A commit record before the watermark record starts at least
            // two bytes before the watermark's end; one after starts at or past it.
            let earlier = Version { commit_lsn: Lsn(watermark - before.min(watermark)), ordinal };
            let later = Version { commit_lsn: Lsn(watermark + after), ordinal };
            let snapshot = Version::snapshot_row(Lsn(watermark), row);
            prop_assert!(earlier < snapshot);
            prop_assert!(snapshot < later);
        }
    }
}
