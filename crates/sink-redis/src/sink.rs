//! The Redis sink: connection, batch apply, checkpoint.
//!
//! One call is one round trip: `EVALSHA` of the batch script with the row
//! records and, when the worker hands it over, the checkpoint, which the
//! script stores last (a batch larger than one call's bound takes several
//! calls in order, the checkpoint in the last). No other client runs between its commands, and a
//! script stopped by an error (a value the store rejects) never reaches the
//! checkpoint, so with a single lane the stored checkpoint never runs ahead
//! of the data; what a stopped script did write is applied again, guarded by
//! version, on the retry. After a server restart forgets the script the
//! sink loads it again (`SCRIPT LOAD`) and repeats the call. A truncate by
//! scan adds one `SCAN` round trip per page. Lanes share one multiplexed
//! connection, so concurrent calls pipeline on it.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use pgfanout_core::{ChangeRef, Lsn, MappingConfig, Sink, SinkError, TableName};
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

use crate::config::{RedisSinkConfig, TruncateMode};
use crate::encode::{
    BatchStep, EncoderSettings, KeyTemplate, RedisEncoder, RowFormat, ScriptCall, TableOptions, TruncateBy,
};
use crate::error::RedisSinkError;

/// The batch script (see its header for the record format).
const APPLY_BATCH: &str = include_str!("lua/apply_batch.lua");

/// Fewest changes worth a lane (see [`Sink::min_lane_changes`]): every
/// lane's call pays the server a fixed cost (the script's start, its
/// argument tables) about that of one row, and with more than one lane the
/// checkpoint takes a call of its own after them. Lanes share one
/// connection to a single-threaded server: what they buy is pgfanout
/// encoding one lane while Redis runs another, which only a large batch
/// makes worth those calls.
const MIN_LANE_CHANGES: usize = 64;

/// Keys one `SCAN` page asks for during a truncate by scan.
const SCAN_PAGE: usize = 1000;

/// Keeps Redis hashes equal to PostgreSQL rows.
pub struct RedisSink {
    config: RedisSinkConfig,
    client: redis::Client,
    /// The shared connection; `None` until first use and after a failure.
    connection: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    encoder: Mutex<RedisEncoder>,
    script: redis::Script,
}

impl RedisSink {
    /// Builds the sink from validated config; does not connect yet.
    pub fn new(config: RedisSinkConfig) -> Result<Self, RedisSinkError> {
        let client = client_for(&config)?;
        let mut tables = HashMap::new();
        for table in &config.tables {
            let key = table
                .key
                .as_deref()
                .map(KeyTemplate::parse)
                .transpose()
                .map_err(|reason| RedisSinkError::Mapping { table: table.source.clone(), reason })?;
            let templates = |list: &[String]| {
                list.iter()
                    .map(|template| KeyTemplate::parse(template))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|reason| RedisSinkError::Mapping { table: table.source.clone(), reason })
            };
            let truncate = match table.truncate {
                TruncateMode::IndexSet => table.index_key.clone().map(TruncateBy::IndexSet),
                TruncateMode::Scan => Some(TruncateBy::Scan(crate::wipe::table_scan_pattern(table)?)),
            };
            let options = TableOptions {
                key,
                format: table.format,
                tombstone_secs: table.tombstone_secs,
                truncate,
                ttl_secs: table.ttl_secs,
                stream: table.stream.clone().map(|stream| (stream, table.stream_max_len)),
                invalidate: templates(&table.invalidate)?,
                invalidate_sets: templates(&table.invalidate_sets)?,
            };
            tables.insert(TableName::parse(&table.source), options);
        }
        let settings = EncoderSettings {
            checkpoint_key: config.checkpoint_key(),
            version_field: config.version_guard.then(|| config.version_field.clone()),
            tombstone_prefix: config.tombstone_prefix.clone(),
            index_prefix: config.index_prefix(),
        };
        let encoder = RedisEncoder::new(tables, settings);
        Ok(RedisSink {
            config,
            client,
            connection: tokio::sync::Mutex::new(None),
            encoder: Mutex::new(encoder),
            script: redis::Script::new(APPLY_BATCH),
        })
    }

    /// The validated config.
    pub(crate) fn config(&self) -> &RedisSinkConfig {
        &self.config
    }

    /// The source tables this sink receives, with their mapping.
    pub fn tables(&self) -> Vec<(TableName, MappingConfig)> {
        self.config.tables.iter().map(|t| (TableName::parse(&t.source), t.mapping())).collect()
    }

    /// A handle on the shared connection, connecting first if needed.
    pub(crate) async fn connection(&self) -> Result<MultiplexedConnection, RedisSinkError> {
        let mut shared = self.connection.lock().await;
        if shared.is_none() {
            let settings = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
                .set_response_timeout(Some(self.config.response_timeout()));
            let endpoint = endpoint_of(&self.config.url);
            let mut connection = self
                .client
                .get_multiplexed_async_connection_with_config(&settings)
                .await
                .map_err(|source| RedisSinkError::Connect { endpoint: endpoint.clone(), source })?;
            // Named so operators can find pgfanout in CLIENT LIST.
            redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(format!("pgfanout:{}", self.config.name))
                .query_async::<()>(&mut connection)
                .await
                .map_err(|source| RedisSinkError::Connect { endpoint, source })?;
            tracing::info!(sink = %self.config.name, "connected to redis");
            *shared = Some(connection);
        }
        // Just set above when it was None.
        Ok(shared.clone().expect("connection is set"))
    }

    async fn load(&self) -> Result<Option<Lsn>, RedisSinkError> {
        let key = self.config.checkpoint_key();
        let mut connection = self.connection().await?;
        let stored: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .map_err(|source| RedisSinkError::Command { what: format!("GET {key}"), source })?;
        stored
            .map(|value| value.parse::<Lsn>().map_err(|_| RedisSinkError::BadCheckpoint { key: key.clone(), value }))
            .transpose()
    }

    /// The key of the source record: beside the checkpoint's.
    fn source_key(&self) -> String {
        format!("{}:source", self.config.checkpoint_key())
    }

    /// Where the snapshot progress is kept: beside the checkpoint.
    fn snapshot_progress_key(&self) -> String {
        format!("{}:snapshot", self.config.checkpoint_key())
    }

    async fn load_source_record(&self) -> Result<Option<String>, RedisSinkError> {
        let key = self.source_key();
        let mut connection = self.connection().await?;
        redis::cmd("GET")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .map_err(|source| RedisSinkError::Command { what: format!("GET {key}"), source })
    }

    async fn store_source_record(&self, record: &str) -> Result<(), RedisSinkError> {
        let key = self.source_key();
        let mut connection = self.connection().await?;
        redis::cmd("SET")
            .arg(&key)
            .arg(record)
            .query_async::<()>(&mut connection)
            .await
            .map_err(|source| RedisSinkError::Command { what: format!("SET {key}"), source })
    }

    async fn write(&self, changes: &[ChangeRef<'_>], checkpoint: Option<Lsn>) -> Result<(), RedisSinkError> {
        let steps = self.encoder().encode(changes, checkpoint)?;
        let mut connection = self.connection().await?;
        let mut outcome = Ok(());
        for step in &steps {
            outcome = match step {
                BatchStep::Script(call) => self.call_script(call, &mut connection).await,
                BatchStep::ScanTruncate { table, pattern, format, version } => {
                    self.truncate_by_scan(table, pattern, *format, *version, &mut connection).await
                }
            };
            if outcome.is_err() {
                break;
            }
        }
        if outcome.as_ref().is_err_and(RedisSinkError::is_retriable) {
            // Start the retry on a fresh connection.
            *self.connection.lock().await = None;
        }
        outcome
    }

    /// The sink's name, for errors.
    pub(crate) fn name_for_errors(&self) -> &str {
        &self.config.name
    }

    pub(crate) fn encoder(&self) -> std::sync::MutexGuard<'_, RedisEncoder> {
        self.encoder.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One `EVALSHA` of the batch script, loading the script first if the
    /// server does not know it (a restart, `SCRIPT FLUSH`).
    async fn call_script(
        &self,
        call: &ScriptCall,
        connection: &mut MultiplexedConnection,
    ) -> Result<(), RedisSinkError> {
        // Sized up front: a call of a thousand rows is written into the
        // command once, without the command's buffers growing on the way.
        let arguments = 3 + call.keys().len() + call.arg_count();
        let mut command = redis::Cmd::with_capacity(arguments, 64 + call.size_bytes());
        command.arg("EVALSHA").arg(self.script.get_hash()).arg(call.keys().len());
        for key in call.keys() {
            command.arg(key.as_str());
        }
        for arg in call.args() {
            command.arg(arg);
        }
        let what = || format!("a batch script call with {} arguments", call.arg_count());
        let (written, skipped): (u64, u64) = match self.query(&command, connection, what).await {
            Err(RedisSinkError::Command { source, .. }) if source.code() == Some("NOSCRIPT") => {
                tracing::info!(sink = %self.config.name, "loading the batch script into redis");
                self.script
                    .load_async(connection)
                    .await
                    .map_err(|source| RedisSinkError::Command { what: "SCRIPT LOAD".into(), source })?;
                self.query(&command, connection, what).await?
            }
            other => other?,
        };
        if skipped > 0 {
            tracing::debug!(sink = %self.config.name, written, skipped, "rows already held at a newer version were left alone");
        }
        Ok(())
    }

    /// Runs `command` within the response timeout; `what` names it in errors.
    async fn query<T: redis::FromRedisValue>(
        &self,
        command: &redis::Cmd,
        connection: &mut MultiplexedConnection,
        what: impl FnOnce() -> String,
    ) -> Result<T, RedisSinkError> {
        let timeout = self.config.response_timeout();
        match tokio::time::timeout(timeout, command.query_async(connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(RedisSinkError::Command { what: what(), source }),
            Err(_) => Err(RedisSinkError::Timeout(timeout)),
        }
    }

    /// Deletes the keys matching `pattern` that hold rows older than
    /// `version`, one `SCAN` page at a time.
    async fn truncate_by_scan(
        &self,
        table: &TableName,
        pattern: &str,
        format: RowFormat,
        version: pgfanout_core::Version,
        connection: &mut MultiplexedConnection,
    ) -> Result<(), RedisSinkError> {
        let mut cursor = 0u64;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(SCAN_PAGE);
            let (next, keys): (u64, Vec<String>) =
                self.query(&scan, connection, || format!("SCAN MATCH {pattern} truncating {table}")).await?;
            if !keys.is_empty() {
                let call = self.encoder().delete_if_older(keys, format, version);
                self.call_script(&call, connection).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

#[async_trait]
impl Sink for RedisSink {
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

    async fn wipe(
        &self,
        table: &pgfanout_core::TableSchema,
        older_than: Option<pgfanout_core::Version>,
    ) -> Result<u64, SinkError> {
        self.wipe_table(table, older_than).await
    }

    async fn load_snapshot_progress(&self) -> Result<Option<String>, SinkError> {
        let key = self.snapshot_progress_key();
        let read = async {
            let mut connection = self.connection().await?;
            redis::cmd("GET")
                .arg(&key)
                .query_async(&mut connection)
                .await
                .map_err(|source| RedisSinkError::Command { what: format!("GET {key}"), source })
        };
        read.await.map_err(|err| err.into_sink_error(&self.config.name, "reading the snapshot progress".into()))
    }

    async fn store_snapshot_progress(&self, progress: &str) -> Result<(), SinkError> {
        let key = self.snapshot_progress_key();
        let write = async {
            let mut connection = self.connection().await?;
            redis::cmd("SET")
                .arg(&key)
                .arg(progress)
                .query_async::<()>(&mut connection)
                .await
                .map_err(|source| RedisSinkError::Command { what: format!("SET {key}"), source })
        };
        write.await.map_err(|err| err.into_sink_error(&self.config.name, "storing the snapshot progress".into()))
    }

    async fn apply(&self, changes: &[ChangeRef<'_>], checkpoint: Option<Lsn>) -> Result<(), SinkError> {
        let name = &self.config.name;
        let context = pgfanout_core::describe_apply(changes, checkpoint);
        self.write(changes, checkpoint).await.map_err(|err| err.into_sink_error(name, context))
    }

    fn table_problems(&self, table: &pgfanout_core::TableSchema) -> Vec<String> {
        self.encoder().table_problems(table)
    }

    fn min_lane_changes(&self) -> usize {
        MIN_LANE_CHANGES
    }

    fn read_back(&self) -> Option<&dyn pgfanout_core::ReadBack> {
        Some(self)
    }
}

/// `host:port/db` from a Redis URL, without credentials, for messages.
/// The client for the sink's URL; `rediss://` with the `[sink.tls]` files
/// (without them, the system's roots verify the server).
fn client_for(config: &RedisSinkConfig) -> Result<redis::Client, RedisSinkError> {
    let connect_error = |source| RedisSinkError::Connect { endpoint: endpoint_of(&config.url), source };
    let Some(tls) = &config.tls else {
        return redis::Client::open(config.url.as_str()).map_err(connect_error);
    };
    let files = tls.read().map_err(RedisSinkError::Tls)?;
    let certificates = redis::TlsCertificates {
        client_tls: files.client.map(|(client_cert, client_key)| redis::ClientTlsConfig { client_cert, client_key }),
        root_cert: files.ca_pem,
    };
    redis::Client::build_with_tls(config.url.as_str(), certificates).map_err(connect_error)
}

fn endpoint_of(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, rest)| rest).unwrap_or(url);
    rest.rsplit_once('@').map(|(_, host)| host).unwrap_or(rest).to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn endpoints_hide_credentials() {
        assert_eq!(super::endpoint_of("redis://user:secret@cache:6379/2"), "cache:6379/2");
        assert_eq!(super::endpoint_of("redis://127.0.0.1:6379"), "127.0.0.1:6379");
    }
}
