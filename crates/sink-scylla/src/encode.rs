//! Pure mapping from row changes to CQL statements, and the plan of requests
//! that sends them; no I/O.
//!
//! Each source table feeds one or more *target* (query) tables, each keyed
//! by a partition key and clustering columns of its own. Per change and
//! target:
//! - insert: `INSERT INTO ks.t (key…, col…) VALUES (?…)` — NULLs are written
//!   (a re-sent insert must clear what an earlier state left);
//! - update: the same `INSERT` without the unchanged TOAST columns (another
//!   statement shape, prepared on its own); if the target key changed — the
//!   source key, or a non-key column the target is keyed by — first `DELETE`
//!   under the old key; when that old key's row holds values the change
//!   left out (unchanged TOAST under identity DEFAULT, whose old row is only
//!   the key), a [`CarriedMove`] instead: the sink reads them from the old
//!   row, records them ([`crate::carried`]), writes the new row with them,
//!   and only then deletes the old row;
//! - delete: `DELETE FROM ks.t WHERE key = ?…`;
//! - truncate: `TRUNCATE ks.t`, when enabled.
//!
//! With write timestamps every statement carries `USING TIMESTAMP ?` (see
//! [`crate::timestamp`]), and with a TTL every write `USING TTL n`.
//!
//! Knowing the old target key needs the old values of every target key
//! column: a target keyed by a column outside the replica identity needs
//! `REPLICA IDENTITY FULL` on the source table, else updates and deletes are
//! refused with that advice (a stale row would otherwise stay behind).
//!
//! [`plan_requests`] groups statements by partition into unlogged batches
//! (packing whole partitions up to a statement count) and orders them in
//! waves: without write timestamps the server gives every statement of a
//! batch the same timestamp, so two statements on one row never share a
//! batch or a wave; with them, everything goes in one wave.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

use pgfanout_core::{ChangeOp, ChangeRef, Row, TableName, TableSchema, Version};
use pgoutput::value::ValueError;
use pgoutput::{ReplicaIdentity, Value};

use crate::carried::CarryKey;
use crate::config::{is_plain_identifier, ScyllaTableConfig};
use crate::error::ScyllaSinkError;
use crate::timestamp::WriteClock;
use crate::types::cql_type_for;

/// One bound value of a statement, in bind-marker order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    /// A column's typed value (`Value::Null` for NULL), converted to the
    /// column's CQL type when bound.
    Column(Value),
    /// The write timestamp (`USING TIMESTAMP ?`), microseconds.
    Timestamp(i64),
}

/// One CQL statement with its values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The CQL text, shared by every statement of the same shape.
    pub cql: Arc<str>,
    /// Values in bind order.
    pub values: Vec<Bound>,
    /// Target table and partition key values, rendered: statements with the
    /// same value share a partition.
    pub partition: String,
    /// `partition` plus the clustering values: the row written.
    pub row: String,
}

/// What a batch of changes turns into, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CqlOp {
    /// A row write or delete.
    Write(Statement),
    /// `TRUNCATE ks.table`: every earlier write must be applied before it,
    /// every later one after.
    Truncate(String),
    /// A key move whose unchanged TOAST values are only in the old row:
    /// every earlier write must be applied before its read.
    Carry(Box<CarriedMove>),
}

/// A row moving to another key of a target while columns the change left
/// out (unchanged TOAST) live only in the row under the old key. The sink
/// reads both rows, writes the new row (`upsert`, plus `columns` taken from
/// the old row where the new row lacks them), then deletes the old one.
///
/// What the move carries is recorded in the carry log ([`crate::carried`])
/// before it writes anything; applied again (a retry, after a crash, or by a
/// replay from the archive), it writes what it carried the first time.
/// Without an entry (a move the sink first applied in a replay, or one older
/// than the log): if the old row is
/// gone, its delete ran, so the new row was written with the values before
/// it; a value the new row already holds is never replaced by the old row's,
/// which may by then belong to a later row that took the old key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarriedMove {
    /// The change's version and the target table: the move's carry log entry.
    pub key: CarryKey,
    /// `SELECT columns… FROM ks.t WHERE key…`, bound to either key.
    pub select: Arc<str>,
    /// The old row's key values, in bind order.
    pub old_key: Vec<Bound>,
    /// The new row's key values, in bind order.
    pub new_key: Vec<Bound>,
    /// The columns carried over (CQL names, quoted where needed), in select order.
    pub columns: Vec<String>,
    /// `INSERT INTO ks.t (key…`: the carried columns, `) VALUES (…)` and
    /// [`CarriedMove::write_using`] complete it.
    pub insert_head: String,
    /// ` USING …` of the target's writes (empty when none).
    pub write_using: String,
    /// The change's write timestamp, when they are on.
    pub timestamp: Option<i64>,
    /// The new row's write without the carried columns.
    pub upsert: Statement,
    /// The old row's delete.
    pub delete: Statement,
}

impl CarriedMove {
    /// The `INSERT` of the new row's key and `columns` (a subset of
    /// [`CarriedMove::columns`]); bind the new key, the values, then the
    /// timestamp when there is one.
    pub fn insert(&self, columns: &[String]) -> String {
        let markers = vec!["?"; self.new_key.len() + columns.len()].join(", ");
        let names: String = columns.iter().map(|name| format!(", {name}")).collect();
        format!("{}{names}) VALUES ({markers}){}", self.insert_head, self.write_using)
    }
}

/// A target table's shape for schema management.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSchema {
    /// Table name (unqualified).
    pub table: String,
    /// `CREATE TABLE IF NOT EXISTS …` text.
    pub create: String,
    /// Non-key columns and their CQL types, for `ALTER TABLE … ADD`.
    pub columns: Vec<(String, String)>,
}

impl TargetSchema {
    /// The `ALTER TABLE … ADD` statements adding the columns `existing`
    /// lacks (a Relation message announced new ones), with the column each
    /// adds, in column order.
    pub fn missing_columns(
        &self,
        keyspace: &str,
        existing: &std::collections::HashSet<String>,
    ) -> Vec<(String, String)> {
        self.columns
            .iter()
            .filter(|(column, _)| !existing.contains(column))
            .map(|(column, cql_type)| {
                (column.clone(), format!("ALTER TABLE {keyspace}.{} ADD {} {cql_type}", self.table, cql_name(column)))
            })
            .collect()
    }
}

/// Where one target table keeps a source table's columns (for reading rows
/// back: `verify`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetLayout {
    /// `ks.table`.
    pub qualified: String,
    /// Key columns, partition then clustering: position in the shape, name.
    pub key: Vec<(usize, String)>,
    /// The other written columns: position in the shape, name.
    pub values: Vec<(usize, String)>,
}

/// One query table as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetOptions {
    /// Table name; `None` for the default target (named like the source).
    pub table: Option<String>,
    /// Partition key columns; empty for the default target (the source key).
    pub partition_key: Vec<String>,
    /// Clustering columns.
    pub clustering_key: Vec<String>,
    /// Non-key columns written; `None` means all.
    pub columns: Option<Vec<String>>,
    /// `USING TTL`, seconds.
    pub ttl_secs: Option<u32>,
}

/// A source table's options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableOptions {
    /// Its target tables; empty means one default target.
    pub targets: Vec<TargetOptions>,
    /// CQL types of created columns, overriding the default mapping.
    pub types: HashMap<String, String>,
}

impl TableOptions {
    /// The options configured for a `[[sink.table]]`.
    pub fn from_config(table: &ScyllaTableConfig) -> Self {
        let targets = table
            .targets
            .iter()
            .map(|target| TargetOptions {
                table: Some(target.table.clone()),
                partition_key: target.partition_key.clone(),
                clustering_key: target.clustering_key.clone(),
                columns: target.columns.clone(),
                ttl_secs: target.ttl_secs.or(table.ttl_secs),
            })
            .collect::<Vec<_>>();
        let targets = if targets.is_empty() {
            vec![TargetOptions { ttl_secs: table.ttl_secs, ..default_target() }]
        } else {
            targets
        };
        TableOptions { targets, types: table.types.clone() }
    }
}

/// Encodes batches for one sink; resolves each table shape once.
#[derive(Debug)]
pub struct CqlEncoder {
    keyspace: String,
    tables: HashMap<TableName, TableOptions>,
    write_timestamps: bool,
    truncate: bool,
    resolved: HashMap<TableName, ResolvedTable>,
}

/// A source table's targets resolved against one shape of the table.
#[derive(Debug)]
struct ResolvedTable {
    shape: Arc<TableSchema>,
    /// `schema.table`, for error messages and logs.
    source: String,
    targets: Vec<ResolvedTarget>,
}

#[derive(Debug)]
struct ResolvedTarget {
    /// `ks.table`.
    qualified: String,
    /// Positions and names of the partition key columns.
    partition: Vec<(usize, String)>,
    /// Positions and names of the clustering columns.
    clustering: Vec<(usize, String)>,
    /// Positions of the other written columns, in shape order.
    values: Vec<usize>,
    /// A key column outside the replica identity (without identity FULL).
    key_outside_identity: Option<String>,
    /// `DELETE` text.
    delete: Arc<str>,
    /// `INSERT` texts by the positions of the value columns present.
    inserts: HashMap<Vec<usize>, Arc<str>>,
    /// ` USING …` clause of writes (empty when none).
    write_using: String,
    schema: TargetSchema,
}

impl CqlEncoder {
    /// An encoder for tables in `keyspace` with the configured options.
    pub fn new(
        keyspace: &str,
        tables: HashMap<TableName, TableOptions>,
        write_timestamps: bool,
        truncate: bool,
    ) -> Self {
        CqlEncoder { keyspace: keyspace.to_owned(), tables, write_timestamps, truncate, resolved: HashMap::new() }
    }

    /// The operations applying `changes` in order. `clock` gives write
    /// timestamps (used only when they are on).
    pub fn encode(&mut self, changes: &[ChangeRef<'_>], clock: &mut WriteClock) -> Result<Vec<CqlOp>, ScyllaSinkError> {
        let mut ops = Vec::with_capacity(changes.len() * 2);
        for change in changes {
            let timestamp = if self.write_timestamps { Some(clock.timestamp(change)) } else { None };
            self.encode_change(change, timestamp, &mut ops)?;
        }
        Ok(ops)
    }

    /// The target tables of `shape`, for schema management.
    pub fn schemas(&mut self, shape: &Arc<TableSchema>) -> Result<Vec<TargetSchema>, ScyllaSinkError> {
        Ok(self.resolve(shape)?.targets.iter().map(|t| t.schema.clone()).collect())
    }

    /// Where each target table of `shape` keeps its columns.
    pub fn layouts(&mut self, shape: &Arc<TableSchema>) -> Result<Vec<TargetLayout>, ScyllaSinkError> {
        Ok(self
            .resolve(shape)?
            .targets
            .iter()
            .map(|target| TargetLayout {
                qualified: target.qualified.clone(),
                key: target.partition.iter().chain(&target.clustering).cloned().collect(),
                values: target.values.iter().map(|&p| (p, target.schema_column_name(p).to_owned())).collect(),
            })
            .collect())
    }

    fn encode_change(
        &mut self,
        change: &ChangeRef<'_>,
        timestamp: Option<i64>,
        ops: &mut Vec<CqlOp>,
    ) -> Result<(), ScyllaSinkError> {
        let shape = &change.change.table;
        let truncate = self.truncate;
        let ResolvedTable { source, targets, .. } = self.resolve(shape)?;
        let source = source.as_str();
        let typed = |row: &Row| -> Result<Vec<Option<Value>>, ScyllaSinkError> {
            shape
                .typed_row(row)
                .map_err(|err: ValueError| ScyllaSinkError::Value { table: source.to_owned(), source: err })
        };
        match &change.change.op {
            ChangeOp::Insert { new } => {
                let new = typed(new)?;
                for target in targets.iter_mut() {
                    let key = target.key_values(source, &new, None)?;
                    ops.push(CqlOp::Write(target.upsert(key, &new, timestamp)));
                }
            }
            ChangeOp::Update { old, new } => {
                let new = typed(new)?;
                let old = old.as_ref().map(typed).transpose()?;
                for target in targets.iter_mut() {
                    if let Some(column) = &target.key_outside_identity {
                        return Err(identity_error(source, &target.qualified, column));
                    }
                    let new_key = target.key_values(source, &new, None)?;
                    if let Some(old) = &old {
                        let old_key = target.key_values(source, old, Some(&new))?;
                        if old_key != new_key {
                            // The row moves: nothing of it may stay under the old key.
                            // An unchanged TOAST value is never NULL: a NULL in
                            // the old row is a key-only old row's (identity DEFAULT).
                            let moved: Vec<Option<Value>> = new
                                .iter()
                                .zip(old.iter())
                                .map(|(new, old)| new.clone().or_else(|| old.clone().filter(|old| !old.is_null())))
                                .collect();
                            // Unchanged TOAST values a key-only old row
                            // (identity DEFAULT) does not hold either.
                            let carried: Vec<usize> = target
                                .values
                                .iter()
                                .copied()
                                .filter(|&p| moved.get(p).is_some_and(Option::is_none))
                                .collect();
                            let delete = target.delete(old_key.clone(), timestamp);
                            // The key columns come from `new`: the key is `new_key`.
                            let upsert = target.upsert(new_key.clone(), &moved, timestamp);
                            if carried.is_empty() {
                                ops.push(CqlOp::Write(delete));
                                ops.push(CqlOp::Write(upsert));
                            } else {
                                let version = Version {
                                    commit_lsn: change.transaction.commit_lsn,
                                    ordinal: change.change.ordinal,
                                };
                                let carry = target.carried_move(
                                    &carried,
                                    version,
                                    (old_key, new_key),
                                    timestamp,
                                    upsert,
                                    delete,
                                );
                                ops.push(CqlOp::Carry(Box::new(carry)));
                            }
                            continue;
                        }
                    }
                    ops.push(CqlOp::Write(target.upsert(new_key, &new, timestamp)));
                }
            }
            ChangeOp::Delete { old } => {
                let old = typed(old)?;
                for target in targets.iter() {
                    if let Some(column) = &target.key_outside_identity {
                        return Err(identity_error(source, &target.qualified, column));
                    }
                    let key = target.key_values(source, &old, None)?;
                    ops.push(CqlOp::Write(target.delete(key, timestamp)));
                }
            }
            ChangeOp::Truncate => {
                if truncate {
                    ops.extend(targets.iter().map(|t| CqlOp::Truncate(format!("TRUNCATE {}", t.qualified))));
                } else {
                    tracing::warn!(table = %source, "truncate not applied: the sink runs with truncate = false");
                }
            }
        }
        Ok(())
    }

    /// What would make [`encode`](Self::encode) refuse every change (or every delete) of a
    /// table of this shape, one line each: a target it cannot key (no primary key and no
    /// `partition_key`), key columns the table does not publish or a delete does not carry.
    pub fn table_problems(&self, shape: &TableSchema) -> Vec<String> {
        let options = self.tables.get(&shape.table).cloned().unwrap_or_default();
        let targets = if options.targets.is_empty() { vec![default_target()] } else { options.targets.clone() };
        let reason = |err: ScyllaSinkError| match err {
            ScyllaSinkError::Mapping { reason, .. } => reason,
            other => other.to_string(),
        };
        let mut problems = Vec::new();
        for target in &targets {
            match self.resolve_target(shape, target, &options.types) {
                Ok(resolved) => {
                    if let Some(column) = &resolved.key_outside_identity {
                        problems.push(reason(identity_error(&shape.table.to_string(), &resolved.qualified, column)));
                    }
                }
                Err(err) => problems.push(reason(err)),
            }
        }
        problems
    }

    /// The table's targets resolved against this shape, re-resolved only when
    /// a Relation message changed the shape.
    fn resolve(&mut self, shape: &Arc<TableSchema>) -> Result<&mut ResolvedTable, ScyllaSinkError> {
        let stale = match self.resolved.get(&shape.table) {
            Some(resolved) => !Arc::ptr_eq(&resolved.shape, shape) && *resolved.shape != **shape,
            None => true,
        };
        if stale {
            let options = self.tables.get(&shape.table).cloned().unwrap_or_default();
            let options = if options.targets.is_empty() {
                TableOptions { targets: vec![default_target()], ..options }
            } else {
                options
            };
            let targets = options
                .targets
                .iter()
                .map(|target| self.resolve_target(shape, target, &options.types))
                .collect::<Result<Vec<_>, _>>()?;
            let source = shape.table.to_string();
            self.resolved.insert(shape.table.clone(), ResolvedTable { shape: shape.clone(), source, targets });
        }
        // Inserted just above when missing or stale.
        Ok(self.resolved.get_mut(&shape.table).expect("resolved table"))
    }

    fn resolve_target(
        &self,
        shape: &TableSchema,
        target: &TargetOptions,
        types: &HashMap<String, String>,
    ) -> Result<ResolvedTarget, ScyllaSinkError> {
        let source = shape.table.to_string();
        let mapping_error = |reason: String| ScyllaSinkError::Mapping { table: source.clone(), reason };
        let table = target.table.clone().unwrap_or_else(|| shape.table.name.clone());
        if !is_plain_identifier(&table) {
            return Err(mapping_error(format!(
                "the default target table {table:?} is not a plain CQL name; configure a [[sink.table.target]] with a table name"
            )));
        }
        let partition_names: Vec<String> = if target.partition_key.is_empty() {
            shape.key_positions().map(|p| shape.columns[p].name.clone()).collect()
        } else {
            target.partition_key.clone()
        };
        if partition_names.is_empty() {
            return Err(mapping_error(
                "the table has no primary key; give it one, or configure a [[sink.table.target]] with the \
                 partition_key (and clustering_key) columns that identify a row (without either, rows with equal \
                 values would share one CQL row)"
                    .into(),
            ));
        }
        let locate = |name: &String| {
            shape.position(name).map(|p| (p, name.clone())).ok_or_else(|| {
                mapping_error(format!("target {table} is keyed by column {name}, which the table does not publish"))
            })
        };
        let partition = partition_names.iter().map(locate).collect::<Result<Vec<_>, _>>()?;
        let clustering = target.clustering_key.iter().map(locate).collect::<Result<Vec<_>, _>>()?;
        let is_key = |p: usize| partition.iter().chain(&clustering).any(|(k, _)| *k == p);
        let values: Vec<usize> = match &target.columns {
            Some(names) => {
                let mut positions = names.iter().map(|n| locate(n).map(|(p, _)| p)).collect::<Result<Vec<_>, _>>()?;
                positions.retain(|&p| !is_key(p));
                positions.sort_unstable();
                positions.dedup();
                positions
            }
            None => (0..shape.columns.len()).filter(|&p| !is_key(p)).collect(),
        };
        for &position in partition.iter().chain(&clustering).map(|(p, _)| p).chain(&values) {
            let name = &shape.columns[position].name;
            if !is_plain_identifier(name) {
                return Err(mapping_error(format!(
                    "column {name:?} is not a plain CQL name (lower-case letters, digits, _); rename it with `rename`"
                )));
            }
        }
        let key_outside_identity = if shape.replica_identity == ReplicaIdentity::Full {
            None
        } else {
            partition.iter().chain(&clustering).find(|(p, _)| !shape.columns[*p].is_key).map(|(_, name)| name.clone())
        };
        let qualified = format!("{}.{table}", self.keyspace);
        let timestamp = if self.write_timestamps { " USING TIMESTAMP ?" } else { "" };
        let mut delete = format!("DELETE FROM {qualified}{timestamp} WHERE ");
        for (i, (_, name)) in partition.iter().chain(&clustering).enumerate() {
            let _ = write!(delete, "{}{} = ?", if i == 0 { "" } else { " AND " }, cql_name(name));
        }
        let write_using = match (self.write_timestamps, target.ttl_secs) {
            (true, Some(ttl)) => format!(" USING TIMESTAMP ? AND TTL {ttl}"),
            (true, None) => " USING TIMESTAMP ?".to_owned(),
            (false, Some(ttl)) => format!(" USING TTL {ttl}"),
            (false, None) => String::new(),
        };
        let cql_type = |p: usize| {
            let column = &shape.columns[p];
            types.get(&column.name).cloned().unwrap_or_else(|| cql_type_for(column.type_oid, &shape.types))
        };
        let mut create = format!("CREATE TABLE IF NOT EXISTS {qualified} (");
        for &position in partition.iter().chain(&clustering).map(|(p, _)| p).chain(&values) {
            let _ = write!(create, "{} {}, ", cql_name(&shape.columns[position].name), cql_type(position));
        }
        let names = |keys: &[(usize, String)]| keys.iter().map(|(_, n)| cql_name(n)).collect::<Vec<_>>().join(", ");
        let _ = write!(create, "PRIMARY KEY (({})", names(&partition));
        if !clustering.is_empty() {
            let _ = write!(create, ", {}", names(&clustering));
        }
        create.push_str("))");
        let schema = TargetSchema {
            table: table.clone(),
            create,
            columns: values.iter().map(|&p| (shape.columns[p].name.clone(), cql_type(p))).collect(),
        };
        Ok(ResolvedTarget {
            qualified,
            partition,
            clustering,
            values,
            key_outside_identity,
            delete: delete.into(),
            inserts: HashMap::new(),
            write_using,
            schema,
        })
    }
}

fn default_target() -> TargetOptions {
    TargetOptions { table: None, partition_key: vec![], clustering_key: vec![], columns: None, ttl_secs: None }
}

/// CQL's reserved words (Cassandra 5.0 and ScyllaDB): a column may be
/// named like one only when quoted.
const RESERVED_WORDS: &[&str] = &[
    "add",
    "allow",
    "alter",
    "and",
    "apply",
    "asc",
    "authorize",
    "batch",
    "begin",
    "by",
    "columnfamily",
    "create",
    "default",
    "delete",
    "desc",
    "describe",
    "drop",
    "entries",
    "execute",
    "from",
    "full",
    "grant",
    "if",
    "in",
    "index",
    "infinity",
    "insert",
    "into",
    "is",
    "keyspace",
    "limit",
    "materialized",
    "mbean",
    "mbeans",
    "modify",
    "nan",
    "norecursive",
    "not",
    "null",
    "of",
    "on",
    "or",
    "order",
    "primary",
    "rename",
    "replace",
    "revoke",
    "schema",
    "select",
    "set",
    "table",
    "to",
    "token",
    "truncate",
    "unlogged",
    "unset",
    "update",
    "use",
    "using",
    "view",
    "where",
    "with",
];

/// A plain (lower-case) name as it goes into CQL text: quoted when it is a
/// reserved word (`"token"`; quoting a lower-case name keeps it the same
/// name), as it is otherwise.
pub fn cql_name(name: &str) -> Cow<'_, str> {
    if RESERVED_WORDS.contains(&name) {
        Cow::Owned(format!("\"{name}\""))
    } else {
        Cow::Borrowed(name)
    }
}

fn identity_error(source: &str, target: &str, column: &str) -> ScyllaSinkError {
    ScyllaSinkError::Mapping {
        table: source.to_owned(),
        reason: format!(
            "target {target} is keyed by {column}, which is not part of the replica identity, so the old row \
             cannot be found on update or delete; run ALTER TABLE {source} REPLICA IDENTITY FULL"
        ),
    }
}

impl ResolvedTarget {
    /// The key values (partition, then clustering) from `row`, a column
    /// taken from `fallback` where `row` lacks it (a key-only old tuple).
    fn key_values(
        &self,
        source: &str,
        row: &[Option<Value>],
        fallback: Option<&[Option<Value>]>,
    ) -> Result<Vec<Value>, ScyllaSinkError> {
        self.partition
            .iter()
            .chain(&self.clustering)
            .map(|(position, name)| {
                let present = |row: &[Option<Value>]| row.get(*position).cloned().flatten().filter(|v| !v.is_null());
                present(row).or_else(|| fallback.and_then(present)).ok_or_else(|| ScyllaSinkError::Mapping {
                    table: source.to_owned(),
                    reason: format!(
                        "key column {name} of {} is NULL or missing; key columns must be NOT NULL",
                        self.qualified
                    ),
                })
            })
            .collect()
    }

    /// Partition and row identities for grouping.
    fn identities(&self, key: &[Value]) -> (String, String) {
        // Values are written straight into the identity, without a string each.
        let mut partition = self.qualified.clone();
        for value in key.iter().take(self.partition.len()) {
            let _ = write!(partition, "\u{1f}{value}");
        }
        let mut row = partition.clone();
        for value in key.iter().skip(self.partition.len()) {
            let _ = write!(row, "\u{1f}{value}");
        }
        (partition, row)
    }

    /// The [`CarriedMove`] of a row from `old_key` to `new_key` by the change
    /// `version`, taking the value columns at `carried` from the old row.
    fn carried_move(
        &self,
        carried: &[usize],
        version: Version,
        (old_key, new_key): (Vec<Value>, Vec<Value>),
        timestamp: Option<i64>,
        upsert: Statement,
        delete: Statement,
    ) -> CarriedMove {
        let columns: Vec<String> = carried.iter().map(|&p| cql_name(self.schema_column_name(p)).into_owned()).collect();
        let keys: Vec<Cow<'_, str>> = self.partition.iter().chain(&self.clustering).map(|(_, n)| cql_name(n)).collect();
        let condition: Vec<String> = keys.iter().map(|name| format!("{name} = ?")).collect();
        CarriedMove {
            key: CarryKey { version, target: self.qualified.clone() },
            select: format!("SELECT {} FROM {} WHERE {}", columns.join(", "), self.qualified, condition.join(" AND "))
                .into(),
            old_key: old_key.into_iter().map(Bound::Column).collect(),
            new_key: new_key.into_iter().map(Bound::Column).collect(),
            columns,
            insert_head: format!("INSERT INTO {} ({}", self.qualified, keys.join(", ")),
            write_using: self.write_using.clone(),
            timestamp,
            upsert,
            delete,
        }
    }

    /// `DELETE` of the row under `key` (from [`Self::key_values`]).
    fn delete(&self, key: Vec<Value>, timestamp: Option<i64>) -> Statement {
        let (partition, row) = self.identities(&key);
        let mut values = Vec::with_capacity(key.len() + 1);
        values.extend(timestamp.map(Bound::Timestamp));
        values.extend(key.into_iter().map(Bound::Column));
        Statement { cql: self.delete.clone(), values, partition, row }
    }

    /// `INSERT` under `key` (from [`Self::key_values`] of `row`) of the key
    /// and every value column present in `row` (unchanged TOAST columns are
    /// absent and left out).
    fn upsert(&mut self, key: Vec<Value>, row: &[Option<Value>], timestamp: Option<i64>) -> Statement {
        let (partition, identity) = self.identities(&key);
        let present: Vec<usize> =
            self.values.iter().copied().filter(|&p| row.get(p).is_some_and(Option::is_some)).collect();
        let cql = match self.inserts.get(&present) {
            Some(cql) => cql.clone(),
            None => {
                let cql: Arc<str> = self.insert_text(&present).into();
                self.inserts.insert(present.clone(), cql.clone());
                cql
            }
        };
        let mut values = Vec::with_capacity(key.len() + present.len() + 1);
        values.extend(key.into_iter().map(Bound::Column));
        values.extend(present.iter().filter_map(|&p| row.get(p).cloned().flatten()).map(Bound::Column));
        values.extend(timestamp.map(Bound::Timestamp));
        Statement { cql, values, partition, row: identity }
    }

    fn insert_text(&self, present: &[usize]) -> String {
        let names: Vec<Cow<'_, str>> = self
            .partition
            .iter()
            .chain(&self.clustering)
            .map(|(_, name)| cql_name(name))
            .chain(present.iter().map(|&p| cql_name(self.schema_column_name(p))))
            .collect();
        let markers = vec!["?"; names.len()].join(", ");
        format!("INSERT INTO {} ({}) VALUES ({markers}){}", self.qualified, names.join(", "), self.write_using)
    }

    fn schema_column_name(&self, position: usize) -> &str {
        // `values` and `schema.columns` are built in the same order.
        let index = self.values.iter().position(|&p| p == position).unwrap_or(0);
        self.schema.columns.get(index).map_or("", |(name, _)| name.as_str())
    }
}

/// One request: statements sent together (a single statement goes alone,
/// several as one unlogged batch).
pub type Request = Vec<Statement>;

/// Most bytes of values packed into one batch. Cassandra refuses a batch
/// whose mutations exceed `batch_size_fail_threshold` (50 KiB by default;
/// ScyllaDB 1 MiB) as invalid, whatever the statement count, so rows of a
/// few kilobytes (TOASTed text) in batches of `max_batch_statements` would
/// block the sink. Values are counted with a few bytes more each,
/// for the cell overhead the server counts too; a statement larger than
/// this goes alone (a single statement is not a batch).
pub const MAX_BATCH_VALUE_BYTES: usize = 32 * 1024;

/// Bytes counted per bound value on top of its own (see [`MAX_BATCH_VALUE_BYTES`]).
const BOUND_VALUE_OVERHEAD: usize = 16;

impl Statement {
    /// About how many bytes the statement writes, as batches are sized.
    pub fn approximate_bytes(&self) -> usize {
        self.values
            .iter()
            .map(|value| {
                BOUND_VALUE_OVERHEAD
                    + match value {
                        Bound::Column(value) => value_bytes(value),
                        Bound::Timestamp(_) => 8,
                    }
            })
            .sum()
    }
}

/// About how many bytes `value` takes once bound.
fn value_bytes(value: &Value) -> usize {
    match value {
        Value::Text(text) | Value::Json(text) | Value::Jsonb(text) | Value::Xml(text) => text.len(),
        Value::Enum { label: text, .. } | Value::Unknown { text, .. } => text.len(),
        Value::Bytea(bytes) | Value::UnknownBinary { bytes, .. } => bytes.len(),
        Value::Array(array) => array.elements().iter().map(|element| 4 + value_bytes(element)).sum(),
        _ => 16,
    }
}

/// How a batch's operations are sent, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Requests sent concurrently; every request of a wave completes before
    /// the next wave starts.
    Waves(Vec<Vec<Request>>),
    /// A truncate, alone.
    Truncate(String),
    /// Key moves carrying values over (no two touching one row): the old
    /// and new rows read, then the new rows written, then the old deleted.
    Carry(Vec<CarriedMove>),
}

/// Groups `ops` into phases: writes between truncates are grouped by
/// partition, whole partitions packed into requests of at most
/// `max_statements` statements. `separate_rows` (no write timestamps) puts a
/// statement whose row already appears in a partition's current wave into
/// that partition's next wave.
pub fn plan_requests(ops: Vec<CqlOp>, max_statements: usize, separate_rows: bool) -> Vec<Phase> {
    let mut phases = Vec::new();
    let mut writes = Vec::new();
    // Rows the last phase's carried moves touch, when it is one.
    let mut carried_rows: HashSet<String> = HashSet::new();
    for op in ops {
        match op {
            CqlOp::Write(statement) => {
                carried_rows.clear();
                writes.push(statement)
            }
            CqlOp::Truncate(cql) => {
                if !writes.is_empty() {
                    phases.push(Phase::Waves(pack(std::mem::take(&mut writes), max_statements, separate_rows)));
                }
                carried_rows.clear();
                phases.push(Phase::Truncate(cql));
            }
            CqlOp::Carry(carry) => {
                if !writes.is_empty() {
                    phases.push(Phase::Waves(pack(std::mem::take(&mut writes), max_statements, separate_rows)));
                }
                let rows = [carry.delete.row.clone(), carry.upsert.row.clone()];
                let joins = !carried_rows.is_empty() && !rows.iter().any(|row| carried_rows.contains(row));
                match phases.last_mut() {
                    Some(Phase::Carry(moves)) if joins => moves.push(*carry),
                    _ => {
                        carried_rows.clear();
                        phases.push(Phase::Carry(vec![*carry]));
                    }
                }
                carried_rows.extend(rows);
            }
        }
    }
    if !writes.is_empty() {
        phases.push(Phase::Waves(pack(writes, max_statements, separate_rows)));
    }
    phases
}

fn pack(statements: Vec<Statement>, max_statements: usize, separate_rows: bool) -> Vec<Vec<Request>> {
    let max_statements = max_statements.max(1);
    // Partition → its statements per wave, partitions in first-seen order.
    let mut order: Vec<String> = Vec::new();
    let mut partitions: HashMap<String, Vec<Vec<Statement>>> = HashMap::new();
    for statement in statements {
        let waves = partitions.entry(statement.partition.clone()).or_insert_with(|| {
            order.push(statement.partition.clone());
            vec![Vec::new()]
        });
        let wave = if separate_rows {
            // After the last wave that touches this row.
            waves.iter().rposition(|w| w.iter().any(|s| s.row == statement.row)).map_or(0, |w| w + 1)
        } else {
            0
        };
        if wave == waves.len() {
            waves.push(Vec::new());
        }
        waves[wave].push(statement);
    }
    let wave_count = partitions.values().map(Vec::len).max().unwrap_or(0);
    let mut waves: Vec<Vec<Request>> = (0..wave_count).map(|_| Vec::new()).collect();
    // Bytes of each wave's last request so far.
    let mut last_bytes = vec![0; wave_count];
    for partition in order {
        let Some(partition_waves) = partitions.remove(&partition) else { continue };
        for (wave, statements) in partition_waves.into_iter().enumerate() {
            let (requests, request_bytes) = (&mut waves[wave], &mut last_bytes[wave]);
            for statement in statements {
                let bytes = statement.approximate_bytes();
                match requests.last_mut() {
                    Some(request)
                        if request.len() < max_statements && *request_bytes + bytes <= MAX_BATCH_VALUE_BYTES =>
                    {
                        *request_bytes += bytes;
                        request.push(statement)
                    }
                    _ => {
                        *request_bytes = bytes;
                        requests.push(vec![statement])
                    }
                }
            }
        }
    }
    waves.retain(|wave| !wave.is_empty());
    waves
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use pgfanout_core::{Change, ColumnSchema, ColumnValue, Lsn, Transaction};
    use pgoutput::{Oid, PgTimestamp, Xid};

    fn shape(identity: ReplicaIdentity) -> Arc<TableSchema> {
        Arc::new(TableSchema {
            types: Default::default(),
            oid: Oid(1),
            table: TableName::new("public", "reservations"),
            replica_identity: identity,
            columns: vec![
                ColumnSchema { name: "id".into(), type_oid: Oid(20), is_key: true },
                ColumnSchema { name: "guest_id".into(), type_oid: Oid(23), is_key: false },
                ColumnSchema { name: "status".into(), type_oid: Oid(25), is_key: false },
                ColumnSchema { name: "notes".into(), type_oid: Oid(25), is_key: false },
            ],
        })
    }

    fn text(value: &str) -> ColumnValue {
        ColumnValue::Text(Bytes::copy_from_slice(value.as_bytes()))
    }

    fn row(id: &str, guest: &str, status: Option<&str>, notes: ColumnValue) -> Row {
        // An empty guest stands for NULL (a key-only old tuple).
        let guest = if guest.is_empty() { ColumnValue::Null } else { text(guest) };
        vec![text(id), guest, status.map_or(ColumnValue::Null, text), notes]
    }

    fn transaction(shape: &Arc<TableSchema>, ops: Vec<ChangeOp>) -> Transaction {
        Transaction {
            xid: Xid(1),
            commit_lsn: Lsn(0x100),
            end_lsn: Lsn(0x108),
            commit_time: PgTimestamp(1_000),
            changes: ops
                .into_iter()
                .enumerate()
                .map(|(i, op)| Change { table: shape.clone(), op, ordinal: i as u32 })
                .collect(),
        }
    }

    fn refs(transaction: &Transaction) -> Vec<ChangeRef<'_>> {
        transaction.changes.iter().map(|change| ChangeRef { transaction, change }).collect()
    }

    fn by_guest_and_default(ttl: Option<u32>) -> HashMap<TableName, TableOptions> {
        let targets = vec![
            TargetOptions {
                table: Some("reservations".into()),
                partition_key: vec!["id".into()],
                clustering_key: vec![],
                columns: None,
                ttl_secs: ttl,
            },
            TargetOptions {
                table: Some("by_guest".into()),
                partition_key: vec!["guest_id".into()],
                clustering_key: vec!["id".into()],
                columns: Some(vec!["status".into()]),
                ttl_secs: ttl,
            },
        ];
        HashMap::from([(TableName::new("public", "reservations"), TableOptions { targets, types: HashMap::new() })])
    }

    fn statements(ops: &[CqlOp]) -> Vec<(&str, &[Bound])> {
        ops.iter()
            .map(|op| match op {
                CqlOp::Write(s) => (&*s.cql, s.values.as_slice()),
                CqlOp::Truncate(cql) => (cql.as_str(), &[][..]),
                CqlOp::Carry(carry) => (&*carry.select, carry.old_key.as_slice()),
            })
            .collect()
    }

    fn col(value: Value) -> Bound {
        Bound::Column(value)
    }

    #[test]
    fn reserved_words_are_quoted_as_column_names() {
        assert_eq!(cql_name("token"), "\"token\"");
        assert_eq!(cql_name("guest_id"), "guest_id");
    }

    #[test]
    fn a_new_column_in_the_relation_becomes_alter_table_add() {
        let before = shape(ReplicaIdentity::Full);
        let mut after = (*before).clone();
        after.columns.push(ColumnSchema { name: "paid_at".into(), type_oid: Oid(1184), is_key: false });
        let after = Arc::new(after);
        let mut encoder = CqlEncoder::new("ks", by_guest_and_default(None), true, true);
        let existing: std::collections::HashSet<String> =
            ["id", "guest_id", "status", "notes"].iter().map(|c| c.to_string()).collect();
        let old_targets = encoder.schemas(&before).unwrap();
        assert!(old_targets.iter().all(|t| t.missing_columns("ks", &existing).is_empty()), "{old_targets:?}");
        let targets = encoder.schemas(&after).unwrap();
        let main = targets.iter().find(|t| t.table == "reservations").unwrap();
        assert_eq!(
            main.missing_columns("ks", &existing),
            [("paid_at".to_owned(), "ALTER TABLE ks.reservations ADD paid_at timestamp".to_owned())]
        );
        // The query table keyed by guest keeps its configured column subset.
        let by_guest = targets.iter().find(|t| t.table == "by_guest").unwrap();
        let by_guest_columns: std::collections::HashSet<String> =
            ["guest_id", "id", "status"].iter().map(|c| c.to_string()).collect();
        assert!(by_guest.missing_columns("ks", &by_guest_columns).is_empty());
    }

    #[test]
    fn inserts_write_every_query_table_with_timestamps_and_ttl() {
        let shape = shape(ReplicaIdentity::Full);
        let batch = transaction(&shape, vec![ChangeOp::Insert { new: row("7", "3", None, text("n")) }]);
        let mut encoder = CqlEncoder::new("ks", by_guest_and_default(Some(60)), true, true);
        let mut clock = WriteClock::starting_after(0);
        let ops = encoder.encode(&refs(&batch), &mut clock).unwrap();
        let commit = PgTimestamp(1_000).to_unix_micros();
        assert_eq!(
            statements(&ops),
            [
                (
                    "INSERT INTO ks.reservations (id, guest_id, status, notes) VALUES (?, ?, ?, ?) USING TIMESTAMP ? AND TTL 60",
                    &[col(Value::Int8(7)), col(Value::Int4(3)), col(Value::Null), col(Value::Text("n".into())), Bound::Timestamp(commit)][..]
                ),
                (
                    "INSERT INTO ks.by_guest (guest_id, id, status) VALUES (?, ?, ?) USING TIMESTAMP ? AND TTL 60",
                    &[col(Value::Int4(3)), col(Value::Int8(7)), col(Value::Null), Bound::Timestamp(commit)][..]
                ),
            ]
        );
    }

    #[test]
    fn unchanged_toast_columns_are_left_out_and_deletes_use_the_key() {
        let shape = shape(ReplicaIdentity::Full);
        let batch = transaction(
            &shape,
            vec![
                ChangeOp::Update {
                    old: Some(row("7", "3", Some("new"), text("n"))),
                    new: row("7", "3", Some("paid"), ColumnValue::UnchangedToast),
                },
                ChangeOp::Delete { old: row("7", "3", Some("paid"), text("n")) },
            ],
        );
        let mut encoder = CqlEncoder::new("ks", by_guest_and_default(None), false, true);
        let ops = encoder.encode(&refs(&batch), &mut WriteClock::starting_after(0)).unwrap();
        assert_eq!(
            statements(&ops),
            [
                (
                    "INSERT INTO ks.reservations (id, guest_id, status) VALUES (?, ?, ?)",
                    &[col(Value::Int8(7)), col(Value::Int4(3)), col(Value::Text("paid".into()))][..]
                ),
                (
                    "INSERT INTO ks.by_guest (guest_id, id, status) VALUES (?, ?, ?)",
                    &[col(Value::Int4(3)), col(Value::Int8(7)), col(Value::Text("paid".into()))][..]
                ),
                ("DELETE FROM ks.reservations WHERE id = ?", &[col(Value::Int8(7))][..]),
                (
                    "DELETE FROM ks.by_guest WHERE guest_id = ? AND id = ?",
                    &[col(Value::Int4(3)), col(Value::Int8(7))][..]
                ),
            ]
        );
    }

    #[test]
    fn a_changed_query_key_moves_the_row_and_timestamps_keep_the_order() {
        let shape = shape(ReplicaIdentity::Full);
        let batch = transaction(
            &shape,
            vec![ChangeOp::Update {
                old: Some(row("7", "3", Some("new"), text("long"))),
                new: row("7", "4", Some("new"), ColumnValue::UnchangedToast),
            }],
        );
        let mut encoder = CqlEncoder::new("ks", by_guest_and_default(None), true, true);
        let ops = encoder.encode(&refs(&batch), &mut WriteClock::starting_after(0)).unwrap();
        let stamp = Bound::Timestamp(PgTimestamp(1_000).to_unix_micros());
        let listed = statements(&ops);
        // The base table keeps its key: a plain write without the TOAST column.
        assert_eq!(
            listed[0].0,
            "INSERT INTO ks.reservations (id, guest_id, status) VALUES (?, ?, ?) USING TIMESTAMP ?"
        );
        // The query table: delete under guest 3, write under guest 4.
        assert_eq!(
            listed[1],
            (
                "DELETE FROM ks.by_guest USING TIMESTAMP ? WHERE guest_id = ? AND id = ?",
                &[stamp.clone(), col(Value::Int4(3)), col(Value::Int8(7))][..]
            )
        );
        assert_eq!(
            listed[2],
            (
                "INSERT INTO ks.by_guest (guest_id, id, status) VALUES (?, ?, ?) USING TIMESTAMP ?",
                &[col(Value::Int4(4)), col(Value::Int8(7)), col(Value::Text("new".into())), stamp.clone()][..]
            )
        );
        // Every statement of one change, the move's delete included, shares its timestamp.
        assert_eq!(listed[0].1.last(), Some(&stamp));
        assert_eq!(ops.len(), 3);
    }

    #[test]
    fn a_query_key_outside_the_identity_needs_identity_full() {
        let shape = shape(ReplicaIdentity::Default);
        let batch = transaction(&shape, vec![ChangeOp::Delete { old: row("7", "", None, ColumnValue::Null) }]);
        let mut encoder = CqlEncoder::new("ks", by_guest_and_default(None), false, true);
        let err = encoder.encode(&refs(&batch), &mut WriteClock::starting_after(0)).unwrap_err();
        assert!(err.to_string().contains("REPLICA IDENTITY FULL"), "{err}");
        // Inserts need no old row.
        let batch = transaction(&shape, vec![ChangeOp::Insert { new: row("7", "3", None, ColumnValue::Null) }]);
        assert_eq!(encoder.encode(&refs(&batch), &mut WriteClock::starting_after(0)).unwrap().len(), 2);
    }

    #[test]
    fn the_default_target_is_keyed_by_the_primary_key_and_truncates() {
        let shape = shape(ReplicaIdentity::Default);
        let batch = transaction(
            &shape,
            vec![
                ChangeOp::Update {
                    old: Some(row("7", "", None, ColumnValue::Null)),
                    new: row("8", "3", None, text("n")),
                },
                ChangeOp::Truncate,
            ],
        );
        let mut encoder = CqlEncoder::new("ks", HashMap::new(), false, true);
        let ops = encoder.encode(&refs(&batch), &mut WriteClock::starting_after(0)).unwrap();
        assert_eq!(
            statements(&ops),
            [
                ("DELETE FROM ks.reservations WHERE id = ?", &[col(Value::Int8(7))][..]),
                (
                    "INSERT INTO ks.reservations (id, guest_id, status, notes) VALUES (?, ?, ?, ?)",
                    &[col(Value::Int8(8)), col(Value::Int4(3)), col(Value::Null), col(Value::Text("n".into()))][..]
                ),
                ("TRUNCATE ks.reservations", &[][..]),
            ]
        );
        let schemas = encoder.schemas(&shape).unwrap();
        assert_eq!(schemas[0].create, "CREATE TABLE IF NOT EXISTS ks.reservations (id bigint, guest_id int, status text, notes text, PRIMARY KEY ((id)))");
        // With truncate off, nothing is written for it.
        let mut encoder = CqlEncoder::new("ks", HashMap::new(), false, false);
        assert_eq!(encoder.encode(&refs(&batch), &mut WriteClock::starting_after(0)).unwrap().len(), 2);
    }

    #[test]
    fn a_key_move_leaving_a_toast_value_out_of_a_key_only_old_row_carries_it_from_the_old_row() {
        let shape = shape(ReplicaIdentity::Default);
        let batch = transaction(
            &shape,
            vec![ChangeOp::Update {
                old: Some(row("7", "", None, ColumnValue::Null)),
                new: row("8", "3", None, ColumnValue::UnchangedToast),
            }],
        );
        let mut encoder = CqlEncoder::new("ks", HashMap::new(), true, true);
        let ops = encoder.encode(&refs(&batch), &mut WriteClock::starting_after(0)).unwrap();
        let [CqlOp::Carry(carry)] = ops.as_slice() else { panic!("one carried move: {ops:?}") };
        assert_eq!(&*carry.select, "SELECT notes FROM ks.reservations WHERE id = ?");
        // Its carry log entry: the change's version and the target table.
        let version = pgfanout_core::Version { commit_lsn: Lsn(0x100), ordinal: 0 };
        assert_eq!(carry.key, CarryKey { version, target: "ks.reservations".into() });
        assert_eq!(
            (carry.old_key.as_slice(), carry.new_key.as_slice()),
            (&[col(Value::Int8(7))][..], &[col(Value::Int8(8))][..])
        );
        assert_eq!(
            &*carry.upsert.cql,
            "INSERT INTO ks.reservations (id, guest_id, status) VALUES (?, ?, ?) USING TIMESTAMP ?"
        );
        assert_eq!(&*carry.delete.cql, "DELETE FROM ks.reservations USING TIMESTAMP ? WHERE id = ?");
        assert_eq!(
            carry.insert(&["notes".to_owned()]),
            "INSERT INTO ks.reservations (id, notes) VALUES (?, ?) USING TIMESTAMP ?"
        );
        let stamp = carry.timestamp.map(Bound::Timestamp);
        assert_eq!(carry.upsert.values.last(), stamp.as_ref(), "the move's writes share its timestamp");
    }

    #[test]
    fn carried_moves_share_a_phase_unless_one_touches_a_row_another_touches() {
        let shape = shape(ReplicaIdentity::Default);
        let moved = |from: &str, to: &str| ChangeOp::Update {
            old: Some(row(from, "", None, ColumnValue::Null)),
            new: row(to, "3", None, ColumnValue::UnchangedToast),
        };
        let batch = transaction(
            &shape,
            vec![
                ChangeOp::Insert { new: row("1", "3", None, text("long")) },
                moved("1", "101"),
                moved("2", "102"),
                moved("101", "201"),
                ChangeOp::Delete { old: row("2", "", None, ColumnValue::Null) },
            ],
        );
        let mut encoder = CqlEncoder::new("ks", HashMap::new(), true, true);
        let ops = encoder.encode(&refs(&batch), &mut WriteClock::starting_after(0)).unwrap();
        let phases: Vec<String> = plan_requests(ops, 10, false)
            .iter()
            .map(|phase| match phase {
                Phase::Waves(waves) => format!("waves {}", waves.len()),
                Phase::Truncate(_) => "truncate".into(),
                Phase::Carry(moves) => format!("carry {}", moves.len()),
            })
            .collect();
        assert_eq!(phases, ["waves 1", "carry 2", "carry 1", "waves 1"], "101 is read after it was written");
    }

    fn write(partition: &str, row: &str) -> Statement {
        Statement { cql: "c".into(), values: vec![], partition: partition.into(), row: format!("{partition}/{row}") }
    }

    fn rows(wave: &[Request]) -> Vec<Vec<String>> {
        wave.iter().map(|request| request.iter().map(|s| s.row.clone()).collect()).collect()
    }

    #[test]
    fn requests_group_by_partition_and_pack_partitions() {
        let ops = ["a/1", "b/1", "a/2", "c/1", "a/3"]
            .iter()
            .map(|id| {
                let (p, r) = id.split_once('/').unwrap();
                CqlOp::Write(write(p, r))
            })
            .collect();
        let phases = plan_requests(ops, 4, false);
        let [Phase::Waves(waves)] = phases.as_slice() else { panic!("{phases:?}") };
        assert_eq!(waves.len(), 1);
        assert_eq!(rows(&waves[0]), [vec!["a/1", "a/2", "a/3", "b/1"], vec!["c/1"]]);
    }

    #[test]
    fn batches_stay_under_the_servers_batch_size_limit() {
        let large = |partition: &str, row: &str| {
            let mut statement = write(partition, row);
            statement.values.push(Bound::Column(Value::Text("a long note ".repeat(1_000))));
            statement
        };
        // Three 12 kB rows: two fit under the limit, packed across partitions.
        let ops = vec![CqlOp::Write(large("a", "1")), CqlOp::Write(large("b", "1")), CqlOp::Write(large("c", "1"))];
        let phases = plan_requests(ops, 100, false);
        let [Phase::Waves(waves)] = phases.as_slice() else { panic!("{phases:?}") };
        assert_eq!(rows(&waves[0]), [vec!["a/1", "b/1"], vec!["c/1"]]);
        for request in &waves[0] {
            let bytes: usize = request.iter().map(Statement::approximate_bytes).sum();
            assert!(bytes <= MAX_BATCH_VALUE_BYTES, "{bytes}");
        }
        // A row over the limit goes alone; small rows still share a batch.
        let mut huge = write("a", "1");
        huge.values.push(Bound::Column(Value::Bytea(vec![0; 100_000].into())));
        let ops = vec![CqlOp::Write(huge), CqlOp::Write(write("b", "1")), CqlOp::Write(write("c", "1"))];
        let phases = plan_requests(ops, 100, false);
        let [Phase::Waves(waves)] = phases.as_slice() else { panic!("{phases:?}") };
        assert_eq!(rows(&waves[0]), [vec!["a/1"], vec!["b/1", "c/1"]]);
    }

    #[test]
    fn without_timestamps_one_row_never_shares_a_wave() {
        let ops = vec![
            CqlOp::Write(write("a", "1")),
            CqlOp::Write(write("a", "2")),
            CqlOp::Write(write("a", "1")),
            CqlOp::Write(write("b", "1")),
            CqlOp::Truncate("TRUNCATE ks.t".into()),
            CqlOp::Write(write("a", "1")),
        ];
        let phases = plan_requests(ops.clone(), 100, true);
        let Phase::Waves(first) = &phases[0] else { panic!("{phases:?}") };
        assert_eq!(rows(&first[0]), [vec!["a/1", "a/2", "b/1"]]);
        assert_eq!(rows(&first[1]), [vec!["a/1"]]);
        assert_eq!(phases[1], Phase::Truncate("TRUNCATE ks.t".into()));
        let Phase::Waves(last) = &phases[2] else { panic!("{phases:?}") };
        assert_eq!(rows(&last[0]), [vec!["a/1"]]);
        // With timestamps the same row may share a batch: they order it.
        let Phase::Waves(waves) = &plan_requests(ops, 100, false)[0] else { panic!() };
        assert_eq!(waves.len(), 1);
    }
}
