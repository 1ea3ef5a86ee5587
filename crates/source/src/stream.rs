//! The replication loop: connect (retrying), check the slot and server
//! against what the sinks hold, create the slot when allowed, then stream
//! into the pipeline, reconnecting after transient failures, until shutdown.
//!
//! Confirmation follows the sinks: a position goes to PostgreSQL only after
//! every sink acknowledged it (the pipeline's flush position) *and* recorded
//! it as confirmable in its source record ([`Marker`], see
//! [`crate::identity`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pg_replication::{
    ConnectOptions, ReplicationConnection, ReplicationError, ReplicationEvent, ReplicationStream, SlotOptions,
    StartOptions, StreamSettings, Streaming,
};
use pgfanout_core::{error_chain, Backoff, Lsn, Metrics, Pipeline, Sink, SinkError, SourceRecord};
use pgoutput::PgOutputMessage;
use tokio::sync::{watch, Notify};

use crate::identity::{self, ServerIdentity, SinkHolding, SlotPlan};
use crate::{SourceConfig, SourceError};

/// How often a progress line is logged while streaming.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// SQLSTATE 57P03: the server is starting up, shutting down or in recovery.
const CANNOT_CONNECT_NOW: &str = "57P03";
/// SQLSTATE 57P01: the server is shutting down (fast or smart shutdown).
const ADMIN_SHUTDOWN: &str = "57P01";
/// The retry interval while the server says it is starting or stopping.
const SERVER_STARTING_RETRY: Duration = Duration::from_millis(250);

/// Connects, retrying transient failures with backoff until shutdown.
pub async fn connect_with_retry(
    options: &ConnectOptions,
    shutdown: &watch::Receiver<bool>,
) -> Result<ReplicationConnection, SourceError> {
    let mut backoff = reconnect_backoff();
    loop {
        match ReplicationConnection::connect(options).await {
            Ok(connection) => return Ok(connection),
            Err(err) if err.is_transient() => {
                tracing::warn!(endpoint = %options.endpoint(), error = %error_chain(&err), "cannot connect to PostgreSQL; retrying");
                // The server is up and says it is starting or stopping: it
                // is worth asking again soon, not after a grown backoff.
                let stay_short = matches!(err.sqlstate(), Some(CANNOT_CONNECT_NOW | ADMIN_SHUTDOWN));
                let waited = if stay_short {
                    let mut shutdown = shutdown.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(SERVER_STARTING_RETRY) => true,
                        _ = shutdown.wait_for(|stop| *stop) => false,
                    }
                } else {
                    backoff.wait_unless(shutdown).await
                };
                if !waited {
                    return Err(SourceError::Stopped("connecting to PostgreSQL".to_owned()));
                }
            }
            Err(source) => {
                return Err(SourceError::Connect { endpoint: options.endpoint().to_string(), source: Box::new(source) })
            }
        }
    }
}

/// The server's identity as the checks compare it.
async fn server_identity(
    connection: &mut ReplicationConnection,
    source: &SourceConfig,
    options: &ConnectOptions,
) -> Result<ServerIdentity, ReplicationError> {
    let system = connection.identify_system().await?;
    Ok(ServerIdentity {
        system_id: system.system_id,
        timeline: system.timeline,
        database: options.database().to_owned(),
        slot: source.slot.clone(),
    })
}

/// Checks the slot and server against what the sinks hold, creates the slot
/// when that is allowed, and returns the record to store in every sink with
/// the position the slot already confirmed.
pub async fn settle_slot(
    connection: &mut ReplicationConnection,
    source: &SourceConfig,
    options: &ConnectOptions,
    holdings: &[SinkHolding],
) -> Result<(SourceRecord, Lsn), SourceError> {
    let server =
        server_identity(connection, source, options).await.map_err(SourceError::replication("IDENTIFY_SYSTEM"))?;
    let slot = &source.slot;
    let state =
        connection.slot_state(slot).await.map_err(SourceError::replication(format!("cannot read slot {slot}")))?;
    let plan =
        identity::verify(&server, state.as_ref(), holdings, source.recreate_slot).map_err(SourceError::Refused)?;
    let (created_at, confirmed) = match plan {
        SlotPlan::Use => (None, state.and_then(|state| state.confirmed_flush_lsn).unwrap_or_default()),
        SlotPlan::Create | SlotPlan::Recreate => {
            let options = SlotOptions::new().failover(source.failover);
            let created = connection
                .create_slot_with(slot, &options)
                .await
                .map_err(SourceError::replication(format!("cannot create slot {slot}")))?;
            tracing::info!(%slot, consistent_point = %created.consistent_point, failover = source.failover, "created replication slot");
            if plan == SlotPlan::Recreate {
                for holding in holdings.iter().filter(|holding| holding.checkpoint.is_some()) {
                    tracing::warn!(
                        sink = %holding.sink,
                        checkpoint = %holding.checkpoint.unwrap_or_default(),
                        consistent_point = %created.consistent_point,
                        "slot re-created as source.recreate_slot asks: the sink misses the changes between its \
                         checkpoint and the consistent point; copy its tables again with `pgfanout rebuild --sink NAME`, and \
                         remove source.recreate_slot"
                    );
                }
            }
            (Some(created.consistent_point), created.consistent_point)
        }
    };
    for holding in holdings.iter().filter(|holding| holding.checkpoint.is_some() && holding.record.is_none()) {
        tracing::info!(
            sink = %holding.sink,
            system_id = %server.system_id,
            timeline = server.timeline,
            %slot,
            "the sink's checkpoint carries no source identity (written by an older pgfanout): adopting this \
             server and slot as its source"
        );
    }
    Ok((identity::current_record(&server, holdings, created_at, confirmed), confirmed))
}

enum VerifyError {
    Replication(ReplicationError),
    Refused(String),
    SlotTaken,
}

/// The reconnect check: same server, timeline and slot instance, and the
/// slot not taken by another process meanwhile.
async fn verify_source(
    connection: &mut ReplicationConnection,
    source: &SourceConfig,
    options: &ConnectOptions,
    record: &SourceRecord,
) -> Result<(), VerifyError> {
    let server = server_identity(connection, source, options).await.map_err(VerifyError::Replication)?;
    let state = connection.slot_state(&source.slot).await.map_err(VerifyError::Replication)?;
    // Checked first: a slot another pgfanout streams from has moved past
    // this one's record, which the identity check would call a gap.
    if state.as_ref().is_some_and(|state| state.active) {
        return Err(VerifyError::SlotTaken);
    }
    identity::verify_reconnect(&server, state.as_ref(), record).map_err(VerifyError::Refused)
}

/// Writes the source record, with `confirmable` raised, to every sink before
/// that position is confirmed to PostgreSQL (see [`crate::identity`]). Runs
/// on a task of its own so a slow store never stalls the stream; `marked`
/// is the position every sink has recorded.
pub struct Marker {
    desired: watch::Sender<Lsn>,
    marked: watch::Receiver<Lsn>,
    record: SourceRecord,
    sinks: Vec<Arc<dyn Sink>>,
}

impl Marker {
    /// Starts the task; `interval` bounds how often it writes.
    pub fn spawn(
        sinks: Vec<Arc<dyn Sink>>,
        record: SourceRecord,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> Marker {
        let (desired, mut wanted) = watch::channel(record.confirmable);
        let (marked_sender, marked) = watch::channel(record.confirmable);
        let task_sinks = sinks.clone();
        let task_record = record.clone();
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::select! {
                    changed = wanted.changed() => if changed.is_err() { return },
                    _ = shutdown.changed() => return,
                }
                let target = *wanted.borrow_and_update();
                if target > *marked_sender.borrow() {
                    let record = SourceRecord { confirmable: target, ..task_record.clone() };
                    match store_record(&task_sinks, &record).await {
                        Ok(()) => {
                            failing = false;
                            marked_sender.send_replace(target);
                        }
                        Err(err) => {
                            if !failing {
                                tracing::warn!(error = %error_chain(&err), "cannot record the confirmable position; the slot waits");
                            }
                            failing = true;
                            // Try again at the next round even if nothing new comes.
                            wanted.mark_changed();
                        }
                    }
                }
                // At most one round of writes per status interval.
                tokio::time::sleep(interval).await;
            }
        });
        Marker { desired, marked, record, sinks }
    }

    /// Asks for `position` to become confirmable.
    fn want(&self, position: Lsn) {
        self.desired.send_if_modified(|desired| {
            let raise = position > *desired;
            if raise {
                *desired = position;
            }
            raise
        });
    }

    /// The position every sink has recorded as confirmable.
    fn marked(&self) -> Lsn {
        *self.marked.borrow()
    }

    /// The record as the sinks hold it now.
    fn record(&self) -> SourceRecord {
        SourceRecord { confirmable: self.marked(), ..self.record.clone() }
    }

    /// Records `position` in every sink now (at shutdown); the position
    /// that may be confirmed afterwards.
    pub async fn mark_now(&mut self, position: Lsn) -> Lsn {
        if position <= self.marked() {
            return self.marked();
        }
        let record = SourceRecord { confirmable: position, ..self.record.clone() };
        match tokio::time::timeout(MARK_TIMEOUT, store_record(&self.sinks, &record)).await {
            Ok(Ok(())) => position,
            Ok(Err(err)) => {
                tracing::warn!(error = %error_chain(&err), "cannot record the final confirmable position");
                self.marked()
            }
            Err(_) => {
                tracing::warn!(timeout = ?MARK_TIMEOUT, "recording the final confirmable position timed out");
                self.marked()
            }
        }
    }
}

/// How long shutdown waits for the sinks to record the final position.
const MARK_TIMEOUT: Duration = Duration::from_secs(5);

/// Stores `record` in every sink (one small write each).
async fn store_record(sinks: &[Arc<dyn Sink>], record: &SourceRecord) -> Result<(), SinkError> {
    let text = record.to_stored();
    for sink in sinks {
        sink.store_source(&text).await?;
    }
    Ok(())
}

/// Stores the start record in every sink, retrying while a store is unreachable.
pub async fn store_record_with_retry(
    sinks: &[Arc<dyn Sink>],
    record: &SourceRecord,
    shutdown: &watch::Receiver<bool>,
) -> Result<(), SourceError> {
    let mut backoff = reconnect_backoff();
    loop {
        match store_record(sinks, record).await {
            Ok(()) => return Ok(()),
            Err(err) if err.kind == pgfanout_core::ErrorKind::Transient => {
                tracing::warn!(sink = %err.sink, error = %error_chain(&err), "cannot store the source record; retrying");
                if !backoff.wait_unless(shutdown).await {
                    return Err(SourceError::Stopped(format!("storing the source record in sink {}", err.sink)));
                }
            }
            Err(source) => {
                return Err(SourceError::Sink {
                    context: "cannot store the source record".to_owned(),
                    source: Box::new(source),
                })
            }
        }
    }
}

/// The `START_REPLICATION` options for this server: its highest protocol
/// version, streaming of large transactions when configured and available.
/// Values stay in text format: the sinks consume the types' text output.
pub fn start_options(source: &SourceConfig, server_version: u32) -> StartOptions {
    let proto_version = StartOptions::highest_proto_version(server_version);
    let streaming = if source.streaming && proto_version >= 2 { Streaming::On } else { Streaming::Off };
    // Logical messages carry the snapshot's watermarks (PostgreSQL 14+).
    let messages = server_version >= 140_000;
    StartOptions { proto_version, streaming, messages, ..StartOptions::new(source.publication.clone()) }
}

/// Why the stream loop returned.
enum StreamEnd {
    Shutdown,
    ServerClosed,
    /// Every transaction committed at or before [`StreamContext::until`] was fed to the pipeline.
    ReachedUntil,
}

/// What handling one event did.
enum Handled {
    /// Fed to the pipeline; the confirmable position stays where it was.
    Fed,
    /// Fed; a transaction ended or a keepalive came, so the confirmable position may move.
    PositionMayMove,
    /// The stream reached `until`: the event was fed if it belongs before it, left out if not.
    ReachedUntil,
}

enum PumpError {
    Replication(ReplicationError),
    Fatal(SourceError),
}

/// Reads events until shutdown or failure, confirming after every acknowledgement.
// Each argument is one collaborator of the loop; a struct bundling them
// would only be unpacked again on the first line.
#[allow(clippy::too_many_arguments)]
async fn pump(
    stream: &mut ReplicationStream,
    mut decoder: pgoutput::Decoder,
    pipeline: &mut Pipeline,
    metrics: &Metrics,
    on_ack: &Notify,
    shutdown: &watch::Receiver<bool>,
    options: &ConnectOptions,
    marker: &mut Marker,
    until: Option<Lsn>,
) -> Result<StreamEnd, PumpError> {
    let feedback = stream.feedback();
    let mut shutdown = shutdown.clone();
    let mut progress = tokio::time::interval(PROGRESS_INTERVAL);
    progress.tick().await;
    let mut server_position = Lsn::ZERO;
    let mut last_logged = (0u64, Lsn::ZERO);
    loop {
        // Whether the confirmable position may have moved: after an
        // acknowledgement, a keepalive, or a message that completed a
        // transaction — not after every row message.
        let position_may_move = tokio::select! {
            biased;
            _ = shutdown.changed() => return Ok(StreamEnd::Shutdown),
            _ = on_ack.notified() => true,
            _ = marker.marked.changed() => true,
            _ = progress.tick() => {
                let transactions = metrics.transactions_total.get();
                let confirmed = feedback.confirmed();
                if (transactions, confirmed) != last_logged {
                    tracing::info!(
                        transactions = transactions - last_logged.0,
                        confirmed_flush_lsn = %confirmed,
                        "replicated since last report"
                    );
                    last_logged = (transactions, confirmed);
                }
                false
            }
            event = stream.next_event() => {
                let mut event = event.map_err(PumpError::Replication)?;
                let mut position_may_move = false;
                let mut handled = 0;
                // What the last read brought is handled here, without going
                // back through the select for each message: one wake-up and
                // one round of the other branches per read, not per message.
                // Bounded, so acknowledgements and shutdown are seen often.
                loop {
                    let Some(current) = event else { return Ok(StreamEnd::ServerClosed) };
                    match handle_event(current, &mut decoder, pipeline, options, &mut server_position, until).await? {
                        Handled::Fed => {}
                        Handled::PositionMayMove => position_may_move = true,
                        Handled::ReachedUntil => return Ok(StreamEnd::ReachedUntil),
                    }
                    handled += 1;
                    if handled == MAX_EVENTS_PER_WAKE_UP {
                        break;
                    }
                    event = stream.next_buffered_event().map_err(PumpError::Replication)?;
                    if event.is_none() {
                        break;
                    }
                }
                position_may_move
            }
        };
        if position_may_move {
            // Only as far as every sink recorded (see crate::identity).
            let flush = pipeline.flush_lsn();
            marker.want(flush);
            feedback.confirm(flush.min(marker.marked()));
            metrics.confirmed_flush_lsn.set(feedback.confirmed().0 as i64);
            metrics.source_lag_bytes.set(server_position.0.saturating_sub(feedback.confirmed().0) as i64);
        }
    }
}

/// Most events handled in one go from what the socket delivered, before the
/// pump looks at acknowledgements, the marker and shutdown again.
const MAX_EVENTS_PER_WAKE_UP: usize = 1024;

/// Decodes and feeds one event to the pipeline, unless it belongs to a
/// transaction committed after `until`.
async fn handle_event(
    event: ReplicationEvent,
    decoder: &mut pgoutput::Decoder,
    pipeline: &mut Pipeline,
    options: &ConnectOptions,
    server_position: &mut Lsn,
    until: Option<Lsn>,
) -> Result<Handled, PumpError> {
    match event {
        ReplicationEvent::XLogData { payload, wal_end, .. } => {
            *server_position = (*server_position).max(wal_end);
            let message =
                decoder.decode(payload).map_err(|err| PumpError::Fatal(SourceError::Decode(Box::new(err))))?;
            tracing::trace!(tag = %char::from(message.tag()), "pgoutput message");
            if until.is_some_and(|until| commits_after(&message, until)) {
                return Ok(Handled::ReachedUntil);
            }
            if let PgOutputMessage::Type(announced) = &message {
                if !pipeline.converts(announced.oid) {
                    // A type created since start: learn it before the
                    // Relation message that uses it. On failure the
                    // stream restarts and the server sends it again.
                    let types = crate::catalog::load_user_types(options).await.map_err(PumpError::Replication)?;
                    tracing::info!(type_oid = %announced.oid, name = %announced.name, "read new user types from pg_type");
                    pipeline.register_types(types);
                }
            }
            let received = pipeline.received_lsn();
            pipeline.push(message).await.map_err(|err| PumpError::Fatal(err.into()))?;
            Ok(match pipeline.received_lsn() {
                now if until.is_some_and(|until| now >= until) => Handled::ReachedUntil,
                now if now != received => Handled::PositionMayMove,
                _ => Handled::Fed,
            })
        }
        ReplicationEvent::Keepalive { wal_end, .. } => {
            *server_position = (*server_position).max(wal_end);
            pipeline.keepalive(wal_end);
            // Past `until` with no transaction open: nothing at or before it is still to come.
            if until.is_some_and(|until| wal_end >= until) && pipeline.is_between_transactions() {
                return Ok(Handled::ReachedUntil);
            }
            Ok(Handled::PositionMayMove)
        }
    }
}

/// Whether `message` opens or commits a transaction that commits after
/// `until`: such a transaction is left to the next run whole.
fn commits_after(message: &PgOutputMessage, until: Lsn) -> bool {
    match message {
        PgOutputMessage::Begin(begin) => begin.final_lsn > until,
        PgOutputMessage::StreamCommit(commit) => commit.commit_lsn > until,
        PgOutputMessage::CommitPrepared(commit) => commit.commit_lsn > until,
        _ => false,
    }
}

/// A sink's checkpoint and source record, retrying while the store is unreachable.
pub async fn load_holding_with_retry(
    sink: &dyn Sink,
    shutdown: &watch::Receiver<bool>,
) -> Result<SinkHolding, SourceError> {
    let mut backoff = reconnect_backoff();
    loop {
        let loaded = async { Ok::<_, SinkError>((sink.load_checkpoint().await?, sink.load_source().await?)) }.await;
        match loaded {
            Ok((checkpoint, record)) => {
                let record = record
                    .map(|text| SourceRecord::from_stored(&text))
                    .transpose()
                    .map_err(|source| SourceError::Record { sink: sink.name().to_owned(), source })?;
                return Ok(SinkHolding { sink: sink.name().to_owned(), checkpoint, record });
            }
            Err(err) if err.kind == pgfanout_core::ErrorKind::Transient => {
                tracing::warn!(sink = sink.name(), error = %error_chain(&err), "sink unreachable; retrying");
                if !backoff.wait_unless(shutdown).await {
                    return Err(SourceError::Stopped(format!("waiting for sink {}", sink.name())));
                }
            }
            Err(err) => return Err(SourceError::SinkUnreachable(Box::new(err))),
        }
    }
}

/// Reconnect backoff: from 200 ms to 30 s.
pub fn reconnect_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(200), Duration::from_secs(30))
}

/// What the replication loop works with, borrowed from the caller.
pub struct StreamContext<'a> {
    /// `[source]`.
    pub source: &'a SourceConfig,
    /// Connection settings, for reconnects and side connections.
    pub options: &'a ConnectOptions,
    /// The `START_REPLICATION` options ([`start_options`]).
    pub start_options: &'a StartOptions,
    /// Status update interval and the like.
    pub settings: StreamSettings,
    /// Every metric.
    pub metrics: &'a Metrics,
    /// Notified whenever a sink worker acknowledged a batch.
    pub on_ack: &'a Notify,
    /// `true` once shutdown was asked for.
    pub shutdown: &'a watch::Receiver<bool>,
    /// Set while the replication stream runs (for `/readyz`).
    pub streaming: &'a AtomicBool,
    /// Stop once every transaction committed at or before this LSN was fed
    /// to the pipeline, like `pg_recvlogical -E` (`run --until-lsn`).
    pub until: Option<Lsn>,
}

/// Where the loop stopped on shutdown.
pub struct Stopped {
    /// The stream to end with CopyDone after the final confirmation; `None`
    /// when shutdown came while disconnected.
    pub stream: Option<ReplicationStream>,
    /// The highest position confirmed on any stream (or the slot's own at start).
    pub confirmed: Lsn,
}

/// Streams from `start` into `pipeline` until shutdown (or `until`), reconnecting (and
/// re-checking the source with [`identity::verify_reconnect`]) after
/// transient failures. `connection` is the one the source was prepared on,
/// used for the first stream; `confirmed` what the slot confirmed at start.
pub async fn stream_until_shutdown(
    cx: &StreamContext<'_>,
    mut connection: Option<ReplicationConnection>,
    mut start: Lsn,
    mut confirmed: Lsn,
    pipeline: &mut Pipeline,
    marker: &mut Marker,
) -> Result<Stopped, SourceError> {
    let StreamContext { source, options, start_options, settings, metrics, on_ack, shutdown, streaming, until } = cx;
    let settings = *settings;
    let mut backoff = reconnect_backoff();
    loop {
        start = start.max(pipeline.received_lsn());
        let stream = match connection.take() {
            Some(connection) => connection.start_replication(&source.slot, start, start_options, settings).await,
            None => {
                let mut connection = match connect_with_retry(options, shutdown).await {
                    Ok(connection) => connection,
                    Err(err) if *shutdown.borrow() => {
                        tracing::info!(error = %error_chain(&err), "stopped while reconnecting");
                        return Ok(Stopped { stream: None, confirmed });
                    }
                    Err(err) => return Err(err),
                };
                // The server or the slot may have changed while the connection was down.
                match verify_source(&mut connection, source, options, &marker.record()).await {
                    Ok(()) => connection.start_replication(&source.slot, start, start_options, settings).await,
                    Err(VerifyError::Replication(err)) => Err(err),
                    Err(VerifyError::Refused(refusal)) => return Err(SourceError::Refused(refusal)),
                    Err(VerifyError::SlotTaken) => return Err(SourceError::SlotTaken { slot: source.slot.clone() }),
                }
            }
        };
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(err) if crate::standby::is_slot_in_use(&err) => {
                return Err(SourceError::SlotTaken { slot: source.slot.clone() })
            }
            Err(err) if err.is_transient() => {
                tracing::warn!(error = %error_chain(&err), "cannot start replication; retrying");
                if !backoff.wait_unless(shutdown).await {
                    return Ok(Stopped { stream: None, confirmed });
                }
                continue;
            }
            Err(err) => {
                return Err(SourceError::replication(format!("cannot start replication from slot {}", source.slot))(
                    err,
                ))
            }
        };
        tracing::info!(
            slot = %source.slot,
            publication = %source.publication,
            %start,
            proto_version = start_options.proto_version,
            streaming = ?start_options.streaming,
            "streaming"
        );
        // Connected and streaming: the next outage starts with a short wait again.
        backoff.reset();
        streaming.store(true, Ordering::Release);
        let decoder = pgoutput::Decoder::new(start_options.proto_version);
        let outcome = pump(&mut stream, decoder, pipeline, metrics, on_ack, shutdown, options, marker, *until).await;
        streaming.store(false, Ordering::Release);
        confirmed = confirmed.max(stream.feedback().confirmed());
        match outcome {
            Ok(StreamEnd::Shutdown) => return Ok(Stopped { stream: Some(stream), confirmed }),
            Ok(StreamEnd::ReachedUntil) => {
                tracing::info!(until = %until.unwrap_or_default(), "reached --until-lsn: stopping");
                return Ok(Stopped { stream: Some(stream), confirmed });
            }
            Ok(StreamEnd::ServerClosed) => tracing::warn!("server ended the replication stream; reconnecting"),
            Err(PumpError::Replication(err)) if err.is_transient() => {
                tracing::warn!(error = %error_chain(&err), "replication connection lost; reconnecting");
            }
            Err(PumpError::Replication(err)) => return Err(SourceError::replication("replication stream failed")(err)),
            Err(PumpError::Fatal(err)) => return Err(err),
        }
        pipeline.discard_partial();
        drop(stream);
        if !backoff.wait_unless(shutdown).await {
            return Ok(Stopped { stream: None, confirmed });
        }
    }
}
