//! The archive as one more acknowledger: a [`Sink`] whose "store" is the
//! archive folder, driven by a sink worker like any store, so that the flush
//! LSN confirmed to PostgreSQL never passes a transaction that is not durable
//! in the archive.
//!
//! The worker must run it with one lane (`lanes = 1`): then every call gets
//! changes in stream order with the batch's checkpoint. A call's changes are
//! grouped by transaction; a transaction ending at or before the checkpoint
//! is written as ended, one beyond it (a piece of a large transaction) as a
//! piece, and a later checkpoint at or past its end writes its end. The
//! checkpoint stored is the archive itself: the end LSN of its last whole
//! transaction, found again by the scan at open.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use pgfanout_core::{Change, ChangeRef, Metrics, ReplayHorizon, Sink, SinkError};
use pgoutput::Lsn;

use crate::error::ArchiveError;
use crate::format::PieceHeader;
use crate::writer::{Archive, ArchiveOptions};

/// The name the archive's worker reports under in logs, metrics and status.
pub const ARCHIVE_SINK_NAME: &str = "archive";
/// File beside the segments holding the source record (cluster, slot).
const SOURCE_FILE: &str = "source";
/// How often retention runs, at most.
const RETENTION_EVERY: Duration = Duration::from_secs(10);

struct State {
    archive: Archive,
    /// Header of a transaction whose pieces are written but not its end.
    open: Option<PieceHeader>,
    retention_checked: Option<Instant>,
}

/// The change archive as a sink (see the module docs).
pub struct ArchiveSink {
    dir: PathBuf,
    state: Mutex<State>,
    metrics: Metrics,
    /// The archive's start, for sinks that keep what replays need.
    horizon: ReplayHorizon,
}

impl ArchiveSink {
    /// Opens the archive in `dir` (cutting a torn tail, see [`Archive::open`]).
    pub fn open(dir: &Path, options: ArchiveOptions, metrics: Metrics) -> Result<ArchiveSink, ArchiveError> {
        let (archive, report) = Archive::open(dir, options)?;
        tracing::info!(
            archive = %dir.display(),
            bytes = archive.total_bytes(),
            start = %archive.start_lsn().unwrap_or_default(),
            last_end = %archive.last_end_lsn().unwrap_or_default(),
            cut_bytes = report.cut_bytes,
            "change archive opened"
        );
        let sink = ArchiveSink {
            dir: dir.to_owned(),
            state: Mutex::new(State { archive, open: None, retention_checked: None }),
            metrics,
            horizon: ReplayHorizon::default(),
        };
        if let Ok(state) = sink.state.lock() {
            sink.report(&state.archive);
        }
        Ok(sink)
    }

    fn report(&self, archive: &Archive) {
        let start = archive.start_lsn().unwrap_or_default();
        self.metrics.archive_bytes.set(archive.total_bytes() as i64);
        self.metrics.archive_oldest_lsn.set(start.0 as i64);
        self.horizon.set(start);
    }

    /// Where replays can start from ([`Archive::start_lsn`]), kept current
    /// as the archive starts and retention removes segments; hand it to the
    /// sinks with [`Sink::keep_replayable`].
    pub fn replay_horizon(&self) -> ReplayHorizon {
        self.horizon.clone()
    }

    /// Records `lsn`, where the stream starts, as the start of an archive
    /// that has never held a transaction (see [`Archive::record_start`]).
    pub fn record_start(&self, lsn: Lsn) -> Result<(), ArchiveError> {
        let mut state = self.state.lock().map_err(|_| ArchiveError::Io {
            action: "record the start of",
            path: self.dir.clone(),
            source: std::io::Error::other("archive lock poisoned"),
        })?;
        state.archive.record_start(lsn)?;
        self.report(&state.archive);
        Ok(())
    }

    fn store_failing(&self, err: ArchiveError) -> SinkError {
        SinkError::store_failing(ARCHIVE_SINK_NAME, format!("change archive {}", self.dir.display()), err)
    }

    /// Appends `changes` and syncs; see the module docs.
    fn append(&self, changes: &[ChangeRef<'_>], checkpoint: Option<Lsn>) -> Result<(), SinkError> {
        let started = Instant::now();
        let mut state =
            self.state.lock().map_err(|_| SinkError::permanent(ARCHIVE_SINK_NAME, "archive lock poisoned"))?;
        let state = &mut *state;
        let mut group: Vec<&Change> = Vec::new();
        let mut rest = changes;
        while let Some(first) = rest.first() {
            let transaction = first.transaction;
            let len = rest.iter().take_while(|change| std::ptr::eq(change.transaction, transaction)).count();
            let (this, next) = rest.split_at(len);
            rest = next;
            close_if_done(state, checkpoint, Some(transaction.commit_lsn)).map_err(|err| self.store_failing(err))?;
            group.clear();
            group.extend(this.iter().map(|change| change.change));
            let header = PieceHeader {
                commit_lsn: transaction.commit_lsn,
                end_lsn: transaction.end_lsn,
                commit_time: transaction.commit_time,
                xid: transaction.xid,
                ends_transaction: checkpoint.is_some_and(|checkpoint| transaction.end_lsn <= checkpoint),
            };
            state.archive.append(header, &group).map_err(|err| self.store_failing(err))?;
            state.open = (!header.ends_transaction).then_some(header);
        }
        close_if_done(state, checkpoint, None).map_err(|err| self.store_failing(err))?;
        state.archive.sync().map_err(|err| self.store_failing(err))?;
        self.metrics.archive_append_seconds.observe(started.elapsed().as_secs_f64());
        if state.retention_checked.is_none_or(|at| at.elapsed() >= RETENTION_EVERY) {
            state.retention_checked = Some(Instant::now());
            let removed = state.archive.apply_retention(SystemTime::now()).map_err(|err| self.store_failing(err))?;
            if removed > 0 {
                tracing::info!(
                    segments = removed,
                    start = %state.archive.start_lsn().unwrap_or_default(),
                    "change archive retention removed old segments"
                );
            }
        }
        self.report(&state.archive);
        Ok(())
    }
}

/// Writes the end of the open transaction once `checkpoint` reaches it (or
/// once a later transaction starts: its end was then acknowledged already).
fn close_if_done(state: &mut State, checkpoint: Option<Lsn>, next_commit: Option<Lsn>) -> Result<(), ArchiveError> {
    let Some(open) = state.open else { return Ok(()) };
    let reached = checkpoint.is_some_and(|checkpoint| open.end_lsn <= checkpoint);
    let superseded = next_commit.is_some_and(|next| next > open.commit_lsn);
    if reached || superseded {
        state.archive.append(PieceHeader { ends_transaction: true, ..open }, &[])?;
        state.open = None;
    }
    Ok(())
}

/// Runs blocking file work without stalling other tasks of a multi-threaded
/// runtime; inline on a current-thread runtime (tests, tools).
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|handle| handle.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

#[async_trait]
impl Sink for ArchiveSink {
    fn name(&self) -> &str {
        ARCHIVE_SINK_NAME
    }

    async fn load_checkpoint(&self) -> Result<Option<Lsn>, SinkError> {
        let state = self.state.lock().map_err(|_| SinkError::permanent(ARCHIVE_SINK_NAME, "archive lock poisoned"))?;
        Ok(state.archive.last_end_lsn())
    }

    async fn load_source(&self) -> Result<Option<String>, SinkError> {
        let path = self.dir.join(SOURCE_FILE);
        match std::fs::read_to_string(&path) {
            Ok(record) => Ok(Some(record)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(self.store_failing(ArchiveError::Io { action: "read", path, source: err })),
        }
    }

    async fn store_source(&self, record: &str) -> Result<(), SinkError> {
        let path = self.dir.join(SOURCE_FILE);
        let temporary = self.dir.join(format!("{SOURCE_FILE}.tmp"));
        blocking(|| {
            use std::io::Write;
            let mut file = std::fs::File::create(&temporary).map_err(ArchiveError::io("create", &temporary))?;
            file.write_all(record.as_bytes()).map_err(ArchiveError::io("write", &temporary))?;
            file.sync_all().map_err(ArchiveError::io("sync", &temporary))?;
            std::fs::rename(&temporary, &path).map_err(ArchiveError::io("rename", &temporary))?;
            std::fs::File::open(&self.dir).and_then(|dir| dir.sync_all()).map_err(ArchiveError::io("sync", &self.dir))
        })
        .map_err(|err| self.store_failing(err))
    }

    async fn apply(&self, changes: &[ChangeRef<'_>], checkpoint: Option<Lsn>) -> Result<(), SinkError> {
        blocking(|| self.append(changes, checkpoint))
    }
}
