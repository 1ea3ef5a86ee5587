//! `pgfanout inspect --archive`: the change archive as the pgoutput messages
//! that would carry it (Begin, Relation when a table's shape is first seen or
//! changes, the row changes, Commit), so that it prints exactly like a capture
//! (`--format json`) or becomes one (`--format raw`, protocol version 1).
//!
//! What the archive does not hold reads as its default: `type_modifier` is
//! -1, the commit flags 0, and a column's key flag is the key the sinks use
//! (the primary key under REPLICA IDENTITY FULL, where pgoutput flags every
//! column).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use pgfanout_archive::ArchiveReader;
use pgfanout_core::{ChangeOp, ColumnValue, Row, TableSchema};
use pgoutput::{
    Begin, Commit, Delete, Encoder, Insert, Lsn, Oid, OldTuple, PgOutputMessage, Relation, RelationColumn,
    ReplicaIdentity, Truncate, TruncateOptions, TupleColumn, TupleData, Update,
};

use super::Output;

/// Prints the archive in `dir` from the first transaction committed at or after `from`.
pub(super) fn inspect_archive(
    dir: &Path,
    from: Option<Lsn>,
    count: Option<u64>,
    output: &mut Output<impl Write>,
) -> anyhow::Result<()> {
    let mut reader = ArchiveReader::open(dir, Arc::default())
        .with_context(|| format!("cannot open the archive {}", dir.display()))?;
    if let Some(from) = from {
        reader.seek(from).with_context(|| format!("cannot read the archive {} from {from}", dir.display()))?;
    }
    let mut encoder = Encoder::new(1);
    let mut announced: HashMap<Oid, Arc<TableSchema>> = HashMap::new();
    let mut open: Option<Lsn> = None;
    let mut emit = |message: PgOutputMessage, output: &mut Output<_>| -> anyhow::Result<bool> {
        let payload = encoder.encode(&message).context("cannot encode an archived change as pgoutput")?;
        output.emit(&message, &payload, None).context("cannot write to stdout")?;
        Ok(count.is_some_and(|count| output.messages >= count))
    };
    while let Some(piece) = reader.next_piece().with_context(|| format!("cannot read the archive {}", dir.display()))? {
        let transaction = &piece.transaction;
        if open != Some(transaction.commit_lsn) {
            open = Some(transaction.commit_lsn);
            let begin =
                Begin { final_lsn: transaction.commit_lsn, commit_time: transaction.commit_time, xid: transaction.xid };
            if emit(PgOutputMessage::Begin(begin), output)? {
                return Ok(());
            }
        }
        for change in &transaction.changes {
            let table = &change.table;
            let known = announced.get(&table.oid).is_some_and(|known| same_shape(known, table));
            if !known {
                announced.insert(table.oid, table.clone());
                if emit(PgOutputMessage::Relation(relation(table)), output)? {
                    return Ok(());
                }
            }
            let relation = table.oid;
            let old = |row: &Row| match table.replica_identity {
                ReplicaIdentity::Full => OldTuple::Full(tuple(row)),
                _ => OldTuple::Key(tuple(row)),
            };
            let message = match &change.op {
                ChangeOp::Insert { new } => {
                    PgOutputMessage::Insert(Insert { xid: None, relation, new_tuple: tuple(new) })
                }
                ChangeOp::Update { old: old_row, new } => PgOutputMessage::Update(Update {
                    xid: None,
                    relation,
                    old_tuple: old_row.as_ref().map(old),
                    new_tuple: tuple(new),
                }),
                ChangeOp::Delete { old: old_row } => {
                    PgOutputMessage::Delete(Delete { xid: None, relation, old_tuple: old(old_row) })
                }
                ChangeOp::Truncate => PgOutputMessage::Truncate(Truncate {
                    xid: None,
                    options: TruncateOptions::default(),
                    relations: vec![relation],
                }),
            };
            if emit(message, output)? {
                return Ok(());
            }
        }
        if piece.ends_transaction {
            open = None;
            let commit = Commit {
                flags: 0,
                commit_lsn: transaction.commit_lsn,
                end_lsn: transaction.end_lsn,
                commit_time: transaction.commit_time,
            };
            if emit(PgOutputMessage::Commit(commit), output)? {
                return Ok(());
            }
        }
    }
    tracing::info!(archive = %dir.display(), messages = output.messages, "archive read");
    Ok(())
}

fn same_shape(a: &TableSchema, b: &TableSchema) -> bool {
    a.table == b.table && a.replica_identity == b.replica_identity && a.columns == b.columns
}

fn relation(table: &TableSchema) -> Relation {
    Relation {
        xid: None,
        oid: table.oid,
        namespace: table.table.schema.clone(),
        name: table.table.name.clone(),
        replica_identity: table.replica_identity,
        columns: table
            .columns
            .iter()
            .map(|column| RelationColumn {
                is_key: column.is_key,
                name: column.name.clone(),
                type_oid: column.type_oid,
                type_modifier: -1,
            })
            .collect(),
    }
}

fn tuple(row: &Row) -> TupleData {
    TupleData {
        columns: row
            .iter()
            .map(|value| match value {
                ColumnValue::Null => TupleColumn::Null,
                ColumnValue::UnchangedToast => TupleColumn::UnchangedToast,
                ColumnValue::Text(bytes) => TupleColumn::Text(bytes.clone()),
                ColumnValue::Binary(bytes) => TupleColumn::Binary(bytes.clone()),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use pgfanout_archive::{Archive, ArchiveOptions, FsyncPolicy, PieceHeader};
    use pgfanout_core::{Change, ColumnSchema, TableName};
    use pgoutput::capture::CaptureReader;
    use pgoutput::{Decoder, PgTimestamp, TypeRegistry, Xid};

    use super::super::Format;
    use super::*;

    fn archive_with_two_transactions(dir: &Path) {
        let table = Arc::new(TableSchema {
            oid: Oid(16_400),
            table: TableName::new("public", "account"),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                ColumnSchema { name: "id".into(), type_oid: Oid(23), is_key: true },
                ColumnSchema { name: "name".into(), type_oid: Oid(25), is_key: false },
            ],
            types: Arc::new(TypeRegistry::new()),
        });
        let text = |value: &'static str| ColumnValue::Text(Bytes::from_static(value.as_bytes()));
        let insert =
            Change { table: table.clone(), op: ChangeOp::Insert { new: vec![text("1"), text("ann")] }, ordinal: 0 };
        let delete = Change { table, op: ChangeOp::Delete { old: vec![text("1"), ColumnValue::Null] }, ordinal: 0 };
        let (mut archive, _) =
            Archive::open(dir, ArchiveOptions { fsync: FsyncPolicy::Os, ..Default::default() }).unwrap();
        for (lsn, change) in [(0x100, &insert), (0x200, &delete)] {
            let header = PieceHeader {
                commit_lsn: Lsn(lsn),
                end_lsn: Lsn(lsn + 0x30),
                commit_time: PgTimestamp(0),
                xid: Xid(lsn as u32),
                ends_transaction: true,
            };
            archive.append(header, &[change]).unwrap();
        }
    }

    fn printed(dir: &Path, from: Option<Lsn>, format: Format) -> Vec<u8> {
        let mut output = Output::new(Vec::new(), format);
        inspect_archive(dir, from, None, &mut output).unwrap();
        output.writer
    }

    #[test]
    fn the_archive_prints_as_capture_json_lines_from_any_commit() {
        let dir = tempfile::tempdir().unwrap();
        archive_with_two_transactions(dir.path());
        let json = String::from_utf8(printed(dir.path(), None, Format::Json)).unwrap();
        let types: Vec<String> = json
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["type"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(types, ["begin", "relation", "insert", "commit", "begin", "delete", "commit"]);
        assert!(json.contains(r#""table":"public.account""#), "{json}");
        assert!(json.contains(r#""end_lsn":"0/130""#), "{json}");

        let from_second = String::from_utf8(printed(dir.path(), Some(Lsn(0x101)), Format::Json)).unwrap();
        assert_eq!(from_second.lines().count(), 4, "begin, relation, delete, commit: {from_second}");
        assert!(from_second.lines().next().unwrap().contains(r#""final_lsn":"0/200""#));
    }

    #[test]
    fn the_raw_format_is_a_capture_that_decodes_back() {
        let dir = tempfile::tempdir().unwrap();
        archive_with_two_transactions(dir.path());
        let raw = printed(dir.path(), None, Format::Raw);
        let messages: Vec<PgOutputMessage> =
            CaptureReader::new(Decoder::new(1), Bytes::from(raw)).map(|item| item.unwrap().message).collect();
        assert_eq!(messages.len(), 7);
        assert!(matches!(&messages[2], PgOutputMessage::Insert(insert) if insert.relation == Oid(16_400)));
    }
}
