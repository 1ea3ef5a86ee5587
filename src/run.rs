//! `pgfanout run`: the only place that knows every crate.
//!
//! ```text
//!  ReplicationStream ─► pgoutput::Decoder ─► Pipeline ─► SinkWorker × N ─► stores
//!        ▲                                      │
//!        └──── FeedbackHandle::confirm ◄── flush_lsn (after acknowledgements)
//! ```
//!
//! `run` prepares the source (publication, then slot), loads each sink's
//! checkpoint, starts one worker per sink, then reads the stream on the
//! current task, reconnecting after transient failures, until SIGINT or
//! SIGTERM. Shutdown drains in-flight batches, confirms what they applied
//! and ends the stream with CopyDone. A second signal exits at once without
//! confirming anything more.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use pg_replication::{
    ConnectOptions, ReplicationConnection, ReplicationError, ReplicationEvent, ReplicationStream, SlotOptions,
    StartOptions, StreamSettings, Streaming,
};
use pgfanout_core::{
    error_chain, Backoff, Lsn, Metrics, OnError, OnErrorPolicy, Pipeline, Sink, SinkError, SinkWorker, SourceRecord,
    TableMapping, TableName, WorkerSettings,
};
use pgfanout_sink_graph::GraphSink;
use pgfanout_sink_mongodb::MongoSink;
use pgfanout_sink_redis::RedisSink;
use pgfanout_sink_scylla::ScyllaSink;
use pgoutput::PgOutputMessage;
use tokio::sync::{watch, Notify};

use crate::config::{Config, SinkConfig};
use crate::discard::DiscardSink;
use crate::http::{self, HttpState};
use crate::identity::{self, ServerIdentity, SinkHolding, SlotPlan};
use crate::source::{connect_options, connect_with_retry, prepare_source};

/// How often a progress line is logged while streaming.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// `pgfanout run`.
pub async fn run(config: &Config) -> anyhow::Result<()> {
    let metrics = Metrics::new().context("cannot register metrics")?;
    let streaming = Arc::new(AtomicBool::new(false));
    let statuses = Arc::new(std::sync::RwLock::new(Vec::new()));
    http::serve(
        config.http.listen,
        HttpState {
            metrics: metrics.clone(),
            streaming: streaming.clone(),
            sinks: Arc::new(config.sinks.iter().map(|sink| sink.name().to_owned()).collect()),
            statuses: statuses.clone(),
            wedged_after: Duration::from_secs(config.http.wedged_after_secs),
        },
    )
    .await?;
    let shutdown = shutdown_signal();

    // Every sink first: nothing is created on the primary (publication,
    // slot) before every store answers, so an unreachable store does not
    // leave behind a slot that holds WAL.
    let mut sinks = Vec::new();
    let mut holdings = Vec::new();
    for sink_config in &config.sinks {
        let (sink, tables) = build_sink(sink_config)?;
        let holding = load_holding_with_retry(sink.as_ref(), &shutdown).await?;
        holdings.push(holding);
        sinks.push((sink_config, sink, tables));
    }

    let options = connect_options(config)?;
    let mut first_connection = connect_with_retry(&options, &shutdown).await?;
    let table_problems = crate::table_check::problems(&mut first_connection, config).await;
    if !table_problems.is_empty() {
        bail!("the sinks cannot replicate these tables as configured:\n{}", table_problems.join("\n"));
    }
    prepare_source(&mut first_connection, config, options.database()).await?;
    let (record, confirmed_at_start) = settle_slot(&mut first_connection, config, &options, &holdings).await?;
    let all_sinks: Vec<Arc<dyn Sink>> = sinks.iter().map(|(_, sink, _)| sink.clone()).collect();
    store_record_with_retry(&all_sinks, &record, &shutdown).await?;
    let start_options = start_options(config, first_connection.server_version());
    // Where the server is now: the backlog to catch up on, for the progress bar.
    let server_position = first_connection.identify_system().await.context("IDENTIFY_SYSTEM")?.xlog_position;
    let user_types =
        crate::catalog::user_types(&mut first_connection).await.context("reading user types from pg_type")?;
    let primary_keys = crate::catalog::primary_keys(&mut first_connection, &crate::source::routed_tables(config))
        .await
        .context("reading the routed tables' primary keys from pg_index")?;
    let mut connection = Some(first_connection);

    let on_ack = Arc::new(Notify::new());
    let mut pipeline = Pipeline::new(metrics.clone()).with_spill(config.spill_settings());
    pipeline.register_types(user_types);
    pipeline.register_primary_keys(primary_keys);
    let mut workers = Vec::new();
    for ((sink_config, sink, tables), holding) in sinks.into_iter().zip(&holdings) {
        let checkpoint = holding.checkpoint;
        let settings = worker_settings(config, sink_config).await?;
        tracing::info!(
            sink = sink.name(),
            checkpoint = %checkpoint.unwrap_or_default(),
            lanes = settings.lanes,
            on_error = ?settings.on_error,
            "sink ready"
        );
        let name = sink.name().to_owned();
        let (worker, queue, acked) = SinkWorker::new(sink, checkpoint, settings, metrics.clone(), on_ack.clone());
        statuses.write().unwrap_or_else(|poisoned| poisoned.into_inner()).push((name.clone(), worker.status()));
        pipeline.add_sink(name, tables, queue, acked);
        workers.push(tokio::spawn(worker.run()));
    }
    // Resume from the oldest sink checkpoint; the server moves a start older
    // than the slot's confirmed_flush_lsn up to it.
    let mut start = if holdings.iter().all(|holding| holding.checkpoint.is_some()) {
        holdings.iter().filter_map(|holding| holding.checkpoint).min().unwrap_or_default()
    } else {
        Lsn::ZERO
    };

    let settings = StreamSettings {
        status_interval: Duration::from_millis(config.source.status_interval_ms),
        ..StreamSettings::default()
    };
    let mut marker = Marker::spawn(all_sinks, record, settings.status_interval, shutdown.clone());
    tokio::spawn(crate::monitor::watch_source(
        options.clone(),
        config.source.slot.clone(),
        config.source.heartbeat_interval_secs,
        metrics.clone(),
        shutdown.clone(),
    ));
    if std::io::stderr().is_terminal() {
        tokio::spawn(crate::progress::catch_up(metrics.clone(), server_position, shutdown.clone()));
    }
    let mut confirmed = confirmed_at_start;
    let mut backoff = reconnect_backoff();
    loop {
        start = start.max(pipeline.received_lsn());
        let stream = match connection.take() {
            Some(connection) => {
                connection.start_replication(&config.source.slot, start, &start_options, settings).await
            }
            None => {
                let mut connection = match connect_with_retry(&options, &shutdown).await {
                    Ok(connection) => connection,
                    Err(err) if *shutdown.borrow() => {
                        tracing::info!(error = %error_chain(err.as_ref()), "stopped while reconnecting");
                        return finish(pipeline, workers, None, &mut marker, confirmed, config).await;
                    }
                    Err(err) => return Err(err),
                };
                // The server or the slot may have changed while the connection was down.
                match verify_source(&mut connection, config, &options, &marker.record()).await {
                    Ok(()) => connection.start_replication(&config.source.slot, start, &start_options, settings).await,
                    Err(VerifyError::Replication(err)) => Err(err),
                    Err(VerifyError::Refused(refusal)) => {
                        return Err(anyhow::anyhow!(refusal)).context("refusing to resume replication")
                    }
                }
            }
        };
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(err) if err.is_transient() => {
                tracing::warn!(error = %error_chain(&err), "cannot start replication; retrying");
                if !backoff.wait_unless(&shutdown).await {
                    return finish(pipeline, workers, None, &mut marker, confirmed, config).await;
                }
                continue;
            }
            Err(err) => return Err(err).context(format!("cannot start replication from slot {}", config.source.slot)),
        };
        tracing::info!(
            slot = %config.source.slot,
            publication = %config.source.publication,
            %start,
            proto_version = start_options.proto_version,
            streaming = ?start_options.streaming,
            "streaming"
        );
        // Connected and streaming: the next outage starts with a short wait again.
        backoff.reset();
        streaming.store(true, Ordering::Release);
        let decoder = pgoutput::Decoder::new(start_options.proto_version);
        let outcome =
            pump(&mut stream, decoder, &mut pipeline, &metrics, &on_ack, &shutdown, &options, &mut marker).await;
        streaming.store(false, Ordering::Release);
        confirmed = confirmed.max(stream.feedback().confirmed());
        match outcome {
            Ok(StreamEnd::Shutdown) => {
                return finish(pipeline, workers, Some(stream), &mut marker, confirmed, config).await
            }
            Ok(StreamEnd::ServerClosed) => tracing::warn!("server ended the replication stream; reconnecting"),
            Err(PumpError::Replication(err)) if err.is_transient() => {
                tracing::warn!(error = %error_chain(&err), "replication connection lost; reconnecting");
            }
            Err(PumpError::Replication(err)) => return Err(err).context("replication stream failed"),
            Err(PumpError::Fatal(err)) => return Err(err),
        }
        pipeline.discard_partial();
        drop(stream);
        if !backoff.wait_unless(&shutdown).await {
            return finish(pipeline, workers, None, &mut marker, confirmed, config).await;
        }
    }
}

/// The server's identity as the checks compare it.
async fn server_identity(
    connection: &mut ReplicationConnection,
    config: &Config,
    options: &ConnectOptions,
) -> Result<ServerIdentity, ReplicationError> {
    let system = connection.identify_system().await?;
    Ok(ServerIdentity {
        system_id: system.system_id,
        timeline: system.timeline,
        database: options.database().to_owned(),
        slot: config.source.slot.clone(),
    })
}

/// Checks the slot and server against what the sinks hold, creates the slot
/// when that is allowed, and returns the record to store in every sink with
/// the position the slot already confirmed.
async fn settle_slot(
    connection: &mut ReplicationConnection,
    config: &Config,
    options: &ConnectOptions,
    holdings: &[SinkHolding],
) -> anyhow::Result<(SourceRecord, Lsn)> {
    let server = server_identity(connection, config, options).await.context("IDENTIFY_SYSTEM")?;
    let slot = &config.source.slot;
    let state = connection.slot_state(slot).await.with_context(|| format!("cannot read slot {slot}"))?;
    let plan = identity::verify(&server, state.as_ref(), holdings, config.source.recreate_slot)
        .map_err(anyhow::Error::msg)
        .context("refusing to resume replication")?;
    let (created_at, confirmed) = match plan {
        SlotPlan::Use => (None, state.and_then(|state| state.confirmed_flush_lsn).unwrap_or_default()),
        SlotPlan::Create | SlotPlan::Recreate => {
            let options = SlotOptions::new().failover(config.source.failover);
            let created = connection
                .create_slot_with(slot, &options)
                .await
                .with_context(|| format!("cannot create slot {slot}"))?;
            tracing::info!(%slot, consistent_point = %created.consistent_point, failover = config.source.failover, "created replication slot");
            if plan == SlotPlan::Recreate {
                for holding in holdings.iter().filter(|holding| holding.checkpoint.is_some()) {
                    tracing::warn!(
                        sink = %holding.sink,
                        checkpoint = %holding.checkpoint.unwrap_or_default(),
                        consistent_point = %created.consistent_point,
                        "slot re-created as source.recreate_slot asks: the sink misses the changes between its \
                         checkpoint and the consistent point; rebuild it, and remove source.recreate_slot"
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
}

/// The reconnect check: same server, timeline and slot instance.
async fn verify_source(
    connection: &mut ReplicationConnection,
    config: &Config,
    options: &ConnectOptions,
    record: &SourceRecord,
) -> Result<(), VerifyError> {
    let server = server_identity(connection, config, options).await.map_err(VerifyError::Replication)?;
    let state = connection.slot_state(&config.source.slot).await.map_err(VerifyError::Replication)?;
    identity::verify_reconnect(&server, state.as_ref(), record).map_err(VerifyError::Refused)
}

/// Writes the source record, with `confirmable` raised, to every sink before
/// that position is confirmed to PostgreSQL (see [`crate::identity`]). Runs
/// on a task of its own so a slow store never stalls the stream; `marked`
/// is the position every sink has recorded.
struct Marker {
    desired: watch::Sender<Lsn>,
    marked: watch::Receiver<Lsn>,
    record: SourceRecord,
    sinks: Vec<Arc<dyn Sink>>,
}

impl Marker {
    fn spawn(
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
    async fn mark_now(&mut self, position: Lsn) -> Lsn {
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
async fn store_record_with_retry(
    sinks: &[Arc<dyn Sink>],
    record: &SourceRecord,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut backoff = reconnect_backoff();
    loop {
        match store_record(sinks, record).await {
            Ok(()) => return Ok(()),
            Err(err) if err.kind == pgfanout_core::ErrorKind::Transient => {
                tracing::warn!(sink = %err.sink, error = %error_chain(&err), "cannot store the source record; retrying");
                if !backoff.wait_unless(shutdown).await {
                    bail!("stopped while storing the source record in sink {}", err.sink);
                }
            }
            Err(err) => return Err(err).context("cannot store the source record"),
        }
    }
}

/// The `START_REPLICATION` options for this server: its highest protocol
/// version, streaming of large transactions when configured and available.
/// Values stay in text format: the sinks consume the types' text output.
fn start_options(config: &Config, server_version: u32) -> StartOptions {
    let proto_version = StartOptions::highest_proto_version(server_version);
    let streaming = if config.source.streaming && proto_version >= 2 { Streaming::On } else { Streaming::Off };
    StartOptions { proto_version, streaming, ..StartOptions::new(config.source.publication.clone()) }
}

/// Why the stream loop returned.
enum StreamEnd {
    Shutdown,
    ServerClosed,
}

enum PumpError {
    Replication(ReplicationError),
    Fatal(anyhow::Error),
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
            event = stream.next_event() => match event.map_err(PumpError::Replication)? {
                Some(ReplicationEvent::XLogData { payload, wal_end, .. }) => {
                    server_position = server_position.max(wal_end);
                    let message = decoder
                        .decode(payload)
                        .map_err(|err| PumpError::Fatal(anyhow::Error::new(err).context("cannot decode a pgoutput message")))?;
                    tracing::trace!(tag = %char::from(message.tag()), "pgoutput message");
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
                    pipeline.received_lsn() != received
                }
                Some(ReplicationEvent::Keepalive { wal_end, .. }) => {
                    server_position = server_position.max(wal_end);
                    pipeline.keepalive(wal_end);
                    true
                }
                None => return Ok(StreamEnd::ServerClosed),
            },
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

/// Drains the workers, confirms what they applied, and ends the stream.
/// `confirmed` is the highest position confirmed on an earlier stream (or
/// the slot's own at start): the log reports what the slot really holds.
async fn finish(
    mut pipeline: Pipeline,
    workers: Vec<tokio::task::JoinHandle<()>>,
    stream: Option<ReplicationStream>,
    marker: &mut Marker,
    mut confirmed: Lsn,
    config: &Config,
) -> anyhow::Result<()> {
    tracing::info!("shutting down: draining sink workers");
    pipeline.close_queues();
    let deadline = Duration::from_secs(config.pipeline.shutdown_timeout_secs);
    let drained = tokio::time::timeout(deadline, futures_join_all(workers)).await.is_ok();
    if let Some(stream) = stream {
        let confirmable = marker.mark_now(pipeline.flush_lsn()).await;
        stream.feedback().confirm(confirmable);
        confirmed = confirmed.max(stream.feedback().confirmed());
        if let Err(err) = stream.stop().await {
            tracing::warn!(error = %error_chain(&err), "replication stream did not end cleanly");
        }
    }
    if drained {
        tracing::info!(confirmed_flush_lsn = %confirmed, "stopped");
        Ok(())
    } else {
        bail!("sink workers did not drain within {deadline:?}; confirmed only up to {confirmed}")
    }
}

async fn futures_join_all(handles: Vec<tokio::task::JoinHandle<()>>) {
    for handle in handles {
        let _ = handle.await;
    }
}

/// The tables a sink receives, each with its mapping.
pub type RoutedTables = Vec<(TableName, TableMapping)>;

/// The sink a `[[sink]]` section describes, with the tables it receives.
pub fn build_sink(config: &SinkConfig) -> anyhow::Result<(Arc<dyn Sink>, RoutedTables)> {
    let (sink, tables): (Arc<dyn Sink>, _) = match config {
        SinkConfig::Redis(redis) => {
            let sink = RedisSink::new(redis.clone()).with_context(|| format!("sink {}", redis.name))?;
            let tables = sink.tables();
            (Arc::new(sink), tables)
        }
        SinkConfig::Graph(graph) => {
            let mut graph = graph.clone();
            graph.resolve_password().map_err(anyhow::Error::msg)?;
            let sink = GraphSink::new(graph.clone()).with_context(|| format!("sink {}", graph.name))?;
            let tables = sink.tables();
            (Arc::new(sink), tables)
        }
        SinkConfig::Mongodb(mongodb) => {
            let sink = MongoSink::new(mongodb.clone());
            let tables = sink.tables();
            (Arc::new(sink), tables)
        }
        SinkConfig::Discard(discard) => (Arc::new(DiscardSink::new(&discard.name)), discard.tables()),
        SinkConfig::Scylla(scylla) => {
            let sink = ScyllaSink::new(scylla.clone());
            let tables = sink.tables();
            (Arc::new(sink), tables)
        }
    };
    let tables = tables
        .into_iter()
        .map(|(table, mapping)| {
            let mapping = TableMapping::new(mapping).with_context(|| format!("sink {}: table {table}", sink.name()))?;
            Ok((table, mapping))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((sink, tables))
}

/// The worker settings of one sink: the pipeline's batching, the sink's
/// delivery section (lanes, error policy and its dead-letter destination).
async fn worker_settings(config: &Config, sink: &SinkConfig) -> anyhow::Result<WorkerSettings> {
    let delivery = sink.delivery();
    let on_error = match (&delivery.on_error, &delivery.dead_letter) {
        (OnErrorPolicy::DeadLetter, Some(destination)) => {
            let queue = crate::dead_letter::open(destination, config)
                .await
                .with_context(|| format!("sink {}: dead-letter destination", sink.name()))?;
            OnError::DeadLetter(Arc::from(queue))
        }
        // `validate` refuses dead_letter without a destination.
        _ => OnError::Block,
    };
    Ok(WorkerSettings {
        lanes: delivery.lanes,
        on_error,
        max_consecutive_dead_letters: delivery.max_consecutive_dead_letters,
        ..config.worker_settings()
    })
}

/// A sink's checkpoint and source record, retrying while the store is unreachable.
async fn load_holding_with_retry(sink: &dyn Sink, shutdown: &watch::Receiver<bool>) -> anyhow::Result<SinkHolding> {
    let mut backoff = reconnect_backoff();
    loop {
        let loaded = async { Ok::<_, SinkError>((sink.load_checkpoint().await?, sink.load_source().await?)) }.await;
        match loaded {
            Ok((checkpoint, record)) => {
                let record = record
                    .map(|text| SourceRecord::from_stored(&text))
                    .transpose()
                    .with_context(|| format!("sink {}: the source record stored beside its checkpoint", sink.name()))?;
                return Ok(SinkHolding { sink: sink.name().to_owned(), checkpoint, record });
            }
            Err(err) if err.kind == pgfanout_core::ErrorKind::Transient => {
                tracing::warn!(sink = sink.name(), error = %error_chain(&err), "sink unreachable; retrying");
                if !backoff.wait_unless(shutdown).await {
                    bail!("stopped while waiting for sink {}", sink.name());
                }
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// Reconnect backoff: from 200 ms to 30 s.
pub fn reconnect_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(200), Duration::from_secs(30))
}

/// `true` once SIGINT or SIGTERM arrived; a second signal exits at once.
fn shutdown_signal() -> watch::Receiver<bool> {
    let (sender, receiver) = watch::channel(false);
    tokio::spawn(async move {
        let mut signals = 0;
        loop {
            wait_for_signal().await;
            signals += 1;
            if signals == 1 {
                tracing::info!("signal received: finishing in-flight batches (send it again to exit at once)");
                let _ = sender.send(true);
            } else {
                tracing::warn!("second signal: exiting without confirming unapplied changes");
                std::process::exit(130);
            }
        }
    });
    receiver
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut interrupt), Ok(mut terminate)) => {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
