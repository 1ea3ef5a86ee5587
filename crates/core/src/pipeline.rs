//! The pipeline between the decoder and the sink workers.
//!
//! ```text
//!  pgoutput messages ─► TransactionAssembler ─► Router ─┬─► WorkerQueue(sink a) ─► SinkWorker ─┐
//!  (from the stream)    (relation cache)       (tables  ├─► WorkerQueue(sink b) ─► SinkWorker ─┤ acks
//!                                               per sink)└─► …                                  │
//!                                                                                               ▼
//!  keepalives ───────────────────────────────────────────────────────────► CheckpointCoordinator
//!                                                                           flush_lsn() ─► confirm
//! ```
//!
//! [`Pipeline`] is owned by the task that reads the replication stream. It
//! hands each committed transaction to the workers of the sinks that route
//! at least one of its tables (waiting when a queue is full, which is how
//! backpressure reaches the stream) and tells the coordinator; the caller
//! confirms [`Pipeline::flush_lsn`] to the server after each call.
//!
//! A transaction larger than one piece (see [`crate::assembler`]) is read
//! back and dispatched a piece at a time, each piece waiting for room in the
//! queues, so its size never shows in memory. Every sink that received a
//! piece then gets the transaction's end as an empty last piece: only that
//! one lets its worker store the checkpoint and acknowledge, so the flush LSN
//! passes the transaction only once all of it is applied. A crash in between
//! re-delivers the whole transaction; the sinks' version guards (commit LSN
//! and ordinal) make the pieces already applied harmless.

use std::collections::HashMap;
use std::sync::Arc;

use pgoutput::value::TypeKind;
use pgoutput::{Lsn, Oid, PgOutputMessage};

use crate::assembler::{AssembleError, Assembled, TransactionAssembler, PIECE_MAX_BYTES, PIECE_MAX_CHANGES};
use crate::checkpoint::{CheckpointCoordinator, SinkSlot};
use crate::mapping::{Mapped, MappingError, TableMapping};
use crate::metrics::{Metrics, TableOpCounters};
use crate::model::{count_by_table_and_op, Change, TableName, TableSchema, Transaction};
use crate::streamed::{CommittedChanges, SpillSettings};
use crate::tap::{Injection, StreamTap};
use crate::worker::{WorkerQueue, WorkerStopped};

/// Errors that stop the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The message stream broke the protocol's order.
    #[error("cannot assemble transactions")]
    Assemble(#[from] AssembleError),
    /// A sink's filter cannot decide on a change.
    #[error("sink {sink}: change {ordinal} of the transaction committed at {commit_lsn}")]
    Filter {
        /// The sink.
        sink: String,
        /// Commit LSN of the transaction.
        commit_lsn: Lsn,
        /// Position of the change in it.
        ordinal: u32,
        /// What the filter could not do.
        #[source]
        source: crate::mapping::MappingError,
    },
    /// A sink worker is gone.
    #[error("sink {sink} stopped while the pipeline was running")]
    SinkStopped {
        /// The sink.
        sink: String,
        /// Cause.
        #[source]
        source: WorkerStopped,
    },
}

/// A sink as the pipeline sees it: a name, its tables and its queue.
struct Route {
    sink: String,
    tables: HashMap<TableName, Arc<TableMapping>>,
    queue: WorkerQueue,
    slot: SinkSlot,
}

/// Assembles, routes and dispatches; tracks what may be confirmed.
pub struct Pipeline {
    assembler: TransactionAssembler,
    routes: Vec<Route>,
    coordinator: CheckpointCoordinator,
    metrics: Metrics,
    /// Changes received, per table and operation.
    events: TableOpCounters,
    /// Every table seen so far: `None` if a sink routes it, else the
    /// counter of its skipped changes (the table was logged once).
    unrouted: HashMap<TableName, Option<prometheus::IntCounter>>,
    /// The snapshot's view of the stream, when one runs.
    tap: Option<Box<dyn StreamTap>>,
}

impl Pipeline {
    /// An empty pipeline reporting to `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Pipeline {
            assembler: TransactionAssembler::new(),
            routes: Vec::new(),
            coordinator: CheckpointCoordinator::new(),
            events: TableOpCounters::new(metrics.events_total.clone(), &[]),
            metrics,
            unrouted: HashMap::new(),
            tap: None,
        }
    }

    /// Shows every transaction and non-transactional logical message to
    /// `tap`, and dispatches what it injects (see [`crate::tap`]).
    pub fn set_tap(&mut self, tap: Box<dyn StreamTap>) {
        self.tap = Some(tap);
    }

    /// Spills streamed transactions by `settings` instead of the defaults.
    pub fn with_spill(mut self, settings: SpillSettings) -> Self {
        self.assembler = TransactionAssembler::with_spill(settings);
        self
    }

    /// Registers user types (see [`TransactionAssembler::register_types`]).
    pub fn register_types(&mut self, kinds: impl IntoIterator<Item = (Oid, TypeKind)>) {
        self.assembler.register_types(kinds);
    }

    /// Registers primary keys (see [`TransactionAssembler::register_primary_keys`]).
    pub fn register_primary_keys(&mut self, keys: impl IntoIterator<Item = (TableName, Vec<String>)>) {
        self.assembler.register_primary_keys(keys);
    }

    /// Whether values of type `oid` convert to typed values (built in or registered).
    pub fn converts(&self, oid: Oid) -> bool {
        self.assembler.converts(oid)
    }

    /// Adds a sink receiving changes of `tables` through `queue`, acknowledging on `acked`.
    pub fn add_sink(
        &mut self,
        sink: impl Into<String>,
        tables: impl IntoIterator<Item = (TableName, TableMapping)>,
        queue: WorkerQueue,
        acked: tokio::sync::watch::Receiver<Lsn>,
    ) {
        let slot = self.coordinator.add_sink(acked);
        let tables = tables.into_iter().map(|(table, mapping)| (table, Arc::new(mapping))).collect();
        self.routes.push(Route { sink: sink.into(), tables, queue, slot });
        // Which tables are routed may have changed.
        self.unrouted.clear();
    }

    /// Feeds one decoded message; a commit dispatches its transaction.
    pub async fn push(&mut self, message: PgOutputMessage) -> Result<(), PipelineError> {
        if let (PgOutputMessage::Message(logical), Some(tap)) = (&message, self.tap.as_mut()) {
            if !logical.transactional {
                for injection in tap.message(logical) {
                    self.inject(injection).await?;
                }
                return Ok(());
            }
        }
        let streamed = self.assembler.is_streaming();
        let assembled = self.assembler.push(message)?;
        if streamed || self.assembler.is_streaming() {
            self.metrics.streamed_memory_bytes.set(self.assembler.streamed_in_memory_bytes() as i64);
            let spilled = self.assembler.streamed_spilled_bytes_total();
            let reported = self.metrics.streamed_spilled_bytes_total.get();
            if spilled > reported {
                self.metrics.streamed_spilled_bytes_total.inc_by(spilled - reported);
            }
        }
        match assembled {
            Assembled::Pending => {}
            Assembled::Committed(transaction) => {
                let size = self.assembler.committed_size();
                self.dispatch(transaction, size).await?
            }
            Assembled::CommittedInPieces(header, changes) => self.dispatch_in_pieces(header, changes).await?,
        }
        Ok(())
    }

    /// Records a keepalive from the server.
    pub fn keepalive(&mut self, wal_end: Lsn) {
        self.coordinator.keepalive(wal_end, self.assembler.is_idle());
    }

    /// Whether no transaction is open (between a Commit and the next Begin).
    pub fn is_between_transactions(&self) -> bool {
        self.assembler.is_idle()
    }

    /// The LSN that may be confirmed to PostgreSQL now.
    pub fn flush_lsn(&self) -> Lsn {
        self.coordinator.flush_lsn()
    }

    /// Closes every worker queue; workers drain what they hold and stop.
    /// [`Pipeline::flush_lsn`] keeps following their acknowledgements.
    pub fn close_queues(&mut self) {
        self.routes.clear();
    }

    /// End LSN of the last transaction received whole; a new stream may
    /// start there without missing or repeating anything.
    pub fn received_lsn(&self) -> Lsn {
        self.coordinator.received_lsn()
    }

    /// Forgets a transaction cut off by a lost connection; the server sends
    /// it again from its Begin.
    pub fn discard_partial(&mut self) {
        self.assembler.discard_open();
    }

    /// Sends an injected transaction to its sink only, mapped as streamed
    /// changes are; an empty one when the sink's filters leave nothing, so
    /// the sink still acknowledges its end.
    async fn inject(&mut self, injection: Injection) -> Result<(), PipelineError> {
        let Some(route) = self.routes.iter().find(|route| route.sink == injection.sink) else {
            return Ok(());
        };
        let end_lsn = injection.transaction.end_lsn;
        let transaction = Arc::new(injection.transaction);
        let routed = route_for(&transaction, &route.tables)
            .map_err(filter_error(route, transaction.commit_lsn))?
            .unwrap_or_else(|| Arc::new(transaction.clone_header()));
        route
            .queue
            .send(routed)
            .await
            .map_err(|source| PipelineError::SinkStopped { sink: route.sink.clone(), source })?;
        self.coordinator.dispatched(route.slot, end_lsn);
        Ok(())
    }

    /// Hands `transaction` to every sink routing one of its tables; `size`
    /// is its [`Transaction::approximate_size`] when already known.
    async fn dispatch(&mut self, transaction: Transaction, size: Option<usize>) -> Result<(), PipelineError> {
        if let Some(tap) = self.tap.as_mut() {
            tap.transaction(&transaction);
        }
        self.metrics.transactions_total.inc();
        self.count_events(&transaction);
        let end_lsn = transaction.end_lsn;
        let transaction = Arc::new(transaction);
        for route in &self.routes {
            let Some(routed) =
                route_for(&transaction, &route.tables).map_err(filter_error(route, transaction.commit_lsn))?
            else {
                continue;
            };
            // Shared as it is: its size is the one counted while it arrived.
            let known_size = size.filter(|_| Arc::ptr_eq(&routed, &transaction));
            route
                .queue
                .send_sized(routed, known_size)
                .await
                .map_err(|source| PipelineError::SinkStopped { sink: route.sink.clone(), source })?;
            self.coordinator.dispatched(route.slot, end_lsn);
        }
        self.coordinator.transaction_received(end_lsn);
        Ok(())
    }

    /// Dispatches a large transaction piece by piece, read back as it goes,
    /// then its end (an empty last piece) to every sink that got a piece.
    async fn dispatch_in_pieces(
        &mut self,
        header: Transaction,
        mut changes: CommittedChanges,
    ) -> Result<(), PipelineError> {
        self.metrics.transactions_total.inc();
        let end_lsn = header.end_lsn;
        let mut received_piece = vec![false; self.routes.len()];
        loop {
            let piece = changes.next_piece(PIECE_MAX_CHANGES, PIECE_MAX_BYTES).map_err(AssembleError::from)?;
            if piece.is_empty() {
                break;
            }
            let piece = Transaction { changes: piece, ..header.clone_header() };
            if let Some(tap) = self.tap.as_mut() {
                tap.transaction(&piece);
            }
            self.count_events(&piece);
            let piece = Arc::new(piece);
            for (route, received) in self.routes.iter().zip(&mut received_piece) {
                let Some(routed) = route_for(&piece, &route.tables).map_err(filter_error(route, piece.commit_lsn))?
                else {
                    continue;
                };
                route
                    .queue
                    .send_piece(routed)
                    .await
                    .map_err(|source| PipelineError::SinkStopped { sink: route.sink.clone(), source })?;
                if !*received {
                    *received = true;
                    self.coordinator.dispatched(route.slot, end_lsn);
                }
            }
        }
        let end = Arc::new(header);
        for (route, _) in self.routes.iter().zip(received_piece).filter(|(_, received)| *received) {
            route
                .queue
                .send(end.clone())
                .await
                .map_err(|source| PipelineError::SinkStopped { sink: route.sink.clone(), source })?;
        }
        self.coordinator.transaction_received(end_lsn);
        Ok(())
    }

    /// Counts the transaction's changes per table and operation, and those
    /// of tables no sink routes (logged once per table).
    fn count_events(&mut self, transaction: &Transaction) {
        for ((table, op), count) in count_by_table_and_op(transaction.changes.iter()) {
            self.events.add(table, op, count);
            // One look-up for a table seen before, not two.
            if let Some(unrouted) = self.unrouted.get(table) {
                if let Some(unrouted) = unrouted {
                    unrouted.inc_by(count);
                }
                continue;
            }
            // Not an error (a publication may serve others too), but never silent.
            let routed = self.routes.iter().any(|route| route.tables.contains_key(table));
            let unrouted = (!routed).then(|| {
                tracing::warn!(%table, "the publication sends changes of a table no sink routes; they are skipped");
                self.metrics.unrouted_changes_total.with_label_values(&[&table.to_string()])
            });
            if let Some(unrouted) = &unrouted {
                unrouted.inc_by(count);
            }
            self.unrouted.insert(table.clone(), unrouted);
        }
    }
}

/// The error for a change of the transaction at `commit_lsn` that the
/// filter of `route`'s sink could not decide on.
fn filter_error(route: &Route, commit_lsn: Lsn) -> impl FnOnce((u32, MappingError)) -> PipelineError + '_ {
    move |(ordinal, source)| PipelineError::Filter { sink: route.sink.clone(), commit_lsn, ordinal, source }
}

/// The part of `transaction` a sink routing `tables` receives, mapped: the
/// whole transaction shared when every change is routed unmapped, a mapped
/// or filtered copy otherwise, nothing when no change is left; the ordinal
/// of the change a filter could not decide on, and why, on error.
fn route_for(
    transaction: &Arc<Transaction>,
    tables: &HashMap<TableName, Arc<TableMapping>>,
) -> Result<Option<Arc<Transaction>>, (u32, MappingError)> {
    let mut mapping_of = MappingLookup::new(tables);
    let mut all_as_is = true;
    let mut any = false;
    let mut last_shape: Option<&TableSchema> = None;
    for change in &transaction.changes {
        if last_shape.is_some_and(|shape| std::ptr::eq(shape, &*change.table)) {
            continue;
        }
        last_shape = Some(&change.table);
        match mapping_of.get(&change.table) {
            Some(mapping) => {
                any = true;
                all_as_is &= mapping.is_identity();
            }
            None => all_as_is = false,
        }
    }
    if !any {
        return Ok(None);
    }
    if all_as_is {
        return Ok(Some(transaction.clone()));
    }
    let mut changes: Vec<Change> = Vec::new();
    for change in &transaction.changes {
        let Some(mapping) = mapping_of.get(&change.table) else { continue };
        match mapping.apply(change).map_err(|err| (change.ordinal, err))? {
            Mapped::Change(mapped) => changes.push(mapped),
            Mapped::Filtered => {}
        }
    }
    Ok((!changes.is_empty()).then(|| Arc::new(Transaction { changes, ..Transaction::clone_header(transaction) })))
}

/// A sink's mapping per table, remembering the last table looked up: the
/// changes of a transaction mostly come in runs of one table, and comparing
/// the shape's pointer costs less than hashing its name for every change.
struct MappingLookup<'a> {
    tables: &'a HashMap<TableName, Arc<TableMapping>>,
    last: Option<(&'a TableSchema, Option<&'a Arc<TableMapping>>)>,
}

impl<'a> MappingLookup<'a> {
    fn new(tables: &'a HashMap<TableName, Arc<TableMapping>>) -> Self {
        MappingLookup { tables, last: None }
    }

    fn get(&mut self, table: &'a TableSchema) -> Option<&'a Arc<TableMapping>> {
        match self.last {
            Some((last, mapping)) if std::ptr::eq(last, table) => mapping,
            _ => {
                let mapping = self.tables.get(&table.table);
                self.last = Some((table, mapping));
                mapping
            }
        }
    }
}

impl Transaction {
    /// A copy of the transaction's identity without its changes.
    fn clone_header(&self) -> Transaction {
        Transaction {
            xid: self.xid,
            commit_lsn: self.commit_lsn,
            end_lsn: self.end_lsn,
            commit_time: self.commit_time,
            changes: Vec::new(),
        }
    }
}
