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
//! Not compared: running aggregates (`[[sink.table.aggregate]]`); `verify`
//! says so, and `--repair` refuses such tables, because a repair written
//! through the apply path would count the row into the aggregate again.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bson::{doc, Bson, Document};
use futures_util::TryStreamExt;
use pgfanout_core::readback::{key_row, KeyPage, ReadBack, StoredColumns};
use pgfanout_core::{Row, SinkError, TableSchema};

use crate::encode::canonical;
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

    fn unverifiable(&self, table: &TableSchema) -> Vec<String> {
        if self.encoder().has_aggregates(table) {
            vec!["running aggregates (their collections are not compared; --repair refuses this table)".into()]
        } else {
            Vec::new()
        }
    }

    fn repairable(&self, table: &TableSchema) -> Result<(), String> {
        if self.encoder().has_aggregates(table) {
            Err(format!(
                "table {} feeds running aggregates, which a repair through the apply path would count twice; \
                 rebuild the sink instead (pgfanout rebuild)",
                table.table
            ))
        } else {
            Ok(())
        }
    }
}
