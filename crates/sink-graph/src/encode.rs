//! Pure mapping from a batch of changes to Cypher statements with
//! parameters; no I/O. Both transports run these statements; on FalkorDB
//! keys are matched through lookup properties (see [`lookup_value`]).
//!
//! Statement shapes (`$rows` is a list of maps, one per row; identifiers are
//! backtick-quoted; `v` is the change's [`Version`](pgfanout_core::Version) as a sortable string):
//! - node upsert, one per table: `UNWIND $rows AS row MERGE (n:Label {key…})
//!   WITH n, row WHERE n.version IS NULL OR n.version < row.v SET n += row.p,
//!   n.version = row.v`, then per foreign key: the old relationship is
//!   deleted when the key changed or became NULL, and the target node is
//!   `MERGE`d by key and linked (so the target may arrive later: until its
//!   row does, it is a *stub*, marked with [`STUB_PROPERTY`]);
//! - node delete: `DETACH DELETE` of the node, unless it holds a newer version;
//! - key change: the old node's delete and the new node's upsert; when the
//!   change left out unchanged TOAST values the old row lacks (identity
//!   DEFAULT), the upsert first takes them from the old node (`OPTIONAL
//!   MATCH` by the old key, `coalesce`), and the delete follows in the next
//!   round; join rows alike with the old relationship;
//! - stubs: a statement that removes a relationship first labels its stub
//!   endpoints with [`STUB_CHECK_LABEL`]; the batch ends by deleting the
//!   labelled stubs left without relationships;
//! - join-table upsert: the relationship with the row's key is created
//!   between the two endpoint nodes (merged by key) or, when an endpoint
//!   changed, re-created between the new ones with its properties carried
//!   over; join-table delete removes it;
//! - truncate: every node of the label (every relationship of the type);
//! - derived relationships: before and after a round's writes, the `source`
//!   nodes the touched rows reach through the rule's pattern are marked
//!   with a label; at the end of the batch each marked node's relationships
//!   of the rule's type are replaced by one per `target` the pattern
//!   reaches, with the count and lists recomputed from the matches. Counts
//!   are never incremented, so replays and deletes leave them exact.
//!
//! A batch becomes *rounds*: a round holds at most one change per row, so
//! its statements can group rows by table; a row seen again starts the next
//! round, and a truncate is a round of its own. As a round runs its deletes
//! before its upserts, a delete of a node that an earlier upsert of the
//! round wrote or merged (as a relationship's target) also starts the next
//! round: changes touching one node keep the stream's order. One statement
//! per (round, table, kind), so 1,000 inserts into one table are one statement.
//!
//! Invariants: unchanged TOAST values are never written (they are left out
//! of `row.p`, and a foreign key whose column is unchanged keeps its
//! relationship); a write carries its version and never overwrites a newer
//! one; the same batch gives the same statements.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

use pgfanout_core::{Change, ChangeOp, ChangeRef, ColumnValue, Row, TableName, TableSchema};

use crate::config::{Direction, ForeignKeyConfig, GraphSinkConfig, JoinConfig};
use crate::error::GraphSinkError;
use crate::value::{GraphValue, ValueOptions};

/// Property marking a node that exists only because a relationship needs
/// it: `MERGE`d by key as a foreign key's target or a join row's endpoint,
/// with no row of its own (yet). The row's upsert removes the mark.
pub const STUB_PROPERTY: &str = "pgfanout_stub";

/// Label put, within one batch, on stub nodes that lost a relationship; the
/// batch ends by deleting those that no relationship needs any more.
pub const STUB_CHECK_LABEL: &str = "PgfanoutStubCheck";

/// Prefix of the property that FalkorDB finds a node or relationship by
/// (`pgfanout_key_id` for key `id`): see [`lookup_value`].
pub const LOOKUP_PREFIX: &str = "pgfanout_key_";

/// Wraps string keys in FalkorDB's lookup property (a private-use code
/// point, so no key text of PostgreSQL's starts or ends the same way by chance).
const LOOKUP_WRAP: char = '\u{E000}';

/// One Cypher statement and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    /// The query text, parameters as `$name`.
    pub cypher: String,
    /// Parameter values by name.
    pub params: Vec<(String, GraphValue)>,
}

impl Statement {
    fn new(cypher: String) -> Self {
        Statement { cypher, params: Vec::new() }
    }

    fn with(mut self, name: &str, value: GraphValue) -> Self {
        self.params.push((name.to_owned(), value));
        self
    }
}

/// An index the statements rely on to find nodes/relationships by key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IndexSpec {
    /// On a property of nodes with a label.
    Node {
        /// Label.
        label: String,
        /// Property.
        property: String,
    },
    /// On a property of relationships of a type.
    Relationship {
        /// Relationship type.
        rel_type: String,
        /// Property.
        property: String,
    },
}

/// Key properties that identify a node of a label: the statements `MERGE`
/// nodes by them. On Neo4j they become a uniqueness constraint, whose index
/// lock makes two lanes merging one key at once find one node, not make two.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeKey {
    /// Label.
    pub label: String,
    /// The key's properties, in key order.
    pub properties: Vec<String>,
}

/// What one batch needs done, in order.
#[derive(Debug, Default, PartialEq)]
pub struct Encoded {
    /// Indexes to make sure of before the statements run (separately: a
    /// schema change cannot share a transaction with writes in Neo4j).
    pub indexes: Vec<IndexSpec>,
    /// Node keys the statements merge by, for the same schema step.
    pub node_keys: Vec<NodeKey>,
    /// The writes, to run in order in one transaction.
    pub statements: Vec<Statement>,
}

/// Backtick-quotes a label, type or property name.
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A table's rows as `verify` reads them back ([`crate::readback`]).
pub(crate) struct ReadRows<'a> {
    /// What the table's rows become.
    pub(crate) rule: ReadRule<'a>,
    /// Key property names, in key order.
    pub(crate) key_names: Vec<String>,
    /// Per row, the map an upsert statement gets for it (`k…`, `q…`, `p`,
    /// `f…`, `g…`, `a`, `b`); only the key fields for a row that writes nothing.
    pub(crate) rows: Vec<GraphValue>,
}

/// What a table's rows become, for [`ReadRows`].
pub(crate) enum ReadRule<'a> {
    /// A node per row, and relationships from foreign keys.
    Node {
        /// Node label.
        label: &'a str,
        /// Relationships from foreign-key columns.
        foreign_keys: &'a [ForeignKeyConfig],
    },
    /// A relationship per row.
    Join(&'a JoinConfig),
}

/// The resolved rules of one sink.
#[derive(Debug)]
pub struct GraphEncoder {
    tables: HashMap<TableName, TableRule>,
    derived: Vec<DerivedRule>,
    values: ValueOptions,
    version: String,
    /// The label as configured (unquoted: it also names an index).
    checkpoint_label: String,
    sink: String,
    /// FalkorDB: keys are found through [`LOOKUP_PREFIX`] properties.
    lookup_keys: bool,
    /// Whether any table makes relationships (and so stub nodes).
    links: bool,
}

#[derive(Debug)]
enum TableRule {
    Node(NodeRule),
    Join(JoinConfig),
}

#[derive(Debug)]
struct NodeRule {
    label: String,
    key: Option<Vec<String>>,
    foreign_keys: Vec<ForeignKeyConfig>,
    /// (derived rule index, pattern variable) for rules this table affects.
    affects: Vec<(usize, String)>,
}

#[derive(Debug)]
struct DerivedRule {
    config: crate::config::DerivedConfig,
    dirty_label: String,
}

/// A row write within a round.
#[derive(Debug)]
enum RowOp {
    Upsert(GraphValue),
    /// The upsert of a node a row moves to, taking the named properties
    /// (unchanged TOAST values the change left out) from the node it moves
    /// away from, whose key is in the row as `ok…`/`oq…`.
    CarryUpsert(GraphValue, Vec<String>),
    Delete(GraphValue),
}

/// One write of a change: the identity of the row it touches, the write,
/// and the nodes it touches (see [`node_id`]): an upsert its own node and
/// every node it `MERGE`s, a node delete its node, a join delete none.
#[derive(Debug)]
struct RowWrite {
    identity: String,
    op: RowOp,
    nodes: Vec<String>,
}

/// A change's row writes.
type RowOps = Vec<RowWrite>;

/// What a batch resolves once per table shape (not per row): the key
/// columns, the statement group, and the columns relationships read.
struct Shape {
    key_positions: Vec<usize>,
    group: Group,
    /// A node table's foreign key columns, or a join table's `from` and `to`
    /// columns, in config order; `None` where the table does not publish
    /// one (an error only for the rows that need it).
    link_positions: Vec<Option<usize>>,
}

/// Rows of one table with the same key property names (one statement).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Group {
    table: TableName,
    key_names: Vec<String>,
    /// Properties a key move's upsert carries over from the old node (empty
    /// for every other upsert).
    carry: Vec<String>,
}

/// Rows of one round, grouped by table and kind in first-seen order.
#[derive(Default)]
struct Round {
    seen: HashMap<TableName, HashSet<String>>,
    /// Nodes the round's upserts write or `MERGE`: a delete of one of them
    /// must wait for the next round, as deletes run before upserts.
    merged: HashSet<String>,
    upserts: Vec<(Group, Vec<GraphValue>)>,
    deletes: Vec<(Group, Vec<GraphValue>)>,
    /// Rows whose derived marks are due before / after the writes.
    mark_before: Vec<(Group, Vec<GraphValue>)>,
    mark_after: Vec<(Group, Vec<GraphValue>)>,
}

fn push_to(groups: &mut Vec<(Group, Vec<GraphValue>)>, group: &Group, row: GraphValue) {
    match groups.iter_mut().find(|(known, _)| known == group) {
        Some((_, rows)) => rows.push(row),
        None => groups.push((group.clone(), vec![row])),
    }
}

impl GraphEncoder {
    /// Resolves a validated config.
    pub fn new(config: &GraphSinkConfig) -> Self {
        let derived: Vec<DerivedRule> = config
            .derived
            .iter()
            .map(|rule| DerivedRule { config: rule.clone(), dirty_label: format!("PgfanoutDirty_{}", rule.rel_type) })
            .collect();
        let tables = config
            .tables
            .iter()
            .map(|table| {
                let name = TableName::parse(&table.source);
                let rule = match &table.relationship {
                    Some(join) => TableRule::Join(join.clone()),
                    None => TableRule::Node(NodeRule {
                        label: table.label(),
                        key: table.key.clone(),
                        foreign_keys: table.relationships.clone(),
                        affects: derived
                            .iter()
                            .enumerate()
                            .filter_map(|(index, rule)| {
                                rule.config
                                    .on
                                    .iter()
                                    .find(|(source, _)| TableName::parse(source) == name)
                                    .map(|(_, variable)| (index, variable.clone()))
                            })
                            .collect(),
                    }),
                };
                (name, rule)
            })
            .collect();
        GraphEncoder {
            tables,
            derived,
            values: ValueOptions { numeric: config.numeric, timestamps: config.timestamps },
            version: ident(&config.version_property),
            checkpoint_label: config.checkpoint_label.clone(),
            sink: config.name.clone(),
            lookup_keys: config.transport == crate::config::Transport::Falkordb,
            links: config.tables.iter().any(|table| table.relationship.is_some() || !table.relationships.is_empty()),
        }
    }

    /// The rows an insert of each of `rows` would write (see [`ReadRows`]).
    pub(crate) fn read_rows(&self, schema: &Arc<TableSchema>, rows: &[Row]) -> Result<ReadRows<'_>, GraphSinkError> {
        let rule = self.tables.get(&schema.table).ok_or_else(|| GraphSinkError::Mapping {
            table: schema.table.to_string(),
            reason: "the table is not routed to this sink".into(),
        })?;
        let shape = self.shape(rule, schema, &mut BTreeSet::new(), &mut BTreeSet::new())?;
        let mut written = Vec::with_capacity(rows.len());
        for row in rows {
            let change = Change { table: Arc::clone(schema), op: ChangeOp::Insert { new: row.clone() }, ordinal: 0 };
            let ops = match rule {
                TableRule::Node(node) => self.node_ops(node, &shape, &change, GraphValue::Null)?,
                TableRule::Join(join) => self.join_ops(join, &shape, &change, GraphValue::Null)?,
            };
            // An insert is one row write.
            written.extend(ops.into_iter().map(|write| match write.op {
                RowOp::Upsert(fields) | RowOp::CarryUpsert(fields, _) | RowOp::Delete(fields) => fields,
            }));
        }
        let rule = match rule {
            TableRule::Node(node) => ReadRule::Node { label: &node.label, foreign_keys: &node.foreign_keys },
            TableRule::Join(join) => ReadRule::Join(join),
        };
        Ok(ReadRows { rule, key_names: shape.group.key_names, rows: written })
    }

    /// The `[[derived]]` rules in config order (read back by `verify`).
    pub(crate) fn derived_rules(&self) -> impl Iterator<Item = &crate::config::DerivedConfig> {
        self.derived.iter().map(|rule| &rule.config)
    }

    /// The statements recomputing the relationships of `[[derived]]` rule
    /// `index` (config order) for the source nodes with internal ids `ids`,
    /// as the end of a batch does: `verify --repair`.
    pub(crate) fn recompute_sources(&self, index: usize, ids: Vec<i64>) -> Vec<Statement> {
        let rule = &self.derived[index];
        let mark = Statement::new(format!(
            "UNWIND $ids AS i MATCH (source) WHERE id(source) = i SET source:{}",
            ident(&rule.dirty_label)
        ))
        .with("ids", GraphValue::List(ids.into_iter().map(GraphValue::Int).collect()));
        vec![mark, self.recompute(rule)]
    }

    /// The statements that apply `changes`, in order.
    pub fn encode(&self, changes: &[ChangeRef<'_>]) -> Result<Encoded, GraphSinkError> {
        let mut encoded = Encoded::default();
        let mut indexes = BTreeSet::new();
        let mut node_keys = BTreeSet::new();
        let mut round = Round::default();
        let mut dirty = vec![false; self.derived.len()];
        let mut shapes: Vec<(&Arc<TableSchema>, Shape)> = Vec::new();
        for change_ref in changes {
            let change = change_ref.change;
            let table = &change.table.table;
            let Some(rule) = self.tables.get(table) else {
                return Err(GraphSinkError::Mapping {
                    table: table.to_string(),
                    reason: "the sink has no [[sink.table]] for it".into(),
                });
            };
            let version = GraphValue::String(change_ref.version().to_sortable_string());
            if matches!(change.op, ChangeOp::Truncate) {
                self.flush(&mut round, &mut encoded.statements, &mut dirty);
                self.truncate(rule, &mut encoded.statements, &mut dirty);
                continue;
            }
            let shape = match shapes.iter().position(|(known, _)| Arc::ptr_eq(known, &change.table)) {
                Some(index) => &shapes[index].1,
                None => {
                    let shape = self.shape(rule, &change.table, &mut indexes, &mut node_keys)?;
                    shapes.push((&change.table, shape));
                    &shapes[shapes.len() - 1].1
                }
            };
            let ops = match rule {
                TableRule::Node(node) => self.node_ops(node, shape, change, version)?,
                TableRule::Join(join) => self.join_ops(join, shape, change, version)?,
            };
            let group = &shape.group;
            let seen_before =
                round.seen.get(table).is_some_and(|seen| ops.iter().any(|write| seen.contains(&write.identity)));
            // Deletes run before upserts within a round: a delete of a node an
            // earlier upsert of the round wrote or merged waits for the next.
            let deletes_merged = ops.iter().any(|write| {
                matches!(write.op, RowOp::Delete(_)) && write.nodes.iter().any(|node| round.merged.contains(node))
            });
            if seen_before || deletes_merged {
                self.flush(&mut round, &mut encoded.statements, &mut dirty);
            }
            let affects = matches!(rule, TableRule::Node(node) if !node.affects.is_empty());
            let mut carried = false;
            for RowWrite { identity, op, nodes } in ops {
                // A move carrying values over deletes the old node (or
                // relationship) after its upsert read it: in the next round.
                if matches!(op, RowOp::Delete(_)) && (carried || nodes.iter().any(|node| round.merged.contains(node))) {
                    self.flush(&mut round, &mut encoded.statements, &mut dirty);
                }
                carried = matches!(op, RowOp::CarryUpsert(..));
                if matches!(op, RowOp::Upsert(_) | RowOp::CarryUpsert(..)) {
                    round.merged.extend(nodes);
                }
                match round.seen.get_mut(table) {
                    Some(seen) => {
                        seen.insert(identity);
                    }
                    None => {
                        round.seen.insert(table.clone(), HashSet::from([identity]));
                    }
                }
                match op {
                    RowOp::Upsert(row) => {
                        if affects {
                            let key = self.key_fields(&row, group.key_names.len());
                            push_to(&mut round.mark_before, group, key.clone());
                            push_to(&mut round.mark_after, group, key);
                        }
                        push_to(&mut round.upserts, group, row);
                    }
                    RowOp::CarryUpsert(row, carry) => {
                        if affects {
                            let key = self.key_fields(&row, group.key_names.len());
                            push_to(&mut round.mark_before, group, key.clone());
                            push_to(&mut round.mark_after, group, key);
                        }
                        push_to(&mut round.upserts, &Group { carry, ..group.clone() }, row);
                    }
                    RowOp::Delete(row) => {
                        if affects {
                            push_to(&mut round.mark_before, group, self.key_fields(&row, group.key_names.len()));
                        }
                        push_to(&mut round.deletes, group, row);
                    }
                }
            }
        }
        self.flush(&mut round, &mut encoded.statements, &mut dirty);
        for (rule, is_dirty) in self.derived.iter().zip(dirty) {
            if is_dirty {
                encoded.statements.push(self.recompute(rule));
            }
        }
        if self.links && !encoded.statements.is_empty() {
            // Last, once every relationship of the batch is in place (derived
            // ones included): stubs that lost a relationship and need none.
            let (check, stub) = (ident(STUB_CHECK_LABEL), ident(STUB_PROPERTY));
            if self.lookup_keys {
                // FalkorDB (one MULTI/EXEC whatever the count): in two
                // statements, as its REMOVE of a label followed by WITH
                // reaches only the first matched node.
                encoded
                    .statements
                    .push(Statement::new(format!("MATCH (n:{check}) WHERE n.{stub} = true AND NOT (n)--() DELETE n")));
                encoded.statements.push(Statement::new(format!("MATCH (n:{check}) REMOVE n:{check}")));
            } else {
                // Neo4j, one statement (a Bolt round trip each): every marked
                // node loses the mark, and those still stubs without a
                // relationship go.
                encoded.statements.push(Statement::new(format!(
                    "MATCH (n:{check}) REMOVE n:{check} WITH n WHERE n.{stub} = true AND NOT (n)--() DELETE n"
                )));
            }
        }
        encoded.indexes = indexes.into_iter().collect();
        encoded.node_keys = node_keys.into_iter().collect();
        Ok(encoded)
    }

    /// The nodes `change` touches (its own, old and new, and those its
    /// relationships `MERGE`), as identities that are equal exactly when
    /// the nodes are: changes sharing one must be applied in stream order.
    /// Empty for a change the batch would refuse anyway.
    pub fn touched_nodes(&self, change: &Change) -> Vec<String> {
        let Some(rule) = self.tables.get(&change.table.table) else { return Vec::new() };
        let Ok(shape) = self.shape(rule, &change.table, &mut BTreeSet::new(), &mut BTreeSet::new()) else {
            return Vec::new();
        };
        // The version does not matter here.
        let version = GraphValue::Null;
        let writes = match rule {
            TableRule::Node(node) => self.node_ops(node, &shape, change, version),
            TableRule::Join(join) => self.join_ops(join, &shape, change, version),
        };
        writes.map(|writes| writes.into_iter().flat_map(|write| write.nodes).collect()).unwrap_or_default()
    }

    /// The statement storing the checkpoint.
    pub fn store_checkpoint(&self, lsn: pgfanout_core::Lsn) -> Statement {
        Statement::new(format!("MERGE (c:{} {{sink: $sink}}) SET c.lsn = $lsn", ident(&self.checkpoint_label)))
            .with("sink", GraphValue::String(self.sink.clone()))
            .with("lsn", GraphValue::String(lsn.to_string()))
    }

    /// The statement reading the checkpoint: one row, one string column, or no row.
    pub fn load_checkpoint(&self) -> Statement {
        Statement::new(format!("MATCH (c:{} {{sink: $sink}}) RETURN c.lsn", ident(&self.checkpoint_label)))
            .with("sink", GraphValue::String(self.sink.clone()))
    }

    /// The index on the checkpoint node's `sink` property.
    pub fn checkpoint_index(&self) -> IndexSpec {
        IndexSpec::Node { label: self.checkpoint_label.clone(), property: "sink".into() }
    }

    /// The checkpoint node's key: one node per sink.
    pub fn checkpoint_key(&self) -> NodeKey {
        NodeKey { label: self.checkpoint_label.clone(), properties: vec!["sink".into()] }
    }

    /// The statements for the rows gathered in `round`, which is emptied.
    fn flush(&self, round: &mut Round, out: &mut Vec<Statement>, dirty: &mut [bool]) {
        let round = std::mem::take(round);
        for (group, rows) in &round.mark_before {
            self.marks(group, rows, out, dirty);
        }
        // `encode` put only tables it has rules for into the round.
        for (group, rows) in round.deletes {
            match &self.tables[&group.table] {
                TableRule::Node(node) => {
                    if self.links {
                        out.push(self.node_delete_marks(node, &group.key_names, rows.clone()));
                    }
                    out.push(self.node_delete(node, &group.key_names, rows));
                }
                TableRule::Join(join) => {
                    out.push(self.join_marks(join, &group.key_names, rows.clone()));
                    out.push(self.join_delete(join, &group.key_names, rows));
                }
            }
        }
        for (group, rows) in round.upserts {
            match &self.tables[&group.table] {
                TableRule::Node(node) => out.push(self.node_upsert(node, &group, rows)),
                TableRule::Join(join) => {
                    // A join row moved to other endpoints leaves the old ones.
                    out.push(self.join_marks(join, &group.key_names, rows.clone()));
                    out.push(self.join_upsert(join, &group, rows));
                }
            }
        }
        for (group, rows) in &round.mark_after {
            self.marks(group, rows, out, dirty);
        }
    }

    fn marks(&self, group: &Group, rows: &[GraphValue], out: &mut Vec<Statement>, dirty: &mut [bool]) {
        let Some(TableRule::Node(node)) = self.tables.get(&group.table) else { return };
        for (index, variable) in &node.affects {
            let rule = &self.derived[*index];
            dirty[*index] = true;
            out.push(
                Statement::new(format!(
                    "UNWIND $rows AS row MATCH ({variable}:{label} {{{keys}}}) MATCH {pattern} SET source:{dirty}",
                    label = ident(&node.label),
                    keys = self.key_match(&group.key_names),
                    pattern = rule.config.pattern,
                    dirty = ident(&rule.dirty_label),
                ))
                .with("rows", GraphValue::List(rows.to_vec())),
            );
        }
    }

    fn truncate(&self, rule: &TableRule, out: &mut Vec<Statement>, dirty: &mut [bool]) {
        match rule {
            TableRule::Node(node) => {
                for (index, variable) in &node.affects {
                    let rule = &self.derived[*index];
                    dirty[*index] = true;
                    out.push(Statement::new(format!(
                        "MATCH ({variable}:{label}) MATCH {pattern} SET source:{dirty}",
                        label = ident(&node.label),
                        pattern = rule.config.pattern,
                        dirty = ident(&rule.dirty_label),
                    )));
                }
                if self.links {
                    out.push(Statement::new(format!(
                        "MATCH (n:{})--(t) WHERE t.{} = true SET t:{}",
                        ident(&node.label),
                        ident(STUB_PROPERTY),
                        ident(STUB_CHECK_LABEL)
                    )));
                }
                out.push(Statement::new(format!("MATCH (n:{}) DETACH DELETE n", ident(&node.label))));
            }
            TableRule::Join(join) => {
                out.push(Statement::new(format!(
                    "MATCH (a)-[r:{}]->(b) UNWIND [a, b] AS t WITH t WHERE t.{} = true SET t:{}",
                    ident(&join.rel_type),
                    ident(STUB_PROPERTY),
                    ident(STUB_CHECK_LABEL)
                )));
                out.push(Statement::new(format!("MATCH ()-[r:{}]->() DELETE r", ident(&join.rel_type))));
            }
        }
    }

    fn recompute(&self, rule: &DerivedRule) -> Statement {
        let config = &rule.config;
        let mut cypher = format!(
            "MATCH (source:{dirty}) REMOVE source:{dirty} WITH source \
             OPTIONAL MATCH (source)-[old:{rel}]->() DELETE old WITH DISTINCT source \
             MATCH {pattern} WITH source, target, count(DISTINCT {count}) AS derived_count",
            dirty = ident(&rule.dirty_label),
            rel = ident(&config.rel_type),
            pattern = config.pattern,
            count = config.count,
        );
        for (position, expression) in config.collect.values().enumerate() {
            let _ = write!(cypher, ", collect(DISTINCT {expression}) AS derived_{position}");
        }
        let _ = write!(
            cypher,
            " CREATE (source)-[d:{}]->(target) SET d.{} = derived_count",
            ident(&config.rel_type),
            ident(&config.count_property)
        );
        for (position, property) in config.collect.keys().enumerate() {
            let _ = write!(cypher, ", d.{} = derived_{position}", ident(property));
        }
        Statement::new(cypher)
    }

    fn node_upsert(&self, node: &NodeRule, group: &Group, rows: Vec<GraphValue>) -> Statement {
        let key_names = &group.key_names;
        let version = &self.version;
        let stub = ident(STUB_PROPERTY);
        let check = ident(STUB_CHECK_LABEL);
        let label = ident(&node.label);
        // A key move's upsert first finds the node the row moves away from
        // (unless a newer change took its key) and takes from it what the
        // change left out; the node itself goes in the next round.
        let (carry_from, carry_set) = if group.carry.is_empty() {
            (String::new(), String::new())
        } else {
            let from = format!(
                "OPTIONAL MATCH (o:{label} {{{keys}}}) WHERE o.{version} IS NULL OR o.{version} < row.v WITH row, o ",
                keys = self.old_key_match(key_names),
            );
            let set: Vec<String> = group
                .carry
                .iter()
                .map(|name| format!("n.{name} = coalesce(o.{name}, n.{name})", name = ident(name)))
                .collect();
            (from, format!("SET {} ", set.join(", ")))
        };
        let carried = if group.carry.is_empty() { "" } else { ", o" };
        // The row's own upsert makes a stub a real node.
        let mut cypher = format!(
            "UNWIND $rows AS row {carry_from}MERGE (n:{label} {{{keys}}}) \
             WITH n, row{carried} WHERE n.{version} IS NULL OR n.{version} < row.v \
             {carry_set}SET n += row.p, n.{version} = row.v, n.{stub} = null{raw}",
            keys = self.key_match(key_names),
            raw = self.raw_keys("n", key_names),
        );
        for (position, fk) in node.foreign_keys.iter().enumerate() {
            let (arrow_left, arrow_right) = match fk.direction {
                Direction::Out => ("-", "->"),
                Direction::In => ("<-", "-"),
            };
            let rel = ident(&fk.rel_type);
            let target = ident(&fk.to);
            let target_key = ident(&fk.to_key);
            let (target_match, target_raw) = if self.lookup_keys {
                (
                    format!("{}: x.g{position}", ident(&lookup_name(&fk.to_key))),
                    format!(", t.{target_key} = x.f{position}"),
                )
            } else {
                (format!("{target_key}: x.f{position}"), String::new())
            };
            // Only when the column was sent (`s`): the old relationship goes
            // when the key changed or became NULL (a stub it leaves is
            // checked at the end of the batch), the new target is merged
            // (a stub until its own row arrives) and linked.
            let _ = write!(
                cypher,
                " WITH n, row OPTIONAL MATCH (n){arrow_left}[old{position}:{rel}]{arrow_right}(t{position}:{target}) \
                 WHERE row.s{position} AND (row.f{position} IS NULL OR t{position}.{target_key} <> row.f{position}) \
                 WITH n, row, collect(old{position}) AS gone{position}, collect(t{position}) AS left{position} \
                 FOREACH (o IN gone{position} | DELETE o) \
                 FOREACH (t IN [x IN left{position} WHERE x.{stub} = true] | SET t:{check}) \
                 FOREACH (x IN CASE WHEN row.s{position} AND row.f{position} IS NOT NULL THEN [row] ELSE [] END | \
                 MERGE (t:{target} {{{target_match}}}) ON CREATE SET t.{stub} = true{target_raw} \
                 MERGE (n){arrow_left}[:{rel}]{arrow_right}(t))"
            );
        }
        Statement::new(cypher).with("rows", GraphValue::List(rows))
    }

    /// Marks the stub nodes linked to the nodes about to be deleted, for the
    /// check at the end of the batch.
    fn node_delete_marks(&self, node: &NodeRule, key_names: &[String], rows: Vec<GraphValue>) -> Statement {
        Statement::new(format!(
            "UNWIND $rows AS row MATCH (n:{label} {{{keys}}})--(t) WHERE t.{stub} = true SET t:{check}",
            label = ident(&node.label),
            keys = self.key_match(key_names),
            stub = ident(STUB_PROPERTY),
            check = ident(STUB_CHECK_LABEL),
        ))
        .with("rows", GraphValue::List(rows))
    }

    fn node_delete(&self, node: &NodeRule, key_names: &[String], rows: Vec<GraphValue>) -> Statement {
        let version = &self.version;
        Statement::new(format!(
            "UNWIND $rows AS row MATCH (n:{label} {{{keys}}}) \
             WHERE n.{version} IS NULL OR n.{version} < row.v DETACH DELETE n",
            label = ident(&node.label),
            keys = self.key_match(key_names),
        ))
        .with("rows", GraphValue::List(rows))
    }

    /// Marks the stub endpoints of the relationships with the rows' keys
    /// (about to be deleted or moved), for the check at the end of the batch.
    fn join_marks(&self, join: &JoinConfig, key_names: &[String], rows: Vec<GraphValue>) -> Statement {
        Statement::new(format!(
            "UNWIND $rows AS row MATCH (a)-[:{rel} {{{keys}}}]->(b) UNWIND [a, b] AS t \
             WITH t WHERE t.{stub} = true SET t:{check}",
            rel = ident(&join.rel_type),
            keys = self.key_match(key_names),
            stub = ident(STUB_PROPERTY),
            check = ident(STUB_CHECK_LABEL),
        ))
        .with("rows", GraphValue::List(rows))
    }

    fn join_upsert(&self, join: &JoinConfig, group: &Group, rows: Vec<GraphValue>) -> Statement {
        let key_names = &group.key_names;
        let version = &self.version;
        let keys = self.key_match(key_names);
        let rel = ident(&join.rel_type);
        let stub = ident(STUB_PROPERTY);
        let (from_key, to_key) = (ident(&join.from.key), ident(&join.to.key));
        let (from_match, to_match, from_raw, to_raw) = if self.lookup_keys {
            (
                format!("{}: row.ga", ident(&lookup_name(&join.from.key))),
                format!("{}: row.gb", ident(&lookup_name(&join.to.key))),
                format!(", a.{from_key} = row.a"),
                format!(", b.{to_key} = row.b"),
            )
        } else {
            (format!("{from_key}: row.a"), format!("{to_key}: row.b"), String::new(), String::new())
        };
        // An existing relationship with the row's key that is not newer is
        // replaced: kept when its endpoints are the row's, else re-created
        // between the new endpoints with its properties carried over (an
        // unchanged TOAST value is not in `row.p` and must survive).
        // Endpoints without a row of their own are stubs.
        // A key move's upsert also takes what the change left out from the
        // relationship under the old key (deleted in the next round).
        let (carry_from, carried, carry_set) = if group.carry.is_empty() {
            (String::new(), "", String::new())
        } else {
            let from = format!(
                "OPTIONAL MATCH ()-[o:{rel} {{{old_keys}}}]->() WHERE o.{version} IS NULL OR o.{version} < row.v \
                 WITH row, o ",
                old_keys = self.old_key_match(key_names),
            );
            let set: Vec<String> = group
                .carry
                .iter()
                .map(|name| format!("rel.{name} = coalesce(o.{name}, rel.{name})", name = ident(name)))
                .collect();
            (from, ", o", format!("SET {} ", set.join(", ")))
        };
        Statement::new(format!(
            "UNWIND $rows AS row {carry_from}OPTIONAL MATCH ()-[old:{rel} {{{keys}}}]->() \
             WITH row, old{carried} WHERE old IS NULL OR old.{version} IS NULL OR old.{version} < row.v \
             MERGE (a:{from_label} {{{from_match}}}) ON CREATE SET a.{stub} = true{from_raw} \
             MERGE (b:{to_label} {{{to_match}}}) ON CREATE SET b.{stub} = true{to_raw} \
             MERGE (a)-[rel:{rel} {{{keys}}}]->(b) \
             SET rel += CASE WHEN old IS NULL OR id(old) = id(rel) THEN {{}} ELSE properties(old) END \
             {carry_set}SET rel += row.p, rel.{version} = row.v{raw} \
             WITH rel, old WHERE old IS NOT NULL AND id(old) <> id(rel) DELETE old",
            from_label = ident(&join.from.label),
            to_label = ident(&join.to.label),
            raw = self.raw_keys("rel", key_names),
        ))
        .with("rows", GraphValue::List(rows))
    }

    fn join_delete(&self, join: &JoinConfig, key_names: &[String], rows: Vec<GraphValue>) -> Statement {
        let version = &self.version;
        Statement::new(format!(
            "UNWIND $rows AS row MATCH ()-[rel:{rel} {{{keys}}}]->() \
             WHERE rel.{version} IS NULL OR rel.{version} < row.v DELETE rel",
            rel = ident(&join.rel_type),
            keys = self.key_match(key_names),
        ))
        .with("rows", GraphValue::List(rows))
    }

    /// `` `id`: row.k0, `other`: row.k1 `` (Neo4j), or the same through the
    /// lookup properties (FalkorDB: `` `pgfanout_key_id`: row.q0 ``).
    pub(crate) fn key_match(&self, names: &[String]) -> String {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| match self.lookup_keys {
                true => format!("{}: row.q{i}", ident(&lookup_name(name))),
                false => format!("{}: row.k{i}", ident(name)),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// [`Self::key_match`] of the key a row moves away from (`row.ok0`, or
    /// on FalkorDB `row.oq0`), for a key move's upsert.
    fn old_key_match(&self, names: &[String]) -> String {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| match self.lookup_keys {
                true => format!("{}: row.oq{i}", ident(&lookup_name(name))),
                false => format!("{}: row.ok{i}", ident(name)),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The row fields [`Self::old_key_match`] reads: `ok…`, and on FalkorDB
    /// the lookup values `oq…`.
    fn old_key_fields(&self, old_key: &[GraphValue]) -> Vec<(String, GraphValue)> {
        let mut fields = Vec::with_capacity(2 * old_key.len());
        if self.lookup_keys {
            fields.extend(old_key.iter().enumerate().map(|(i, value)| (format!("oq{i}"), lookup_value(value))));
        }
        fields.extend(old_key.iter().enumerate().map(|(i, value)| (format!("ok{i}"), value.clone())));
        fields
    }

    /// FalkorDB: `, n.`id` = row.k0…`, the key properties as they are (a
    /// node merged through its lookup properties gets them here).
    fn raw_keys(&self, variable: &str, names: &[String]) -> String {
        if !self.lookup_keys {
            return String::new();
        }
        names.iter().enumerate().map(|(i, name)| format!(", {variable}.{} = row.k{i}", ident(name))).collect()
    }

    /// `{k0: …, k1: …, [q0: …, q1: …,] v: version}`: the key values (their
    /// property names are in the statement's text), their lookup values on
    /// FalkorDB, and the change's version.
    fn key_row(&self, key: Vec<GraphValue>, version: &GraphValue) -> Vec<(String, GraphValue)> {
        let mut fields: Vec<(String, GraphValue)> = Vec::with_capacity(2 * key.len() + 1);
        if self.lookup_keys {
            for (position, value) in key.iter().enumerate() {
                fields.push((format!("q{position}"), lookup_value(value)));
            }
        }
        for (position, value) in key.into_iter().enumerate() {
            fields.push((format!("k{position}"), value));
        }
        fields.push(("v".into(), version.clone()));
        fields
    }

    /// The fields of a row built on [`Self::key_row`] that its key match
    /// reads (they come first): all a mark statement needs, so its `$rows`
    /// do not carry the properties.
    fn key_fields(&self, row: &GraphValue, key_count: usize) -> GraphValue {
        let count = if self.lookup_keys { 2 * key_count } else { key_count };
        match row {
            GraphValue::Map(fields) => GraphValue::Map(fields[..count.min(fields.len())].to_vec()),
            other => other.clone(),
        }
    }

    /// The upsert/delete rows of one change to a node table, each with the
    /// identity that keeps one row per round and the nodes it touches.
    fn node_ops(
        &self,
        node: &NodeRule,
        shape: &Shape,
        change: &Change,
        version: GraphValue,
    ) -> Result<RowOps, GraphSinkError> {
        let schema = &change.table;
        let key_positions = &shape.key_positions[..];
        let mut ops = Vec::new();
        match &change.op {
            ChangeOp::Insert { new } | ChangeOp::Update { old: None, new } => {
                ops.push(self.node_upsert_row(node, shape, schema, new, None, version)?);
            }
            ChangeOp::Update { old: Some(old), new } => {
                let old_key = self.key_values(schema, key_positions, old, Some(new))?;
                let new_key = self.key_values(schema, key_positions, new, Some(old))?;
                if old_key != new_key {
                    // The row moved to another key: the old node goes (with
                    // its relationships), the new one is written whole.
                    let carry = toast_values_to_carry(schema, old, new);
                    if !carry.is_empty() {
                        // What the change left out (unchanged TOAST under
                        // identity DEFAULT) is only in the old node: the new
                        // one takes it from there first, then the old goes.
                        let upsert = self.node_upsert_row(node, shape, schema, new, Some(old), version.clone())?;
                        let upsert = self.carrying(upsert, node, shape, &old_key, carry);
                        ops.push(upsert);
                        ops.push(self.node_delete_row(node, shape, old_key, &version));
                        return Ok(ops);
                    }
                    ops.push(self.node_delete_row(node, shape, old_key, &version));
                }
                ops.push(self.node_upsert_row(node, shape, schema, new, Some(old), version)?);
            }
            ChangeOp::Delete { old } => {
                let key = self.key_values(schema, key_positions, old, None)?;
                ops.push(self.node_delete_row(node, shape, key, &version));
            }
            ChangeOp::Truncate => {}
        }
        Ok(ops)
    }

    /// `upsert` (from [`Self::node_upsert_row`]) as the upsert of a key move
    /// that takes the properties `carry` from the node under `old_key`: that
    /// node's key goes into the row (`ok…`, and `oq…` on FalkorDB) and into
    /// the nodes it touches.
    fn carrying(
        &self,
        upsert: RowWrite,
        node: &NodeRule,
        shape: &Shape,
        old_key: &[GraphValue],
        carry: Vec<String>,
    ) -> RowWrite {
        let RowWrite { identity, op, mut nodes } = upsert;
        nodes.push(node_id(&node.label, &shape.group.key_names, old_key));
        let mut fields = match op {
            RowOp::Upsert(GraphValue::Map(fields)) => fields,
            // `node_upsert_row` always makes a map.
            other => return RowWrite { identity, op: other, nodes },
        };
        fields.extend(self.old_key_fields(old_key));
        RowWrite { identity, op: RowOp::CarryUpsert(GraphValue::Map(fields), carry), nodes }
    }

    fn node_delete_row(&self, node: &NodeRule, shape: &Shape, key: Vec<GraphValue>, version: &GraphValue) -> RowWrite {
        RowWrite {
            identity: identity(&key),
            nodes: vec![node_id(&node.label, &shape.group.key_names, &key)],
            op: RowOp::Delete(GraphValue::Map(self.key_row(key, version))),
        }
    }

    fn node_upsert_row(
        &self,
        node: &NodeRule,
        shape: &Shape,
        schema: &TableSchema,
        new: &Row,
        old: Option<&Row>,
        version: GraphValue,
    ) -> Result<RowWrite, GraphSinkError> {
        let key = self.key_values(schema, &shape.key_positions, new, old)?;
        let id = identity(&key);
        let mut nodes = vec![node_id(&node.label, &shape.group.key_names, &key)];
        let mut fields = self.key_row(key, &version);
        fields.push(("p".into(), self.properties(schema, new)?));
        for (position, (fk, column)) in node.foreign_keys.iter().zip(&shape.link_positions).enumerate() {
            let column = link_column(schema, &fk.rel_type, &fk.column, *column)?;
            let value = self.typed(schema, column, new)?;
            fields.push((format!("s{position}"), GraphValue::Bool(value.is_some())));
            if let Some(target) = value.as_ref().filter(|value| **value != GraphValue::Null) {
                nodes.push(node_id(&fk.to, std::slice::from_ref(&fk.to_key), std::slice::from_ref(target)));
                if self.lookup_keys {
                    fields.push((format!("g{position}"), lookup_value(target)));
                }
            }
            fields.push((format!("f{position}"), value.unwrap_or(GraphValue::Null)));
        }
        Ok(RowWrite { identity: id, op: RowOp::Upsert(GraphValue::Map(fields)), nodes })
    }

    fn join_ops(
        &self,
        join: &JoinConfig,
        shape: &Shape,
        change: &Change,
        version: GraphValue,
    ) -> Result<RowOps, GraphSinkError> {
        let schema = &change.table;
        let key_positions = &shape.key_positions[..];
        let mut ops = Vec::new();
        let delete = |key: Vec<GraphValue>| RowWrite {
            identity: identity(&key),
            op: RowOp::Delete(GraphValue::Map(self.key_row(key, &version))),
            nodes: Vec::new(),
        };
        let (old, new) = change.op.images();
        // A key move whose change left values out (unchanged TOAST under
        // identity DEFAULT): the relationship under the old key has them.
        let mut moved_from = None;
        if let (Some(old), Some(new)) = (old, new) {
            let old_key = self.key_values(schema, key_positions, old, Some(new))?;
            if old_key != self.key_values(schema, key_positions, new, Some(old))? {
                let carry = toast_values_to_carry(schema, old, new);
                if carry.is_empty() {
                    ops.push(delete(old_key));
                } else {
                    moved_from = Some((old_key, carry));
                }
            }
        }
        match (old, new) {
            (_, Some(new)) => {
                let key = self.key_values(schema, key_positions, new, old)?;
                let endpoint = |column: &str, position: Option<usize>| -> Result<Option<GraphValue>, GraphSinkError> {
                    let position = link_column(schema, &join.rel_type, column, position)?;
                    Ok(self.typed(schema, position, new)?.filter(|value| *value != GraphValue::Null))
                };
                let (from, to) = (shape.link_positions[0], shape.link_positions[1]);
                match (endpoint(&join.from.column, from)?, endpoint(&join.to.column, to)?) {
                    (Some(from), Some(to)) => {
                        let id = identity(&key);
                        let nodes = vec![
                            node_id(
                                &join.from.label,
                                std::slice::from_ref(&join.from.key),
                                std::slice::from_ref(&from),
                            ),
                            node_id(&join.to.label, std::slice::from_ref(&join.to.key), std::slice::from_ref(&to)),
                        ];
                        let mut fields = self.key_row(key, &version);
                        fields.push(("p".into(), self.properties(schema, new)?));
                        if self.lookup_keys {
                            fields.push(("ga".into(), lookup_value(&from)));
                            fields.push(("gb".into(), lookup_value(&to)));
                        }
                        fields.push(("a".into(), from));
                        fields.push(("b".into(), to));
                        match moved_from.take() {
                            Some((old_key, carry)) => {
                                fields.extend(self.old_key_fields(&old_key));
                                let op = RowOp::CarryUpsert(GraphValue::Map(fields), carry);
                                ops.push(RowWrite { identity: id, op, nodes });
                                ops.push(delete(old_key));
                            }
                            None => {
                                ops.push(RowWrite { identity: id, op: RowOp::Upsert(GraphValue::Map(fields)), nodes })
                            }
                        }
                    }
                    // An endpoint is NULL (or unchanged and unknown): no relationship.
                    _ => {
                        if let Some((old_key, _)) = moved_from.take() {
                            ops.push(delete(old_key));
                        }
                        ops.push(delete(key))
                    }
                }
            }
            (Some(old), None) => {
                let key = self.key_values(schema, key_positions, old, None)?;
                ops.push(delete(key));
            }
            (None, None) => {}
        }
        Ok(ops)
    }

    /// What would make [`encode`](Self::encode) refuse every change (or every
    /// delete) of a table of this shape, one line each: a node key it cannot
    /// build, key or relationship columns the table does not publish, key
    /// columns a delete does not carry.
    pub fn table_problems(&self, schema: &TableSchema) -> Vec<String> {
        let Some(rule) = self.tables.get(&schema.table) else { return Vec::new() };
        let shape = match self.shape(rule, schema, &mut BTreeSet::new(), &mut BTreeSet::new()) {
            Ok(shape) => shape,
            Err(GraphSinkError::Mapping { reason, .. }) => return vec![reason],
            Err(other) => return vec![other.to_string()],
        };
        if schema.replica_identity == pgoutput::ReplicaIdentity::Full {
            return Vec::new();
        }
        shape
            .key_positions
            .iter()
            .filter(|&&position| !schema.columns[position].is_key)
            .map(|&position| {
                format!(
                    "key column {} is not part of the table's key (its primary key, or its replica identity index), so a delete (whose old row carries only the \
                     key) has no value for it: key the nodes by primary key columns, or run ALTER TABLE {} \
                     REPLICA IDENTITY FULL",
                    schema.columns[position].name, schema.table
                )
            })
            .collect()
    }

    /// Resolves `schema` under `rule` (once per shape in a batch) and adds
    /// the indexes and node keys its statements rely on.
    fn shape(
        &self,
        rule: &TableRule,
        schema: &TableSchema,
        indexes: &mut BTreeSet<IndexSpec>,
        node_keys: &mut BTreeSet<NodeKey>,
    ) -> Result<Shape, GraphSinkError> {
        let (key_positions, link_positions) = match rule {
            TableRule::Node(node) => {
                let key_positions = self.key_positions(schema, node.key.as_deref())?;
                for &position in &key_positions {
                    indexes.insert(IndexSpec::Node {
                        label: node.label.clone(),
                        property: self.index_property(&schema.columns[position].name),
                    });
                }
                node_keys.insert(NodeKey {
                    label: node.label.clone(),
                    properties: key_positions
                        .iter()
                        .map(|&position| self.index_property(&schema.columns[position].name))
                        .collect(),
                });
                for fk in &node.foreign_keys {
                    indexes.insert(IndexSpec::Node { label: fk.to.clone(), property: self.index_property(&fk.to_key) });
                    node_keys
                        .insert(NodeKey { label: fk.to.clone(), properties: vec![self.index_property(&fk.to_key)] });
                }
                (key_positions, node.foreign_keys.iter().map(|fk| schema.position(&fk.column)).collect())
            }
            TableRule::Join(join) => {
                let key_positions = self.key_positions(schema, None)?;
                for &position in &key_positions {
                    indexes.insert(IndexSpec::Relationship {
                        rel_type: join.rel_type.clone(),
                        property: self.index_property(&schema.columns[position].name),
                    });
                }
                for end in [&join.from, &join.to] {
                    let property = self.index_property(&end.key);
                    indexes.insert(IndexSpec::Node { label: end.label.clone(), property: property.clone() });
                    node_keys.insert(NodeKey { label: end.label.clone(), properties: vec![property] });
                }
                (key_positions, vec![schema.position(&join.from.column), schema.position(&join.to.column)])
            }
        };
        let group =
            Group { table: schema.table.clone(), key_names: key_names(schema, &key_positions), carry: Vec::new() };
        Ok(Shape { key_positions, group, link_positions })
    }

    /// The property an index on key property `name` is made on.
    fn index_property(&self, name: &str) -> String {
        if self.lookup_keys {
            lookup_name(name)
        } else {
            name.to_owned()
        }
    }

    fn key_positions(&self, schema: &TableSchema, configured: Option<&[String]>) -> Result<Vec<usize>, GraphSinkError> {
        let positions: Vec<usize> = match configured {
            Some(names) => names
                .iter()
                .map(|name| {
                    schema.position(name).ok_or_else(|| GraphSinkError::Mapping {
                        table: schema.table.to_string(),
                        reason: format!(
                            "key column {name} is not published by the table; publish it (and keep it out of \
                             `exclude`) or fix `key` in the sink config"
                        ),
                    })
                })
                .collect::<Result<_, _>>()?,
            None => schema.key_positions().collect(),
        };
        if positions.is_empty() {
            return Err(GraphSinkError::Mapping {
                table: schema.table.to_string(),
                reason: "the table has no primary key or replica identity columns; add a primary key or set `key` for it in the sink config".into(),
            });
        }
        Ok(positions)
    }

    /// The key's graph values from `row`, falling back on `fallback` where
    /// `row` lacks a column (a key-only old tuple, an unchanged TOAST value).
    fn key_values(
        &self,
        schema: &TableSchema,
        positions: &[usize],
        row: &Row,
        fallback: Option<&Row>,
    ) -> Result<Vec<GraphValue>, GraphSinkError> {
        positions
            .iter()
            .map(|&position| {
                let value = match self.typed(schema, position, row)? {
                    Some(GraphValue::Null) | None => match fallback {
                        Some(other) => self.typed(schema, position, other)?,
                        None => None,
                    },
                    present => present,
                };
                value.filter(|value| *value != GraphValue::Null).ok_or_else(|| GraphSinkError::Mapping {
                    table: schema.table.to_string(),
                    reason: format!("key column {} is NULL or missing", schema.columns[position].name),
                })
            })
            .collect()
    }

    /// The typed graph value of column `position` of `row`; `None` when the
    /// row does not carry it (unchanged TOAST).
    fn typed(&self, schema: &TableSchema, position: usize, row: &Row) -> Result<Option<GraphValue>, GraphSinkError> {
        let Some(value) = row.get(position) else { return Ok(None) };
        if matches!(value, ColumnValue::UnchangedToast) {
            return Ok(None);
        }
        let typed = schema.typed_value(position, value).map_err(|source| GraphSinkError::Value {
            table: schema.table.to_string(),
            column: schema.columns[position].name.clone(),
            source,
        })?;
        Ok(typed.map(|value| self.values.convert(&value)))
    }

    /// Every column the row carries, as a property map (NULL removes).
    fn properties(&self, schema: &TableSchema, row: &Row) -> Result<GraphValue, GraphSinkError> {
        let mut properties = Vec::with_capacity(row.len());
        for (position, column) in schema.columns.iter().enumerate() {
            if let Some(value) = self.typed(schema, position, row)? {
                properties.push((column.name.clone(), value));
            }
        }
        Ok(GraphValue::Map(properties))
    }
}

/// The columns a row moving to another key must take from the old node:
/// those left out as unchanged TOAST that the old row does not hold either
/// (identity DEFAULT: a key-only old row). Under identity FULL the old row
/// has them and the upsert takes them from there.
fn toast_values_to_carry(schema: &TableSchema, old: &Row, new: &Row) -> Vec<String> {
    new.iter()
        .zip(old)
        .zip(&schema.columns)
        .filter(|((new, old), _)| {
            matches!(new, ColumnValue::UnchangedToast) && !matches!(old, ColumnValue::Text(_) | ColumnValue::Binary(_))
        })
        .map(|(_, column)| column.name.clone())
        .collect()
}

/// The position of a relationship's column, resolved in [`Shape`]; an error
/// naming the column when the table does not publish it.
fn link_column(
    schema: &TableSchema,
    rel_type: &str,
    column: &str,
    position: Option<usize>,
) -> Result<usize, GraphSinkError> {
    position.ok_or_else(|| GraphSinkError::Mapping {
        table: schema.table.to_string(),
        reason: format!(
            "relationship {rel_type} uses column {column}, which the table does not publish; publish it (and keep \
             it out of `columns`/`exclude`) or fix the column in the sink config"
        ),
    })
}

/// The sink names of the key columns.
fn key_names(schema: &TableSchema, positions: &[usize]) -> Vec<String> {
    // Positions come from `key_positions`, which checked them against the schema.
    positions.iter().map(|&position| schema.columns[position].name.clone()).collect()
}

/// A row's identity within a batch, for splitting rounds.
fn identity(key: &[GraphValue]) -> String {
    format!("{key:?}")
}

/// A node's identity: its label, key property names and key values.
fn node_id(label: &str, key_names: &[String], key: &[GraphValue]) -> String {
    format!("{label:?} {key_names:?} {key:?}")
}

/// The name of the property FalkorDB finds nodes by for key property `name`.
pub fn lookup_name(name: &str) -> String {
    format!("{LOOKUP_PREFIX}{name}")
}

/// The value FalkorDB finds a node by for key value `value`: strings
/// wrapped in a private-use code point, everything else as it is.
///
/// Why: FalkorDB's exact-match index trims leading and trailing whitespace
/// from the strings it holds and cannot hold the empty string, so a node
/// whose key is `' tzä'` was found by `'tzä'` and never by `' tzä'` (its
/// delete did nothing, its next upsert made a second node). A wrapped key
/// neither starts nor ends with whitespace and is never empty; the key
/// property itself keeps the value byte for byte.
pub fn lookup_value(value: &GraphValue) -> GraphValue {
    match value {
        GraphValue::String(text) => {
            let mut wrapped = String::with_capacity(text.len() + 2 * LOOKUP_WRAP.len_utf8());
            wrapped.push(LOOKUP_WRAP);
            wrapped.push_str(text);
            wrapped.push(LOOKUP_WRAP);
            GraphValue::String(wrapped)
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pgfanout_core::{Lsn, Transaction};
    use pgoutput::{Oid, PgTimestamp, Xid};

    use super::*;

    const CONFIG: &str = r#"
name = "graph"
transport = "bolt"
url = "bolt://127.0.0.1:7687"
[[table]]
source = "public.reservations"
label = "Reservation"
relationships = [{ column = "guest_id", type = "BOOKED_BY", to = "User" }]
[[table]]
source = "public.favorites"
relationship = { type = "FAVORITE", from = { column = "user_id", label = "User" }, to = { column = "property_id", label = "Property" } }
[[derived]]
type = "BOOKED_IN"
match = "(source:User)<-[:BOOKED_BY]-(r:Reservation)-[:IN_CITY]->(target:City)"
count = "r"
collect = { reservations = "r.id" }
on = { "public.reservations" = "r" }
"#;

    fn encoder() -> GraphEncoder {
        let config: GraphSinkConfig = toml::from_str(CONFIG).unwrap();
        config.validate().unwrap();
        GraphEncoder::new(&config)
    }

    /// `public.<name>`: int8 columns but `note` (text), the first the key.
    fn table(name: &str, columns: &[&str]) -> Arc<TableSchema> {
        crate::test_support::table(name, columns, "note")
    }

    use crate::test_support::row;

    fn transaction(lsn: u64, changes: Vec<(Arc<TableSchema>, ChangeOp)>) -> Transaction {
        Transaction {
            xid: Xid(1),
            commit_lsn: Lsn(lsn),
            end_lsn: Lsn(lsn + 1),
            commit_time: PgTimestamp(0),
            changes: changes
                .into_iter()
                .enumerate()
                .map(|(ordinal, (table, op))| Change { table, op, ordinal: ordinal as u32 })
                .collect(),
        }
    }

    fn encode(transactions: &[Transaction]) -> Encoded {
        let refs: Vec<ChangeRef<'_>> = transactions
            .iter()
            .flat_map(|transaction| transaction.changes.iter().map(move |change| ChangeRef { transaction, change }))
            .collect();
        encoder().encode(&refs).unwrap()
    }

    fn rows_of(statement: &Statement) -> &[GraphValue] {
        match &statement.params[..] {
            [(name, GraphValue::List(rows))] if name == "rows" => rows,
            other => panic!("expected one $rows parameter, got {other:?}"),
        }
    }

    fn field<'a>(row: &'a GraphValue, name: &str) -> &'a GraphValue {
        let GraphValue::Map(fields) = row else { panic!("row is not a map: {row:?}") };
        &fields.iter().find(|(key, _)| key == name).unwrap_or_else(|| panic!("no {name} in {row:?}")).1
    }

    #[test]
    fn inserts_of_one_table_are_one_unwind_statement_with_marks_and_one_recompute() {
        let reservations = table("reservations", &["id", "guest_id", "note"]);
        let inserts = (0..3)
            .map(|i| {
                let id = i.to_string();
                (reservations.clone(), ChangeOp::Insert { new: row(&[Some(&id), Some("7"), Some("n")]) })
            })
            .collect();
        let encoded = encode(&[transaction(0x100, inserts)]);
        let kinds: Vec<&str> = encoded.statements.iter().map(|s| s.cypher.split(' ').nth(4).unwrap_or("")).collect();
        // mark before, upsert, mark after, recompute, stub check.
        assert_eq!(encoded.statements.len(), 5, "{kinds:?}");
        let upsert = &encoded.statements[1];
        assert!(
            upsert.cypher.starts_with("UNWIND $rows AS row MERGE (n:`Reservation` {`id`: row.k0})"),
            "{}",
            upsert.cypher
        );
        assert!(upsert.cypher.contains("n.`pgfanout_version` < row.v"), "writes are guarded by version");
        let rows = rows_of(upsert);
        assert_eq!(rows.len(), 3);
        assert_eq!(field(&rows[2], "k0"), &GraphValue::Int(2));
        assert_eq!(field(&rows[2], "v"), &GraphValue::String("0000000000000100.00000002".into()));
        assert_eq!(field(&rows[2], "f0"), &GraphValue::Int(7), "the foreign key's target key");
        assert_eq!(field(&rows[2], "s0"), &GraphValue::Bool(true));
        assert!(encoded.statements[0].cypher.contains("SET source:`PgfanoutDirty_BOOKED_IN`"));
        assert_eq!(encoded.statements[0].params, encoded.statements[2].params, "marks before and after the writes");
        assert_eq!(
            rows_of(&encoded.statements[0])[2],
            GraphValue::Map(vec![("k0".into(), GraphValue::Int(2))]),
            "marks carry the key only, not the row's properties"
        );
        let recompute = &encoded.statements[3].cypher;
        assert!(recompute.contains("count(DISTINCT r) AS derived_count"), "{recompute}");
        assert!(recompute.contains("d.`count` = derived_count, d.`reservations` = derived_0"), "{recompute}");
        assert!(!recompute.contains("+ 1"), "counts are recomputed, never incremented");
        assert_eq!(
            encoded.indexes,
            vec![
                IndexSpec::Node { label: "Reservation".into(), property: "id".into() },
                IndexSpec::Node { label: "User".into(), property: "id".into() },
            ]
        );
    }

    #[test]
    fn a_row_changed_twice_starts_a_second_round_in_order() {
        let reservations = table("reservations", &["id", "guest_id", "note"]);
        let encoded = encode(&[transaction(
            0x200,
            vec![
                (reservations.clone(), ChangeOp::Insert { new: row(&[Some("1"), Some("7"), None]) }),
                (reservations.clone(), ChangeOp::Insert { new: row(&[Some("2"), Some("7"), None]) }),
                (reservations.clone(), ChangeOp::Delete { old: row(&[Some("1"), None, None]) }),
            ],
        )]);
        let writes: Vec<&Statement> = encoded
            .statements
            .iter()
            .filter(|s| s.cypher.contains("MERGE (n:") || s.cypher.contains("DETACH"))
            .collect();
        assert_eq!(writes.len(), 2);
        assert_eq!(rows_of(writes[0]).len(), 2, "both inserts in the first round");
        assert!(writes[1].cypher.contains("DETACH DELETE n"), "the delete comes after, in a round of its own");
        assert_eq!(field(&rows_of(writes[1])[0], "k0"), &GraphValue::Int(1));
        assert_eq!(encoded.statements.iter().filter(|s| s.cypher.contains("REMOVE source:")).count(), 1);
    }

    #[test]
    fn unchanged_toast_values_are_not_written_and_keep_their_relationship() {
        let reservations = table("reservations", &["id", "guest_id", "note"]);
        let encoded = encode(&[transaction(
            0x300,
            vec![(
                reservations,
                ChangeOp::Update { old: None, new: row(&[Some("1"), Some("<toast>"), Some("<toast>")]) },
            )],
        )]);
        let upsert = encoded.statements.iter().find(|s| s.cypher.contains("MERGE (n:")).unwrap();
        let row = &rows_of(upsert)[0];
        assert_eq!(field(row, "p"), &GraphValue::Map(vec![("id".into(), GraphValue::Int(1))]));
        assert_eq!(field(row, "s0"), &GraphValue::Bool(false), "the relationship is left alone");
        assert!(upsert.cypher.contains("WHERE row.s0 AND (row.f0 IS NULL OR t0.`id` <> row.f0)"), "{}", upsert.cypher);
    }

    #[test]
    fn join_rows_become_relationships_and_a_null_endpoint_removes_one() {
        let favorites = table("favorites", &["id", "user_id", "property_id"]);
        let encoded = encode(&[transaction(
            0x400,
            vec![
                (favorites.clone(), ChangeOp::Insert { new: row(&[Some("1"), Some("7"), Some("9")]) }),
                (favorites, ChangeOp::Insert { new: row(&[Some("2"), Some("7"), None]) }),
            ],
        )]);
        // Per kind, stub marks then the writes; the stub check ends the batch.
        assert_eq!(encoded.statements.len(), 5);
        let delete = &encoded.statements[1];
        assert!(delete.cypher.starts_with("UNWIND $rows AS row MATCH ()-[rel:`FAVORITE` {`id`: row.k0}]->()"));
        assert_eq!(field(&rows_of(delete)[0], "k0"), &GraphValue::Int(2));
        let upsert = &encoded.statements[3];
        assert!(upsert.cypher.contains("MERGE (a)-[rel:`FAVORITE` {`id`: row.k0}]->(b)"), "{}", upsert.cypher);
        assert!(upsert.cypher.contains("properties(old)"), "a moved relationship keeps its properties");
        assert_eq!(field(&rows_of(upsert)[0], "a"), &GraphValue::Int(7));
        assert_eq!(field(&rows_of(upsert)[0], "b"), &GraphValue::Int(9));
        assert!(encoded
            .indexes
            .contains(&IndexSpec::Relationship { rel_type: "FAVORITE".into(), property: "id".into() }));
    }

    #[test]
    fn truncate_marks_everything_then_deletes_the_label() {
        let reservations = table("reservations", &["id", "guest_id", "note"]);
        let encoded = encode(&[transaction(0x500, vec![(reservations, ChangeOp::Truncate)])]);
        let texts: Vec<&str> = encoded.statements.iter().map(|s| s.cypher.as_str()).collect();
        assert_eq!(texts.len(), 5, "{texts:?}");
        assert!(texts[0].starts_with("MATCH (r:`Reservation`) MATCH (source:User)"), "{}", texts[0]);
        assert!(texts[1].ends_with("SET t:`PgfanoutStubCheck`"), "stubs it leaves are checked: {}", texts[1]);
        assert_eq!(texts[2], "MATCH (n:`Reservation`) DETACH DELETE n");
        assert!(texts[3].starts_with("MATCH (source:`PgfanoutDirty_BOOKED_IN`)"));
        assert!(texts[4].ends_with("AND NOT (n)--() DELETE n"), "{}", texts[4]);
    }

    #[test]
    fn a_key_change_deletes_the_old_node_and_writes_the_new_one() {
        let reservations = table("reservations", &["id", "guest_id", "note"]);
        let encoded = encode(&[transaction(
            0x600,
            vec![(
                reservations,
                ChangeOp::Update { old: Some(row(&[Some("1"), None, None])), new: row(&[Some("5"), Some("7"), None]) },
            )],
        )]);
        let delete = encoded.statements.iter().find(|s| s.cypher.contains("DETACH DELETE")).unwrap();
        let upsert = encoded.statements.iter().find(|s| s.cypher.contains("MERGE (n:")).unwrap();
        assert_eq!(field(&rows_of(delete)[0], "k0"), &GraphValue::Int(1));
        assert_eq!(field(&rows_of(upsert)[0], "k0"), &GraphValue::Int(5));
    }

    #[test]
    fn a_key_change_leaving_a_toast_value_out_takes_it_from_the_old_node_unless_the_old_row_has_it() {
        let reservations = table("reservations", &["id", "guest_id", "note"]);
        let moved = |old: Row| {
            encode(&[transaction(
                0x680,
                vec![(
                    reservations.clone(),
                    ChangeOp::Update { old: Some(old), new: row(&[Some("5"), Some("7"), Some("<toast>")]) },
                )],
            )])
        };
        let encoded = moved(row(&[Some("1"), None, None]));
        let writes: Vec<&Statement> = encoded
            .statements
            .iter()
            .filter(|s| s.cypher.contains("MERGE (n:") || s.cypher.contains("DETACH"))
            .collect();
        assert_eq!(writes.len(), 2, "{writes:#?}");
        let upsert = writes[0];
        assert!(
            upsert.cypher.starts_with(
                "UNWIND $rows AS row OPTIONAL MATCH (o:`Reservation` {`id`: row.ok0}) \
                 WHERE o.`pgfanout_version` IS NULL OR o.`pgfanout_version` < row.v WITH row, o MERGE (n:`Reservation` {`id`: row.k0}) \
                 WITH n, row, o WHERE n.`pgfanout_version` IS NULL OR n.`pgfanout_version` < row.v \
                 SET n.`note` = coalesce(o.`note`, n.`note`) SET n += row.p"
            ),
            "the new node takes the value from the old one first: {}",
            upsert.cypher
        );
        let fields = &rows_of(upsert)[0];
        assert_eq!((field(fields, "k0"), field(fields, "ok0")), (&GraphValue::Int(5), &GraphValue::Int(1)));
        assert!(writes[1].cypher.contains("DETACH DELETE n"), "then the old node goes, in the next round");
        assert_eq!(field(&rows_of(writes[1])[0], "k0"), &GraphValue::Int(1));

        let encoded = moved(row(&[Some("1"), Some("7"), Some("long")]));
        let upsert = encoded.statements.iter().find(|s| s.cypher.contains("MERGE (n:")).unwrap();
        assert!(!upsert.cypher.contains("OPTIONAL MATCH (o:"), "a whole old row has the value: {}", upsert.cypher);
    }

    #[test]
    fn a_join_row_key_change_leaving_a_toast_value_out_takes_it_from_the_old_relationship() {
        let favorites = table("favorites", &["id", "user_id", "property_id", "note"]);
        let encoded = encode(&[transaction(
            0x690,
            vec![(
                favorites,
                ChangeOp::Update {
                    old: Some(row(&[Some("1"), None, None, None])),
                    new: row(&[Some("2"), Some("7"), Some("9"), Some("<toast>")]),
                },
            )],
        )]);
        let upsert = encoded.statements.iter().position(|s| s.cypher.contains("MERGE (a)-[rel:")).unwrap();
        let text = &encoded.statements[upsert].cypher;
        assert!(text.starts_with("UNWIND $rows AS row OPTIONAL MATCH ()-[o:`FAVORITE` {`id`: row.ok0}]->()"), "{text}");
        assert!(text.contains("SET rel.`note` = coalesce(o.`note`, rel.`note`) SET rel += row.p"), "{text}");
        let delete = encoded.statements.iter().position(|s| s.cypher.contains("DELETE rel")).unwrap();
        assert!(upsert < delete, "the old relationship goes after the new one took the value");
        assert_eq!(field(&rows_of(&encoded.statements[delete])[0], "k0"), &GraphValue::Int(1));
    }

    #[test]
    fn the_checkpoint_label_is_quoted_in_statements_and_kept_as_is_for_its_index() {
        let mut config: GraphSinkConfig = toml::from_str(CONFIG).unwrap();
        config.checkpoint_label = "Check`point`".into();
        let encoder = GraphEncoder::new(&config);
        assert_eq!(encoder.load_checkpoint().cypher, "MATCH (c:`Check``point``` {sink: $sink}) RETURN c.lsn");
        assert!(encoder.store_checkpoint(Lsn(1)).cypher.starts_with("MERGE (c:`Check``point``` {sink: $sink})"));
        assert_eq!(
            encoder.checkpoint_index(),
            IndexSpec::Node { label: "Check`point`".into(), property: "sink".into() }
        );
    }

    #[test]
    fn a_delete_after_an_upsert_that_merges_its_node_waits_for_the_next_round() {
        let users =
            Arc::new(TableSchema { table: TableName::new("public", "users"), ..(*table("u", &["id"])).clone() });
        let mut config: GraphSinkConfig = toml::from_str(CONFIG).unwrap();
        config.tables.push(toml::from_str("source = \"public.users\"\nlabel = \"User\"").unwrap());
        let encoder = GraphEncoder::new(&config);
        let reservations = table("reservations", &["id", "guest_id", "note"]);
        let transactions = [transaction(
            0x800,
            vec![
                (reservations, ChangeOp::Insert { new: row(&[Some("1"), Some("7"), None]) }),
                (users, ChangeOp::Delete { old: row(&[Some("7")]) }),
            ],
        )];
        let refs: Vec<ChangeRef<'_>> =
            transactions[0].changes.iter().map(|change| ChangeRef { transaction: &transactions[0], change }).collect();
        let texts: Vec<String> = encoder.encode(&refs).unwrap().statements.into_iter().map(|s| s.cypher).collect();
        let upsert = texts.iter().position(|text| text.contains("MERGE (n:`Reservation`")).unwrap();
        let delete = texts.iter().position(|text| text.contains("MATCH (n:`User`") && text.contains("DELETE")).unwrap();
        assert!(upsert < delete, "the stream's order: {texts:#?}");
        assert_eq!(
            encoder.touched_nodes(refs[0].change)[1],
            encoder.touched_nodes(refs[1].change)[0],
            "the reservation and the user share the user's node (and so a lane)"
        );
    }

    #[test]
    fn falkordb_finds_keys_through_wrapped_lookup_properties() {
        let mut config: GraphSinkConfig = toml::from_str(CONFIG).unwrap();
        config.transport = crate::config::Transport::Falkordb;
        let encoder = GraphEncoder::new(&config);
        let mut schema = (*table("reservations", &["id", "guest_id", "note"])).clone();
        schema.columns[0].type_oid = Oid(25);
        let transactions = [transaction(
            0x900,
            vec![(Arc::new(schema), ChangeOp::Insert { new: row(&[Some(" tzä"), Some("7"), None]) })],
        )];
        let refs: Vec<ChangeRef<'_>> =
            transactions[0].changes.iter().map(|change| ChangeRef { transaction: &transactions[0], change }).collect();
        let encoded = encoder.encode(&refs).unwrap();
        let upsert = encoded.statements.iter().find(|s| s.cypher.contains("MERGE (n:")).unwrap();
        assert!(upsert.cypher.contains("MERGE (n:`Reservation` {`pgfanout_key_id`: row.q0})"), "{}", upsert.cypher);
        assert!(upsert.cypher.contains("n.`id` = row.k0"), "the key property itself is written as it is");
        assert!(
            upsert.cypher.contains("MERGE (t:`User` {`pgfanout_key_id`: x.g0}) ON CREATE SET"),
            "{}",
            upsert.cypher
        );
        let row = &rows_of(upsert)[0];
        assert_eq!(field(row, "k0"), &GraphValue::String(" tzä".into()));
        assert_eq!(field(row, "q0"), &GraphValue::String("\u{E000} tzä\u{E000}".into()));
        assert_eq!(field(row, "g0"), &GraphValue::Int(7), "only strings are wrapped");
        assert!(encoded
            .indexes
            .contains(&IndexSpec::Node { label: "Reservation".into(), property: "pgfanout_key_id".into() }));
    }

    #[test]
    fn rows_without_a_key_are_refused() {
        let mut schema = (*table("reservations", &["id", "guest_id", "note"])).clone();
        schema.columns.iter_mut().for_each(|column| column.is_key = false);
        let transactions = [transaction(
            0x700,
            vec![(Arc::new(schema), ChangeOp::Insert { new: row(&[Some("1"), Some("2"), None]) })],
        )];
        let refs: Vec<ChangeRef<'_>> =
            transactions[0].changes.iter().map(|change| ChangeRef { transaction: &transactions[0], change }).collect();
        let err = encoder().encode(&refs).unwrap_err();
        assert!(err.to_string().contains("no primary key"), "{err}");
        assert!(!err.is_retriable());
    }
}
