//! `pgfanout verify [--sink NAME…] [--table T…] [--repair]`: compares
//! PostgreSQL with what each sink stored, and optionally repairs it.
//!
//! ```text
//!  PostgreSQL ─ rows in key order, chunk by chunk ─► mapping ─► ReadBack::expected_digest ─┐
//!                                                                                  compare digests ─► candidates
//!  store ───────── ReadBack::fetch_digests (the chunk's keys) ─────────────────────┘     │
//!  store ───────── ReadBack::scan_keys (keys PostgreSQL lacks: extra) ─────────────────► │
//!                                                                                         ▼
//!            settle: re-read the keys, wait until the sink is past the WAL position of
//!            the read, fetch, re-read; only a difference over a stable row is reported
//!                                                                                         ▼
//!            --repair: write the rows through Sink::apply (version just below the WAL
//!            position taken before the read), then settle the repaired keys again
//! ```
//!
//! The first pass compares per-row digests ([`RowDigest`]) and keeps the
//! keys of PostgreSQL's rows in one allocation each ([`key_bytes`]), so a
//! table of millions of rows costs little memory; every candidate is
//! compared column by column when it is settled, so what is reported is the
//! same as comparing the rows themselves.
//!
//! It runs beside a streaming pgfanout: a difference found in the first pass
//! may be a change still in flight, so it is only reported once the sink's
//! checkpoint (or the slot's confirmed position, which no sink is behind)
//! has passed the WAL position after a read of the row, and the row read
//! again after the store was fetched is unchanged. Rows that keep changing
//! for every round are reported as unsettled.
//!
//! Repair versions: a row read from PostgreSQL is written with the version
//! (position − 1, ordinal u32::MAX), position being `pg_current_wal_lsn()`
//! taken before the read, so every transaction committed after it beats the
//! repair. A transaction whose commit record lies just before that position
//! may still have been invisible to the read; its change can lose to the
//! repair, which is why the repaired keys are settled again afterwards and
//! repaired again (with a newer position) until they match.

mod reader;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgfanout_core::mapping::Mapped;
use pgfanout_core::readback::{key_bytes, key_row, key_texts, ReadBack, RowDigest, StoredColumns};
use pgfanout_core::{
    Change, ChangeOp, ChangeRef, Lsn, Row, Sink, TableMapping, TableName, TableSchema, Transaction, Version,
};

use crate::config::Config;
use reader::{Key, SourceReader};

/// Rounds of re-checking before a key that keeps changing is given up on.
const SETTLE_ROUNDS: usize = 5;
/// Rounds of repair before a key that keeps differing is given up on.
const REPAIR_ROUNDS: usize = 3;
/// Retries of a repair write that failed transiently.
const REPAIR_RETRIES: u32 = 5;

/// What `verify` was asked to do.
pub struct VerifyOptions {
    /// Sinks to verify; all when empty.
    pub sinks: Vec<String>,
    /// Tables to verify; all routed ones when empty.
    pub tables: Vec<String>,
    /// Re-write the rows that differ.
    pub repair: bool,
    /// How long to wait for a sink to pass a read's WAL position.
    pub catch_up_timeout: Duration,
}

/// How a stored row differs from PostgreSQL's.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Difference {
    /// PostgreSQL has the row, the store does not.
    Missing,
    /// The store has a row PostgreSQL does not (or one outside the sink's filter).
    Extra,
    /// Both have it; these columns (the sink's names) differ.
    Columns(Vec<String>),
    /// The row changed on every re-check; nothing could be concluded.
    Unsettled,
    /// The sink did not pass the read's WAL position in time.
    NotCaughtUp(Lsn),
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Difference::Missing => write!(f, "missing in the store"),
            Difference::Extra => write!(f, "extra in the store (not in PostgreSQL)"),
            Difference::Columns(columns) => write!(f, "columns differ: {}", columns.join(", ")),
            Difference::Unsettled => write!(f, "kept changing during every re-check; run verify again"),
            Difference::NotCaughtUp(lsn) => write!(
                f,
                "differs, but the sink did not reach WAL position {lsn} in time to re-check (is pgfanout running?)"
            ),
        }
    }
}

/// `pgfanout verify`: `Ok(true)` when every verified table is equal (after
/// repair, with `--repair`), `Ok(false)` when differences remain.
pub async fn verify(config: &Config, options: &VerifyOptions) -> anyhow::Result<bool> {
    for name in &options.sinks {
        if !config.sinks.iter().any(|sink| sink.name() == name) {
            bail!(
                "no sink named {name} in the config (sinks: {})",
                config.sinks.iter().map(|sink| sink.name()).collect::<Vec<_>>().join(", ")
            );
        }
    }
    let wanted_tables: Vec<TableName> = options.tables.iter().map(|table| TableName::parse(table)).collect();
    let connect = config.source.connect_options()?;
    let mut connection = pg_replication::ReplicationConnection::connect(&connect)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {}", connect.endpoint()))?;
    let user_types =
        pgfanout_source::catalog::user_types(&mut connection).await.context("reading user types from pg_type")?;
    let mut reader = SourceReader::new(connection, user_types);
    if reader.confirmed_flush(&config.source.slot).await?.is_none() {
        tracing::warn!(slot = %config.source.slot, "the slot does not exist; differences cannot wait for in-flight changes");
    }

    let mut differences = 0usize;
    let mut verified_tables = 0usize;
    let mut matched_any_table = wanted_tables.is_empty();
    let mut unverified_sinks = 0usize;
    for sink_config in
        config.sinks.iter().filter(|sink| options.sinks.is_empty() || options.sinks.iter().any(|n| n == sink.name()))
    {
        let (sink, tables) = crate::sinks::build_sink(sink_config)?;
        let Some(read_back) = sink.read_back() else {
            if !options.sinks.is_empty() {
                bail!("sink {}: verify cannot read this sink kind back; leave it out of --sink", sink.name());
            }
            println!(
                "sink {}: verify cannot read this sink kind back (it stores nothing to compare); not verified",
                sink.name()
            );
            unverified_sinks += 1;
            continue;
        };
        let mut verified_shapes = Vec::new();
        let mut sink_differences = 0usize;
        for (table, mapping) in &tables {
            if !wanted_tables.is_empty() && !wanted_tables.contains(table) {
                continue;
            }
            matched_any_table = true;
            let table_reader = reader.table(table, &config.source.publication).await?;
            let source = Arc::clone(&table_reader.table().schema);
            let check = TableCheck {
                table_reader,
                sink: sink.as_ref(),
                read_back,
                mapping,
                mapped: mapping.mapped_shape(&source),
                source,
                slot: &config.source.slot,
                timeout: options.catch_up_timeout,
            };
            read_back.prepare(&check.mapped).await?;
            for note in read_back.unverifiable(&check.mapped) {
                println!("sink {}, table {table}: not compared: {note}", sink.name());
            }
            let found = check.run(&mut reader, options.repair).await?;
            sink_differences += found;
            verified_tables += 1;
            verified_shapes.push(Arc::clone(&check.mapped));
        }
        if let Some(mut derivation) = read_back.derive_across(&verified_shapes) {
            let place = format!("sink {}", sink.name());
            if sink_differences > 0 {
                // Recomputed from the stored rows, which are not PostgreSQL's yet.
                println!(
                    "{place}: derived relationships not compared: {sink_differences} rows differ from PostgreSQL \
                     (compared once the rows are equal: run verify --repair)"
                );
            } else {
                sink_differences += check_derivation(&place, &mut reader, derivation.as_mut(), options.repair).await?;
            }
        }
        differences += sink_differences;
    }
    if !matched_any_table {
        bail!(
            "no verified sink routes any of the tables {}; check --table against the config",
            options.tables.join(", ")
        );
    }
    if verified_tables == 0 && unverified_sinks > 0 {
        bail!("none of the sinks can be read back by verify; nothing was verified");
    }
    let unverified =
        if unverified_sinks > 0 { format!(" ({unverified_sinks} sinks not verified)") } else { String::new() };
    if differences == 0 {
        println!("verify: {verified_tables} sink tables equal to PostgreSQL{unverified}");
    } else if options.repair {
        println!("verify: {differences} rows still differ after repair in {verified_tables} sink tables{unverified}");
    } else {
        println!("verify: {differences} rows differ in {verified_tables} sink tables{unverified}");
    }
    Ok(differences == 0)
}

/// One table of one sink.
struct TableCheck<'a> {
    /// Chunked reads of the source table (its resume keys in key-index order).
    table_reader: pgfanout_snapshot::TableReader,
    sink: &'a dyn Sink,
    read_back: &'a dyn ReadBack,
    mapping: &'a TableMapping,
    source: Arc<TableSchema>,
    mapped: Arc<TableSchema>,
    slot: &'a str,
    timeout: Duration,
}

impl TableCheck<'_> {
    /// Compares, reports, repairs if asked; the number of rows that still differ.
    async fn run(&self, reader: &mut SourceReader, repair: bool) -> anyhow::Result<usize> {
        let started = Instant::now();
        let mut derivation = self.read_back.derive(&self.mapped);
        let (candidates, counts) = self.first_pass(reader, derivation.as_deref_mut()).await?;
        let mut found = self.settle(reader, candidates.into_keys().collect()).await?;
        self.report(&found, "");
        if repair && !found.is_empty() {
            if let Err(reason) = self.read_back.repairable(&self.mapped) {
                bail!("sink {}: cannot repair: {reason}", self.sink.name());
            }
            for _ in 0..REPAIR_ROUNDS {
                let keys: Vec<Key> = found.keys().cloned().collect();
                self.repair(reader, &keys).await?;
                found = self.settle(reader, keys).await?;
                if found.is_empty() {
                    break;
                }
            }
            self.report(&found, "after repair: ");
        }
        let derived = match derivation.as_deref_mut() {
            Some(derivation) => {
                let place = format!("sink {}, table {}", self.sink.name(), self.source.table);
                check_derivation(&place, reader, derivation, repair).await?
            }
            None => 0,
        };
        println!(
            "sink {}, table {}: {} rows in PostgreSQL (in the sink's filter), {} in the store, {} differ{} ({:.1} s)",
            self.sink.name(),
            self.source.table,
            counts.0,
            counts.1,
            found.len(),
            if repair { " after repair" } else { "" },
            started.elapsed().as_secs_f64()
        );
        Ok(found.len() + derived)
    }

    fn report(&self, found: &BTreeMap<Key, Difference>, prefix: &str) {
        for (key, difference) in found {
            println!(
                "sink {}, table {}: {prefix}key {}: {difference}",
                self.sink.name(),
                self.source.table,
                self.describe_key(key)
            );
        }
    }

    fn describe_key(&self, key: &Key) -> String {
        let names = self.source.key_positions().map(|position| self.source.columns[position].name.as_str());
        let pairs: Vec<String> = names.zip(key).map(|(name, value)| format!("{name}={value}")).collect();
        format!("({})", pairs.join(", "))
    }

    /// A PostgreSQL row as the sink maps it, `None` when the row is outside
    /// the sink's filter.
    fn mapped_row(&self, row: Row) -> anyhow::Result<Option<Row>> {
        let change = Change { table: Arc::clone(&self.source), op: ChangeOp::Insert { new: row }, ordinal: 0 };
        match self
            .mapping
            .apply(&change)
            .with_context(|| format!("sink {}: table {}", self.sink.name(), self.source.table))?
        {
            Mapped::Change(Change { op: ChangeOp::Insert { new }, .. }) => Ok(Some(new)),
            _ => Ok(None),
        }
    }

    /// What the sink should hold for a PostgreSQL row: the mapped row and
    /// its stored form, `None` when the row is outside the sink's filter.
    fn expect(&self, row: Row) -> anyhow::Result<Option<(Row, StoredColumns)>> {
        let Some(new) = self.mapped_row(row)? else { return Ok(None) };
        let stored = self.read_back.expected(&self.mapped, &new)?;
        Ok(Some((new, stored)))
    }

    /// What the sink should hold for a PostgreSQL row, as a digest: the
    /// mapped row and the digest of its stored form, `None` when the row is
    /// outside the sink's filter.
    fn expect_digest(&self, row: Row) -> anyhow::Result<Option<(Row, RowDigest)>> {
        let Some(new) = self.mapped_row(row)? else { return Ok(None) };
        let digest = self.read_back.expected_digest(&self.mapped, &new)?;
        Ok(Some((new, digest)))
    }

    /// Every PostgreSQL row against the store (by digest), then the store's
    /// keys against PostgreSQL's: the keys that may differ (their
    /// differences are only told by [`Self::settle`]), and the row counts.
    async fn first_pass(
        &self,
        reader: &mut SourceReader,
        mut derivation: Option<&mut (dyn pgfanout_core::readback::Derivation + '_)>,
    ) -> anyhow::Result<(BTreeMap<Key, Difference>, (u64, u64))> {
        let mut candidates = BTreeMap::new();
        let mut in_postgres: HashSet<Box<[u8]>> = HashSet::new();
        let mut after: Option<Vec<String>> = None;
        loop {
            let chunk = reader.read_chunk(&self.table_reader, after.as_deref()).await?;
            let more = chunk.more;
            after = chunk.last_key;
            let mut mapped_rows = Vec::with_capacity(chunk.rows.len());
            let mut expected = Vec::with_capacity(chunk.rows.len());
            for row in chunk.rows {
                if let Some((mapped, digest)) = self.expect_digest(row)? {
                    mapped_rows.push(mapped);
                    expected.push(digest);
                }
            }
            if let Some(derivation) = derivation.as_deref_mut() {
                derivation.add(&mapped_rows)?;
            }
            let stored = self.read_back.fetch_digests(&self.mapped, &mapped_rows).await?;
            for ((row, expected), stored) in mapped_rows.iter().zip(&expected).zip(stored) {
                let key = key_bytes(&self.mapped, row).context("a key column is NULL")?;
                if stored != Some(*expected) {
                    let difference =
                        if stored.is_some() { Difference::Columns(Vec::new()) } else { Difference::Missing };
                    candidates.insert(key_texts(&self.mapped, row).context("a key column is NULL")?, difference);
                }
                in_postgres.insert(key);
            }
            if !more || after.is_none() {
                break;
            }
        }
        tracing::debug!(sink = self.sink.name(), table = %self.source.table, rows = in_postgres.len(), candidates = candidates.len(), "PostgreSQL's rows compared");
        let mut in_store: HashSet<Box<[u8]>> = HashSet::new();
        let mut cursor = None;
        loop {
            let page = self.read_back.scan_keys(&self.mapped, cursor).await?;
            for row in &page.keys {
                let Some(key) = key_bytes(&self.mapped, row) else { continue };
                if !in_postgres.contains(&key) {
                    if let Some(texts) = key_texts(&self.mapped, row) {
                        candidates.insert(texts, Difference::Extra);
                    }
                }
                in_store.insert(key);
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        Ok((candidates, (in_postgres.len() as u64, in_store.len() as u64)))
    }

    /// Re-checks `keys` until each compares over a row that did not change
    /// around the store's read (see the module docs); the differences that remain.
    async fn settle(&self, reader: &mut SourceReader, keys: Vec<Key>) -> anyhow::Result<BTreeMap<Key, Difference>> {
        let mut found = BTreeMap::new();
        let mut pending = keys;
        for _ in 0..SETTLE_ROUNDS {
            if pending.is_empty() {
                break;
            }
            let before = reader.read_keys(&self.source, &pending).await?;
            let position = reader.current_lsn().await?;
            if !self.wait_until_past(reader, position).await? {
                // Compare anyway; what differs is reported as unconfirmed.
                let stored = self.fetch_keys(&pending, &before).await?;
                for (key, stored) in pending.iter().zip(stored) {
                    let expected = match before.get(key) {
                        Some(row) => self.expect(row.clone())?.map(|(_, stored)| stored),
                        None => None,
                    };
                    if compare(expected.as_ref(), stored.as_ref()).is_some() {
                        found.insert(key.clone(), Difference::NotCaughtUp(position));
                    }
                }
                return Ok(found);
            }
            let stored = self.fetch_keys(&pending, &before).await?;
            let after = reader.read_keys(&self.source, &pending).await?;
            let mut unstable = Vec::new();
            for (key, stored) in pending.iter().zip(stored) {
                if before.get(key) != after.get(key) {
                    unstable.push(key.clone());
                    continue;
                }
                let expected = match before.get(key) {
                    Some(row) => self.expect(row.clone())?.map(|(_, stored)| stored),
                    None => None,
                };
                if let Some(difference) = compare(expected.as_ref(), stored.as_ref()) {
                    found.insert(key.clone(), difference);
                }
            }
            pending = unstable;
        }
        found.extend(pending.into_iter().map(|key| (key, Difference::Unsettled)));
        Ok(found)
    }

    /// The stored rows of `keys`: located by PostgreSQL's row where it has
    /// one, by the key alone otherwise.
    async fn fetch_keys(
        &self,
        keys: &[Key],
        rows: &std::collections::HashMap<Key, Row>,
    ) -> anyhow::Result<Vec<Option<StoredColumns>>> {
        let mut located = Vec::with_capacity(keys.len());
        for key in keys {
            let row = match rows.get(key) {
                Some(row) => self.expect(row.clone())?.map(|(mapped, _)| mapped),
                None => None,
            };
            located.push(row.unwrap_or_else(|| key_row(&self.mapped, key)));
        }
        Ok(self.read_back.fetch(&self.mapped, &located).await?)
    }

    /// Waits until the sink holds everything before `position`: its own
    /// checkpoint, or the slot's confirmed position, is at or past it.
    /// `false` when that did not happen within the timeout.
    async fn wait_until_past(&self, reader: &mut SourceReader, position: Lsn) -> anyhow::Result<bool> {
        let deadline = Instant::now() + self.timeout;
        let mut last_nudge = Instant::now();
        loop {
            let checkpoint = self.sink.load_checkpoint().await?.unwrap_or_default();
            let confirmed = reader.confirmed_flush(self.slot).await?.unwrap_or_default();
            if checkpoint.max(confirmed) >= position {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            if last_nudge.elapsed() >= Duration::from_secs(1) {
                reader.nudge().await?;
                last_nudge = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Writes PostgreSQL's rows of `keys` through the sink's apply path (a
    /// delete where PostgreSQL has none, or it is outside the filter).
    async fn repair(&self, reader: &mut SourceReader, keys: &[Key]) -> anyhow::Result<()> {
        let position = reader.current_lsn().await?;
        let rows = reader.read_keys(&self.source, keys).await?;
        let mut changes = Vec::with_capacity(keys.len());
        for key in keys {
            let mapped = match rows.get(key) {
                Some(row) => self.expect(row.clone())?.map(|(mapped, _)| mapped),
                None => None,
            };
            let op = match mapped {
                Some(new) => ChangeOp::Insert { new },
                None => ChangeOp::Delete { old: key_row(&self.mapped, key) },
            };
            changes.push(Change { table: Arc::clone(&self.mapped), op, ordinal: repair_version(position).ordinal });
        }
        let version = repair_version(position);
        let transaction = Transaction {
            xid: pgoutput::Xid(0),
            commit_lsn: version.commit_lsn,
            end_lsn: version.commit_lsn,
            commit_time: now(),
            changes,
        };
        let refs: Vec<ChangeRef<'_>> =
            transaction.changes.iter().map(|change| ChangeRef { transaction: &transaction, change }).collect();
        // A transient failure (a store briefly away, an aggregate document a
        // running pgfanout moved meanwhile) is retried as the worker would.
        let mut attempt = 0;
        loop {
            match self.sink.apply(&refs, None).await {
                Ok(()) => break,
                Err(err) if err.kind == pgfanout_core::ErrorKind::Transient && attempt < REPAIR_RETRIES => {
                    attempt += 1;
                    tracing::warn!(sink = self.sink.name(), table = %self.source.table, error = %err, attempt, "repair failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
                }
                Err(err) => {
                    return Err(anyhow::Error::new(err).context(format!(
                        "repairing {} rows of {}",
                        refs.len(),
                        self.source.table
                    )))
                }
            }
        }
        println!(
            "sink {}, table {}: repaired {} rows (version {})",
            self.sink.name(),
            self.source.table,
            refs.len(),
            refs[0].version()
        );
        Ok(())
    }
}

/// Compares what a sink derives (from groups of a table's rows, or across
/// tables) with its recomputation, repairs if asked; the number of derived
/// documents or relationships that still differ. `place` names the sink
/// (and table) in the report.
///
/// Derived data is not settled like rows: a group changed while verify ran
/// may be reported (run it again), and a repair assumes the tables were
/// quiet while they were read (see docs/verify.md).
async fn check_derivation(
    place: &str,
    reader: &mut SourceReader,
    derivation: &mut (dyn pgfanout_core::readback::Derivation + '_),
    repair: bool,
) -> anyhow::Result<usize> {
    let mut mismatches = derivation.compare().await?;
    report_derived(place, &mismatches, "");
    if repair && !mismatches.is_empty() {
        // After the rows' repair, whose writes moved the running documents too.
        let version = repair_version(reader.current_lsn().await?);
        derivation.repair(&mismatches, version).await?;
        println!("{place}: repaired {} derived documents (version {version})", mismatches.len());
        mismatches = derivation.compare().await?;
        report_derived(place, &mismatches, "after repair: ");
    }
    Ok(mismatches.len())
}

fn report_derived(place: &str, mismatches: &[pgfanout_core::readback::DerivedMismatch], prefix: &str) {
    use pgfanout_core::readback::DerivedDifference;
    for mismatch in mismatches {
        let difference = match &mismatch.difference {
            DerivedDifference::Missing => "missing in the store".to_owned(),
            DerivedDifference::Extra => "extra in the store (no row makes it)".to_owned(),
            DerivedDifference::Fields(fields) => format!("fields differ: {}", fields.join(", ")),
        };
        println!("{place}: {prefix}{}, key ({}): {difference}", mismatch.holder, mismatch.group);
    }
}

/// The version a repair writes rows read after `position` (the WAL insert
/// position taken before the read) with: below every change committed at
/// or after `position`, above every change committed before `position - 1`.
fn repair_version(position: Lsn) -> Version {
    Version { commit_lsn: Lsn(position.0.saturating_sub(1)), ordinal: u32::MAX }
}

/// How `stored` differs from `expected` (`None`: not at all).
fn compare(expected: Option<&StoredColumns>, stored: Option<&StoredColumns>) -> Option<Difference> {
    match (expected, stored) {
        (None, None) => None,
        (Some(_), None) => Some(Difference::Missing),
        (None, Some(_)) => Some(Difference::Extra),
        (Some(expected), Some(stored)) => {
            let names: std::collections::BTreeSet<&String> = expected.keys().chain(stored.keys()).collect();
            let differing: Vec<String> =
                names.into_iter().filter(|name| expected.get(*name) != stored.get(*name)).cloned().collect();
            (!differing.is_empty()).then_some(Difference::Columns(differing))
        }
    }
}

/// Now as a PostgreSQL timestamp (microseconds since 2000-01-01).
fn now() -> pgoutput::PgTimestamp {
    const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    pgoutput::PgTimestamp(i64::try_from(unix.as_micros()).unwrap_or(i64::MAX) - POSTGRES_EPOCH_UNIX_MICROS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(pairs: &[(&str, &str)]) -> StoredColumns {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn a_repair_loses_to_changes_committed_from_its_read_on() {
        let position = Lsn(0x1000);
        let repair = repair_version(position);
        for later in [Version { commit_lsn: position, ordinal: 0 }, Version { commit_lsn: Lsn(0x1001), ordinal: 0 }] {
            assert!(later > repair, "{later} must beat the repair {repair}");
        }
        let earlier = Version { commit_lsn: Lsn(0x0ffe), ordinal: u32::MAX };
        assert!(earlier < repair, "{earlier} must lose to the repair {repair}");
    }

    #[test]
    fn comparison_names_missing_extra_and_columns() {
        let a = columns(&[("id", "1"), ("name", "x"), ("n", "2")]);
        let b = columns(&[("id", "1"), ("name", "y"), ("extra", "3")]);
        assert_eq!(compare(Some(&a), Some(&a)), None);
        assert_eq!(compare(Some(&a), None), Some(Difference::Missing));
        assert_eq!(compare(None, Some(&a)), Some(Difference::Extra));
        assert_eq!(compare(None, None), None);
        assert_eq!(
            compare(Some(&a), Some(&b)),
            Some(Difference::Columns(vec!["extra".into(), "n".into(), "name".into()]))
        );
    }
}
