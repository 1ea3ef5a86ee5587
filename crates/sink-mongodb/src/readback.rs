//! Reading documents back for `verify` (see [`pgfanout_core::readback`]).
//!
//! The normalised form of a field is the canonical extended JSON of its BSON
//! value, on both sides: what the upsert of the row would `$set` (built by
//! the encoder itself) and what the document holds. Only the table's
//! replicated fields are compared, so fields other applications add stay
//! out of it; a tombstone counts as no document. A document's key is read
//! back from `_id` (the key columns' values): integers and strings give
//! PostgreSQL's text exactly; an `_id` of another type is skipped when
//! looking for extra documents (said in the report).
//!
//! Running aggregates (`[[sink.table.aggregate]]`) are recomputed from
//! PostgreSQL's rows (`AggregateCheck`): each group's count and sums, as
//! the sink's own plan adds them up, against the group documents (a
//! document whose count is 0 counts as absent). A repair `$set`s the
//! recomputed values with the repair's version (the stream's later deltas
//! apply on top) and deletes groups no row makes. A row repaired through
//! the apply path moves its aggregates too; the aggregate repair, which
//! runs after the rows', sets them right again.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bson::{doc, Bson, Document};
use futures_util::TryStreamExt;
use pgfanout_core::readback::{
    key_row, Derivation, DerivedDifference, DerivedMismatch, KeyPage, ReadBack, StoredColumns,
};
use pgfanout_core::{Row, SinkError, TableSchema, Version};

use crate::encode::{canonical, AggregatePlan, Namespace};
use crate::error::MongoSinkError;
use crate::sink::MongoSink;

/// Documents one page of [`ReadBack::scan_keys`] reads.
const SCAN_PAGE: i64 = 2000;

impl MongoSink {
    fn mapping_error(&self, table: &TableSchema, reason: String) -> SinkError {
        SinkError::permanent(self.name_for_errors(), format!("table {}: {reason}", table.table))
    }

    /// The stored fields of `document` that are the table's columns, normalised.
    fn normalise(&self, table: &TableSchema, document: &Document) -> Option<StoredColumns> {
        if let Some(field) = self.encoder().tombstone_field() {
            if document.get_bool(field).unwrap_or(false) {
                return None;
            }
        }
        Some(
            table
                .columns
                .iter()
                .filter_map(|column| match document.get(&column.name) {
                    None | Some(Bson::Null) => None,
                    Some(value) => Some((column.name.clone(), comparable(value))),
                })
                .collect(),
        )
    }

    async fn find(&self, table: &Arc<TableSchema>, rows: &[Row]) -> Result<Vec<Option<StoredColumns>>, MongoSinkError> {
        let Some(first) = rows.first() else { return Ok(Vec::new()) };
        let (namespace, _) = self
            .encoder()
            .locate(table, first)
            .map_err(|reason| MongoSinkError::Verify { table: table.table.to_string(), reason })?;
        let mut ids = Vec::with_capacity(rows.len());
        for row in rows {
            let (_, id) = self
                .encoder()
                .locate(table, row)
                .map_err(|reason| MongoSinkError::Verify { table: table.table.to_string(), reason })?;
            ids.push(id);
        }
        let collection =
            self.client().await?.database(&namespace.database).collection::<Document>(&namespace.collection);
        let what = || format!("reading documents of {namespace} back");
        let cursor = self.timed(what, collection.find(doc! { "_id": { "$in": ids.clone() } })).await?;
        let documents: Vec<Document> = self.timed(what, cursor.try_collect()).await?;
        let by_id: HashMap<String, &Document> =
            documents.iter().filter_map(|document| Some((comparable(document.get("_id")?), document))).collect();
        Ok(ids
            .iter()
            .map(|id| by_id.get(&canonical(id)).and_then(|document| self.normalise(table, document)))
            .collect())
    }

    async fn scan(&self, table: &Arc<TableSchema>, cursor: Option<String>) -> Result<KeyPage, MongoSinkError> {
        let probe = key_row(table, &vec!["0".to_owned(); table.key_positions().count()]);
        let (namespace, _) = self
            .encoder()
            .locate(table, &probe)
            .map_err(|reason| MongoSinkError::Verify { table: table.table.to_string(), reason })?;
        let collection =
            self.client().await?.database(&namespace.database).collection::<Document>(&namespace.collection);
        let skip: u64 = cursor.as_deref().and_then(|c| c.parse().ok()).unwrap_or(0);
        let what = || format!("listing the documents of {namespace}");
        let found =
            self.timed(what, collection.find(doc! {}).sort(doc! { "_id": 1 }).skip(skip).limit(SCAN_PAGE)).await?;
        let documents: Vec<Document> = self.timed(what, found.try_collect()).await?;
        let mut page = KeyPage {
            next: (documents.len() as i64 == SCAN_PAGE).then(|| (skip + documents.len() as u64).to_string()),
            keys: Vec::new(),
        };
        let key_names: Vec<&str> =
            table.key_positions().map(|position| table.columns[position].name.as_str()).collect();
        for document in &documents {
            if self.normalise(table, document).is_none() {
                continue;
            }
            let Some(id) = document.get("_id") else { continue };
            let texts: Option<Vec<String>> = match (id, key_names.as_slice()) {
                (Bson::Document(parts), names) if names.len() > 1 => {
                    names.iter().map(|name| parts.get(name).and_then(key_text)).collect()
                }
                (single, [_]) => key_text(single).map(|text| vec![text]),
                _ => None,
            };
            match texts {
                Some(texts) => page.keys.push(key_row(table, &texts)),
                None => tracing::warn!(
                    sink = self.name_for_errors(),
                    table = %table.table,
                    "a document's _id is of a type verify cannot turn back into a key; not checked for being extra"
                ),
            }
        }
        Ok(page)
    }
}

/// The comparable text of a stored or expected value: canonical extended
/// JSON, with 32-bit integers widened to 64 bits (servers and drivers
/// narrow small Int64 values on the way back; the number is what counts).
fn comparable(value: &Bson) -> String {
    canonical(&widen(value))
}

fn widen(value: &Bson) -> Bson {
    match value {
        Bson::Int32(n) => Bson::Int64(i64::from(*n)),
        Bson::Array(items) => Bson::Array(items.iter().map(widen).collect()),
        Bson::Document(document) => {
            Bson::Document(document.iter().map(|(name, value)| (name.clone(), widen(value))).collect())
        }
        other => other.clone(),
    }
}

/// PostgreSQL's text of a key value stored as `value`, for the types that
/// round-trip exactly.
fn key_text(value: &Bson) -> Option<String> {
    match value {
        Bson::Int32(n) => Some(n.to_string()),
        Bson::Int64(n) => Some(n.to_string()),
        Bson::String(text) => Some(text.clone()),
        _ => None,
    }
}

#[async_trait]
impl ReadBack for MongoSink {
    fn expected(&self, table: &Arc<TableSchema>, row: &Row) -> Result<StoredColumns, SinkError> {
        let fields = self.encoder().row_fields(table, row).map_err(|reason| self.mapping_error(table, reason))?;
        Ok(fields.iter().map(|(name, value)| (name.clone(), comparable(value))).collect())
    }

    async fn fetch(&self, table: &Arc<TableSchema>, rows: &[Row]) -> Result<Vec<Option<StoredColumns>>, SinkError> {
        self.find(table, rows)
            .await
            .map_err(|err| err.into_sink_error(self.name_for_errors(), format!("reading rows of {} back", table.table)))
    }

    async fn scan_keys(&self, table: &Arc<TableSchema>, cursor: Option<String>) -> Result<KeyPage, SinkError> {
        self.scan(table, cursor)
            .await
            .map_err(|err| err.into_sink_error(self.name_for_errors(), format!("listing the keys of {}", table.table)))
    }

    fn derive(&self, table: &Arc<TableSchema>) -> Option<Box<dyn Derivation + '_>> {
        let aggregates = self.encoder().aggregates_of(table);
        (!aggregates.is_empty()).then(|| {
            Box::new(AggregateCheck {
                sink: self,
                table: Arc::clone(table),
                aggregates,
                plan: AggregatePlan::default(),
                expected: HashMap::new(),
            }) as Box<dyn Derivation + '_>
        })
    }
}

/// A table's running aggregates recomputed from its rows (see the module docs).
struct AggregateCheck<'a> {
    sink: &'a MongoSink,
    table: Arc<TableSchema>,
    /// Collection, group column, count field, summed fields.
    aggregates: Vec<(Arc<Namespace>, String, String, Vec<String>)>,
    plan: AggregatePlan,
    /// Per collection, after [`Derivation::compare`]: group (canonical `_id`) → `_id` and fields.
    expected: HashMap<Arc<Namespace>, HashMap<String, (Bson, Document)>>,
}

impl AggregateCheck<'_> {
    fn holder(namespace: &Namespace) -> String {
        format!("aggregate {}", namespace.collection)
    }

    fn error(&self, err: MongoSinkError, doing: String) -> SinkError {
        err.into_sink_error(self.sink.name_for_errors(), doing)
    }

    /// The group documents of `namespace` that count something, by canonical `_id`.
    async fn stored(&self, namespace: &Namespace) -> Result<HashMap<String, (Bson, Document)>, MongoSinkError> {
        let collection =
            self.sink.client().await?.database(&namespace.database).collection::<Document>(&namespace.collection);
        let what = || format!("reading the aggregate documents of {namespace}");
        let cursor = self.sink.timed(what, collection.find(doc! {})).await?;
        let documents: Vec<Document> = self.sink.timed(what, cursor.try_collect()).await?;
        Ok(documents
            .into_iter()
            .filter_map(|document| {
                let id = document.get("_id")?.clone();
                Some((comparable(&id), (id, document)))
            })
            .collect())
    }
}

/// The fields of a group document that an aggregate keeps, normalised.
fn aggregate_fields(document: &Document, count_field: &str, sums: &[String]) -> StoredColumns {
    std::iter::once(count_field)
        .chain(sums.iter().map(String::as_str))
        .filter_map(|field| match document.get(field) {
            None | Some(Bson::Null) => None,
            Some(value) => Some((field.to_owned(), comparable(value))),
        })
        .collect()
}

fn counts_nothing(fields: &StoredColumns, count_field: &str) -> bool {
    fields.get(count_field).is_none_or(|count| *count == comparable(&Bson::Int64(0)))
}

#[async_trait]
impl Derivation for AggregateCheck<'_> {
    fn add(&mut self, rows: &[Row]) -> Result<(), SinkError> {
        self.sink
            .encoder()
            .aggregate_rows(&self.table, rows, &mut self.plan)
            .map_err(|reason| self.sink.mapping_error(&self.table, format!("recomputing running aggregates: {reason}")))
    }

    async fn compare(&mut self) -> Result<Vec<DerivedMismatch>, SinkError> {
        let mut totals = self.plan.totals();
        let mut mismatches = Vec::new();
        for (namespace, group_by, count_field, sums) in &self.aggregates {
            let expected: HashMap<String, (Bson, Document)> = totals
                .remove(namespace)
                .unwrap_or_default()
                .into_iter()
                .map(|(id, fields)| (comparable(&id), (id, fields)))
                .filter(|(_, (_, fields))| !counts_nothing(&aggregate_fields(fields, count_field, sums), count_field))
                .collect();
            let stored = self
                .stored(namespace)
                .await
                .map_err(|err| self.error(err, format!("reading the aggregates of {}", self.table.table)))?;
            let group = |id: &Bson| format!("{group_by}={}", key_text(id).unwrap_or_else(|| canonical(id)));
            let mut found: Vec<(String, DerivedMismatch)> = Vec::new();
            for (key, (id, fields)) in &expected {
                let want = aggregate_fields(fields, count_field, sums);
                let difference = match stored.get(key) {
                    None => Some(DerivedDifference::Missing),
                    Some((_, document)) => {
                        let have = aggregate_fields(document, count_field, sums);
                        let differing: Vec<String> = want
                            .keys()
                            .chain(have.keys())
                            .filter(|field| want.get(*field) != have.get(*field))
                            .cloned()
                            .collect::<std::collections::BTreeSet<_>>()
                            .into_iter()
                            .collect();
                        (!differing.is_empty()).then_some(DerivedDifference::Fields(differing))
                    }
                };
                if let Some(difference) = difference {
                    found.push((
                        key.clone(),
                        DerivedMismatch { holder: Self::holder(namespace), group: group(id), difference },
                    ));
                }
            }
            for (key, (id, document)) in &stored {
                if !expected.contains_key(key)
                    && !counts_nothing(&aggregate_fields(document, count_field, sums), count_field)
                {
                    found.push((
                        key.clone(),
                        DerivedMismatch {
                            holder: Self::holder(namespace),
                            group: group(id),
                            difference: DerivedDifference::Extra,
                        },
                    ));
                }
            }
            found.sort_by(|a, b| a.0.cmp(&b.0));
            mismatches.extend(found.into_iter().map(|(_, mismatch)| mismatch));
            self.expected.insert(Arc::clone(namespace), expected);
        }
        Ok(mismatches)
    }

    async fn repair(&mut self, mismatches: &[DerivedMismatch], version: Version) -> Result<(), SinkError> {
        let version_field = self.sink.encoder().version_field().to_owned();
        for (namespace, group_by, _, sums) in &self.aggregates {
            let holder = Self::holder(namespace);
            let wanted: Vec<&DerivedMismatch> = mismatches.iter().filter(|m| m.holder == holder).collect();
            if wanted.is_empty() {
                continue;
            }
            let doing = || format!("repairing the aggregates of {} in {namespace}", self.table.table);
            let stored = self.stored(namespace).await.map_err(|err| self.error(err, doing()))?;
            let collection = self
                .sink
                .client()
                .await
                .map_err(|err| self.error(err, doing()))?
                .database(&namespace.database)
                .collection::<Document>(&namespace.collection);
            let expected = self.expected.get(namespace).cloned().unwrap_or_default();
            let group = |id: &Bson| format!("{group_by}={}", key_text(id).unwrap_or_else(|| canonical(id)));
            for (id, fields) in expected.values().filter(|(id, _)| wanted.iter().any(|m| m.group == group(id))) {
                let mut set = fields.clone();
                set.insert(version_field.clone(), version.to_sortable_string());
                let unset: Document = sums
                    .iter()
                    .filter(|sum| !fields.contains_key(sum.as_str()))
                    .map(|sum| (sum.clone(), Bson::String(String::new())))
                    .collect();
                let mut update = doc! { "$set": set };
                if !unset.is_empty() {
                    update.insert("$unset", unset);
                }
                self.sink
                    .timed(doing, collection.update_one(doc! { "_id": id.clone() }, update).upsert(true))
                    .await
                    .map_err(|err| self.error(err, doing()))?;
            }
            for (id, _) in stored.values().filter(|(id, _)| {
                !expected.contains_key(&comparable(id)) && wanted.iter().any(|m| m.group == group(id))
            }) {
                self.sink
                    .timed(doing, collection.delete_one(doc! { "_id": id.clone() }))
                    .await
                    .map_err(|err| self.error(err, doing()))?;
            }
        }
        Ok(())
    }
}
