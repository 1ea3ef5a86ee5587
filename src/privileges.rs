//! `check`'s privilege findings: what the source role lacks for what the
//! config asks of it, each line with the statement or the `sql/` script that
//! fixes it.
//!
//! Read-only: it asks the server's privilege functions about the connected
//! role, through the replication connection `check` already holds. A
//! superuser lacks nothing, so nothing is reported for one.

use pg_replication::{QueryResult, ReplicationConnection};
use pgfanout_core::error_chain;
use postgres_protocol::escape::escape_literal;

use crate::config::Config;

/// One problem per privilege `run` needs and the role lacks.
///
/// With `create_publication = true`, pgfanout itself adds routed tables to
/// the publication, which PostgreSQL allows only to the tables' owner (and
/// creating the publication needs CREATE on the database): a least-privilege
/// role cannot, so the owner runs `sql/pgfanout_publication.sql` instead.
pub async fn privilege_problems(connection: &mut ReplicationConnection, config: &Config) -> Vec<String> {
    match read_privileges(connection, config).await {
        Ok(problems) => problems,
        Err(err) => vec![format!("cannot read the source role's privileges: {}", error_chain(&err))],
    }
}

async fn read_privileges(
    connection: &mut ReplicationConnection,
    config: &Config,
) -> Result<Vec<String>, pg_replication::ReplicationError> {
    let role = connection
        .simple_query(
            "SELECT current_user AS role, rolsuper, \
             has_database_privilege(current_database(), 'CREATE') AS can_create \
             FROM pg_catalog.pg_roles WHERE rolname = current_user",
        )
        .await?;
    let name = role.get(0, "role").unwrap_or_default().to_owned();
    if flag(&role, 0, "rolsuper") || !config.source.create_publication {
        return Ok(Vec::new());
    }
    let publication = escape_literal(&config.source.publication);
    let publication_exists = !connection
        .simple_query(&format!("SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = {publication}"))
        .await?
        .rows
        .is_empty();
    let mut problems = Vec::new();
    if !publication_exists && !flag(&role, 0, "can_create") {
        problems.push(format!(
            "role {name} may not create publication {pubname} (it needs CREATE on the database): have the tables' \
             owner run sql/pgfanout_publication.sql and set source.create_publication = false",
            pubname = config.source.publication
        ));
    }
    for table in crate::sinks::routing(config).tables() {
        let qualified = escape_literal(&table.to_string());
        let result = connection
            .simple_query(&format!(
                "SELECT pg_catalog.pg_has_role(c.relowner, 'USAGE') AS owns, \
                 EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables t \
                         WHERE t.pubname = {publication} AND t.schemaname = n.nspname \
                         AND t.tablename = c.relname) AS published \
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.oid = pg_catalog.to_regclass({qualified})"
            ))
            .await?;
        // A missing table is reported by the source checks.
        if result.rows.is_empty() || flag(&result, 0, "published") || flag(&result, 0, "owns") {
            continue;
        }
        problems.push(format!(
            "role {name} may not add {table} to publication {pubname} (only the table's owner may): have the owner \
             run sql/pgfanout_publication.sql (or ALTER PUBLICATION) and set source.create_publication = false",
            pubname = config.source.publication
        ));
    }
    Ok(problems)
}

fn flag(result: &QueryResult, row: usize, column: &str) -> bool {
    result.get(row, column) == Some("t")
}
