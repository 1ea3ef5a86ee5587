//! Dead-letter destinations: where a sink with `on_error = "dead_letter"`
//! puts the changes its store rejects. Each record is the JSON object of
//! [`pgfanout_core::dead_letter_record`] (change, error, LSNs).
//!
//! A record is written before the change is acknowledged, and writing is
//! retried by the worker until it succeeds, so a rejected change is never
//! lost: it is either in the store or in its dead-letter destination.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Context;
use async_trait::async_trait;
use pgfanout_core::{dead_letter_record, ChangeRef, DeadLetterConfig, DeadLetterQueue, SinkError};
use postgres_protocol::escape::escape_identifier;
use tokio::io::AsyncWriteExt;

use crate::config::{expose, Config};

/// Builds the destination a `[sink.delivery.dead_letter]` section describes.
pub async fn open(config: &DeadLetterConfig, source: &Config) -> anyhow::Result<Box<dyn DeadLetterQueue>> {
    Ok(match config {
        DeadLetterConfig::File { path } => Box::new(FileDeadLetters { path: path.clone() }),
        DeadLetterConfig::Redis { url, stream, max_len } => Box::new(RedisDeadLetters {
            client: redis::Client::open(url.as_str()).with_context(|| format!("dead_letter.url {url}"))?,
            stream: stream.clone(),
            max_len: *max_len,
        }),
        DeadLetterConfig::Postgres { url, table } => {
            let target = url.as_deref().unwrap_or(&source.source.url);
            let mut pg = tokio_postgres::Config::from_str(target).context("dead_letter.url")?;
            if url.is_none() {
                if let Some(password) = source.source_password()? {
                    pg.password(expose(&password));
                }
            }
            Box::new(PostgresDeadLetters { config: pg, table: qualified_table(table)? })
        }
    })
}

/// Appends JSON lines to a file and syncs each.
struct FileDeadLetters {
    path: PathBuf,
}

#[async_trait]
impl DeadLetterQueue for FileDeadLetters {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    async fn record(&self, sink: &str, change: ChangeRef<'_>, error: &str) -> Result<(), SinkError> {
        let mut line = dead_letter_record(sink, change, error).to_string();
        line.push('\n');
        let fail = |err: std::io::Error| SinkError::transient(sink, format!("writing {}", self.describe()), err);
        let mut file = tokio::fs::OpenOptions::new().create(true).append(true).open(&self.path).await.map_err(fail)?;
        file.write_all(line.as_bytes()).await.map_err(fail)?;
        file.sync_data().await.map_err(fail)
    }
}

/// Adds entries (field `record`) to a Redis stream.
struct RedisDeadLetters {
    client: redis::Client,
    stream: String,
    max_len: u64,
}

#[async_trait]
impl DeadLetterQueue for RedisDeadLetters {
    fn describe(&self) -> String {
        format!("redis stream {}", self.stream)
    }

    async fn record(&self, sink: &str, change: ChangeRef<'_>, error: &str) -> Result<(), SinkError> {
        let fail = |err: redis::RedisError| SinkError::transient(sink, format!("writing {}", self.describe()), err);
        let mut connection = self.client.get_multiplexed_async_connection().await.map_err(fail)?;
        redis::cmd("XADD")
            .arg(&self.stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.max_len)
            .arg("*")
            .arg("sink")
            .arg(sink)
            .arg("commit_lsn")
            .arg(change.transaction.commit_lsn.to_string())
            .arg("record")
            .arg(dead_letter_record(sink, change, error).to_string())
            .query_async::<String>(&mut connection)
            .await
            .map(drop)
            .map_err(fail)
    }
}

/// Inserts rows into a PostgreSQL table, created on first use.
struct PostgresDeadLetters {
    config: tokio_postgres::Config,
    table: String,
}

#[async_trait]
impl DeadLetterQueue for PostgresDeadLetters {
    fn describe(&self) -> String {
        format!("postgres table {}", self.table)
    }

    async fn record(&self, sink: &str, change: ChangeRef<'_>, error: &str) -> Result<(), SinkError> {
        let fail = |err: tokio_postgres::Error| SinkError::transient(sink, format!("writing {}", self.describe()), err);
        let (client, connection) = self.config.connect(tokio_postgres::NoTls).await.map_err(fail)?;
        tokio::spawn(connection);
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {} (
                    id bigserial PRIMARY KEY,
                    recorded_at timestamptz NOT NULL DEFAULT now(),
                    sink text NOT NULL,
                    commit_lsn pg_lsn NOT NULL,
                    record jsonb NOT NULL
                )",
                self.table
            ))
            .await
            .map_err(fail)?;
        let record = dead_letter_record(sink, change, error).to_string();
        client
            .execute(
                &format!(
                    "INSERT INTO {} (sink, commit_lsn, record) VALUES ($1, $2::text::pg_lsn, $3::text::jsonb)",
                    self.table
                ),
                &[&sink, &change.transaction.commit_lsn.to_string(), &record],
            )
            .await
            .map(drop)
            .map_err(fail)
    }
}

/// `schema.table` (or `table`, meaning `public`) as a quoted identifier.
fn qualified_table(table: &str) -> anyhow::Result<String> {
    let (schema, name) = table.split_once('.').unwrap_or(("public", table));
    anyhow::ensure!(!schema.is_empty() && !name.is_empty(), "dead_letter.table {table:?} must be schema.table");
    Ok(format!("{}.{}", escape_identifier(schema), escape_identifier(name)))
}
