//! `pgfanout replay`: applies archived changes again to some sinks, while
//! the running instance keeps streaming into every sink.
//!
//! ```text
//!  change archive ─► ArchiveReader::seek(--from) ─► pieces up to --to
//!        ─► per sink: --table filter, the sink's own mapping ─► Sink::apply (no checkpoint)
//! ```
//!
//! Why this is safe beside the live stream: every sink write is guarded by
//! the change's version (commit LSN, ordinal), so a replayed change older
//! than what a row holds changes nothing, and one the store lacks (wiped,
//! restored from a backup) is written. The live instance keeps owning the
//! checkpoint (replay stores none), so the replaying sink never misses nor
//! repeats a live change: the stream never paused for it. Running aggregates
//! (MongoDB) keep a version per group and take only newer deltas, so a range
//! replayed twice counts nothing twice.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use pgfanout_archive::ArchiveReader;
use pgfanout_core::mapping::Mapped;
use pgfanout_core::{ChangeRef, Lsn, Sink, TableMapping, TableName, Transaction};

use crate::config::Config;
use crate::sinks::build_sink;

/// Changes per `Sink::apply` call.
const BATCH_CHANGES: usize = 2000;

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
    pending: Vec<Transaction>,
    pending_changes: usize,
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
    let mut reader = ArchiveReader::open(&archive.path, Arc::default())
        .with_context(|| format!("cannot open the change archive {}", archive.path.display()))?;
    reader.seek(args.from).with_context(|| format!("cannot replay from {}", args.from))?;
    let tables: Vec<TableName> = args.table.iter().map(|table| TableName::parse(table)).collect();
    let wanted = |table: &TableName| tables.is_empty() || tables.contains(table);
    let to = args.to.unwrap_or(Lsn(u64::MAX));

    if args.dry_run {
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
    for sink_config in
        config.sinks.iter().filter(|sink| args.sink.is_empty() || args.sink.iter().any(|n| n == sink.name()))
    {
        let (sink, tables) = build_sink(sink_config)?;
        // Connects; the checkpoint stays the live instance's to move.
        let checkpoint = sink.load_checkpoint().await.with_context(|| format!("sink {}", sink.name()))?;
        tracing::info!(sink = sink.name(), checkpoint = %checkpoint.unwrap_or_default(), from = %args.from, "replaying");
        targets.push(Target { sink, tables, pending: Vec::new(), pending_changes: 0, applied: 0 });
    }
    let started = Instant::now();
    let mut transactions = 0u64;
    let mut last = None;
    while let Some(piece) = reader.next_piece()? {
        let transaction = piece.transaction;
        if transaction.commit_lsn > to {
            break;
        }
        transactions += u64::from(piece.ends_transaction);
        last = Some(transaction.commit_lsn);
        for target in &mut targets {
            let mut changes = Vec::new();
            for change in transaction.changes.iter().filter(|change| wanted(&change.table.table)) {
                let Some((_, mapping)) = target.tables.iter().find(|(table, _)| *table == change.table.table) else {
                    continue;
                };
                match mapping.apply(change).with_context(|| {
                    format!(
                        "sink {}: change {} of the transaction at {}",
                        target.sink.name(),
                        change.ordinal,
                        transaction.commit_lsn
                    )
                })? {
                    Mapped::Change(mapped) => changes.push(mapped),
                    Mapped::Filtered => {}
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
    for target in &mut targets {
        flush(target).await?;
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

/// Applies what `target` holds, retrying transient failures a few times.
async fn flush(target: &mut Target) -> anyhow::Result<()> {
    if target.pending.is_empty() {
        return Ok(());
    }
    let refs: Vec<ChangeRef<'_>> = target
        .pending
        .iter()
        .flat_map(|transaction| transaction.changes.iter().map(move |change| ChangeRef { transaction, change }))
        .collect();
    let mut attempt = 0;
    loop {
        match target.sink.apply(&refs, None).await {
            Ok(()) => break,
            Err(err) if attempt < 5 && err.kind != pgfanout_core::ErrorKind::Permanent => {
                attempt += 1;
                tracing::warn!(sink = target.sink.name(), attempt, error = %pgfanout_core::error_chain(&err), "replay batch failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
            }
            Err(err) => {
                return Err(err).with_context(|| {
                    format!("replay into sink {}: {}", target.sink.name(), pgfanout_core::describe_apply(&refs, None))
                })
            }
        }
    }
    target.applied += refs.len() as u64;
    drop(refs);
    target.pending.clear();
    target.pending_changes = 0;
    Ok(())
}
