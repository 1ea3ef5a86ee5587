//! `pgfanout run`: the only place that knows every crate.
//!
//! ```text
//!  ReplicationStream ─► pgoutput::Decoder ─► Pipeline ─► SinkWorker × N ─► stores
//!        ▲                                      │
//!        └──── FeedbackHandle::confirm ◄── flush_lsn (after acknowledgements)
//! ```
//!
//! `run` first stands by while another process streams from the slot (a
//! second pgfanout on the same slot: [`pgfanout_source::standby`]). Then it
//! loads each sink's checkpoint, prepares the source (publication,
//! then slot), starts one worker per sink, then reads the stream on the
//! current task ([`pgfanout_source::stream_until_shutdown`], which
//! reconnects after transient failures) until SIGINT or SIGTERM, or with
//! `--until-lsn` until the stream passes that LSN. Shutdown drains in-flight
//! batches, confirms what they applied and ends the stream with CopyDone. A second signal exits at once without
//! confirming anything more.

use std::io::IsTerminal;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use pg_replication::{ReplicationStream, StreamSettings};
use pgfanout_core::{
    error_chain, Lsn, Metrics, OnError, OnErrorPolicy, Pipeline, Sink, SinkWorker, TableMapping, WorkerSettings,
};
use pgfanout_source::{
    connect_with_retry, load_holding_with_retry, prepare_source, settle_slot, start_options, store_record_with_retry,
    stream_until_shutdown, wait_for_slot, Marker, SourceError, StandbyState, StreamContext,
};
use tokio::sync::{watch, Notify};

use crate::config::{Config, SinkConfig};
use crate::http::{self, HttpState};
use crate::sinks::build_sink;

/// `pgfanout run`: stands by while another process streams from the slot
/// ([`pgfanout_source::standby`]), then streams until shutdown (or until
/// the stream passes `until`, once every sink applied what came before it);
/// back to standing by when another instance takes the slot meanwhile.
pub async fn run(config: &Config, until: Option<Lsn>) -> anyhow::Result<()> {
    let metrics = Metrics::new().context("cannot register metrics")?;
    let streaming = Arc::new(AtomicBool::new(false));
    let statuses = Arc::new(std::sync::RwLock::new(Vec::new()));
    let standby = StandbyState::default();
    let rebuild = crate::rebuild::RebuildControl::default();
    let replay = crate::replay::ReplayControl::default();
    http::serve(
        config.http.listen,
        HttpState {
            metrics: metrics.clone(),
            streaming: streaming.clone(),
            sinks: Arc::new(
                config
                    .sinks
                    .iter()
                    .map(|sink| sink.name().to_owned())
                    .chain(config.archive.as_ref().map(|_| pgfanout_archive::ARCHIVE_SINK_NAME.to_owned()))
                    .collect(),
            ),
            statuses: statuses.clone(),
            wedged_after: Duration::from_secs(config.http.wedged_after_secs),
            standby: standby.clone(),
            rebuild: rebuild.clone(),
            replay: replay.clone(),
        },
    )
    .await?;
    let shutdown = shutdown_signal();
    let options = config.source.connect_options()?;
    let poll = Duration::from_secs(config.source.standby_poll_secs.max(1));
    loop {
        if !wait_for_slot(&options, &config.source.slot, poll, &standby, &shutdown).await? {
            tracing::info!("stopped while standing by");
            return Ok(());
        }
        statuses.write().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
        let streamed = stream(config, &metrics, &streaming, &statuses, (&rebuild, &replay), &shutdown, until).await;
        rebuild.go_offline();
        replay.go_offline();
        match streamed {
            Err(err) if matches!(err.downcast_ref(), Some(SourceError::SlotTaken { .. })) => {
                tracing::warn!(error = %format!("{err:#}"), "another process took the slot: standing by");
            }
            outcome => return outcome,
        }
    }
}

/// Loads the sinks' holdings, prepares the source and streams until
/// shutdown; `Err(SourceError::SlotTaken)` when another process has the slot.
async fn stream(
    config: &Config,
    metrics: &Metrics,
    streaming: &Arc<AtomicBool>,
    statuses: &Arc<std::sync::RwLock<Vec<(String, pgfanout_core::SinkStatus)>>>,
    (rebuild, replay): (&crate::rebuild::RebuildControl, &crate::replay::ReplayControl),
    shutdown: &watch::Receiver<bool>,
    until: Option<Lsn>,
) -> anyhow::Result<()> {
    // Every sink first: nothing is created on the primary (publication,
    // slot) before every store answers, so an unreachable store does not
    // leave behind a slot that holds WAL.
    let mut sinks = Vec::new();
    let mut holdings = Vec::new();
    let mut planned = Vec::new();
    for sink_config in &config.sinks {
        let (sink, tables) = build_sink(sink_config)?;
        let holding = load_holding_with_retry(sink.as_ref(), shutdown).await?;
        let names = tables.iter().map(|(table, _)| table.clone()).collect();
        if let Some((tables, progress)) =
            crate::snapshot::plan(sink.as_ref(), holding.checkpoint, names, &config.snapshot).await?
        {
            planned.push(crate::snapshot::Planned { sink: sink.clone(), tables, progress });
        }
        holdings.push(holding);
        sinks.push((sink_config, sink, tables));
    }

    // The change archive acknowledges like one more sink (last in `holdings`).
    let archive = match &config.archive {
        Some(archive) => {
            let sink = pgfanout_archive::ArchiveSink::open(&archive.path, archive.options(), metrics.clone())
                .with_context(|| format!("cannot open the change archive {}", archive.path.display()))?;
            let sink = Arc::new(sink);
            holdings.push(load_holding_with_retry(sink.as_ref(), shutdown).await?);
            // What a sink keeps to re-apply changes exactly must last as long
            // as the archive can replay them (e.g. the Cassandra carry log).
            for (_, store, _) in &sinks {
                store.keep_replayable(sink.replay_horizon());
            }
            Some(sink)
        }
        None => None,
    };

    let options = config.source.connect_options()?;
    let routing = crate::sinks::routing(config);
    let mut first_connection = connect_with_retry(&options, shutdown).await?;
    let table_problems = crate::table_check::problems(&mut first_connection, config).await;
    if !table_problems.is_empty() {
        bail!("the sinks cannot replicate these tables as configured:\n{}", table_problems.join("\n"));
    }
    prepare_source(&mut first_connection, &config.source, &routing, options.database()).await?;
    let (record, confirmed_at_start) = settle_slot(&mut first_connection, &config.source, &options, &holdings).await?;
    if let Some(archive) = &archive {
        // A new archive holds everything from where the slot starts sending.
        archive.record_start(confirmed_at_start).context("cannot record where the change archive starts")?;
    }
    let archive = archive.map(|sink| sink as Arc<dyn Sink>);
    let all_sinks: Vec<Arc<dyn Sink>> = sinks.iter().map(|(_, sink, _)| sink.clone()).chain(archive.clone()).collect();
    store_record_with_retry(&all_sinks, &record, shutdown).await?;
    let start_options = start_options(&config.source, first_connection.server_version());
    // Where the server is now: the backlog to catch up on, for the progress bar.
    let server_position = first_connection.identify_system().await.context("IDENTIFY_SYSTEM")?.xlog_position;
    let user_types =
        pgfanout_source::catalog::user_types(&mut first_connection).await.context("reading user types from pg_type")?;
    let primary_keys = pgfanout_source::catalog::primary_keys(&mut first_connection, &routing.tables())
        .await
        .context("reading the routed tables' primary keys from pg_index")?;
    let connection = Some(first_connection);

    let on_ack = Arc::new(Notify::new());
    let mut pipeline = Pipeline::new(metrics.clone()).with_spill(config.spill_settings());
    let snapshotter = crate::snapshot::snapshotter(
        options.clone(),
        config.source.publication.clone(),
        &user_types,
        &config.snapshot,
        metrics.clone(),
    );
    // Always while snapshots are enabled: a rebuild may start a snapshot at any time.
    if config.snapshot.enabled {
        pipeline.set_tap(snapshotter.merge.tap());
    }
    pipeline.register_types(user_types);
    pipeline.register_primary_keys(primary_keys);
    let mut workers = Vec::new();
    let mut acknowledgements = Vec::new();
    let mut rebuildable = Vec::new();
    let mut replayable = Vec::new();
    for ((sink_config, sink, tables), holding) in sinks.into_iter().zip(&holdings) {
        // The pipeline takes the mappings; rebuilds and replays need them too.
        let (_, mappings) = build_sink(sink_config)?;
        let mappings: crate::rebuild::RoutedMappings =
            mappings.into_iter().map(|(table, mapping)| (table, Arc::new(mapping))).collect();
        rebuildable.push((sink.clone(), mappings.clone()));
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
        let lanes = settings.lanes;
        let (worker, queue, acked) =
            SinkWorker::new(sink.clone(), checkpoint, settings, metrics.clone(), on_ack.clone());
        statuses.write().unwrap_or_else(|poisoned| poisoned.into_inner()).push((name.clone(), worker.status()));
        acknowledgements.push((name.clone(), acked.clone()));
        replayable.push(crate::replay::ReplaySink {
            sink,
            tables: mappings,
            lanes,
            pause: worker.pause_handle(),
            status: worker.status(),
            acked: acked.clone(),
        });
        pipeline.add_sink(name, tables, queue, acked);
        workers.push(tokio::spawn(worker.run()));
    }
    let mut archive_acked = None;
    if let (Some(sink), Some(holding)) = (archive, holdings.last()) {
        // One lane: the archive writes changes in stream order (see pgfanout_archive::sink).
        let settings = WorkerSettings { lanes: 1, ..config.worker_settings() };
        let name = sink.name().to_owned();
        let tables = routing.tables().into_iter().map(|table| (table, TableMapping::identity()));
        let (worker, queue, acked) =
            SinkWorker::new(sink, holding.checkpoint, settings, metrics.clone(), on_ack.clone());
        statuses.write().unwrap_or_else(|poisoned| poisoned.into_inner()).push((name.clone(), worker.status()));
        archive_acked = Some(acked.clone());
        pipeline.add_sink(name, tables, queue, acked);
        workers.push(tokio::spawn(worker.run()));
    }
    // Resume from the oldest sink checkpoint; the server moves a start older
    // than the slot's confirmed_flush_lsn up to it.
    let start = if holdings.iter().all(|holding| holding.checkpoint.is_some()) {
        holdings.iter().filter_map(|holding| holding.checkpoint).min().unwrap_or_default()
    } else {
        Lsn::ZERO
    };

    let settings = StreamSettings {
        status_interval: Duration::from_millis(config.source.status_interval_ms),
        busy_read_pause: Duration::from_micros(config.source.busy_read_pause_us),
        ..StreamSettings::default()
    };
    let mut marker = Marker::spawn(all_sinks, record, settings.status_interval, shutdown.clone());
    // The helper tasks live as long as this attempt: after another process
    // took the slot this instance stands by, and a standby writes no
    // heartbeats and copies no snapshot (the next attempt starts its own).
    let mut attempt_tasks = AttemptTasks::default();
    attempt_tasks.spawn(pgfanout_source::monitor::watch_source(
        options.clone(),
        config.source.slot.clone(),
        config.source.heartbeat_interval_secs,
        metrics.clone(),
        shutdown.clone(),
    ));
    if std::io::stderr().is_terminal() {
        attempt_tasks.spawn(crate::progress::catch_up(metrics.clone(), server_position, shutdown.clone()));
    }
    // Rebuild tasks end with the attempt too: `run` calls `go_offline` once it ends.
    rebuild.go_live(rebuildable, &acknowledgements, snapshotter.clone(), config.snapshot.enabled);
    let archive_feed = config.archive.as_ref().zip(archive_acked).map(|(archive, acked)| (archive.path.clone(), acked));
    replay.go_live(replayable, archive_feed, metrics.clone(), shutdown.clone());
    attempt_tasks.adopt(crate::snapshot::start(planned, &acknowledgements, snapshotter));
    let cx = StreamContext {
        source: &config.source,
        options: &options,
        start_options: &start_options,
        settings,
        metrics,
        on_ack: &on_ack,
        shutdown,
        streaming,
        until,
    };
    match stream_until_shutdown(&cx, connection, start, confirmed_at_start, &mut pipeline, &mut marker).await {
        Ok(stopped) => finish(pipeline, workers, stopped.stream, &mut marker, stopped.confirmed, config).await,
        Err(err) => {
            // Nothing more is confirmed by this instance: in-flight batches
            // end here (their writes are idempotent; whoever streams next
            // re-sends what the slot did not confirm).
            for worker in &workers {
                worker.abort();
            }
            Err(err.into())
        }
    }
}

/// The tasks one streaming attempt started beside the stream, aborted when
/// the attempt ends, however it ends.
#[derive(Default)]
struct AttemptTasks {
    tasks: Vec<tokio::task::AbortHandle>,
}

impl AttemptTasks {
    fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.push(tokio::spawn(task).abort_handle());
    }

    fn adopt(&mut self, tasks: Vec<tokio::task::JoinHandle<()>>) {
        self.tasks.extend(tasks.iter().map(tokio::task::JoinHandle::abort_handle));
    }
}

impl Drop for AttemptTasks {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
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
