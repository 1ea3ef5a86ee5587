//! `rebuild --wipe` for graph stores: removes what pgfanout wrote for one
//! table, and only that.
//!
//! - A node table (label `L`): the relationships pgfanout derived from the
//!   table's foreign-key columns (the configured types, between `L` nodes
//!   pgfanout wrote and their targets), the stub targets left without any
//!   relationship, the relationships of `[[sink.derived]]` rules whose
//!   pattern names `L` (the copy recomputes them), then the `L` nodes
//!   pgfanout wrote (they carry the version property). A node that still
//!   has a relationship (another application's, or another table's foreign
//!   key to it) is not deleted: it loses its version property, so the copy
//!   writes it again as if new, and a delete of its row removes it.
//! - A join table (type `T`): the `T` relationships pgfanout wrote (they
//!   carry the version property) and the stubs left without relationships.
//!
//! Nodes and relationships without the version property (other
//! applications') stay.
//!
//! Why it is safe while streaming: each statement re-checks the version
//! bound on the object it removes. FalkorDB runs a query alone (no write
//! runs between its match and its delete); on Neo4j the statement first
//! sets the version property to itself, which takes the node's write lock
//! before the bound is checked again, so a concurrent newer write either
//! commits first (and the check fails) or waits until the wipe's
//! statement committed.

use pgfanout_core::{SinkError, TableName, TableSchema, Version};

use crate::encode::{ident, Statement, STUB_PROPERTY};
use crate::sink::GraphSink;
use crate::value::GraphValue;

impl GraphSink {
    /// See [`pgfanout_core::Sink::wipe`]; the count of nodes and relationships removed.
    pub(crate) async fn wipe_table(&self, table: &TableSchema, older_than: Option<Version>) -> Result<u64, SinkError> {
        let config = self.config();
        let label_text = table.table.to_string();
        let Some(table_config) = config.tables.iter().find(|t| TableName::parse(&t.source) == table.table) else {
            return Err(SinkError::cannot_wipe(&config.name, &label_text, "the sink does not route this table"));
        };
        let version = ident(&config.version_property);
        let stub = ident(STUB_PROPERTY);
        let params: Vec<(String, GraphValue)> = older_than
            .map(|older_than| ("bound".to_owned(), GraphValue::String(older_than.to_sortable_string())))
            .into_iter()
            .collect();
        // What pgfanout wrote (below the bound, when there is one).
        let bound = |var: &str, version: &str| match older_than {
            Some(_) => format!("{var}.{version} < $bound"),
            None => format!("{var}.{version} IS NOT NULL"),
        };
        let mut statements = Vec::new();
        match &table_config.relationship {
            Some(join) => {
                statements.push(format!(
                    "MATCH (a)-[r:{rel}]->(b) WHERE {check} SET r.{version} = r.{version} WITH r, a, b WHERE {check} \
                     DELETE r WITH a, b UNWIND [a, b] AS t WITH DISTINCT t WHERE t.{stub} = true AND NOT (t)--() \
                     DELETE t RETURN toString(count(t))",
                    rel = ident(&join.rel_type),
                    check = bound("r", &version),
                ));
            }
            None => {
                let label = table_config.label();
                let node = format!("(n:{})", ident(&label));
                let ours = bound("n", &version);
                for fk in &table_config.relationships {
                    let arrow = match fk.direction {
                        crate::config::Direction::Out => {
                            format!("(n)-[r:{}]->(t:{})", ident(&fk.rel_type), ident(&fk.to))
                        }
                        crate::config::Direction::In => {
                            format!("(n)<-[r:{}]-(t:{})", ident(&fk.rel_type), ident(&fk.to))
                        }
                    };
                    statements.push(format!(
                        "MATCH {node} WHERE {ours} SET n.{version} = n.{version} WITH n WHERE {ours} \
                         MATCH {arrow} DELETE r WITH DISTINCT t WHERE t.{stub} = true AND NOT (t)--() \
                         DELETE t RETURN toString(count(t))"
                    ));
                }
                let named = format!(":{}", ident(&label));
                for rule in &config.derived {
                    if rule.pattern.contains(&format!(":{label}")) || rule.pattern.contains(&named) {
                        statements.push(format!(
                            "MATCH ()-[r:{}]->() DELETE r RETURN toString(count(r))",
                            ident(&rule.rel_type)
                        ));
                    }
                }
                statements.push(format!(
                    "MATCH {node} WHERE {ours} SET n.{version} = n.{version} WITH n WHERE {ours} \
                     AND NOT (n)--() DELETE n RETURN toString(count(n))"
                ));
                statements.push(format!(
                    "MATCH {node} WHERE {ours} SET n.{version} = n.{version} WITH n WHERE {ours} \
                     REMOVE n.{version} RETURN toString(count(n))"
                ));
            }
        }
        let mut removed = 0;
        for cypher in statements {
            let statement = Statement { cypher, params: params.clone() };
            let counts = self
                .first_column_of(&statement)
                .await
                .map_err(|err| err.into_sink_error(&config.name, format!("wiping table {label_text}")))?;
            removed += counts.iter().flatten().filter_map(|count| count.parse::<u64>().ok()).sum::<u64>();
        }
        tracing::info!(sink = %config.name, table = %label_text, removed, "wiped");
        Ok(removed)
    }
}
