//! `pgfanout rebuild --sink NAME [--table T…] [--wipe]`: copies tables into
//! one sink again, while every sink keeps streaming.
//!
//! Two ways, chosen by whether a pgfanout answers on the HTTP address:
//!
//! ```text
//!  CLI ── POST /rebuild {sink, tables, wipe} ──► running `run` (202 + id)
//!      ◄─ GET /rebuild (polled) ── state, rows copied, tables left ── until done / failed
//!
//!  no answer (connection refused) and the slot is not active:
//!      reset the tables' snapshot progress in the sink, wipe if asked;
//!      the next `pgfanout run` copies them
//! ```
//!
//! In the running process a rebuild of one sink is, per call:
//! 1. the tables' entries are removed from the sink's stored snapshot
//!    progress, so a crash from here on still copies them at the next start;
//! 2. with `--wipe`, a *barrier*: an empty chunk through the watermark merge,
//!    whose high watermark `W` is injected into that sink's queue; once the
//!    sink acknowledged `W` it holds every change committed before `W`, and
//!    [`Sink::wipe`] removes what pgfanout wrote for the tables at a version
//!    below `Version::snapshot_row(W, 0)`. Every change committed after `W`
//!    carries a higher version, and each store checks the version and removes
//!    an object in one atomic step (a Lua script, a filtered delete), so a
//!    change the stream applies while the wipe runs is never lost;
//! 3. the snapshot copies the tables chunk by chunk through the watermark
//!    merge (so a delete during the copy, even of a row not copied yet, is
//!    never undone by an older chunk row), starting after the wipe ended.
//!
//! The other sinks, and this sink's other tables, keep streaming throughout:
//! nothing here pauses the pipeline.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{bail, Context};
use pg_replication::{ConnectOptions, ReplicationConnection};
use pgfanout_core::{Lsn, Metrics, Sink, TableMapping, TableName, TableSchema, Version};
use pgfanout_snapshot::{
    ChunkOutcome, ReadChunk, ReadVisibility, SinkTarget, SnapshotProgress, SnapshotTable, Snapshotter, TableProgress,
    WATERMARK_PREFIX,
};
use postgres_protocol::escape::escape_literal;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::Config;

/// What `POST /rebuild` takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebuildRequest {
    /// The sink's name.
    pub sink: String,
    /// Tables (`schema.table` or `table`); every routed one when empty.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Remove what pgfanout wrote for the tables first.
    #[serde(default)]
    pub wipe: bool,
}

/// One rebuild as `GET /rebuild` reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RebuildStatus {
    /// Its id within the process.
    pub id: u64,
    /// The sink.
    pub sink: String,
    /// The tables (`schema.table`).
    pub tables: Vec<String>,
    /// Whether it wipes first.
    pub wipe: bool,
    /// `wiping`, `copying`, `done` or `failed`.
    pub state: String,
    /// Objects the wipe removed.
    pub wiped: u64,
    /// Rows copied so far (`pgfanout_snapshot_rows_total` of the tables, since the start).
    pub rows_copied: u64,
    /// Tables not copied yet.
    pub tables_remaining: i64,
    /// Why it failed.
    pub error: Option<String>,
}

/// The tables a sink routes, with their mappings.
pub type RoutedMappings = Vec<(TableName, Arc<TableMapping>)>;

/// A sink of the running pipeline, as a rebuild needs it.
struct LiveSink {
    sink: Arc<dyn Sink>,
    tables: Vec<(TableName, Arc<TableMapping>)>,
    acked: watch::Receiver<Lsn>,
}

/// What the current stream offers to rebuilds.
struct Live {
    sinks: Vec<LiveSink>,
    snapshotter: Snapshotter,
    /// `[snapshot] enabled`: rebuilds copy through the snapshot.
    enabled: bool,
}

/// Shared between the HTTP endpoint and `run`: the live pipeline's sinks
/// (while one streams) and every rebuild started in this process.
#[derive(Clone, Default)]
pub struct RebuildControl {
    live: Arc<RwLock<Option<Live>>>,
    rebuilds: Arc<Mutex<Vec<RebuildStatus>>>,
    /// The running rebuild tasks of the current streaming attempt.
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

/// Why `POST /rebuild` refused, with the HTTP status it answers.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    /// Not streaming yet (or standing by).
    #[error("pgfanout is not streaming yet (starting or standing by); try again once /readyz answers")]
    NotStreaming,
    /// `[snapshot] enabled = false`.
    #[error("[snapshot] enabled = false: rebuild copies through the snapshot; enable it")]
    SnapshotDisabled,
    /// No such sink.
    #[error("no sink named {sink:?}; configured: {known}")]
    UnknownSink {
        /// The name asked for.
        sink: String,
        /// The configured names.
        known: String,
    },
    /// A table the sink does not route.
    #[error("sink {sink} does not route table {table}; it routes: {routed}")]
    UnroutedTable {
        /// The sink.
        sink: String,
        /// The table asked for.
        table: String,
        /// The tables it routes.
        routed: String,
    },
    /// The body is not a rebuild request.
    #[error("the request body is not {{\"sink\": NAME, \"tables\": [..], \"wipe\": bool}}: {0}")]
    BadRequest(String),
    /// A snapshot of that sink runs already.
    #[error("a snapshot of sink {0} is already running (initial copy or rebuild); wait for it to finish")]
    Busy(String),
    /// A replay pauses that sink: its worker sets aside what reaches it,
    /// which only the archive holds, and a snapshot's rows are not archived.
    #[error("a replay into sink {0} is running; rebuild once it is done (GET /replay)")]
    Replaying(String),
}

impl TriggerError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            TriggerError::NotStreaming => 503,
            TriggerError::SnapshotDisabled | TriggerError::BadRequest(_) | TriggerError::UnroutedTable { .. } => 400,
            TriggerError::UnknownSink { .. } => 404,
            TriggerError::Busy(_) | TriggerError::Replaying(_) => 409,
        }
    }
}

impl RebuildControl {
    /// Makes the current stream's sinks available to rebuilds; `acked` holds
    /// each worker's acknowledgements by sink name.
    pub fn go_live(
        &self,
        sinks: Vec<(Arc<dyn Sink>, RoutedMappings)>,
        acked: &[(String, watch::Receiver<Lsn>)],
        snapshotter: Snapshotter,
        enabled: bool,
    ) {
        let sinks = sinks
            .into_iter()
            .filter_map(|(sink, tables)| {
                let (_, acked) = acked.iter().find(|(name, _)| name == sink.name())?;
                Some(LiveSink { sink, tables, acked: acked.clone() })
            })
            .collect();
        *self.live.write().unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some(Live { sinks, snapshotter, enabled });
    }

    /// The streaming attempt ended: its rebuilds stop (their sink's stored
    /// progress lets the next start finish the copy), and no new one starts
    /// until the next attempt streams.
    pub fn go_offline(&self) {
        *self.live.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        for task in self.tasks.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).drain(..) {
            task.abort();
        }
        for status in self.rebuilds.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).iter_mut() {
            if matches!(status.state.as_str(), "wiping" | "copying") {
                status.state = "failed".into();
                status.error = Some(
                    "the stream stopped; the sink's stored snapshot progress copies the rest at the next start".into(),
                );
            }
        }
    }

    /// Every rebuild of this process, with its counters brought up to date.
    pub fn statuses(&self, metrics: &Metrics) -> Vec<RebuildStatus> {
        let mut rebuilds = self.rebuilds.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        for status in &mut rebuilds {
            if status.state == "copying" {
                status.rows_copied = rows_copied(metrics, &status.sink, &status.tables);
                status.tables_remaining = metrics
                    .snapshot_tables_remaining
                    .get_metric_with_label_values(&[&status.sink])
                    .map_or(0, |gauge| gauge.get());
            }
        }
        rebuilds
    }

    /// Starts the rebuild `body` asks for; what was scheduled. Refused for
    /// a sink in `replaying` (those a replay pauses now).
    pub fn trigger(&self, body: &str, metrics: &Metrics, replaying: &[String]) -> Result<RebuildStatus, TriggerError> {
        let request: RebuildRequest =
            serde_json::from_str(body).map_err(|err| TriggerError::BadRequest(err.to_string()))?;
        let live = self.live.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(live) = live.as_ref() else { return Err(TriggerError::NotStreaming) };
        if !live.enabled {
            return Err(TriggerError::SnapshotDisabled);
        }
        let Some(target) = live.sinks.iter().find(|sink| sink.sink.name() == request.sink) else {
            let known = live.sinks.iter().map(|sink| sink.sink.name()).collect::<Vec<_>>().join(", ");
            return Err(TriggerError::UnknownSink { sink: request.sink, known });
        };
        let tables = choose_tables(&request.sink, &target.tables, &request.tables)?;
        let mut rebuilds = self.rebuilds.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let running = rebuilds
            .iter()
            .any(|status| status.sink == request.sink && matches!(status.state.as_str(), "wiping" | "copying"));
        let copying = metrics
            .snapshot_tables_remaining
            .get_metric_with_label_values(&[&request.sink])
            .is_ok_and(|gauge| gauge.get() > 0);
        if running || copying {
            return Err(TriggerError::Busy(request.sink));
        }
        if replaying.contains(&request.sink) {
            return Err(TriggerError::Replaying(request.sink));
        }
        let status = RebuildStatus {
            id: rebuilds.len() as u64 + 1,
            sink: request.sink.clone(),
            tables: tables.iter().map(|(table, _)| table.to_string()).collect(),
            wipe: request.wipe,
            state: if request.wipe { "wiping" } else { "copying" }.to_owned(),
            wiped: 0,
            rows_copied: 0,
            tables_remaining: tables.len() as i64,
            error: None,
        };
        rebuilds.push(status.clone());
        let task = LiveRebuild {
            id: status.id,
            sink: target.sink.clone(),
            acked: target.acked.clone(),
            tables,
            routed: target.tables.iter().map(|(table, _)| table.clone()).collect(),
            wipe: request.wipe,
            snapshotter: live.snapshotter.clone(),
            control: self.clone(),
        };
        // Counted at once, so the 409 above and /readyz see it from now on.
        metrics.snapshot_tables_remaining.with_label_values(&[&request.sink]).set(status.tables.len() as i64);
        let handle = tokio::spawn(task.run()).abort_handle();
        let mut tasks = self.tasks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        tasks.retain(|task| !task.is_finished());
        tasks.push(handle);
        Ok(status)
    }

    fn update(&self, id: u64, change: impl FnOnce(&mut RebuildStatus)) {
        let mut rebuilds = self.rebuilds.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(status) = rebuilds.iter_mut().find(|status| status.id == id) {
            change(status);
        }
    }
}

/// `requested` checked against what `sink` routes; every routed table when empty.
fn choose_tables(
    sink: &str,
    routed: &[(TableName, Arc<TableMapping>)],
    requested: &[String],
) -> Result<Vec<(TableName, Arc<TableMapping>)>, TriggerError> {
    if requested.is_empty() {
        return Ok(routed.to_vec());
    }
    requested
        .iter()
        .map(|asked| {
            let table = TableName::parse(asked);
            routed.iter().find(|(name, _)| *name == table).cloned().ok_or_else(|| TriggerError::UnroutedTable {
                sink: sink.to_owned(),
                table: table.to_string(),
                routed: routed.iter().map(|(name, _)| name.to_string()).collect::<Vec<_>>().join(", "),
            })
        })
        .collect()
}

fn rows_copied(metrics: &Metrics, sink: &str, tables: &[String]) -> u64 {
    tables
        .iter()
        .filter_map(|table| metrics.snapshot_rows_total.get_metric_with_label_values(&[sink, table]).ok())
        .map(|counter| counter.get())
        .sum()
}

/// One rebuild in the running process (see the module doc).
struct LiveRebuild {
    id: u64,
    sink: Arc<dyn Sink>,
    acked: watch::Receiver<Lsn>,
    tables: Vec<(TableName, Arc<TableMapping>)>,
    /// Every table the sink routes.
    routed: Vec<TableName>,
    wipe: bool,
    snapshotter: Snapshotter,
    control: RebuildControl,
}

impl LiveRebuild {
    async fn run(self) {
        let (id, control) = (self.id, self.control.clone());
        let name = self.sink.name().to_owned();
        let metrics = self.snapshotter.metrics.clone();
        let tables: Vec<String> = self.tables.iter().map(|(table, _)| table.to_string()).collect();
        let before = rows_copied(&metrics, &name, &tables);
        tracing::info!(sink = %name, tables = tables.len(), wipe = self.wipe, "rebuild started");
        match self.rebuild().await {
            Ok(()) => {
                tracing::info!(sink = %name, "rebuild done");
                let copied = rows_copied(&metrics, &name, &tables).saturating_sub(before);
                control.update(id, |status| {
                    status.state = "done".into();
                    status.rows_copied = copied;
                    status.tables_remaining = 0;
                });
            }
            Err(err) => {
                let error = format!("{err:#}");
                tracing::error!(sink = %name, error = %error, "rebuild failed");
                metrics.snapshot_tables_remaining.with_label_values(&[&name]).set(0);
                control.update(id, |status| {
                    status.state = "failed".into();
                    status.error = Some(error);
                });
            }
        }
    }

    async fn rebuild(mut self) -> anyhow::Result<()> {
        let sink = self.sink.clone();
        let names: Vec<TableName> = self.tables.iter().map(|(table, _)| table.clone()).collect();
        let progress = forget_tables(sink.as_ref(), &names, &self.routed).await?;
        if self.wipe {
            let options = &self.snapshotter.options;
            let mut connection = connect(options).await?;
            let mut shapes = Vec::new();
            for (table, mapping) in &self.tables {
                let described = SnapshotTable::describe(
                    &mut connection,
                    table,
                    Some(&self.snapshotter.publication),
                    self.snapshotter.types.clone(),
                )
                .await
                .with_context(|| format!("reading the shape of table {table}"))?;
                shapes.push((described.schema.clone(), mapping.mapped_shape(&described.schema)));
            }
            let (first_shape, _) = shapes.first().context("no table to rebuild")?;
            let barrier = barrier(&self.snapshotter, &mut connection, sink.name(), first_shape).await?;
            self.acked
                .wait_for(|acked| *acked >= barrier)
                .await
                .map_err(|_| anyhow::anyhow!("the sink's worker stopped before the wipe"))?;
            let older_than = Version::snapshot_row(barrier, 0);
            let mut wiped = 0;
            for (_, mapped) in &shapes {
                wiped += sink.wipe(mapped, Some(older_than)).await?;
            }
            tracing::info!(sink = sink.name(), wiped, barrier = %barrier, "rebuild: wiped");
            self.control.update(self.id, |status| {
                status.state = "copying".into();
                status.wiped = wiped;
            });
        }
        let target = SinkTarget { sink: sink.clone(), acked: self.acked.clone(), tables: names, progress };
        self.snapshotter.run_sink(target).await?;
        Ok(())
    }
}

/// Removes `tables` from `sink`'s stored snapshot progress, so they are
/// copied again (at the next start too, if this process stops first).
/// When the sink has no (readable) progress stored, its other `routed`
/// tables are recorded as done, so that only `tables` are copied. Returns
/// the progress stored.
async fn forget_tables(
    sink: &dyn Sink,
    tables: &[TableName],
    routed: &[TableName],
) -> anyhow::Result<SnapshotProgress> {
    let stored = sink.load_snapshot_progress().await.with_context(|| format!("sink {}", sink.name()))?;
    let readable = stored.as_deref().map(SnapshotProgress::parse).transpose().unwrap_or_else(|err| {
        // What the error tells users to do: start from the tables' list.
        tracing::warn!(sink = sink.name(), error = %err, "replacing the unreadable snapshot progress");
        None
    });
    let mut progress = match readable {
        Some(progress) => progress,
        None => {
            let mut adopted = SnapshotProgress::default();
            for table in routed {
                adopted.tables.insert(table.to_string(), TableProgress::Done { chunks: 0, rows: 0 });
            }
            adopted
        }
    };
    for table in tables {
        progress.tables.remove(&table.to_string());
    }
    sink.store_snapshot_progress(&progress.to_stored())
        .await
        .with_context(|| format!("sink {}: storing its snapshot progress", sink.name()))?;
    Ok(progress)
}

/// A point in the stream before which `sink` holds every change once it
/// acknowledged it: an empty chunk through the watermark merge, injected
/// into that sink's queue at its high watermark, whose LSN is returned.
async fn barrier(
    snapshotter: &Snapshotter,
    connection: &mut ReplicationConnection,
    sink: &str,
    shape: &Arc<TableSchema>,
) -> anyhow::Result<Lsn> {
    let key_names: Vec<String> =
        shape.columns.iter().filter(|column| column.is_key).map(|column| column.name.clone()).collect();
    let merge = &snapshotter.merge;
    loop {
        let ticket = merge.open(sink, &shape.table, key_names.clone());
        let staged = async {
            emit(connection, &ticket.low).await?;
            let result = connection.simple_query("SELECT pg_catalog.pg_current_snapshot()::text AS snapshot").await?;
            let visibility = result
                .get(0, "snapshot")
                .and_then(ReadVisibility::parse)
                .context("pg_current_snapshot() returned no snapshot")?;
            merge.chunk_read(
                ticket.id,
                ReadChunk {
                    schema: shape.clone(),
                    rows: Vec::new(),
                    key_positions: Vec::new(),
                    visibility,
                    committed_in_progress: Vec::new(),
                },
            );
            emit(connection, &ticket.high).await
        };
        if let Err(err) = staged.await {
            merge.cancel(ticket.id);
            return Err(err);
        }
        match ticket.outcome.await {
            Ok(ChunkOutcome::Merged { high_watermark, .. }) => return Ok(high_watermark),
            Ok(ChunkOutcome::Retry { reason }) => tracing::info!(sink, reason, "rebuild: placing the barrier again"),
            Err(_) => bail!("the stream stopped before the rebuild's barrier reached sink {sink}"),
        }
    }
}

/// Emits a watermark message with a transaction id, so that its commit
/// flushes the WAL and the stream sees it at once.
async fn emit(connection: &mut ReplicationConnection, content: &str) -> anyhow::Result<()> {
    let sql = format!(
        "SELECT pg_catalog.pg_logical_emit_message(false, {}, {})::text AS lsn, pg_catalog.pg_current_xact_id()",
        escape_literal(WATERMARK_PREFIX),
        escape_literal(content)
    );
    connection.simple_query(&sql).await.context("emitting a watermark (pg_logical_emit_message)")?;
    Ok(())
}

async fn connect(options: &ConnectOptions) -> anyhow::Result<ReplicationConnection> {
    let mut connection = ReplicationConnection::connect(options).await.context("connecting to PostgreSQL")?;
    connection.simple_query("SET synchronous_commit = on").await.context("SET synchronous_commit")?;
    Ok(connection)
}

/// `pgfanout rebuild` arguments.
#[derive(clap::Args)]
pub struct RebuildArgs {
    /// Path of the TOML config.
    #[arg(long, short, env = "PGFANOUT_CONFIG")]
    pub config: std::path::PathBuf,
    /// The sink to rebuild.
    #[arg(long)]
    pub sink: String,
    /// Tables to rebuild (`schema.table`); all the sink routes when omitted.
    #[arg(long)]
    pub table: Vec<String>,
    /// First remove what pgfanout wrote for those tables in that sink (only that).
    #[arg(long)]
    pub wipe: bool,
    /// HTTP address of the running pgfanout; default: the config's `http.listen`.
    #[arg(long)]
    pub http: Option<SocketAddr>,
}

/// `pgfanout rebuild`: through the running process when one answers on
/// the HTTP address, standalone otherwise (see the module doc).
pub async fn rebuild(args: RebuildArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let mut address = args.http.unwrap_or(config.http.listen);
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let request = RebuildRequest { sink: args.sink.clone(), tables: args.table.clone(), wipe: args.wipe };
    let body = serde_json::to_string(&request)?;
    let (status, answer) = match http_call(address, "POST", "/rebuild", &body).await {
        Ok(answer) => answer,
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
            return standalone(&config, &request, address).await;
        }
        Err(err) => return Err(err).with_context(|| format!("POST http://{address}/rebuild")),
    };
    if status != 202 {
        bail!("the running pgfanout at {address} refused the rebuild ({status}): {}", message_of(&answer));
    }
    let scheduled: RebuildStatus = serde_json::from_str(&answer).context("reading the answer to POST /rebuild")?;
    println!(
        "rebuild {} of sink {} scheduled on the running pgfanout at {address}: {}{}",
        scheduled.id,
        scheduled.sink,
        scheduled.tables.join(", "),
        if scheduled.wipe { " (wiping first)" } else { "" }
    );
    follow(address, scheduled.id).await
}

/// Polls `GET /rebuild` until rebuild `id` ends, printing its progress.
async fn follow(address: SocketAddr, id: u64) -> anyhow::Result<()> {
    let mut last = String::new();
    loop {
        let (status, answer) =
            http_call(address, "GET", "/rebuild", "").await.with_context(|| format!("GET http://{address}/rebuild"))?;
        if status != 200 {
            bail!("GET /rebuild answered {status}: {}", message_of(&answer));
        }
        let rebuilds: Vec<RebuildStatus> = serde_json::from_str(&answer).context("reading GET /rebuild")?;
        let Some(current) = rebuilds.into_iter().find(|status| status.id == id) else {
            bail!("the running pgfanout no longer knows rebuild {id} (it restarted?); its stored progress resumes it");
        };
        let line = format!(
            "{}: wiped {} object(s), copied {} row(s), {} table(s) left",
            current.state, current.wiped, current.rows_copied, current.tables_remaining
        );
        if line != last {
            println!("{line}");
            last = line;
        }
        match current.state.as_str() {
            "done" => return Ok(()),
            "failed" => bail!("rebuild of sink {} failed: {}", current.sink, current.error.unwrap_or_default()),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// No pgfanout answers: reset the tables' progress (and wipe) directly, if
/// no other process streams from the slot.
async fn standalone(config: &Config, request: &RebuildRequest, address: SocketAddr) -> anyhow::Result<()> {
    if !config.snapshot.enabled {
        bail!("[snapshot] enabled = false: rebuild copies through the snapshot; enable it");
    }
    let options = config.source.connect_options()?;
    let mut connection = connect(&options).await?;
    let slot = &config.source.slot;
    let sql = format!(
        "SELECT active::text AS active FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
        escape_literal(slot)
    );
    let result = connection.simple_query(&sql).await.context("reading pg_replication_slots")?;
    if result.get(0, "active") == Some("true") {
        bail!(
            "nothing answers on {address}, but a process streams from slot {slot}: if it is pgfanout, pass its \
             HTTP address with --http ADDR; otherwise stop it first"
        );
    }
    let Some(sink_config) = config.sinks.iter().find(|sink| sink.name() == request.sink) else {
        let known = config.sinks.iter().map(|sink| sink.name()).collect::<Vec<_>>().join(", ");
        bail!("no sink named {:?}; configured: {known}", request.sink);
    };
    let (sink, routed) = crate::sinks::build_sink(sink_config)?;
    let routed: Vec<(TableName, Arc<TableMapping>)> =
        routed.into_iter().map(|(table, mapping)| (table, Arc::new(mapping))).collect();
    let tables = choose_tables(&request.sink, &routed, &request.tables)?;
    let names: Vec<TableName> = tables.iter().map(|(table, _)| table.clone()).collect();
    let all: Vec<TableName> = routed.iter().map(|(table, _)| table.clone()).collect();
    forget_tables(sink.as_ref(), &names, &all).await?;
    println!("no pgfanout answers on {address} and slot {slot} is idle: rebuilding standalone");
    if request.wipe {
        let types = Arc::new(pgoutput::TypeRegistry::new());
        for (table, mapping) in &tables {
            let described =
                SnapshotTable::describe(&mut connection, table, Some(&config.source.publication), types.clone())
                    .await
                    .with_context(|| format!("reading the shape of table {table}"))?;
            let removed = sink.wipe(&mapping.mapped_shape(&described.schema), None).await?;
            println!("wiped table {table}: {removed} object(s) removed");
        }
    }
    println!(
        "sink {}: {} marked for copying; the next `pgfanout run` copies them while it streams",
        request.sink,
        names.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

/// The `error` of a JSON answer, or the answer itself.
pub(crate) fn message_of(answer: &str) -> String {
    serde_json::from_str::<serde_json::Value>(answer)
        .ok()
        .and_then(|value| value.get("error").and_then(|error| error.as_str()).map(str::to_owned))
        .unwrap_or_else(|| answer.trim().to_owned())
}

/// One HTTP/1.1 request with `Connection: close`; the status and body.
pub(crate) async fn http_call(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting timed out"))??;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 30 s"))??;
    let text = String::from_utf8_lossy(&answer);
    let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(invalid)?;
    let status = head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).ok_or_else(invalid)?;
    Ok((status, body.to_owned()))
}

/// Rebuild handlers of the HTTP endpoint.
pub mod endpoint {
    use axum::extract::State;
    use axum::response::IntoResponse;

    use crate::http::{json_answer, scheduled_answer, HttpState};

    /// `POST /rebuild`: 202 with the scheduled rebuild, else the error.
    pub async fn trigger(State(state): State<HttpState>, body: String) -> impl IntoResponse {
        scheduled_answer(
            state
                .rebuild
                .trigger(&body, &state.metrics, &state.replay.paused_sinks())
                .map_err(|err| (err.status(), err.to_string())),
        )
    }

    /// `GET /rebuild`: every rebuild of this process.
    pub async fn list(State(state): State<HttpState>) -> impl IntoResponse {
        json_answer(&state.rebuild.statuses(&state.metrics))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed() -> Vec<(TableName, Arc<TableMapping>)> {
        ["public.a", "app.b"].iter().map(|name| (TableName::parse(name), Arc::new(TableMapping::identity()))).collect()
    }

    #[test]
    fn tables_default_to_every_routed_one_and_unrouted_ones_are_refused_with_the_list() {
        let all = choose_tables("cache", &routed(), &[]).unwrap();
        assert_eq!(all.len(), 2);
        let chosen = choose_tables("cache", &routed(), &["a".to_owned()]).unwrap();
        assert_eq!(chosen[0].0, TableName::parse("public.a"), "a bare name means public");
        let err = choose_tables("cache", &routed(), &["public.c".to_owned()]).unwrap_err();
        assert_eq!(err.status(), 400);
        assert_eq!(err.to_string(), "sink cache does not route table public.c; it routes: public.a, app.b");
        assert_eq!(TriggerError::Busy("cache".into()).status(), 409);
        assert_eq!(TriggerError::Replaying("cache".into()).status(), 409);
        assert_eq!(TriggerError::UnknownSink { sink: "x".into(), known: String::new() }.status(), 404);
    }

    #[test]
    fn error_answers_show_their_message() {
        assert_eq!(message_of(r#"{"error": "no sink named \"x\""}"#), "no sink named \"x\"");
        assert_eq!(message_of("plain text\n"), "plain text");
    }
}
