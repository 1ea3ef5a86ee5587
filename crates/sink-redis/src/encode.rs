//! Pure mapping from transactions to Redis operations; no I/O.
//!
//! A batch becomes a call of a server-side script (`lua/apply_batch.lua`,
//! sent with `EVALSHA`): a flat list of records the script applies in order,
//! then the checkpoint. A call holds at most [`MAX_CALL_CHANGES`] changes and
//! about [`MAX_CALL_BYTES`] of arguments, far below Redis's limits on a
//! request (`proto-max-bulk-len` 512 MB, `client-query-buffer-limit` 1 GB) and
//! short enough not to block the server for long; a larger batch becomes
//! several calls in order, the checkpoint in the last. Each row is one key, holding a hash (default) whose
//! fields are the row's non-NULL columns, or a JSON object of column name to
//! text value (`null` for NULL):
//! - insert: the key is replaced by the new row;
//! - update: changed columns are written, columns that became NULL removed
//!   (hash) or written as `null` (JSON), unchanged TOAST columns keep their
//!   stored value; when the key itself changed the stored row first moves
//!   to the new key (so unchanged TOAST values follow it);
//! - delete: the key is removed, optionally leaving a tombstone key that
//!   holds the delete's version for `tombstone_secs`;
//! - truncate: every row key of the table goes — the members of the table's
//!   index set (which every write keeps up to date) or, when configured, the
//!   keys a `SCAN` with the table's key pattern finds.
//!
//! Version guard (on by default): every row stores its change's version
//! ([`Version::to_sortable_string`]) in a field (`_pgfanout_version`), and
//! the script writes or deletes a row only when the change is newer than
//! what the row or its tombstone holds, so a replay never moves a key
//! backwards.
//!
//! Per table, optionally: cache invalidation — keys rendered from the old
//! and the new row are deleted (`invalidate`), or every member of a tracked
//! set and the set itself (`invalidate_sets`); an `EXPIRE` after each write
//! (`ttl_secs`); and an event appended to a stream (`XADD <stream> MAXLEN ~
//! N <commit_lsn>-<ordinal> …`) in the same call, carrying op, table, key,
//! commit LSN and ordinal, commit time and the new/old rows as JSON. The
//! entry id is the change's version (commit LSN as a number, then the
//! ordinal), so an event delivered again finds its id taken or passed and
//! the script adds nothing: each change is in the stream once. That needs
//! events to arrive in version order, hence one lane for a sink with a
//! stream (checked by the config). Invalidations are not guarded (deleting
//! a key twice is harmless).
//!
//! The same batch encoded twice gives the same records, and applying them
//! twice gives the same rows: that is what makes re-delivery harmless.

use std::collections::HashMap;
use std::sync::Arc;

use pgfanout_core::{
    row_json, ChangeOp, ChangeRef, ColumnValue, Lsn, Row, SortableVersion, TableName, TableSchema, Version,
};

use crate::error::RedisSinkError;

/// How a row is stored under its key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowFormat {
    /// A hash: one field per non-NULL column.
    #[default]
    Hash,
    /// A string holding a JSON object: column name → text value or `null`.
    Json,
}

impl RowFormat {
    /// The script's one-letter code.
    pub(crate) fn code(self) -> &'static str {
        match self {
            RowFormat::Hash => "h",
            RowFormat::Json => "j",
        }
    }
}

/// How a TRUNCATE finds the table's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TruncateBy {
    /// The members of this set, which every write of the table maintains.
    IndexSet(String),
    /// The keys matching this `SCAN` pattern (no set to maintain; a scan of
    /// the whole keyspace per truncate).
    Scan(String),
}

/// Per-table options beyond the key template.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableOptions {
    /// Key template; the default (`<table>:{pk}`) when `None`.
    pub key: Option<KeyTemplate>,
    /// Hash or JSON string.
    pub format: RowFormat,
    /// Seconds a written row lives (`EXPIRE` after each write).
    pub ttl_secs: Option<u64>,
    /// Seconds a deleted row's tombstone lives; no tombstones when `None`.
    pub tombstone_secs: Option<u64>,
    /// How a truncate finds the keys; by the default index set when `None`.
    pub truncate: Option<TruncateBy>,
    /// Event stream key and its approximate length cap.
    pub stream: Option<(String, u64)>,
    /// Keys to delete on any change, rendered from the old and the new row.
    pub invalidate: Vec<KeyTemplate>,
    /// Sets whose members (and themselves) are deleted on any change.
    pub invalidate_sets: Vec<KeyTemplate>,
}

/// Sink-wide naming and guard settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderSettings {
    /// Key holding the checkpoint.
    pub checkpoint_key: String,
    /// Field (hash) or property (JSON) holding each row's version; `None`
    /// turns the version guard off.
    pub version_field: Option<String>,
    /// Prefix of tombstone keys (the row key follows it).
    pub tombstone_prefix: String,
    /// Prefix of the default index set of a table (`schema.table` follows).
    pub index_prefix: String,
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

    /// The `SCAN` pattern matching every key the template renders: each
    /// column becomes `*`, glob characters in the literal parts are escaped.
    pub fn scan_pattern(&self) -> String {
        self.parts
            .iter()
            .map(|part| match part {
                KeyPart::Literal(text) => Self::escape_pattern(text),
                KeyPart::Column(_) => "*".to_owned(),
            })
            .collect()
    }

    /// `text` with the glob characters of `SCAN … MATCH` escaped.
    pub fn escape_pattern(text: &str) -> String {
        let mut escaped = String::with_capacity(text.len());
        for c in text.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                escaped.push('\\');
            }
            escaped.push(c);
        }
        escaped
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
                reason: "the table has no primary key; add one, or set `key` for it in the sink config to the \
                         columns that identify a row (without either, rows with equal values would share one key)"
                    .into(),
            });
        }
        Ok(KeyTemplate { parts })
    }
}

/// A template resolved against one table shape: column positions instead of names.
#[derive(Debug)]
struct ResolvedKey {
    parts: Vec<ResolvedPart>,
    /// Bytes of the literal parts.
    literal_bytes: usize,
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
            .collect::<Result<Vec<_>, _>>()?;
        let literal_bytes =
            parts.iter().map(|part| if let ResolvedPart::Literal(text) = part { text.len() } else { 0 }).sum();
        Ok(ResolvedKey { parts, literal_bytes })
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
        // Sized for the usual key (literals and short values) so that it is
        // one allocation, not one per doubling.
        let mut key = String::with_capacity(self.literal_bytes + 24 * self.parts.len());
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

/// Most changes one script call applies.
pub const MAX_CALL_CHANGES: usize = 2000;

/// Bytes of keys and arguments after which a script call takes no more
/// changes (a single change larger than this still gets a call of its own).
pub const MAX_CALL_BYTES: usize = 8 * 1024 * 1024;

/// Most bytes of arguments a call reserves ahead (see
/// [`ScriptCall::reserve_like_first`]); beyond them its buffer grows as needed.
const RESERVE_BYTES: usize = 1024 * 1024;

/// The set of keys a call names. A fixed-seed hash: keys come from row
/// values, but a call holds at most [`MAX_CALL_CHANGES`] changes' keys, so
/// colliding keys could cost a call little more than a scan of them.
type KeySet = indexmap::IndexSet<String, foldhash::fast::FixedState>;

/// One call of the batch script: the keys it touches (each once; the
/// checkpoint key first) and its records.
///
/// The records' arguments are written one after the other into one buffer
/// (`arg_bytes`, each argument's end in `arg_ends`), the row values copied
/// in as they are encoded: a call of a thousand rows makes a few growing
/// buffers instead of several allocations per row, and the keys are kept
/// once, in the set that also gives their positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptCall {
    /// `KEYS`, in the order first named; a key's position is its index + 1.
    keys: KeySet,
    /// Bytes of the keys.
    key_bytes: usize,
    /// `ARGV[1]`: the version field, empty without the guard.
    version_field: String,
    /// `ARGV[2]`: the checkpoint to store, empty for none.
    checkpoint: String,
    /// The records' arguments (`ARGV[3..]`), back to back.
    arg_bytes: Vec<u8>,
    /// Where each record argument ends in `arg_bytes`.
    arg_ends: Vec<usize>,
    /// Changes encoded into the call.
    changes: usize,
}

impl ScriptCall {
    fn new(settings: &EncoderSettings) -> Self {
        let mut keys = KeySet::default();
        keys.insert(settings.checkpoint_key.clone());
        ScriptCall {
            key_bytes: settings.checkpoint_key.len(),
            keys,
            version_field: settings.version_field.clone().unwrap_or_default(),
            checkpoint: String::new(),
            arg_bytes: Vec::new(),
            arg_ends: Vec::new(),
            changes: 0,
        }
    }

    /// `KEYS` of the call.
    pub fn keys(&self) -> &indexmap::set::Slice<String> {
        self.keys.as_slice()
    }

    /// Number of `ARGV` arguments.
    pub fn arg_count(&self) -> usize {
        2 + self.arg_ends.len()
    }

    /// `ARGV` of the call, each argument's bytes as sent ([`arg_count`](Self::arg_count) of them).
    pub fn args(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let starts = std::iter::once(0).chain(self.arg_ends.iter().copied());
        let records = starts.zip(&self.arg_ends).map(|(start, &end)| &self.arg_bytes[start..end]);
        [self.version_field.as_bytes(), self.checkpoint.as_bytes()].into_iter().chain(records)
    }

    /// Bytes of the call's keys and arguments (without protocol framing).
    pub fn size_bytes(&self) -> usize {
        self.key_bytes + self.version_field.len() + self.checkpoint.len() + self.arg_bytes.len()
    }

    /// Whether the call is full: the next change goes into a new one.
    fn is_full(&self) -> bool {
        self.changes >= MAX_CALL_CHANGES || self.size_bytes() >= MAX_CALL_BYTES
    }

    /// Whether the call has neither records nor a checkpoint.
    pub fn is_empty(&self) -> bool {
        self.arg_ends.is_empty() && self.checkpoint.is_empty()
    }

    /// Sizes the buffers for `more` changes like the one encoded so far:
    /// the rows of a batch are mostly alike, and buffers that grow by
    /// doubling copy what they hold each time. At most [`RESERVE_BYTES`]
    /// ahead, so that one large first row does not reserve for many.
    fn reserve_like_first(&mut self, more: usize) {
        let more = more.min(MAX_CALL_CHANGES - 1);
        self.arg_bytes.reserve((self.arg_bytes.len() * more).min(RESERVE_BYTES));
        self.arg_ends.reserve(self.arg_ends.len() * more);
        self.keys.reserve((self.keys.len() - 1) * more);
    }

    fn set_checkpoint(&mut self, checkpoint: Lsn) {
        self.checkpoint = checkpoint.to_string();
    }

    /// Adds `key` to `KEYS` (once: a key the call already names is not
    /// copied again) and its index to the records.
    fn key(&mut self, key: &str) {
        let position = self.key_position(key);
        self.number(position as u64);
    }

    /// [`key`](Self::key) for a key rendered for this record: kept as it
    /// is, not copied.
    fn owned_key(&mut self, key: String) {
        let position = self.owned_key_position(key);
        self.number(position as u64);
    }

    /// The position of `key` in `KEYS` (from 1), added if the call does not
    /// name it yet.
    fn key_position(&mut self, key: &str) -> usize {
        match self.keys.get_index_of(key) {
            Some(index) => index + 1,
            None => self.owned_key_position(key.to_owned()),
        }
    }

    /// [`key_position`](Self::key_position) taking the key's ownership.
    fn owned_key_position(&mut self, key: String) -> usize {
        let len = key.len();
        let (index, added) = self.keys.insert_full(key);
        if added {
            self.key_bytes += len;
        }
        index + 1
    }

    fn optional_key(&mut self, key: Option<&str>) {
        match key {
            Some(key) => self.key(key),
            None => self.number(0),
        }
    }

    /// Appends one argument.
    fn bytes(&mut self, bytes: &[u8]) {
        self.arg_bytes.extend_from_slice(bytes);
        self.arg_ends.push(self.arg_bytes.len());
    }

    fn word(&mut self, word: &'static str) {
        self.bytes(word.as_bytes());
    }

    fn text(&mut self, text: &str) {
        self.bytes(text.as_bytes());
    }

    /// Appends one argument written by `write` straight into the buffer
    /// (a hash row's MessagePack record).
    fn packed(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        write(&mut self.arg_bytes);
        self.arg_ends.push(self.arg_bytes.len());
    }

    /// Appends `number` as decimal text (key indexes, counts, zeros:
    /// several per record), without formatting machinery.
    fn number(&mut self, number: u64) {
        self.bytes(itoa::Buffer::new().format(number).as_bytes());
    }
}

/// One step of applying a batch, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchStep {
    /// A script call (one round trip).
    Script(ScriptCall),
    /// A truncate by `SCAN`: delete the keys matching `pattern` that hold
    /// rows older than `version` (see [`RedisEncoder::delete_if_older`]).
    ScanTruncate {
        /// Table, for messages.
        table: TableName,
        /// `SCAN … MATCH` pattern.
        pattern: String,
        /// How the table's rows are stored.
        format: RowFormat,
        /// The truncate's version.
        version: Version,
    },
}

/// Encodes batches for one sink; caches resolved templates per table shape.
#[derive(Debug)]
pub struct RedisEncoder {
    tables: HashMap<TableName, TableOptions>,
    /// Looked up twice per change: a fast hash (table names come from the
    /// source's catalog, not from row values).
    resolved: HashMap<TableName, Arc<ResolvedTable>, foldhash::fast::FixedState>,
    /// The table the last change belonged to: a batch is mostly runs of
    /// one table, whose shape (the same `Arc`) finds it without a look-up.
    last_resolved: Option<Arc<ResolvedTable>>,
    settings: EncoderSettings,
}

impl RedisEncoder {
    /// An encoder with the configured per-table options (tables without a
    /// template use the default).
    pub fn new(tables: HashMap<TableName, TableOptions>, settings: EncoderSettings) -> Self {
        RedisEncoder { tables, resolved: HashMap::default(), last_resolved: None, settings }
    }

    /// The steps applying `changes` in order, the last one storing
    /// `checkpoint` when given. Usually a single script call; a truncate by
    /// scan splits the batch around it, and a batch larger than one call
    /// ([`MAX_CALL_CHANGES`], [`MAX_CALL_BYTES`]) takes several.
    pub fn encode(
        &mut self,
        changes: &[ChangeRef<'_>],
        checkpoint: Option<Lsn>,
    ) -> Result<Vec<BatchStep>, RedisSinkError> {
        let mut steps = Vec::new();
        let mut call = ScriptCall::new(&self.settings);
        for (index, change) in changes.iter().enumerate() {
            if call.is_full() {
                steps.push(BatchStep::Script(std::mem::replace(&mut call, ScriptCall::new(&self.settings))));
            }
            call.changes += 1;
            if let Some(scan) = self.encode_change(change, &mut call)? {
                if !call.is_empty() {
                    steps.push(BatchStep::Script(std::mem::replace(&mut call, ScriptCall::new(&self.settings))));
                }
                steps.push(scan);
            } else if call.changes == 1 {
                call.reserve_like_first(changes.len() - index - 1);
            }
        }
        if let Some(checkpoint) = checkpoint {
            call.set_checkpoint(checkpoint);
        }
        if !call.is_empty() {
            steps.push(BatchStep::Script(call));
        }
        Ok(steps)
    }

    /// What would make [`encode`](Self::encode) refuse every change of a
    /// table of this shape, one line each: a key it cannot build, template
    /// columns the table does not publish, key columns a delete does not
    /// carry (outside the primary key, without REPLICA IDENTITY FULL), a
    /// column named like the version field.
    pub fn table_problems(&self, table: &TableSchema) -> Vec<String> {
        let reason = |err: RedisSinkError| match err {
            RedisSinkError::Mapping { reason, .. } => reason,
            other => other.to_string(),
        };
        let options = self.tables.get(&table.table).cloned().unwrap_or_default();
        let template = match options.key {
            Some(template) => template,
            None => match KeyTemplate::default_for(table) {
                Ok(template) => template,
                Err(err) => return vec![reason(err)],
            },
        };
        let mut problems = Vec::new();
        match ResolvedKey::resolve(&template, table) {
            Ok(key) => {
                for part in &key.parts {
                    let ResolvedPart::Column { position, name } = part else { continue };
                    let in_old_key = table.columns.get(*position).is_some_and(|column| column.is_key);
                    if table.replica_identity != pgoutput::ReplicaIdentity::Full && !in_old_key {
                        problems.push(format!(
                            "key template column {name} is not part of the table's key (its primary key, or its replica identity index), so a delete (whose old row \
                             carries only the key) has no value for it: build the key from primary key columns, or \
                             run ALTER TABLE {} REPLICA IDENTITY FULL",
                            table.table
                        ));
                    }
                }
            }
            Err(err) => problems.push(reason(err)),
        }
        for template in options.invalidate.iter().chain(&options.invalidate_sets) {
            if let Err(err) = ResolvedKey::resolve(template, table) {
                problems.push(reason(err));
            }
        }
        if let Some(field) = &self.settings.version_field {
            if table.columns.iter().any(|column| column.name == *field) {
                problems.push(format!(
                    "column {field} has the name of the sink's version field, so the column and each row's \
                     version would overwrite each other: set version_field to a name no column has"
                ));
            }
        }
        problems
    }

    /// Where a row of shape `table` is stored: its key (rendered from `row`)
    /// and the table's row format; for reading rows back (`verify`).
    pub fn locate(&mut self, table: &Arc<TableSchema>, row: &Row) -> Result<(String, RowFormat), RedisSinkError> {
        let resolved = Self::resolve(&mut self.resolved, &mut self.last_resolved, &self.tables, &self.settings, table)?;
        Ok((resolved.key.render(&table.table, row, None)?, resolved.format))
    }

    /// The `SCAN` pattern every row key of the table matches.
    pub fn key_pattern(&self, table: &TableSchema) -> Result<String, RedisSinkError> {
        match self.tables.get(&table.table).and_then(|options| options.key.as_ref()) {
            Some(template) => Ok(template.scan_pattern()),
            None => Ok(KeyTemplate::default_for(table)?.scan_pattern()),
        }
    }

    /// The field holding each row's version, when the guard is on.
    pub fn version_field(&self) -> Option<&str> {
        self.settings.version_field.as_deref()
    }

    /// A call deleting each of `keys` unless it holds a row at `version` or
    /// newer: one page of a truncate by scan.
    pub fn delete_if_older(&self, keys: Vec<String>, format: RowFormat, version: Version) -> ScriptCall {
        let mut call = ScriptCall::new(&self.settings);
        let version = version.sortable();
        for key in keys {
            call.word("D");
            call.word(format.code());
            call.owned_key(key);
            call.number(0);
            call.number(0);
            call.bytes(version.as_bytes());
            call.number(0);
        }
        call
    }

    /// Adds the records of one change; a truncate by scan is returned as a
    /// step of its own instead.
    fn encode_change(
        &mut self,
        change_ref: &ChangeRef<'_>,
        call: &mut ScriptCall,
    ) -> Result<Option<BatchStep>, RedisSinkError> {
        let change = change_ref.change;
        let table = &change.table;
        let version = change_ref.version();
        let sortable = version.sortable();
        let settings = &self.settings;
        let resolved = Self::resolve(&mut self.resolved, &mut self.last_resolved, &self.tables, settings, table)?;
        let key = &resolved.key;
        let tombstone = |key: &str| resolved.tombstone_secs.map(|_| format!("{}{key}", settings.tombstone_prefix));
        // The row's key goes into the call's keys as it is; a copy only
        // for the event stream, when the table has one.
        let for_event = |key: &String| resolved.stream.as_ref().map(|_| key.clone());
        let format = resolved.format;
        let written_key = match &change.op {
            ChangeOp::Insert { new } => {
                let key = key.render(&table.table, new, None)?;
                let (tomb, written) = (tombstone(&key), for_event(&key));
                write_row(call, resolved, key, tomb, sortable, RowImage::Replace(new), table);
                written
            }
            ChangeOp::Update { old, new } => {
                let new_key = key.render(&table.table, new, None)?;
                if let Some(old) = old {
                    let old_key = key.render(&table.table, old, Some(new))?;
                    if old_key != new_key {
                        let old_tomb = tombstone(&old_key);
                        call.word("M");
                        call.word(format.code());
                        call.owned_key(old_key);
                        call.key(&new_key);
                        call.optional_key(old_tomb.as_deref());
                        call.optional_key(resolved.index_set.as_deref());
                        call.bytes(sortable.as_bytes());
                        call.number(resolved.tombstone_secs.unwrap_or(0));
                    }
                }
                let (tomb, written) = (tombstone(&new_key), for_event(&new_key));
                write_row(call, resolved, new_key, tomb, sortable, RowImage::Patch(new), table);
                written
            }
            ChangeOp::Delete { old } => {
                let key = key.render(&table.table, old, None)?;
                let (tomb, written) = (tombstone(&key), for_event(&key));
                call.word("D");
                call.word(format.code());
                call.owned_key(key);
                call.optional_key(tomb.as_deref());
                call.optional_key(resolved.index_set.as_deref());
                call.bytes(sortable.as_bytes());
                call.number(resolved.tombstone_secs.unwrap_or(0));
                written
            }
            ChangeOp::Truncate => match &resolved.truncate {
                TruncateBy::IndexSet(set) => {
                    call.word("T");
                    call.word(format.code());
                    call.key(set);
                    call.bytes(sortable.as_bytes());
                    None
                }
                TruncateBy::Scan(pattern) => {
                    return Ok(Some(BatchStep::ScanTruncate {
                        table: table.table.clone(),
                        pattern: pattern.clone(),
                        format,
                        version,
                    }))
                }
            },
        };
        let (old, new) = change.op.images();
        for (templates, opcode) in [(&resolved.invalidate, "I"), (&resolved.invalidate_sets, "S")] {
            let mut keys: Vec<String> = Vec::new();
            // A row image without a column (NULL, key-only old tuple) says nothing.
            let rendered =
                templates.iter().flat_map(|t| [old, new].into_iter().flatten().filter_map(|r| t.try_render(r)));
            for key in rendered {
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
            for key in &keys {
                call.word(opcode);
                call.key(key);
            }
        }
        if let Some((stream, max_len)) = &resolved.stream {
            let fields = event_fields(change_ref, written_key.unwrap_or_default());
            call.word("X");
            call.key(stream);
            call.number(*max_len);
            call.text(&format!("{}-{}", version.commit_lsn.0, version.ordinal));
            call.number(fields.len() as u64);
            for (field, value) in fields {
                call.word(field);
                call.text(&value);
            }
        }
        Ok(None)
    }

    /// The table's options resolved against this shape of it (column
    /// positions instead of names), re-resolved only when a Relation message
    /// changed the shape: nothing is cloned or resolved per change.
    fn resolve<'r>(
        resolved: &'r mut HashMap<TableName, Arc<ResolvedTable>, foldhash::fast::FixedState>,
        last: &'r mut Option<Arc<ResolvedTable>>,
        tables: &HashMap<TableName, TableOptions>,
        settings: &EncoderSettings,
        table: &Arc<TableSchema>,
    ) -> Result<&'r ResolvedTable, RedisSinkError> {
        if !last.as_ref().is_some_and(|hit| Arc::ptr_eq(&hit.shape, table)) {
            *last = None;
            let stale = match resolved.get(&table.table) {
                Some(known) => !Arc::ptr_eq(&known.shape, table) && *known.shape != **table,
                None => true,
            };
            if stale {
                let options = tables.get(&table.table).cloned().unwrap_or_default();
                let template = match options.key {
                    Some(template) => template,
                    None => KeyTemplate::default_for(table)?,
                };
                let resolve_all = |templates: &[KeyTemplate]| {
                    templates.iter().map(|t| ResolvedKey::resolve(t, table)).collect::<Result<Vec<_>, _>>()
                };
                let truncate = options
                    .truncate
                    .unwrap_or_else(|| TruncateBy::IndexSet(format!("{}{}", settings.index_prefix, table.table)));
                let index_set = match &truncate {
                    TruncateBy::IndexSet(set) => Some(set.clone()),
                    TruncateBy::Scan(_) => None,
                };
                let entry = ResolvedTable {
                    shape: Arc::clone(table),
                    key: ResolvedKey::resolve(&template, table)?,
                    format: options.format,
                    invalidate: resolve_all(&options.invalidate)?,
                    invalidate_sets: resolve_all(&options.invalidate_sets)?,
                    ttl_secs: options.ttl_secs,
                    tombstone_secs: options.tombstone_secs.filter(|_| settings.version_field.is_some()),
                    truncate,
                    index_set,
                    stream: options.stream,
                    version_field: settings.version_field.as_deref().map(Arc::from),
                };
                resolved.insert(table.table.clone(), Arc::new(entry));
            }
        }
        // Kept from the last change of the same shape, or taken from the map just now.
        Ok(last.get_or_insert_with(|| Arc::clone(&resolved[&table.table])))
    }
}

/// A row image to write: a whole new row, or an update's columns (unchanged
/// TOAST columns keep the stored value).
enum RowImage<'a> {
    Replace(&'a Row),
    Patch(&'a Row),
}

/// The `H` or `J` record writing `image` under `key`.
fn write_row(
    call: &mut ScriptCall,
    resolved: &ResolvedTable,
    key: String,
    tombstone: Option<String>,
    version: SortableVersion,
    image: RowImage<'_>,
    table: &TableSchema,
) {
    let (row, replace) = match image {
        RowImage::Replace(row) => (row, true),
        RowImage::Patch(row) => (row, false),
    };
    let columns = || table.columns.iter().map(|column| column.name.as_str()).zip(row);
    match resolved.format {
        RowFormat::Hash => {
            // One argument holds the whole record but the fields to remove:
            // key positions, mode, TTL and counts as MessagePack integers
            // (numbers to the script, never parsed from text), the version,
            // then the fields to write (present values; the script adds the
            // version field itself, from the version, when guarded).
            // For an update, the fields to remove (NULLs) follow as
            // arguments of their own; unchanged TOAST columns are in neither.
            // A replaced row has no stale fields to remove.
            let nulls = columns().filter(|(_, value)| !replace && matches!(value, ColumnValue::Null));
            let key_position = call.owned_key_position(key) as u64;
            let mut position = |key: Option<&str>| key.map_or(0, |key| call.key_position(key) as u64);
            let numbers = [
                key_position,
                position(tombstone.as_deref()),
                position(resolved.index_set.as_deref()),
                u64::from(replace),
                resolved.ttl_secs.unwrap_or(0),
                nulls.clone().count() as u64,
            ];
            call.word("H");
            call.packed(|record| {
                for number in numbers {
                    pack_uint(record, number);
                }
                pack_string(record, version.as_bytes());
                let present = columns().filter_map(|(field, value)| Some((field.as_bytes(), value.as_bytes()?)));
                for (field, value) in present {
                    pack_string(record, field);
                    pack_string(record, value);
                }
            });
            for (field, _) in nulls {
                call.bytes(field.as_bytes());
            }
        }
        RowFormat::Json => {
            let json = row_document(table, row, resolved.version_field.as_deref().map(|f| (f, version.as_str())));
            call.word("J");
            call.owned_key(key);
            call.optional_key(tombstone.as_deref());
            call.optional_key(resolved.index_set.as_deref());
            call.bytes(version.as_bytes());
            call.number(resolved.ttl_secs.unwrap_or(0));
            call.text(&json);
            let kept = columns().filter(|(_, value)| matches!(value, ColumnValue::UnchangedToast));
            call.number(kept.clone().count() as u64);
            for (column, _) in kept {
                call.bytes(column.as_bytes());
            }
        }
    }
}

/// `strings` as one argument: each as a MessagePack string (a length
/// header, then its bytes), one after the other, as the script's
/// `cmsgpack.unpack` turns back into as many Lua strings. Redis's cmsgpack
/// reads the str formats, not bin, whatever the bytes; a value never reaches
/// 4 GB (PostgreSQL's limit is 1 GB).
pub fn pack_strings<'s>(strings: impl Iterator<Item = &'s [u8]> + Clone) -> Vec<u8> {
    let mut packed = Vec::with_capacity(strings.clone().map(|text| text.len() + 5).sum());
    for text in strings {
        pack_string(&mut packed, text);
    }
    packed
}

/// Appends `text` as a MessagePack string (see [`pack_strings`]).
fn pack_string(packed: &mut Vec<u8>, text: &[u8]) {
    let len = text.len();
    match u8::try_from(len) {
        Ok(short) if short < 32 => packed.push(0xa0 | short),
        Ok(short) => packed.extend_from_slice(&[0xd9, short]),
        Err(_) => match u16::try_from(len) {
            Ok(medium) => {
                packed.push(0xda);
                packed.extend_from_slice(&medium.to_be_bytes());
            }
            Err(_) => {
                packed.push(0xdb);
                packed.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
            }
        },
    }
    packed.extend_from_slice(text);
}

/// Appends `number` as a MessagePack unsigned integer, in the shortest
/// format: cmsgpack hands it to the script as a Lua number.
fn pack_uint(packed: &mut Vec<u8>, number: u64) {
    match number {
        0..=0x7f => packed.push(number as u8),
        0x80..=0xff => packed.extend_from_slice(&[0xcc, number as u8]),
        0x100..=0xffff => {
            packed.push(0xcd);
            packed.extend_from_slice(&(number as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            packed.push(0xce);
            packed.extend_from_slice(&(number as u32).to_be_bytes());
        }
        _ => {
            packed.push(0xcf);
            packed.extend_from_slice(&number.to_be_bytes());
        }
    }
}

/// A table's [`TableOptions`] resolved against one shape of the table.
#[derive(Debug)]
struct ResolvedTable {
    shape: Arc<TableSchema>,
    key: ResolvedKey,
    format: RowFormat,
    invalidate: Vec<ResolvedKey>,
    invalidate_sets: Vec<ResolvedKey>,
    ttl_secs: Option<u64>,
    tombstone_secs: Option<u64>,
    truncate: TruncateBy,
    /// The index set every write maintains (truncate by index set only).
    index_set: Option<String>,
    stream: Option<(String, u64)>,
    /// Shared by every record that names it.
    version_field: Option<Arc<str>>,
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

/// The JSON text of a row: column name → text value, `null` for NULL, the
/// version first when guarded; unchanged TOAST columns are left out (the
/// script keeps what the store holds for them). Binary-format values are
/// written as PostgreSQL's `\x` hex text. Values are escaped straight into
/// the document, without a copy each.
fn row_document(table: &TableSchema, row: &Row, version: Option<(&str, &str)>) -> String {
    // Writing JSON into a Vec cannot fail.
    fn push_string(out: &mut Vec<u8>, text: &str) {
        let _ = serde_json::to_writer(&mut *out, text);
    }
    let mut out = Vec::with_capacity(16 + row.iter().map(|v| v.as_bytes().map_or(4, <[u8]>::len) + 16).sum::<usize>());
    out.push(b'{');
    if let Some((field, version)) = version {
        push_string(&mut out, field);
        out.push(b':');
        push_string(&mut out, version);
    }
    for (column, value) in table.columns.iter().zip(row) {
        if matches!(value, ColumnValue::UnchangedToast) {
            continue;
        }
        if out.len() > 1 {
            out.push(b',');
        }
        push_string(&mut out, &column.name);
        out.push(b':');
        match value {
            ColumnValue::Text(bytes) => push_string(&mut out, &String::from_utf8_lossy(bytes)),
            ColumnValue::Binary(bytes) => {
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                push_string(&mut out, &format!("\\x{hex}"));
            }
            ColumnValue::Null | ColumnValue::UnchangedToast => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
    // Only JSON text and UTF-8 strings were written.
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use pgfanout_core::{Change, ColumnSchema, Transaction};
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

    fn settings() -> EncoderSettings {
        EncoderSettings {
            checkpoint_key: "cp".into(),
            version_field: Some("_v".into()),
            tombstone_prefix: "tomb:".into(),
            index_prefix: "idx:".into(),
        }
    }

    fn encoder_with(options: TableOptions) -> RedisEncoder {
        RedisEncoder::new(HashMap::from([(TableName::new("public", "reservations"), options)]), settings())
    }

    fn encoder(template: Option<&str>) -> RedisEncoder {
        encoder_with(TableOptions { key: template.map(|t| KeyTemplate::parse(t).unwrap()), ..TableOptions::default() })
    }

    fn only_call(steps: &[BatchStep]) -> &ScriptCall {
        match steps {
            [BatchStep::Script(call)] => call,
            other => panic!("expected one script call, got {other:?}"),
        }
    }

    /// The arguments as text; a hash row's packed record (the argument
    /// after an `H`) as `[a b c]`.
    fn texts(call: &ScriptCall) -> Vec<String> {
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let mut after_h = false;
        call.args()
            .map(|arg| {
                let shown = if after_h {
                    format!("[{}]", unpack_strings(arg).iter().map(|s| text(s)).collect::<Vec<_>>().join(" "))
                } else {
                    text(arg)
                };
                after_h = arg == b"H";
                shown
            })
            .collect()
    }

    /// Reads back what [`pack_strings`], [`pack_string`] and [`pack_uint`]
    /// wrote (MessagePack str and uint formats), integers as text.
    fn unpack_strings(mut packed: &[u8]) -> Vec<Vec<u8>> {
        let mut strings = Vec::new();
        while let Some((&marker, rest)) = packed.split_first() {
            let (len, rest) = match marker {
                0xa0..=0xbf => (usize::from(marker & 0x1f), rest),
                0xd9 => (usize::from(rest[0]), &rest[1..]),
                0xda => (usize::from(u16::from_be_bytes([rest[0], rest[1]])), &rest[2..]),
                0xdb => (u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize, &rest[4..]),
                // Integers (pack_uint) read back as their decimal text.
                0x00..=0x7f | 0xcc..=0xcf => {
                    let width = match marker {
                        0xcc => 1,
                        0xcd => 2,
                        0xce => 4,
                        0xcf => 8,
                        _ => 0,
                    };
                    let number = if width == 0 {
                        u64::from(marker)
                    } else {
                        rest[..width].iter().fold(0u64, |number, &byte| number << 8 | u64::from(byte))
                    };
                    strings.push(number.to_string().into_bytes());
                    packed = &rest[width..];
                    continue;
                }
                other => panic!("not a MessagePack string or unsigned integer marker: {other:#x}"),
            };
            strings.push(rest[..len].to_vec());
            packed = &rest[len..];
        }
        strings
    }

    #[test]
    fn packed_strings_take_the_shortest_header_for_their_length() {
        let lengths = [0, 1, 31, 32, 255, 256, 65_535, 65_536, 70_000];
        let strings: Vec<Vec<u8>> = lengths.iter().map(|&len| (0..len).map(|i| (i % 251) as u8).collect()).collect();
        let packed = pack_strings(strings.iter().map(Vec::as_slice));
        assert_eq!(unpack_strings(&packed), strings);
        let headers = [1, 1, 1, 2, 2, 3, 3, 5, 5];
        assert_eq!(packed.len(), lengths.iter().sum::<usize>() + headers.iter().sum::<usize>());
        assert_eq!(pack_strings([&b"ab"[..]].into_iter()), b"\xa2ab");
        assert_eq!(pack_strings([&[b'x'; 32][..]].into_iter())[..2], [0xd9, 32]);
    }

    #[test]
    fn packed_integers_take_the_shortest_format_for_their_value() {
        let packed = |number: u64| {
            let mut out = Vec::new();
            pack_uint(&mut out, number);
            out
        };
        assert_eq!(packed(0), [0x00]);
        assert_eq!(packed(127), [0x7f]);
        assert_eq!(packed(128), [0xcc, 0x80]);
        assert_eq!(packed(256), [0xcd, 0x01, 0x00]);
        assert_eq!(packed(65_536), [0xce, 0x00, 0x01, 0x00, 0x00]);
        assert_eq!(packed(1 << 32), [0xcf, 0, 0, 0, 1, 0, 0, 0, 0]);
        for number in [0, 127, 128, 255, 256, 65_535, 65_536, u32::MAX as u64, 1 << 32] {
            assert_eq!(unpack_strings(&packed(number)), [number.to_string().into_bytes()]);
        }
    }

    fn version(end: u64, ordinal: u32) -> String {
        Version { commit_lsn: Lsn(end - 8), ordinal }.to_sortable_string()
    }

    #[test]
    fn a_batch_is_one_call_naming_each_key_once() {
        let batch = [transaction(
            0x100,
            vec![
                ChangeOp::Insert { new: vec![text("7"), text("new"), ColumnValue::Null] },
                ChangeOp::Update { old: None, new: vec![text("7"), ColumnValue::Null, ColumnValue::UnchangedToast] },
                ChangeOp::Delete { old: vec![text("7"), ColumnValue::Null, ColumnValue::Null] },
            ],
        )];
        let steps = encoder(None).encode(&refs(&batch), batch.last().map(|t| t.end_lsn)).unwrap();
        let call = only_call(&steps);
        assert_eq!(*call.keys(), ["cp", "reservations:7", "idx:public.reservations"]);
        let (v0, v1, v2) = (version(0x100, 0), version(0x100, 1), version(0x100, 2));
        // Guard field, checkpoint; then per record: opcode, then for a hash
        // row one packed argument (key positions: row, tombstone, index
        // set; replace or patch, TTL, count of fields to remove, version,
        // fields with the version's own last) and the fields to remove.
        let expected = [
            "_v 0/100".to_owned(),
            format!("H [2 0 3 1 0 0 {v0} id 7 status new]"),
            format!("H [2 0 3 0 0 1 {v1} id 7] status"),
            format!("D h 2 0 3 {v2} 0"),
        ]
        .join(" ");
        assert_eq!(texts(call).join(" "), expected);
    }

    #[test]
    fn a_large_batch_becomes_calls_bounded_by_changes_and_bytes_with_the_checkpoint_last() {
        // Many small rows: bounded by the change count.
        let ids: Vec<String> = (0..MAX_CALL_CHANGES * 2 + 10).map(|i| i.to_string()).collect();
        let ops: Vec<ChangeOp> = ids
            .iter()
            .map(|id| ChangeOp::Insert {
                new: vec![ColumnValue::Text(id.clone().into()), text("s"), ColumnValue::Null],
            })
            .collect();
        let batch = [transaction(0x900, ops)];
        let steps = encoder(None).encode(&refs(&batch), Some(Lsn(0x900))).unwrap();
        assert_eq!(steps.len(), 3);
        let calls: Vec<&ScriptCall> =
            steps.iter().map(|step| if let BatchStep::Script(call) = step { call } else { panic!() }).collect();
        let records = |call: &ScriptCall| texts(call).iter().filter(|arg| *arg == "H").count();
        assert_eq!(
            calls.iter().map(|call| records(call)).collect::<Vec<_>>(),
            [MAX_CALL_CHANGES, MAX_CALL_CHANGES, 10]
        );
        let checkpoints: Vec<String> = calls.iter().map(|call| texts(call)[1].clone()).collect();
        assert_eq!(checkpoints, ["", "", &Lsn(0x900).to_string()], "the checkpoint only in the last call");

        // Few large rows: bounded by bytes.
        let big = "x".repeat(1024 * 1024);
        let ops: Vec<ChangeOp> = (0..20)
            .map(|i| ChangeOp::Insert {
                new: vec![
                    ColumnValue::Text(i.to_string().into()),
                    ColumnValue::Text(big.clone().into()),
                    ColumnValue::Null,
                ],
            })
            .collect();
        let batch = [transaction(0xa00, ops)];
        let steps = encoder(None).encode(&refs(&batch), None).unwrap();
        assert!(steps.len() >= 3, "20 MB of rows take several calls");
        for step in &steps {
            let BatchStep::Script(call) = step else { panic!("script calls only") };
            assert!(call.size_bytes() < MAX_CALL_BYTES + 2 * 1024 * 1024, "{} bytes", call.size_bytes());
            let on_the_wire: usize =
                call.args().map(<[u8]>::len).sum::<usize>() + call.keys().iter().map(String::len).sum::<usize>();
            assert_eq!(call.size_bytes(), on_the_wire, "the size counts every argument and key");
        }
    }

    #[test]
    fn a_key_change_moves_the_row_before_patching_it() {
        let batch = [transaction(
            0x200,
            vec![ChangeOp::Update {
                old: Some(vec![text("7"), ColumnValue::Null, ColumnValue::Null]),
                new: vec![text("8"), text("s"), ColumnValue::UnchangedToast],
            }],
        )];
        let options = TableOptions {
            key: Some(KeyTemplate::parse("r:{id}").unwrap()),
            tombstone_secs: Some(60),
            ..TableOptions::default()
        };
        let steps = encoder_with(options).encode(&refs(&batch), None).unwrap();
        let call = only_call(&steps);
        assert_eq!(*call.keys(), ["cp", "r:7", "r:8", "tomb:r:7", "idx:public.reservations", "tomb:r:8"]);
        let v = version(0x200, 0);
        assert_eq!(texts(call)[2..11], ["M", "h", "2", "3", "4", "5", v.as_str(), "60", "H"]);
    }

    #[test]
    fn json_rows_hold_text_values_and_leave_unchanged_toast_to_the_store() {
        let options = TableOptions {
            key: Some(KeyTemplate::parse("r:{id}").unwrap()),
            format: RowFormat::Json,
            ..TableOptions::default()
        };
        let batch = [transaction(
            0x300,
            vec![ChangeOp::Update {
                old: None,
                new: vec![text("7"), text("say \"hi\" ✓"), ColumnValue::UnchangedToast],
            }],
        )];
        let steps = encoder_with(options).encode(&refs(&batch), None).unwrap();
        let args = texts(only_call(&steps));
        let v = version(0x300, 0);
        assert_eq!(args[2..8], ["J", "2", "0", "3", v.as_str(), "0"]);
        let document: serde_json::Value = serde_json::from_str(&args[8]).unwrap();
        assert_eq!(document, serde_json::json!({"_v": v, "id": "7", "status": "say \"hi\" ✓"}));
        assert!(args[8].starts_with("{\"_v\":"), "the version comes first: {}", args[8]);
        assert_eq!(args[9..], ["1", "notes"], "the TOAST column is kept from the store");
    }

    #[test]
    fn a_column_named_like_the_version_field_is_a_problem() {
        let mut shape = (*table()).clone();
        assert!(encoder(None).table_problems(&shape).is_empty());
        shape.columns[2].name = "_v".into();
        let problems = encoder(None).table_problems(&shape);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("column _v has the name of the sink's version field"), "{problems:?}");
        let mut unguarded = settings();
        unguarded.version_field = None;
        assert!(RedisEncoder::new(HashMap::new(), unguarded).table_problems(&shape).is_empty());
    }

    #[test]
    fn without_the_guard_no_version_field_is_named() {
        let mut settings = settings();
        settings.version_field = None;
        let mut encoder = RedisEncoder::new(HashMap::new(), settings);
        let batch = [transaction(0x100, vec![ChangeOp::Insert { new: vec![text("1"), text("a"), text("b")] }])];
        let steps = encoder.encode(&refs(&batch), None).unwrap();
        assert_eq!(texts(only_call(&steps))[..2], ["", ""]);
    }

    #[test]
    fn a_truncate_by_index_set_is_a_record_and_by_scan_splits_the_batch() {
        let batch = [transaction(
            0x400,
            vec![
                ChangeOp::Insert { new: vec![text("1"), text("a"), ColumnValue::Null] },
                ChangeOp::Truncate,
                ChangeOp::Insert { new: vec![text("2"), text("b"), ColumnValue::Null] },
            ],
        )];
        let steps = encoder(None).encode(&refs(&batch), Some(Lsn(0x400))).unwrap();
        let args = texts(only_call(&steps));
        let v = version(0x400, 1);
        let truncate = args.iter().position(|a| a == "T").unwrap();
        assert_eq!(args[truncate..truncate + 4], ["T", "h", "3", v.as_str()]);

        let options = TableOptions {
            key: Some(KeyTemplate::parse("r[{id}]").unwrap()),
            truncate: Some(TruncateBy::Scan("r\\[*\\]".into())),
            ..TableOptions::default()
        };
        let steps = encoder_with(options).encode(&refs(&batch), Some(Lsn(0x400))).unwrap();
        let [BatchStep::Script(before), BatchStep::ScanTruncate { pattern, version, .. }, BatchStep::Script(after)] =
            &steps[..]
        else {
            panic!("script, scan, script: {steps:?}")
        };
        assert_eq!(pattern, "r\\[*\\]");
        assert_eq!(version.to_sortable_string(), v);
        assert_eq!(*before.keys(), ["cp", "r[1]"]);
        assert_eq!(texts(before)[1], "", "the checkpoint waits for the last step");
        assert_eq!(texts(after)[1], "0/400");
        assert_eq!(KeyTemplate::parse("r[{id}]:*{x}").unwrap().scan_pattern(), "r\\[*\\]:\\**");
    }

    #[test]
    fn composite_keys_render_every_key_column() {
        let mut composite = (*table()).clone();
        composite.columns[1].is_key = true;
        let composite = Arc::new(composite);
        let transaction = Transaction {
            xid: Xid(1),
            commit_lsn: Lsn(0x10),
            end_lsn: Lsn(0x18),
            commit_time: PgTimestamp(0),
            changes: vec![Change {
                table: Arc::clone(&composite),
                op: ChangeOp::Insert { new: vec![text("7"), text("paid"), ColumnValue::Null] },
                ordinal: 0,
            }],
        };
        let refs = [ChangeRef { transaction: &transaction, change: &transaction.changes[0] }];
        let steps = encoder(None).encode(&refs, None).unwrap();
        assert_eq!(only_call(&steps).keys()[1], "reservations:7:paid", "default: table, then each key column");
        let steps = encoder(Some("r:{status}/{id}")).encode(&refs, None).unwrap();
        assert_eq!(only_call(&steps).keys()[1], "r:paid/7");
    }

    #[test]
    fn each_change_is_keyed_by_its_own_table_shape() {
        // The table after a Relation message that moved the key column
        // (ALTER TABLE, then a new shape): each change's own shape places
        // its key, whichever shape the change before it had.
        let mut moved = (*table()).clone();
        moved.columns.swap(0, 1);
        let moved = Transaction {
            xid: Xid(2),
            commit_lsn: Lsn(0x1f8),
            end_lsn: Lsn(0x200),
            commit_time: PgTimestamp(0),
            changes: vec![Change {
                table: Arc::new(moved),
                op: ChangeOp::Insert { new: vec![text("new"), text("8"), ColumnValue::Null] },
                ordinal: 0,
            }],
        };
        let insert = |id| ChangeOp::Insert { new: vec![text(id), text("new"), ColumnValue::Null] };
        let batch = [transaction(0x100, vec![insert("7")]), Arc::new(moved), transaction(0x300, vec![insert("9")])];
        let steps = encoder(None).encode(&refs(&batch), None).unwrap();
        assert_eq!(
            *only_call(&steps).keys(),
            ["cp", "reservations:7", "idx:public.reservations", "reservations:8", "reservations:9"]
        );
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
        let batch = [transaction(
            0x200,
            vec![
                ChangeOp::Insert { new: vec![text("7"), text("new"), ColumnValue::Null] },
                ChangeOp::Delete { old: vec![text("7"), ColumnValue::Null, ColumnValue::Null] },
            ],
        )];
        let steps = encoder_with(options).encode(&refs(&batch), None).unwrap();
        let call = only_call(&steps);
        assert_eq!(*call.keys(), ["cp", "r:7", "idx:public.reservations", "events"]);
        let args = texts(call);
        // The packed record: key positions, replace, then the TTL.
        assert!(args[3].starts_with("[2 0 3 1 60 0 "), "a written row gets its TTL: {}", args[3]);
        let events: Vec<usize> = args.iter().enumerate().filter(|(_, a)| *a == "X").map(|(i, _)| i).collect();
        assert_eq!(events.len(), 2, "one event per change: {args:?}");
        let field = |event: usize, name: &str| {
            let count: usize = args[event + 4].parse().unwrap();
            let pairs = &args[event + 5..event + 5 + 2 * count];
            pairs.chunks(2).find(|pair| pair[0] == name).map(|pair| pair[1].clone())
        };
        assert_eq!(args[events[0] + 1..events[0] + 3], ["4", "1000"]);
        // Entry ids are the versions: commit LSN as a number, then the ordinal.
        assert_eq!(args[events[0] + 3], format!("{}-0", 0x200 - 8));
        assert_eq!(args[events[1] + 3], format!("{}-1", 0x200 - 8));
        assert_eq!(field(events[0], "op").as_deref(), Some("insert"));
        assert_eq!(field(events[0], "key").as_deref(), Some("r:7"));
        assert_eq!(field(events[0], "table").as_deref(), Some("public.reservations"));
        assert_eq!(field(events[0], "commit_lsn"), Some(Lsn(0x200 - 8).to_string()));
        assert_eq!(field(events[0], "ordinal").as_deref(), Some("0"));
        let new: serde_json::Value = serde_json::from_str(&field(events[0], "new").unwrap()).unwrap();
        assert_eq!(new, serde_json::json!({"id": "7", "status": "new", "notes": null}));
        assert_eq!(field(events[0], "old"), None);
        assert_eq!(field(events[1], "op").as_deref(), Some("delete"));
        assert!(field(events[1], "old").is_some());
    }

    #[test]
    fn invalidation_deletes_keys_of_the_old_and_the_new_row() {
        let options = TableOptions {
            key: Some(KeyTemplate::parse("r:{id}").unwrap()),
            invalidate: vec![KeyTemplate::parse("by_status:{status}").unwrap()],
            invalidate_sets: vec![KeyTemplate::parse("pages:{status}").unwrap()],
            ..TableOptions::default()
        };
        let mut encoder = encoder_with(options);
        let batch = [transaction(
            0x300,
            vec![ChangeOp::Update {
                old: Some(vec![text("7"), text("pending"), ColumnValue::Null]),
                new: vec![text("7"), text("paid"), ColumnValue::UnchangedToast],
            }],
        )];
        let steps = encoder.encode(&refs(&batch), None).unwrap();
        let call = only_call(&steps);
        assert_eq!(
            *call.keys(),
            [
                "cp",
                "r:7",
                "idx:public.reservations",
                "by_status:pending",
                "by_status:paid",
                "pages:pending",
                "pages:paid"
            ]
        );
        let args = texts(call);
        let tail = &args[args.len() - 8..];
        assert_eq!(tail, ["I", "4", "I", "5", "S", "6", "S", "7"]);
        // A row image without the column (NULL) invalidates nothing for it.
        let batch =
            [transaction(0x400, vec![ChangeOp::Insert { new: vec![text("8"), ColumnValue::Null, ColumnValue::Null] }])];
        let steps = encoder.encode(&refs(&batch), None).unwrap();
        assert_eq!(*only_call(&steps).keys(), ["cp", "r:8", "idx:public.reservations"]);
    }
}
