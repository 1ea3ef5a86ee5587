//! What would stop a sink on a routed table, found before streaming: `check`
//! reports it and `run` refuses to start on it, one line per problem with
//! its fix.
//!
//! Each routed table is read from the catalog and turned into the shape the
//! stream will announce (the published columns, their types, the key columns
//! by the same rule as the pipeline: the primary key, or the replica
//! identity index). Then, per sink routing the table, the mapping checks its
//! filter against that shape ([`pgfanout_core::TableMapping::check`]) and the sink checks
//! the shape it will receive ([`pgfanout_core::Sink::table_problems`]): a key it cannot
//! build (a table without a primary key and no key columns named in the
//! config), key columns outside what an update or delete carries, columns
//! the table does not publish. The same code decides at run time, so what
//! passes here does not stall the sink later.
//!
//! Tables that do not exist or lack a usable replica identity are reported
//! by the source checks, not here.

use std::sync::Arc;

use pg_replication::{ReplicationConnection, ReplicationError};
use pgfanout_core::{ColumnSchema, TableName, TableSchema};
use pgoutput::{Oid, ReplicaIdentity, TypeRegistry};
use postgres_protocol::escape::escape_literal;

use crate::config::Config;
use crate::sinks::build_sink;

/// A routed table as the catalog describes it.
struct CatalogTable {
    name: TableName,
    shape: Arc<TableSchema>,
    /// Columns whose values can be stored out of line (TOAST): variable
    /// length, storage other than PLAIN.
    toastable: Vec<String>,
}

/// Every problem the sinks and their mappings would stop on, one line each.
pub async fn problems(connection: &mut ReplicationConnection, config: &Config) -> Vec<String> {
    let tables = match read_tables(connection, config).await {
        Ok(tables) => tables,
        Err(err) => {
            return vec![format!(
                "cannot read the routed tables' columns from pg_attribute: {}",
                pgfanout_core::error_chain(&err)
            )]
        }
    };
    let mut problems = Vec::new();
    for sink_config in &config.sinks {
        // A sink that cannot be built is reported by `check` on its own.
        let Ok((sink, mappings)) = build_sink(sink_config) else { continue };
        for (name, mapping) in &mappings {
            let Some(table) = tables.iter().find(|table| table.name == *name) else { continue };
            // No key and no FULL identity: the source checks report the
            // table's replica identity, with the fix, once.
            let keyless = table.shape.key_positions().next().is_none();
            if keyless && table.shape.replica_identity != ReplicaIdentity::Full {
                continue;
            }
            for problem in mapping.check(&table.shape, &table.toastable) {
                problems.push(format!("sink {}: {problem}", sink.name()));
            }
            let mapped = mapping.mapped_shape(&table.shape);
            for problem in sink.table_problems(&mapped) {
                problems.push(format!("sink {}: table {name}: {problem}", sink.name()));
            }
        }
    }
    problems
}

async fn read_tables(
    connection: &mut ReplicationConnection,
    config: &Config,
) -> Result<Vec<CatalogTable>, ReplicationError> {
    let routed = crate::sinks::routing(config).tables();
    if routed.is_empty() {
        return Ok(Vec::new());
    }
    let names = routed
        .iter()
        .map(|table| format!("({}, {})", escape_literal(&table.schema), escape_literal(&table.name)))
        .collect::<Vec<_>>()
        .join(", ");
    // PostgreSQL 15+ publications may publish a subset of the columns.
    let published = if connection.server_version() >= 150_000 {
        format!(
            "AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables p WHERE p.pubname = {} \
               AND p.schemaname = n.nspname AND p.tablename = c.relname AND p.attnames IS NOT NULL \
               AND NOT a.attname = ANY (p.attnames))",
            escape_literal(&config.source.publication)
        )
    } else {
        String::new()
    };
    let sql = format!(
        "SELECT n.nspname, c.relname, c.relreplident, a.attname, a.atttypid, \
           (a.attlen = -1 AND a.attstorage <> 'p') AS toastable, \
           COALESCE(a.attnum = ANY (pk.indkey), false) AS in_primary_key, \
           COALESCE(a.attnum = ANY (ri.indkey), false) AS in_identity_index \
         FROM (VALUES {names}) AS t (schema_name, table_name) \
         JOIN pg_catalog.pg_namespace n ON n.nspname = t.schema_name \
         JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.table_name \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
           AND a.attgenerated = '' {published} \
         LEFT JOIN pg_catalog.pg_index pk ON pk.indrelid = c.oid AND pk.indisprimary \
         LEFT JOIN pg_catalog.pg_index ri ON ri.indrelid = c.oid AND ri.indisreplident \
         ORDER BY n.nspname, c.relname, a.attnum"
    );
    let result = connection.simple_query(&sql).await?;
    let mut types = TypeRegistry::new();
    for (oid, kind) in pgfanout_source::catalog::user_types(connection).await? {
        // Built-in OIDs are refused and need no registration.
        let _ = types.register(oid, kind);
    }
    let types = Arc::new(types);
    let flag = |row: usize, column: &str| result.get(row, column) == Some("t");
    let mut tables: Vec<(TableName, String, Vec<ColumnSchema>, Vec<String>)> = Vec::new();
    for row in 0..result.rows.len() {
        let name = TableName::new(
            result.get(row, "nspname").unwrap_or_default(),
            result.get(row, "relname").unwrap_or_default(),
        );
        let identity = result.get(row, "relreplident").unwrap_or_default().to_owned();
        // The pipeline's rule (see `ColumnSchema::is_key`): the identity
        // index under USING INDEX, the primary key otherwise.
        let is_key = if identity == "i" { flag(row, "in_identity_index") } else { flag(row, "in_primary_key") };
        let column = ColumnSchema {
            name: result.get(row, "attname").unwrap_or_default().to_owned(),
            type_oid: Oid(result.get(row, "atttypid").and_then(|oid| oid.parse().ok()).unwrap_or(0)),
            is_key,
        };
        if !matches!(tables.last(), Some((known, ..)) if *known == name) {
            tables.push((name, identity, Vec::new(), Vec::new()));
        }
        if let Some((_, _, columns, toastable)) = tables.last_mut() {
            if flag(row, "toastable") {
                toastable.push(column.name.clone());
            }
            columns.push(column);
        }
    }
    Ok(tables
        .into_iter()
        .map(|(name, identity, columns, toastable)| CatalogTable {
            shape: Arc::new(TableSchema {
                oid: Oid(0),
                table: name.clone(),
                replica_identity: match identity.as_str() {
                    "f" => ReplicaIdentity::Full,
                    "n" => ReplicaIdentity::Nothing,
                    "i" => ReplicaIdentity::Index,
                    _ => ReplicaIdentity::Default,
                },
                columns,
                types: Arc::clone(&types),
            }),
            name,
            toastable,
        })
        .collect())
}
