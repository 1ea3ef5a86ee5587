//! `pgfanout replay`: applies archived changes again to some sinks.
//!
//! Two ways, chosen (as `rebuild` does) by whether a pgfanout answers on the
//! HTTP address:
//!
//! ```text
//!  CLI ── POST /replay {sink, from, to, tables} ──► running `run` (202 + id), one sink at a time
//!      ◄─ GET /replay (polled) ── state, changes applied ── until done / failed
//!
//!  no answer (connection refused) and the slot is not active:
//!      apply from the archive straight into the stores, up to each sink's stored checkpoint
//! ```
//!
//! Both apply the same way:
//!
//! ```text
//!  change archive ─► ArchiveReader::seek(--from) ─► pieces up to --to and the sink's checkpoint
//!        ─► --table filter, the sink's own mapping ─► batches of BATCH_CHANGES
//!        ─► the sink's lanes (split by key, as its worker splits) ─► Sink::apply (no checkpoint)
//! ```
//!
//! A sink applies one batch while the replay reads and maps the next; the
//! next batch starts only once every lane of the previous one is applied, and
//! lanes split by key, so each key's changes are applied in stream order.
//!
//! Why it is exact beside the live stream: in the running process the
//! replay pauses that one sink's worker at a transaction boundary
//! ([`pgfanout_core::PauseHandle`]); the store then holds exactly every
//! transaction up to the worker's checkpoint `C`. The replay waits until the
//! archive holds everything up to `C` too, applies the archived transactions
//! from `--from` whose end is at or before `C`, then every archived
//! transaction after `C` up to the worker's horizon (what it set aside, see
//! below), and resumes the worker at the horizon; it goes on with the first
//! transaction after it. Nothing is missing
//! or applied twice, and since the sink applies nothing live meanwhile, an
//! older replayed write is always followed by every newer change of its key
//! (replayed, then live): a delete the stream applied is re-applied after
//! the older insert the replay wrote, even where the store keeps no trace of
//! deletes (Redis without `tombstone_secs`, MongoDB without `tombstones`,
//! graph nodes). Version guards make replayed changes the store already has
//! harmless. Running aggregates (MongoDB) keep a version per group and take
//! only newer deltas, so a range replayed twice counts nothing twice; graph
//! derived relationships are recomputed from source rows, never
//! incremented, so they come out the same.
//!
//! While the sink is paused, the other sinks keep streaming: the paused
//! worker drains its queue, setting aside (dropping) each transaction once
//! the archive has acknowledged it and recording the end of the last one,
//! its horizon ([`pgfanout_core::Paused::set_aside_to`]). The replay applies
//! `(C, horizon]` from the archive (every table, past `--to` too: these are
//! live changes) while the horizon moves, at most 20 rounds, then holds the worker at a transaction boundary
//! ([`pgfanout_core::Paused::hold`]) for a last round and resumes it with
//! [`pgfanout_core::Paused::resume`]: the worker stores the horizon as its
//! checkpoint and acknowledges it. The flush LSN stays at or below `C` until
//! then (nothing set aside is acknowledged), so PostgreSQL keeps the WAL and
//! a crash meanwhile re-sends it. A replay cut short (crash, shutdown, a
//! failed batch) leaves older versions written: run it again; if the worker
//! had set something aside, it is stranded (it acknowledges nothing more)
//! until pgfanout restarts and the slot re-sends what it set aside.
//!
//! A worker that has applied nothing yet and found no checkpoint in its
//! store (`C` = 0) holds nothing the stream sent: the replay then goes to the
//! archive's end, and the worker applies everything after 0 again anyway.
//!
//! `--to` before `C` replays only that range: in stores that keep no trace
//! of deletes, rows deleted after `--to` come back (the replay warns).
//! Standalone (no pgfanout running) the replay goes to `--to` or the
//! archive's end: the next `pgfanout run` applies everything after each
//! sink's stored checkpoint again, in order, after the replayed writes, so
//! the result is exact too.

mod live;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::future::join_all;
use pgfanout_archive::ArchiveReader;
use pgfanout_core::lanes::split_into_lanes_with;
use pgfanout_core::mapping::Mapped;
use pgfanout_core::{ChangeRef, Lsn, Sink, SinkStatus, TableMapping, TableName, Transaction};
use postgres_protocol::escape::escape_literal;
use tokio::task::JoinHandle;

pub use live::{endpoint, ReplayControl, ReplayRequest, ReplaySink, ReplayStatus};

use crate::config::{Config, SinkConfig};
use crate::rebuild::{http_call, message_of};
use crate::sinks::build_sink;

/// Changes per batch, split into the sink's lanes: about 2,000 per lane at
/// the default 4 lanes, large enough that a call's round trip is shared by
/// many changes.
const BATCH_CHANGES: usize = 8000;
/// Attempts of a failing batch lane before the replay gives up.
const APPLY_ATTEMPTS: u32 = 6;

/// Arguments of `pgfanout replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Path of the TOML config (its `[archive]` section names the archive).
    #[arg(long, short, env = "PGFANOUT_CONFIG")]
    config: PathBuf,
    /// First commit LSN to re-apply, e.g. `0/16B3748`: every transaction committed at or after it.
    #[arg(long, value_name = "LSN")]
    from: Lsn,
    /// Last commit LSN to re-apply (inclusive); default: up to what each sink holds.
    #[arg(long, value_name = "LSN")]
    to: Option<Lsn>,
    /// Sinks to replay into (repeatable), one after another; all when omitted.
    #[arg(long, value_name = "NAME")]
    sink: Vec<String>,
    /// Tables to replay (repeatable, `schema.table` or `table`); all routed ones when omitted.
    #[arg(long, value_name = "TABLE")]
    table: Vec<String>,
    /// Print what would be applied (counts per table and op) and apply nothing.
    #[arg(long)]
    dry_run: bool,
    /// HTTP address of the running pgfanout; default: the config's `http.listen`.
    #[arg(long)]
    http: Option<SocketAddr>,
}

/// A sink being replayed into, with its routed tables and what it got.
struct Target {
    sink: Arc<dyn Sink>,
    tables: Vec<(TableName, Arc<TableMapping>)>,
    /// The sink's `delivery.lanes`.
    lanes: usize,
    pending: Vec<Transaction>,
    pending_changes: usize,
    /// The batch being applied: its change count once done.
    in_flight: Option<JoinHandle<anyhow::Result<u64>>>,
    applied: u64,
    /// Counts applied changes (`pgfanout_replay_changes_total`), in the running process.
    counter: Option<prometheus::IntCounter>,
    /// The paused worker's status: a replayed batch is progress (for `/healthz`).
    status: Option<SinkStatus>,
    /// How long each batch waits before it is applied (tests, see [`TEST_BATCH_DELAY_ENV`]).
    delay: Option<Duration>,
}

impl Target {
    fn new(sink: Arc<dyn Sink>, tables: Vec<(TableName, Arc<TableMapping>)>, lanes: usize) -> Self {
        Target {
            sink,
            tables,
            lanes,
            pending: Vec::new(),
            pending_changes: 0,
            in_flight: None,
            applied: 0,
            counter: None,
            status: None,
            delay: test_batch_delay(),
        }
    }

    /// Counts applied changes on `counter` and reports each batch as progress on `status`.
    fn counted(mut self, counter: prometheus::IntCounter, status: SinkStatus) -> Self {
        self.counter = Some(counter);
        self.status = Some(status);
        self
    }
}

impl Drop for Target {
    /// A replay cut short (failed, shut down) stops writing at once: the
    /// worker it paused resumes as it ends, and must not race a batch still
    /// being applied.
    fn drop(&mut self) {
        if let Some(in_flight) = self.in_flight.take() {
            in_flight.abort();
        }
    }
}

/// `pgfanout replay`.
pub async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let Some(archive) = &config.archive else {
        bail!(
            "replay reads the change archive, and {} has no [archive] section; \
             without an archive, `pgfanout rebuild` copies the tables again",
            args.config.display()
        );
    };
    if let Some(to) = args.to.filter(|&to| to < args.from) {
        bail!("--to {to} is before --from {}: give a range whose end is at or after its start", args.from);
    }
    let mut reader = open_at(&archive.path, args.from)?;
    let tables: Vec<TableName> = args.table.iter().map(|table| TableName::parse(table)).collect();
    let wanted = |table: &TableName| tables.is_empty() || tables.contains(table);

    if args.dry_run {
        refuse_past_the_end(args.from, reader.newest_transaction()?, None)?;
        let to = args.to.unwrap_or(Lsn(u64::MAX));
        let mut counts: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
        let mut transactions = 0u64;
        while let Some(piece) = reader.next_piece()? {
            if piece.transaction.commit_lsn > to {
                break;
            }
            transactions += u64::from(piece.ends_transaction);
            for change in piece.transaction.changes.iter().filter(|change| wanted(&change.table.table)) {
                *counts.entry((change.table.table.to_string(), change.op.label())).or_default() += 1;
            }
        }
        for ((table, op), count) in &counts {
            println!("{}", serde_json::json!({ "table": table, "op": op, "changes": count }));
        }
        println!("{}", serde_json::json!({ "transactions": transactions, "changes": counts.values().sum::<u64>() }));
        return Ok(());
    }

    let known: Vec<&str> = config.sinks.iter().map(|sink| sink.name()).collect();
    for name in &args.sink {
        if !known.contains(&name.as_str()) {
            bail!("no sink named {name} in {}; configured sinks: {}", args.config.display(), known.join(", "));
        }
    }
    let chosen: Vec<&SinkConfig> = config
        .sinks
        .iter()
        .filter(|sink| args.sink.is_empty() || args.sink.iter().any(|name| name == sink.name()))
        .collect();
    if args.to.is_some() {
        for sink in &chosen {
            warn_of_forgotten_deletes(sink, &wanted);
        }
    }
    let mut address = args.http.unwrap_or(config.http.listen);
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    for sink in &chosen {
        let request = ReplayRequest {
            sink: sink.name().to_owned(),
            from: args.from.to_string(),
            to: args.to.map(|to| to.to_string()),
            tables: args.table.clone(),
        };
        let body = serde_json::to_string(&request)?;
        let (status, answer) = match http_call(address, "POST", "/replay", &body).await {
            Ok(answer) => answer,
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
                return standalone(&config, &args, &chosen, &wanted, address).await;
            }
            Err(err) => return Err(err).with_context(|| format!("POST http://{address}/replay")),
        };
        if status != 202 {
            bail!("the running pgfanout at {address} refused the replay ({status}): {}", message_of(&answer));
        }
        let scheduled: ReplayStatus = serde_json::from_str(&answer).context("reading the answer to POST /replay")?;
        eprintln!("replay {} of sink {} scheduled on the running pgfanout at {address}", scheduled.id, scheduled.sink);
        let done = follow(address, scheduled.id).await?;
        println!(
            "{}",
            serde_json::json!({
                "sink": done.sink,
                "changes": done.changes,
                "transactions": done.transactions,
                "paused_at": done.paused_at,
                "last_commit_lsn": done.last_commit_lsn,
                "seconds": done.seconds,
            })
        );
    }
    Ok(())
}

/// Polls `GET /replay` until replay `id` ends, printing its progress to stderr.
async fn follow(address: SocketAddr, id: u64) -> anyhow::Result<ReplayStatus> {
    let mut last = String::new();
    loop {
        let (status, answer) =
            http_call(address, "GET", "/replay", "").await.with_context(|| format!("GET http://{address}/replay"))?;
        if status != 200 {
            bail!("GET /replay answered {status}: {}", message_of(&answer));
        }
        let replays: Vec<ReplayStatus> = serde_json::from_str(&answer).context("reading GET /replay")?;
        let Some(current) = replays.into_iter().find(|status| status.id == id) else {
            bail!("the running pgfanout no longer knows replay {id} (it restarted?); run the replay again");
        };
        let line = format!("{}: {} change(s) applied", current.state, current.changes);
        if line != last {
            eprintln!("{line}");
            last = line;
        }
        match current.state.as_str() {
            "done" => return Ok(current),
            "failed" => bail!("replay into sink {} failed: {}", current.sink, current.error.unwrap_or_default()),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// No pgfanout answers: applies straight into the stores, if no other
/// process streams from the slot.
async fn standalone(
    config: &Config,
    args: &ReplayArgs,
    chosen: &[&SinkConfig],
    wanted: &impl Fn(&TableName) -> bool,
    address: SocketAddr,
) -> anyhow::Result<()> {
    let mut connection = pg_replication::ReplicationConnection::connect(&config.source.connect_options()?)
        .await
        .context("connecting to PostgreSQL")?;
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
    eprintln!("no pgfanout answers on {address} and slot {slot} is idle: replaying standalone");
    let archive = config.archive.as_ref().context("no [archive] section")?;
    for sink_config in chosen {
        let (sink, tables) = build_sink(sink_config)?;
        let checkpoint = sink.load_checkpoint().await.with_context(|| format!("sink {}", sink.name()))?;
        let checkpoint = checkpoint.unwrap_or_default();
        let mut reader = open_at(&archive.path, args.from)?;
        let newest = reader.newest_transaction()?;
        refuse_past_the_end(args.from, newest, Some(checkpoint))?;
        if let Some((_, archived_to)) = newest.filter(|&(_, end)| end < checkpoint) {
            tracing::warn!(
                sink = sink.name(),
                archived_to = %archived_to,
                checkpoint = %checkpoint,
                "the archive ends before the sink's checkpoint: the transactions between are not replayed"
            );
        }
        let tables = tables.into_iter().map(|(table, mapping)| (table, Arc::new(mapping))).collect();
        let mut target = Target::new(sink, tables, sink_config.delivery().lanes);
        // The next `run` applies everything after `checkpoint` again: no need to stop there.
        let bound = Bound { after: Lsn::ZERO, to: args.to.unwrap_or(Lsn(u64::MAX)), held: Lsn(u64::MAX) };
        let started = Instant::now();
        let progress = apply_pieces(&mut reader, &mut target, bound, wanted).await?;
        println!(
            "{}",
            serde_json::json!({
                "sink": target.sink.name(),
                "changes": target.applied,
                "transactions": progress.transactions,
                "checkpoint": checkpoint.to_string(),
                "last_commit_lsn": progress.last_commit.map(|lsn| lsn.to_string()),
                "seconds": started.elapsed().as_secs_f64(),
            })
        );
    }
    Ok(())
}

/// The archive in `dir`, positioned at `from` (refused, naming the oldest
/// LSN, when `from` is older than the archive).
fn open_at(dir: &std::path::Path, from: Lsn) -> anyhow::Result<ArchiveReader> {
    let mut reader = ArchiveReader::open(dir, Arc::default())
        .with_context(|| format!("cannot open the change archive {}", dir.display()))?;
    reader.seek(from).with_context(|| format!("cannot replay from {from}"))?;
    Ok(reader)
}

/// Says which replayed tables get rows deleted after `--to` back: where the
/// store keeps no trace of a delete, a replayed write recreates a row a
/// later delete (outside the range) removed.
fn warn_of_forgotten_deletes(sink: &SinkConfig, wanted: &impl Fn(&TableName) -> bool) {
    // Already only the sink's routed tables.
    let forgetting: Vec<String> = sink
        .tables_forgetting_deletes()
        .into_iter()
        .filter(|table| wanted(table))
        .map(|table| table.to_string())
        .collect();
    if !forgetting.is_empty() {
        tracing::warn!(
            sink = sink.name(),
            tables = %forgetting.join(", "),
            fix = "replay without --to (up to what the sink holds), or keep delete markers (Redis: tombstone_secs; \
                   MongoDB: tombstones = true), or check with `pgfanout verify --repair` afterwards",
            "these tables keep no trace of deletes: a row deleted after --to comes back"
        );
    }
}

/// Refuses a `--from` after everything there is: past the newest archived
/// transaction (`newest`: commit and end LSN) and past the sink's
/// checkpoint (`live`, when known), nothing can be replayed.
fn refuse_past_the_end(from: Lsn, newest: Option<(Lsn, Lsn)>, live: Option<Lsn>) -> anyhow::Result<()> {
    let archived_to = newest.map(|(_, end)| end).unwrap_or_default();
    if from <= archived_to || live.is_some_and(|live| from <= live) {
        return Ok(());
    }
    let newest = match newest {
        Some((commit, end)) => format!("the newest archived transaction committed at {commit} (ends at {end})"),
        None => "the archive holds no transaction yet".to_owned(),
    };
    let live = live.map(|live| format!(" and the sink's checkpoint is {live}")).unwrap_or_default();
    bail!(
        "--from {from} is past the live position: {newest}{live}; nothing has been archived there yet. \
         Pick an LSN at or before {archived_to}, e.g. the `pgfanout_archive_oldest_lsn` metric for the whole archive"
    )
}

/// Which transactions a replay applies: none ending at or before `after`,
/// committed after `to`, or ending after `held` (what the store holds).
#[derive(Debug, Clone, Copy)]
struct Bound {
    /// Transactions ending at or before it are skipped.
    after: Lsn,
    to: Lsn,
    held: Lsn,
}

/// How far a replay got.
#[derive(Debug, Default)]
struct Progress {
    transactions: u64,
    last_commit: Option<Lsn>,
}

/// Reads pieces within `bound` and applies them to `target`; returns once
/// every change read is applied.
async fn apply_pieces(
    reader: &mut ArchiveReader,
    target: &mut Target,
    bound: Bound,
    wanted: &impl Fn(&TableName) -> bool,
) -> anyhow::Result<Progress> {
    let mut progress = Progress::default();
    while let Some(piece) = reader.next_piece()? {
        let transaction = piece.transaction;
        if transaction.end_lsn <= bound.after {
            continue;
        }
        if transaction.commit_lsn > bound.to || transaction.end_lsn > bound.held {
            break;
        }
        if piece.ends_transaction {
            progress.transactions += 1;
        }
        progress.last_commit = Some(transaction.commit_lsn);
        let mut changes = Vec::new();
        for change in transaction.changes.iter().filter(|change| wanted(&change.table.table)) {
            let Some((_, mapping)) = target.tables.iter().find(|(table, _)| *table == change.table.table) else {
                continue;
            };
            let mapped = mapping.apply(change).with_context(|| {
                format!(
                    "sink {}: change {} of the transaction at {}",
                    target.sink.name(),
                    change.ordinal,
                    transaction.commit_lsn
                )
            })?;
            if let Mapped::Change(mapped) = mapped {
                changes.push(mapped);
            }
        }
        if !changes.is_empty() {
            target.pending_changes += changes.len();
            target.pending.push(Transaction { changes, ..transaction });
        }
        if target.pending_changes >= BATCH_CHANGES {
            flush(target).await?;
        }
    }
    flush(target).await?;
    settle(target).await?;
    Ok(progress)
}

/// Starts applying what `target` holds, once the batch before it is
/// applied; returns while it is being applied (see [`settle`]).
async fn flush(target: &mut Target) -> anyhow::Result<()> {
    if target.pending.is_empty() {
        return Ok(());
    }
    settle(target).await?;
    let batch = std::mem::take(&mut target.pending);
    target.pending_changes = 0;
    target.in_flight = Some(tokio::spawn(apply_batch(target.sink.clone(), target.lanes, batch, target.delay)));
    Ok(())
}

/// Waits until the batch `target` is applying (if any) is applied.
async fn settle(target: &mut Target) -> anyhow::Result<()> {
    if let Some(in_flight) = target.in_flight.take() {
        let applied = in_flight.await.context("a replay batch task failed")??;
        target.applied += applied;
        if let Some(counter) = &target.counter {
            counter.inc_by(applied);
        }
        if let Some(status) = &target.status {
            status.progressed();
        }
    }
    Ok(())
}

/// Applies `batch` to `sink` in `lanes` lanes split by key, as the sink's
/// worker would, concurrently; returns the number of changes applied.
async fn apply_batch(
    sink: Arc<dyn Sink>,
    lanes: usize,
    batch: Vec<Transaction>,
    delay: Option<Duration>,
) -> anyhow::Result<u64> {
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let refs: Vec<ChangeRef<'_>> = batch
        .iter()
        .flat_map(|transaction| transaction.changes.iter().map(move |change| ChangeRef { transaction, change }))
        .collect();
    let count = refs.len() as u64;
    let lanes = split_into_lanes_with(refs, lanes, |change, keys| sink.related_lane_keys(change, keys));
    for outcome in join_all(lanes.iter().map(|lane| apply_lane(sink.as_ref(), lane))).await {
        outcome?;
    }
    Ok(count)
}

/// Environment variable read by debug builds only: milliseconds every replay
/// batch of the archive's range waits before it is applied, so that tests
/// can widen the window in which the live stream runs ahead of a replay
/// (what the paused sink set aside meanwhile is applied without it).
const TEST_BATCH_DELAY_ENV: &str = "PGFANOUT_TEST_REPLAY_BATCH_DELAY_MS";

fn test_batch_delay() -> Option<Duration> {
    if !cfg!(debug_assertions) {
        return None;
    }
    std::env::var(TEST_BATCH_DELAY_ENV).ok()?.parse().ok().map(Duration::from_millis)
}

/// Applies one lane, retrying transient failures a few times.
async fn apply_lane(sink: &dyn Sink, changes: &[ChangeRef<'_>]) -> anyhow::Result<()> {
    let mut attempt = 1;
    loop {
        match sink.apply(changes, None).await {
            Ok(()) => return Ok(()),
            Err(err) if attempt < APPLY_ATTEMPTS && err.kind != pgfanout_core::ErrorKind::Permanent => {
                tracing::warn!(sink = sink.name(), attempt, error = %pgfanout_core::error_chain(&err), "replay batch failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt))).await;
                attempt += 1;
            }
            Err(err) => {
                return Err(err).with_context(|| {
                    format!("replay into sink {}: {}", sink.name(), pgfanout_core::describe_apply(changes, None))
                })
            }
        }
    }
}
