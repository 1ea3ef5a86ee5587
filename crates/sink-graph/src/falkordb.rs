//! FalkorDB over RESP: `GRAPH.QUERY <graph> "CYPHER name=value … <query>"`.
//!
//! FalkorDB takes parameters as Cypher literals in a `CYPHER` prefix of the
//! query text, so [`render`] turns each [`Statement`] into that text (strings
//! single-quoted with `\` and `'` escaped, map keys backtick-quoted). A batch
//! is one `MULTI … EXEC` round trip: FalkorDB runs the queued queries one
//! after the other with no other write in between, so lanes never see each
//! other's half-written batch. Redis does not roll a transaction back when
//! one command fails, so the sink writes the checkpoint in a round trip of
//! its own, only after the batch succeeded (see `sink.rs`).
//!
//! The connection is one multiplexed Redis connection shared by the lanes,
//! dropped after a failure so the retry starts on a fresh one.

use std::fmt::Write as _;
use std::time::Duration;

use pgfanout_core::TlsConfig;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

use crate::encode::{ident, lookup_value, IndexSpec, Statement, LOOKUP_PREFIX};
use crate::error::{endpoint_of, statement_head, GraphSinkError};
use crate::value::GraphValue;

/// The query text FalkorDB receives for `statement`: its parameters as a
/// `CYPHER` prefix, then the statement.
pub fn render(statement: &Statement) -> String {
    let mut text = String::new();
    if !statement.params.is_empty() {
        text.push_str("CYPHER");
        for (name, value) in &statement.params {
            text.push(' ');
            text.push_str(name);
            text.push('=');
            write_literal(&mut text, value);
        }
        text.push(' ');
    }
    text.push_str(&statement.cypher);
    text
}

/// Appends `value` as a Cypher literal.
fn write_literal(out: &mut String, value: &GraphValue) {
    match value {
        GraphValue::Null => out.push_str("null"),
        GraphValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        GraphValue::Int(i) => {
            let _ = write!(out, "{i}");
        }
        // `{:?}` keeps a decimal point or an exponent (`1.0`, `1e300`), so
        // the literal reads back as a float, never as an integer.
        GraphValue::Float(f) => {
            let _ = write!(out, "{f:?}");
        }
        GraphValue::String(s) => {
            out.reserve(s.len() + 2);
            out.push('\'');
            for c in s.chars() {
                if c == '\\' || c == '\'' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('\'');
        }
        GraphValue::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_literal(out, item);
            }
            out.push(']');
        }
        GraphValue::Map(fields) => {
            out.push('{');
            for (i, (key, item)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&ident(key));
                out.push(':');
                write_literal(out, item);
            }
            out.push('}');
        }
    }
}

/// The statement creating `index` (FalkorDB has no `IF NOT EXISTS`; an
/// existing index is an error [`is_already_indexed`] recognises).
fn index_statement(index: &IndexSpec) -> String {
    match index {
        IndexSpec::Node { label, property } => {
            format!("CREATE INDEX FOR (n:{}) ON (n.{})", ident(label), ident(property))
        }
        IndexSpec::Relationship { rel_type, property } => {
            format!("CREATE INDEX FOR ()-[r:{}]-() ON (r.{})", ident(rel_type), ident(property))
        }
    }
}

/// For a new index on a lookup property: the statement that fills it in on
/// the nodes or relationships written before lookup properties existed
/// (their key property holds the value), so they are found, not duplicated.
fn backfill_statement(index: &IndexSpec) -> Option<Statement> {
    let (pattern, variable, property) = match index {
        IndexSpec::Node { label, property } => (format!("(e:{})", ident(label)), "e", property),
        IndexSpec::Relationship { rel_type, property } => (format!("()-[e:{}]->()", ident(rel_type)), "e", property),
    };
    let key = property.strip_prefix(LOOKUP_PREFIX)?;
    let (lookup, key) = (ident(property), ident(key));
    // Strings are wrapped as `lookup_value` does; `$wrap` is its wrapping of ''.
    let GraphValue::String(wrap) = lookup_value(&GraphValue::String(String::new())) else { return None };
    let half = wrap[..wrap.len() / 2].to_owned();
    Some(Statement {
        cypher: format!(
            "MATCH {pattern} WHERE {variable}.{lookup} IS NULL AND {variable}.{key} IS NOT NULL \
             SET {variable}.{lookup} = CASE WHEN toString({variable}.{key}) = {variable}.{key} \
             THEN $wrap + {variable}.{key} + $wrap ELSE {variable}.{key} END"
        ),
        params: vec![("wrap".into(), GraphValue::String(half))],
    })
}

fn is_already_indexed(err: &redis::RedisError) -> bool {
    err.to_string().contains("already indexed")
}

/// A FalkorDB graph reached over RESP.
pub struct FalkorTransport {
    client: redis::Client,
    graph: String,
    endpoint: String,
    client_name: String,
    timeout: Duration,
    connection: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

impl FalkorTransport {
    /// A transport for `graph` at `url` (`rediss://` with `tls`'s files);
    /// connects on first use.
    pub fn new(
        url: &str,
        graph: String,
        client_name: String,
        timeout: Duration,
        tls: Option<&TlsConfig>,
    ) -> Result<Self, GraphSinkError> {
        let endpoint = endpoint_of(url);
        let unreachable = |source| GraphSinkError::Unreachable { endpoint: endpoint.clone(), source: Box::new(source) };
        let client = match tls {
            None => redis::Client::open(url).map_err(unreachable)?,
            Some(tls) => {
                let files = tls.read().map_err(GraphSinkError::Tls)?;
                let certificates = redis::TlsCertificates {
                    client_tls: files
                        .client
                        .map(|(client_cert, client_key)| redis::ClientTlsConfig { client_cert, client_key }),
                    root_cert: files.ca_pem,
                };
                redis::Client::build_with_tls(url, certificates).map_err(unreachable)?
            }
        };
        Ok(FalkorTransport { client, graph, endpoint, client_name, timeout, connection: tokio::sync::Mutex::new(None) })
    }

    async fn connection(&self) -> Result<MultiplexedConnection, GraphSinkError> {
        let mut shared = self.connection.lock().await;
        if let Some(connection) = shared.as_ref() {
            return Ok(connection.clone());
        }
        let settings = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(self.timeout));
        let unreachable = |source: redis::RedisError| GraphSinkError::Unreachable {
            endpoint: self.endpoint.clone(),
            source: Box::new(source),
        };
        let mut connection =
            self.client.get_multiplexed_async_connection_with_config(&settings).await.map_err(unreachable)?;
        // Named so operators can find pgfanout in CLIENT LIST.
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(&self.client_name)
            .query_async::<()>(&mut connection)
            .await
            .map_err(unreachable)?;
        *shared = Some(connection.clone());
        Ok(connection)
    }

    /// Classifies a driver error; a connection-level one also drops the
    /// shared connection so the next call reconnects.
    async fn classify(&self, what: String, err: redis::RedisError) -> GraphSinkError {
        let unreachable = err.is_io_error()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_timeout()
            || matches!(err.code(), Some("LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "READONLY"));
        if unreachable {
            *self.connection.lock().await = None;
            GraphSinkError::Unreachable { endpoint: self.endpoint.clone(), source: Box::new(err) }
        } else {
            GraphSinkError::Rejected { what, message: err.to_string() }
        }
    }

    /// Awaits a driver call within the response timeout; a timeout drops the
    /// shared connection as a connection-level error does.
    async fn within_timeout<T>(
        &self,
        what: impl FnOnce() -> String,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, GraphSinkError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(self.classify(what(), err).await),
            Err(_) => {
                *self.connection.lock().await = None;
                Err(GraphSinkError::Timeout(self.timeout))
            }
        }
    }

    /// Runs `statements` in order in one `MULTI … EXEC` round trip.
    pub async fn run_all(&self, statements: &[Statement]) -> Result<(), GraphSinkError> {
        if statements.is_empty() {
            return Ok(());
        }
        let mut pipeline = redis::pipe();
        pipeline.atomic();
        for statement in statements {
            pipeline.cmd("GRAPH.QUERY").arg(&self.graph).arg(render(statement)).arg("--compact");
        }
        let mut connection = self.connection().await?;
        let replies = self
            .within_timeout(
                || format!("a batch of {} statements", statements.len()),
                pipeline.query_async::<Vec<redis::Value>>(&mut connection),
            )
            .await?;
        // A query that fails inside EXEC comes back as an error reply in its place.
        for (statement, reply) in statements.iter().zip(&replies) {
            if let redis::Value::ServerError(err) = reply {
                return Err(GraphSinkError::Rejected {
                    what: statement_head(&statement.cypher),
                    message: format!("{err:?}"),
                });
            }
        }
        Ok(())
    }

    /// Runs one read statement and returns its rows, each value as text
    /// (`None` for null).
    pub async fn query_strings(&self, statement: &Statement) -> Result<Vec<Vec<Option<String>>>, GraphSinkError> {
        let mut connection = self.connection().await?;
        let query = redis::cmd("GRAPH.QUERY").arg(&self.graph).arg(render(statement)).to_owned();
        let reply = self
            .within_timeout(|| statement_head(&statement.cypher), query.query_async::<redis::Value>(&mut connection))
            .await?;
        // Reply: [header, rows, statistics] (no header/rows for a write-only query).
        let redis::Value::Array(parts) = reply else {
            return Err(GraphSinkError::Rejected {
                what: statement_head(&statement.cypher),
                message: format!("unexpected reply {reply:?}"),
            });
        };
        let rows = match parts.get(1) {
            Some(redis::Value::Array(rows)) if parts.len() == 3 => rows,
            _ => return Ok(Vec::new()),
        };
        Ok(rows
            .iter()
            .map(|row| match row {
                redis::Value::Array(values) => values.iter().map(text_of).collect(),
                other => vec![text_of(other)],
            })
            .collect())
    }

    /// Creates `index` unless it exists.
    pub async fn ensure_index(&self, index: &IndexSpec) -> Result<(), GraphSinkError> {
        let mut connection = self.connection().await?;
        let text = index_statement(index);
        let command = redis::cmd("GRAPH.QUERY").arg(&self.graph).arg(&text).to_owned();
        let created = async {
            match command.query_async::<redis::Value>(&mut connection).await {
                Err(err) if is_already_indexed(&err) => Ok(false),
                other => other.map(|_| true),
            }
        };
        let created = self.within_timeout(|| text.clone(), created).await?;
        match backfill_statement(index) {
            Some(backfill) if created => self.run_all(std::slice::from_ref(&backfill)).await,
            _ => Ok(()),
        }
    }
}

fn text_of(value: &redis::Value) -> Option<String> {
    match value {
        redis::Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        redis::Value::SimpleString(text) => Some(text.clone()),
        redis::Value::Int(i) => Some(i.to_string()),
        redis::Value::Double(f) => Some(f.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_become_a_cypher_prefix_of_literals() {
        let statement = Statement {
            cypher: "UNWIND $rows AS row RETURN row".into(),
            params: vec![(
                "rows".into(),
                GraphValue::List(vec![GraphValue::Map(vec![
                    ("id".into(), GraphValue::Int(-7)),
                    ("a b".into(), GraphValue::String(r"it's a \ path".into())),
                    ("f".into(), GraphValue::Float(1.0)),
                    ("big".into(), GraphValue::Float(1e300)),
                    ("l".into(), GraphValue::List(vec![GraphValue::Bool(true), GraphValue::Null])),
                ])]),
            )],
        };
        assert_eq!(
            render(&statement),
            r"CYPHER rows=[{`id`:-7,`a b`:'it\'s a \\ path',`f`:1.0,`big`:1e300,`l`:[true,null]}] UNWIND $rows AS row RETURN row"
        );
    }

    #[test]
    fn statements_without_parameters_have_no_prefix() {
        let statement = Statement { cypher: "MATCH (n) RETURN n".into(), params: Vec::new() };
        assert_eq!(render(&statement), "MATCH (n) RETURN n");
    }

    #[test]
    fn lookup_indexes_are_backfilled_from_the_key_property() {
        let index = IndexSpec::Node { label: "User".into(), property: "pgfanout_key_id".into() };
        let backfill = backfill_statement(&index).unwrap();
        assert!(backfill
            .cypher
            .starts_with("MATCH (e:`User`) WHERE e.`pgfanout_key_id` IS NULL AND e.`id` IS NOT NULL"));
        assert_eq!(backfill.params, vec![("wrap".into(), GraphValue::String("\u{E000}".into()))]);
        let checkpoint = IndexSpec::Node { label: "PgfanoutCheckpoint".into(), property: "sink".into() };
        assert!(backfill_statement(&checkpoint).is_none());
    }

    #[test]
    fn index_statements_quote_names() {
        let index = IndexSpec::Relationship { rel_type: "FAV`ORITE".into(), property: "id".into() };
        assert_eq!(index_statement(&index), "CREATE INDEX FOR ()-[r:`FAV``ORITE`]-() ON (r.`id`)");
    }
}
