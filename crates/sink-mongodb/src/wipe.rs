//! `rebuild --wipe` for MongoDB: removes what pgfanout wrote for one table,
//! and only that.
//!
//! - Row documents: those in the table's collection that carry the version
//!   field (pgfanout's mark; documents other applications insert have none)
//!   at a version below the bound. A document holding only pgfanout's
//!   fields (`_id`, the version field, the tombstone mark, the table's
//!   replicated columns) is deleted; one where another application added
//!   fields keeps them and loses only pgfanout's fields.
//! - Running aggregates: the count and sum fields pgfanout keeps in the
//!   aggregate collections are unset (other fields stay); the snapshot that
//!   follows counts every row again. Aggregates stay exact only when the
//!   table takes no writes during the rebuild (see docs/operations.md).
//!
//! Why it is safe while streaming: every delete and unset re-checks the
//! version bound in its filter, which the server evaluates atomically per
//! document, so a document the stream wrote meanwhile (a newer version)
//! is never touched.

use std::collections::HashSet;

use bson::{doc, Bson, Document};
use futures_util::TryStreamExt;
use pgfanout_core::{SinkError, TableSchema, Version};

use crate::encode::Namespace;
use crate::error::MongoSinkError;
use crate::sink::MongoSink;

/// Documents one page of the wipe reads.
const WIPE_PAGE: i64 = 1000;

impl MongoSink {
    /// See [`pgfanout_core::Sink::wipe`]; the count of documents removed or stripped.
    pub(crate) async fn wipe_table(&self, table: &TableSchema, older_than: Option<Version>) -> Result<u64, SinkError> {
        let name = self.name_for_errors();
        let label = table.table.to_string();
        let Some((rows, aggregates)) = self.encoder().wipe_targets(&table.table) else {
            return Err(SinkError::cannot_wipe(name, &label, "the sink does not route this table"));
        };
        let failed = |err: MongoSinkError| err.into_sink_error(name, format!("wiping table {label}"));
        let version_field = self.encoder().version_field().to_owned();
        let ours: HashSet<String> = table
            .columns
            .iter()
            .map(|column| column.name.clone())
            .chain(["_id".to_owned(), version_field.clone(), self.encoder().deleted_field().to_owned()])
            .collect();
        let written_by_us = match older_than {
            Some(version) => doc! { &version_field: { "$lt": version.to_sortable_string() } },
            None => doc! { &version_field: { "$exists": true } },
        };
        let client = self.client().await.map_err(failed)?;
        let collection = client.database(&rows.database).collection::<Document>(&rows.collection);
        let mut removed = 0u64;
        loop {
            // Each page's documents stop matching once handled (deleted, stripped of the
            // version field, or rewritten by the stream at a newer version), so the next
            // query finds the next ones.
            let find = collection.find(written_by_us.clone()).limit(WIPE_PAGE);
            let page: Vec<Document> = self
                .timed(|| format!("find on {rows}"), async { find.await?.try_collect().await })
                .await
                .map_err(failed)?;
            if page.is_empty() {
                break;
            }
            let (mut whole, mut shared) = (Vec::new(), Vec::new());
            for document in page {
                let Some(id) = document.get("_id").cloned() else { continue };
                if document.keys().all(|field| ours.contains(field)) {
                    whole.push(id);
                } else {
                    shared.push(id);
                }
            }
            if !whole.is_empty() {
                let mut filter = written_by_us.clone();
                filter.insert("_id", doc! { "$in": whole });
                let deleted =
                    self.timed(|| format!("delete on {rows}"), collection.delete_many(filter)).await.map_err(failed)?;
                removed += deleted.deleted_count;
            }
            if !shared.is_empty() {
                let mut filter = written_by_us.clone();
                filter.insert("_id", doc! { "$in": shared });
                let unset: Document =
                    ours.iter().filter(|field| *field != "_id").map(|field| (field.clone(), Bson::from(""))).collect();
                let stripped = self
                    .timed(|| format!("update on {rows}"), collection.update_many(filter, doc! { "$unset": unset }))
                    .await
                    .map_err(failed)?;
                removed += stripped.modified_count;
            }
        }
        for (namespace, fields) in aggregates {
            self.unset_aggregates(client, &namespace, &fields).await.map_err(failed)?;
        }
        tracing::info!(sink = %name, table = %label, removed, "wiped");
        Ok(removed)
    }

    /// Unsets pgfanout's fields of every aggregate document in `namespace`.
    async fn unset_aggregates(
        &self,
        client: &mongodb::Client,
        namespace: &Namespace,
        fields: &[String],
    ) -> Result<(), MongoSinkError> {
        let collection = client.database(&namespace.database).collection::<Document>(&namespace.collection);
        let unset: Document = fields.iter().map(|field| (field.clone(), Bson::from(""))).collect();
        let update = collection.update_many(doc! {}, doc! { "$unset": unset });
        self.timed(|| format!("update on {namespace}"), update).await.map(drop)
    }
}
