//! The Redis sink: connection, batch apply, checkpoint.
//!
//! One call is one `MULTI … EXEC` round trip holding every row operation and,
//! when the worker hands it over, the checkpoint `SET`, so with a single lane
//! the stored checkpoint and the data can never disagree: after a crash the
//! store holds either the whole batch and its checkpoint or neither. Lanes
//! share one multiplexed connection, so concurrent calls pipeline on it.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use pgfanout_core::{ChangeRef, Lsn, MappingConfig, Sink, SinkError, TableName};
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

use crate::config::RedisSinkConfig;
use crate::encode::{KeyTemplate, RedisEncoder, RedisOp, TableOptions};
use crate::error::RedisSinkError;

/// Deletes the members of the set `KEYS[1]` (in slices, under Lua's
/// argument limit), then the set; returns how many members there were.
const DELETE_SET_MEMBERS: &str = "local members = redis.call('SMEMBERS', KEYS[1]) \
     for i = 1, #members, 500 do redis.call('DEL', unpack(members, i, math.min(i + 499, #members))) end \
     redis.call('DEL', KEYS[1]) return #members";

/// Keeps Redis hashes equal to PostgreSQL rows.
pub struct RedisSink {
    config: RedisSinkConfig,
    client: redis::Client,
    /// The shared connection; `None` until first use and after a failure.
    connection: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    encoder: Mutex<RedisEncoder>,
}

impl RedisSink {
    /// Builds the sink from validated config; does not connect yet.
    pub fn new(config: RedisSinkConfig) -> Result<Self, RedisSinkError> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|source| RedisSinkError::Connect { endpoint: endpoint_of(&config.url), source })?;
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
            let options = TableOptions {
                key,
                ttl_secs: table.ttl_secs,
                stream: table.stream.clone().map(|stream| (stream, table.stream_max_len)),
                invalidate: templates(&table.invalidate)?,
                invalidate_sets: templates(&table.invalidate_sets)?,
            };
            tables.insert(TableName::parse(&table.source), options);
        }
        let encoder = RedisEncoder::new(tables, config.checkpoint_key());
        Ok(RedisSink { config, client, connection: tokio::sync::Mutex::new(None), encoder: Mutex::new(encoder) })
    }

    /// The source tables this sink receives, with their mapping.
    pub fn tables(&self) -> Vec<(TableName, MappingConfig)> {
        self.config.tables.iter().map(|t| (TableName::parse(&t.source), t.mapping())).collect()
    }

    /// A handle on the shared connection, connecting first if needed.
    async fn connection(&self) -> Result<MultiplexedConnection, RedisSinkError> {
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

    async fn write(&self, changes: &[ChangeRef<'_>], checkpoint: Option<Lsn>) -> Result<(), RedisSinkError> {
        let ops = self.encoder.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).encode(changes, checkpoint)?;
        let mut pipeline = redis::pipe();
        pipeline.atomic();
        for op in &ops {
            match op {
                RedisOp::Del(key) => pipeline.cmd("DEL").arg(key),
                RedisOp::HSet(key, fields) => pipeline.cmd("HSET").arg(key).arg(fields),
                RedisOp::HDel(key, fields) => pipeline.cmd("HDEL").arg(key).arg(fields),
                RedisOp::Copy(from, to) => pipeline.cmd("COPY").arg(from).arg(to).arg("REPLACE"),
                RedisOp::Set(key, value) => pipeline.cmd("SET").arg(key).arg(value),
                RedisOp::Expire(key, seconds) => pipeline.cmd("EXPIRE").arg(key).arg(*seconds),
                RedisOp::DelSetMembers(set) => pipeline.cmd("EVAL").arg(DELETE_SET_MEMBERS).arg(1).arg(set),
                RedisOp::XAdd { stream, max_len, fields } => {
                    pipeline.cmd("XADD").arg(stream).arg("MAXLEN").arg("~").arg(*max_len).arg("*").arg(fields)
                }
            }
            .ignore();
        }
        let timeout = self.config.response_timeout();
        let mut connection = self.connection().await?;
        let result = tokio::time::timeout(timeout, pipeline.query_async::<()>(&mut connection)).await;
        let outcome = match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => {
                Err(RedisSinkError::Command { what: format!("a batch of {} operations", ops.len()), source })
            }
            Err(_) => Err(RedisSinkError::Timeout(timeout)),
        };
        if outcome.as_ref().is_err_and(RedisSinkError::is_retriable) {
            // Start the retry on a fresh connection.
            *self.connection.lock().await = None;
        }
        outcome
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

    async fn apply(&self, changes: &[ChangeRef<'_>], checkpoint: Option<Lsn>) -> Result<(), SinkError> {
        let name = &self.config.name;
        let context = match (changes.first(), changes.last()) {
            (Some(first), Some(last)) => format!(
                "applying {} changes, commit LSNs {} to {}",
                changes.len(),
                first.transaction.commit_lsn,
                last.transaction.commit_lsn
            ),
            _ => format!("storing checkpoint {}", checkpoint.unwrap_or_default()),
        };
        self.write(changes, checkpoint).await.map_err(|err| err.into_sink_error(name, context))
    }
}

/// `host:port/db` from a Redis URL, without credentials, for messages.
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
