//! Reading the graph back for `verify` (see [`pgfanout_core::readback`]).
//!
//! The comparison runs in the store: one statement per chunk sends the
//! rows an insert of each PostgreSQL row would write (the encoder's own
//! `$rows`, [`GraphEncoder::read_rows`](crate::encode::GraphEncoder)) and
//! answers, per row, whether its node (or join relationship) exists and
//! which of its mapped properties and relationships differ. Values never
//! travel back, so no type is lost on the way (FalkorDB's replies carry
//! lists and booleans as text); Cypher's `=` compares them as stored.
//!
//! - Node tables: the node found by key (a stub, which only relationships
//!   made, counts as absent); every mapped column as a property (NULL:
//!   absent); per foreign key, the relationships of its type between the
//!   node and nodes of the target label: exactly one, to the target with
//!   the row's key, or none when the column is NULL. A relationship
//!   removed, added or moved behind pgfanout's back shows as the column
//!   `relationship TYPE` of the row that owns it.
//! - Join tables: the relationship found by key between nodes of the two
//!   labels, its properties, and its endpoints (the column `endpoints`).
//! - Extra rows: nodes of the label that are not stubs, and relationships
//!   of the join's type, paged by internal id; their key properties as
//!   text (integers and strings give PostgreSQL's text exactly).
//!
//! - `[[derived]]` relationships ([`ReadBack::derive_across`]), once every
//!   table of the sink verified equal: per rule, one statement recomputes
//!   the pattern's matches over the stored graph (whose nodes and
//!   relationships were just found equal to PostgreSQL's rows, so this is
//!   what PostgreSQL's rows make) and compares each `(source, target)` with
//!   the stored relationships of the type between them: none (missing),
//!   more than one, a different count or collected list (compared as sets:
//!   `collect(DISTINCT …)` has no order); a second statement finds stored
//!   relationships of the type the pattern does not make (extra). `--repair`
//!   recomputes the rule for the differing source nodes with the statement
//!   a batch ends with.
//!
//! Not compared: properties other applications add to nodes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use async_trait::async_trait;
use pgfanout_core::readback::{
    key_row, Derivation, DerivedDifference, DerivedMismatch, KeyPage, ReadBack, StoredColumns,
};
use pgfanout_core::{Row, Sink, SinkError, TableName, TableSchema};

use crate::config::{DerivedConfig, Direction};
use crate::encode::{ident, ReadRows, ReadRule, Statement, STUB_PROPERTY};
use crate::error::GraphSinkError;
use crate::sink::GraphSink;
use crate::value::GraphValue;

/// Nodes or relationships one page of [`ReadBack::scan_keys`] lists.
const SCAN_PAGE: usize = 2000;

/// What the store holds where a value differs (compared in the store; the
/// stored value is not read).
const DIFFERS: &str = "(differs in the store)";

/// Separates the parts of a composite key in a scanned line.
const KEY_SEPARATOR: &str = "\u{1f}";

impl GraphSink {
    fn read_error(table: &TableSchema, reason: impl Into<String>) -> GraphSinkError {
        GraphSinkError::Mapping { table: table.table.to_string(), reason: reason.into() }
    }

    /// What an insert of each row writes, normalised: mapped properties,
    /// `relationship TYPE` per foreign key (the target's key), `endpoints`
    /// of a join row. `None` for a join row that writes no relationship.
    fn expected_columns(&self, table: &TableSchema, read: &ReadRows<'_>) -> Vec<Option<StoredColumns>> {
        read.rows
            .iter()
            .map(|fields| {
                let field = |name: &str| field(fields, name);
                let mut columns = StoredColumns::new();
                if let Some(GraphValue::Map(properties)) = field("p") {
                    for (name, value) in properties {
                        if *value != GraphValue::Null && table.position(name).is_some() {
                            columns.insert(name.clone(), comparable(value));
                        }
                    }
                }
                match &read.rule {
                    ReadRule::Node { foreign_keys, .. } => {
                        for (position, fk) in foreign_keys.iter().enumerate() {
                            if let Some(target) = field(&format!("f{position}")).filter(|v| **v != GraphValue::Null) {
                                columns.insert(relationship_column(&fk.rel_type), comparable(target));
                            }
                        }
                    }
                    ReadRule::Join(_) => match (field("a"), field("b")) {
                        (Some(from), Some(to)) => {
                            columns
                                .insert("endpoints".to_owned(), format!("{} -> {}", comparable(from), comparable(to)));
                        }
                        _ => return None,
                    },
                }
                Some(columns)
            })
            .collect()
    }

    /// The statement comparing `read`'s rows in the store: one line per
    /// stored match, `<row index>|-` when absent, else `<row index>|+`
    /// followed by `p<column position>,` per differing property and
    /// `r<foreign key position>,` (or `e,` for a join's endpoints) per
    /// differing relationship.
    fn compare_statement(&self, table: &TableSchema, read: &ReadRows<'_>) -> Statement {
        let keys = self.encoder().key_match(&read.key_names);
        let stub = ident(STUB_PROPERTY);
        let property_checks = |variable: &str| {
            let mut checks = String::new();
            for (position, column) in table.columns.iter().enumerate() {
                let name = ident(&column.name);
                let _ = write!(
                    checks,
                    " + CASE WHEN coalesce({variable}.{name} = row.p.{name}, \
                     {variable}.{name} IS NULL AND row.p.{name} IS NULL) THEN '' ELSE 'p{position},' END"
                );
            }
            checks
        };
        let mut cypher = String::from("UNWIND range(0, size($rows) - 1) AS i WITH i, $rows[i] AS row ");
        match &read.rule {
            ReadRule::Node { label, foreign_keys } => {
                let _ = write!(cypher, "OPTIONAL MATCH (n:{} {{{keys}}}) ", ident(label));
                let mut carried = String::new();
                let mut relationship_checks = String::new();
                for (position, fk) in foreign_keys.iter().enumerate() {
                    let (left, right) = match fk.direction {
                        Direction::Out => ("-", "->"),
                        Direction::In => ("<-", "-"),
                    };
                    let _ = write!(
                        cypher,
                        "WITH i, n{carried} OPTIONAL MATCH (n){left}[r{position}:{rel}]{right}(t{position}:{to}) \
                         WITH i, n{carried}, count(r{position}) AS all{position}, \
                         count(CASE WHEN t{position}.{to_key} = $rows[i].f{position} THEN 1 END) AS right{position} ",
                        rel = ident(&fk.rel_type),
                        to = ident(&fk.to),
                        to_key = ident(&fk.to_key),
                    );
                    let _ = write!(carried, ", all{position}, right{position}");
                    let _ = write!(
                        relationship_checks,
                        " + CASE WHEN all{position} = right{position} AND right{position} = \
                         CASE WHEN row.f{position} IS NULL THEN 0 ELSE 1 END THEN '' ELSE 'r{position},' END"
                    );
                }
                let _ = write!(
                    cypher,
                    "WITH i, n{carried}, $rows[i] AS row \
                     RETURN toString(i) + '|' + CASE WHEN n IS NULL OR n.{stub} = true THEN '-' \
                     ELSE '+'{properties}{relationship_checks} END",
                    properties = property_checks("n"),
                );
            }
            ReadRule::Join(join) => {
                let _ = write!(
                    cypher,
                    "OPTIONAL MATCH (a:{from})-[rel:{rel} {{{keys}}}]->(b:{to}) \
                     RETURN toString(i) + '|' + CASE WHEN rel IS NULL THEN '-' ELSE '+'{properties} + \
                     CASE WHEN coalesce(a.{from_key} = row.a AND b.{to_key} = row.b, false) THEN '' ELSE 'e,' END END",
                    from = ident(&join.from.label),
                    to = ident(&join.to.label),
                    rel = ident(&join.rel_type),
                    from_key = ident(&join.from.key),
                    to_key = ident(&join.to.key),
                    properties = property_checks("rel"),
                );
            }
        }
        Statement { cypher, params: vec![("rows".into(), GraphValue::List(read.rows.clone()))] }
    }

    async fn fetch_rows(
        &self,
        table: &Arc<TableSchema>,
        rows: &[Row],
    ) -> Result<Vec<Option<StoredColumns>>, GraphSinkError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let read = self.encoder().read_rows(table, rows)?;
        if read.rows.len() != rows.len() {
            return Err(Self::read_error(table, "an insert wrote other than one row (a bug in verify)"));
        }
        let expected = self.expected_columns(table, &read);
        let lines = self.query_column(&self.compare_statement(table, &read)).await?;
        // Several lines for one row: several nodes or relationships share its key.
        let mut answers: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for line in lines.into_iter().flatten() {
            let Some((index, answer)) = line.split_once('|') else { continue };
            let Ok(index) = index.parse::<usize>() else { continue };
            answers.entry(index).or_default().push(answer.to_owned());
        }
        let mut found = Vec::with_capacity(rows.len());
        for (index, expected) in expected.into_iter().enumerate() {
            let present: Vec<&String> = answers
                .get(&index)
                .map(|lines| lines.iter().filter(|a| a.starts_with('+')).collect())
                .unwrap_or_default();
            if present.is_empty() {
                found.push(None);
                continue;
            }
            // What the store holds: the expected columns, the differing ones marked.
            let mut stored = expected.unwrap_or_default();
            for answer in &present {
                for mark in answer[1..].split(',').filter(|mark| !mark.is_empty()) {
                    let name = match (mark.split_at(1), &read.rule) {
                        (("p", position), _) => position
                            .parse::<usize>()
                            .ok()
                            .and_then(|p| table.columns.get(p))
                            .map(|column| column.name.clone()),
                        (("r", position), ReadRule::Node { foreign_keys, .. }) => position
                            .parse::<usize>()
                            .ok()
                            .and_then(|p| foreign_keys.get(p))
                            .map(|fk| relationship_column(&fk.rel_type)),
                        (("e", _), _) => Some("endpoints".to_owned()),
                        _ => None,
                    };
                    if let Some(name) = name {
                        stored.insert(name, DIFFERS.to_owned());
                    }
                }
            }
            if present.len() > 1 {
                stored.insert("(stored more than once)".to_owned(), present.len().to_string());
            }
            found.push(Some(stored));
        }
        Ok(found)
    }

    /// A page of the keys stored for `table`: nodes of its label that are not
    /// stubs, or relationships of its join type, after internal id `cursor`.
    async fn scan_page(&self, table: &Arc<TableSchema>, cursor: Option<String>) -> Result<KeyPage, GraphSinkError> {
        let read = self.encoder().read_rows(table, &[])?;
        let after: i64 = cursor.as_deref().and_then(|c| c.parse().ok()).unwrap_or(-1);
        let key_text = |variable: &str| {
            read.key_names
                .iter()
                .map(|name| format!("coalesce(toString({variable}.{}), '')", ident(name)))
                .collect::<Vec<_>>()
                .join(" + $separator + ")
        };
        let cypher = match &read.rule {
            ReadRule::Node { label, .. } => format!(
                "MATCH (n:{label}) WHERE id(n) > $after AND n.{stub} IS NULL WITH n ORDER BY id(n) LIMIT {SCAN_PAGE} \
                 RETURN toString(id(n)) + '|' + {keys}",
                label = ident(label),
                stub = ident(STUB_PROPERTY),
                keys = key_text("n"),
            ),
            ReadRule::Join(join) => format!(
                "MATCH (:{from})-[r:{rel}]->(:{to}) WHERE id(r) > $after WITH r ORDER BY id(r) LIMIT {SCAN_PAGE} \
                 RETURN toString(id(r)) + '|' + {keys}",
                from = ident(&join.from.label),
                to = ident(&join.to.label),
                rel = ident(&join.rel_type),
                keys = key_text("r"),
            ),
        };
        let statement = Statement {
            cypher,
            params: vec![
                ("after".into(), GraphValue::Int(after)),
                ("separator".into(), GraphValue::String(KEY_SEPARATOR.into())),
            ],
        };
        let lines = self.query_column(&statement).await?;
        let mut page = KeyPage::default();
        let mut last = None;
        let count = lines.len();
        for line in lines.into_iter().flatten() {
            let Some((id, key)) = line.split_once('|') else { continue };
            last = id.parse::<i64>().ok().or(last);
            let texts: Vec<String> = key.split(KEY_SEPARATOR).map(str::to_owned).collect();
            if texts.len() != read.key_names.len() || texts.iter().any(String::is_empty) {
                continue;
            }
            // Key properties are named like the key columns.
            let mut by_name: BTreeMap<&str, String> = read.key_names.iter().map(String::as_str).zip(texts).collect();
            let ordered: Option<Vec<String>> =
                table.key_positions().map(|p| by_name.remove(table.columns[p].name.as_str())).collect();
            match ordered {
                Some(texts) => page.keys.push(key_row(table, &texts)),
                None => tracing::warn!(
                    sink = Sink::name(self),
                    table = %table.table,
                    "the graph's key is not the table's key; its stored nodes are not checked for being extra"
                ),
            }
        }
        if count == SCAN_PAGE {
            page.next = last.map(|id| id.to_string());
        }
        Ok(page)
    }
}

fn field<'a>(fields: &'a GraphValue, name: &str) -> Option<&'a GraphValue> {
    match fields {
        GraphValue::Map(fields) => fields.iter().find(|(field, _)| field == name).map(|(_, value)| value),
        _ => None,
    }
}

fn relationship_column(rel_type: &str) -> String {
    format!("relationship {rel_type}")
}

fn comparable(value: &GraphValue) -> String {
    format!("{value:?}")
}

#[async_trait]
impl ReadBack for GraphSink {
    fn expected(&self, table: &Arc<TableSchema>, row: &Row) -> Result<StoredColumns, SinkError> {
        let name = Sink::name(self);
        let read = self
            .encoder()
            .read_rows(table, std::slice::from_ref(row))
            .map_err(|err| err.into_sink_error(name, format!("mapping a row of {}", table.table)))?;
        // A join row without both endpoints writes nothing: it expects no relationship,
        // which `verify` cannot say here; it is compared as holding no properties.
        Ok(self.expected_columns(table, &read).into_iter().next().flatten().unwrap_or_default())
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

    fn derive_across(&self, tables: &[Arc<TableSchema>]) -> Option<Box<dyn Derivation + '_>> {
        let fed_by = |on: &BTreeMap<String, String>| {
            tables.iter().any(|table| on.keys().any(|source| TableName::parse(source) == table.table))
        };
        let rules: Vec<usize> = self
            .encoder()
            .derived_rules()
            .enumerate()
            .filter(|(_, rule)| fed_by(&rule.on))
            .map(|(index, _)| index)
            .collect();
        if rules.is_empty() {
            return None;
        }
        // How reports name a node: its label and key properties.
        let mut node_keys = Vec::new();
        for table in tables {
            if let Ok(ReadRows { rule: ReadRule::Node { label, .. }, key_names, .. }) =
                self.encoder().read_rows(table, &[])
            {
                node_keys.push((label.to_owned(), key_names));
            }
        }
        Some(Box::new(DerivedCheck { sink: self, rules, node_keys, sources: BTreeMap::new() }))
    }
}

/// The `[[derived]]` rules a verify compares (see the module docs).
struct DerivedCheck<'a> {
    sink: &'a GraphSink,
    /// Indexes of the rules (config order).
    rules: Vec<usize>,
    /// Label → key property names, for naming nodes in reports.
    node_keys: Vec<(String, Vec<String>)>,
    /// The internal id of the source node of each reported mismatch, by
    /// (holder, group): what a repair recomputes.
    sources: BTreeMap<(String, String), i64>,
}

/// Marks of a derived comparison's answer (`+` then these, or `-`).
const MARK_DUPLICATE: &str = "n";
const MARK_COUNT: &str = "c";
const MARK_EXTRA: &str = "x";

impl DerivedCheck<'_> {
    /// A Cypher expression naming node `variable`: `Label key=value, …`
    /// for the sink's labels, `node <internal id>` otherwise.
    fn node_name(&self, variable: &str) -> String {
        let mut cases = String::from("CASE");
        for (label, key_names) in &self.node_keys {
            let key = key_names
                .iter()
                .map(|name| format!("'{name}=' + coalesce(toString({variable}.{}), '')", ident(name)))
                .collect::<Vec<_>>()
                .join(" + ', ' + ");
            let label_text = label.replace('\\', "\\\\").replace('\'', "\\'");
            let _ = write!(cases, " WHEN '{label_text}' IN labels({variable}) THEN '{label_text} ' + {key}");
        }
        let _ = write!(cases, " ELSE 'node ' + toString(id({variable})) END");
        cases
    }

    /// The statements comparing rule `index`: (recomputed against stored,
    /// stored the pattern does not make). Each answers lines
    /// `<source id>|<source>|<target>|<answer>`.
    fn compare_statements(&self, rule: &DerivedConfig) -> (Statement, Statement) {
        let rel = ident(&rule.rel_type);
        let names = format!(
            "toString(id(source)) + '|' + {} + '|' + {} + '|'",
            self.node_name("source"),
            self.node_name("target")
        );
        let mut recomputed = format!(
            "MATCH {pattern} WITH source, target, count(DISTINCT {count}) AS expected_count",
            pattern = rule.pattern,
            count = rule.count
        );
        let mut carried = String::from("expected_count");
        let mut list_checks = String::new();
        for (position, (property, expression)) in rule.collect.iter().enumerate() {
            let _ = write!(recomputed, ", collect(DISTINCT {expression}) AS expected_{position}");
            let _ = write!(carried, ", expected_{position}");
            let property = ident(property);
            let _ = write!(
                list_checks,
                " + CASE WHEN coalesce(size(d.{property}) = size(expected_{position}) AND \
                 all(x IN expected_{position} WHERE x IN d.{property}), false) THEN '' ELSE 'l{position},' END"
            );
        }
        let _ = write!(
            recomputed,
            " OPTIONAL MATCH (source)-[stored:{rel}]->(target) \
             WITH source, target, {carried}, collect(stored) AS all_stored \
             WITH source, target, {carried}, size(all_stored) AS stored_count, head(all_stored) AS d \
             WITH source, target, CASE WHEN stored_count = 0 THEN '-' ELSE '+' \
             + CASE WHEN stored_count > 1 THEN '{MARK_DUPLICATE},' ELSE '' END \
             + CASE WHEN coalesce(d.{count_property} = expected_count, false) THEN '' ELSE '{MARK_COUNT},' END\
             {list_checks} END AS answer \
             WHERE answer <> '+' RETURN {names} + answer",
            count_property = ident(&rule.count_property),
        );
        let extra = format!(
            "MATCH (source)-[:{rel}]->(target) WITH DISTINCT source, target \
             OPTIONAL MATCH {pattern} WITH source, target, count({count}) AS matches WHERE matches = 0 \
             RETURN {names} + '{MARK_EXTRA}'",
            pattern = rule.pattern,
            count = rule.count,
        );
        (Statement { cypher: recomputed, params: Vec::new() }, Statement { cypher: extra, params: Vec::new() })
    }

    async fn compare_rule(&mut self, rule: &DerivedConfig) -> Result<Vec<DerivedMismatch>, GraphSinkError> {
        let holder = format!("derived {}", rule.rel_type);
        let (recomputed, extra) = self.compare_statements(rule);
        let mut lines = self.sink.query_column(&recomputed).await?;
        lines.extend(self.sink.query_column(&extra).await?);
        let mut mismatches = Vec::new();
        for line in lines.into_iter().flatten() {
            let mut parts = line.splitn(4, '|');
            let (Some(id), Some(source), Some(target), Some(answer)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(id) = id.parse::<i64>() else { continue };
            let difference = match answer {
                "-" => DerivedDifference::Missing,
                MARK_EXTRA => DerivedDifference::Extra,
                marks => DerivedDifference::Fields(
                    marks
                        .trim_start_matches('+')
                        .split(',')
                        .filter_map(|mark| match mark {
                            MARK_DUPLICATE => Some("(stored more than once)".to_owned()),
                            MARK_COUNT => Some(rule.count_property.clone()),
                            list => list
                                .strip_prefix('l')
                                .and_then(|position| position.parse::<usize>().ok())
                                .and_then(|position| rule.collect.keys().nth(position).cloned()),
                        })
                        .collect(),
                ),
            };
            let group = format!("{source} -> {target}");
            self.sources.insert((holder.clone(), group.clone()), id);
            mismatches.push(DerivedMismatch { holder: holder.clone(), group, difference });
        }
        mismatches.sort_by(|a, b| a.group.cmp(&b.group));
        Ok(mismatches)
    }
}

#[async_trait]
impl Derivation for DerivedCheck<'_> {
    fn add(&mut self, rows: &[Row]) -> Result<(), SinkError> {
        // Recomputed in the store, over the verified rows.
        let _ = rows;
        Ok(())
    }

    async fn compare(&mut self) -> Result<Vec<DerivedMismatch>, SinkError> {
        let sink = self.sink;
        let rules: Vec<DerivedConfig> =
            self.rules.iter().filter_map(|&index| sink.encoder().derived_rules().nth(index).cloned()).collect();
        self.sources.clear();
        let mut mismatches = Vec::new();
        for rule in rules {
            let found = self.compare_rule(&rule).await.map_err(|err| {
                err.into_sink_error(Sink::name(sink), format!("comparing derived relationships {}", rule.rel_type))
            })?;
            mismatches.extend(found);
        }
        Ok(mismatches)
    }

    async fn repair(
        &mut self,
        mismatches: &[DerivedMismatch],
        version: pgfanout_core::Version,
    ) -> Result<(), SinkError> {
        // Derived relationships carry no version: they are recomputed from
        // the graph as it is, which the stream's later batches do again.
        let _ = version;
        let sink = self.sink;
        for (index, rule) in sink.encoder().derived_rules().enumerate() {
            let holder = format!("derived {}", rule.rel_type);
            let ids: Vec<i64> = mismatches
                .iter()
                .filter(|mismatch| mismatch.holder == holder)
                .filter_map(|mismatch| self.sources.get(&(holder.clone(), mismatch.group.clone())).copied())
                .collect::<std::collections::BTreeSet<i64>>()
                .into_iter()
                .collect();
            if ids.is_empty() {
                continue;
            }
            let statements = sink.encoder().recompute_sources(index, ids);
            sink.run_statements(&statements).await.map_err(|err| {
                err.into_sink_error(Sink::name(sink), format!("recomputing derived relationships {}", rule.rel_type))
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::config::GraphSinkConfig;

    fn sink(transport: &str) -> GraphSink {
        let config: GraphSinkConfig = toml::from_str(&format!(
            r#"
name = "graph"
transport = "{transport}"
url = "{url}"
[[table]]
source = "public.reservations"
label = "Reservation"
relationships = [{{ column = "guest_id", type = "BOOKED_BY", to = "User" }}]
"#,
            url = if transport == "bolt" { "bolt://127.0.0.1:7687" } else { "redis://127.0.0.1:6379" },
        ))
        .unwrap();
        config.validate().unwrap();
        GraphSink::new(config).unwrap()
    }

    fn reservations() -> Arc<TableSchema> {
        crate::test_support::table("reservations", &["id", "guest_id", "status"], "status")
    }

    use crate::test_support::row;

    #[test]
    fn expected_rows_name_properties_and_the_foreign_key_target() {
        let sink = sink("bolt");
        let table = reservations();
        let expected = sink.expected(&table, &row(&[Some("3"), Some("7"), Some("paid")])).unwrap();
        assert_eq!(
            expected.keys().map(String::as_str).collect::<Vec<_>>(),
            ["guest_id", "id", "relationship BOOKED_BY", "status"]
        );
        assert_eq!(expected["relationship BOOKED_BY"], comparable(&GraphValue::Int(7)));
        let without_guest = sink.expected(&table, &row(&[Some("3"), None, Some("paid")])).unwrap();
        assert!(!without_guest.contains_key("relationship BOOKED_BY"), "a NULL foreign key expects no relationship");
    }

    #[test]
    fn the_comparison_checks_every_column_and_relationship_in_the_store() {
        for (transport, key) in [("bolt", "`id`: row.k0"), ("falkordb", "`pgfanout_key_id`: row.q0")] {
            let sink = sink(transport);
            let table = reservations();
            let read = sink.encoder().read_rows(&table, &[row(&[Some("3"), Some("7"), Some("paid")])]).unwrap();
            let statement = sink.compare_statement(&table, &read);
            assert!(statement.cypher.contains(&format!("OPTIONAL MATCH (n:`Reservation` {{{key}}})")), "{statement:?}");
            for column in 0..3 {
                assert!(statement.cypher.contains(&format!("'p{column},'")), "column {column}: {}", statement.cypher);
            }
            assert!(statement.cypher.contains("(n)-[r0:`BOOKED_BY`]->(t0:`User`)"), "{}", statement.cypher);
            assert!(statement.cypher.contains("'r0,'"), "{}", statement.cypher);
        }
    }
}
