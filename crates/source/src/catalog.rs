//! User-defined types from the source's catalog.
//!
//! pgoutput's Type messages name a user type but do not say how its values
//! convert; `pg_type` does. pgfanout reads every enum, domain and array type
//! of the database before streaming, and again when a Type message names a
//! type it cannot convert (one created since), so the sinks that need typed
//! values (MongoDB, Cassandra, graph) get enums as enums and domains as their
//! base type instead of opaque text.
//!
//! It also reads the primary key of each routed table: the key sinks key
//! rows by when the replica identity does not say it (FULL, NOTHING).

use pg_replication::{ConnectOptions, ReplicationConnection, ReplicationError};
use pgfanout_core::TableName;
use pgoutput::value::TypeKind;
use pgoutput::Oid;
use postgres_protocol::escape::escape_literal;

/// Enums, domains and arrays defined in the database (built-in OIDs are
/// below `FirstNormalObjectId` = 16384 and known without the catalog).
const USER_TYPES_SQL: &str = "SELECT oid, typtype, typcategory, typelem, typbasetype FROM pg_catalog.pg_type \
     WHERE oid >= 16384 AND (typtype IN ('e', 'd') OR (typcategory = 'A' AND typelem <> 0))";

/// How the database's user types convert, read over `connection`.
pub async fn user_types(connection: &mut ReplicationConnection) -> Result<Vec<(Oid, TypeKind)>, ReplicationError> {
    let result = connection.simple_query(USER_TYPES_SQL).await?;
    let oid_at = |row: usize, column: &str| result.get(row, column).and_then(|text| text.parse().ok()).map(Oid);
    let byte_at = |row: usize, column: &str| result.get(row, column).and_then(|text| text.bytes().next());
    Ok((0..result.rows.len())
        .filter_map(|row| {
            let kind = TypeKind::from_pg_type(
                byte_at(row, "typtype")?,
                byte_at(row, "typcategory")?,
                oid_at(row, "typelem")?,
                oid_at(row, "typbasetype")?,
            )?;
            Some((oid_at(row, "oid")?, kind))
        })
        .collect())
}

/// [`user_types`] over a connection of its own, for use while the
/// replication connection is streaming.
pub async fn load_user_types(options: &ConnectOptions) -> Result<Vec<(Oid, TypeKind)>, ReplicationError> {
    let mut connection = ReplicationConnection::connect(options).await?;
    let types = user_types(&mut connection).await?;
    connection.close().await?;
    Ok(types)
}

/// The primary key columns of each of `tables` that has one (`pg_index.indisprimary`).
pub async fn primary_keys(
    connection: &mut ReplicationConnection,
    tables: &[TableName],
) -> Result<Vec<(TableName, Vec<String>)>, ReplicationError> {
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let names = tables
        .iter()
        .map(|table| format!("({}, {})", escape_literal(&table.schema), escape_literal(&table.name)))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT n.nspname, c.relname, a.attname FROM pg_catalog.pg_index i \
         JOIN pg_catalog.pg_class c ON c.oid = i.indrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (i.indkey) \
         WHERE i.indisprimary AND (n.nspname::text, c.relname::text) IN (VALUES {names}) \
         ORDER BY n.nspname, c.relname, a.attnum"
    );
    let result = connection.simple_query(&sql).await?;
    let mut keys: Vec<(TableName, Vec<String>)> = Vec::new();
    for row in 0..result.rows.len() {
        let table = TableName::new(
            result.get(row, "nspname").unwrap_or_default(),
            result.get(row, "relname").unwrap_or_default(),
        );
        let column = result.get(row, "attname").unwrap_or_default().to_owned();
        match keys.last_mut() {
            Some((known, columns)) if *known == table => columns.push(column),
            _ => keys.push((table, vec![column])),
        }
    }
    Ok(keys)
}
