//! `pgfanout replay`: applies archived changes again to some sinks, while
//! the running instance keeps streaming into every sink.
//!
//! ```text
//!  change archive ─► ArchiveReader::seek(--from) ─► pieces up to --to
//!        ─► per sink: --table filter, the sink's own mapping ─► batches of BATCH_CHANGES
//!        ─► the sink's lanes (split by key, as its worker splits) ─► Sink::apply (no checkpoint)
//! ```
//!
//! A sink applies one batch while the replay reads and maps the next; the
//! next batch starts only once every lane of the previous one is applied, and
//! lanes split by key, so each key's changes are applied in stream order.
//!
//! Why this is safe beside the live stream: every sink write is guarded by
//! the change's version (commit LSN, ordinal), so a replayed change older
//! than what a row holds changes nothing, and one the store lacks (wiped,
//! restored from a backup) is written. The live instance keeps owning the
//! checkpoint (replay stores none), so the replaying sink never misses nor
//! repeats a live change: the stream never paused for it. A delete is the
//! exception where the store keeps no trace of it (Redis without
//! `tombstone_secs`, MongoDB without `tombstones`, graph nodes): an older
//! replayed write recreates the row until the replay re-applies the delete,
//! which the catch-up makes it do for every delete the stream confirmed; the
//! replay warns about such tables. Running aggregates
//! (MongoDB) keep a version per group and take only newer deltas, so a range
//! replayed twice counts nothing twice; graph derived relationships are
//! recomputed from source rows, never incremented, so they come out the same.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use futures_util::future::join_all;
use pgfanout_archive::ArchiveReader;
use pgfanout_core::lanes::split_into_lanes_with;
use pgfanout_core::mapping::Mapped;
use pgfanout_core::{ChangeRef, Lsn, Sink, TableMapping, TableName, Transaction};
use tokio::task::JoinHandle;

use crate::config::{Config, SinkConfig};
use crate::sinks::build_sink;

/// Changes per batch, split into the sink's lanes: about 2,000 per lane at
/// the default 4 lanes, large enough that a call's round trip is shared by
/// many changes.
const BATCH_CHANGES: usize = 8000;
/// Attempts of a failing batch lane before the replay gives up.
const APPLY_ATTEMPTS: u32 = 6;
/// How long the replay waits for the archive to reach the live checkpoint.
const CATCH_UP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Arguments of `pgfanout replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Path of the TOML config (its `[archive]` section names the archive).
    #[arg(long, short, env = "PGFANOUT_CONFIG")]
    config: PathBuf,
    /// First commit LSN to re-apply, e.g. `0/16B3748`: every transaction committed at or after it.
    #[arg(long, value_name = "LSN")]
    from: Lsn,
    /// Last commit LSN to re-apply (inclusive); default: the end of the archive.
    #[arg(long, value_name = "LSN")]
    to: Option<Lsn>,
    /// Sinks to replay into (repeatable); all when omitted.
    #[arg(long, value_name = "NAME")]
    sink: Vec<String>,
    /// Tables to replay (repeatable, `schema.table` or `table`); all routed ones when omitted.
    #[arg(long, value_name = "TABLE")]
    table: Vec<String>,
    /// Print what would be applied (counts per table and op) and apply nothing.
    #[arg(long)]
    dry_run: bool,
}

/// A sink being replayed into, with its routed tables and what it got.
struct Target {
    sink: Arc<dyn Sink>,
    tables: Vec<(TableName, TableMapping)>,
    /// The sink's `delivery.lanes`.
    lanes: usize,
    pending: Vec<Transaction>,
    pending_changes: usize,
    /// The batch being applied: its change count once done.
    in_flight: Option<JoinHandle<anyhow::Result<u64>>>,
    applied: u64,
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
    let mut reader = ArchiveReader::open(&archive.path, Arc::default())
        .with_context(|| format!("cannot open the change archive {}", archive.path.display()))?;
    reader.seek(args.from).with_context(|| format!("cannot replay from {}", args.from))?;
    let newest = reader.newest_transaction()?;
    let tables: Vec<TableName> = args.table.iter().map(|table| TableName::parse(table)).collect();
    let wanted = |table: &TableName| tables.is_empty() || tables.contains(table);
    let to = args.to.unwrap_or(Lsn(u64::MAX));

    if args.dry_run {
        refuse_past_the_end(args.from, newest, None)?;
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
    let mut targets = Vec::new();
    let mut live: Option<Lsn> = None;
    for sink_config in
        config.sinks.iter().filter(|sink| args.sink.is_empty() || args.sink.iter().any(|n| n == sink.name()))
    {
        let (sink, tables) = build_sink(sink_config)?;
        warn_of_forgotten_deletes(sink_config, &wanted);
        // Connects; the checkpoint stays the live instance's to move.
        let checkpoint = sink.load_checkpoint().await.with_context(|| format!("sink {}", sink.name()))?;
        tracing::info!(sink = sink.name(), checkpoint = %checkpoint.unwrap_or_default(), from = %args.from, "replaying");
        let lanes = sink_config.delivery().lanes;
        targets.push(Target {
            sink,
            tables,
            lanes,
            pending: Vec::new(),
            pending_changes: 0,
            in_flight: None,
            applied: 0,
        });
        live = live.max(checkpoint);
    }
    refuse_past_the_end(args.from, newest, live)?;
    let started = Instant::now();
    // A --from after the newest archived commit has nothing to read up to the archive's end.
    let read_to = newest.filter(|&(commit, _)| commit < args.from).map(|(_, end)| end);
    let mut progress = Progress { resume_from: args.from, last_end: read_to, ..Progress::default() };
    apply_pieces(&mut reader, &mut targets, to, &wanted, &mut progress).await?;
    if args.to.is_none() {
        catch_up(&archive.path, &mut targets, &wanted, &mut progress).await?;
    }
    let (transactions, last) = (progress.transactions, progress.last_commit);
    for target in &mut targets {
        flush(target).await?;
        settle(target).await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    for target in &targets {
        println!(
            "{}",
            serde_json::json!({
                "sink": target.sink.name(),
                "changes": target.applied,
                "transactions": transactions,
                "last_commit_lsn": last.map(|lsn| lsn.to_string()),
                "seconds": seconds,
            })
        );
    }
    Ok(())
}

/// Says which replayed tables may get deleted rows back for a while: where
/// the store keeps no trace of a delete, an older replayed write recreates a
/// row the live stream deleted, until the replay re-applies that delete. The
/// catch-up below re-applies every delete the stream confirmed; one the
/// stream applied but had not yet checkpointed when the replay ended is
/// missed, so beside a busy stream such a table can keep a deleted row.
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
            fix = "keep delete markers (Redis: tombstone_secs; MongoDB: tombstones = true), or stop `pgfanout run` \
                   while replaying, or check with `pgfanout verify --repair` afterwards",
            "these tables keep no trace of deletes: a row deleted while the replay runs can come back"
        );
    }
}

/// Refuses a `--from` after everything there is: past the newest archived
/// transaction (`newest`: commit and end LSN) and past the sinks' live
/// checkpoint (`live`, when known), nothing can be replayed, and waiting for
/// the archive to get there would only time out.
fn refuse_past_the_end(from: Lsn, newest: Option<(Lsn, Lsn)>, live: Option<Lsn>) -> anyhow::Result<()> {
    let archived_to = newest.map(|(_, end)| end).unwrap_or_default();
    if from <= archived_to || live.is_some_and(|live| from <= live) {
        return Ok(());
    }
    let newest = match newest {
        Some((commit, end)) => format!("the newest archived transaction committed at {commit} (ends at {end})"),
        None => "the archive holds no transaction yet".to_owned(),
    };
    let live = live.map(|live| format!(" and the sinks' live checkpoint is {live}")).unwrap_or_default();
    bail!(
        "--from {from} is past the live position: {newest}{live}; nothing has been archived there yet. \
         Pick an LSN at or before {archived_to}, e.g. the `pgfanout_archive_oldest_lsn` metric for the whole archive"
    )
}

/// How far a replay got.
#[derive(Debug, Default)]
struct Progress {
    transactions: u64,
    last_commit: Option<Lsn>,
    /// End LSN of the last whole transaction read.
    last_end: Option<Lsn>,
    /// Where to read on from: after the last whole transaction read (a
    /// piece read of a transaction not yet ended is read again, harmlessly).
    resume_from: Lsn,
}

/// Reads pieces up to commit LSN `to` and applies each to the targets routing its tables.
async fn apply_pieces(
    reader: &mut ArchiveReader,
    targets: &mut [Target],
    to: Lsn,
    wanted: &impl Fn(&TableName) -> bool,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    while let Some(piece) = reader.next_piece()? {
        let transaction = piece.transaction;
        if transaction.commit_lsn > to {
            break;
        }
        if piece.ends_transaction {
            progress.transactions += 1;
            progress.last_end = Some(transaction.end_lsn);
            progress.resume_from = Lsn(transaction.commit_lsn.0 + 1);
        }
        progress.last_commit = Some(transaction.commit_lsn);
        for target in targets.iter_mut() {
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
                target.pending.push(Transaction { changes, ..transaction.clone() });
            }
            if target.pending_changes >= BATCH_CHANGES {
                flush(target).await?;
            }
        }
    }
    for target in targets.iter_mut() {
        flush(target).await?;
    }
    Ok(())
}

/// Rejoins the live stream: keeps reading what the archive gained until it
/// reaches every target's live checkpoint. Every change the live stream
/// applied while the replay wrote older ones is then applied again after
/// them, so a key the stream deleted or moved during the replay (where the
/// replay wrote an older version afterwards) ends as the stream left it.
async fn catch_up(
    dir: &std::path::Path,
    targets: &mut [Target],
    wanted: &impl Fn(&TableName) -> bool,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        let mut live = Lsn::ZERO;
        for target in targets.iter() {
            let checkpoint =
                target.sink.load_checkpoint().await.with_context(|| format!("sink {}", target.sink.name()))?;
            live = live.max(checkpoint.unwrap_or_default());
        }
        if progress.last_end.is_some_and(|end| end >= live) {
            tracing::info!(archive_end = %progress.last_end.unwrap_or_default(), live_checkpoint = %live, "replay caught up with the live stream");
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the archive did not reach the sinks' live checkpoint {live} within {CATCH_UP_TIMEOUT:?} \
                 (it holds up to {}); is `pgfanout run` with this [archive] running?",
                progress.last_end.unwrap_or_default()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let mut reader = ArchiveReader::open(dir, Arc::default())?;
        reader.seek(progress.resume_from)?;
        apply_pieces(&mut reader, targets, Lsn(u64::MAX), wanted, progress).await?;
    }
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
    target.in_flight = Some(tokio::spawn(apply_batch(target.sink.clone(), target.lanes, batch)));
    Ok(())
}

/// Waits until the batch `target` is applying (if any) is applied.
async fn settle(target: &mut Target) -> anyhow::Result<()> {
    if let Some(in_flight) = target.in_flight.take() {
        target.applied += in_flight.await.context("a replay batch task failed")??;
    }
    Ok(())
}

/// Applies `batch` to `sink` in `lanes` lanes split by key, as the sink's
/// worker would, concurrently; returns the number of changes applied.
async fn apply_batch(sink: Arc<dyn Sink>, lanes: usize, batch: Vec<Transaction>) -> anyhow::Result<u64> {
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
