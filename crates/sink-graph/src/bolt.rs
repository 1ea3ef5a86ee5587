//! Bolt (Neo4j 4.4 and later) through `neo4rs`, which speaks Bolt 4.x.
//!
//! A batch is one auto-commit `RUN` (its `DISCARD` pipelined behind it:
//! writes return nothing to read), one round trip: its statements, in
//! order, each a unit subquery (`CALL { … }`) of one statement, their
//! parameters renamed apart ([`combined_query`]). A clause sees what the
//! clauses before it wrote, so the statements run as they would one by one
//! in a transaction, and the statement is atomic: when any part fails,
//! nothing of the batch is left behind. A batch of more than
//! [`MAX_COMBINED`] statements (a batch of many rounds) is an explicit
//! transaction instead — `BEGIN`, one `RUN` per statement, `COMMIT` — so
//! that Neo4j plans (and caches) its statements one by one rather than
//! one long statement it sees once. Reads are `RUN` and `PULL` outside a
//! transaction. Indexes
//! are created on their own (`CREATE INDEX IF NOT EXISTS`): Neo4j refuses
//! schema changes and writes in one transaction.
//!
//! Concurrency: lanes run their transactions side by side. The derived
//! relationships' marking takes a write lock on every `source` node it
//! marks (it sets a label), which the recompute of the same transaction
//! holds until commit, so two lanes never recompute one node at once.

use std::time::Duration;

use neo4rs::{BoltBoolean, BoltFloat, BoltInteger, BoltList, BoltMap, BoltNull, BoltString, BoltType, Query};

use pgfanout_core::TlsConfig;

use crate::encode::{ident, IndexSpec, NodeKey, Statement};
use crate::error::{endpoint_of, statement_head, GraphSinkError};
use crate::value::GraphValue;

/// `value` as a Bolt parameter.
pub fn to_bolt(value: &GraphValue) -> BoltType {
    match value {
        GraphValue::Null => BoltType::Null(BoltNull),
        GraphValue::Bool(b) => BoltType::Boolean(BoltBoolean::new(*b)),
        GraphValue::Int(i) => BoltType::Integer(BoltInteger::new(*i)),
        GraphValue::Float(f) => BoltType::Float(BoltFloat::new(*f)),
        GraphValue::String(s) => BoltType::String(BoltString::new(s)),
        GraphValue::List(items) => BoltType::List(BoltList::from(items.iter().map(to_bolt).collect::<Vec<_>>())),
        GraphValue::Map(fields) => {
            BoltType::Map(fields.iter().map(|(key, item)| (BoltString::new(key), to_bolt(item))).collect::<BoltMap>())
        }
    }
}

/// A scalar result value as text; `None` for NULL and non-scalar values.
fn text_of(value: &BoltType) -> Option<String> {
    match value {
        BoltType::String(text) => Some(text.value.clone()),
        BoltType::Integer(integer) => Some(integer.value.to_string()),
        BoltType::Float(float) => Some(float.value.to_string()),
        BoltType::Boolean(boolean) => Some(boolean.value.to_string()),
        _ => None,
    }
}

/// `statement` as a `neo4rs` query.
pub fn to_query(statement: &Statement) -> Query {
    statement
        .params
        .iter()
        .fold(Query::new(statement.cypher.clone()), |query, (name, value)| query.param(name, to_bolt(value)))
}

/// Most statements [`BoltTransport::run_all`] sends as one: a batch's
/// statements usually number two or three (a table's upserts, the stub
/// check, the checkpoint), a few shapes Neo4j plans once each and caches.
pub const MAX_COMBINED: usize = 8;

/// `statements` as one statement running each, in order, as a unit
/// subquery (`CALL { … }`, which leaves the single row it is called with
/// as it was, whatever the inner statement matches); the parameters of
/// statement `i` are renamed `s<i>_<name>`.
pub fn combined_query(statements: &[Statement]) -> Query {
    let mut cypher = String::new();
    for (position, statement) in statements.iter().enumerate() {
        if position > 0 {
            cypher.push(' ');
        }
        cypher.push_str("CALL { ");
        rename_parameters(&statement.cypher, &format!("s{position}_"), &mut cypher);
        cypher.push_str(" }");
    }
    let mut query = Query::new(cypher);
    for (position, statement) in statements.iter().enumerate() {
        for (name, value) in &statement.params {
            query = query.param(&format!("s{position}_{name}"), to_bolt(value));
        }
    }
    query
}

/// Appends `cypher` to `out` with `prefix` put before every parameter name
/// (`$rows` → `$s0_rows`); `$` within string literals and backtick-quoted
/// names is text, left as it is.
fn rename_parameters(cypher: &str, prefix: &str, out: &mut String) {
    let mut quote: Option<char> = None;
    let mut chars = cypher.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        match quote {
            // A backslash escapes the next character of a string literal.
            Some(open) if c == '\\' && open != '`' => {
                if let Some(escaped) = chars.next() {
                    out.push(escaped);
                }
            }
            Some(open) if c == open => quote = None,
            Some(_) => {}
            None if matches!(c, '`' | '\'' | '"') => quote = Some(c),
            None if c == '$' && chars.peek().is_some_and(|next| next.is_alphanumeric() || *next == '_') => {
                out.push_str(prefix)
            }
            None => {}
        }
    }
}

fn index_statement(index: &IndexSpec) -> String {
    match index {
        IndexSpec::Node { label, property } => {
            format!("CREATE INDEX IF NOT EXISTS FOR (n:{}) ON (n.{})", ident(label), ident(property))
        }
        IndexSpec::Relationship { rel_type, property } => {
            format!("CREATE INDEX IF NOT EXISTS FOR ()-[r:{}]-() ON (r.{})", ident(rel_type), ident(property))
        }
    }
}

fn unique_statement(key: &NodeKey) -> String {
    let properties: Vec<String> = key.properties.iter().map(|property| format!("n.{}", ident(property))).collect();
    let properties = match &properties[..] {
        [one] => one.clone(),
        several => format!("({})", several.join(", ")),
    };
    format!("CREATE CONSTRAINT IF NOT EXISTS FOR (n:{}) REQUIRE {properties} IS UNIQUE", ident(&key.label))
}

/// Whether a Neo4j error code says the schema rule being created exists.
fn index_exists(code: &str) -> bool {
    matches!(
        code,
        "Neo.ClientError.Schema.EquivalentSchemaRuleAlreadyExists"
            | "Neo.ClientError.Schema.IndexAlreadyExists"
            | "Neo.ClientError.Schema.ConstraintAlreadyExists"
    )
}

/// A Neo4j database reached over Bolt.
pub struct BoltTransport {
    graph: neo4rs::Graph,
    database: Option<String>,
    endpoint: String,
    timeout: Duration,
}

impl BoltTransport {
    /// A transport for `url`; connections are opened (and pooled) on use.
    /// With `bolt+s://`/`neo4j+s://`, `tls` names the CA that verifies the
    /// server (else the system's roots) and the client certificate, if any.
    pub fn new(
        url: &str,
        user: Option<&str>,
        password: Option<&str>,
        database: Option<String>,
        timeout: Duration,
        tls: Option<&TlsConfig>,
    ) -> Result<Self, GraphSinkError> {
        let endpoint = endpoint_of(url);
        let mut builder = neo4rs::ConfigBuilder::default()
            .uri(url)
            // neo4rs always sends credentials; a server without
            // authentication ignores them.
            .user(user.unwrap_or("neo4j"))
            .password(password.unwrap_or(""))
            .connection_timeout(Duration::from_secs(5))
            .max_connections(8);
        if let Some(database) = &database {
            builder = builder.db(database.as_str());
        }
        if let Some(tls) = tls {
            // Read here only to refuse unusable files with a clear error;
            // neo4rs reads them again by path.
            tls.read().map_err(GraphSinkError::Tls)?;
            builder = match (&tls.ca_file, &tls.cert_file, &tls.key_file) {
                (ca, Some(cert), Some(key)) => builder.with_mutual_tls_validation(ca.as_ref(), cert, key),
                (Some(ca), _, _) => builder.with_client_certificate(ca),
                (None, _, _) => builder,
            };
        }
        let config = builder
            .build()
            .map_err(|err| GraphSinkError::Rejected { what: "the bolt settings".into(), message: err.to_string() })?;
        let graph = neo4rs::Graph::connect(config)
            .map_err(|source| GraphSinkError::Unreachable { endpoint: endpoint.clone(), source: Box::new(source) })?;
        Ok(BoltTransport { graph, database, endpoint, timeout })
    }

    fn classify(&self, what: String, err: neo4rs::Error) -> GraphSinkError {
        match err {
            neo4rs::Error::Neo4j(server) => {
                if matches!(server.kind(), neo4rs::Neo4jErrorKind::Transient) {
                    GraphSinkError::Unreachable {
                        endpoint: self.endpoint.clone(),
                        source: Box::new(neo4rs::Error::Neo4j(server)),
                    }
                } else {
                    GraphSinkError::Rejected { what, message: format!("{}: {}", server.code(), server.message()) }
                }
            }
            neo4rs::Error::UnsupportedVersion(..)
            | neo4rs::Error::ProtocolMismatch(_)
            | neo4rs::Error::AuthenticationError(_)
            | neo4rs::Error::InvalidConfig
            | neo4rs::Error::UnsupportedScheme(_)
            | neo4rs::Error::StringTooLong
            | neo4rs::Error::MapTooBig
            | neo4rs::Error::ListTooLong => GraphSinkError::Rejected { what, message: err.to_string() },
            other => GraphSinkError::Unreachable { endpoint: self.endpoint.clone(), source: Box::new(other) },
        }
    }

    async fn within_timeout<T>(
        &self,
        future: impl std::future::Future<Output = Result<T, GraphSinkError>>,
    ) -> Result<T, GraphSinkError> {
        tokio::time::timeout(self.timeout, future).await.unwrap_or(Err(GraphSinkError::Timeout(self.timeout)))
    }

    /// Runs `statements` in order in one transaction: up to
    /// [`MAX_COMBINED`] of them as one auto-commit statement (one round
    /// trip, as atomic, a statement being all or nothing), more in an
    /// explicit transaction.
    pub async fn run_all(&self, statements: &[Statement]) -> Result<(), GraphSinkError> {
        if statements.is_empty() {
            return Ok(());
        }
        if statements.len() <= MAX_COMBINED {
            let (query, what) = match statements {
                [statement] => (to_query(statement), statement_head(&statement.cypher)),
                several => (
                    combined_query(several),
                    format!("{} statements in one, the first {}", several.len(), statement_head(&several[0].cypher)),
                ),
            };
            return self
                .within_timeout(async {
                    let result = match &self.database {
                        Some(database) => self.graph.run_on(database.as_str(), query).await,
                        None => self.graph.run(query).await,
                    };
                    result.map(|_| ()).map_err(|err| self.classify(what, err))
                })
                .await;
        }
        self.within_timeout(async {
            let begin = match &self.database {
                Some(database) => self.graph.start_txn_on(database.as_str()).await,
                None => self.graph.start_txn().await,
            };
            let mut txn = begin.map_err(|err| self.classify("BEGIN".into(), err))?;
            for statement in statements {
                if let Err(err) = txn.run(to_query(statement)).await {
                    // The server already failed the transaction; the
                    // rollback only returns the connection in a clean state.
                    let _ = txn.rollback().await;
                    return Err(self.classify(statement_head(&statement.cypher), err));
                }
            }
            txn.commit().await.map(|_| ()).map_err(|err| self.classify("COMMIT".into(), err))
        })
        .await
    }

    /// Runs one read statement that returns a single column and returns
    /// its rows' values as text (numbers and booleans in their Cypher
    /// spelling, as the FalkorDB transport reads them; NULL and other
    /// types as `None`).
    ///
    /// A statement returning several columns is refused: `neo4rs` hands a
    /// row over as a hash map, so which column is "first" is not known.
    pub async fn query_first_column(&self, statement: &Statement) -> Result<Vec<Option<String>>, GraphSinkError> {
        self.within_timeout(async {
            let what = || statement_head(&statement.cypher);
            let result = match &self.database {
                Some(database) => self.graph.execute_on(database.as_str(), to_query(statement)).await,
                None => self.graph.execute(to_query(statement)).await,
            };
            let mut rows = result.map_err(|err| self.classify(what(), err))?;
            let mut values = Vec::new();
            while let Some(row) = rows.next().await.map_err(|err| self.classify(what(), err))? {
                let value = match row.keys()[..] {
                    [] => None,
                    [column] => row.get::<BoltType>(&column.value).ok(),
                    ref columns => {
                        return Err(GraphSinkError::Rejected {
                            what: what(),
                            message: format!("returned {} columns where one was expected", columns.len()),
                        })
                    }
                };
                values.push(value.as_ref().and_then(text_of));
            }
            Ok(values)
        })
        .await
    }

    /// Makes `key` unique among the nodes of its label unless it is.
    ///
    /// A plain index on the same property (pgfanout made one before it made
    /// constraints) keeps Neo4j from creating the constraint: that is logged
    /// with what to do, and the index serves the lookups meanwhile.
    pub async fn ensure_unique(&self, key: &NodeKey, sink: &str) -> Result<(), GraphSinkError> {
        let text = unique_statement(key);
        self.within_timeout(async {
            let query = Query::new(text.clone());
            let result = match &self.database {
                Some(database) => self.graph.run_on(database.as_str(), query).await,
                None => self.graph.run(query).await,
            };
            match result {
                Ok(_) => Ok(()),
                Err(neo4rs::Error::Neo4j(server)) if server.code() == "Neo.ClientError.Schema.IndexAlreadyExists" => {
                    tracing::warn!(
                        sink,
                        label = %key.label,
                        properties = ?key.properties,
                        "an index on this node key keeps Neo4j from making the key unique, so lanes > 1 may \
                         create a node twice: drop the index (SHOW INDEXES, DROP INDEX name) and restart, or \
                         run this sink with lanes = 1"
                    );
                    Ok(())
                }
                // Another lane made it first (IF NOT EXISTS does not cover that).
                Err(neo4rs::Error::Neo4j(server)) if index_exists(server.code()) => Ok(()),
                Err(err) => Err(self.classify(text.clone(), err)),
            }
        })
        .await
    }

    /// Creates `index` unless it exists.
    pub async fn ensure_index(&self, index: &IndexSpec) -> Result<(), GraphSinkError> {
        let text = index_statement(index);
        self.within_timeout(async {
            let query = Query::new(text.clone());
            let result = match &self.database {
                Some(database) => self.graph.run_on(database.as_str(), query).await,
                None => self.graph.run(query).await,
            };
            match result {
                Ok(_) => Ok(()),
                // Lanes create the same index side by side, and Neo4j's
                // IF NOT EXISTS does not cover a concurrent creation: the
                // loser is told the index exists, which is what it wanted.
                Err(neo4rs::Error::Neo4j(server)) if index_exists(server.code()) => Ok(()),
                Err(err) => Err(self.classify(text.clone(), err)),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_their_types_as_bolt_parameters() {
        let row = GraphValue::Map(vec![
            ("id".into(), GraphValue::Int(7)),
            ("tags".into(), GraphValue::List(vec![GraphValue::String("a".into())])),
            ("gone".into(), GraphValue::Null),
        ]);
        let BoltType::Map(map) = to_bolt(&row) else { panic!("a map") };
        assert_eq!(map.get::<i64>("id").unwrap(), 7);
        assert_eq!(map.get::<Vec<String>>("tags").unwrap(), vec!["a".to_owned()]);
        assert!(matches!(map.value.get(&BoltString::new("gone")), Some(BoltType::Null(_))));
    }

    #[test]
    fn combined_statements_rename_their_parameters_apart_but_not_text() {
        let statements = [
            Statement {
                cypher:
                    "UNWIND $rows AS row MERGE (n:`La$bel` {id: row.id}) SET n.note = 'costs $5', n.s = \"a\\\"$b\""
                        .into(),
                params: vec![("rows".into(), GraphValue::List(vec![]))],
            },
            Statement { cypher: "MERGE (c:`C` {sink: $sink}) SET c.lsn = $lsn".into(), params: vec![] },
        ];
        let mut first = String::new();
        rename_parameters(&statements[0].cypher, "s0_", &mut first);
        assert_eq!(
            first,
            "UNWIND $s0_rows AS row MERGE (n:`La$bel` {id: row.id}) SET n.note = 'costs $5', n.s = \"a\\\"$b\""
        );
        let mut second = String::new();
        rename_parameters(&statements[1].cypher, "s1_", &mut second);
        assert_eq!(second, "MERGE (c:`C` {sink: $s1_sink}) SET c.lsn = $s1_lsn");
    }

    #[test]
    fn an_index_created_by_another_lane_counts_as_created() {
        assert!(index_exists("Neo.ClientError.Schema.EquivalentSchemaRuleAlreadyExists"));
        assert!(!index_exists("Neo.ClientError.Statement.SyntaxError"));
    }

    #[test]
    fn node_keys_become_uniqueness_constraints_of_one_or_several_properties() {
        let one = NodeKey { label: "User".into(), properties: vec!["id".into()] };
        assert_eq!(unique_statement(&one), "CREATE CONSTRAINT IF NOT EXISTS FOR (n:`User`) REQUIRE n.`id` IS UNIQUE");
        let two = NodeKey { label: "Seat".into(), properties: vec!["row".into(), "n`o".into()] };
        assert_eq!(
            unique_statement(&two),
            "CREATE CONSTRAINT IF NOT EXISTS FOR (n:`Seat`) REQUIRE (n.`row`, n.`n``o`) IS UNIQUE"
        );
    }

    #[test]
    fn index_statements_are_idempotent_on_neo4j() {
        let index = IndexSpec::Node { label: "User".into(), property: "id".into() };
        assert_eq!(index_statement(&index), "CREATE INDEX IF NOT EXISTS FOR (n:`User`) ON (n.`id`)");
    }
}
