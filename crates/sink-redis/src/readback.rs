//! Reading rows back for `verify` (see [`pgfanout_core::readback`]).
//!
//! Redis stores PostgreSQL's text of each column as is, so the normalised
//! form is that text: a hash's fields, or a JSON document's string values,
//! without the version field; NULL is absent in both (a hash leaves the
//! field out, a document writes `null`). The keys of a table are found with
//! `SCAN … MATCH <key pattern> TYPE hash|string`, not the index set, so rows
//! written behind pgfanout's back are found too; a key the pattern matches
//! counts only when the row it holds renders that same key.
//!
//! Digests ([`ReadBack::fetch_digests`]) are taken straight from the
//! `HGETALL` replies' bytes, and expected ones from the row's bytes, so the
//! first pass over a table builds no map per row.

use std::sync::Arc;

use async_trait::async_trait;
use pgfanout_core::readback::{key_row, text_columns, KeyPage, ReadBack, RowDigest, StoredColumns};
use pgfanout_core::{ColumnValue, Row, SinkError, TableSchema};

use crate::encode::RowFormat;
use crate::error::RedisSinkError;
use crate::sink::RedisSink;

/// Keys one `SCAN` call asks for.
const SCAN_COUNT: usize = 1000;

impl RedisSink {
    /// Rows stored under `keys`, normalised; `None` where a key is absent.
    async fn read_rows(
        &self,
        keys: &[String],
        format: RowFormat,
    ) -> Result<Vec<Option<StoredColumns>>, RedisSinkError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let version_field = self.encoder().version_field().map(str::to_owned);
        let rows = match format {
            RowFormat::Hash => {
                let hashes: Vec<std::collections::BTreeMap<String, String>> = self.read_each(keys, "HGETALL").await?;
                hashes
                    .into_iter()
                    .map(|mut fields| {
                        if fields.is_empty() {
                            return None;
                        }
                        if let Some(field) = &version_field {
                            fields.remove(field);
                        }
                        Some(fields)
                    })
                    .collect()
            }
            RowFormat::Json => {
                let documents: Vec<Option<String>> = self.read_each(keys, "GET").await?;
                documents
                    .into_iter()
                    .map(|document| document.map(|text| json_columns(&text, version_field.as_deref())))
                    .collect()
            }
        };
        Ok(rows)
    }

    /// `command` (`HGETALL`, `GET`) on every key of `keys`, pipelined in
    /// one round trip; the replies in key order.
    async fn read_each<T: redis::FromRedisValue>(
        &self,
        keys: &[String],
        command: &str,
    ) -> Result<Vec<T>, RedisSinkError> {
        let mut connection = self.connection().await?;
        let mut pipeline = redis::pipe();
        for key in keys {
            pipeline.cmd(command).arg(key);
        }
        pipeline
            .query_async(&mut connection)
            .await
            .map_err(|source| RedisSinkError::Command { what: format!("reading {} rows back", keys.len()), source })
    }

    /// The digests of the hashes under `keys` (see [`RowDigest`]), from the
    /// replies' bytes; `None` where a key is absent.
    async fn read_digests(&self, keys: &[String]) -> Result<Vec<Option<RowDigest>>, RedisSinkError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let version_field = self.encoder().version_field().map(str::to_owned);
        let replies: Vec<redis::Value> = self.read_each(keys, "HGETALL").await?;
        replies.iter().map(|reply| hash_digest(reply, version_field.as_deref().map(str::as_bytes))).collect()
    }

    async fn scan_page(&self, table: &Arc<TableSchema>, cursor: Option<String>) -> Result<KeyPage, RedisSinkError> {
        let pattern = self.encoder().key_pattern(table)?;
        let format = self.table_format(table)?;
        let start: u64 = cursor.as_deref().and_then(|c| c.parse().ok()).unwrap_or(0);
        let mut connection = self.connection().await?;
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(start)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .arg("TYPE")
            .arg(match format {
                RowFormat::Hash => "hash",
                RowFormat::Json => "string",
            })
            .query_async(&mut connection)
            .await
            .map_err(|source| RedisSinkError::Command { what: format!("SCAN MATCH {pattern}"), source })?;
        let key_names: Vec<&str> =
            table.key_positions().map(|position| table.columns[position].name.as_str()).collect();
        let key_values = self.read_key_columns(&keys, format, &key_names).await?;
        let mut page = KeyPage { keys: Vec::new(), next: (next != 0).then(|| next.to_string()) };
        for (key, texts) in keys.iter().zip(key_values) {
            let Some(texts) = texts else { continue };
            // Only a key the row itself renders is a row of this table.
            let row = key_row(table, &texts);
            if self.encoder().locate(table, &row).is_ok_and(|(rendered, _)| rendered == *key) {
                page.keys.push(row);
            }
        }
        Ok(page)
    }

    /// The key columns' values stored under each of `keys` (only those
    /// fields of a hash: listing keys reads little); `None` where one is missing.
    async fn read_key_columns(
        &self,
        keys: &[String],
        format: RowFormat,
        names: &[&str],
    ) -> Result<Vec<Option<Vec<String>>>, RedisSinkError> {
        if format == RowFormat::Json {
            let rows = self.read_rows(keys, format).await?;
            return Ok(rows
                .into_iter()
                .map(|row| row.and_then(|row| names.iter().map(|name| row.get(*name).cloned()).collect()))
                .collect());
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut connection = self.connection().await?;
        let mut pipeline = redis::pipe();
        for key in keys {
            pipeline.cmd("HMGET").arg(key).arg(names);
        }
        let values: Vec<Vec<Option<String>>> = pipeline.query_async(&mut connection).await.map_err(|source| {
            RedisSinkError::Command { what: format!("reading the keys of {} rows", keys.len()), source }
        })?;
        Ok(values.into_iter().map(|fields| fields.into_iter().collect()).collect())
    }

    fn table_format(&self, table: &Arc<TableSchema>) -> Result<RowFormat, RedisSinkError> {
        let probe: Row = vec![ColumnValue::Text(bytes_of("0")); table.columns.len()];
        Ok(self.encoder().locate(table, &probe)?.1)
    }
}

/// The digest of an `HGETALL` reply (RESP2 flat array or RESP3 map), the
/// version field left out; `None` for an empty hash (no key).
fn hash_digest(reply: &redis::Value, version_field: Option<&[u8]>) -> Result<Option<RowDigest>, RedisSinkError> {
    use redis::Value;
    // What parsing the reply into a map reports, as `fetch` does.
    let malformed = || RedisSinkError::Command {
        what: "reading a row back".into(),
        source: redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "an HGETALL reply that is not a hash",
            format!("{reply:?}"),
        )),
    };
    fn bytes(value: &redis::Value) -> Option<&[u8]> {
        match value {
            redis::Value::BulkString(bytes) => Some(bytes.as_slice()),
            redis::Value::SimpleString(text) => Some(text.as_bytes()),
            _ => None,
        }
    }
    let mut digest = RowDigest::default();
    let mut fields = 0usize;
    let mut add = |name: &Value, value: &Value| -> Result<(), RedisSinkError> {
        let (name, value) = (bytes(name).ok_or_else(malformed)?, bytes(value).ok_or_else(malformed)?);
        fields += 1;
        if Some(name) != version_field {
            digest.add(name, value);
        }
        Ok(())
    };
    match reply {
        Value::Array(items) if items.len() % 2 == 0 => {
            for pair in items.chunks_exact(2) {
                add(&pair[0], &pair[1])?;
            }
        }
        Value::Map(pairs) => {
            for (name, value) in pairs {
                add(name, value)?;
            }
        }
        Value::Nil => {}
        _ => return Err(malformed()),
    }
    Ok((fields > 0).then_some(digest))
}

fn bytes_of(text: &str) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(text.as_bytes())
}

/// A JSON row document's columns: string values as they are, other values
/// as JSON text, `null` and the version field left out.
fn json_columns(text: &str, version_field: Option<&str>) -> StoredColumns {
    let Ok(serde_json::Value::Object(object)) = serde_json::from_str::<serde_json::Value>(text) else {
        // Not a document pgfanout wrote: every column differs.
        return StoredColumns::from([("(document)".to_owned(), text.to_owned())]);
    };
    object
        .into_iter()
        .filter(|(name, value)| !value.is_null() && Some(name.as_str()) != version_field)
        .map(|(name, value)| match value {
            serde_json::Value::String(text) => (name, text),
            other => (name, other.to_string()),
        })
        .collect()
}

#[async_trait]
impl ReadBack for RedisSink {
    fn expected(&self, table: &Arc<TableSchema>, row: &Row) -> Result<StoredColumns, SinkError> {
        Ok(text_columns(table, row))
    }

    async fn fetch(&self, table: &Arc<TableSchema>, rows: &[Row]) -> Result<Vec<Option<StoredColumns>>, SinkError> {
        let name = self.name_for_errors();
        let context = || format!("reading rows of {} back", table.table);
        let mut keys = Vec::with_capacity(rows.len());
        let mut format = RowFormat::Hash;
        for row in rows {
            let (key, row_format) =
                self.encoder().locate(table, row).map_err(|err| err.into_sink_error(name, context()))?;
            keys.push(key);
            format = row_format;
        }
        self.read_rows(&keys, format).await.map_err(|err| err.into_sink_error(name, context()))
    }

    /// Straight from the row's bytes: [`text_columns`]'s pairs.
    fn expected_digest(&self, table: &Arc<TableSchema>, row: &Row) -> Result<RowDigest, SinkError> {
        let mut digest = RowDigest::default();
        for (column, value) in table.columns.iter().zip(row) {
            if let Some(bytes) = value.as_bytes() {
                digest.add(column.name.as_bytes(), bytes);
            }
        }
        Ok(digest)
    }

    /// Hashes: from the `HGETALL` replies' bytes; JSON rows: from [`ReadBack::fetch`].
    async fn fetch_digests(&self, table: &Arc<TableSchema>, rows: &[Row]) -> Result<Vec<Option<RowDigest>>, SinkError> {
        let name = self.name_for_errors();
        let context = || format!("reading rows of {} back", table.table);
        let mut keys = Vec::with_capacity(rows.len());
        for row in rows {
            let (key, format) =
                self.encoder().locate(table, row).map_err(|err| err.into_sink_error(name, context()))?;
            if format == RowFormat::Json {
                let stored = self.fetch(table, rows).await?;
                return Ok(stored.iter().map(|columns| columns.as_ref().map(RowDigest::of)).collect());
            }
            keys.push(key);
        }
        self.read_digests(&keys).await.map_err(|err| err.into_sink_error(name, context()))
    }

    async fn scan_keys(&self, table: &Arc<TableSchema>, cursor: Option<String>) -> Result<KeyPage, SinkError> {
        let name = self.name_for_errors();
        self.scan_page(table, cursor)
            .await
            .map_err(|err| err.into_sink_error(name, format!("listing the keys of {}", table.table)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_documents_normalise_like_hashes() {
        let columns = json_columns(r#"{"_v":"00.01","id":"1","note":null,"n":"2.50"}"#, Some("_v"));
        assert_eq!(columns, StoredColumns::from([("id".into(), "1".into()), ("n".into(), "2.50".into())]));
        assert!(json_columns("not json", None).contains_key("(document)"));
    }
}
