//! Runs a sink's snapshot: every table it routes that its stored progress
//! does not call done, tables in parallel, chunk after chunk through the
//! [`WatermarkMerge`], progress stored after each chunk the sink applied.
//!
//! ```text
//!  per table, one SQL connection for the copy task and one per reader:
//!    reader thread: emit low + read chunk N + xact status (one round trip) ─► N+1 ─► N+2 …
//!                   (each read starts once the one before arrived; one chunk waits read)
//!    copy task:    parse N ─► chunk_read ─► emit high
//!      ─► the same for N+1 … N+chunks_in_flight-1 while N's high watermark travels
//!      ─► outcome of N (stream reached its high: chunk N is in the sink's queue)
//!      ─► N's key range again (a retry) and its keys a partial update touched, if any
//!      ─► chunk N-1 acknowledged by the sink ─► store N-1's progress ─► take one more chunk …
//! ```
//!
//! The server reads chunk N+1 while chunk N's rows are parsed, merged and
//! applied (only the last row's key is needed to start the next read), so
//! it never waits for pgfanout between two chunks. A table read by heap
//! block range knows every chunk's range in advance, so
//! [`SnapshotSettings::readers_per_table`] readers take its chunks in turn
//! (reader `r` of `R` reads chunks `r`, `r + R`, …), each over a connection
//! of its own, and the copy task takes their chunks in order: the server
//! reads that many chunks at once, on as many cores. A table read in key
//! order has one reader (a chunk starts after the last key of the one
//! before). The reader has a thread
//! (and runtime) of its own, so that neither its next round trip nor its
//! reading of the rows as they arrive waits for the runtime's workers,
//! busy parsing, merging and applying earlier chunks in bursts of
//! milliseconds.
//!
//! Chunks in flight have disjoint key ranges: a retried chunk reads its own
//! range again (bounded by its last key, whatever rows it holds now) and a
//! chunk re-reads only keys of its own rows or keys rows moved to (see
//! [`crate::watermark`]). Progress is still stored chunk after chunk.
//!
//! The sink applies chunk N-1 while later chunks are read: per table at
//! most `chunks_in_flight` + 1 + 2 × readers chunks are held at once (one
//! queued or being applied, the others read and waiting for their high
//! watermark, and per reader one read and waiting to be parsed and one
//! being read),
//! each of at most `chunk_rows` rows and about `chunk_mb` of values.
//!
//! Invariant: a table's progress names only chunks the sink durably
//! applied (it is stored after the sink's acknowledgement of the chunk's
//! high watermark), so a restart resumes after them and never skips a row.
//!
//! Failures: every failed attempt is counted
//! (`pgfanout_snapshot_failures_total`) and retried with backoff from the
//! last stored chunk, so a sink is never left silently half-filled. A
//! failure retrying alone cannot fix (a missing privilege, key or table) is
//! logged as an error and counted in `pgfanout_snapshot_tables_failed`
//! (`/readyz`: "snapshot failed") while it lasts; it is retried every
//! [`PERMANENT_RETRY_MAX`] at most, so fixing the table online lets the copy
//! go on without a restart.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_replication::{ConnectOptions, QueryResult, ReplicationConnection};
use pgfanout_core::{Backoff, Lsn, Metrics, Sink, SinkError, TableName};
use pgoutput::TypeRegistry;
use postgres_protocol::escape::escape_literal;
use tokio::sync::{mpsc, oneshot, watch, Mutex, Semaphore};

use crate::progress::{SnapshotProgress, TableProgress};
use crate::reader::{ChunkLimits, FetchedChunk, KeyText, Rows, TableReader};
use crate::table::SnapshotTable;
use crate::watermark::{ChunkOutcome, ChunkTicket, ReadChunk, WatermarkMerge, WATERMARK_PREFIX};
use crate::SnapshotError;

/// How long a chunk's outcome is awaited before a warning says so (and
/// again each time as long).
const SLOW_OUTCOME: Duration = Duration::from_secs(60);

/// The longest wait between two attempts at a table whose copy failed.
pub const PERMANENT_RETRY_MAX: Duration = Duration::from_secs(30);

/// How a snapshot runs (the `[snapshot]` config section).
#[derive(Debug, Clone, Copy)]
pub struct SnapshotSettings {
    /// Tables copied at the same time, over all sinks (each holds 1 +
    /// `readers_per_table` SQL connections).
    pub parallel_tables: usize,
    /// Size of each chunk.
    pub chunk: ChunkLimits,
    /// Chunks of one table handed to the stream at once: those after the
    /// oldest are merged while its high watermark travels through the
    /// stream; at least 1. Their key ranges are disjoint; their progress is
    /// still stored in order.
    pub chunks_in_flight: usize,
    /// Connections reading chunks of one table at the same time, each
    /// chunk after chunk; only tables read by heap block range use more
    /// than one (key-order chunks follow one another); at least 1.
    pub readers_per_table: usize,
}

/// Why a sink's snapshot stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Reading PostgreSQL failed for good.
    #[error("snapshot of sink {sink}")]
    Source {
        /// The sink.
        sink: String,
        /// What failed.
        #[source]
        source: SnapshotError,
    },
    /// The sink failed to store its progress.
    #[error("snapshot of sink {sink}: storing its progress")]
    Progress {
        /// The sink.
        sink: String,
        /// The sink's error.
        #[source]
        source: SinkError,
    },
    /// The stream or the sink's worker stopped, so a chunk can never be merged.
    #[error("snapshot of sink {sink}, table {table}: the stream or the sink's worker stopped")]
    Stopped {
        /// The sink.
        sink: String,
        /// The table being copied.
        table: TableName,
    },
}

/// What the snapshot shares between its table tasks.
#[derive(Clone)]
pub struct Snapshotter {
    /// Where to read (the source's connection settings).
    pub options: ConnectOptions,
    /// The publication, whose column lists the rows follow.
    pub publication: String,
    /// The merge the pipeline's tap resolves.
    pub merge: WatermarkMerge,
    /// How values convert (the database's user types registered).
    pub types: Arc<TypeRegistry>,
    /// Parallelism and chunk sizes.
    pub settings: SnapshotSettings,
    /// Where rows and remaining tables are counted.
    pub metrics: Metrics,
    /// Limits the tables copied at once.
    pub permits: Arc<Semaphore>,
}

/// One sink to copy tables into.
pub struct SinkTarget {
    /// The sink.
    pub sink: Arc<dyn Sink>,
    /// Its worker's acknowledgements (end LSNs applied).
    pub acked: watch::Receiver<Lsn>,
    /// The tables to copy (those already done in `progress` are skipped).
    pub tables: Vec<TableName>,
    /// The progress stored in the sink.
    pub progress: SnapshotProgress,
}

impl Snapshotter {
    /// A snapshotter; `settings.parallel_tables` is at least 1.
    pub fn new(
        options: ConnectOptions,
        publication: String,
        merge: WatermarkMerge,
        types: Arc<TypeRegistry>,
        settings: SnapshotSettings,
        metrics: Metrics,
    ) -> Snapshotter {
        let permits = Arc::new(Semaphore::new(settings.parallel_tables.max(1)));
        Snapshotter { options, publication, merge, types, settings, metrics, permits }
    }

    /// Copies every table of `target` not done yet; returns once all are.
    pub async fn run_sink(&self, target: SinkTarget) -> Result<(), RunError> {
        let sink_name = target.sink.name().to_owned();
        let pending: Vec<TableName> =
            target.tables.iter().filter(|table| !target.progress.is_done(&table.to_string())).cloned().collect();
        let remaining = self.metrics.snapshot_tables_remaining.with_label_values(&[&sink_name]);
        remaining.set(pending.len() as i64);
        let progress = Arc::new(Mutex::new(target.progress));
        let mut tasks = tokio::task::JoinSet::new();
        for table in pending {
            let copier = TableCopy {
                snapshotter: self.clone(),
                sink: target.sink.clone(),
                acked: target.acked.clone(),
                table,
                progress: progress.clone(),
            };
            tasks.spawn(copier.run());
        }
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(())) => remaining.dec(),
                Ok(Err(err)) => {
                    tasks.abort_all();
                    first_error.get_or_insert(err);
                }
                Err(join_error) if join_error.is_panic() => std::panic::resume_unwind(join_error.into_panic()),
                Err(_) => {}
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// One table into one sink.
struct TableCopy {
    snapshotter: Snapshotter,
    sink: Arc<dyn Sink>,
    acked: watch::Receiver<Lsn>,
    table: TableName,
    progress: Arc<Mutex<SnapshotProgress>>,
}

impl TableCopy {
    async fn run(mut self) -> Result<(), RunError> {
        let sink = self.sink.name().to_owned();
        let table_label = self.table.to_string();
        let metrics = &self.snapshotter.metrics;
        let failures = metrics.snapshot_failures_total.with_label_values(&[&sink, &table_label]);
        let failed_tables = metrics.snapshot_tables_failed.with_label_values(&[&sink]);
        let mut failing_for_good: Option<FailedMark> = None;
        let mut backoff = Backoff::new(Duration::from_millis(200), PERMANENT_RETRY_MAX);
        loop {
            // Held per attempt: a table waiting to be retried lets others be copied.
            let permit = self.snapshotter.permits.clone().acquire_owned().await;
            let outcome = self.copy().await;
            drop(permit);
            if !matches!(outcome, Err(CopyError::Source(ref err)) if !err.is_transient()) {
                failing_for_good = None;
            }
            let delay = match outcome {
                Ok(()) => return Ok(()),
                Err(CopyError::Stopped) => return Err(RunError::Stopped { sink, table: self.table }),
                Err(CopyError::Source(err)) if err.is_transient() => {
                    let delay = backoff.next_delay().min(Duration::from_secs(10));
                    tracing::warn!(%sink, table = %self.table, error = %err, ?delay, "snapshot read failed; retrying");
                    delay
                }
                Err(CopyError::Source(err)) => {
                    failing_for_good.get_or_insert_with(|| FailedMark::new(failed_tables.clone()));
                    let delay = backoff.next_delay();
                    tracing::error!(
                        %sink,
                        table = %self.table,
                        error = %pgfanout_core::error_chain(&err),
                        ?delay,
                        "snapshot of the table failed; fix the cause, the copy is retried from the last stored chunk"
                    );
                    delay
                }
                Err(CopyError::Progress(err)) => {
                    let delay = backoff.next_delay().min(Duration::from_secs(10));
                    tracing::warn!(
                        %sink,
                        table = %self.table,
                        error = %pgfanout_core::error_chain(&err),
                        ?delay,
                        "storing the snapshot progress failed; retrying from the last stored chunk"
                    );
                    delay
                }
            };
            failures.inc();
            tokio::time::sleep(delay).await;
        }
    }

    /// Copies the table from where its progress stands, over a connection of its own.
    async fn copy(&mut self) -> Result<(), CopyError> {
        let source_error = |doing: &str| {
            let table = self.table.clone();
            let doing = doing.to_owned();
            move |source| SnapshotError::Source { table, doing, source }
        };
        let snapshotter = &self.snapshotter;
        let mut connection = connect(&snapshotter.options).await.map_err(source_error("connecting"))?;
        let table = SnapshotTable::describe_for(
            &mut connection,
            &self.table,
            Some(&snapshotter.publication),
            snapshotter.types.clone(),
            Some(snapshotter.settings.chunk.rows),
        )
        .await?;
        let key_names: Vec<String> =
            table.key_positions.iter().filter_map(|&p| table.schema.columns.get(p)).map(|c| c.name.clone()).collect();
        let reader = Arc::new(TableReader::new(table, snapshotter.settings.chunk));
        let table_label = self.table.to_string();
        let layout = reader.table().blocks.clone();
        let from_the_start = match &layout {
            Some(_) => Position::Block(0),
            None => Position::Key(None),
        };
        let (start, mut chunks, mut rows) = match self.progress.lock().await.tables.get(&table_label) {
            Some(TableProgress::Copying { after, chunks, rows }) => {
                (Position::Key(Some(after.clone())), *chunks, *rows)
            }
            Some(TableProgress::CopyingBlocks { before, file, chunks, rows }) => match &layout {
                Some(layout) if layout.file == *file => (Position::Block(*before), *chunks, *rows),
                // Rewritten (its rows moved) or now holding TOASTed values: copied again.
                _ => {
                    tracing::info!(sink = self.sink.name(), table = %self.table, "the table was rewritten (or holds TOASTed values now) since its copy began; copying it again");
                    (from_the_start, *chunks, *rows)
                }
            },
            Some(TableProgress::Done { .. }) => return Ok(()),
            None => (from_the_start, 0, 0),
        };
        tracing::info!(
            sink = self.sink.name(),
            table = %self.table,
            resume_after_chunks = chunks,
            by_block_range = matches!(start, Position::Block(_)),
            "copying table"
        );
        // From before the first chunk is opened until the copy ends: which
        // streamed transactions change the table (see `WatermarkMerge::track`).
        let _tracking = snapshotter.merge.track(&self.table);
        let rows_total = snapshotter.metrics.snapshot_rows_total.with_label_values(&[self.sink.name(), &table_label]);
        let chunks_in_flight = snapshotter.settings.chunks_in_flight.max(1);
        // Chunks handed to the merge whose high watermark travels through the stream, oldest first.
        let mut in_flight = InFlight { merge: snapshotter.merge.clone(), chunks: VecDeque::new() };
        // Reads the chunks after the stored progress, one after the other over a connection of its own.
        let mut ahead = Some(self.read_ahead(&reader, &key_names, start).await?);
        // The chunk merged before the oldest in flight, until the sink acknowledges it.
        let mut applying: Option<Applying> = None;
        loop {
            while in_flight.chunks.len() < chunks_in_flight {
                let Some(reading) = ahead.as_mut() else { break };
                let Some(read) = reading.next_chunk().await else {
                    // The table's last chunk is read.
                    ahead = None;
                    break;
                };
                let ReadAheadChunk { at, ticket, forget, fetched, started, fetched_in } = read?;
                let started = self.hand_over(&mut connection, &reader, ticket, fetched, started, fetched_in).await?;
                in_flight.chunks.push_back(InFlightChunk { at, started });
                forget.disarm();
            }
            let Some(InFlightChunk { at, started }) = in_flight.chunks.pop_front() else {
                return Err(CopyError::Source(SnapshotError::Unexpected {
                    table: self.table.clone(),
                    what: "no chunk left to read before the table was copied".to_owned(),
                }));
            };
            let (last_key, more) = (started.last_key.clone(), started.more);
            let (mut high_watermark, written, mut reread) = match self.outcome(started).await? {
                ChunkOutcome::Merged { high_watermark, written, reread, .. } => (high_watermark, written, reread),
                ChunkOutcome::Retry { .. } => match (&at, &last_key, more) {
                    // Chunks after it may be read already: read its range again, however many rows it holds now.
                    (Position::Block(_), _, _) | (Position::Key(_), Some(_), true) => {
                        let read = match &at {
                            Position::Block(from) => reader.blocks_from(*from).ok_or_else(|| no_layout(&self.table))?,
                            Position::Key(after) => Rows::Range {
                                after: after.as_deref(),
                                through: last_key.as_deref().unwrap_or_default(),
                            },
                        };
                        loop {
                            let started = self.start_chunk(&mut connection, &reader, &key_names, read).await?;
                            if let ChunkOutcome::Merged { high_watermark, written, reread, .. } =
                                self.outcome(started).await?
                            {
                                break (high_watermark, written, reread);
                            }
                        }
                    }
                    // The last chunk in key order: nothing after it is read; read on from its start.
                    (Position::Key(_), _, _) => {
                        ahead = Some(self.read_ahead(&reader, &key_names, at).await?);
                        continue;
                    }
                },
            };
            // Keys a missed partial update touched: read again until none is left.
            while !reread.is_empty() {
                let started = self.start_chunk(&mut connection, &reader, &key_names, Rows::Keys(&reread)).await?;
                if let ChunkOutcome::Merged { high_watermark: again, reread: left, written, .. } =
                    self.outcome(started).await?
                {
                    rows_total.inc_by(written as u64);
                    high_watermark = again;
                    reread = left;
                }
            }
            // This chunk is in the sink's queue now: the one before it must be
            // applied before the next outcome is awaited.
            if let Some(previous) = applying.take() {
                self.finish(&table_label, previous, &rows_total).await?;
            }
            chunks += 1;
            rows += written as u64;
            let state = match (&at, last_key, &layout, more) {
                (Position::Block(from), _, Some(layout), true) => TableProgress::CopyingBlocks {
                    before: from + layout.per_chunk,
                    file: layout.file.clone(),
                    chunks,
                    rows,
                },
                (Position::Key(_), Some(last), _, true) => TableProgress::Copying { after: last, chunks, rows },
                _ => TableProgress::Done { chunks, rows },
            };
            let current = Applying { high_watermark, written, state };
            if matches!(current.state, TableProgress::Done { .. }) {
                self.finish(&table_label, current, &rows_total).await?;
                tracing::info!(sink = self.sink.name(), table = %self.table, chunks, rows, "table copied");
                return Ok(());
            }
            applying = Some(current);
        }
    }

    /// Starts reading the chunks from `start` on, over connections of their
    /// own (one per reader, see [`SnapshotSettings::readers_per_table`]):
    /// each reader fetches its next chunk as soon as its last one arrived,
    /// so the server reads ahead while this task parses and merges.
    ///
    /// The reader runs on a thread of its own (with a runtime of its own):
    /// on the runtime's workers its next round trip would queue behind
    /// whatever they run meanwhile (parsing, merging and applying earlier
    /// chunks take milliseconds each, and a task woken by the one that takes
    /// a chunk waits until that task yields), and the server would sit idle
    /// that long between two chunks.
    async fn read_ahead(
        &self,
        reader: &Arc<TableReader>,
        key_names: &[String],
        start: Position,
    ) -> Result<ReadAhead, CopyError> {
        // Chunks in key order follow one another: one reader.
        let (readers, per_chunk) = match (&start, &reader.table().blocks) {
            (Position::Block(_), Some(layout)) => {
                (self.snapshotter.settings.readers_per_table.max(1), layout.per_chunk)
            }
            _ => (1, 0),
        };
        let mut ahead =
            ReadAhead { table: self.table.clone(), readers: Vec::with_capacity(readers), turn: 0, ended: false };
        for turn in 0..readers {
            let at = match &start {
                Position::Block(from) => Position::Block(from + turn as u64 * per_chunk),
                Position::Key(after) => Position::Key(after.clone()),
            };
            // One chunk waits while the next is read: each reader stays a chunk ahead.
            let (sender, chunks) = mpsc::channel(1);
            let reading = read_chunks_ahead(
                reader.clone(),
                self.snapshotter.options.clone(),
                ChunkOpener {
                    merge: self.snapshotter.merge.clone(),
                    sink: self.sink.name().to_owned(),
                    table: self.table.clone(),
                    key_names: key_names.to_vec(),
                },
                ReaderTurn { at, first_exists: turn == 0, step: readers as u64 * per_chunk },
                sender,
            );
            let task = spawn_on_own_thread(reading)
                .map_err(|source| SnapshotError::Thread { table: self.table.clone(), source })?;
            // Pushed at once: dropping `ahead` on an error below stops the readers started.
            ahead.readers.push(Reader { chunks, task });
        }
        Ok(ahead)
    }

    /// Waits until the sink applied `chunk`, then stores its progress.
    async fn finish(
        &mut self,
        table_label: &str,
        chunk: Applying,
        rows_total: &prometheus::IntCounter,
    ) -> Result<(), CopyError> {
        let waited = std::time::Instant::now();
        self.wait_applied(chunk.high_watermark).await?;
        tracing::debug!(sink = self.sink.name(), table = %self.table, applied_wait_ms = waited.elapsed().as_millis() as u64, "chunk applied");
        rows_total.inc_by(chunk.written as u64);
        self.store_progress(table_label, chunk.state).await
    }

    /// Reads one chunk into the watermark merge: its low watermark, the
    /// read (one round trip), then its high watermark. The outcome comes
    /// once the stream reaches the high watermark ([`TableCopy::outcome`]).
    async fn start_chunk(
        &self,
        connection: &mut ReplicationConnection,
        reader: &TableReader,
        key_names: &[String],
        rows: Rows<'_>,
    ) -> Result<Started, CopyError> {
        let merge = &self.snapshotter.merge;
        let ticket = merge.open(self.sink.name(), &self.table, key_names.to_vec());
        let started = Instant::now();
        // The low watermark is emitted and committed in the read's round trip.
        match reader.fetch(connection, rows, Some(&emit_sql(&ticket.low))).await {
            Ok(fetched) => {
                note_low_watermark_transaction(merge, ticket.id, fetched.mark_output.as_ref());
                self.hand_over(connection, reader, ticket, fetched, started, started.elapsed()).await
            }
            Err(err) => {
                merge.cancel(ticket.id);
                Err(err.into())
            }
        }
    }

    /// Parses a fetched chunk, hands its rows to the merge and emits its
    /// high watermark; forgets the chunk in the merge if any of it fails.
    async fn hand_over(
        &self,
        connection: &mut ReplicationConnection,
        reader: &TableReader,
        ticket: ChunkTicket,
        fetched: FetchedChunk,
        started: Instant,
        fetched_in: Duration,
    ) -> Result<Started, CopyError> {
        let merge = &self.snapshotter.merge;
        let mut parsed_in = fetched_in;
        let staged = async {
            // Read with a stale column list (an ALTER TABLE since the table was
            // described): copy() describes it again and reads the chunk again.
            if fetched.shape_version.as_deref() != Some(reader.table().shape_version.as_str()) {
                return Err(SnapshotError::Altered { table: self.table.clone() });
            }
            let mut chunk = reader.parse(fetched).ok_or_else(|| reader.unparsable())?;
            // The rows move into the merge; the chunk keeps its count, last key and visibility.
            let read_rows = chunk.rows.len();
            merge.chunk_read(
                ticket.id,
                ReadChunk {
                    schema: reader.table().schema.clone(),
                    rows: std::mem::take(&mut chunk.rows),
                    key_positions: reader.table().key_positions.clone(),
                    visibility: chunk.visibility.clone(),
                    committed_in_progress: std::mem::take(&mut chunk.committed_in_progress),
                },
            );
            parsed_in = started.elapsed();
            emit(connection, merge, &self.table, &ticket.high).await?;
            Ok::<_, SnapshotError>((chunk, read_rows))
        };
        match staged.await {
            Ok((chunk, read_rows)) => Ok(Started {
                id: ticket.id,
                outcome: ticket.outcome,
                last_key: chunk.last_key,
                more: chunk.more,
                read_rows,
                started,
                fetched_in,
                parsed_in,
                read_in: started.elapsed(),
            }),
            Err(err) => {
                merge.cancel(ticket.id);
                Err(err.into())
            }
        }
    }

    /// Waits for a started chunk's outcome: the stream reached its high watermark.
    async fn outcome(&self, chunk: Started) -> Result<ChunkOutcome, CopyError> {
        let mut receiver = chunk.outcome;
        let outcome = loop {
            match tokio::time::timeout(SLOW_OUTCOME, &mut receiver).await {
                Ok(outcome) => break outcome.map_err(|_| CopyError::Stopped)?,
                // Never given up on (the stream may be catching up), but said.
                Err(_) => tracing::warn!(
                    sink = self.sink.name(),
                    table = %self.table,
                    waited_s = chunk.started.elapsed().as_secs(),
                    "the stream has not reached a snapshot chunk's high watermark yet"
                ),
            }
        };
        tracing::debug!(
            sink = self.sink.name(),
            table = %self.table,
            rows = chunk.read_rows,
            fetch_ms = chunk.fetched_in.as_millis() as u64,
            parse_ms = (chunk.parsed_in - chunk.fetched_in).as_millis() as u64,
            emit_high_ms = (chunk.read_in - chunk.parsed_in).as_millis() as u64,
            read_ms = chunk.read_in.as_millis() as u64,
            merged_ms = chunk.started.elapsed().as_millis() as u64,
            "chunk read and merged"
        );
        if let ChunkOutcome::Retry { reason } = &outcome {
            tracing::info!(sink = self.sink.name(), table = %self.table, reason, "reading the chunk again");
            self.snapshotter
                .metrics
                .snapshot_chunks_reread_total
                .with_label_values(&[self.sink.name(), &self.table.to_string()])
                .inc();
        }
        Ok(outcome)
    }

    /// Waits until the sink acknowledged the chunk ending at `high_watermark`.
    async fn wait_applied(&mut self, high_watermark: Lsn) -> Result<(), CopyError> {
        self.acked.wait_for(|acked| *acked >= high_watermark).await.map(drop).map_err(|_| CopyError::Stopped)
    }

    async fn store_progress(&self, table: &str, state: TableProgress) -> Result<(), CopyError> {
        let mut progress = self.progress.lock().await;
        progress.tables.insert(table.to_owned(), state);
        self.sink.store_snapshot_progress(&progress.to_stored()).await.map_err(CopyError::Progress)
    }
}

/// Counts a table in `pgfanout_snapshot_tables_failed` while it is held:
/// dropped when its copy goes on or ends, or its task is aborted.
struct FailedMark(prometheus::IntGauge);

impl FailedMark {
    fn new(gauge: prometheus::IntGauge) -> FailedMark {
        gauge.inc();
        FailedMark(gauge)
    }
}

impl Drop for FailedMark {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A chunk merged into the sink's stream, not yet acknowledged by the sink.
struct Applying {
    /// Acknowledged once the sink's applied position reaches this.
    high_watermark: Lsn,
    /// Rows it wrote.
    written: usize,
    /// The table's progress once it is applied.
    state: TableProgress,
}

/// A chunk read whose outcome is to come.
struct Started {
    /// Its ticket's id in the merge.
    id: u64,
    /// Where its outcome arrives.
    outcome: oneshot::Receiver<ChunkOutcome>,
    /// Its last key read.
    last_key: Option<KeyText>,
    /// Whether rows may follow it.
    more: bool,
    /// Rows read, for logs.
    read_rows: usize,
    /// When its read began, and how long after it the rows had arrived,
    /// were parsed and handed to the merge, and the high watermark was
    /// emitted (for logs).
    started: Instant,
    fetched_in: Duration,
    parsed_in: Duration,
    read_in: Duration,
}

/// A chunk read, in flight.
struct InFlightChunk {
    /// Where its range starts.
    at: Position,
    started: Started,
}

/// The chunks of one table in flight, oldest first. Dropped with some left
/// (a failed or aborted copy), it forgets them in the merge: they are read
/// again from the stored progress.
struct InFlight {
    merge: WatermarkMerge,
    chunks: VecDeque<InFlightChunk>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        for chunk in &self.chunks {
            self.merge.cancel(chunk.started.id);
        }
    }
}

/// The chunks of a table read ahead by readers of their own
/// ([`read_chunks_ahead`]), taken in the table's order: reader `r` of `R`
/// holds chunks `r`, `r + R`, …. A reader stops after the table's last
/// chunk, or after a failed read (sent as its last item). Dropped, it stops
/// the readers; chunks read but not taken are forgotten in the merge.
struct ReadAhead {
    table: TableName,
    readers: Vec<Reader>,
    /// The reader whose chunk comes next (modulo their number).
    turn: usize,
    /// The table's last chunk, or a failure, was taken.
    ended: bool,
}

/// One reader of a [`ReadAhead`].
struct Reader {
    chunks: mpsc::Receiver<Result<ReadAheadChunk, SnapshotError>>,
    task: tokio::task::AbortHandle,
}

impl ReadAhead {
    /// The table's next chunk; `None` once its last chunk was taken.
    async fn next_chunk(&mut self) -> Option<Result<ReadAheadChunk, SnapshotError>> {
        if self.ended || self.readers.is_empty() {
            return None;
        }
        let turn = self.turn % self.readers.len();
        self.turn += 1;
        let next = self.readers[turn].chunks.recv().await;
        self.ended = !matches!(&next, Some(Ok(chunk)) if chunk.fetched.more);
        // A reader stops on its own only after the last chunk (handed out
        // above, ending the table) or a failure (sent first).
        match next {
            Some(next) => Some(next),
            None => Some(Err(SnapshotError::Unexpected {
                table: self.table.clone(),
                what: "a chunk reader stopped before the table's last chunk".to_owned(),
            })),
        }
    }
}

/// Runs `task` on a new thread with a current-thread runtime of its own,
/// until it ends or is aborted (which ends the thread).
fn spawn_on_own_thread(
    task: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<tokio::task::AbortHandle> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let handle = runtime.spawn(task);
    let abort = handle.abort_handle();
    std::thread::Builder::new().name("snapshot-reader".to_owned()).spawn(move || {
        // Ends with the task (done or aborted); the runtime, and the
        // connection the task holds, go with the thread.
        let _ = runtime.block_on(handle);
    })?;
    Ok(abort)
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where a chunk of a table starts.
#[derive(Debug, Clone)]
enum Position {
    /// After this key (at the table's start for `None`), in key order.
    Key(Option<KeyText>),
    /// At this heap block (a table with a [`crate::table::BlockLayout`]).
    Block(u64),
}

/// The error of a block read of a table without a block layout (a bug).
fn no_layout(table: &TableName) -> SnapshotError {
    SnapshotError::Unexpected { table: table.clone(), what: "a block range read without a block layout".to_owned() }
}

/// A chunk read ahead, not yet handed to the merge.
struct ReadAheadChunk {
    /// Where it starts.
    at: Position,
    ticket: ChunkTicket,
    /// Forgets the chunk in the merge unless it is handed over.
    forget: ForgetOnDrop,
    fetched: FetchedChunk,
    /// When its read began, and how long it took.
    started: Instant,
    fetched_in: Duration,
}

/// What [`read_chunks_ahead`] needs to register its chunks with the merge.
struct ChunkOpener {
    merge: WatermarkMerge,
    sink: String,
    table: TableName,
    key_names: Vec<String>,
}

/// Which chunks one reader of a table reads.
struct ReaderTurn {
    /// Its first chunk.
    at: Position,
    /// Whether its first chunk is read whatever the table's size (the
    /// first reader's: a table without rows still has one, empty, chunk);
    /// any other chunk of blocks exists only below the layout's end.
    first_exists: bool,
    /// Blocks from one of its chunks of blocks to its next: the other
    /// readers' chunks lie in between.
    step: u64,
}

/// Connects, then reads its chunks ([`ReaderTurn`]) back to back, each
/// with its low watermark in its read's round trip, and sends them on
/// `chunks` (a read failure is sent as the last item).
async fn read_chunks_ahead(
    reader: Arc<TableReader>,
    options: ConnectOptions,
    opener: ChunkOpener,
    turn: ReaderTurn,
    chunks: mpsc::Sender<Result<ReadAheadChunk, SnapshotError>>,
) {
    let ReaderTurn { mut at, first_exists, step } = turn;
    let beyond_end = |at: &Position| match (at, &reader.table().blocks) {
        (Position::Block(from), Some(layout)) => *from >= layout.end,
        _ => false,
    };
    if !first_exists && beyond_end(&at) {
        return;
    }
    let mut connection = match connect(&options).await {
        Ok(connection) => connection,
        Err(source) => {
            let doing = "connecting to read chunks ahead".to_owned();
            let _ = chunks.send(Err(SnapshotError::Source { table: opener.table.clone(), doing, source })).await;
            return;
        }
    };
    // When the last read ended: the time until the next one starts is time
    // the server waits for pgfanout (logged at debug).
    let mut last_read_end: Option<Instant> = None;
    loop {
        let ticket = opener.merge.open(&opener.sink, &opener.table, opener.key_names.clone());
        let forget = ForgetOnDrop { merge: opener.merge.clone(), id: Some(ticket.id) };
        let started = Instant::now();
        let idle_before = last_read_end.map_or(Duration::ZERO, |end| started - end);
        let rows = match &at {
            Position::Key(after) => Some(Rows::After(after.as_deref())),
            Position::Block(from) => reader.blocks_from(*from),
        };
        let fetched = match rows {
            Some(rows) => reader.fetch(&mut connection, rows, Some(&emit_sql(&ticket.low))).await,
            None => Err(no_layout(&opener.table)),
        };
        let fetched = match fetched {
            Ok(fetched) => {
                note_low_watermark_transaction(&opener.merge, ticket.id, fetched.mark_output.as_ref());
                fetched
            }
            Err(err) => {
                drop(forget);
                let _ = chunks.send(Err(err)).await;
                return;
            }
        };
        let next = match (&at, fetched.more) {
            (_, false) => None,
            (Position::Key(_), true) => Some(Position::Key(fetched.last_key.clone())),
            (Position::Block(from), true) => Some(Position::Block(from + step)),
        };
        let fetched_in = started.elapsed();
        last_read_end = Some(started + fetched_in);
        tracing::debug!(
            sink = %opener.sink,
            table = %opener.table,
            fetch_ms = fetched_in.as_millis() as u64,
            server_idle_before_ms = idle_before.as_millis() as u64,
            "chunk fetched"
        );
        let chunk = ReadAheadChunk { at, ticket, forget, fetched, started, fetched_in };
        if chunks.send(Ok(chunk)).await.is_err() {
            return;
        }
        match next {
            Some(next) if !beyond_end(&next) => at = next,
            _ => return,
        }
    }
}

/// Forgets a chunk in the merge when dropped, unless disarmed first (its
/// chunk was handed over, and is forgotten by [`InFlight`] from then on).
struct ForgetOnDrop {
    merge: WatermarkMerge,
    id: Option<u64>,
}

impl ForgetOnDrop {
    fn disarm(mut self) {
        self.id = None;
    }
}

impl Drop for ForgetOnDrop {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.merge.cancel(id);
        }
    }
}

enum CopyError {
    Source(SnapshotError),
    Progress(SinkError),
    Stopped,
}

impl From<SnapshotError> for CopyError {
    fn from(err: SnapshotError) -> Self {
        CopyError::Source(err)
    }
}

/// Emits a watermark message; returns its LSN.
///
/// The walsender sends only flushed WAL, and a non-transactional message
/// alone is flushed whenever the WAL writer gets to it (up to
/// `wal_writer_delay` later, 200 ms by default, twice per chunk). Taking a
/// transaction id makes the statement's commit flush the WAL up to the
/// message at once (the connection commits synchronously, see
/// [`connect`]).
///
/// That transaction id is noted in `merge`, so that a read beside it is not
/// taken for one that missed a change ([`WatermarkMerge::watermark_transaction`]).
async fn emit(
    connection: &mut ReplicationConnection,
    merge: &WatermarkMerge,
    table: &TableName,
    content: &str,
) -> Result<Lsn, SnapshotError> {
    let result = connection.simple_query(&emit_sql(content)).await.map_err(|source| SnapshotError::Source {
        table: table.clone(),
        doing: "emitting a watermark (pg_logical_emit_message)".to_owned(),
        source,
    })?;
    note_watermark_transaction(merge, Some(&result));
    result.get(0, "lsn").and_then(|text| text.parse().ok()).ok_or_else(|| SnapshotError::Unexpected {
        table: table.clone(),
        what: "pg_logical_emit_message returned no LSN".to_owned(),
    })
}

/// Notes the transaction id a watermark statement's `output` names (see
/// [`emit_sql`]) in `merge`.
fn note_watermark_transaction(merge: &WatermarkMerge, output: Option<&QueryResult>) {
    if let Some(xid) = watermark_xid(output) {
        merge.watermark_transaction(xid);
    }
}

/// [`note_watermark_transaction`] for the low watermark of chunk `id`.
fn note_low_watermark_transaction(merge: &WatermarkMerge, id: u64, output: Option<&QueryResult>) {
    if let Some(xid) = watermark_xid(output) {
        merge.low_watermark_transaction(id, xid);
    }
}

/// The transaction id a watermark statement's `output` names.
fn watermark_xid(output: Option<&QueryResult>) -> Option<u64> {
    output.and_then(|output| output.get(0, "flushes_at_commit")?.parse().ok())
}

/// The statement that emits the watermark message `content` (see [`emit`]).
fn emit_sql(content: &str) -> String {
    format!(
        "SELECT pg_catalog.pg_logical_emit_message(false, {}, {})::text AS lsn, \
         pg_catalog.pg_current_xact_id() AS flushes_at_commit",
        escape_literal(WATERMARK_PREFIX),
        escape_literal(content)
    )
}

/// A SQL connection for one table's copy: the replication connection's
/// session settings (so values read as the stream sends them), with
/// synchronous commits so watermarks reach the stream at once (see [`emit`]).
async fn connect(options: &ConnectOptions) -> Result<ReplicationConnection, pg_replication::ReplicationError> {
    let mut connection = ReplicationConnection::connect(options).await?;
    connection.simple_query("SET synchronous_commit = on").await?;
    Ok(connection)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader of a [`ReadAhead`] whose chunks are sent by the test.
    fn test_reader() -> (Reader, mpsc::Sender<Result<ReadAheadChunk, SnapshotError>>) {
        let (sender, chunks) = mpsc::channel(4);
        let task = tokio::spawn(std::future::pending::<()>()).abort_handle();
        (Reader { chunks, task }, sender)
    }

    fn chunk_at(merge: &WatermarkMerge, block: u64, more: bool) -> ReadAheadChunk {
        let ticket = merge.open("sink", &TableName::new("public", "t"), vec!["id".to_owned()]);
        let forget = ForgetOnDrop { merge: merge.clone(), id: Some(ticket.id) };
        ReadAheadChunk {
            at: Position::Block(block),
            ticket,
            forget,
            fetched: FetchedChunk::without_rows(more),
            started: Instant::now(),
            fetched_in: Duration::ZERO,
        }
    }

    fn block_of(chunk: &ReadAheadChunk) -> u64 {
        match chunk.at {
            Position::Block(block) => block,
            Position::Key(_) => panic!("a chunk in key order"),
        }
    }

    fn read_ahead(readers: Vec<Reader>) -> ReadAhead {
        ReadAhead { table: TableName::new("public", "t"), readers, turn: 0, ended: false }
    }

    /// Readers take chunks in turn; the copy gets them in the table's
    /// order whichever reader finished first, and nothing after the last.
    #[tokio::test]
    async fn chunks_of_several_readers_come_in_the_tables_order_and_end_with_its_last() {
        let merge = WatermarkMerge::new(1);
        let ((first, to_first), (second, to_second), (third, to_third)) = (test_reader(), test_reader(), test_reader());
        // The third reader is quickest, the first slowest; chunk 4 (the
        // second reader's) is the table's last, and the third reader's
        // next chunk (5) lies beyond its end, so it stops.
        for block in [20, 50] {
            to_third.send(Ok(chunk_at(&merge, block, true))).await.unwrap();
        }
        drop(to_third);
        to_second.send(Ok(chunk_at(&merge, 10, true))).await.unwrap();
        to_second.send(Ok(chunk_at(&merge, 40, false))).await.unwrap();
        to_first.send(Ok(chunk_at(&merge, 0, true))).await.unwrap();
        to_first.send(Ok(chunk_at(&merge, 30, true))).await.unwrap();
        let mut ahead = read_ahead(vec![first, second, third]);
        let mut blocks = Vec::new();
        while let Some(chunk) = ahead.next_chunk().await {
            blocks.push(block_of(&chunk.unwrap_or_else(|_| panic!("a failed chunk"))));
        }
        assert_eq!(blocks, [0, 10, 20, 30, 40], "taken in the table's order, up to its last chunk");
        assert!(ahead.next_chunk().await.is_none(), "nothing after the last chunk");
        drop(to_first);
    }

    /// A reader that stops before the table's last chunk (its thread
    /// ended) is a failure of the copy, never taken for the table's end.
    #[tokio::test]
    async fn a_reader_gone_before_the_last_chunk_fails_the_copy() {
        let merge = WatermarkMerge::new(1);
        let ((first, to_first), (second, to_second)) = (test_reader(), test_reader());
        to_first.send(Ok(chunk_at(&merge, 0, true))).await.unwrap();
        drop(to_second);
        let mut ahead = read_ahead(vec![first, second]);
        assert!(matches!(ahead.next_chunk().await, Some(Ok(_))));
        match ahead.next_chunk().await {
            Some(Err(SnapshotError::Unexpected { what, .. })) => {
                assert!(what.contains("stopped before the table's last chunk"), "{what}")
            }
            Some(Ok(_)) => panic!("a chunk from a reader that stopped"),
            other => panic!("the table taken as copied: {:?}", other.map(|chunk| chunk.err())),
        }
        assert!(ahead.next_chunk().await.is_none(), "the copy ends at its failure");
        drop(to_first);
    }

    /// A failed read ends the table's chunks: the copy starts over from
    /// its stored progress.
    #[tokio::test]
    async fn a_failed_read_is_the_last_chunk_taken() {
        let merge = WatermarkMerge::new(1);
        let ((first, to_first), (second, to_second)) = (test_reader(), test_reader());
        to_first.send(Ok(chunk_at(&merge, 0, true))).await.unwrap();
        to_second
            .send(Err(SnapshotError::Unexpected { table: TableName::new("public", "t"), what: "read".to_owned() }))
            .await
            .unwrap();
        to_first.send(Ok(chunk_at(&merge, 20, true))).await.unwrap();
        let mut ahead = read_ahead(vec![first, second]);
        assert!(matches!(ahead.next_chunk().await, Some(Ok(_))));
        assert!(matches!(ahead.next_chunk().await, Some(Err(_))));
        assert!(ahead.next_chunk().await.is_none());
    }
}
