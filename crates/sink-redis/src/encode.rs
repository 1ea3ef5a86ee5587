//! Pure mapping from transactions to Redis operations; no I/O.
//!
//! Each row is one hash whose fields are the row's non-NULL columns:
//! - insert: the key is replaced by the new row (`DEL`, then `HSET`);
//! - update: changed columns are written (`HSET`), columns that became NULL
//!   removed (`HDEL`), unchanged TOAST columns left alone; when the key
//!   itself changed the old hash is first copied to the new key (so
//!   unchanged TOAST values follow the row) and deleted;
//! - delete: `DEL`.
//!
//! Per table, optionally: cache invalidation — keys rendered from the old
//! and the new row are deleted (`invalidate`), or every member of a tracked
//! set and the set itself (`invalidate_sets`, one server-side script call);
//! an `EXPIRE` after each write (`ttl_secs`); and an
//! event appended to a stream (`XADD <stream> MAXLEN ~ N * …`) in the same
//! round trip, carrying op, table, key, commit LSN and ordinal, commit time
//! and the new/old rows as JSON. Events are at-least-once: a consumer
//! deduplicates by (`commit_lsn`, `ordinal`).
//!
//! The same batch encoded twice gives the same operations, and applying them
//! twice gives the same state: that is what makes re-delivery harmless.

use std::collections::HashMap;
use std::sync::Arc;

use pgfanout_core::{row_json, Change, ChangeOp, ChangeRef, ColumnValue, Lsn, Row, TableName, TableSchema};

use crate::error::RedisSinkError;

/// One Redis operation; field names and values borrow from the changes
/// (no per-field copy: the batch is written while the changes are alive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisOp<'a> {
    /// `DEL key`
    Del(String),
    /// `HSET key field value …` (never empty)
    HSet(String, Vec<(&'a str, &'a [u8])>),
    /// `HDEL key field …` (never empty)
    HDel(String, Vec<&'a str>),
    /// `COPY from to REPLACE`
    Copy(String, String),
    /// `SET key value`
    Set(String, String),
    /// `EXPIRE key seconds`
    Expire(String, u64),
    /// Deletes every member of the set `key`, then the set (a Lua script).
    DelSetMembers(String),
    /// `XADD stream MAXLEN ~ max_len * field value …`
    XAdd {
        /// Stream key.
        stream: String,
        /// Approximate length cap.
        max_len: u64,
        /// Entry fields, in order.
        fields: Vec<(&'static str, String)>,
    },
}

/// Per-table options beyond the key template.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableOptions {
    /// Key template; the default (`<table>:{pk}`) when `None`.
    pub key: Option<KeyTemplate>,
    /// Seconds a written row lives (`EXPIRE` after each write).
    pub ttl_secs: Option<u64>,
    /// Event stream key and its approximate length cap.
    pub stream: Option<(String, u64)>,
    /// Keys to delete on any change, rendered from the old and the new row.
    pub invalidate: Vec<KeyTemplate>,
    /// Sets whose members (and themselves) are deleted on any change.
    pub invalidate_sets: Vec<KeyTemplate>,
}

/// A parsed key template such as `reservation:{id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    parts: Vec<KeyPart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyPart {
    Literal(String),
    Column(String),
}

impl KeyTemplate {
    /// Parses `{column}` placeholders; `{{` and `}}` are literal braces.
    pub fn parse(template: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = template.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut column = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        column.push(c);
                    }
                    if !closed || column.is_empty() || column.contains('{') {
                        return Err(format!("key template {template:?} has an empty or unclosed {{column}}"));
                    }
                    if !literal.is_empty() {
                        parts.push(KeyPart::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(KeyPart::Column(column));
                }
                '}' => {
                    return Err(format!("key template {template:?} has a stray '}}' (write '}}}}' for a literal one)"))
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(KeyPart::Literal(literal));
        }
        if !parts.iter().any(|p| matches!(p, KeyPart::Column(_))) {
            return Err(format!("key template {template:?} names no {{column}}: every row would share one key"));
        }
        Ok(KeyTemplate { parts })
    }

    /// The default template: table name, then each key column, joined by `:`.
    pub fn default_for(table: &TableSchema) -> Result<Self, RedisSinkError> {
        let prefix = if table.table.schema == "public" { table.table.name.clone() } else { table.table.to_string() };
        let mut parts = vec![KeyPart::Literal(prefix)];
        for position in table.key_positions() {
            parts.push(KeyPart::Literal(":".into()));
            parts.push(KeyPart::Column(table.columns[position].name.clone()));
        }
        if parts.len() == 1 {
            return Err(RedisSinkError::Mapping {
                table: table.table.to_string(),
                reason: "the table has no primary key or replica identity columns; add a primary key or set `key` for it in the sink config".into(),
            });
        }
        Ok(KeyTemplate { parts })
    }
}

/// A template resolved against one table shape: column positions instead of names.
#[derive(Debug)]
struct ResolvedKey {
    parts: Vec<ResolvedPart>,
}

#[derive(Debug)]
enum ResolvedPart {
    Literal(String),
    Column { position: usize, name: String },
}

impl ResolvedKey {
    fn resolve(template: &KeyTemplate, table: &TableSchema) -> Result<Self, RedisSinkError> {
        let parts = template
            .parts
            .iter()
            .map(|part| match part {
                KeyPart::Literal(text) => Ok(ResolvedPart::Literal(text.clone())),
                KeyPart::Column(name) => table
                    .position(name)
                    .map(|position| ResolvedPart::Column { position, name: name.clone() })
                    .ok_or_else(|| RedisSinkError::Mapping {
                        table: table.table.to_string(),
                        reason: format!("key template refers to column {name}, which the table does not publish"),
                    }),
            })
            .collect::<Result<_, _>>()?;
        Ok(ResolvedKey { parts })
    }

    /// Builds the key from `row` when every column it needs is present.
    fn try_render(&self, row: &Row) -> Option<String> {
        let mut key = String::new();
        for part in &self.parts {
            match part {
                ResolvedPart::Literal(text) => key.push_str(text),
                ResolvedPart::Column { position, .. } => {
                    key.push_str(&String::from_utf8_lossy(row.get(*position).and_then(ColumnValue::as_bytes)?));
                }
            }
        }
        Some(key)
    }

    /// Builds the key from `row`, taking a column from `fallback` where `row`
    /// lacks it (a key-only old tuple holds NULL for non-key columns).
    fn render(&self, table: &TableName, row: &Row, fallback: Option<&Row>) -> Result<String, RedisSinkError> {
        let mut key = String::new();
        for part in &self.parts {
            match part {
                ResolvedPart::Literal(text) => key.push_str(text),
                ResolvedPart::Column { position, name } => {
                    let value = row
                        .get(*position)
                        .and_then(ColumnValue::as_bytes)
                        .or_else(|| fallback.and_then(|f| f.get(*position)).and_then(ColumnValue::as_bytes))
                        .ok_or_else(|| RedisSinkError::Mapping {
                            table: table.to_string(),
                            reason: format!(
                                "key column {name} is NULL or missing in a row; key columns must be NOT NULL"
                            ),
                        })?;
                    key.push_str(&String::from_utf8_lossy(value));
                }
            }
        }
        Ok(key)
    }
}

/// Encodes batches for one sink; caches resolved templates per table shape.
#[derive(Debug)]
pub struct RedisEncoder {
    tables: HashMap<TableName, TableOptions>,
    resolved: HashMap<TableName, ResolvedTable>,
    checkpoint_key: String,
}

impl RedisEncoder {
    /// An encoder with the configured per-table options (tables without a
    /// template use the default).
    pub fn new(tables: HashMap<TableName, TableOptions>, checkpoint_key: String) -> Self {
        RedisEncoder { tables, resolved: HashMap::new(), checkpoint_key }
    }

    /// The operations applying `changes` in order, ending with the
    /// checkpoint `SET` when `checkpoint` is given.
    pub fn encode<'a>(
        &mut self,
        changes: &[ChangeRef<'a>],
        checkpoint: Option<Lsn>,
    ) -> Result<Vec<RedisOp<'a>>, RedisSinkError> {
        let mut ops = Vec::with_capacity(changes.len() * 2 + 1);
        for change in changes {
            self.encode_change(change, &mut ops)?;
        }
        if let Some(checkpoint) = checkpoint {
            ops.push(RedisOp::Set(self.checkpoint_key.clone(), checkpoint.to_string()));
        }
        Ok(ops)
    }

    fn encode_change<'a>(
        &mut self,
        change_ref: &ChangeRef<'a>,
        ops: &mut Vec<RedisOp<'a>>,
    ) -> Result<(), RedisSinkError> {
        let change: &'a Change = change_ref.change;
        let table = &change.table;
        let resolved = self.resolve(table)?;
        let key = &resolved.key;
        let written_key = match &change.op {
            ChangeOp::Insert { new } => {
                let key = key.render(&table.table, new, None)?;
                ops.push(RedisOp::Del(key.clone()));
                let (set, _) = split_fields(table, new);
                if !set.is_empty() {
                    ops.push(RedisOp::HSet(key.clone(), set));
                }
                key
            }
            ChangeOp::Update { old, new } => {
                let new_key = key.render(&table.table, new, None)?;
                if let Some(old) = old {
                    let old_key = key.render(&table.table, old, Some(new))?;
                    if old_key != new_key {
                        ops.push(RedisOp::Copy(old_key.clone(), new_key.clone()));
                        ops.push(RedisOp::Del(old_key));
                    }
                }
                let (set, unset) = split_fields(table, new);
                if !set.is_empty() {
                    ops.push(RedisOp::HSet(new_key.clone(), set));
                }
                if !unset.is_empty() {
                    ops.push(RedisOp::HDel(new_key.clone(), unset));
                }
                new_key
            }
            ChangeOp::Delete { old } => {
                let key = key.render(&table.table, old, None)?;
                ops.push(RedisOp::Del(key.clone()));
                key
            }
            ChangeOp::Truncate => {
                return Err(RedisSinkError::Mapping {
                    table: table.table.to_string(),
                    reason: "TRUNCATE is not applied by the redis sink yet".into(),
                })
            }
        };
        if let (Some(ttl), false) = (resolved.ttl_secs, matches!(change.op, ChangeOp::Delete { .. })) {
            ops.push(RedisOp::Expire(written_key.clone(), ttl));
        }
        let (old, new) = change.op.images();
        for (templates, as_set) in [(&resolved.invalidate, false), (&resolved.invalidate_sets, true)] {
            let mut keys: Vec<String> = Vec::new();
            // A row image without a column (NULL, key-only old tuple) says nothing.
            let rendered =
                templates.iter().flat_map(|t| [old, new].into_iter().flatten().filter_map(|r| t.try_render(r)));
            for key in rendered {
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
            ops.extend(
                keys.into_iter().map(|key| if as_set { RedisOp::DelSetMembers(key) } else { RedisOp::Del(key) }),
            );
        }
        if let Some((stream, max_len)) = &resolved.stream {
            let fields = event_fields(change_ref, written_key);
            ops.push(RedisOp::XAdd { stream: stream.clone(), max_len: *max_len, fields });
        }
        Ok(())
    }

    /// The table's options resolved against this shape of it (column
    /// positions instead of names), re-resolved only when a Relation message
    /// changed the shape: nothing is cloned or resolved per change.
    fn resolve(&mut self, table: &Arc<TableSchema>) -> Result<&ResolvedTable, RedisSinkError> {
        let stale = match self.resolved.get(&table.table) {
            Some(resolved) => !Arc::ptr_eq(&resolved.shape, table) && *resolved.shape != **table,
            None => true,
        };
        if stale {
            let options = self.tables.get(&table.table).cloned().unwrap_or_default();
            let template = match options.key {
                Some(template) => template,
                None => KeyTemplate::default_for(table)?,
            };
            let resolve_all = |templates: &[KeyTemplate]| {
                templates.iter().map(|t| ResolvedKey::resolve(t, table)).collect::<Result<Vec<_>, _>>()
            };
            let resolved = ResolvedTable {
                shape: Arc::clone(table),
                key: ResolvedKey::resolve(&template, table)?,
                invalidate: resolve_all(&options.invalidate)?,
                invalidate_sets: resolve_all(&options.invalidate_sets)?,
                ttl_secs: options.ttl_secs,
                stream: options.stream,
            };
            self.resolved.insert(table.table.clone(), resolved);
        }
        Ok(&self.resolved[&table.table])
    }
}

/// A table's [`TableOptions`] resolved against one shape of the table.
#[derive(Debug)]
struct ResolvedTable {
    shape: Arc<TableSchema>,
    key: ResolvedKey,
    invalidate: Vec<ResolvedKey>,
    invalidate_sets: Vec<ResolvedKey>,
    ttl_secs: Option<u64>,
    stream: Option<(String, u64)>,
}

/// The fields of a change's stream event.
fn event_fields(change: &ChangeRef<'_>, key: String) -> Vec<(&'static str, String)> {
    let (old, new) = change.change.op.images();
    let table = &change.change.table;
    let mut fields = vec![
        ("op", change.change.op.label().to_owned()),
        ("table", table.table.to_string()),
        ("key", key),
        ("commit_lsn", change.transaction.commit_lsn.to_string()),
        ("ordinal", change.change.ordinal.to_string()),
        ("commit_time_unix_micros", change.transaction.commit_time.to_unix_micros().to_string()),
    ];
    if let Some(new) = new {
        fields.push(("new", row_json(table, new).to_string()));
    }
    if let Some(old) = old {
        fields.push(("old", row_json(table, old).to_string()));
    }
    fields
}

/// Fields to write and fields to remove; unchanged TOAST columns are in neither.
fn split_fields<'a>(table: &'a TableSchema, row: &'a Row) -> (Vec<(&'a str, &'a [u8])>, Vec<&'a str>) {
    let mut set = Vec::with_capacity(row.len());
    let mut unset = Vec::new();
    for (column, value) in table.columns.iter().zip(row) {
        match value {
            ColumnValue::Text(bytes) | ColumnValue::Binary(bytes) => set.push((column.name.as_str(), &bytes[..])),
            ColumnValue::Null => unset.push(column.name.as_str()),
            ColumnValue::UnchangedToast => {}
        }
    }
    (set, unset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use pgfanout_core::{ColumnSchema, Transaction};
    use pgoutput::{Oid, PgTimestamp, ReplicaIdentity, Xid};

    fn table() -> Arc<TableSchema> {
        Arc::new(TableSchema {
            types: Default::default(),
            oid: Oid(1),
            table: TableName::new("public", "reservations"),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                ColumnSchema { name: "id".into(), type_oid: Oid(20), is_key: true },
                ColumnSchema { name: "status".into(), type_oid: Oid(25), is_key: false },
                ColumnSchema { name: "notes".into(), type_oid: Oid(25), is_key: false },
            ],
        })
    }

    fn text(value: &'static str) -> ColumnValue {
        ColumnValue::Text(Bytes::from_static(value.as_bytes()))
    }

    fn transaction(end: u64, ops: Vec<ChangeOp>) -> Arc<Transaction> {
        let table = table();
        Arc::new(Transaction {
            xid: Xid(1),
            commit_lsn: Lsn(end - 8),
            end_lsn: Lsn(end),
            commit_time: PgTimestamp(0),
            changes: ops
                .into_iter()
                .enumerate()
                .map(|(i, op)| Change { table: table.clone(), op, ordinal: i as u32 })
                .collect(),
        })
    }

    fn refs(batch: &[Arc<Transaction>]) -> Vec<ChangeRef<'_>> {
        batch
            .iter()
            .flat_map(|transaction| transaction.changes.iter().map(move |change| ChangeRef { transaction, change }))
            .collect()
    }

    fn encoder(template: Option<&str>) -> RedisEncoder {
        let tables = template
            .map(|t| {
                let options = TableOptions { key: Some(KeyTemplate::parse(t).unwrap()), ..TableOptions::default() };
                (TableName::new("public", "reservations"), options)
            })
            .into_iter()
            .collect();
        RedisEncoder::new(tables, "cp".into())
    }

    #[test]
    fn insert_update_delete_with_default_keys() {
        let batch = [transaction(
            0x100,
            vec![
                ChangeOp::Insert { new: vec![text("7"), text("new"), ColumnValue::Null] },
                ChangeOp::Update { old: None, new: vec![text("7"), ColumnValue::Null, ColumnValue::UnchangedToast] },
                ChangeOp::Delete { old: vec![text("7"), ColumnValue::Null, ColumnValue::Null] },
            ],
        )];
        let ops = encoder(None).encode(&refs(&batch), batch.last().map(|t| t.end_lsn)).unwrap();
        assert_eq!(
            ops,
            vec![
                RedisOp::Del("reservations:7".into()),
                RedisOp::HSet("reservations:7".into(), vec![("id", &b"7"[..]), ("status", &b"new"[..])]),
                RedisOp::HSet("reservations:7".into(), vec![("id", &b"7"[..])]),
                RedisOp::HDel("reservations:7".into(), vec!["status"]),
                RedisOp::Del("reservations:7".into()),
                RedisOp::Set("cp".into(), "0/100".into()),
            ]
        );
    }

    #[test]
    fn a_key_change_moves_the_hash_before_writing() {
        let batch = [transaction(
            0x200,
            vec![ChangeOp::Update {
                old: Some(vec![text("7"), ColumnValue::Null, ColumnValue::Null]),
                new: vec![text("8"), text("s"), ColumnValue::UnchangedToast],
            }],
        )];
        let ops = encoder(Some("r:{id}")).encode(&refs(&batch), batch.last().map(|t| t.end_lsn)).unwrap();
        assert_eq!(ops[0], RedisOp::Copy("r:7".into(), "r:8".into()));
        assert_eq!(ops[1], RedisOp::Del("r:7".into()));
        assert_eq!(ops[2], RedisOp::HSet("r:8".into(), vec![("id", &b"8"[..]), ("status", &b"s"[..])]));
    }

    #[test]
    fn templates_parse_and_report_mistakes() {
        assert!(KeyTemplate::parse("reservation:{id}").is_ok());
        assert!(KeyTemplate::parse("{{literal}}:{a}:{b}").is_ok());
        assert!(KeyTemplate::parse("no-columns").unwrap_err().contains("names no {column}"));
        assert!(KeyTemplate::parse("x:{id").unwrap_err().contains("unclosed"));
        assert!(KeyTemplate::parse("x:}").unwrap_err().contains("stray"));
        let batch =
            [transaction(0x300, vec![ChangeOp::Delete { old: vec![text("1"), ColumnValue::Null, ColumnValue::Null] }])];
        let err = encoder(Some("r:{missing}")).encode(&refs(&batch), batch.last().map(|t| t.end_lsn)).unwrap_err();
        assert!(err.to_string().contains("column missing"), "{err}");
        let err = encoder(Some("r:{status}")).encode(&refs(&batch), batch.last().map(|t| t.end_lsn)).unwrap_err();
        assert!(err.to_string().contains("is NULL"), "{err}");
    }

    #[test]
    fn ttl_and_event_stream_follow_each_write() {
        let options = TableOptions {
            key: Some(KeyTemplate::parse("r:{id}").unwrap()),
            ttl_secs: Some(60),
            stream: Some(("events".into(), 1000)),
            ..TableOptions::default()
        };
        let mut encoder =
            RedisEncoder::new(HashMap::from([(TableName::new("public", "reservations"), options)]), "cp".into());
        let batch = [transaction(
            0x200,
            vec![
                ChangeOp::Insert { new: vec![text("7"), text("new"), ColumnValue::Null] },
                ChangeOp::Delete { old: vec![text("7"), ColumnValue::Null, ColumnValue::Null] },
            ],
        )];
        let ops = encoder.encode(&refs(&batch), None).unwrap();
        assert_eq!(ops[0], RedisOp::Del("r:7".into()));
        assert_eq!(ops[1], RedisOp::HSet("r:7".into(), vec![("id", &b"7"[..]), ("status", &b"new"[..])]));
        assert_eq!(ops[2], RedisOp::Expire("r:7".into(), 60), "a written row gets its TTL");
        let RedisOp::XAdd { stream, max_len, fields } = &ops[3] else { panic!("an event after the write: {ops:?}") };
        assert_eq!((stream.as_str(), *max_len), ("events", 1000));
        let field = |name: &str| fields.iter().find(|(f, _)| *f == name).map(|(_, v)| v.as_str());
        assert_eq!(field("op"), Some("insert"));
        assert_eq!(field("key"), Some("r:7"));
        assert_eq!(field("table"), Some("public.reservations"));
        assert_eq!(field("commit_lsn"), Some(Lsn(0x200 - 8).to_string().as_str()));
        assert_eq!(field("ordinal"), Some("0"));
        let new: serde_json::Value = serde_json::from_str(field("new").unwrap()).unwrap();
        assert_eq!(new, serde_json::json!({"id": "7", "status": "new", "notes": null}));
        assert_eq!(field("old"), None);
        // A delete gets no TTL, but an event with the old row.
        assert_eq!(ops[4], RedisOp::Del("r:7".into()));
        let RedisOp::XAdd { fields, .. } = &ops[5] else { panic!("delete event: {ops:?}") };
        assert!(fields.iter().any(|(f, v)| *f == "op" && v == "delete"));
        assert!(fields.iter().any(|(f, _)| *f == "old"));
        assert_eq!(ops.len(), 6);
    }

    #[test]
    fn invalidation_deletes_keys_of_the_old_and_the_new_row() {
        let options = TableOptions {
            key: Some(KeyTemplate::parse("r:{id}").unwrap()),
            invalidate: vec![KeyTemplate::parse("by_status:{status}").unwrap()],
            invalidate_sets: vec![KeyTemplate::parse("pages:{status}").unwrap()],
            ..TableOptions::default()
        };
        let mut encoder =
            RedisEncoder::new(HashMap::from([(TableName::new("public", "reservations"), options)]), "cp".into());
        let batch = [transaction(
            0x300,
            vec![ChangeOp::Update {
                old: Some(vec![text("7"), text("pending"), ColumnValue::Null]),
                new: vec![text("7"), text("paid"), ColumnValue::UnchangedToast],
            }],
        )];
        let ops = encoder.encode(&refs(&batch), None).unwrap();
        let invalidations: Vec<&RedisOp> =
            ops.iter().filter(|op| matches!(op, RedisOp::Del(_) | RedisOp::DelSetMembers(_))).collect();
        assert_eq!(
            invalidations,
            [
                &RedisOp::Del("by_status:pending".into()),
                &RedisOp::Del("by_status:paid".into()),
                &RedisOp::DelSetMembers("pages:pending".into()),
                &RedisOp::DelSetMembers("pages:paid".into()),
            ]
        );
        // A row image without the column (NULL) invalidates nothing for it.
        let batch =
            [transaction(0x400, vec![ChangeOp::Insert { new: vec![text("8"), ColumnValue::Null, ColumnValue::Null] }])];
        let ops = encoder.encode(&refs(&batch), None).unwrap();
        assert!(!ops.iter().any(|op| matches!(op, RedisOp::DelSetMembers(_))), "{ops:?}");
        assert_eq!(ops.iter().filter(|op| matches!(op, RedisOp::Del(_))).count(), 1, "only the row's own DEL: {ops:?}");
    }
}
