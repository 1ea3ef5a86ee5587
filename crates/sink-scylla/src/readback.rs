//! Reading rows back for `verify` (see [`pgfanout_core::readback`]).
//!
//! A source row lives in every target table of its source table. Both sides
//! of the comparison are CQL values: what the sink would bind for the row
//! (the apply path's conversion, [`to_cql`], to the column types the store
//! reports) and what a `SELECT` by the row's target key returns; each is
//! normalised to one text per column (sets and maps sorted, empty
//! collections and empty values as NULL, since Cassandra stores an empty
//! collection as no value). With several target tables a column is named
//! `table.column`.
//!
//! The keys a table holds are listed by paging through every target table
//! keyed by source key columns only (`SELECT key… FROM ks.t`, the driver's
//! paging state as the cursor: token order, then clustering order, so a
//! partition larger than a page is paged through too). A target keyed by
//! other columns cannot be searched by a source key; rows only it holds are
//! not looked for (said in the report).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use pgfanout_core::readback::{key_row, KeyPage, ReadBack, StoredColumns};
use pgfanout_core::{Row, Sink, SinkError, TableName, TableSchema};
use pgoutput::Value;
use scylla::frame::response::result::ColumnType;
use scylla::response::PagingState;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;

use crate::encode::{cql_name, TargetLayout};
use crate::error::ScyllaSinkError;
use crate::sink::ScyllaSink;
use crate::types::to_cql;

/// Rows one page of [`ReadBack::scan_keys`] reads.
const SCAN_PAGE: i32 = 2000;

/// Rows read by key at once.
const READ_CONCURRENCY: usize = 64;

/// Prepared read statements per source table (see [`ReadTarget`]).
pub(crate) type ReadTargets = Mutex<HashMap<TableName, Arc<Vec<ReadTarget>>>>;

/// How one target table is read back.
pub(crate) struct ReadTarget {
    layout: TargetLayout,
    /// `SELECT key…, value… FROM ks.t WHERE key = ?…`.
    select: PreparedStatement,
    /// The store's types of the selected columns, in select order.
    types: Vec<ColumnType<'static>>,
    /// `SELECT key… FROM ks.t`, when the target is keyed by source key
    /// columns only (so a stored row names a source key).
    scan: Option<PreparedStatement>,
    /// Whether columns are named `table.column` (several targets).
    qualify: bool,
}

impl ReadTarget {
    fn column_name(&self, name: &str) -> String {
        match self.qualify {
            true => format!("{}.{name}", self.layout.qualified.rsplit('.').next().unwrap_or_default()),
            false => name.to_owned(),
        }
    }

    /// Selected columns: key, then values, as (position in the shape, name).
    fn columns(&self) -> impl Iterator<Item = &(usize, String)> {
        self.layout.key.iter().chain(&self.layout.values)
    }
}

impl ScyllaSink {
    fn read_error(table: &str, reason: impl Into<String>) -> ScyllaSinkError {
        ScyllaSinkError::ReadBack { table: table.to_owned(), reason: reason.into() }
    }

    async fn read_targets(&self, table: &Arc<TableSchema>) -> Result<Arc<Vec<ReadTarget>>, ScyllaSinkError> {
        if let Some(known) = self.read_targets.lock().unwrap_or_else(|p| p.into_inner()).get(&table.table) {
            return Ok(known.clone());
        }
        let session = self.session().await?;
        let layouts = self.target_layouts(table)?;
        let qualify = layouts.len() > 1;
        let mut targets = Vec::with_capacity(layouts.len());
        for layout in layouts {
            let names = |columns: &[(usize, String)]| {
                columns.iter().map(|(_, name)| cql_name(name).into_owned()).collect::<Vec<_>>()
            };
            let keys = names(&layout.key);
            let selected: Vec<String> = keys.iter().cloned().chain(names(&layout.values)).collect();
            let condition: Vec<String> = keys.iter().map(|key| format!("{key} = ?")).collect();
            let select: Arc<str> =
                format!("SELECT {} FROM {} WHERE {}", selected.join(", "), layout.qualified, condition.join(" AND "))
                    .into();
            let select = self.prepare(&session, &select).await?;
            let types: Vec<ColumnType<'static>> = select
                .get_current_result_set_col_specs()
                .get()
                .iter()
                .map(|spec| spec.typ().clone().into_owned())
                .collect();
            if types.len() != selected.len() {
                return Err(Self::read_error(&layout.qualified, "the store returned other columns than selected"));
            }
            let keyed_by_source_key = layout.key.iter().all(|(position, _)| table.columns[*position].is_key)
                && layout.key.len() == table.key_positions().count();
            let scan = if keyed_by_source_key {
                let cql: Arc<str> = format!("SELECT {} FROM {}", keys.join(", "), layout.qualified).into();
                let mut scan = self.prepare(&session, &cql).await?;
                scan.set_page_size(SCAN_PAGE);
                Some(scan)
            } else {
                None
            };
            targets.push(ReadTarget { layout, select, types, scan, qualify });
        }
        let targets = Arc::new(targets);
        self.read_targets.lock().unwrap_or_else(|p| p.into_inner()).insert(table.table.clone(), targets.clone());
        Ok(targets)
    }

    fn known_targets(&self, table: &TableSchema) -> Result<Arc<Vec<ReadTarget>>, ScyllaSinkError> {
        self.read_targets.lock().unwrap_or_else(|p| p.into_inner()).get(&table.table).cloned().ok_or_else(|| {
            Self::read_error(&table.table.to_string(), "read back before it was prepared (a bug in verify)")
        })
    }

    fn typed(table: &TableSchema, row: &Row) -> Result<Vec<Option<Value>>, ScyllaSinkError> {
        table.typed_row(row).map_err(|source| ScyllaSinkError::Value { table: table.table.to_string(), source })
    }

    /// What the sink would write for `row` into every target, normalised.
    fn expected_columns(&self, table: &TableSchema, row: &Row) -> Result<StoredColumns, ScyllaSinkError> {
        let typed = Self::typed(table, row)?;
        let mut columns = StoredColumns::new();
        for target in self.known_targets(table)?.iter() {
            for ((position, name), column_type) in target.columns().zip(&target.types) {
                let Some(value) = typed.get(*position).cloned().flatten() else { continue };
                let converted = to_cql(&value, column_type).map_err(|source| ScyllaSinkError::Conversion {
                    table: target.layout.qualified.clone(),
                    column: name.clone(),
                    source,
                })?;
                if let Some(text) = converted.as_ref().and_then(comparable) {
                    columns.insert(target.column_name(name), text);
                }
            }
        }
        Ok(columns)
    }

    /// One target's row under the target key of `typed`; `Ok(None)` when the
    /// row is not there, or its key cannot be made from `typed` (a key row
    /// of a target keyed by other columns).
    async fn select_row(
        &self,
        session: &scylla::client::session::Session,
        target: &ReadTarget,
        typed: &[Option<Value>],
    ) -> Result<Option<StoredColumns>, ScyllaSinkError> {
        let mut key = Vec::with_capacity(target.layout.key.len());
        for ((position, name), column_type) in target.layout.key.iter().zip(&target.types) {
            let Some(value) = typed.get(*position).cloned().flatten().filter(|value| !value.is_null()) else {
                return Ok(None);
            };
            key.push(to_cql(&value, column_type).map_err(|source| ScyllaSinkError::Conversion {
                table: target.layout.qualified.clone(),
                column: name.clone(),
                source,
            })?);
        }
        let what = || format!("reading a row of {} back", target.layout.qualified);
        let result = session
            .execute_unpaged(&target.select, key)
            .await
            .map_err(|source| ScyllaSinkError::Execute { what: what(), source: Box::new(source) })?;
        let rows =
            result.into_rows_result().map_err(|err| Self::read_error(&target.layout.qualified, err.to_string()))?;
        let mut rows = rows
            .rows::<scylla::value::Row>()
            .map_err(|err| Self::read_error(&target.layout.qualified, err.to_string()))?;
        let Some(row) = rows.next() else { return Ok(None) };
        let row = row.map_err(|err| Self::read_error(&target.layout.qualified, err.to_string()))?;
        Ok(Some(
            target
                .columns()
                .zip(row.columns)
                .filter_map(|((_, name), value)| Some((target.column_name(name), comparable(&value?)?)))
                .collect(),
        ))
    }

    async fn fetch_rows(
        &self,
        table: &Arc<TableSchema>,
        rows: &[Row],
    ) -> Result<Vec<Option<StoredColumns>>, ScyllaSinkError> {
        let targets = self.read_targets(table).await?;
        let session = self.session().await?;
        let session = session.as_ref();
        let targets = targets.as_ref();
        let reads: Vec<_> = rows.iter().map(|row| self.fetch_one(session, targets, table, row)).collect();
        stream::iter(reads).buffered(READ_CONCURRENCY).try_collect().await
    }

    /// Every target's row for `row`, merged; `None` when no target has it.
    async fn fetch_one(
        &self,
        session: &scylla::client::session::Session,
        targets: &[ReadTarget],
        table: &TableSchema,
        row: &Row,
    ) -> Result<Option<StoredColumns>, ScyllaSinkError> {
        let typed = Self::typed(table, row)?;
        let mut found: Option<StoredColumns> = None;
        for target in targets {
            if let Some(columns) = self.select_row(session, target, &typed).await? {
                found.get_or_insert_with(StoredColumns::new).extend(columns);
            }
        }
        Ok(found)
    }

    /// A page of the keys in the target tables keyed by source key
    /// columns. The cursor is `<target index>:<paging state in hex>`.
    async fn scan_page(&self, table: &Arc<TableSchema>, cursor: Option<String>) -> Result<KeyPage, ScyllaSinkError> {
        let targets = self.read_targets(table).await?;
        let session = self.session().await?;
        let (mut index, mut state) = match cursor.as_deref().and_then(|c| c.split_once(':')) {
            Some((index, state)) => (index.parse::<usize>().unwrap_or(usize::MAX), decode_hex(state)),
            None => (0, None),
        };
        let mut page = KeyPage::default();
        while let Some(target) = targets.get(index) {
            let Some(scan) = &target.scan else {
                index += 1;
                state = None;
                continue;
            };
            let paging = state.take().map_or_else(PagingState::start, PagingState::new_from_raw_bytes);
            let (result, next) =
                session.execute_single_page(scan, (), paging).await.map_err(|source| ScyllaSinkError::Execute {
                    what: format!("listing the keys of {}", target.layout.qualified),
                    source: Box::new(source),
                })?;
            let rows =
                result.into_rows_result().map_err(|err| Self::read_error(&target.layout.qualified, err.to_string()))?;
            for row in rows
                .rows::<scylla::value::Row>()
                .map_err(|err| Self::read_error(&target.layout.qualified, err.to_string()))?
            {
                let row = row.map_err(|err| Self::read_error(&target.layout.qualified, err.to_string()))?;
                // The target's key columns, put back in the source key's order.
                let mut by_position: HashMap<usize, String> = HashMap::new();
                for ((position, _), value) in target.layout.key.iter().zip(&row.columns) {
                    if let Some(text) = value.as_ref().and_then(key_text) {
                        by_position.insert(*position, text);
                    }
                }
                let texts: Option<Vec<String>> =
                    table.key_positions().map(|position| by_position.remove(&position)).collect();
                match texts {
                    Some(texts) => page.keys.push(key_row(table, &texts)),
                    None => tracing::warn!(
                        sink = %Sink::name(self),
                        table = %table.table,
                        "a stored key is of a type verify cannot turn back into PostgreSQL's text; not checked for being extra"
                    ),
                }
            }
            match next {
                scylla::response::PagingStateResponse::HasMorePages { state } => {
                    page.next = Some(format!("{index}:{}", encode_hex(state.as_bytes_slice().map_or(&[][..], |b| b))));
                }
                scylla::response::PagingStateResponse::NoMorePages => {
                    page.next = targets.get(index + 1).map(|_| format!("{}:", index + 1));
                }
            }
            return Ok(page);
        }
        Ok(page)
    }
}

/// The comparable text of a CQL value; `None` for what Cassandra keeps as
/// no value (empty collections, the legacy empty value).
fn comparable(value: &CqlValue) -> Option<String> {
    Some(match value {
        CqlValue::Empty => return None,
        CqlValue::List(items) if items.is_empty() => return None,
        CqlValue::Set(items) if items.is_empty() => return None,
        CqlValue::Map(entries) if entries.is_empty() => return None,
        CqlValue::Text(text) | CqlValue::Ascii(text) => format!("{text:?}"),
        CqlValue::List(items) => format!("[{}]", items.iter().map(element).collect::<Vec<_>>().join(", ")),
        CqlValue::Set(items) => {
            let mut items: Vec<String> = items.iter().map(element).collect();
            items.sort();
            format!("{{{}}}", items.join(", "))
        }
        CqlValue::Map(entries) => {
            let mut entries: Vec<String> =
                entries.iter().map(|(key, value)| format!("{}: {}", element(key), element(value))).collect();
            entries.sort();
            format!("{{{}}}", entries.join(", "))
        }
        other => format!("{other:?}"),
    })
}

fn element(value: &CqlValue) -> String {
    comparable(value).unwrap_or_else(|| "null".to_owned())
}

/// PostgreSQL's text of a stored key value, for the types that round-trip exactly.
fn key_text(value: &CqlValue) -> Option<String> {
    match value {
        CqlValue::Text(text) | CqlValue::Ascii(text) => Some(text.clone()),
        CqlValue::TinyInt(n) => Some(n.to_string()),
        CqlValue::SmallInt(n) => Some(n.to_string()),
        CqlValue::Int(n) => Some(n.to_string()),
        CqlValue::BigInt(n) => Some(n.to_string()),
        CqlValue::Uuid(uuid) => Some(uuid.to_string()),
        CqlValue::Boolean(b) => Some(if *b { "t" } else { "f" }.to_owned()),
        _ => None,
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || text.len() % 2 != 0 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[async_trait]
impl ReadBack for ScyllaSink {
    async fn prepare(&self, table: &Arc<TableSchema>) -> Result<(), SinkError> {
        self.read_targets(table)
            .await
            .map(|_| ())
            .map_err(|err| err.into_sink_error(Sink::name(self), format!("preparing to read {} back", table.table)))
    }

    fn expected(&self, table: &Arc<TableSchema>, row: &Row) -> Result<StoredColumns, SinkError> {
        self.expected_columns(table, row)
            .map_err(|err| err.into_sink_error(Sink::name(self), format!("mapping a row of {}", table.table)))
    }

    async fn fetch(&self, table: &Arc<TableSchema>, rows: &[Row]) -> Result<Vec<Option<StoredColumns>>, SinkError> {
        self.fetch_rows(table, rows)
            .await
            .map_err(|err| err.into_sink_error(Sink::name(self), format!("reading rows of {} back", table.table)))
    }

    async fn scan_keys(&self, table: &Arc<TableSchema>, cursor: Option<String>) -> Result<KeyPage, SinkError> {
        self.scan_page(table, cursor)
            .await
            .map_err(|err| err.into_sink_error(Sink::name(self), format!("listing the keys of {}", table.table)))
    }

    fn unverifiable(&self, table: &TableSchema) -> Vec<String> {
        let Ok(targets) = self.known_targets(table) else { return Vec::new() };
        targets
            .iter()
            .filter(|target| target.scan.is_none())
            .map(|target| {
                format!(
                    "rows that only {} holds (it is keyed by other columns than the primary key, so it cannot be \
                     listed by source key)",
                    target.layout.qualified
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_collections_are_no_value_and_sets_and_maps_compare_sorted() {
        assert_eq!(comparable(&CqlValue::List(vec![])), None);
        assert_eq!(comparable(&CqlValue::Empty), None);
        let text = |t: &str| CqlValue::Text(t.to_owned());
        assert_eq!(
            comparable(&CqlValue::Set(vec![text("b"), text("a")])),
            comparable(&CqlValue::Set(vec![text("a"), text("b")]))
        );
        assert_eq!(
            comparable(&CqlValue::Map(vec![(text("y"), text("1")), (text("x"), text("2"))])),
            comparable(&CqlValue::Map(vec![(text("x"), text("2")), (text("y"), text("1"))]))
        );
        assert_ne!(
            comparable(&CqlValue::List(vec![text("b"), text("a")])),
            comparable(&CqlValue::List(vec![text("a"), text("b")]))
        );
        assert_ne!(comparable(&CqlValue::Int(1)), comparable(&CqlValue::Text("1".into())));
    }

    #[test]
    fn paging_states_survive_the_cursor() {
        let bytes = vec![0u8, 1, 0xab, 0xff];
        assert_eq!(decode_hex(&encode_hex(&bytes)), Some(bytes));
        assert_eq!(decode_hex(""), None);
        assert_eq!(decode_hex("abc"), None);
    }
}
