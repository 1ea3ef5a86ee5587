//! The pure mapping from a batch of changes to MongoDB write statements: no I/O.
//!
//! # Row documents
//!
//! One document per row, `_id` from the key (see [`MongoTableConfig::id_columns`]). Every
//! write carries the change's [`Version`] in the version field and is guarded by it:
//!
//! ```text
//! insert         insert {_id, replicated columns…, v: V}; refused as a duplicate key,
//!                 the update below instead (see "New rows" below)
//! insert/update  update {q: {_id, v: {$lt: V}},
//!                        u: {$set: {replicated columns…, v: V}, $unset: {…}}, upsert: true}
//! delete         delete {q: {_id, v: {$lt: V}}, limit: 1} and delete {q: {_id, v: null}, limit: 1}
//!                 or, with tombstones, an update like the above setting {deleted: true}
//!                 and unsetting the table's columns
//! key change     delete (or tombstone) of the old _id, then the upsert of the new one; when
//!                 unchanged TOAST values are not in the change (identity DEFAULT): first the
//!                 upsert of the new _id carrying them over from the old document, then,
//!                 a round later, the removal of the old one (see "Key moves" below)
//! truncate       delete {q: {v: {$lt: V}}, limit: 0} (tombstones: the same as a multi update)
//! ```
//!
//! A guarded upsert whose document is already newer matches nothing and tries to insert a
//! second document with the same `_id`: the server answers with a duplicate-key error
//! (11000), which means "already applied" and is not an error. So does one whose document
//! holds no version (another application wrote it first): for those the sink sends the
//! same update again filtered by `{_id, v: null}` without upsert, which writes the row
//! into a document without a version and leaves a newer one alone. A delete is two
//! statements with these two filters, which exclude each other. The guard is spelled as
//! two filters, not one `$or`, because an `_id` equality plus one field condition is what
//! every MongoDB-wire server finds by its `_id` index (nx-27017 scans the collection for an
//! `$or`). Only replicated fields are named, so fields other applications add to a document
//! survive; unchanged TOAST values are not named at all.
//!
//! # New rows
//!
//! A row insert is first tried as a plain `insert` of the whole document, which every
//! server runs at its bulk-load rate, well above an upsert's (nx-27017 upserts at about
//! half its insert rate: it must look the document up first). The document it creates is
//! the one the guarded upsert would create. When the `_id` is taken (a replay, a snapshot
//! row behind a streamed one, a tombstone, another application's document) the server
//! refuses that document alone with a duplicate key and writes nothing; the sink then
//! sends the row's guarded upsert, which decides as it always does.
//!
//! # Rounds
//!
//! Statements are grouped into rounds: a round touches each document at most once, so its
//! statements can go unordered, and the k-th change of a key goes in round k or later.
//! A truncate is a barrier for its table: it waits for the table's earlier changes and the
//! table's later changes wait for it. A batch without repeated keys is one round.
//!
//! # Key moves that carry unchanged TOAST values
//!
//! pgoutput leaves an unchanged TOASTed column out of an update (`'u'`), and under
//! `REPLICA IDENTITY DEFAULT` the old row holds only the key: when the key changes, the
//! value lives only in the document under the old `_id`. Such a move is a
//! [`Statement::CarryingUpdate`]: the sink reads the old document just before the round
//! that upserts the new one and takes the missing fields from it, provided it holds an
//! older version than the move (a newer one is another row that took the key later). The
//! old document is removed one round later, so a crash in between leaves it in place for
//! the replay; a replay that finds it gone finds the new document already written (and
//! its guard keeps it).
//!
//! # Running aggregates
//!
//! See [`AggregatePlan`].

use std::collections::HashMap;
use std::sync::Arc;

use bson::{doc, Bson, Document};
use pgfanout_core::{ChangeOp, ChangeRef, ColumnValue, Row, TableName, TableSchema, Version};
use pgoutput::value::Numeric;
use pgoutput::{ReplicaIdentity, Value};

#[cfg(doc)]
use crate::config::MongoTableConfig;
use crate::config::{MongoSinkConfig, NullFormat};
use crate::value::{decimal_parts, ValueEncoder, ValueRejected};

/// A database and collection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace {
    /// Database name.
    pub database: String,
    /// Collection name.
    pub collection: String,
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.database, self.collection)
    }
}

/// A change that cannot be written, with what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("table {table}, change {version}: {reason}")]
pub struct EncodeError {
    /// Source table.
    pub table: String,
    /// The change's version.
    pub version: String,
    /// What is wrong.
    pub reason: String,
}

/// One statement of an `update` or `delete` command.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// `{q, u, upsert, multi}` of an `update` command.
    Update(Document),
    /// `{q, limit}` of a `delete` command.
    Delete(Document),
    /// A new row: its document is inserted as is; refused as a duplicate key, its
    /// [`NewRow::upsert`] is sent instead (see "New rows" in the module docs).
    InsertOrUpsert(NewRow),
    /// An upsert of a moved row whose `$set` lacks unchanged TOAST values: the sink fills
    /// them in from the old document ([`Carry::fill`]) and sends it as an
    /// [`Update`](Statement::Update).
    CarryingUpdate(Carry),
}

/// A row insert: the document it creates, and what its guarded upsert needs besides.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRow {
    /// The whole document, `_id` first, then the upsert's `$set` (version included).
    pub document: Document,
    /// The upsert's `$unset` (NULLs written as absent, the deleted mark), which a new
    /// document lacks anyway.
    pub unset: Document,
    /// The upsert's filter: the document is older than the insert.
    pub guard: Document,
}

impl NewRow {
    /// The guarded upsert `{q, u, upsert}` writing the same row into an existing document,
    /// for when the insert is refused as a duplicate key.
    pub fn upsert(self) -> Document {
        let mut set = self.document;
        set.remove("_id");
        upsert_statement(self.guard, set, self.unset)
    }
}

/// `{q: guard, u: {$set, $unset}, upsert: true}`, without an empty `$unset`.
fn upsert_statement(guard: Document, set: Document, unset: Document) -> Document {
    let mut update = doc! { "$set": set };
    if !unset.is_empty() {
        update.insert("$unset", unset);
    }
    doc! { "q": guard, "u": update, "upsert": true }
}

/// A key move's upsert and where its unchanged TOAST values are (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Carry {
    /// `_id` of the document the row moves away from.
    pub from: Bson,
    /// The fields to take from it (the columns the change left out).
    pub fields: Vec<String>,
    /// The move's version: only an older old document is read from.
    pub version: String,
    /// The upsert `{q, u, upsert}` without those fields.
    pub update: Document,
}

impl Carry {
    /// The upsert with the fields `old` holds (the document under [`Carry::from`], when
    /// found) in its `$set`. An old document that is missing, holds no version or a version
    /// not older than the move gives nothing: a replay after the old document went finds
    /// the new one already written, and the upsert's guard leaves it alone.
    pub fn fill(self, old: Option<&Document>, version_field: &str) -> Document {
        let mut update = self.update;
        let older = old.filter(|old| old.get_str(version_field).is_ok_and(|stored| stored < self.version.as_str()));
        let Some(old) = older else { return update };
        let set = update.get_document_mut("u").ok().and_then(|u| u.get_document_mut("$set").ok());
        if let Some(set) = set {
            for field in &self.fields {
                if let Some(value) = old.get(field) {
                    set.insert(field.clone(), value.clone());
                }
            }
        }
        update
    }
}

/// A statement for one collection.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// Where it goes.
    pub namespace: Arc<Namespace>,
    /// What it does.
    pub statement: Statement,
}

/// An aggregate collection and the fields pgfanout keeps in its documents.
pub type AggregateFields = (Arc<Namespace>, Vec<String>);

/// Where one source table goes.
#[derive(Debug, Clone)]
struct TableTarget {
    namespace: Arc<Namespace>,
    id_columns: Option<Vec<String>>,
    aggregates: Vec<AggregateTarget>,
}

#[derive(Debug, Clone)]
struct AggregateTarget {
    namespace: Arc<Namespace>,
    group_by: String,
    count_field: String,
    sums: Vec<String>,
}

/// A batch turned into statements.
#[derive(Debug, Default)]
pub struct EncodedBatch {
    /// Row statements by round; each round after the previous one succeeded.
    pub rounds: Vec<Vec<Write>>,
    /// Running aggregate deltas, applied after the rounds.
    pub aggregates: AggregatePlan,
}

/// Maps changes to statements; built once per sink from its config.
#[derive(Debug)]
pub struct MongoEncoder {
    tables: HashMap<TableName, TableTarget>,
    values: ValueEncoder,
    version_field: String,
    deleted_field: String,
    tombstones: bool,
    nulls: NullFormat,
}

/// Orders the statements of a batch into rounds (see the module docs).
#[derive(Default)]
struct Rounds {
    rounds: Vec<Vec<Write>>,
    /// Next free round of each document (namespace, `_id` as canonical JSON).
    next_of_document: HashMap<(Arc<Namespace>, String), usize>,
    /// First round a table's next statement may use (after its last truncate).
    floor_of_table: HashMap<Arc<Namespace>, usize>,
    /// Last round holding a statement of the table.
    last_of_table: HashMap<Arc<Namespace>, usize>,
}

impl Rounds {
    fn push(&mut self, index: usize, write: Write) {
        while self.rounds.len() <= index {
            self.rounds.push(Vec::new());
        }
        let table = Arc::clone(&write.namespace);
        let last = self.last_of_table.entry(table).or_insert(index);
        *last = (*last).max(index);
        self.rounds[index].push(write);
    }

    fn document(&mut self, id: &Bson, write: Write) {
        self.document_all(id, vec![write]);
    }

    /// Statements of one change to one document (they exclude each other), in one round.
    fn document_all(&mut self, id: &Bson, writes: Vec<Write>) {
        let Some(first) = writes.first() else { return };
        let floor = self.floor_of_table.get(&first.namespace).copied().unwrap_or(0);
        let key = (Arc::clone(&first.namespace), canonical(id));
        let next = self.next_of_document.entry(key).or_insert(0);
        let index = (*next).max(floor);
        *next = index + 1;
        for write in writes {
            self.push(index, write);
        }
    }

    /// A key move carrying values over: the upsert of `new_id` in a round after every
    /// earlier statement of both documents, the removal of `old_id` in the round after it.
    fn carry(&mut self, old_id: &Bson, new_id: &Bson, upsert: Write, removal: Vec<Write>) {
        let namespace = Arc::clone(&upsert.namespace);
        let floor = self.floor_of_table.get(&namespace).copied().unwrap_or(0);
        let old_key = (Arc::clone(&namespace), canonical(old_id));
        let new_key = (namespace, canonical(new_id));
        let next = |rounds: &Self, key| rounds.next_of_document.get(key).copied().unwrap_or(0);
        let index = next(self, &old_key).max(next(self, &new_key)).max(floor);
        self.push(index, upsert);
        for write in removal {
            self.push(index + 1, write);
        }
        self.next_of_document.insert(new_key, index + 1);
        self.next_of_document.insert(old_key, index + 2);
    }

    fn table_wide(&mut self, write: Write) {
        let index = self.last_of_table.get(&write.namespace).map_or(0, |last| last + 1);
        let index = index.max(self.floor_of_table.get(&write.namespace).copied().unwrap_or(0));
        self.floor_of_table.insert(Arc::clone(&write.namespace), index + 1);
        self.push(index, write);
    }
}

/// The filter of document `id` when it holds no version (`null` matches a missing field):
/// a document another application wrote, which a row write may take over.
pub(crate) fn unversioned(id: &Bson, version_field: &str) -> Document {
    doc! { "_id": id.clone(), version_field: Bson::Null }
}

/// A BSON value's canonical extended JSON, as a map key (BSON values are not `Hash`).
pub(crate) fn canonical(value: &Bson) -> String {
    value.clone().into_canonical_extjson().to_string()
}

impl MongoEncoder {
    /// The encoder of a validated config.
    pub fn new(config: &MongoSinkConfig) -> Self {
        let mut tables = HashMap::new();
        for table in &config.tables {
            let database = table.database.clone().unwrap_or_else(|| config.database.clone());
            let namespace = Arc::new(Namespace { database: database.clone(), collection: table.collection() });
            let aggregates = table
                .aggregates
                .iter()
                .map(|aggregate| AggregateTarget {
                    namespace: Arc::new(Namespace {
                        database: database.clone(),
                        collection: aggregate.collection.clone(),
                    }),
                    group_by: aggregate.group_by.clone(),
                    count_field: aggregate.count_field.clone(),
                    sums: aggregate.sum.clone(),
                })
                .collect();
            let target = TableTarget { namespace, id_columns: table.id_columns.clone(), aggregates };
            tables.insert(TableName::parse(&table.source), target);
        }
        MongoEncoder {
            tables,
            values: ValueEncoder::new(config.types.clone()),
            version_field: config.version_field.clone(),
            deleted_field: config.deleted_field.clone(),
            tombstones: config.tombstones,
            nulls: config.types.nulls,
        }
    }

    /// What would make [`encode`](Self::encode) refuse every change of a table of this
    /// shape, one line each: no `_id` (no primary key and no `id_columns`), id columns the
    /// table does not publish or a delete does not carry, columns that cannot be field
    /// names, aggregate columns the table does not publish.
    pub fn table_problems(&self, table: &TableSchema) -> Vec<String> {
        let Some(target) = self.tables.get(&table.table) else { return Vec::new() };
        let mut problems = Vec::new();
        match &target.id_columns {
            Some(columns) => {
                for column in columns {
                    match table.position(column) {
                        None => problems.push(format!("id column {column} is not published by the table")),
                        Some(position)
                            if table.replica_identity != ReplicaIdentity::Full && !table.columns[position].is_key =>
                        {
                            problems.push(format!(
                                "id column {column} is not part of the table's key (its primary key, or its replica identity index), so a delete (whose old row \
                                 carries only the key) has no value for it: use primary key columns as id_columns, \
                                 or run ALTER TABLE {} REPLICA IDENTITY FULL",
                                table.table
                            ))
                        }
                        Some(_) => {}
                    }
                }
            }
            None if table.key_positions().next().is_none() => problems.push(
                "the table has no primary key: give it one, or name the columns that identify a row in \
                 id_columns (without either, rows with equal values would share one document)"
                    .into(),
            ),
            None => {}
        }
        for column in &table.columns {
            if let Err(reason) = self.check_field(&column.name) {
                problems.push(reason);
            }
        }
        for aggregate in &target.aggregates {
            for column in std::iter::once(&aggregate.group_by).chain(&aggregate.sums) {
                if table.position(column).is_none() {
                    problems.push(format!("aggregate column {column} is not published by the table"));
                }
            }
        }
        problems
    }

    /// Where the document of `row` (a row of shape `table`, or its key) lives and its
    /// `_id`; for reading rows back (`verify`).
    pub fn locate(&self, table: &TableSchema, row: &Row) -> Result<(Arc<Namespace>, Bson), String> {
        let target = self.tables.get(&table.table).ok_or("not configured for this sink")?;
        Ok((Arc::clone(&target.namespace), self.document_id(target, table, row)?))
    }

    /// The replicated fields a whole row's document holds (what its upsert sets, without
    /// the version field), NULLs left out; for reading rows back (`verify`).
    pub fn row_fields(&self, table: &TableSchema, row: &Row) -> Result<Document, String> {
        let (_, id) = self.locate(table, row)?;
        let any_version = Version { commit_lsn: pgfanout_core::Lsn(0), ordinal: 0 };
        let statement = self.upsert(&id, table, row, None, any_version)?;
        let mut set = statement.get_document("u").and_then(|u| u.get_document("$set")).cloned().unwrap_or_default();
        set.remove(&self.version_field);
        Ok(set.into_iter().filter(|(_, value)| !matches!(value, Bson::Null)).collect())
    }

    /// Where `table`'s documents live and, per running aggregate, its collection and the
    /// fields pgfanout keeps there (count, sums): what `rebuild --wipe` removes.
    pub fn wipe_targets(&self, table: &TableName) -> Option<(Arc<Namespace>, Vec<AggregateFields>)> {
        let target = self.tables.get(table)?;
        let aggregates = target
            .aggregates
            .iter()
            .map(|aggregate| {
                let fields = std::iter::once(aggregate.count_field.clone()).chain(aggregate.sums.iter().cloned());
                (Arc::clone(&aggregate.namespace), fields.collect())
            })
            .collect();
        Some((Arc::clone(&target.namespace), aggregates))
    }

    /// The field marking a deleted row's tombstone (whether tombstones are on or not).
    pub fn deleted_field(&self) -> &str {
        &self.deleted_field
    }

    /// The field marking a tombstone, when deletes leave tombstones.
    pub fn tombstone_field(&self) -> Option<&str> {
        self.tombstones.then_some(self.deleted_field.as_str())
    }

    /// Whether the table feeds running aggregates (which `verify` cannot compare yet).
    pub fn has_aggregates(&self, table: &TableSchema) -> bool {
        self.tables.get(&table.table).is_some_and(|target| !target.aggregates.is_empty())
    }

    /// The running aggregates of `table`: collection, group column, count
    /// field and summed fields of each (for `verify`).
    pub(crate) fn aggregates_of(&self, table: &TableSchema) -> Vec<(Arc<Namespace>, String, String, Vec<String>)> {
        self.tables.get(&table.table).map_or_else(Vec::new, |target| {
            target
                .aggregates
                .iter()
                .map(|a| (Arc::clone(&a.namespace), a.group_by.clone(), a.count_field.clone(), a.sums.clone()))
                .collect()
        })
    }

    /// Adds whole rows of `table` to `plan` as inserts of one version: the
    /// plan then holds each group's count and sums over those rows (`verify`
    /// recomputing the running aggregates).
    pub(crate) fn aggregate_rows(
        &self,
        table: &TableSchema,
        rows: &[Row],
        plan: &mut AggregatePlan,
    ) -> Result<(), String> {
        let Some(target) = self.tables.get(&table.table) else { return Ok(()) };
        for row in rows {
            let insert = ChangeOp::Insert { new: row.clone() };
            for aggregate in &target.aggregates {
                plan.add(
                    aggregate,
                    table,
                    &insert,
                    Version { commit_lsn: pgfanout_core::Lsn(0), ordinal: 0 },
                    &self.values,
                )?;
            }
        }
        Ok(())
    }

    /// The version field's name.
    pub fn version_field(&self) -> &str {
        &self.version_field
    }

    /// Turns a batch into rounds of row statements and aggregate deltas. Changes of tables
    /// the sink was not configured for are an error (the router never sends them).
    pub fn encode(&self, changes: &[ChangeRef<'_>]) -> Result<EncodedBatch, EncodeError> {
        let mut rounds = Rounds::default();
        let mut aggregates = AggregatePlan::default();
        for change in changes {
            let table = &change.change.table;
            let version = change.version();
            let fail =
                |reason: String| EncodeError { table: table.table.to_string(), version: version.to_string(), reason };
            let target = self.tables.get(&table.table).ok_or_else(|| fail("not configured for this sink".into()))?;
            self.encode_rows(&mut rounds, target, table, &change.change.op, version).map_err(fail)?;
            for aggregate in &target.aggregates {
                aggregates.add(aggregate, table, &change.change.op, version, &self.values).map_err(fail)?;
            }
        }
        Ok(EncodedBatch { rounds: rounds.rounds, aggregates })
    }

    fn encode_rows(
        &self,
        rounds: &mut Rounds,
        target: &TableTarget,
        table: &TableSchema,
        op: &ChangeOp,
        version: Version,
    ) -> Result<(), String> {
        let namespace = &target.namespace;
        let write = |statement| Write { namespace: Arc::clone(namespace), statement };
        let writes = |statements: Vec<Statement>| statements.into_iter().map(write).collect::<Vec<_>>();
        match op {
            ChangeOp::Insert { new } => {
                let id = self.document_id(target, table, new)?;
                let version = version.to_sortable_string();
                let (set, unset) = self.row_fields_to_write(table, new, None, &version)?;
                let mut document = doc! { "_id": id.clone() };
                document.extend(set);
                let new_row = NewRow { document, unset, guard: self.guard(&id, &version) };
                rounds.document(&id, write(Statement::InsertOrUpsert(new_row)));
            }
            ChangeOp::Update { old, new } => {
                let id = self.document_id(target, table, new)?;
                if let Some(old) = old {
                    let old_id = self.document_id(target, table, old)?;
                    if old_id != id {
                        let upsert = self.upsert(&id, table, new, Some(old), version)?;
                        let removal = writes(self.remove(&old_id, table, version));
                        let fields = toast_values_to_carry(table, old, new);
                        if fields.is_empty() {
                            rounds.document_all(&old_id, removal);
                            rounds.document(&id, write(Statement::Update(upsert)));
                        } else {
                            let version = version.to_sortable_string();
                            let carry = Carry { from: old_id.clone(), fields, version, update: upsert };
                            rounds.carry(&old_id, &id, write(Statement::CarryingUpdate(carry)), removal);
                        }
                        return Ok(());
                    }
                }
                rounds.document(&id, write(Statement::Update(self.upsert(&id, table, new, old.as_ref(), version)?)));
            }
            ChangeOp::Delete { old } => {
                let id = self.document_id(target, table, old)?;
                rounds.document_all(&id, writes(self.remove(&id, table, version)));
            }
            ChangeOp::Truncate => rounds.table_wide(write(self.truncate(table, version))),
        }
        Ok(())
    }

    /// The guard of a row write: the document is older than `version`. A document without
    /// a version (not pgfanout's) is matched by [`unversioned`] instead (see the module docs).
    fn guard(&self, id: &Bson, version: &str) -> Document {
        doc! { "_id": id.clone(), &self.version_field: { "$lt": version } }
    }

    /// `_id` of the row: the value of the single id column, or a sub-document of several.
    fn document_id(&self, target: &TableTarget, table: &TableSchema, row: &Row) -> Result<Bson, String> {
        let value_at = |position: usize| -> Result<Bson, String> {
            let name = table.columns.get(position).map_or("?", |column| column.name.as_str());
            match row.get(position) {
                Some(ColumnValue::Null) | None => Err(format!(
                    "column {name} (part of the document _id) is NULL in this row image; id columns outside the \
                     replica identity key need REPLICA IDENTITY FULL"
                )),
                Some(ColumnValue::UnchangedToast) => {
                    Err(format!("column {name} (part of the document _id) was not sent"))
                }
                Some(value) => {
                    let typed = table.typed_value(position, value).map_err(|err| err.to_string())?;
                    self.values.to_bson(&typed.unwrap_or(Value::Null)).map_err(|err| format!("column {name}: {err}"))
                }
            }
        };
        let positions: Vec<usize> = match &target.id_columns {
            Some(columns) => columns
                .iter()
                .map(|column| table.position(column).ok_or_else(|| format!("id column {column} is not in the table")))
                .collect::<Result<_, _>>()?,
            None => table.key_positions().collect(),
        };
        match positions.as_slice() {
            [] => Err("the table has no primary key: give it one, or name the columns that identify a row in \
                 id_columns (without either, rows with equal values would share one document)"
                .into()),
            [only] => value_at(*only),
            several => {
                let mut id = Document::new();
                for &position in several {
                    let name = table.columns.get(position).map_or_else(String::new, |column| column.name.clone());
                    id.insert(name, value_at(position)?);
                }
                Ok(Bson::Document(id))
            }
        }
    }

    /// A field name MongoDB's `$set` takes literally, or why not.
    fn check_field<'a>(&self, name: &'a str) -> Result<&'a str, String> {
        if name.is_empty() || name.starts_with('$') || name.contains('.') || name.contains('\0') {
            Err(format!("column {name:?} cannot be a field name ($-prefixed, dotted or empty): rename it"))
        } else if name == "_id" || name == self.version_field || name == self.deleted_field {
            Err(format!("column {name:?} clashes with a field the sink writes: rename it"))
        } else {
            Ok(name)
        }
    }

    /// The guarded upsert `{q, u, upsert}` of a row image; unchanged TOAST values are taken
    /// from `old` when it has them (a key change moves them to the new document), else left
    /// alone.
    fn upsert(
        &self,
        id: &Bson,
        table: &TableSchema,
        new: &Row,
        old: Option<&Row>,
        version: Version,
    ) -> Result<Document, String> {
        let version = version.to_sortable_string();
        let (set, unset) = self.row_fields_to_write(table, new, old, &version)?;
        Ok(upsert_statement(self.guard(id, &version), set, unset))
    }

    /// The `$set` and `$unset` of a row image written at `version` (see [`Self::upsert`]).
    fn row_fields_to_write(
        &self,
        table: &TableSchema,
        new: &Row,
        old: Option<&Row>,
        version: &str,
    ) -> Result<(Document, Document), String> {
        let mut set = Document::new();
        let mut unset = Document::new();
        for (position, (column, value)) in table.columns.iter().zip(new).enumerate() {
            let field = self.check_field(&column.name)?;
            let value = match value {
                ColumnValue::UnchangedToast => match old.and_then(|old| old.get(position)) {
                    Some(stored @ (ColumnValue::Text(_) | ColumnValue::Binary(_))) => stored,
                    _ => continue,
                },
                present => present,
            };
            let typed = table.typed_value(position, value).map_err(|err| format!("column {}: {err}", column.name))?;
            let Some(typed) = typed else { continue };
            if typed.is_null() && self.nulls == NullFormat::Unset {
                unset.insert(field, "");
                continue;
            }
            let bson =
                self.values.to_bson(&typed).map_err(|err: ValueRejected| format!("column {}: {err}", column.name))?;
            set.insert(field, bson);
        }
        set.insert(self.version_field.clone(), version);
        if self.tombstones {
            unset.insert(self.deleted_field.clone(), "");
        }
        Ok((set, unset))
    }

    /// `$set` of a tombstone: the version and the deleted mark, and `$unset` of every
    /// replicated column (foreign fields stay).
    fn tombstone(&self, table: &TableSchema, version: &str) -> Document {
        let unset: Document = table
            .columns
            .iter()
            .filter(|column| self.check_field(&column.name).is_ok())
            .map(|column| (column.name.clone(), Bson::String(String::new())))
            .collect();
        let mut update = doc! { "$set": { &self.version_field: version, &self.deleted_field: true } };
        if !unset.is_empty() {
            update.insert("$unset", unset);
        }
        update
    }

    /// The guarded removal of one document (or its tombstone): a delete of the older
    /// document and one of a document without a version, or the tombstone's upsert.
    fn remove(&self, id: &Bson, table: &TableSchema, version: Version) -> Vec<Statement> {
        let version = version.to_sortable_string();
        if self.tombstones {
            let update = self.tombstone(table, &version);
            vec![Statement::Update(doc! { "q": self.guard(id, &version), "u": update, "upsert": true })]
        } else {
            vec![
                Statement::Delete(doc! { "q": self.guard(id, &version), "limit": 1 }),
                Statement::Delete(doc! { "q": unversioned(id, &self.version_field), "limit": 1 }),
            ]
        }
    }

    /// Removal of every document of the table that pgfanout wrote before the truncate.
    fn truncate(&self, table: &TableSchema, version: Version) -> Statement {
        let version = version.to_sortable_string();
        let filter = doc! { &self.version_field: { "$lt": &version } };
        if self.tombstones {
            let update = self.tombstone(table, &version);
            Statement::Update(doc! { "q": filter, "u": update, "multi": true })
        } else {
            Statement::Delete(doc! { "q": filter, "limit": 0 })
        }
    }
}

/// The fields a row moving to another `_id` must take from the old document: columns
/// left out as unchanged TOAST that the old row does not hold either (identity DEFAULT:
/// a key-only old row). Under identity FULL the old row has them, and the upsert takes
/// them from there.
fn toast_values_to_carry(table: &TableSchema, old: &Row, new: &Row) -> Vec<String> {
    new.iter()
        .zip(old)
        .zip(&table.columns)
        .filter(|((new, old), _)| {
            matches!(new, ColumnValue::UnchangedToast) && !matches!(old, ColumnValue::Text(_) | ColumnValue::Binary(_))
        })
        .map(|(_, column)| column.name.clone())
        .collect()
}

/// A signed amount added to one sum field.
#[derive(Debug, Clone, PartialEq)]
pub enum Amount {
    /// Integer columns, summed as Int64.
    Integer(i128),
    /// `numeric`: unscaled value and scale, summed exactly, written as Decimal128.
    Decimal {
        /// Value × 10^scale.
        unscaled: i128,
        /// Digits after the point.
        scale: u32,
    },
    /// `float4`/`float8`, summed as double (as inexact as the floats).
    Float(f64),
}

impl Amount {
    fn negate(&self) -> Amount {
        match self {
            Amount::Integer(i) => Amount::Integer(-i),
            Amount::Decimal { unscaled, scale } => Amount::Decimal { unscaled: -unscaled, scale: *scale },
            Amount::Float(f) => Amount::Float(-f),
        }
    }

    fn add(&self, other: &Amount) -> Option<Amount> {
        Some(match (self, other) {
            (Amount::Integer(a), Amount::Integer(b)) => Amount::Integer(a.checked_add(*b)?),
            (Amount::Float(a), Amount::Float(b)) => Amount::Float(a + b),
            (Amount::Decimal { unscaled: a, scale: sa }, Amount::Decimal { unscaled: b, scale: sb }) => {
                let scale = (*sa).max(*sb);
                let a = a.checked_mul(10i128.checked_pow(scale - sa)?)?;
                let b = b.checked_mul(10i128.checked_pow(scale - sb)?)?;
                Amount::Decimal { unscaled: a.checked_add(b)?, scale }
            }
            _ => return None,
        })
    }

    fn to_bson(&self) -> Option<Bson> {
        Some(match self {
            Amount::Integer(i) => Bson::Int64(i64::try_from(*i).ok()?),
            Amount::Float(f) => Bson::Double(*f),
            Amount::Decimal { unscaled, scale } => {
                let text = format!("{unscaled}E-{scale}");
                Bson::Decimal128(crate::value::decimal128(&text).ok()?)
            }
        })
    }

    /// The amount of a typed value; `None` for NULL (adds nothing).
    fn of(value: &Value) -> Result<Option<Amount>, String> {
        Ok(Some(match value {
            Value::Null => return Ok(None),
            Value::Int2(i) => Amount::Integer(i128::from(*i)),
            Value::Int4(i) => Amount::Integer(i128::from(*i)),
            Value::Int8(i) => Amount::Integer(i128::from(*i)),
            Value::Float4(f) => Amount::Float(f64::from(*f)),
            Value::Float8(f) => Amount::Float(*f),
            Value::Numeric(Numeric::Finite(decimal)) => {
                let (negative, digits, exponent) =
                    decimal_parts(decimal.as_str()).ok_or_else(|| format!("cannot sum {decimal}"))?;
                let mut unscaled: i128 = digits.parse().map_err(|_| format!("{decimal} is too long to sum exactly"))?;
                if negative {
                    unscaled = -unscaled;
                }
                let (unscaled, scale) = if exponent >= 0 {
                    let factor = u32::try_from(exponent).ok().and_then(|e| 10i128.checked_pow(e));
                    (factor.and_then(|f| unscaled.checked_mul(f)).ok_or("numeric too large to sum")?, 0)
                } else {
                    (unscaled, u32::try_from(-exponent).map_err(|_| "numeric scale too large to sum")?)
                };
                Amount::Decimal { unscaled, scale }
            }
            Value::Numeric(other) => return Err(format!("cannot sum numeric {}", other.as_str())),
            other => return Err(format!("cannot sum a value of this type ({other})")),
        }))
    }
}

/// What one change adds to one group.
#[derive(Debug, Clone, PartialEq)]
struct Delta {
    version: Version,
    count: i64,
    sums: Vec<(String, Amount)>,
}

/// One group's pending deltas.
#[derive(Debug, Clone)]
struct Group {
    id: Bson,
    deltas: Vec<Delta>,
}

/// One aggregate collection's part of a batch.
#[derive(Debug, Clone, Default)]
pub struct AggregateCollection {
    groups: Vec<Group>,
    positions: HashMap<String, usize>,
    /// The last truncate of the table in this batch: documents older than it are reset.
    reset: Option<Version>,
    count_field: String,
    sums: Vec<String>,
}

/// Running aggregates of a batch: per aggregate collection and group, the count and sum
/// deltas of each change, with the change's version.
///
/// Invariant: an aggregate document whose version field holds `V` holds exactly the
/// contributions of the table's changes with versions up to `V` (since the last truncate
/// before `V`). It is kept by applying, per group, only the deltas newer than the stored
/// version, with a filter on that stored version (compare-and-set), setting it to the
/// newest applied; so a replayed change, whatever batch it comes in, is never counted
/// twice, and nothing between the stored version and the batch is skipped because changes
/// reach the sink in stream order (one lane, which the config enforces). A delta needs the
/// old row (update: old out, new in; delete: old out), hence `REPLICA IDENTITY FULL`.
/// Group documents are read once per batch (one `find` per aggregate collection) and
/// written in one unordered `update` command per collection.
#[derive(Debug, Clone, Default)]
pub struct AggregatePlan {
    collections: HashMap<Arc<Namespace>, AggregateCollection>,
}

impl AggregatePlan {
    /// Whether the batch touches no aggregate.
    pub fn is_empty(&self) -> bool {
        self.collections.is_empty()
    }

    /// The aggregate collections and the groups to read from each.
    pub fn groups(&self) -> impl Iterator<Item = (&Arc<Namespace>, Vec<Bson>)> {
        self.collections.iter().map(|(namespace, collection)| {
            (namespace, collection.groups.iter().map(|group| group.id.clone()).collect())
        })
    }

    /// Per aggregate collection, each group's `_id` and what its deltas add
    /// up to (count, sums), as fields of the group's document.
    pub(crate) fn totals(&self) -> HashMap<Arc<Namespace>, Vec<(Bson, Document)>> {
        let mut totals = HashMap::new();
        for (namespace, collection) in &self.collections {
            let mut groups = Vec::with_capacity(collection.groups.len());
            for group in &collection.groups {
                let mut count = 0i64;
                let mut sums: Vec<(String, Amount)> = Vec::new();
                for delta in &group.deltas {
                    count = count.saturating_add(delta.count);
                    for (field, amount) in &delta.sums {
                        match sums.iter_mut().find(|(known, _)| known == field) {
                            Some((_, total)) => *total = total.add(amount).unwrap_or_else(|| total.clone()),
                            None => sums.push((field.clone(), amount.clone())),
                        }
                    }
                }
                let mut fields = doc! { &collection.count_field: count };
                for (field, amount) in sums {
                    if let Some(value) = amount.to_bson() {
                        fields.insert(field, value);
                    }
                }
                groups.push((group.id.clone(), fields));
            }
            totals.insert(Arc::clone(namespace), groups);
        }
        totals
    }

    /// Statements resetting the aggregate documents older than a truncate: run before the
    /// group documents are read.
    pub fn resets(&self, version_field: &str) -> Vec<Write> {
        let mut writes = Vec::new();
        for (namespace, collection) in &self.collections {
            let Some(reset) = collection.reset else { continue };
            let version = reset.to_sortable_string();
            let unset: Document =
                collection.sums.iter().map(|sum| (sum.clone(), Bson::String(String::new()))).collect();
            let mut update = doc! { "$set": { version_field: &version, &collection.count_field: 0i64 } };
            if !unset.is_empty() {
                update.insert("$unset", unset);
            }
            let statement = doc! { "q": { version_field: { "$lt": &version } }, "u": update, "multi": true };
            writes.push(Write { namespace: Arc::clone(namespace), statement: Statement::Update(statement) });
        }
        writes
    }

    /// The `$inc` statements, given the version each group document holds (`stored`: by
    /// namespace, the canonical JSON of `_id` → version text; a group missing there has no
    /// document or no version yet).
    pub fn increments(
        &self,
        stored: &HashMap<Arc<Namespace>, HashMap<String, Option<String>>>,
        version_field: &str,
    ) -> Result<Vec<Write>, String> {
        let mut writes = Vec::new();
        for (namespace, collection) in &self.collections {
            let versions = stored.get(namespace);
            for group in &collection.groups {
                let stored_version = versions.and_then(|known| known.get(&canonical(&group.id))).cloned().flatten();
                let newer = group.deltas.iter().filter(|delta| {
                    stored_version.as_deref().is_none_or(|stored| delta.version.to_sortable_string().as_str() > stored)
                });
                let mut count = 0i64;
                let mut sums: Vec<(String, Amount)> = Vec::new();
                let mut newest = None;
                for delta in newer {
                    count = count.checked_add(delta.count).ok_or("count overflows")?;
                    for (field, amount) in &delta.sums {
                        match sums.iter_mut().find(|(known, _)| known == field) {
                            Some((_, total)) => {
                                *total =
                                    total.add(amount).ok_or_else(|| format!("sum {field} overflows or mixes types"))?
                            }
                            None => sums.push((field.clone(), amount.clone())),
                        }
                    }
                    newest = Some(delta.version);
                }
                let Some(newest) = newest else { continue };
                let mut inc = doc! { &collection.count_field: count };
                for (field, amount) in sums {
                    inc.insert(field.clone(), amount.to_bson().ok_or_else(|| format!("sum {field} overflows"))?);
                }
                let filter = match &stored_version {
                    Some(version) => doc! { "_id": group.id.clone(), version_field: version },
                    None => doc! { "_id": group.id.clone(), version_field: { "$exists": false } },
                };
                let statement = doc! {
                    "q": filter,
                    "u": { "$inc": inc, "$set": { version_field: newest.to_sortable_string() } },
                    "upsert": stored_version.is_none(),
                };
                writes.push(Write { namespace: Arc::clone(namespace), statement: Statement::Update(statement) });
            }
        }
        Ok(writes)
    }

    fn add(
        &mut self,
        target: &AggregateTarget,
        table: &TableSchema,
        op: &ChangeOp,
        version: Version,
        values: &ValueEncoder,
    ) -> Result<(), String> {
        let collection = self.collections.entry(Arc::clone(&target.namespace)).or_insert_with(|| AggregateCollection {
            count_field: target.count_field.clone(),
            sums: target.sums.clone(),
            ..AggregateCollection::default()
        });
        let needs_full =
            || format!("running aggregates need the old row: run ALTER TABLE {} REPLICA IDENTITY FULL", table.table);
        let mut contributions = Vec::new();
        match op {
            ChangeOp::Insert { new } => contributions.push((contribution(target, table, new, None, values)?, 1)),
            ChangeOp::Update { old, new } => {
                let old =
                    old.as_ref().filter(|_| table.replica_identity == ReplicaIdentity::Full).ok_or_else(needs_full)?;
                contributions.push((contribution(target, table, old, None, values)?, -1));
                contributions.push((contribution(target, table, new, Some(old), values)?, 1));
            }
            ChangeOp::Delete { old } => {
                if table.replica_identity != ReplicaIdentity::Full {
                    return Err(needs_full());
                }
                contributions.push((contribution(target, table, old, None, values)?, -1));
            }
            ChangeOp::Truncate => {
                collection.groups.clear();
                collection.positions.clear();
                collection.reset = Some(version);
                return Ok(());
            }
        }
        for ((group_id, sums), sign) in contributions {
            let key = canonical(&group_id);
            let index = *collection.positions.entry(key).or_insert_with(|| {
                collection.groups.push(Group { id: group_id, deltas: Vec::new() });
                collection.groups.len() - 1
            });
            let sums: Vec<(String, Amount)> = sums
                .into_iter()
                .map(|(field, amount)| (field, if sign < 0 { amount.negate() } else { amount }))
                .collect();
            let deltas = &mut collection.groups[index].deltas;
            match deltas.last_mut() {
                // Old and new row in the same group: one net delta.
                Some(last) if last.version == version => {
                    last.count += sign;
                    for (field, amount) in sums {
                        match last.sums.iter_mut().find(|(known, _)| *known == field) {
                            Some((_, total)) => *total = total.add(&amount).ok_or("sum overflows or mixes types")?,
                            None => last.sums.push((field, amount)),
                        }
                    }
                }
                _ => deltas.push(Delta { version, count: sign, sums }),
            }
        }
        Ok(())
    }
}

/// A row's group and the amounts it adds to the sums; unchanged TOAST values of `row` are
/// read from `old` (the old image of an update).
fn contribution(
    target: &AggregateTarget,
    table: &TableSchema,
    row: &Row,
    old: Option<&Row>,
    values: &ValueEncoder,
) -> Result<(Bson, Vec<(String, Amount)>), String> {
    let typed_at = |column: &str| -> Result<Value, String> {
        let position =
            table.position(column).ok_or_else(|| format!("aggregate column {column} is not in the table"))?;
        let value = match row.get(position) {
            Some(ColumnValue::UnchangedToast) => old.and_then(|old| old.get(position)),
            value => value,
        };
        let value = value.ok_or_else(|| format!("aggregate column {column} is missing from the row"))?;
        table
            .typed_value(position, value)
            .map_err(|err| format!("column {column}: {err}"))?
            .ok_or_else(|| format!("aggregate column {column} was not sent (unchanged TOAST)"))
    };
    let group = values.to_bson(&typed_at(&target.group_by)?).map_err(|err| err.to_string())?;
    let mut sums = Vec::new();
    for column in &target.sums {
        if let Some(amount) = Amount::of(&typed_at(column)?).map_err(|reason| format!("column {column}: {reason}"))? {
            sums.push((column.clone(), amount));
        }
    }
    Ok((group, sums))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use pgfanout_core::{Change, ColumnSchema, Transaction};
    use pgoutput::{Lsn, Oid, PgTimestamp, Xid};

    use crate::config::{AggregateConfig, MongoTableConfig, TypeOptions};

    fn config(tombstones: bool, aggregates: Vec<AggregateConfig>) -> MongoSinkConfig {
        MongoSinkConfig {
            name: "docs".into(),
            url: "mongodb://127.0.0.1".into(),
            database: "app".into(),
            tables: vec![MongoTableConfig {
                source: "public.stays".into(),
                database: None,
                collection: None,
                id_columns: None,
                columns: None,
                exclude: vec![],
                rename: HashMap::new(),
                filter: None,
                aggregates,
            }],
            checkpoint_collection: "pgfanout_checkpoints".into(),
            version_field: "_v".into(),
            tombstones,
            deleted_field: "_deleted".into(),
            types: TypeOptions::default(),
            response_timeout_ms: 1000,
            tls: None,
            delivery: Default::default(),
        }
    }

    fn stays(identity: ReplicaIdentity, keys: &[&str]) -> Arc<TableSchema> {
        let column = |name: &str, oid: u32| ColumnSchema {
            name: name.into(),
            type_oid: Oid(oid),
            // As the pipeline announces it: the primary key, whatever the identity.
            is_key: keys.contains(&name),
        };
        Arc::new(TableSchema {
            types: Default::default(),
            oid: Oid(1),
            table: TableName::new("public", "stays"),
            replica_identity: identity,
            columns: vec![column("id", 23), column("city", 25), column("host", 23), column("price", 1700)],
        })
    }

    fn text(value: &str) -> ColumnValue {
        ColumnValue::Text(Bytes::copy_from_slice(value.as_bytes()))
    }

    fn row(values: [&str; 4]) -> Row {
        values.iter().map(|v| if *v == "NULL" { ColumnValue::Null } else { text(v) }).collect()
    }

    fn transaction(lsn: u64, table: &Arc<TableSchema>, ops: Vec<ChangeOp>) -> Transaction {
        let changes = ops
            .into_iter()
            .enumerate()
            .map(|(i, op)| Change { table: Arc::clone(table), op, ordinal: i as u32 })
            .collect();
        Transaction { xid: Xid(1), commit_lsn: Lsn(lsn), end_lsn: Lsn(lsn + 1), commit_time: PgTimestamp(0), changes }
    }

    fn encode(encoder: &MongoEncoder, transactions: &[Transaction]) -> Result<EncodedBatch, EncodeError> {
        let refs: Vec<ChangeRef<'_>> = transactions
            .iter()
            .flat_map(|transaction| transaction.changes.iter().map(move |change| ChangeRef { transaction, change }))
            .collect();
        encoder.encode(&refs)
    }

    fn version(lsn: u64, ordinal: u32) -> String {
        Version { commit_lsn: Lsn(lsn), ordinal }.to_sortable_string()
    }

    fn guard(id: Bson, version: &str) -> Document {
        doc! { "_id": id, "_v": { "$lt": version } }
    }

    #[test]
    fn an_insert_is_the_whole_document_with_its_guarded_upsert_to_fall_back_on() {
        let table = stays(ReplicaIdentity::Default, &["id"]);
        let encoder = MongoEncoder::new(&config(false, vec![]));
        let batch = encode(
            &encoder,
            &[transaction(16, &table, vec![ChangeOp::Insert { new: row(["7", "Oslo", "3", "10.50"]) }])],
        )
        .unwrap();
        assert_eq!(batch.rounds.len(), 1);
        let write = &batch.rounds[0][0];
        assert_eq!(write.namespace.to_string(), "app.stays");
        let v = version(16, 0);
        let price: Decimal128 = "10.50".parse().unwrap();
        assert_eq!(
            write.statement,
            Statement::InsertOrUpsert(NewRow {
                document: doc! { "_id": 7, "id": 7, "city": "Oslo", "host": 3, "price": price, "_v": &v },
                unset: doc! {},
                guard: guard(Bson::Int32(7), &v),
            })
        );
        let Statement::InsertOrUpsert(new_row) = write.statement.clone() else { panic!("not an insert") };
        let upsert = new_row.upsert();
        assert_eq!(
            upsert,
            doc! {
                "q": guard(Bson::Int32(7), &v),
                "u": { "$set": { "id": 7, "city": "Oslo", "host": 3, "price": price, "_v": &v } },
                "upsert": true,
            }
        );
        let set = upsert.get_document("u").unwrap().get_document("$set").unwrap();
        assert_eq!(set.keys().collect::<Vec<_>>(), ["id", "city", "host", "price", "_v"], "column order kept");
    }

    #[test]
    fn an_inserted_document_leaves_out_nulls_written_as_unset_and_the_deleted_mark() {
        let table = stays(ReplicaIdentity::Default, &["id"]);
        let mut unset_nulls = config(true, vec![]);
        unset_nulls.types.nulls = NullFormat::Unset;
        let encoder = MongoEncoder::new(&unset_nulls);
        let insert = ChangeOp::Insert { new: row(["7", "NULL", "3", "1"]) };
        let batch = encode(&encoder, &[transaction(17, &table, vec![insert])]).unwrap();
        let Statement::InsertOrUpsert(new_row) = &batch.rounds[0][0].statement else { panic!("not an insert") };
        let (document, upsert) = (&new_row.document, new_row.clone().upsert());
        let price: Decimal128 = "1".parse().unwrap();
        assert_eq!(document, &doc! { "_id": 7, "id": 7, "host": 3, "price": price, "_v": version(17, 0) });
        let unset = upsert.get_document("u").unwrap().get_document("$unset").unwrap();
        assert!(unset.contains_key("city") && unset.contains_key("_deleted"), "the upsert still unsets them: {unset}");
    }

    use bson::Decimal128;

    #[test]
    fn unchanged_toast_is_left_alone_and_key_changes_move_the_document() {
        let table = stays(ReplicaIdentity::Default, &["id"]);
        let encoder = MongoEncoder::new(&config(false, vec![]));
        let mut new = row(["7", "NULL", "3", "1"]);
        new[1] = ColumnValue::UnchangedToast;
        let batch = encode(&encoder, &[transaction(31, &table, vec![ChangeOp::Update { old: None, new }])]).unwrap();
        let Statement::Update(upsert) = &batch.rounds[0][0].statement else { panic!("not an upsert") };
        let set = upsert.get_document("u").unwrap().get_document("$set").unwrap();
        assert!(!set.contains_key("city"), "the unchanged TOAST column is not written: {set}");

        let update =
            ChangeOp::Update { old: Some(row(["7", "NULL", "NULL", "NULL"])), new: row(["8", "Rome", "3", "1"]) };
        let batch = encode(&encoder, &[transaction(32, &table, vec![update])]).unwrap();
        let v = version(32, 0);
        assert_eq!(batch.rounds.len(), 1, "two documents, one round");
        let statements: Vec<&Statement> = batch.rounds[0].iter().map(|w| &w.statement).collect();
        assert_eq!(statements[0], &Statement::Delete(doc! { "q": guard(Bson::Int32(7), &v), "limit": 1 }));
        assert_eq!(
            statements[1],
            &Statement::Delete(doc! { "q": { "_id": 7, "_v": Bson::Null }, "limit": 1 }),
            "a document without a version goes too"
        );
        let Statement::Update(upsert) = statements[2] else { panic!("not an upsert") };
        assert_eq!(upsert.get_document("q").unwrap(), &guard(Bson::Int32(8), &v));
    }

    #[test]
    fn a_key_change_leaving_a_toast_value_out_carries_it_from_the_old_document_unless_the_old_row_has_it() {
        let table = stays(ReplicaIdentity::Default, &["id"]);
        let encoder = MongoEncoder::new(&config(false, vec![]));
        let mut new = row(["8", "NULL", "3", "1"]);
        new[1] = ColumnValue::UnchangedToast;
        let update = ChangeOp::Update { old: Some(row(["7", "NULL", "NULL", "NULL"])), new: new.clone() };
        let batch = encode(&encoder, &[transaction(33, &table, vec![update])]).unwrap();
        let v = version(33, 0);
        assert_eq!(batch.rounds.len(), 2, "the new document first, the old one goes a round later");
        let Statement::CarryingUpdate(carry) = &batch.rounds[0][0].statement else { panic!("not a carrying upsert") };
        assert_eq!(
            (&carry.from, carry.fields.as_slice(), carry.version.as_str()),
            (&Bson::Int32(7), &["city".to_owned()][..], v.as_str())
        );
        assert_eq!(carry.update.get_document("q").unwrap(), &guard(Bson::Int32(8), &v));
        assert_eq!(
            batch.rounds[1][0].statement,
            Statement::Delete(doc! { "q": guard(Bson::Int32(7), &v), "limit": 1 })
        );

        // The old document gives the value when it is older than the move, else nothing.
        let set_of = |update: Document| update.get_document("u").unwrap().get_document("$set").unwrap().clone();
        let old = doc! { "_id": 7, "city": "Rome", "_v": version(20, 0) };
        assert_eq!(set_of(carry.clone().fill(Some(&old), "_v")).get_str("city"), Ok("Rome"));
        let newer = doc! { "_id": 7, "city": "Oslo", "_v": version(40, 0) };
        assert!(!set_of(carry.clone().fill(Some(&newer), "_v")).contains_key("city"), "another row took the key later");
        let foreign = doc! { "_id": 7, "city": "Oslo" };
        assert!(!set_of(carry.clone().fill(Some(&foreign), "_v")).contains_key("city"), "not pgfanout's document");
        assert!(!set_of(carry.clone().fill(None, "_v")).contains_key("city"), "gone: a replay after the move");

        let update = ChangeOp::Update { old: Some(row(["7", "Rome", "3", "1"])), new };
        let batch = encode(&encoder, &[transaction(34, &table, vec![update])]).unwrap();
        let Statement::Update(upsert) = &batch.rounds[0][2].statement else { panic!("not an upsert") };
        let set = upsert.get_document("u").unwrap().get_document("$set").unwrap();
        assert_eq!(set.get_str("city"), Ok("Rome"), "a whole old row gives the value: {set}");
    }

    #[test]
    fn a_carrying_move_waits_for_earlier_writes_of_both_documents_and_later_ones_wait_for_it() {
        let table = stays(ReplicaIdentity::Default, &["id"]);
        let encoder = MongoEncoder::new(&config(false, vec![]));
        let mut moved = row(["8", "NULL", "3", "1"]);
        moved[1] = ColumnValue::UnchangedToast;
        let changes = vec![
            ChangeOp::Insert { new: row(["8", "Oslo", "3", "1"]) },
            ChangeOp::Delete { old: row(["8", "NULL", "NULL", "NULL"]) },
            ChangeOp::Update { old: Some(row(["7", "NULL", "NULL", "NULL"])), new: moved },
            ChangeOp::Insert { new: row(["7", "Rome", "3", "1"]) },
        ];
        let batch = encode(&encoder, &[transaction(35, &table, changes)]).unwrap();
        let kinds: Vec<Vec<&str>> = batch
            .rounds
            .iter()
            .map(|round| {
                round
                    .iter()
                    .map(|write| match &write.statement {
                        Statement::Update(_) => "update",
                        Statement::InsertOrUpsert(_) => "insert",
                        Statement::Delete(_) => "delete",
                        Statement::CarryingUpdate(_) => "carry",
                    })
                    .collect()
            })
            .collect();
        assert_eq!(
            kinds,
            vec![vec!["insert"], vec!["delete", "delete"], vec!["carry"], vec!["delete", "delete"], vec!["insert"]],
            "8 is written and deleted before the move reads 7 and writes 8; 7 is removed after, then taken again"
        );
    }

    #[test]
    fn repeated_keys_and_truncates_are_ordered_in_rounds() {
        let table = stays(ReplicaIdentity::Default, &["id"]);
        let encoder = MongoEncoder::new(&config(false, vec![]));
        let ops = vec![
            ChangeOp::Insert { new: row(["1", "a", "1", "1"]) },
            ChangeOp::Insert { new: row(["2", "a", "1", "1"]) },
            ChangeOp::Update { old: None, new: row(["1", "b", "1", "1"]) },
            ChangeOp::Truncate,
            ChangeOp::Insert { new: row(["2", "c", "1", "1"]) },
        ];
        let batch = encode(&encoder, &[transaction(48, &table, ops)]).unwrap();
        let sizes: Vec<usize> = batch.rounds.iter().map(Vec::len).collect();
        // Round 0: inserts of 1 and 2; round 1: update of 1; round 2: truncate; round 3: insert of 2.
        assert_eq!(sizes, [2, 1, 1, 1]);
        assert_eq!(
            batch.rounds[2][0].statement,
            Statement::Delete(doc! { "q": { "_v": { "$lt": version(48, 3) } }, "limit": 0 })
        );
    }

    #[test]
    fn tombstones_keep_the_version_and_drop_the_columns() {
        let table = stays(ReplicaIdentity::Default, &["id", "city"]);
        let encoder = MongoEncoder::new(&config(true, vec![]));
        let delete = ChangeOp::Delete { old: row(["5", "Rome", "NULL", "NULL"]) };
        let batch = encode(&encoder, &[transaction(64, &table, vec![delete])]).unwrap();
        let v = version(64, 0);
        let id = Bson::Document(doc! { "id": 5, "city": "Rome" });
        assert_eq!(
            batch.rounds[0][0].statement,
            Statement::Update(doc! {
                "q": guard(id, &v),
                "u": { "$set": { "_v": &v, "_deleted": true }, "$unset": { "id": "", "city": "", "host": "", "price": "" } },
                "upsert": true,
            })
        );
    }

    #[test]
    fn tables_without_primary_key_need_id_columns_and_bad_values_are_refused() {
        let table = stays(ReplicaIdentity::Full, &[]);
        let encoder = MongoEncoder::new(&config(false, vec![]));
        let insert = ChangeOp::Insert { new: row(["1", "a", "1", "1"]) };
        let err = encode(&encoder, &[transaction(80, &table, vec![insert])]).unwrap_err();
        assert!(err.reason.contains("no primary key") && err.reason.contains("id_columns"), "{err}");
        // Under FULL with a primary key, documents are keyed by it: no id_columns needed.
        let keyed = stays(ReplicaIdentity::Full, &["id"]);
        let insert = ChangeOp::Insert { new: row(["1", "a", "1", "1"]) };
        let batch = encode(&encoder, &[transaction(80, &keyed, vec![insert])]).unwrap();
        let Statement::InsertOrUpsert(new_row) = &batch.rounds[0][0].statement else { panic!("an insert") };
        assert_eq!(new_row.guard.get_i32("_id").unwrap(), 1, "keyed by id alone: {new_row:?}");
        let table = stays(ReplicaIdentity::Default, &["id"]);
        let too_long = format!("{}.1", "9".repeat(40));
        let insert = ChangeOp::Insert { new: row(["1", "a", "1", &too_long]) };
        let err = encode(&encoder, &[transaction(80, &table, vec![insert])]).unwrap_err();
        assert!(err.reason.contains("column price") && err.reason.contains("Decimal128"), "{err}");
    }

    fn statistics() -> Vec<AggregateConfig> {
        vec![AggregateConfig {
            collection: "host_stats".into(),
            group_by: "host".into(),
            count_field: "count".into(),
            sum: vec!["price".into()],
        }]
    }

    fn increments(batch: &EncodedBatch, stored: &[(i32, Option<&str>)]) -> Vec<Document> {
        let namespace = Arc::new(Namespace { database: "app".into(), collection: "host_stats".into() });
        let versions = stored
            .iter()
            .map(|(group, version)| (canonical(&Bson::Int32(*group)), version.map(str::to_owned)))
            .collect();
        let stored = HashMap::from([(namespace, versions)]);
        let mut writes: Vec<Document> = batch
            .aggregates
            .increments(&stored, "_v")
            .unwrap()
            .into_iter()
            .map(|w| match w.statement {
                Statement::Update(statement) => statement,
                Statement::Delete(_) | Statement::CarryingUpdate(_) | Statement::InsertOrUpsert(_) => {
                    panic!("aggregates only update")
                }
            })
            .collect();
        writes.sort_by_key(|w| canonical(w.get_document("q").unwrap().get("_id").unwrap()));
        writes
    }

    #[test]
    fn aggregates_count_old_out_new_in_and_skip_what_is_stored() {
        let table = stays(ReplicaIdentity::Full, &[]);
        let mut config = config(false, statistics());
        config.tables[0].id_columns = Some(vec!["id".into()]);
        let encoder = MongoEncoder::new(&config);
        let batch = encode(
            &encoder,
            &[
                transaction(100, &table, vec![ChangeOp::Insert { new: row(["1", "a", "3", "10.25"]) }]),
                transaction(
                    200,
                    &table,
                    vec![
                        // Same group: only the price difference counts.
                        ChangeOp::Update { old: Some(row(["1", "a", "3", "10.25"])), new: row(["1", "a", "3", "11"]) },
                        // Moves to group 4.
                        ChangeOp::Update { old: Some(row(["1", "a", "3", "11"])), new: row(["1", "a", "4", "NULL"]) },
                    ],
                ),
            ],
        )
        .unwrap();
        // Nothing stored yet: everything counts, upserting both groups.
        let all = increments(&batch, &[]);
        let dec = |text: &str| Bson::Decimal128(text.parse().unwrap());
        assert_eq!(
            all[0],
            doc! {
                "q": { "_id": 3, "_v": { "$exists": false } },
                "u": { "$inc": { "count": 0i64, "price": dec("0E-2") }, "$set": { "_v": version(200, 1) } },
                "upsert": true,
            }
        );
        assert_eq!(all[1].get_document("u").unwrap().get_document("$inc").unwrap(), &doc! { "count": 1i64 });
        // Group 3 already holds the insert (a replay from LSN 100): only the later deltas count.
        let replay = increments(&batch, &[(3, Some(&version(100, 0)))]);
        assert_eq!(
            replay[0].get_document("u").unwrap().get_document("$inc").unwrap(),
            &doc! { "count": -1i64, "price": dec("-10.25") },
        );
        assert_eq!(replay[0].get_document("q").unwrap(), &doc! { "_id": 3, "_v": version(100, 0) });
        assert_eq!(replay[0].get_bool("upsert"), Ok(false));
        // Everything stored: nothing to write.
        let done = increments(&batch, &[(3, Some(&version(200, 1))), (4, Some(&version(200, 1)))]);
        assert!(done.is_empty(), "{done:?}");
    }

    #[test]
    fn aggregate_updates_read_unchanged_toast_from_the_old_row() {
        let table = stays(ReplicaIdentity::Full, &[]);
        let mut config = config(false, statistics());
        config.tables[0].id_columns = Some(vec!["id".into()]);
        let encoder = MongoEncoder::new(&config);
        let mut new = row(["1", "a", "4", "NULL"]);
        new[3] = ColumnValue::UnchangedToast;
        let update = ChangeOp::Update { old: Some(row(["1", "a", "3", "2.5"])), new };
        let batch = encode(&encoder, &[transaction(500, &table, vec![update])]).unwrap();
        let all = increments(&batch, &[(3, Some(&version(400, 0))), (4, Some(&version(400, 0)))]);
        let inc = |i: usize| all[i].get_document("u").unwrap().get_document("$inc").unwrap().clone();
        let dec = |text: &str| Bson::Decimal128(text.parse().unwrap());
        assert_eq!(inc(0), doc! { "count": -1i64, "price": dec("-2.5") });
        assert_eq!(inc(1), doc! { "count": 1i64, "price": dec("2.5") }, "the old price moves with the row");
    }

    #[test]
    fn aggregates_need_the_old_row_and_reset_on_truncate() {
        let table = stays(ReplicaIdentity::Default, &["id"]);
        let encoder = MongoEncoder::new(&config(false, statistics()));
        let delete = ChangeOp::Delete { old: row(["1", "NULL", "NULL", "NULL"]) };
        let err = encode(&encoder, &[transaction(300, &table, vec![delete])]).unwrap_err();
        assert!(err.reason.contains("ALTER TABLE public.stays REPLICA IDENTITY FULL"), "{err}");
        let ops = vec![
            ChangeOp::Insert { new: row(["1", "a", "3", "1"]) },
            ChangeOp::Truncate,
            ChangeOp::Insert { new: row(["2", "a", "5", "2"]) },
        ];
        let batch = encode(&encoder, &[transaction(400, &table, ops)]).unwrap();
        let resets = batch.aggregates.resets("_v");
        assert_eq!(resets.len(), 1);
        assert_eq!(
            resets[0].statement,
            Statement::Update(doc! {
                "q": { "_v": { "$lt": version(400, 1) } },
                "u": { "$set": { "_v": version(400, 1), "count": 0i64 }, "$unset": { "price": "" } },
                "multi": true,
            })
        );
        let after = increments(&batch, &[]);
        assert_eq!(after.len(), 1, "the insert before the truncate is dropped: {after:?}");
        assert_eq!(after[0].get_document("q").unwrap().get_i32("_id"), Ok(5));
    }
}
