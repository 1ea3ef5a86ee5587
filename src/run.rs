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
    ConnectOptions, ReplicationError, ReplicationEvent, ReplicationStream, StartOptions, StreamSettings, Streaming,
};
use pgfanout_core::{
    error_chain, Backoff, Lsn, Metrics, OnError, OnErrorPolicy, Pipeline, Sink, SinkWorker, TableMapping, TableName,
    WorkerSettings,
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
use crate::source::{connect_options, connect_with_retry, prepare_source};

/// A stream that lasted this long counts as healthy: the reconnect backoff
/// starts over after it ends.
const STABLE_STREAM: Duration = Duration::from_secs(30);

/// How often a progress line is logged while streaming.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// `pgfanout run`.
pub async fn run(config: &Config) -> anyhow::Result<()> {
    let metrics = Metrics::new().context("cannot register metrics")?;
    let streaming = Arc::new(AtomicBool::new(false));
    http::serve(
        config.http.listen,
        HttpState {
            metrics: metrics.clone(),
            streaming: streaming.clone(),
            sinks: Arc::new(config.sinks.iter().map(|sink| sink.name().to_owned()).collect()),
        },
    )
    .await?;
    let shutdown = shutdown_signal();

    let options = connect_options(config)?;
    let mut first_connection = connect_with_retry(&options, &shutdown).await?;
    let table_problems = crate::table_check::problems(&mut first_connection, config).await;
    if !table_problems.is_empty() {
        bail!("the sinks cannot replicate these tables as configured:\n{}", table_problems.join("\n"));
    }
    prepare_source(&mut first_connection, config, options.database()).await?;
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
    let mut checkpoints = Vec::new();
    for sink_config in &config.sinks {
        let (sink, tables) = build_sink(sink_config)?;
        let checkpoint = load_checkpoint_with_retry(sink.as_ref(), &shutdown).await?;
        let settings = worker_settings(config, sink_config).await?;
        tracing::info!(
            sink = sink.name(),
            checkpoint = %checkpoint.unwrap_or_default(),
            lanes = settings.lanes,
            on_error = ?settings.on_error,
            "sink ready"
        );
        checkpoints.push(checkpoint);
        let name = sink.name().to_owned();
        let (worker, queue, acked) = SinkWorker::new(sink, checkpoint, settings, metrics.clone(), on_ack.clone());
        pipeline.add_sink(name, tables, queue, acked);
        workers.push(tokio::spawn(worker.run()));
    }
    // Resume from the oldest sink checkpoint; the server moves a start older
    // than the slot's confirmed_flush_lsn up to it.
    let mut start = if checkpoints.iter().all(Option::is_some) {
        checkpoints.iter().flatten().min().copied().unwrap_or_default()
    } else {
        Lsn::ZERO
    };

    let settings = StreamSettings {
        status_interval: Duration::from_millis(config.source.status_interval_ms),
        ..StreamSettings::default()
    };
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
    let mut backoff = reconnect_backoff();
    loop {
        start = start.max(pipeline.received_lsn());
        let stream = match connection.take() {
            Some(connection) => {
                connection.start_replication(&config.source.slot, start, &start_options, settings).await
            }
            None => match connect_with_retry(&options, &shutdown).await {
                Ok(connection) => {
                    connection.start_replication(&config.source.slot, start, &start_options, settings).await
                }
                Err(err) => return Err(err),
            },
        };
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(err) if err.is_transient() => {
                tracing::warn!(error = %error_chain(&err), "cannot start replication; retrying");
                if !backoff.wait_unless(&shutdown).await {
                    return finish(pipeline, workers, None, config).await;
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
        streaming.store(true, Ordering::Release);
        let streaming_since = std::time::Instant::now();
        let decoder = pgoutput::Decoder::new(start_options.proto_version);
        let outcome = pump(&mut stream, decoder, &mut pipeline, &metrics, &on_ack, &shutdown, &options).await;
        streaming.store(false, Ordering::Release);
        if streaming_since.elapsed() > STABLE_STREAM {
            backoff.reset();
        }
        match outcome {
            Ok(StreamEnd::Shutdown) => return finish(pipeline, workers, Some(stream), config).await,
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
            return finish(pipeline, workers, None, config).await;
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
async fn pump(
    stream: &mut ReplicationStream,
    mut decoder: pgoutput::Decoder,
    pipeline: &mut Pipeline,
    metrics: &Metrics,
    on_ack: &Notify,
    shutdown: &watch::Receiver<bool>,
    options: &ConnectOptions,
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
            feedback.confirm(pipeline.flush_lsn());
            metrics.confirmed_flush_lsn.set(feedback.confirmed().0 as i64);
            metrics.source_lag_bytes.set(server_position.0.saturating_sub(feedback.confirmed().0) as i64);
        }
    }
}

/// Drains the workers, confirms what they applied, and ends the stream.
async fn finish(
    mut pipeline: Pipeline,
    workers: Vec<tokio::task::JoinHandle<()>>,
    stream: Option<ReplicationStream>,
    config: &Config,
) -> anyhow::Result<()> {
    tracing::info!("shutting down: draining sink workers");
    pipeline.close_queues();
    let deadline = Duration::from_secs(config.pipeline.shutdown_timeout_secs);
    let drained = tokio::time::timeout(deadline, futures_join_all(workers)).await.is_ok();
    let flush = pipeline.flush_lsn();
    if let Some(stream) = stream {
        stream.feedback().confirm(flush);
        if let Err(err) = stream.stop().await {
            tracing::warn!(error = %error_chain(&err), "replication stream did not end cleanly");
        }
    }
    if drained {
        tracing::info!(confirmed_flush_lsn = %flush, "stopped");
        Ok(())
    } else {
        bail!("sink workers did not drain within {deadline:?}; confirmed only up to {flush}")
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

async fn load_checkpoint_with_retry(sink: &dyn Sink, shutdown: &watch::Receiver<bool>) -> anyhow::Result<Option<Lsn>> {
    let mut backoff = reconnect_backoff();
    loop {
        match sink.load_checkpoint().await {
            Ok(checkpoint) => return Ok(checkpoint),
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
