//! The MongoDB sink: connection, batch apply, checkpoint.
//!
//! One call writes, in this order:
//!
//! ```text
//! rounds of row statements ──(each round: the old documents of key moves that carry
//!        │                    unchanged TOAST values read (one `find` per collection),
//!        │                    then one unordered `insert`, `update` and `delete` command
//!        │                    per collection, sent concurrently; then the upserts of
//!        │                    inserts refused as duplicate keys)
//!        │  concurrently with
//! aggregates: resets (after a truncate) → find the groups' versions → `$inc` commands
//!        ▼
//! checkpoint document {_id: sink name, lsn}   (only when both succeeded)
//! ```
//!
//! so a batch without repeated keys and without aggregates costs two round trips, and the
//! checkpoint never gets ahead of the data: after a crash the store holds at least
//! everything up to its checkpoint, and the version guards make re-applying the rest
//! harmless. Commands are serialized once, as raw BSON, and split below
//! [`MAX_COMMAND_BYTES`] so no command reaches the server's 16 MiB limit.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bson::{doc, Bson, Document, RawArrayBuf, RawDocumentBuf};
use futures_util::future::try_join_all;
use futures_util::TryStreamExt;
use mongodb::options::{ClientOptions, Tls, TlsOptions};
use mongodb::Client;
use pgfanout_core::{ChangeRef, Lsn, MappingConfig, Sink, SinkError, TableName};
use tokio::sync::OnceCell;

use crate::config::MongoSinkConfig;
use crate::encode::{EncodedBatch, MongoEncoder, Namespace, NewRow, Statement, Write};
use crate::error::MongoSinkError;

/// Largest command the sink sends, in bytes of statements (the server takes 16 MiB per
/// document plus some headroom for the command itself; half keeps a margin).
pub const MAX_COMMAND_BYTES: usize = 8 * 1024 * 1024;
/// Most statements in one command (the server's `maxWriteBatchSize`).
const MAX_COMMAND_STATEMENTS: usize = 100_000;
/// Most `_id`s in one `find` of old documents (keeps the filter far below 16 MiB).
const MAX_IDS_PER_FIND: usize = 10_000;
/// Server error code of a duplicate key.
const DUPLICATE_KEY: i32 = 11000;

/// How a command's write errors are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Row writes: a duplicate key on a guarded upsert means "already newer".
    Rows,
    /// Aggregate compare-and-set increments: every statement must match (or upsert).
    Increments,
    /// Aggregate resets: any match count is fine.
    Resets,
}

/// The write command a statement goes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Verb {
    Insert,
    Update,
    Delete,
}

impl Verb {
    /// The command's name and the field that lists its statements.
    fn fields(self) -> (&'static str, &'static str) {
        match self {
            Verb::Insert => ("insert", "documents"),
            Verb::Update => ("update", "updates"),
            Verb::Delete => ("delete", "deletes"),
        }
    }
}

/// One write command for one collection, as it goes on the wire.
struct Command {
    namespace: Arc<Namespace>,
    verb: Verb,
    statements: RawArrayBuf,
    count: usize,
    bytes: usize,
    /// For an `insert`: the guarded upsert of each document, by position.
    fallbacks: Vec<NewRow>,
}

impl Command {
    fn new(namespace: Arc<Namespace>, verb: Verb) -> Self {
        Command { namespace, verb, statements: RawArrayBuf::new(), count: 0, bytes: 0, fallbacks: Vec::new() }
    }
}

/// Keeps MongoDB documents equal to PostgreSQL rows.
pub struct MongoSink {
    config: MongoSinkConfig,
    client: OnceCell<Client>,
    encoder: MongoEncoder,
}

impl MongoSink {
    /// Builds the sink from validated config; does not connect yet.
    pub fn new(config: MongoSinkConfig) -> Self {
        let encoder = MongoEncoder::new(&config);
        MongoSink { config, client: OnceCell::new(), encoder }
    }

    /// The source tables this sink receives, with their mapping.
    pub fn tables(&self) -> Vec<(TableName, MappingConfig)> {
        self.config.tables.iter().map(|t| (TableName::parse(&t.source), t.mapping())).collect()
    }

    /// Source tables with running aggregates: they need `REPLICA IDENTITY FULL`.
    pub fn tables_needing_full_identity(&self) -> Vec<TableName> {
        self.config.tables.iter().filter(|t| !t.aggregates.is_empty()).map(|t| TableName::parse(&t.source)).collect()
    }

    /// The sink's name, for errors.
    pub(crate) fn name_for_errors(&self) -> &str {
        &self.config.name
    }

    /// The encoder (pure mapping of rows to documents).
    pub(crate) fn encoder(&self) -> &MongoEncoder {
        &self.encoder
    }

    /// The client; the driver connects lazily and reconnects by itself, so it is built once.
    pub(crate) async fn client(&self) -> Result<&Client, MongoSinkError> {
        self.client
            .get_or_try_init(|| async {
                let what = "parsing the connection string".to_owned();
                let mut options = ClientOptions::parse(&self.config.url)
                    .await
                    .map_err(|source| MongoSinkError::Driver { what, source })?;
                options.app_name.get_or_insert_with(|| format!("pgfanout:{}", self.config.name));
                // Fail a batch (and retry it) rather than wait 30 s for an absent server.
                options.server_selection_timeout.get_or_insert(std::time::Duration::from_secs(5));
                options.connect_timeout.get_or_insert(std::time::Duration::from_secs(5));
                if let Some(tls) = &self.config.tls {
                    // Read first so that an unusable file is named, not a handshake failure.
                    tls.read().map_err(MongoSinkError::Tls)?;
                    let tls_options = TlsOptions::builder()
                        .ca_file_path(tls.ca_file.clone())
                        .cert_key_file_path(tls.cert_file.clone())
                        .build();
                    options.tls = Some(Tls::Enabled(tls_options));
                }
                let what = "creating the client".to_owned();
                Client::with_options(options).map_err(|source| MongoSinkError::Driver { what, source })
            })
            .await
    }

    pub(crate) async fn timed<T>(
        &self,
        what: impl Fn() -> String,
        future: impl std::future::IntoFuture<Output = mongodb::error::Result<T>>,
    ) -> Result<T, MongoSinkError> {
        let timeout = self.config.response_timeout();
        match tokio::time::timeout(timeout, future.into_future()).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(MongoSinkError::Driver { what: what(), source }),
            Err(_) => Err(MongoSinkError::Timeout { what: what(), timeout }),
        }
    }

    fn checkpoint_namespace(&self) -> String {
        format!("{}.{}", self.config.database, self.config.checkpoint_collection)
    }

    async fn load(&self) -> Result<Option<Lsn>, MongoSinkError> {
        let client = self.client().await?;
        let collection =
            client.database(&self.config.database).collection::<Document>(&self.config.checkpoint_collection);
        let found = self
            .timed(|| "reading the checkpoint".into(), collection.find_one(doc! { "_id": &self.config.name }))
            .await?;
        let Some(document) = found else { return Ok(None) };
        let bad = |value: String| MongoSinkError::BadCheckpoint {
            namespace: self.checkpoint_namespace(),
            id: self.config.name.clone(),
            value,
        };
        match document.get("lsn") {
            Some(Bson::String(text)) => text.parse::<Lsn>().map(Some).map_err(|_| bad(text.clone())),
            // Only the source record, stored at start: nothing applied yet.
            None => Ok(None),
            other => Err(bad(format!("{other:?}"))),
        }
    }

    async fn load_source_record(&self) -> Result<Option<String>, MongoSinkError> {
        let client = self.client().await?;
        let collection =
            client.database(&self.config.database).collection::<Document>(&self.config.checkpoint_collection);
        let found = self
            .timed(|| "reading the source record".into(), collection.find_one(doc! { "_id": &self.config.name }))
            .await?;
        // The record is the `source` field of the checkpoint document.
        match found.as_ref().and_then(|document| document.get("source")) {
            None => Ok(None),
            Some(Bson::String(record)) => Ok(Some(record.clone())),
            Some(other) => Err(MongoSinkError::BadCheckpoint {
                namespace: self.checkpoint_namespace(),
                id: self.config.name.clone(),
                value: format!("{other:?}"),
            }),
        }
    }

    async fn store_source_record(&self, record: &str) -> Result<(), MongoSinkError> {
        let client = self.client().await?;
        let collection =
            client.database(&self.config.database).collection::<Document>(&self.config.checkpoint_collection);
        let update = doc! { "$set": { "source": record } };
        self.timed(
            || "storing the source record".into(),
            collection.update_one(doc! { "_id": &self.config.name }, update).upsert(true),
        )
        .await
        .map(drop)
    }

    async fn write(&self, changes: &[ChangeRef<'_>], checkpoint: Option<Lsn>) -> Result<(), MongoSinkError> {
        let batch = self.encoder.encode(changes)?;
        let client = self.client().await?;
        let EncodedBatch { rounds, aggregates } = batch;
        let round_count = rounds.len();
        let rows = async {
            let mut commands = 0;
            for round in rounds {
                let round = self.fill_carried(client, round).await?;
                commands += self.send(client, round, Purpose::Rows).await?;
            }
            Ok::<usize, MongoSinkError>(commands)
        };
        let aggregates = async {
            if aggregates.is_empty() {
                return Ok::<usize, MongoSinkError>(0);
            }
            let version_field = self.encoder.version_field();
            let mut commands = self.send(client, aggregates.resets(version_field), Purpose::Resets).await?;
            let reads = aggregates.groups().map(|(namespace, groups)| self.read_versions(client, namespace, groups));
            commands += aggregates.groups().count();
            let stored: HashMap<_, _> = try_join_all(reads).await?.into_iter().collect();
            let increments = aggregates.increments(&stored, version_field).map_err(|reason| {
                crate::encode::EncodeError { table: "(aggregate)".into(), version: String::new(), reason }
            })?;
            commands += self.send(client, increments, Purpose::Increments).await?;
            Ok(commands)
        };
        let (row_commands, aggregate_commands) = tokio::try_join!(rows, aggregates)?;
        if let Some(lsn) = checkpoint {
            let statement = doc! {
                "q": { "_id": &self.config.name },
                "u": { "$set": { "lsn": lsn.to_string(), "updated_at": bson::DateTime::now() } },
                "upsert": true,
            };
            let namespace = Arc::new(Namespace {
                database: self.config.database.clone(),
                collection: self.config.checkpoint_collection.clone(),
            });
            self.send(client, vec![Write { namespace, statement: Statement::Update(statement) }], Purpose::Resets)
                .await?;
        }
        tracing::debug!(
            sink = %self.config.name,
            changes = changes.len(),
            rounds = round_count,
            row_commands,
            aggregate_commands,
            checkpoint = checkpoint.is_some(),
            "batch written"
        );
        Ok(())
    }

    /// The round with its carrying upserts filled in from the documents their rows move
    /// away from (read just now, after the earlier rounds: see the encoder's "Key moves").
    async fn fill_carried(&self, client: &Client, round: Vec<Write>) -> Result<Vec<Write>, MongoSinkError> {
        let mut sources: HashMap<Arc<Namespace>, Vec<Bson>> = HashMap::new();
        for write in &round {
            if let Statement::CarryingUpdate(carry) = &write.statement {
                sources.entry(Arc::clone(&write.namespace)).or_default().push(carry.from.clone());
            }
        }
        if sources.is_empty() {
            return Ok(round);
        }
        let reads = sources.iter().flat_map(|(namespace, ids)| {
            ids.chunks(MAX_IDS_PER_FIND).map(move |ids| self.read_documents(client, namespace, ids.to_vec()))
        });
        let found: HashMap<(Arc<Namespace>, String), Document> =
            try_join_all(reads).await?.into_iter().flatten().collect();
        let version_field = self.encoder.version_field();
        let filled = round
            .into_iter()
            .map(|Write { namespace, statement }| match statement {
                Statement::CarryingUpdate(carry) => {
                    let old = found.get(&(Arc::clone(&namespace), crate::encode::canonical(&carry.from)));
                    Write { namespace, statement: Statement::Update(carry.fill(old, version_field)) }
                }
                statement => Write { namespace, statement },
            })
            .collect();
        Ok(filled)
    }

    /// The documents with `ids` in `namespace`, keyed by namespace and canonical `_id`.
    async fn read_documents(
        &self,
        client: &Client,
        namespace: &Arc<Namespace>,
        ids: Vec<Bson>,
    ) -> Result<Vec<((Arc<Namespace>, String), Document)>, MongoSinkError> {
        let collection = client.database(&namespace.database).collection::<Document>(&namespace.collection);
        let what = || format!("reading the old documents of moved rows from {namespace}");
        let cursor = self.timed(what, collection.find(doc! { "_id": { "$in": ids } })).await?;
        let documents: Vec<Document> = self.timed(what, cursor.try_collect()).await?;
        Ok(documents
            .into_iter()
            .filter_map(|document| {
                let id = crate::encode::canonical(document.get("_id")?);
                Some(((Arc::clone(namespace), id), document))
            })
            .collect())
    }

    /// The version stored in each of `groups`' documents.
    async fn read_versions(
        &self,
        client: &Client,
        namespace: &Arc<Namespace>,
        groups: Vec<Bson>,
    ) -> Result<(Arc<Namespace>, HashMap<String, Option<String>>), MongoSinkError> {
        let version_field = self.encoder.version_field();
        let collection = client.database(&namespace.database).collection::<Document>(&namespace.collection);
        let what = || format!("reading aggregate versions from {namespace}");
        let cursor = self
            .timed(what, collection.find(doc! { "_id": { "$in": groups } }).projection(doc! { version_field: 1 }))
            .await?;
        let documents: Vec<Document> = self.timed(what, cursor.try_collect()).await?;
        let versions = documents
            .into_iter()
            .filter_map(|document| {
                let version = document.get_str(version_field).ok().map(str::to_owned);
                Some((crate::encode::canonical(document.get("_id")?), version))
            })
            .collect();
        Ok((Arc::clone(namespace), versions))
    }

    /// Sends `writes` as one `insert`, one `update` and one `delete` command per collection
    /// (split by size), all concurrently, then the upserts of inserts refused as duplicate
    /// keys the same way; returns how many commands were sent.
    async fn send(&self, client: &Client, writes: Vec<Write>, purpose: Purpose) -> Result<usize, MongoSinkError> {
        let mut writes = writes;
        let mut sent = 0;
        while !writes.is_empty() {
            let commands = Self::commands(writes)?;
            sent += commands.len();
            let refused =
                try_join_all(commands.into_iter().map(|command| self.command(client, command, purpose))).await?;
            writes = refused.into_iter().flatten().collect();
        }
        Ok(sent)
    }

    /// `writes` grouped by collection and verb into commands below the size limits.
    fn commands(writes: Vec<Write>) -> Result<Vec<Command>, MongoSinkError> {
        let mut open: HashMap<(Arc<Namespace>, Verb), Command> = HashMap::new();
        let mut commands = Vec::new();
        for write in writes {
            let serialize = |statement: &Document| {
                RawDocumentBuf::from_document(statement).map_err(|err| crate::encode::EncodeError {
                    table: write.namespace.to_string(),
                    version: String::new(),
                    reason: format!("statement does not serialize: {err}"),
                })
            };
            let (verb, raw, fallback) = match write.statement {
                Statement::InsertOrUpsert(new_row) => (Verb::Insert, serialize(&new_row.document)?, Some(new_row)),
                Statement::Update(statement) => (Verb::Update, serialize(&statement)?, None),
                Statement::Delete(statement) => (Verb::Delete, serialize(&statement)?, None),
                // Filled by `fill_carried` before rounds are sent; unfilled, the upsert
                // leaves the carried fields alone as it does any unchanged TOAST value.
                Statement::CarryingUpdate(carry) => (Verb::Update, serialize(&carry.update)?, None),
            };
            let namespace = write.namespace;
            let command = open
                .entry((Arc::clone(&namespace), verb))
                .or_insert_with(|| Command::new(Arc::clone(&namespace), verb));
            let bytes = raw.as_bytes().len();
            if command.count > 0
                && (command.bytes + bytes > MAX_COMMAND_BYTES || command.count == MAX_COMMAND_STATEMENTS)
            {
                commands.push(std::mem::replace(command, Command::new(namespace, verb)));
            }
            command.bytes += bytes;
            command.count += 1;
            command.statements.push(raw);
            command.fallbacks.extend(fallback);
        }
        commands.extend(open.into_values());
        Ok(commands)
    }

    /// Sends one command; returns the upserts of the inserts it refused as duplicate keys.
    async fn command(&self, client: &Client, command: Command, purpose: Purpose) -> Result<Vec<Write>, MongoSinkError> {
        let Command { namespace, verb, statements, count, fallbacks, .. } = command;
        let (name, list) = verb.fields();
        // Row upserts refused as duplicates are sent again for documents without a version.
        let sent = (verb == Verb::Update && purpose == Purpose::Rows).then(|| statements.clone());
        let mut body = RawDocumentBuf::new();
        body.append(name, namespace.collection.as_str());
        body.append(list, statements);
        body.append("ordered", false);
        let what = || format!("{name} of {count} statements on {namespace}");
        let reply = self.timed(what, client.database(&namespace.database).run_raw_command(body)).await?;
        let rejected = |code, message: &str| MongoSinkError::Rejected {
            namespace: namespace.to_string(),
            code,
            message: message.to_owned(),
        };
        if let Ok(concern) = reply.get_document("writeConcernError") {
            // "Not yet durable as asked": reported as WriteConcernFailed (64), which retries.
            return Err(rejected(64, concern.get_str("errmsg").unwrap_or("")));
        }
        let mut duplicates = Vec::new();
        if let Ok(errors) = reply.get_array("writeErrors") {
            for error in errors.iter().filter_map(Bson::as_document) {
                let code = error.get_i32("code").unwrap_or(0);
                match (code, purpose) {
                    // An insert whose `_id` is taken, or a guarded upsert of a document that
                    // is newer or holds no version.
                    (DUPLICATE_KEY, Purpose::Rows) => {
                        duplicates.push(error.get_i32("index").ok().and_then(|index| usize::try_from(index).ok()))
                    }
                    (DUPLICATE_KEY, Purpose::Increments) => {
                        return Err(MongoSinkError::AggregateConflict { namespace: namespace.to_string() })
                    }
                    _ => return Err(rejected(code, error.get_str("errmsg").unwrap_or(""))),
                }
            }
        }
        if purpose == Purpose::Increments {
            let matched = reply.get_i32("n").map(i64::from).or_else(|_| reply.get_i64("n")).unwrap_or(0);
            if usize::try_from(matched).unwrap_or(0) < count {
                return Err(MongoSinkError::AggregateConflict { namespace: namespace.to_string() });
            }
        }
        if duplicates.is_empty() {
            return Ok(Vec::new());
        }
        if verb == Verb::Insert {
            let mut fallbacks: Vec<Option<NewRow>> = fallbacks.into_iter().map(Some).collect();
            return duplicates
                .into_iter()
                .map(|index| {
                    let new_row = index.and_then(|index| fallbacks.get_mut(index)).and_then(Option::take);
                    let new_row = new_row.ok_or_else(|| crate::encode::EncodeError {
                        table: namespace.to_string(),
                        version: String::new(),
                        reason: "a duplicate-key reply to an insert the sink cannot map back to its document".into(),
                    })?;
                    Ok(Write { namespace: Arc::clone(&namespace), statement: Statement::Update(new_row.upsert()) })
                })
                .collect();
        }
        if let Some(sent) = sent {
            tracing::trace!(sink = %self.config.name, namespace = %namespace, duplicates = duplicates.len(), "stale writes skipped");
            self.write_unversioned(client, &namespace, &sent, &duplicates).await?;
        }
        Ok(Vec::new())
    }

    /// Sends the upserts at `indexes` of `sent` (refused as duplicate keys) again, filtered
    /// by `{_id, v: null}` and without upsert: a document without a version takes the row,
    /// a newer one matches nothing and stays (see the encoder's module docs).
    async fn write_unversioned(
        &self,
        client: &Client,
        namespace: &Namespace,
        sent: &RawArrayBuf,
        indexes: &[Option<usize>],
    ) -> Result<(), MongoSinkError> {
        let malformed = |reason: &str| crate::encode::EncodeError {
            table: namespace.to_string(),
            version: String::new(),
            reason: format!("a duplicate-key reply the sink cannot map back to its statement: {reason}"),
        };
        let statements: Vec<&bson::RawDocument> =
            sent.into_iter().filter_map(|element| element.ok().and_then(|value| value.as_document())).collect();
        let mut retries = RawArrayBuf::new();
        for index in indexes {
            let statement = index.and_then(|index| statements.get(index)).ok_or_else(|| malformed("no index"))?;
            let mut statement: Document = (*statement).try_into().map_err(|_| malformed("unreadable statement"))?;
            let id = statement
                .get_document("q")
                .ok()
                .and_then(|filter| filter.get("_id"))
                .cloned()
                .ok_or_else(|| malformed("no _id in the filter"))?;
            statement.insert("q", crate::encode::unversioned(&id, self.encoder.version_field()));
            statement.remove("upsert");
            retries.push(RawDocumentBuf::from_document(&statement).map_err(|_| malformed("unserializable"))?);
        }
        let mut command = RawDocumentBuf::new();
        command.append("update", namespace.collection.as_str());
        command.append("updates", retries);
        command.append("ordered", false);
        let what = || format!("update of {} documents without a version on {namespace}", indexes.len());
        let reply = self.timed(what, client.database(&namespace.database).run_raw_command(command)).await?;
        let first_error = reply
            .get_array("writeErrors")
            .ok()
            .and_then(|errors| errors.iter().filter_map(Bson::as_document).next().cloned());
        if let Some(error) = first_error {
            return Err(MongoSinkError::Rejected {
                namespace: namespace.to_string(),
                code: error.get_i32("code").unwrap_or(0),
                message: error.get_str("errmsg").unwrap_or("").to_owned(),
            });
        }
        if let Ok(concern) = reply.get_document("writeConcernError") {
            return Err(MongoSinkError::Rejected {
                namespace: namespace.to_string(),
                code: 64,
                message: concern.get_str("errmsg").unwrap_or("").to_owned(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for MongoSink {
    fn name(&self) -> &str {
        &self.config.name
    }

    async fn load_checkpoint(&self) -> Result<Option<Lsn>, SinkError> {
        let name = &self.config.name;
        self.load().await.map_err(|err| err.into_sink_error(name, "reading the checkpoint".into()))
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
        // The progress is the `snapshot` field of the checkpoint document.
        let read = async {
            let client = self.client().await?;
            let collection =
                client.database(&self.config.database).collection::<Document>(&self.config.checkpoint_collection);
            self.timed(
                || "reading the snapshot progress".into(),
                collection.find_one(doc! { "_id": &self.config.name }),
            )
            .await
        };
        let found =
            read.await.map_err(|err| err.into_sink_error(&self.config.name, "reading the snapshot progress".into()))?;
        Ok(found.as_ref().and_then(|document| document.get_str("snapshot").ok()).map(str::to_owned))
    }

    async fn store_snapshot_progress(&self, progress: &str) -> Result<(), SinkError> {
        let write = async {
            let client = self.client().await?;
            let collection =
                client.database(&self.config.database).collection::<Document>(&self.config.checkpoint_collection);
            let update = doc! { "$set": { "snapshot": progress } };
            self.timed(
                || "storing the snapshot progress".into(),
                collection.update_one(doc! { "_id": &self.config.name }, update).upsert(true),
            )
            .await
            .map(drop)
        };
        write.await.map_err(|err| err.into_sink_error(&self.config.name, "storing the snapshot progress".into()))
    }

    async fn apply(&self, changes: &[ChangeRef<'_>], checkpoint: Option<Lsn>) -> Result<(), SinkError> {
        let name = &self.config.name;
        let context = pgfanout_core::describe_apply(changes, checkpoint);
        self.write(changes, checkpoint).await.map_err(|err| err.into_sink_error(name, context))
    }

    async fn wipe(
        &self,
        table: &pgfanout_core::TableSchema,
        older_than: Option<pgfanout_core::Version>,
    ) -> Result<u64, SinkError> {
        self.wipe_table(table, older_than).await
    }

    fn table_problems(&self, table: &pgfanout_core::TableSchema) -> Vec<String> {
        self.encoder.table_problems(table)
    }

    fn read_back(&self) -> Option<&dyn pgfanout_core::ReadBack> {
        Some(self)
    }
}
