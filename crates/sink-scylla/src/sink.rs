//! The Cassandra/ScyllaDB sink: session, schema, batch apply, checkpoint.
//!
//! One [`Sink::apply`] call: encode the changes ([`crate::encode`]), create
//! or extend target tables when schema management is on, store a new
//! timestamp reservation when the clock needs one ([`crate::timestamp`]),
//! send the planned requests — unlogged batches grouped by partition, the
//! requests of a wave concurrently (up to `concurrency`), waves and
//! truncates in order — then, when handed over, the checkpoint row. Key
//! moves that carry unchanged TOAST values over read the old rows in their
//! place in that order ([`crate::encode::CarriedMove`]) and record what they
//! carry in the carry log before writing ([`crate::carried`]); the entries
//! go once the checkpoint row passes them and, with a change archive
//! ([`Sink::keep_replayable`]), once the archive cannot replay them either.
//!
//! Cassandra has no transactions across partitions: the data and the
//! checkpoint are written one after the other, data first, so the stored
//! checkpoint never claims more than the store holds; after a crash between
//! the two, the writes after the checkpoint are applied again (idempotent).
//!
//! Statements are prepared once per CQL text — a text per (table, column
//! set), so an update without its unchanged TOAST columns, or a relation
//! that gained a column, gets a statement of its own. Routing is the
//! driver's default policy: token-aware, using the prepared statements'
//! partition key.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use pgfanout_core::TlsConfig;
use pgfanout_core::{ChangeRef, Lsn, MappingConfig, ReplayHorizon, Sink, SinkError, TableName, TableSchema, Version};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;

use crate::carried::{self, CarriedCells, CarryLog};
use crate::config::ScyllaSinkConfig;
use crate::encode::{plan_requests, Bound, CarriedMove, CqlEncoder, Phase, Request, TableOptions};
use crate::error::ScyllaSinkError;
use crate::timestamp::WriteClock;
use crate::types::to_cql;

/// Keeps Cassandra/ScyllaDB query tables equal to PostgreSQL rows.
pub struct ScyllaSink {
    config: ScyllaSinkConfig,
    /// The session; `None` until first use. The driver reconnects by itself.
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    /// Encoder and timestamp clock: used without awaiting, by one lane at a time.
    state: Mutex<EncodeState>,
    /// Prepared statements by CQL text.
    prepared: Mutex<HashMap<Arc<str>, PreparedStatement>>,
    /// Schema statements that succeeded in this process, and the columns
    /// known to exist per target table.
    schema: tokio::sync::Mutex<SchemaState>,
    /// Checkpoint last stored (repeated with a new reservation).
    stored_checkpoint: Mutex<Option<Lsn>>,
    /// `INSERT` of the checkpoint row, prepared like the data statements.
    checkpoint_insert: Arc<str>,
    /// What the sink knows of its carry log; `None` until loaded.
    carry_log: Mutex<Option<CarryLog>>,
    /// Where the change archive can replay from, when there is one: carry
    /// log entries stay until it passes them too ([`crate::carried`]).
    replay_horizon: OnceLock<ReplayHorizon>,
    /// The carry log's table, `ks.table`.
    carried_table: String,
    /// Statements and column types `verify` reads tables back with.
    pub(crate) read_targets: crate::readback::ReadTargets,
}

struct EncodeState {
    encoder: CqlEncoder,
    /// `None` until the stored reservation has been read.
    clock: Option<WriteClock>,
}

#[derive(Default)]
struct SchemaState {
    done: HashSet<String>,
    columns: HashMap<String, HashSet<String>>,
    /// The last table shape whose target tables were made complete, per
    /// source table: batches of an unchanged shape skip the checks.
    ensured: HashMap<TableName, Arc<TableSchema>>,
}

impl ScyllaSink {
    /// Builds the sink from validated config; does not connect yet.
    pub fn new(config: ScyllaSinkConfig) -> Self {
        let tables =
            config.tables.iter().map(|t| (TableName::parse(&t.source), TableOptions::from_config(t))).collect();
        let encoder = CqlEncoder::new(&config.keyspace, tables, config.write_timestamps, config.truncate);
        let checkpoint_insert = format!(
            "INSERT INTO {}.{} (sink, lsn, reserved_timestamp) VALUES (?, ?, ?)",
            config.keyspace, config.checkpoint_table
        )
        .into();
        let carried_table = format!("{}.{}", config.keyspace, carried::carried_table(&config.checkpoint_table));
        ScyllaSink {
            carry_log: Mutex::new(None),
            replay_horizon: OnceLock::new(),
            carried_table,
            config,
            session: tokio::sync::Mutex::new(None),
            state: Mutex::new(EncodeState { encoder, clock: None }),
            prepared: Mutex::new(HashMap::new()),
            schema: tokio::sync::Mutex::new(SchemaState::default()),
            stored_checkpoint: Mutex::new(None),
            checkpoint_insert,
            read_targets: Default::default(),
        }
    }

    /// The validated config.
    pub(crate) fn config(&self) -> &ScyllaSinkConfig {
        &self.config
    }

    /// The source tables this sink receives, with their mapping.
    pub fn tables(&self) -> Vec<(TableName, MappingConfig)> {
        self.config.tables.iter().map(|t| (TableName::parse(&t.source), t.mapping())).collect()
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, EncodeState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Where each target table of `shape` keeps its columns.
    pub(crate) fn target_layouts(
        &self,
        shape: &Arc<TableSchema>,
    ) -> Result<Vec<crate::encode::TargetLayout>, ScyllaSinkError> {
        self.lock_state().encoder.layouts(shape)
    }

    pub(crate) async fn session(&self) -> Result<Arc<Session>, ScyllaSinkError> {
        let mut shared = self.session.lock().await;
        if let Some(session) = shared.as_ref() {
            return Ok(session.clone());
        }
        let profile = ExecutionProfile::builder()
            .consistency(self.config.consistency())
            .request_timeout(Some(self.config.request_timeout()))
            .build();
        let mut builder = SessionBuilder::new()
            .known_nodes(&self.config.nodes)
            .connection_timeout(std::time::Duration::from_secs(5))
            .auto_await_schema_agreement(self.config.await_schema_agreement)
            .fetch_schema_metadata(self.config.fetch_schema_metadata)
            .default_execution_profile_handle(profile.into_handle());
        if let Some(user) = &self.config.username {
            let password = match &self.config.password_file {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|source| ScyllaSinkError::PasswordFile { path: path.display().to_string(), source })?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
                None => String::new(),
            };
            builder = builder.user(user, password);
        }
        if let Some(tls) = &self.config.tls {
            builder = builder.tls_context(Some(tls_context(tls)?));
        }
        let session = builder.build().await.map_err(|source| ScyllaSinkError::Connect {
            nodes: self.config.nodes.join(", "),
            source: Box::new(source),
        })?;
        tracing::info!(sink = %self.config.name, nodes = ?self.config.nodes, "connected to the cql cluster");
        let session = Arc::new(session);
        *shared = Some(session.clone());
        Ok(session)
    }

    fn checkpoint_table(&self) -> String {
        format!("{}.{}", self.config.keyspace, self.config.checkpoint_table)
    }

    /// Reads the checkpoint row: the LSN and the timestamp reservation.
    async fn load(&self) -> Result<Option<Lsn>, ScyllaSinkError> {
        let session = self.session().await?;
        let cql = format!("SELECT lsn, reserved_timestamp FROM {} WHERE sink = ?", self.checkpoint_table());
        let result = session.query_unpaged(cql.as_str(), (self.config.name.as_str(),)).await;
        let (lsn, reserved) = match result {
            Ok(result) => {
                let rows = result.into_rows_result().map_err(|err| ScyllaSinkError::CheckpointRow(err.to_string()))?;
                rows.maybe_first_row::<(Option<String>, Option<i64>)>()
                    .map_err(|err| ScyllaSinkError::CheckpointRow(err.to_string()))?
                    .unwrap_or((None, None))
            }
            Err(source) => {
                let err = ScyllaSinkError::Execute { what: cql.clone(), source: Box::new(source) };
                // No checkpoint table (or keyspace) yet: nothing applied so far.
                if !err.is_invalid_request() {
                    return Err(err);
                }
                tracing::info!(sink = %self.config.name, error = %err, "no checkpoint table yet");
                (None, None)
            }
        };
        let lsn = lsn
            .map(|value| {
                value
                    .parse::<Lsn>()
                    .map_err(|_| ScyllaSinkError::BadCheckpoint { sink: self.config.name.clone(), value })
            })
            .transpose()?;
        *self.stored_checkpoint.lock().unwrap_or_else(|p| p.into_inner()) = lsn;
        if self.lock_carry_log().is_none() {
            let log = self.load_carry_log(&session).await?;
            self.lock_carry_log().get_or_insert(log);
        }
        let mut state = self.lock_state();
        if state.clock.is_none() {
            state.clock = Some(WriteClock::starting_after(reserved.unwrap_or(0)));
        }
        Ok(lsn)
    }

    fn lock_carry_log(&self) -> std::sync::MutexGuard<'_, Option<CarryLog>> {
        self.carry_log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The sink's carry log bounds: its oldest entry's commit LSN and its
    /// newest entry's version (none when the table does not exist yet).
    async fn load_carry_log(&self, session: &Session) -> Result<CarryLog, ScyllaSinkError> {
        let failed = |reason: String| ScyllaSinkError::Carried { table: self.carried_table.clone(), reason };
        let mut ends = Vec::with_capacity(2);
        // Clustering order is (commit_lsn, ordinal, target): the first row is the oldest.
        for order in ["", " ORDER BY commit_lsn DESC, ordinal DESC, target DESC"] {
            let cql = format!("SELECT commit_lsn, ordinal FROM {} WHERE sink = ?{order} LIMIT 1", self.carried_table);
            let result = match session.query_unpaged(cql.as_str(), (self.config.name.as_str(),)).await {
                Ok(result) => result,
                Err(source) => {
                    let err = ScyllaSinkError::Execute { what: cql.clone(), source: Box::new(source) };
                    // No carry log table yet: no key move recorded so far.
                    if err.is_invalid_request() {
                        return Ok(CarryLog::default());
                    }
                    return Err(err);
                }
            };
            let rows = result.into_rows_result().map_err(|err| failed(err.to_string()))?;
            let end = rows.maybe_first_row::<(i64, i64)>().map_err(|err| failed(err.to_string()))?;
            let version = end
                .map(|(commit_lsn, ordinal)| {
                    Ok::<_, ScyllaSinkError>(Version {
                        commit_lsn: Lsn(
                            u64::try_from(commit_lsn).map_err(|_| failed(format!("commit_lsn {commit_lsn}")))?
                        ),
                        ordinal: u32::try_from(ordinal).map_err(|_| failed(format!("ordinal {ordinal}")))?,
                    })
                })
                .transpose()?;
            ends.push(version);
        }
        let oldest = ends.first().copied().flatten().map(|version| version.commit_lsn);
        Ok(CarryLog::from_stored(oldest, ends.get(1).copied().flatten()))
    }

    /// The entry a move of `key` recorded, if the log holds one.
    async fn read_carry_entry(
        &self,
        session: &Session,
        key: &carried::CarryKey,
    ) -> Result<Option<CarriedCells>, ScyllaSinkError> {
        let cql: Arc<str> = format!(
            "SELECT carried FROM {} WHERE sink = ? AND commit_lsn = ? AND ordinal = ? AND target = ?",
            self.carried_table
        )
        .into();
        let select = self.prepare(session, &cql).await?;
        let values = (
            self.config.name.as_str(),
            carried::as_bigint(key.version.commit_lsn.0),
            i64::from(key.version.ordinal),
            key.target.as_str(),
        );
        let result = session.execute_unpaged(&select, values).await.map_err(|source| ScyllaSinkError::Execute {
            what: format!("statement {cql}"),
            source: Box::new(source),
        })?;
        let failed = |reason: String| ScyllaSinkError::Carried { table: self.carried_table.clone(), reason };
        let rows = result.into_rows_result().map_err(|err| failed(err.to_string()))?;
        let row =
            rows.maybe_first_row::<(Option<HashMap<String, Vec<u8>>>,)>().map_err(|err| failed(err.to_string()))?;
        Ok(row.map(|(cells,)| cells.unwrap_or_default().into_iter().collect()))
    }

    async fn write(&self, changes: &[ChangeRef<'_>], checkpoint: Option<Lsn>) -> Result<(), ScyllaSinkError> {
        let session = self.session().await?;
        if self.lock_state().clock.is_none() {
            self.load().await?;
        }
        if self.config.manage_schema {
            self.ensure_target_tables(&session, changes).await?;
        }
        let (ops, reservation) = {
            let mut state = self.lock_state();
            let EncodeState { encoder, clock } = &mut *state;
            // Set by `load` just above when it was missing.
            let clock = clock.get_or_insert_with(|| WriteClock::starting_after(0));
            let ops = encoder.encode(changes, clock)?;
            (ops, clock.reservation_needed())
        };
        if reservation.is_some() || checkpoint.is_some() {
            self.ensure_checkpoint_table(&session).await?;
        }
        if let Some(reservation) = reservation {
            let stored = *self.stored_checkpoint.lock().unwrap_or_else(|p| p.into_inner());
            self.store_checkpoint_row(&session, stored, reservation).await?;
            if let Some(clock) = self.lock_state().clock.as_mut() {
                clock.reserved(reservation);
            }
        }
        let separate_rows = !self.config.write_timestamps;
        for phase in plan_requests(ops, self.config.max_batch_statements, separate_rows) {
            match phase {
                Phase::Waves(waves) => {
                    for wave in waves {
                        stream::iter(wave.into_iter().map(|request| self.send(&session, request)))
                            .buffer_unordered(self.config.concurrency)
                            .try_collect::<()>()
                            .await?;
                    }
                }
                Phase::Carry(moves) => self.apply_carried(&session, moves).await?,
                Phase::Truncate(cql) => {
                    session
                        .query_unpaged(cql.as_str(), ())
                        .await
                        .map_err(|source| ScyllaSinkError::Execute { what: cql.clone(), source: Box::new(source) })?;
                }
            }
        }
        if let Some(checkpoint) = checkpoint {
            let reservation = self.lock_state().clock.as_ref().map_or(0, WriteClock::reservation);
            self.store_checkpoint_row(&session, Some(checkpoint), reservation).await?;
            *self.stored_checkpoint.lock().unwrap_or_else(|p| p.into_inner()) = Some(checkpoint);
            if let Some(clock) = self.lock_state().clock.as_mut() {
                clock.forget_before(checkpoint);
            }
            self.forget_carried(&session, checkpoint).await?;
        }
        Ok(())
    }

    /// Deletes the carry log entries no change applied again can need: of
    /// transactions the stored checkpoint `end_lsn` covers, and, with a
    /// change archive, before where it can replay from.
    async fn forget_carried(&self, session: &Session, end_lsn: Lsn) -> Result<(), ScyllaSinkError> {
        let replayable_from = self.replay_horizon.get().map(ReplayHorizon::replayable_from);
        let bound = carried::forget_below(end_lsn, replayable_from);
        if !self.lock_carry_log().as_ref().is_some_and(|log| log.holds_before(bound)) {
            return Ok(());
        }
        let cql = format!("DELETE FROM {} WHERE sink = ? AND commit_lsn < ?", self.carried_table);
        let values = (self.config.name.as_str(), carried::as_bigint(bound.0));
        session
            .query_unpaged(cql.as_str(), values)
            .await
            .map_err(|source| ScyllaSinkError::Execute { what: cql.clone(), source: Box::new(source) })?;
        if let Some(log) = self.lock_carry_log().as_mut() {
            log.forget_before(bound);
        }
        Ok(())
    }

    /// Applies key moves that carry values over: finds what each carries
    /// (recorded by an earlier attempt, else read from the old and new rows
    /// and recorded now), writes the new rows with it, then deletes the old
    /// rows (so a crash never leaves a value in neither).
    async fn apply_carried(&self, session: &Session, moves: Vec<CarriedMove>) -> Result<(), ScyllaSinkError> {
        // Futures gathered first: a stream over a closure that borrows does
        // not satisfy the `Send` bound of the trait's future.
        let finds: Vec<_> = moves.iter().map(|carry| self.find_carried(session, carry)).collect();
        let carried: Vec<_> = stream::iter(finds).buffered(self.config.concurrency).try_collect().await?;
        let writes: Vec<_> =
            moves.iter().zip(carried).map(|(carry, values)| self.write_carried(session, carry, values)).collect();
        stream::iter(writes).buffer_unordered(self.config.concurrency).try_collect::<()>().await?;
        let deletes: Vec<_> = moves.into_iter().map(|carry| self.send(session, vec![carry.delete])).collect();
        stream::iter(deletes).buffer_unordered(self.config.concurrency).try_collect::<()>().await
    }

    /// What `carry` writes besides its upsert: its carry log entry's values
    /// when an earlier attempt recorded one; else those [`read_carried`]
    /// finds, recorded before anything of the move is written.
    ///
    /// [`read_carried`]: Self::read_carried
    async fn find_carried(
        &self,
        session: &Session,
        carry: &CarriedMove,
    ) -> Result<Vec<(String, CqlValue)>, ScyllaSinkError> {
        let select = self.prepare(session, &carry.select).await?;
        let failed = |reason: String| ScyllaSinkError::Carried { table: carry.key.target.clone(), reason };
        // The select's columns are the carried ones, in order: their types.
        let column_type = |specs: &scylla::response::query_result::ColumnSpecs<'_, '_>, name: &String| {
            let index = carry.columns.iter().position(|column| column == name);
            let spec = index.and_then(|i| specs.get_by_index(i));
            spec.map(|spec| spec.typ().clone().into_owned()).ok_or_else(|| failed(format!("no column {name}")))
        };
        let may_hold = self.lock_carry_log().as_ref().is_some_and(|log| log.may_hold(carry.key.version));
        let recorded = if may_hold { self.read_carry_entry(session, &carry.key).await? } else { None };
        if let Some(cells) = recorded {
            let specs = select.get_current_result_set_col_specs();
            return cells
                .iter()
                .map(|(name, bytes)| {
                    let typ = column_type(&specs.get(), name)?;
                    let value = carried::cell_value(bytes, &typ).map_err(|err| failed(format!("{name}: {err}")))?;
                    Ok((name.clone(), value))
                })
                .collect();
        }
        let values = self.read_carried(session, &select, carry).await?;
        let cells: CarriedCells = {
            let specs = select.get_current_result_set_col_specs();
            values
                .iter()
                .map(|(name, value)| {
                    let typ = column_type(&specs.get(), name)?;
                    let bytes = carried::cell_bytes(value, &typ).map_err(|err| failed(format!("{name}: {err}")))?;
                    Ok((name.clone(), bytes))
                })
                .collect::<Result<_, ScyllaSinkError>>()?
        };
        if let Some(log) = self.lock_carry_log().as_mut() {
            log.recording(carry.key.version);
        }
        self.record_carried(session, carry, &cells).await?;
        Ok(values)
    }

    /// Stores `carry`'s carry log entry.
    async fn record_carried(
        &self,
        session: &Session,
        carry: &CarriedMove,
        cells: &CarriedCells,
    ) -> Result<(), ScyllaSinkError> {
        self.ensure_carried_table(session).await?;
        let cql: Arc<str> = format!(
            "INSERT INTO {} (sink, commit_lsn, ordinal, target, carried) VALUES (?, ?, ?, ?, ?)",
            self.carried_table
        )
        .into();
        let insert = self.prepare(session, &cql).await?;
        let cells: HashMap<&str, &[u8]> = cells.iter().map(|(name, bytes)| (name.as_str(), bytes.as_slice())).collect();
        let version = carry.key.version;
        let values = (
            self.config.name.as_str(),
            carried::as_bigint(version.commit_lsn.0),
            i64::from(version.ordinal),
            carry.key.target.as_str(),
            cells,
        );
        session
            .execute_unpaged(&insert, values)
            .await
            .map_err(|source| ScyllaSinkError::Execute { what: format!("statement {cql}"), source: Box::new(source) })
            .map(drop)
    }

    /// The columns `carry` takes from its old row: those the old row holds
    /// and the new row does not (a column the new row holds is a replay's,
    /// written before the old row went, and keeps its value).
    async fn read_carried(
        &self,
        session: &Session,
        select: &PreparedStatement,
        carry: &CarriedMove,
    ) -> Result<Vec<(String, CqlValue)>, ScyllaSinkError> {
        let old = self.read_row(session, select, &carry.select, &carry.old_key).await?;
        let new = self.read_row(session, select, &carry.select, &carry.new_key).await?;
        let held = |i: usize| new.as_ref().and_then(|row| row.get(i).cloned().flatten()).is_some();
        Ok(carry
            .columns
            .iter()
            .enumerate()
            .filter(|(i, _)| !held(*i))
            .filter_map(|(i, name)| Some((name.clone(), old.as_ref()?.get(i)?.clone()?)))
            .collect())
    }

    /// Writes `carry`'s new row: its upsert, then the `carried` columns.
    async fn write_carried(
        &self,
        session: &Session,
        carry: &CarriedMove,
        carried: Vec<(String, CqlValue)>,
    ) -> Result<(), ScyllaSinkError> {
        self.send(session, vec![carry.upsert.clone()]).await?;
        if carried.is_empty() {
            return Ok(());
        }
        let (names, values): (Vec<String>, Vec<CqlValue>) = carried.into_iter().unzip();
        let cql: Arc<str> = carry.insert(&names).into();
        let insert = self.prepare(session, &cql).await?;
        // The key's bind markers come first, the timestamp's last.
        let mut bound = bind(&insert, &carry.new_key)?;
        bound.extend(values.into_iter().map(Some));
        bound.extend(carry.timestamp.map(|micros| Some(CqlValue::BigInt(micros))));
        session
            .execute_unpaged(&insert, bound)
            .await
            .map_err(|source| ScyllaSinkError::Execute { what: format!("statement {cql}"), source: Box::new(source) })
            .map(drop)
    }

    /// The columns of the row `select` finds under `key`, if there is one.
    async fn read_row(
        &self,
        session: &Session,
        select: &PreparedStatement,
        cql: &str,
        key: &[Bound],
    ) -> Result<Option<Vec<Option<CqlValue>>>, ScyllaSinkError> {
        let failed = |reason: String| ScyllaSinkError::ReadBack { table: cql.to_owned(), reason };
        let result = session.execute_unpaged(select, bind(select, key)?).await.map_err(|source| {
            ScyllaSinkError::Execute { what: format!("statement {cql}"), source: Box::new(source) }
        })?;
        let rows = result.into_rows_result().map_err(|err| failed(err.to_string()))?;
        let row = rows.maybe_first_row::<scylla::value::Row>().map_err(|err| failed(err.to_string()))?;
        Ok(row.map(|row| row.columns))
    }

    /// Sends one request: a statement alone, or an unlogged batch.
    async fn send(&self, session: &Session, request: Request) -> Result<(), ScyllaSinkError> {
        let mut prepared = Vec::with_capacity(request.len());
        let mut values = Vec::with_capacity(request.len());
        for statement in &request {
            let statement_prepared = self.prepare(session, &statement.cql).await?;
            values.push(bind(&statement_prepared, &statement.values)?);
            prepared.push(statement_prepared);
        }
        if let ([statement], [values]) = (prepared.as_slice(), values.as_slice()) {
            session.execute_unpaged(statement, values).await.map_err(|source| ScyllaSinkError::Execute {
                what: format!("statement {}", request[0].cql),
                source: Box::new(source),
            })?;
            return Ok(());
        }
        let mut batch = Batch::new(BatchType::Unlogged);
        for statement in prepared {
            batch.append_statement(statement);
        }
        session.batch(&batch, values).await.map_err(|source| ScyllaSinkError::Execute {
            what: format!("a batch of {} statements", request.len()),
            source: Box::new(source),
        })?;
        Ok(())
    }

    pub(crate) async fn prepare(
        &self,
        session: &Session,
        cql: &Arc<str>,
    ) -> Result<PreparedStatement, ScyllaSinkError> {
        if let Some(prepared) = self.prepared.lock().unwrap_or_else(|p| p.into_inner()).get(cql) {
            return Ok(prepared.clone());
        }
        let prepared = session
            .prepare(cql.as_ref())
            .await
            .map_err(|source| ScyllaSinkError::Prepare { cql: cql.to_string(), source: Box::new(source) })?;
        self.prepared.lock().unwrap_or_else(|p| p.into_inner()).insert(cql.clone(), prepared.clone());
        Ok(prepared)
    }

    async fn ddl(&self, session: &Session, cql: &str) -> Result<(), ScyllaSinkError> {
        session
            .query_unpaged(cql, ())
            .await
            .map_err(|source| ScyllaSinkError::Execute { what: cql.to_owned(), source: Box::new(source) })?;
        tracing::info!(sink = %self.config.name, statement = %cql, "schema statement applied");
        Ok(())
    }

    async fn ensure_checkpoint_table(&self, session: &Session) -> Result<(), ScyllaSinkError> {
        let cql = format!(
            "CREATE TABLE IF NOT EXISTS {} (sink text, lsn text, reserved_timestamp bigint, PRIMARY KEY (sink))",
            self.checkpoint_table()
        );
        self.ensure_own_table(session, cql).await
    }

    async fn ensure_carried_table(&self, session: &Session) -> Result<(), ScyllaSinkError> {
        self.ensure_own_table(session, carried::create_cql(&self.carried_table)).await
    }

    /// Runs `create_cql` (a `CREATE TABLE IF NOT EXISTS` of a table of the
    /// sink's own) once per process, after the keyspace exists.
    async fn ensure_own_table(&self, session: &Session, create_cql: String) -> Result<(), ScyllaSinkError> {
        let mut schema = self.schema.lock().await;
        if !schema.done.contains(&create_cql) {
            self.ensure_keyspace(session, &mut schema).await?;
            self.ddl(session, &create_cql).await?;
            schema.done.insert(create_cql);
        }
        Ok(())
    }

    async fn ensure_keyspace(&self, session: &Session, schema: &mut SchemaState) -> Result<(), ScyllaSinkError> {
        if !self.config.manage_schema {
            return Ok(());
        }
        let cql = format!(
            "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {}",
            self.config.keyspace, self.config.replication
        );
        if !schema.done.contains(&cql) {
            self.ddl(session, &cql).await?;
            schema.done.insert(cql);
        }
        Ok(())
    }

    /// Creates the target tables of the batch's table shapes when missing and
    /// adds the columns they lack.
    async fn ensure_target_tables(&self, session: &Session, changes: &[ChangeRef<'_>]) -> Result<(), ScyllaSinkError> {
        let mut shapes: Vec<&Arc<TableSchema>> = Vec::new();
        for change in changes {
            if !shapes.iter().any(|s| Arc::ptr_eq(s, &change.change.table)) {
                shapes.push(&change.change.table);
            }
        }
        let mut schema = self.schema.lock().await;
        for shape in shapes {
            if schema.ensured.get(&shape.table).is_some_and(|ensured| Arc::ptr_eq(ensured, shape)) {
                continue;
            }
            let targets = self.lock_state().encoder.schemas(shape)?;
            for target in targets {
                if !schema.done.contains(&target.create) {
                    self.ensure_keyspace(session, &mut schema).await?;
                    self.ddl(session, &target.create).await?;
                    schema.done.insert(target.create.clone());
                }
                if !schema.columns.contains_key(&target.table) {
                    // What the cluster says the table has; else what the
                    // CREATE above made (an older table may lack columns
                    // then: the docs say to keep fetch_schema_metadata on).
                    let existing = self.existing_columns(session, &target.table).await;
                    let created = || target.columns.iter().map(|(name, _)| name.clone()).collect();
                    schema.columns.insert(target.table.clone(), existing.unwrap_or_else(created));
                }
                let known = schema.columns.entry(target.table.clone()).or_default();
                for (column, cql) in target.missing_columns(&self.config.keyspace, known) {
                    self.ddl(session, &cql).await?;
                    known.insert(column);
                }
            }
            schema.ensured.insert(shape.table.clone(), shape.clone());
        }
        Ok(())
    }

    /// The table's columns from the driver's schema metadata, if fetched.
    async fn existing_columns(&self, session: &Session, table: &str) -> Option<HashSet<String>> {
        if !self.config.fetch_schema_metadata {
            return None;
        }
        // Fresh metadata: the table may have just been created.
        session.refresh_metadata().await.ok()?;
        let state = session.get_cluster_state();
        let keyspace = state.get_keyspace(&self.config.keyspace)?;
        let table = keyspace.tables.get(table)?;
        Some(table.columns.keys().cloned().collect())
    }

    /// The source record is a row of the checkpoint table too: key
    /// `<sink>.source`, the record's text in `lsn`, so the table keeps its
    /// schema.
    fn source_row(&self) -> String {
        format!("{}.source", self.config.name)
    }

    /// The snapshot progress is a row too: key `<sink>.snapshot`.
    fn snapshot_row(&self) -> String {
        format!("{}.snapshot", self.config.name)
    }

    async fn load_source_record(&self) -> Result<Option<String>, ScyllaSinkError> {
        self.load_text_row(self.source_row()).await
    }

    /// The text kept in `lsn` of the checkpoint table's row `row`.
    async fn load_text_row(&self, row: String) -> Result<Option<String>, ScyllaSinkError> {
        let session = self.session().await?;
        let cql = format!("SELECT lsn FROM {} WHERE sink = ?", self.checkpoint_table());
        match session.query_unpaged(cql.as_str(), (row,)).await {
            Ok(result) => {
                let rows = result.into_rows_result().map_err(|err| ScyllaSinkError::CheckpointRow(err.to_string()))?;
                Ok(rows
                    .maybe_first_row::<(Option<String>,)>()
                    .map_err(|err| ScyllaSinkError::CheckpointRow(err.to_string()))?
                    .and_then(|(record,)| record))
            }
            Err(source) => {
                let err = ScyllaSinkError::Execute { what: cql, source: Box::new(source) };
                // No checkpoint table yet: nothing recorded so far.
                if err.is_invalid_request() {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    async fn store_source_record(&self, record: &str) -> Result<(), ScyllaSinkError> {
        self.store_text_row(self.source_row(), record, "the source record").await
    }

    /// Stores `text` in `lsn` of the checkpoint table's row `row`.
    async fn store_text_row(&self, row: String, text: &str, what: &str) -> Result<(), ScyllaSinkError> {
        let session = self.session().await?;
        self.ensure_checkpoint_table(&session).await?;
        let cql = format!("INSERT INTO {} (sink, lsn) VALUES (?, ?)", self.checkpoint_table());
        session.query_unpaged(cql.as_str(), (row, text)).await.map_err(|source| ScyllaSinkError::Execute {
            what: format!("storing {what} in {}", self.checkpoint_table()),
            source: Box::new(source),
        })?;
        Ok(())
    }

    async fn store_checkpoint_row(
        &self,
        session: &Session,
        checkpoint: Option<Lsn>,
        reservation: i64,
    ) -> Result<(), ScyllaSinkError> {
        // Prepared once: an unprepared statement with values costs the driver
        // a prepare round trip on every call, i.e. every batch.
        let prepared = self.prepare(session, &self.checkpoint_insert).await?;
        let values = (self.config.name.as_str(), checkpoint.map(|lsn| lsn.to_string()), reservation);
        session.execute_unpaged(&prepared, values).await.map_err(|source| ScyllaSinkError::Execute {
            what: format!("storing the checkpoint in {}", self.checkpoint_table()),
            source: Box::new(source),
        })?;
        Ok(())
    }
}

/// Converts a statement's values to the CQL types of its bind markers.
fn bind(prepared: &PreparedStatement, values: &[Bound]) -> Result<Vec<Option<CqlValue>>, ScyllaSinkError> {
    let specs = prepared.get_variable_col_specs();
    values
        .iter()
        .zip(specs.iter())
        .map(|(value, spec)| match value {
            Bound::Timestamp(micros) => Ok(Some(CqlValue::BigInt(*micros))),
            Bound::Column(value) => to_cql(value, spec.typ()).map_err(|source| ScyllaSinkError::Conversion {
                table: spec.table_spec().table_name().to_owned(),
                column: spec.name().to_owned(),
                source,
            }),
        })
        .collect()
}

#[async_trait]
impl Sink for ScyllaSink {
    fn name(&self) -> &str {
        &self.config.name
    }

    async fn load_checkpoint(&self) -> Result<Option<Lsn>, SinkError> {
        let name = self.config.name.clone();
        self.load().await.map_err(|err| err.into_sink_error(&name, "reading the checkpoint".into()))
    }

    async fn load_source(&self) -> Result<Option<String>, SinkError> {
        let name = &self.config.name;
        self.load_source_record().await.map_err(|err| err.into_sink_error(name, "reading the source record".into()))
    }

    async fn store_source(&self, record: &str) -> Result<(), SinkError> {
        let name = &self.config.name;
        self.store_source_record(record)
            .await
            .map_err(|err| err.into_sink_error(name, "storing the source record".into()))
    }

    async fn load_snapshot_progress(&self) -> Result<Option<String>, SinkError> {
        let name = &self.config.name;
        self.load_text_row(self.snapshot_row())
            .await
            .map_err(|err| err.into_sink_error(name, "reading the snapshot progress".into()))
    }

    async fn store_snapshot_progress(&self, progress: &str) -> Result<(), SinkError> {
        let name = &self.config.name;
        self.store_text_row(self.snapshot_row(), progress, "the snapshot progress")
            .await
            .map_err(|err| err.into_sink_error(name, "storing the snapshot progress".into()))
    }

    async fn apply(&self, changes: &[ChangeRef<'_>], checkpoint: Option<Lsn>) -> Result<(), SinkError> {
        let name = &self.config.name;
        let context = pgfanout_core::describe_apply(changes, checkpoint);
        self.write(changes, checkpoint).await.map_err(|err| err.into_sink_error(name, context))
    }

    async fn wipe(
        &self,
        table: &pgfanout_core::TableSchema,
        // Also while streaming: see the `wipe` module for why TRUNCATE is safe then.
        _older_than: Option<pgfanout_core::Version>,
    ) -> Result<u64, SinkError> {
        self.wipe_table(table).await
    }

    fn table_problems(&self, table: &pgfanout_core::TableSchema) -> Vec<String> {
        self.lock_state().encoder.table_problems(table)
    }

    fn read_back(&self) -> Option<&dyn pgfanout_core::ReadBack> {
        Some(self)
    }

    /// Carry log entries stay until the archive cannot replay them either.
    fn keep_replayable(&self, horizon: ReplayHorizon) {
        // Set once, before the worker starts; a sink is built per `run` attempt.
        let _ = self.replay_horizon.set(horizon);
    }
}

/// An OpenSSL context for `[sink.tls]`: peer verification on, against
/// `ca_file` alone when it is set (else the system's roots), with the client
/// certificate when one is configured.
fn tls_context(tls: &TlsConfig) -> Result<scylla::client::session::TlsContext, ScyllaSinkError> {
    use openssl::ssl::{SslConnector, SslFiletype, SslMethod};
    use openssl::x509::store::X509StoreBuilder;
    use openssl::x509::X509;

    let files = tls.read().map_err(ScyllaSinkError::Tls)?;
    let failed = |what: &str, err: openssl::error::ErrorStack| ScyllaSinkError::Tls(format!("{what}: {err}"));
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(|e| failed("openssl", e))?;
    if let Some(ca_pem) = &files.ca_pem {
        let mut store = X509StoreBuilder::new().map_err(|e| failed("openssl", e))?;
        for certificate in X509::stack_from_pem(ca_pem).map_err(|e| failed("tls.ca_file", e))? {
            store.add_cert(certificate).map_err(|e| failed("tls.ca_file", e))?;
        }
        builder.set_cert_store(store.build());
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        builder.set_certificate_chain_file(cert).map_err(|e| failed("tls.cert_file", e))?;
        builder.set_private_key_file(key, SslFiletype::PEM).map_err(|e| failed("tls.key_file", e))?;
        builder.check_private_key().map_err(|e| failed("tls.key_file does not match tls.cert_file", e))?;
    }
    Ok(scylla::client::session::TlsContext::from(builder))
}
