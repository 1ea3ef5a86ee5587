//! User-defined types from the source's catalog.
//!
//! pgoutput's Type messages name a user type but do not say how its values
//! convert; `pg_type` does. pgfanout reads every enum, domain and array type
//! of the database before streaming, and again when a Type message names a
//! type it cannot convert (one created since), so the sinks that need typed
//! values (MongoDB, Cassandra, graph) get enums as enums and domains as their
//! base type instead of opaque text.

use pg_replication::{ConnectOptions, ReplicationConnection, ReplicationError};
use pgoutput::value::TypeKind;
use pgoutput::Oid;

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
