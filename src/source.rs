//! The source side before streaming: connection settings, the checks that
//! PostgreSQL is ready for logical replication, and creating (or completing)
//! the publication and the slot.

use anyhow::{bail, Context};
use pg_replication::{ConnectOptions, ReplicationConnection, ReplicationError};
use pgfanout_core::{error_chain, TableName};
use postgres_protocol::escape::{escape_identifier, escape_literal};
use tokio::sync::watch;

use crate::config::{expose, Config, SinkConfig};
use crate::run::Backoff;

/// Problems with the source that `run` would stop on, one line each.
pub async fn source_problems(connection: &mut ReplicationConnection, config: &Config, database: &str) -> Vec<String> {
    let mut problems = Vec::new();
    match connection.simple_query("SHOW wal_level").await {
        Ok(result) if result.get(0, "wal_level") == Some("logical") => {}
        Ok(result) => problems.push(format!(
            "wal_level is {}, not logical: set wal_level = logical in postgresql.conf and restart PostgreSQL",
            result.get(0, "wal_level").unwrap_or("unknown")
        )),
        Err(err) => problems.push(format!("cannot read wal_level: {}", error_chain(&err))),
    }
    match missing_publication_tables(connection, config).await {
        Ok(None) if !config.source.create_publication => problems.push(format!(
            "publication {} does not exist and source.create_publication is false: run CREATE PUBLICATION {} FOR TABLE …",
            config.source.publication,
            escape_identifier(&config.source.publication)
        )),
        Ok(Some(missing)) if !missing.is_empty() && !config.source.create_publication => problems.push(format!(
            "publication {} lacks routed tables and source.create_publication is false: run ALTER PUBLICATION {} ADD TABLE {}",
            config.source.publication,
            escape_identifier(&config.source.publication),
            missing.iter().map(qualified).collect::<Vec<_>>().join(", ")
        )),
        Ok(_) => {}
        Err(err) => problems.push(format!("cannot read publication {}: {}", config.source.publication, error_chain(&err))),
    }
    match connection.slot_state(&config.source.slot).await {
        Ok(Some(slot)) if slot.plugin.as_deref() != Some("pgoutput") => problems.push(format!(
            "slot {} uses plugin {:?}, not pgoutput: drop it or configure another source.slot",
            config.source.slot, slot.plugin
        )),
        Ok(Some(slot)) if slot.database.as_deref() != Some(database) => problems.push(format!(
            "slot {} belongs to database {:?}, not {database}: configure another source.slot",
            config.source.slot, slot.database
        )),
        Ok(Some(slot)) if slot.wal_status.as_deref() == Some("lost") => problems.push(format!(
            "slot {} is invalidated (wal_status = lost): drop it and rebuild the sinks",
            config.source.slot
        )),
        Ok(None) if !config.source.create_slot => problems.push(format!(
            "slot {} does not exist and source.create_slot is false: create it with pg_create_logical_replication_slot('{}', 'pgoutput')",
            config.source.slot, config.source.slot
        )),
        Ok(_) => {}
        Err(err) => problems.push(format!("cannot read slot {}: {}", config.source.slot, error_chain(&err))),
    }
    problems
}

/// Creates the publication and the slot when missing (publication first: a
/// slot only decodes publications that existed when its WAL was written).
pub async fn prepare_source(
    connection: &mut ReplicationConnection,
    config: &Config,
    database: &str,
) -> anyhow::Result<()> {
    let problems = source_problems(connection, config, database).await;
    if !problems.is_empty() {
        bail!("PostgreSQL is not ready for replication:\n{}", problems.join("\n"));
    }
    let publication = &config.source.publication;
    match missing_publication_tables(connection, config).await? {
        None => {
            let tables = routed_tables(config).iter().map(qualified).collect::<Vec<_>>().join(", ");
            // TRUNCATE is left out until the sinks implement it.
            let sql = format!(
                "CREATE PUBLICATION {} FOR TABLE {tables} WITH (publish = 'insert, update, delete')",
                escape_identifier(publication)
            );
            connection.simple_query(&sql).await.with_context(|| format!("cannot create publication {publication}"))?;
            tracing::info!(%publication, %tables, "created publication");
        }
        // The config is the source of truth for what is routed: a table
        // added to it is added to the publication (changes to it are
        // streamed from this point on).
        Some(missing) if !missing.is_empty() => {
            let tables = missing.iter().map(qualified).collect::<Vec<_>>().join(", ");
            let sql = format!("ALTER PUBLICATION {} ADD TABLE {tables}", escape_identifier(publication));
            connection.simple_query(&sql).await.with_context(|| {
                format!("cannot add {tables} to publication {publication}; add them yourself or fix the grants")
            })?;
            tracing::info!(%publication, %tables, "added routed tables to the publication");
        }
        Some(_) => {}
    }
    let slot = &config.source.slot;
    if connection.slot_state(slot).await?.is_none() {
        let created = connection.create_slot(slot).await.with_context(|| format!("cannot create slot {slot}"))?;
        tracing::info!(%slot, consistent_point = %created.consistent_point, "created replication slot");
    }
    Ok(())
}

/// `None` if the publication does not exist, else the routed tables it lacks.
async fn missing_publication_tables(
    connection: &mut ReplicationConnection,
    config: &Config,
) -> Result<Option<Vec<TableName>>, ReplicationError> {
    let publication = escape_literal(&config.source.publication);
    let exists = connection
        .simple_query(&format!("SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = {publication}"))
        .await?;
    if exists.rows.is_empty() {
        return Ok(None);
    }
    let published = connection
        .simple_query(&format!(
            "SELECT schemaname, tablename FROM pg_catalog.pg_publication_tables WHERE pubname = {publication}"
        ))
        .await?;
    let published: Vec<TableName> = (0..published.rows.len())
        .map(|row| {
            TableName::new(
                published.get(row, "schemaname").unwrap_or_default(),
                published.get(row, "tablename").unwrap_or_default(),
            )
        })
        .collect();
    Ok(Some(routed_tables(config).into_iter().filter(|table| !published.contains(table)).collect()))
}

pub fn routed_tables(config: &Config) -> Vec<TableName> {
    let mut tables: Vec<TableName> = config
        .sinks
        .iter()
        .flat_map(|sink| match sink {
            SinkConfig::Redis(redis) => redis.tables.iter().map(|t| TableName::parse(&t.source)).collect::<Vec<_>>(),
        })
        .collect();
    tables.sort();
    tables.dedup();
    tables
}

pub fn qualified(table: &TableName) -> String {
    format!("{}.{}", escape_identifier(&table.schema), escape_identifier(&table.name))
}

/// Connection settings for the source, password included.
pub fn connect_options(config: &Config) -> anyhow::Result<ConnectOptions> {
    let mut options = ConnectOptions::parse(&config.source.url).context("source.url")?;
    if let Some(password) = config.source_password()? {
        options = options.with_password(expose(&password).as_bytes().to_vec());
    }
    Ok(options)
}

/// Connects, retrying transient failures with backoff until shutdown.
pub async fn connect_with_retry(
    options: &ConnectOptions,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<ReplicationConnection> {
    let mut backoff = Backoff::new();
    loop {
        match ReplicationConnection::connect(options).await {
            Ok(connection) => return Ok(connection),
            Err(err) if err.is_transient() => {
                tracing::warn!(endpoint = %options.endpoint(), error = %error_chain(&err), "cannot connect to PostgreSQL; retrying");
                if !backoff.wait(shutdown).await {
                    bail!("stopped while connecting to PostgreSQL");
                }
            }
            Err(err) => {
                return Err(err).with_context(|| format!("cannot connect to PostgreSQL at {}", options.endpoint()))
            }
        }
    }
}
