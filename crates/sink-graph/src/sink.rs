//! The graph sink: transport choice, index creation, batch apply, checkpoint.
//!
//! One call is one transaction of the store (FalkorDB: `MULTI … EXEC`;
//! Bolt: one statement of unit subqueries, or `BEGIN … COMMIT` for many)
//! holding the batch's statements ([`crate::encode`]).
//! The checkpoint node is written after the batch: in the same Bolt
//! transaction (Neo4j rolls a failed one back whole), and in a second round
//! trip for FalkorDB, whose `EXEC` keeps running the queued queries after one
//! fails — a checkpoint queued behind a failed batch would claim it applied.
//!
//! Indexes on key properties are created the first time a batch needs them,
//! before its writes, and remembered per process. On Neo4j each node key
//! the statements `MERGE` by is also a uniqueness constraint (made before the
//! indexes): without one, two lanes merging one key at once each create the
//! node. FalkorDB runs write queries one at a time, so it needs none.
//!
//! Lanes: FalkorDB runs write queries one at a time, so `lanes = 1` is the
//! faster setting there (benches/README.md); with Neo4j, lanes commit side
//! by side. Every change that touches a node — its own row's, or one its
//! relationships `MERGE` — shares a lane with every other change touching
//! it ([`Sink::related_lane_keys`]), so a delete never races a `MERGE` of
//! the same node and two lanes never create one node twice.

use std::collections::HashSet;
use std::hash::BuildHasher as _;
use std::sync::Mutex;

use async_trait::async_trait;
use pgfanout_core::{ChangeRef, Lsn, MappingConfig, Sink, SinkError, TableName};
use secrecy::ExposeSecret;

use crate::bolt::BoltTransport;
use crate::config::{GraphSinkConfig, Transport};
use crate::encode::{ident, GraphEncoder, IndexSpec, NodeKey, Statement};
use crate::error::GraphSinkError;
use crate::falkordb::FalkorTransport;
use crate::value::GraphValue;

enum Backend {
    Falkor(Box<FalkorTransport>),
    Bolt(BoltTransport),
}

impl Backend {
    async fn run_all(&self, statements: &[Statement]) -> Result<(), GraphSinkError> {
        match self {
            Backend::Falkor(falkor) => falkor.run_all(statements).await,
            Backend::Bolt(bolt) => bolt.run_all(statements).await,
        }
    }

    async fn ensure_index(&self, index: &IndexSpec) -> Result<(), GraphSinkError> {
        match self {
            Backend::Falkor(falkor) => falkor.ensure_index(index).await,
            Backend::Bolt(bolt) => bolt.ensure_index(index).await,
        }
    }

    async fn first_column(&self, statement: &Statement) -> Result<Vec<Option<String>>, GraphSinkError> {
        match self {
            Backend::Falkor(falkor) => Ok(falkor
                .query_strings(statement)
                .await?
                .into_iter()
                .map(|row| row.into_iter().next().flatten())
                .collect()),
            Backend::Bolt(bolt) => bolt.query_first_column(statement).await,
        }
    }
}

/// Keeps a property graph equal to PostgreSQL rows.
pub struct GraphSink {
    config: GraphSinkConfig,
    encoder: GraphEncoder,
    backend: Backend,
    /// Indexes created (or found) by this process.
    indexed: Mutex<HashSet<IndexSpec>>,
    /// Node keys made unique (or found so) by this process (Neo4j only).
    constrained: Mutex<HashSet<NodeKey>>,
}

impl GraphSink {
    /// Builds the sink from validated config (with its password resolved);
    /// does not connect yet.
    pub fn new(config: GraphSinkConfig) -> Result<Self, GraphSinkError> {
        let backend = match config.transport {
            Transport::Falkordb => Backend::Falkor(Box::new(FalkorTransport::new(
                &config.url,
                config.graph_key(),
                format!("pgfanout:{}", config.name),
                config.response_timeout(),
                config.tls.as_ref(),
            )?)),
            Transport::Bolt => Backend::Bolt(BoltTransport::new(
                &config.url,
                config.user.as_deref(),
                config.password.as_ref().map(|secret| secret.expose_secret()),
                config.graph.clone(),
                config.response_timeout(),
                config.tls.as_ref(),
            )?),
        };
        let encoder = GraphEncoder::new(&config);
        Ok(GraphSink {
            config,
            encoder,
            backend,
            indexed: Mutex::new(HashSet::new()),
            constrained: Mutex::new(HashSet::new()),
        })
    }

    /// The validated config.
    pub(crate) fn config(&self) -> &GraphSinkConfig {
        &self.config
    }

    /// Runs `statement`; the first column of each row it returns, as text.
    pub(crate) async fn first_column_of(&self, statement: &Statement) -> Result<Vec<Option<String>>, GraphSinkError> {
        self.backend.first_column(statement).await
    }

    /// The source tables this sink receives, with their mapping.
    pub fn tables(&self) -> Vec<(TableName, MappingConfig)> {
        self.config.tables.iter().map(|t| (TableName::parse(&t.source), t.mapping())).collect()
    }

    /// The Cypher layer (for reading back: `verify`).
    pub(crate) fn encoder(&self) -> &GraphEncoder {
        &self.encoder
    }

    /// Runs `statements` in one transaction of the store (`verify --repair`
    /// of derived relationships, which have no row to apply).
    pub(crate) async fn run_statements(&self, statements: &[Statement]) -> Result<(), GraphSinkError> {
        self.backend.run_all(statements).await
    }

    /// Runs a read statement returning one column, its values as text.
    pub(crate) async fn query_column(&self, statement: &Statement) -> Result<Vec<Option<String>>, GraphSinkError> {
        self.backend.first_column(statement).await
    }

    async fn ensure_indexes(&self, indexes: &[IndexSpec], node_keys: &[NodeKey]) -> Result<(), GraphSinkError> {
        if !self.config.create_indexes {
            return Ok(());
        }
        if let Backend::Bolt(bolt) = &self.backend {
            let missing: Vec<NodeKey> = {
                let known = self.constrained.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                node_keys.iter().filter(|key| !known.contains(*key)).cloned().collect()
            };
            for key in missing {
                bolt.ensure_unique(&key, &self.config.name).await?;
                self.constrained.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(key);
            }
        }
        let missing: Vec<IndexSpec> = {
            let known = self.indexed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            indexes.iter().filter(|index| !known.contains(*index)).cloned().collect()
        };
        for index in missing {
            self.backend.ensure_index(&index).await?;
            tracing::debug!(sink = %self.config.name, index = ?index, "index ready");
            self.indexed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(index);
        }
        Ok(())
    }

    async fn load(&self) -> Result<Option<Lsn>, GraphSinkError> {
        self.ensure_indexes(&[self.encoder.checkpoint_index()], &[self.encoder.checkpoint_key()]).await?;
        let stored = self.backend.first_column(&self.encoder.load_checkpoint()).await?;
        match stored.into_iter().next().flatten() {
            None => Ok(None),
            Some(value) => value
                .parse::<Lsn>()
                .map(Some)
                .map_err(|_| GraphSinkError::BadCheckpoint { sink: self.config.name.clone(), value }),
        }
    }

    /// The source record is the `source` property of the checkpoint node
    /// (the checkpoint itself is its `lsn`).
    fn source_statement(&self, cypher: &str, mut params: Vec<(String, GraphValue)>) -> Statement {
        params.push(("sink".into(), GraphValue::String(self.config.name.clone())));
        Statement { cypher: cypher.replace("{label}", &ident(&self.config.checkpoint_label)), params }
    }

    async fn load_source_record(&self) -> Result<Option<String>, GraphSinkError> {
        self.ensure_indexes(&[self.encoder.checkpoint_index()], &[self.encoder.checkpoint_key()]).await?;
        let statement = self.source_statement("MATCH (c:{label} {sink: $sink}) RETURN c.source", Vec::new());
        Ok(self.backend.first_column(&statement).await?.into_iter().next().flatten())
    }

    async fn store_source_record(&self, record: &str) -> Result<(), GraphSinkError> {
        let statement = self.source_statement(
            "MERGE (c:{label} {sink: $sink}) SET c.source = $record",
            vec![("record".into(), GraphValue::String(record.to_owned()))],
        );
        self.backend.run_all(std::slice::from_ref(&statement)).await
    }

    async fn write(&self, changes: &[ChangeRef<'_>], checkpoint: Option<Lsn>) -> Result<(), GraphSinkError> {
        let encoded = self.encoder.encode(changes)?;
        self.ensure_indexes(&encoded.indexes, &encoded.node_keys).await?;
        let mut statements = encoded.statements;
        let checkpoint = checkpoint.map(|lsn| self.encoder.store_checkpoint(lsn));
        let has_checkpoint = checkpoint.is_some();
        match (&self.backend, checkpoint) {
            (Backend::Bolt(_), Some(checkpoint)) => {
                statements.push(checkpoint);
                self.backend.run_all(&statements).await?;
            }
            (_, checkpoint) => {
                self.backend.run_all(&statements).await?;
                if let Some(checkpoint) = checkpoint {
                    self.backend.run_all(std::slice::from_ref(&checkpoint)).await?;
                }
            }
        }
        // What the benchmarks count (benches/e2e/graph_sink.sh): Bolt sends
        // up to MAX_COMBINED statements as one auto-commit RUN (its DISCARD
        // pipelined behind it), more as BEGIN, each RUN and COMMIT, a round
        // trip each; FalkorDB a MULTI/EXEC, and the checkpoint's.
        let round_trips = match &self.backend {
            Backend::Bolt(_) if statements.len() <= crate::bolt::MAX_COMBINED => usize::from(!statements.is_empty()),
            Backend::Bolt(_) => statements.len() + 2,
            Backend::Falkor(_) => usize::from(!statements.is_empty()) + usize::from(has_checkpoint),
        };
        tracing::debug!(
            sink = %self.config.name,
            changes = changes.len(),
            statements = statements.len(),
            round_trips,
            "batch written"
        );
        Ok(())
    }
}

#[async_trait]
impl Sink for GraphSink {
    fn name(&self) -> &str {
        &self.config.name
    }

    async fn load_checkpoint(&self) -> Result<Option<Lsn>, SinkError> {
        self.load().await.map_err(|err| err.into_sink_error(&self.config.name, "reading the checkpoint".into()))
    }

    async fn load_source(&self) -> Result<Option<String>, SinkError> {
        let name = &self.config.name;
        self.load_source_record().await.map_err(|err| err.into_sink_error(name, "reading the source record".into()))
    }

    async fn store_source(&self, record: &str) -> Result<(), SinkError> {
        let name = &self.config.name;
        self.store_source_record(record)
            .await
            .map_err(|err| err.into_sink_error(name, "storing the source record".into()))
    }

    async fn load_snapshot_progress(&self) -> Result<Option<String>, SinkError> {
        // The progress is the `snapshot` property of the checkpoint node.
        let read = async {
            self.ensure_indexes(&[self.encoder.checkpoint_index()], &[self.encoder.checkpoint_key()]).await?;
            let statement = self.source_statement("MATCH (c:{label} {sink: $sink}) RETURN c.snapshot", Vec::new());
            Ok::<_, GraphSinkError>(self.backend.first_column(&statement).await?.into_iter().next().flatten())
        };
        read.await.map_err(|err| err.into_sink_error(&self.config.name, "reading the snapshot progress".into()))
    }

    async fn store_snapshot_progress(&self, progress: &str) -> Result<(), SinkError> {
        let statement = self.source_statement(
            "MERGE (c:{label} {sink: $sink}) SET c.snapshot = $progress",
            vec![("progress".into(), GraphValue::String(progress.to_owned()))],
        );
        self.backend
            .run_all(std::slice::from_ref(&statement))
            .await
            .map_err(|err| err.into_sink_error(&self.config.name, "storing the snapshot progress".into()))
    }

    async fn apply(&self, changes: &[ChangeRef<'_>], checkpoint: Option<Lsn>) -> Result<(), SinkError> {
        let context = pgfanout_core::describe_apply(changes, checkpoint);
        self.write(changes, checkpoint).await.map_err(|err| err.into_sink_error(&self.config.name, context))
    }

    fn related_lane_keys(&self, change: &ChangeRef<'_>, keys: &mut Vec<u64>) {
        let hasher = std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
        keys.extend(self.encoder.touched_nodes(change.change).iter().map(|node| hasher.hash_one(node)));
    }

    async fn wipe(
        &self,
        table: &pgfanout_core::TableSchema,
        older_than: Option<pgfanout_core::Version>,
    ) -> Result<u64, SinkError> {
        self.wipe_table(table, older_than).await
    }

    fn read_back(&self) -> Option<&dyn pgfanout_core::ReadBack> {
        Some(self)
    }

    fn table_problems(&self, table: &pgfanout_core::TableSchema) -> Vec<String> {
        self.encoder.table_problems(table)
    }
}
