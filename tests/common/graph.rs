//! The graph stores of the local stack for the graph sink's tests: a test's
//! graph on FalkorDB (a graph of its own) or Neo4j (its one database, taken
//! in turns), emptied at the start, and its rows read back typed.
//!
//! Neo4j Community has one database, so the Neo4j runs of a test binary take
//! turns ([`GraphStore::open`] holds a lock until the store is dropped).

use super::{redis_connection, required_env};

/// Which graph store a scenario runs against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Backend {
    /// FalkorDB: Cypher over RESP.
    FalkorDb,
    /// Neo4j: Bolt.
    Neo4j,
}

/// Serialises the Neo4j runs: they share the server's only database.
static NEO4J_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A test's graph on one backend, empty at the start, and a way to read it.
pub struct GraphStore {
    /// FalkorDB: a connection and the graph's key.
    pub falkor: Option<(redis::aio::MultiplexedConnection, String)>,
    /// Neo4j: a driver.
    pub neo4j: Option<neo4rs::Graph>,
    /// The store's URL.
    pub url: String,
    /// Neo4j: this test's turn.
    pub turn: Option<tokio::sync::MutexGuard<'static, ()>>,
}

impl GraphStore {
    /// The graph `graph` on `backend`, emptied (on Neo4j: every node).
    pub async fn open(backend: Backend, graph: &str) -> GraphStore {
        match backend {
            Backend::FalkorDb => {
                let url = required_env("PGFANOUT_TEST_FALKORDB_URL");
                let connection = falkordb(&url, graph).await;
                GraphStore { falkor: Some((connection, graph.to_owned())), neo4j: None, url, turn: None }
            }
            Backend::Neo4j => {
                let turn = NEO4J_TURN.lock().await;
                let url = required_env("PGFANOUT_TEST_NEO4J_URL");
                let config = neo4rs::ConfigBuilder::default().uri(&url).user("neo4j").password("").build().unwrap();
                let neo4j = neo4rs::Graph::connect(config).unwrap();
                neo4j.run(neo4rs::query("MATCH (n) DETACH DELETE n")).await.unwrap();
                GraphStore { falkor: None, neo4j: Some(neo4j), url, turn: Some(turn) }
            }
        }
    }

    /// The `[[sink]]` lines naming this store (a FalkorDB graph, or Neo4j's
    /// default database).
    pub fn sink_lines(&self) -> String {
        match &self.falkor {
            Some((_, graph)) => format!("transport = \"falkordb\"\nurl = \"{}\"\ngraph = \"{graph}\"", self.url),
            None => format!("transport = \"bolt\"\nurl = \"{}\"", self.url),
        }
    }

    /// The rows of a read query, typed (a query without `RETURN` runs and
    /// returns none).
    pub async fn rows(&mut self, query: &str) -> Vec<Vec<Cell>> {
        if let Some((connection, graph)) = &mut self.falkor {
            return graph_rows(connection, graph, query).await;
        }
        let neo4j = self.neo4j.as_ref().unwrap();
        // neo4rs hands a row over as a map: one list column keeps the order.
        let query = match query.rsplit_once(" RETURN ") {
            Some((head, tail)) => {
                let (columns, order) = tail.split_once(" ORDER BY ").map_or((tail, None), |(c, o)| (c, Some(o)));
                let order = order.map(|o| format!(" ORDER BY {o}")).unwrap_or_default();
                format!("{head} RETURN [{columns}] AS row{order}")
            }
            None => query.to_owned(),
        };
        let mut result = neo4j.execute(neo4rs::query(&query)).await.unwrap_or_else(|err| panic!("{query}: {err}"));
        let mut rows = Vec::new();
        while let Some(row) = result.next().await.unwrap() {
            if let Ok(neo4rs::BoltType::List(cells)) = row.get::<neo4rs::BoltType>("row") {
                rows.push(cells.value.iter().map(bolt_cell).collect());
            }
        }
        rows
    }
}

fn bolt_cell(value: &neo4rs::BoltType) -> Cell {
    use neo4rs::BoltType as B;
    match value {
        B::Null(_) => Cell::Null,
        B::String(s) => Cell::Str(s.value.clone()),
        B::Integer(i) => Cell::Int(i.value),
        B::Boolean(b) => Cell::Bool(b.value),
        B::Float(f) => Cell::Float(f.value),
        B::List(items) => Cell::List(items.value.iter().map(bolt_cell).collect()),
        other => panic!("unexpected Bolt value {other:?}"),
    }
}

/// One value of a query's result, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// NULL.
    Null,
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A float.
    Float(f64),
    /// A list.
    List(Vec<Cell>),
}

impl Cell {
    /// Text for state comparisons; lists sorted (collected lists have no order).
    pub fn text(&self) -> String {
        match self {
            Cell::Null => "null".into(),
            Cell::Str(s) => s.clone(),
            Cell::Int(i) => i.to_string(),
            Cell::Bool(b) => b.to_string(),
            Cell::Float(f) => f.to_string(),
            Cell::List(items) => {
                let mut texts: Vec<String> = items.iter().map(Cell::text).collect();
                texts.sort_by_key(|text| (text.len(), text.clone()));
                format!("[{}]", texts.join(","))
            }
        }
    }

    /// The value as JSON (strings quoted, so whitespace shows).
    pub fn json(&self) -> serde_json::Value {
        match self {
            Cell::Null => serde_json::Value::Null,
            Cell::Str(s) => serde_json::Value::String(s.clone()),
            Cell::Int(i) => serde_json::Value::from(*i),
            Cell::Bool(b) => serde_json::Value::Bool(*b),
            Cell::Float(f) => serde_json::Value::from(*f),
            Cell::List(items) => serde_json::Value::Array(items.iter().map(Cell::json).collect()),
        }
    }
}

fn parse_cell(value: &redis::Value) -> Cell {
    use redis::Value as V;
    let V::Array(pair) = value else { panic!("compact cell expected, got {value:?}") };
    let text = |v: &V| match v {
        V::BulkString(b) => String::from_utf8(b.clone()).expect("FalkorDB returned invalid UTF-8"),
        V::SimpleString(s) => s.clone(),
        other => panic!("text expected, got {other:?}"),
    };
    match (&pair[0], &pair[1]) {
        (V::Int(1), _) => Cell::Null,
        (V::Int(2), v) => Cell::Str(text(v)),
        (V::Int(3), V::Int(i)) => Cell::Int(*i),
        (V::Int(4), v) => Cell::Bool(text(v) == "true"),
        (V::Int(5), v) => Cell::Float(text(v).parse().unwrap()),
        (V::Int(6), V::Array(items)) => Cell::List(items.iter().map(parse_cell).collect()),
        other => panic!("unexpected compact cell {other:?}"),
    }
}

/// The rows of a read query on FalkorDB graph `graph`, typed.
pub async fn graph_rows(
    connection: &mut redis::aio::MultiplexedConnection,
    graph: &str,
    query: &str,
) -> Vec<Vec<Cell>> {
    let reply: redis::Value =
        redis::cmd("GRAPH.QUERY").arg(graph).arg(query).arg("--compact").query_async(connection).await.unwrap();
    let redis::Value::Array(parts) = reply else { panic!("unexpected reply {reply:?}") };
    if parts.len() < 3 {
        return Vec::new();
    }
    let redis::Value::Array(rows) = &parts[1] else { panic!("rows expected") };
    rows.iter()
        .map(|row| match row {
            redis::Value::Array(cells) => cells.iter().map(parse_cell).collect(),
            other => panic!("row expected, got {other:?}"),
        })
        .collect()
}

/// A connection to FalkorDB with graph `graph` deleted.
pub async fn falkordb(url: &str, graph: &str) -> redis::aio::MultiplexedConnection {
    let mut connection = redis_connection(url).await;
    let _ = redis::cmd("GRAPH.DELETE").arg(graph).query_async::<redis::Value>(&mut connection).await;
    connection
}
