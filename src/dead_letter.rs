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
use tokio::sync::Mutex;

use crate::config::{expose, Config};

/// Builds the destination a `[sink.delivery.dead_letter]` section describes.
pub async fn open(config: &DeadLetterConfig, source: &Config) -> anyhow::Result<Box<dyn DeadLetterQueue>> {
    Ok(match config {
        DeadLetterConfig::File { path } => Box::new(FileDeadLetters { path: path.clone() }),
        DeadLetterConfig::Redis { url, stream, max_len } => Box::new(RedisDeadLetters {
            client: redis::Client::open(url.as_str()).with_context(|| format!("dead_letter.url {url}"))?,
            connection: Mutex::new(None),
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
            Box::new(PostgresDeadLetters { config: pg, client: Mutex::new(None), table: qualified_table(table)? })
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
    /// Opened on first use, dropped after a failure.
    connection: Mutex<Option<redis::aio::MultiplexedConnection>>,
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
        let mut shared = self.connection.lock().await;
        let connection = match shared.as_mut() {
            Some(connection) => connection,
            None => shared.insert(self.client.get_multiplexed_async_connection().await.map_err(fail)?),
        };
        let written = redis::cmd("XADD")
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
            .query_async::<String>(connection)
            .await;
        if written.is_err() {
            *shared = None;
        }
        written.map(drop).map_err(fail)
    }
}

/// Inserts rows into a PostgreSQL table, created on first use.
struct PostgresDeadLetters {
    config: tokio_postgres::Config,
    /// Connected (and the table created) on first use, dropped after a failure.
    client: Mutex<Option<tokio_postgres::Client>>,
    table: String,
}

#[async_trait]
impl DeadLetterQueue for PostgresDeadLetters {
    fn describe(&self) -> String {
        format!("postgres table {}", self.table)
    }

    async fn record(&self, sink: &str, change: ChangeRef<'_>, error: &str) -> Result<(), SinkError> {
        let fail = |err: tokio_postgres::Error| SinkError::transient(sink, format!("writing {}", self.describe()), err);
        let mut shared = self.client.lock().await;
        let client = match shared.as_mut() {
            Some(client) => client,
            None => shared.insert(self.connect().await.map_err(fail)?),
        };
        let record = dead_letter_record(sink, change, error).to_string();
        let written = client
            .execute(
                &format!(
                    "INSERT INTO {} (sink, commit_lsn, record) VALUES ($1, $2::text::pg_lsn, $3::text::jsonb)",
                    self.table
                ),
                &[&sink, &change.transaction.commit_lsn.to_string(), &record],
            )
            .await;
        if written.is_err() {
            *shared = None;
        }
        written.map(drop).map_err(fail)
    }
}

impl PostgresDeadLetters {
    /// A new session, with the table created if it does not exist yet.
    async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(tokio_postgres::NoTls).await?;
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
            .await?;
        Ok(client)
    }
}

/// `schema.table` (or `table`, meaning `public`) as a quoted identifier.
fn qualified_table(table: &str) -> anyhow::Result<String> {
    let (schema, name) = table.split_once('.').unwrap_or(("public", table));
    anyhow::ensure!(!schema.is_empty() && !name.is_empty(), "dead_letter.table {table:?} must be schema.table");
    Ok(format!("{}.{}", escape_identifier(schema), escape_identifier(name)))
}

#[cfg(test)]
mod tests {
    //! The Redis and PostgreSQL destinations against the local stack
    //! (`make test` sets PGFANOUT_TEST_REDIS_URL and PGFANOUT_TEST_PG_URL).

    use std::sync::Arc;

    use bytes::Bytes;
    use pgfanout_core::{Change, ChangeOp, ColumnSchema, ColumnValue, TableName, TableSchema, Transaction};
    use pgoutput::{Lsn, Oid, PgTimestamp, ReplicaIdentity, Xid};

    use super::*;

    fn required_env(name: &str) -> String {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set; run the tests with `make test`"))
    }

    fn rejected() -> Transaction {
        let table = Arc::new(TableSchema {
            types: Default::default(),
            oid: Oid(1),
            table: TableName::new("public", "orders"),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![ColumnSchema { name: "id".into(), type_oid: Oid(20), is_key: true }],
        });
        Transaction {
            xid: Xid(7),
            commit_lsn: Lsn(0x1_0000_0042),
            end_lsn: Lsn(0x1_0000_0080),
            commit_time: PgTimestamp(0),
            changes: vec![Change {
                table,
                op: ChangeOp::Insert { new: vec![ColumnValue::Text(Bytes::from_static(b"5"))] },
                ordinal: 0,
            }],
        }
    }

    #[tokio::test]
    async fn redis_stream_destination_appends_each_record() {
        let url = format!("{}/15", required_env("PGFANOUT_TEST_REDIS_URL").trim_end_matches('/'));
        let stream = format!("dead-letters-test-{}", std::process::id());
        let queue = RedisDeadLetters {
            client: redis::Client::open(url.as_str()).unwrap(),
            connection: Mutex::new(None),
            stream: stream.clone(),
            max_len: 100,
        };
        let transaction = rejected();
        let change = ChangeRef { transaction: &transaction, change: &transaction.changes[0] };
        queue.record("cache", change, "WRONGTYPE").await.unwrap();
        queue.record("cache", change, "WRONGTYPE again").await.unwrap();
        let mut connection =
            redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
        let entries: Vec<(String, std::collections::HashMap<String, String>)> =
            redis::cmd("XRANGE").arg(&stream).arg("-").arg("+").query_async(&mut connection).await.unwrap();
        assert_eq!(entries.len(), 2, "both records are in the stream");
        assert_eq!(entries[0].1["commit_lsn"], "1/42");
        let record: serde_json::Value = serde_json::from_str(&entries[1].1["record"]).unwrap();
        assert_eq!((record["error"].as_str(), record["new"]["id"].as_str()), (Some("WRONGTYPE again"), Some("5")));
        let _: () = redis::cmd("DEL").arg(&stream).query_async(&mut connection).await.unwrap();
    }

    #[tokio::test]
    async fn postgres_table_destination_creates_its_table_and_inserts() {
        let url = required_env("PGFANOUT_TEST_PG_URL");
        let table = format!("public.dead_letters_test_{}", std::process::id());
        let queue = PostgresDeadLetters {
            config: tokio_postgres::Config::from_str(&url).unwrap(),
            client: Mutex::new(None),
            table: qualified_table(&table).unwrap(),
        };
        let transaction = rejected();
        let change = ChangeRef { transaction: &transaction, change: &transaction.changes[0] };
        queue.record("search", change, "rejected").await.unwrap();
        queue.record("search", change, "rejected again").await.unwrap();
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let rows = client
            .query(&format!("SELECT sink, commit_lsn::text, record->>'error' FROM {} ORDER BY id", queue.table), &[])
            .await
            .unwrap();
        let seen: Vec<(String, String, String)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
        assert_eq!(
            seen,
            [
                ("search".to_owned(), "1/42".to_owned(), "rejected".to_owned()),
                ("search".to_owned(), "1/42".to_owned(), "rejected again".to_owned())
            ]
        );
        client.batch_execute(&format!("DROP TABLE {}", queue.table)).await.unwrap();
    }
}
