//! Golden captures: pgoutput streams recorded from a real PostgreSQL 15 with `pg_recvlogical`
//! (see `golden/record.sh` and `golden/captures.txt`), decoded here without a server.
//!
//! Each capture is decoded completely — every byte consumed, a `\n` after every message — and
//! checked for what its scenario is about. OIDs, xids, LSNs and times change whenever the
//! captures are re-recorded, so the checks compare them with each other (a Truncate's OIDs
//! with the Relation messages of the same names, a Stream Commit's xid with its Stream Start),
//! never with literal values.

use std::collections::BTreeSet;
use std::path::PathBuf;

use bytes::Bytes;
use pgoutput::capture::{CaptureReader, CapturedMessage};
use pgoutput::{
    Decoder, Encoder, Insert, OldTuple, PgOutputMessage, Relation, ReplicaIdentity, TupleColumn, TupleData, Xid,
};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// One line of `captures.txt`.
#[derive(Debug)]
struct Entry {
    name: String,
    sql: String,
    start_options: String,
}

impl Entry {
    /// The value of a pgoutput option passed with `-o NAME=VALUE`.
    fn option(&self, name: &str) -> Option<&str> {
        self.start_options.split_whitespace().find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
    }

    fn decoder(&self) -> Decoder {
        let version = self.option("proto_version").and_then(|v| v.parse().ok());
        let version = version.unwrap_or_else(|| panic!("{}: no proto_version in captures.txt", self.name));
        Decoder::new(version).with_parallel_streaming(self.option("streaming") == Some("parallel"))
    }
}

fn manifest() -> Vec<Entry> {
    let text = std::fs::read_to_string(golden_dir().join("captures.txt")).unwrap();
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        .map(|line| {
            let fields: Vec<&str> = line.split('|').map(str::trim).collect();
            assert_eq!(fields.len(), 6, "captures.txt line has 6 fields: {line}");
            Entry { name: fields[0].to_owned(), sql: fields[1].to_owned(), start_options: fields[5].to_owned() }
        })
        .collect()
}

fn entry(name: &str) -> Entry {
    manifest().into_iter().find(|e| e.name == name).unwrap_or_else(|| panic!("{name} is not in captures.txt"))
}

/// Every message of a capture, checking that the whole file was consumed.
fn read_capture(name: &str) -> Vec<CapturedMessage> {
    let entry = entry(name);
    let path = golden_dir().join(format!("{name}.bin"));
    let bytes = Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
    let mut reader = CaptureReader::new(entry.decoder(), bytes.clone());
    let messages: Vec<CapturedMessage> =
        reader.by_ref().collect::<Result<_, _>>().unwrap_or_else(|e| panic!("{name}: {e} ({:?})", e));
    assert_eq!(reader.offset(), bytes.len(), "{name}: every byte consumed");
    assert!(!reader.decoder().in_stream_block(), "{name}: ends outside a stream block");
    assert!(!messages.is_empty(), "{name}: has messages");
    messages
}

fn messages(name: &str) -> Vec<PgOutputMessage> {
    read_capture(name).into_iter().map(|m| m.message).collect()
}

fn relation<'a>(messages: &'a [PgOutputMessage], name: &str) -> &'a Relation {
    messages
        .iter()
        .find_map(|m| match m {
            PgOutputMessage::Relation(r) if r.name == name => Some(r),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Relation message for {name}"))
}

/// The column of `tuple` named `column` in `relation`.
fn col<'a>(relation: &Relation, tuple: &'a TupleData, column: &str) -> &'a TupleColumn {
    let index = relation.columns.iter().position(|c| c.name == column).unwrap_or_else(|| panic!("no column {column}"));
    &tuple.columns[index]
}

fn text(value: &str) -> TupleColumn {
    TupleColumn::Text(Bytes::copy_from_slice(value.as_bytes()))
}

fn texts(values: &[Option<&str>]) -> TupleData {
    TupleData { columns: values.iter().map(|v| v.map_or(TupleColumn::Null, text)).collect() }
}

fn inserts<'a>(messages: &'a [PgOutputMessage], relation: &Relation) -> Vec<&'a Insert> {
    messages
        .iter()
        .filter_map(|m| match m {
            PgOutputMessage::Insert(i) if i.relation == relation.oid => Some(i),
            _ => None,
        })
        .collect()
}

fn tags(messages: &[PgOutputMessage]) -> String {
    messages.iter().map(|m| m.tag() as char).collect()
}

/// Checks Begin/Commit pairing and returns the messages between each pair.
fn transactions(messages: &[PgOutputMessage]) -> Vec<&[PgOutputMessage]> {
    let mut result = Vec::new();
    let mut open: Option<(usize, &pgoutput::Begin)> = None;
    let mut last_end = None;
    for (index, message) in messages.iter().enumerate() {
        match message {
            PgOutputMessage::Begin(begin) => {
                assert!(open.is_none(), "Begin inside a transaction at {index}");
                open = Some((index, begin));
            }
            PgOutputMessage::Commit(commit) => {
                let (start, begin) = open.take().unwrap_or_else(|| panic!("Commit without Begin at {index}"));
                assert_eq!(begin.final_lsn, commit.commit_lsn, "Begin.final_lsn is the commit record's LSN");
                assert_eq!(begin.commit_time, commit.commit_time);
                assert!(commit.end_lsn > commit.commit_lsn);
                assert!(last_end < Some(commit.end_lsn), "commit end LSNs increase");
                last_end = Some(commit.end_lsn);
                result.push(&messages[start + 1..index]);
            }
            _ => {}
        }
    }
    assert!(open.is_none(), "unfinished transaction");
    result
}

#[test]
fn manifest_and_directory_agree() {
    let listed: BTreeSet<String> = manifest().iter().map(|e| e.name.clone()).collect();
    let mut on_disk = BTreeSet::new();
    for file in std::fs::read_dir(golden_dir()).unwrap() {
        let name = file.unwrap().file_name().into_string().unwrap();
        if let Some(stem) = name.strip_suffix(".bin") {
            on_disk.insert(stem.to_owned());
        }
    }
    assert_eq!(listed, on_disk, "every capture is listed in captures.txt and recorded");
    for entry in manifest() {
        let sql = std::fs::read_to_string(golden_dir().join(&entry.sql)).unwrap();
        assert!(sql.lines().any(|l| l == "-- golden:capture"), "{}: marker line", entry.sql);
        assert!(golden_dir().join(format!("{}.jsonl", entry.name)).exists(), "{}: decoded form", entry.name);
    }
}

#[test]
fn every_capture_decodes_completely_and_re_encodes_to_the_same_bytes() {
    for entry in manifest() {
        let mut encoder = Encoder::matching(&entry.decoder());
        for captured in read_capture(&entry.name) {
            let encoded = encoder
                .encode(&captured.message)
                .unwrap_or_else(|e| panic!("{} message {}: {e}", entry.name, captured.index));
            assert_eq!(encoded, captured.payload, "{} message {}: PostgreSQL's bytes", entry.name, captured.index);
        }
    }
}

#[test]
fn basic_inserts_updates_and_deletes() {
    let messages = messages("basic");
    let customers = relation(&messages, "customers");
    assert_eq!(customers.namespace, "public");
    assert_eq!(customers.replica_identity, ReplicaIdentity::Default);
    let names: Vec<&str> = customers.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "name", "email", "score", "active"]);
    let keys: Vec<bool> = customers.columns.iter().map(|c| c.is_key).collect();
    assert_eq!(keys, [true, false, false, false, false], "the primary key is the identity");

    let transactions = transactions(&messages);
    let bodies: Vec<String> = transactions.iter().map(|t| tags(t)).collect();
    assert_eq!(bodies, ["RI", "II", "U", "U", "D", "IUD"], "one transaction per statement, then one with three");

    let PgOutputMessage::Insert(bo) = &transactions[1][0] else { unreachable!() };
    let PgOutputMessage::Insert(cy) = &transactions[1][1] else { unreachable!() };
    assert_eq!(bo.new_tuple, texts(&[Some("2"), Some("bo"), None, None, Some("f")]));
    assert_eq!(col(customers, &cy.new_tuple, "email"), &text(""), "an empty string is not NULL");

    let PgOutputMessage::Update(non_key) = &transactions[2][0] else { unreachable!() };
    assert_eq!(non_key.old_tuple, None, "no old image when the key is unchanged");
    assert_eq!(col(customers, &non_key.new_tuple, "score"), &text("15"));

    let PgOutputMessage::Update(key_change) = &transactions[3][0] else { unreachable!() };
    assert_eq!(key_change.old_tuple, Some(OldTuple::Key(texts(&[Some("2"), None, None, None, None]))));
    assert_eq!(col(customers, &key_change.new_tuple, "id"), &text("20"));

    let PgOutputMessage::Delete(delete) = &transactions[4][0] else { unreachable!() };
    assert_eq!(delete.old_tuple, OldTuple::Key(texts(&[Some("3"), None, None, None, None])));
    assert!(messages.iter().all(|m| !matches!(m, PgOutputMessage::Insert(i) if i.xid.is_some())));
}

#[test]
fn toast_unchanged_columns() {
    let messages = messages("toast");
    let documents = relation(&messages, "documents");
    let full = relation(&messages, "documents_full");
    assert_eq!(full.replica_identity, ReplicaIdentity::Full);
    assert!(full.columns.iter().all(|c| c.is_key), "with FULL every column is flagged as key");

    let updates: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            PgOutputMessage::Update(u) => Some(u),
            _ => None,
        })
        .collect();
    assert_eq!(updates.len(), 3);
    let [retitle, rewrite, retitle_full] = [updates[0], updates[1], updates[2]];
    assert_eq!(retitle.relation, documents.oid);
    assert_eq!(col(documents, &retitle.new_tuple, "title"), &text("first, retitled"));
    assert_eq!(col(documents, &retitle.new_tuple, "body"), &TupleColumn::UnchangedToast);
    assert_eq!(retitle.old_tuple, None);
    assert_eq!(col(documents, &rewrite.new_tuple, "body"), &text(&"abcdefghij".repeat(400)));

    let long_full = text(&"ABCDEFGHIJ".repeat(400));
    let Some(OldTuple::Full(old)) = &retitle_full.old_tuple else { panic!("FULL sends the old row") };
    assert_eq!(col(full, old, "body"), &long_full, "the old row carries the TOASTed value");
    assert_eq!(col(full, &retitle_full.new_tuple, "body"), &TupleColumn::UnchangedToast, "even under FULL");

    let insert = inserts(&messages, documents)[0];
    assert_eq!(col(documents, &insert.new_tuple, "body"), &text(&"0123456789".repeat(400)), "inserts are inlined");
    let delete = messages.iter().find_map(|m| match m {
        PgOutputMessage::Delete(d) => Some(d),
        _ => None,
    });
    let Some(OldTuple::Full(deleted)) = delete.map(|d| &d.old_tuple) else { panic!("FULL delete") };
    assert_eq!(col(full, deleted, "body"), &long_full);
    assert!(!messages.iter().any(|m| matches!(m, PgOutputMessage::Delete(d) if d.old_tuple.tuple().columns.contains(&TupleColumn::UnchangedToast))));
}

#[test]
fn replica_identity_settings() {
    let messages = messages("replica_identity");
    let default = relation(&messages, "ri_default");
    let full = relation(&messages, "ri_full");
    let index = relation(&messages, "ri_index");
    let nothing = relation(&messages, "ri_nothing");
    let key_flags = |r: &Relation| r.columns.iter().map(|c| c.is_key).collect::<Vec<_>>();
    assert_eq!((default.replica_identity, key_flags(default)), (ReplicaIdentity::Default, vec![true, false, false]));
    assert_eq!((full.replica_identity, key_flags(full)), (ReplicaIdentity::Full, vec![true, true, true]));
    assert_eq!((index.replica_identity, key_flags(index)), (ReplicaIdentity::Index, vec![false, true, false]));
    assert_eq!((nothing.replica_identity, key_flags(nothing)), (ReplicaIdentity::Nothing, vec![false, false, false]));

    let old_images = |relation: &Relation| -> Vec<Option<OldTuple>> {
        messages
            .iter()
            .filter_map(|m| match m {
                PgOutputMessage::Update(u) if u.relation == relation.oid => Some(u.old_tuple.clone()),
                PgOutputMessage::Delete(d) if d.relation == relation.oid => Some(Some(d.old_tuple.clone())),
                _ => None,
            })
            .collect()
    };
    // DEFAULT: nothing for a non-key update, the old key when the key changes, the key on delete.
    assert_eq!(
        old_images(default),
        [
            None,
            Some(OldTuple::Key(texts(&[Some("1"), None, None]))),
            Some(OldTuple::Key(texts(&[Some("2"), None, None])))
        ]
    );
    // FULL: the whole old row every time.
    assert_eq!(
        old_images(full),
        [
            Some(OldTuple::Full(texts(&[Some("1"), Some("f1"), Some("x")]))),
            Some(OldTuple::Full(texts(&[Some("2"), Some("f2"), Some("x")])))
        ]
    );
    // USING INDEX: keyed on `code`; changing the primary key alone sends no old image.
    assert_eq!(
        old_images(index),
        [
            None,
            None,
            Some(OldTuple::Key(texts(&[None, Some("i1"), None]))),
            Some(OldTuple::Key(texts(&[None, Some("i2"), None])))
        ]
    );
    // NOTHING: the UPDATE was rejected on the source, the DELETE was not published.
    assert_eq!(old_images(nothing), []);
    let ids: Vec<_> = inserts(&messages, nothing).iter().map(|i| i.new_tuple.columns[0].clone()).collect();
    assert_eq!(ids, [text("1"), text("2"), text("3")]);
}

#[test]
fn truncate_options_and_relations() {
    let messages = messages("truncate");
    let oid = |name| relation(&messages, name).oid;
    let truncates: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            PgOutputMessage::Truncate(t) => Some(t),
            _ => None,
        })
        .collect();
    let summary: Vec<_> = truncates
        .iter()
        .map(|t| (t.options.cascade, t.options.restart_identity, t.relations.iter().copied().collect::<BTreeSet<_>>()))
        .collect();
    let parent_child = BTreeSet::from([oid("parent"), oid("child")]);
    assert_eq!(
        summary,
        [
            (true, false, parent_child.clone()),
            (false, true, BTreeSet::from([oid("audit_a"), oid("audit_b")])),
            (true, true, parent_child),
        ]
    );
    assert!(truncates.iter().all(|t| t.relations.len() == 2 && t.xid.is_none()));
    // Each Truncate comes with the Relation messages of what it lists, inside its transaction.
    let bodies: Vec<String> = transactions(&messages).iter().map(|t| tags(t)).collect();
    assert_eq!(bodies, ["RI", "RI", "RI", "RI", "RRT", "RRT", "RI", "RRT"]);
}

#[test]
fn logical_messages() {
    let messages = messages("messages");
    let mut in_transaction = false;
    let mut seen = Vec::new();
    for message in &messages {
        match message {
            PgOutputMessage::Begin(_) => in_transaction = true,
            PgOutputMessage::Commit(_) => in_transaction = false,
            PgOutputMessage::Message(m) => {
                assert_eq!(m.transactional, in_transaction, "{}: transactional ones are inside", m.prefix);
                assert_eq!(m.xid, None);
                seen.push((m.transactional, m.prefix.as_str(), m.content.to_vec()));
            }
            _ => {}
        }
    }
    let expected: Vec<(bool, &str, Vec<u8>)> = vec![
        (false, "heartbeat", b"tick 1".to_vec()),
        (true, "audit", b"event 1 created".to_vec()),
        (true, "audit", b"alone".to_vec()),
        (false, "binary", vec![0x00, 0xff, 0x10]),
        (false, "empty", vec![]),
        // Delivered although its transaction rolled back; its transactional sibling is not.
        (false, "heartbeat", b"tick 2 (rolled back transaction)".to_vec()),
    ];
    assert_eq!(seen, expected);
    let bodies: Vec<String> = transactions(&messages).iter().map(|t| tags(t)).collect();
    assert_eq!(bodies, ["RIM", "M"], "a lone transactional message makes a transaction of its own");
    let events = relation(&messages, "events");
    assert_eq!(inserts(&messages, events).len(), 1, "the rolled-back insert is not sent");
}

#[test]
fn origin_message_follows_begin() {
    let messages = messages("origin");
    let bodies: Vec<String> = transactions(&messages).iter().map(|t| tags(t)).collect();
    assert_eq!(bodies, ["ORI", "I"]);
    let origin = messages.iter().find_map(|m| match m {
        PgOutputMessage::Origin(o) => Some(o),
        _ => None,
    });
    let origin = origin.expect("an Origin message");
    assert_eq!(origin.name, "golden_upstream");
    assert_eq!(origin.commit_lsn, "0/ABCDEF0".parse().unwrap(), "the LSN given to pg_replication_origin_xact_setup");
}

/// The stream blocks of a streamed transaction: (xid, first_segment, messages inside).
fn stream_blocks(messages: &[PgOutputMessage]) -> Vec<(Xid, bool, &[PgOutputMessage])> {
    let mut blocks = Vec::new();
    let mut open = None;
    for (index, message) in messages.iter().enumerate() {
        match message {
            PgOutputMessage::StreamStart(start) => open = Some((index, start)),
            PgOutputMessage::StreamStop => {
                let (begin, start) = open.take().expect("Stream Stop after a Stream Start");
                blocks.push((start.xid, start.first_segment, &messages[begin + 1..index]));
            }
            other => {
                let needs_xid = matches!(
                    other,
                    PgOutputMessage::Insert(_) | PgOutputMessage::Update(_) | PgOutputMessage::Relation(_)
                );
                if needs_xid && open.is_some() {
                    let xid = match other {
                        PgOutputMessage::Insert(i) => i.xid,
                        PgOutputMessage::Update(u) => u.xid,
                        PgOutputMessage::Relation(r) => r.xid,
                        _ => unreachable!(),
                    };
                    assert!(xid.is_some(), "changes inside a stream block carry an xid");
                }
            }
        }
    }
    blocks
}

fn change_xid(message: &PgOutputMessage) -> Option<Xid> {
    match message {
        PgOutputMessage::Insert(i) => i.xid,
        PgOutputMessage::Update(u) => u.xid,
        _ => None,
    }
}

#[test]
fn streamed_transaction_committed() {
    let messages = messages("stream_commit");
    let blocks = stream_blocks(&messages);
    assert!(blocks.len() >= 2, "more than 64kB streams in several blocks");
    let xid = blocks[0].0;
    assert!(blocks.iter().all(|(x, _, _)| *x == xid), "one streamed transaction");
    let firsts: Vec<bool> = blocks.iter().map(|(_, first, _)| *first).collect();
    assert!(firsts[0] && firsts[1..].iter().all(|f| !f), "only the first block is the first segment");

    let changes: Vec<&PgOutputMessage> =
        blocks.iter().flat_map(|(_, _, inside)| inside.iter()).filter(|m| change_xid(m).is_some()).collect();
    let insert_count = changes.iter().filter(|m| matches!(m, PgOutputMessage::Insert(_))).count();
    let update_count = changes.iter().filter(|m| matches!(m, PgOutputMessage::Update(_))).count();
    assert_eq!((insert_count, update_count), (700, 10));
    let xids: BTreeSet<u32> = changes.iter().filter_map(|m| change_xid(m)).map(|x| x.0).collect();
    assert_eq!(xids.len(), 2, "the top-level xid and the released subtransaction's");
    assert!(xids.contains(&xid.0));

    // The concurrent small transaction arrives between blocks, as a plain one.
    let transactions = transactions(&messages);
    assert_eq!(transactions.len(), 1);
    let PgOutputMessage::Insert(concurrent) = transactions[0].last().unwrap() else { panic!() };
    assert_eq!(concurrent.new_tuple.columns[1], text("concurrent"));
    assert_eq!(concurrent.xid, None);
    let first_stop = messages.iter().position(|m| matches!(m, PgOutputMessage::StreamStop)).unwrap();
    let begin = messages.iter().position(|m| matches!(m, PgOutputMessage::Begin(_))).unwrap();
    let last_start = messages.iter().rposition(|m| matches!(m, PgOutputMessage::StreamStart(_))).unwrap();
    assert!(first_stop < begin && begin < last_start, "interleaved between stream blocks");

    let PgOutputMessage::StreamCommit(commit) = messages.last().unwrap() else { panic!("ends with Stream Commit") };
    assert_eq!(commit.xid, xid);
    assert!(commit.end_lsn > commit.commit_lsn);
}

#[test]
fn streamed_transaction_aborted_with_a_subtransaction_abort() {
    let messages = messages("stream_abort");
    let blocks = stream_blocks(&messages);
    assert!(blocks.len() >= 2);
    let xid = blocks[0].0;
    let aborts: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            PgOutputMessage::StreamAbort(a) => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(aborts.len(), 2);
    let (sub_abort, top_abort) = (aborts[0], aborts[1]);
    assert_eq!(sub_abort.xid, xid);
    assert_ne!(sub_abort.subxid, xid, "ROLLBACK TO aborts the subtransaction only");
    assert_eq!((top_abort.xid, top_abort.subxid), (xid, xid), "ROLLBACK aborts the whole transaction");
    assert_eq!((sub_abort.abort_lsn, sub_abort.abort_time), (None, None), "v2 Stream Abort is short");

    // The streamed rows of the subtransaction carry its xid.
    for message in blocks.iter().flat_map(|(_, _, inside)| inside.iter()) {
        if let PgOutputMessage::Insert(insert) = message {
            let TupleColumn::Text(payload) = &insert.new_tuple.columns[1] else { panic!() };
            let in_subtransaction = payload.starts_with(b"doomed ");
            assert_eq!(insert.xid == Some(sub_abort.subxid), in_subtransaction, "{payload:?}");
        }
    }
    assert!(!messages.iter().any(|m| matches!(m, PgOutputMessage::StreamCommit(_))));
    let bodies: Vec<String> = transactions(&messages).iter().map(|t| tags(t)).collect();
    assert_eq!(bodies, ["RI"], "the committed transaction after the aborted one");
}

#[test]
fn two_phase_commit_and_rollback() {
    let messages = messages("two_phase");
    assert_eq!(tags(&messages), "bRUUPKbIPr");
    let PgOutputMessage::BeginPrepare(begin) = &messages[0] else { unreachable!() };
    let PgOutputMessage::Prepare(prepare) = &messages[4] else { unreachable!() };
    let PgOutputMessage::CommitPrepared(commit) = &messages[5] else { unreachable!() };
    assert_eq!(begin.gid, "golden_transfer");
    assert_eq!((prepare.gid.as_str(), prepare.xid), ("golden_transfer", begin.xid));
    assert_eq!((prepare.prepare_lsn, prepare.end_lsn), (begin.prepare_lsn, begin.end_lsn));
    assert_eq!((commit.gid.as_str(), commit.xid), ("golden_transfer", begin.xid));
    assert!(commit.end_lsn > prepare.end_lsn);
    let accounts = relation(&messages, "accounts");
    let PgOutputMessage::Update(debit) = &messages[2] else { unreachable!() };
    assert_eq!(col(accounts, &debit.new_tuple, "balance"), &text("90"));

    let PgOutputMessage::BeginPrepare(begin) = &messages[6] else { unreachable!() };
    let PgOutputMessage::Prepare(prepare) = &messages[8] else { unreachable!() };
    let PgOutputMessage::RollbackPrepared(rollback) = &messages[9] else { unreachable!() };
    assert_eq!(
        (begin.gid.as_str(), rollback.gid.as_str(), rollback.xid),
        ("golden_cancelled", "golden_cancelled", begin.xid)
    );
    assert_eq!(rollback.prepare_end_lsn, prepare.end_lsn);
    assert_eq!(rollback.prepare_time, prepare.prepare_time);
    assert!(rollback.rollback_end_lsn > rollback.prepare_end_lsn);
}

#[test]
fn streamed_prepared_transaction() {
    let messages = messages("stream_prepare");
    let blocks = stream_blocks(&messages);
    assert!(blocks.len() >= 2);
    let xid = blocks[0].0;
    let inserted = blocks.iter().flat_map(|(_, _, inside)| inside.iter()).filter(|m| change_xid(m) == Some(xid));
    assert_eq!(inserted.count(), 600);
    let n = messages.len();
    let PgOutputMessage::StreamPrepare(prepare) = &messages[n - 2] else { panic!("{:?}", messages[n - 2]) };
    let PgOutputMessage::CommitPrepared(commit) = &messages[n - 1] else { panic!("{:?}", messages[n - 1]) };
    assert_eq!((prepare.xid, prepare.gid.as_str()), (xid, "golden_big"));
    assert_eq!((commit.xid, commit.gid.as_str()), (xid, "golden_big"));
    assert!(commit.end_lsn > prepare.end_lsn);
}

/// The zoo's Type messages and rows, checked the same way for both captures.
fn type_zoo(name: &str) -> (Vec<PgOutputMessage>, Relation, Vec<TupleData>) {
    let messages = messages(name);
    let zoo = relation(&messages, "zoo").clone();
    let types: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            PgOutputMessage::Type(t) => Some(t),
            _ => None,
        })
        .collect();
    let type_of = |column: &str| zoo.columns.iter().find(|c| c.name == column).unwrap().type_oid;
    let announced = |column: &str| {
        let oid = type_of(column);
        let t = types.iter().find(|t| t.oid == oid).unwrap_or_else(|| panic!("no Type message for {column}"));
        (t.namespace.as_str(), t.name.as_str())
    };
    assert_eq!(announced("c_mood"), ("public", "mood"));
    assert_eq!(announced("c_mood_array"), ("public", "_mood"));
    assert_eq!(announced("c_positive"), ("pg_catalog", "int4"), "a domain is announced with its base type's name");
    assert_eq!(types.len(), 3, "built-in types are never announced");
    let mut rows: Vec<TupleData> = inserts(&messages, &zoo).into_iter().map(|i| i.new_tuple.clone()).collect();
    assert_eq!(rows.len(), 5);
    let updated = messages.iter().find_map(|m| match m {
        PgOutputMessage::Update(u) => Some(u.new_tuple.clone()),
        _ => None,
    });
    rows.push(updated.expect("one update"));
    for row in &rows {
        assert_eq!(row.columns.len(), zoo.columns.len());
    }
    (messages, zoo, rows)
}

#[test]
fn type_zoo_in_text_mode() {
    let (_, zoo, rows) = type_zoo("types_text");
    let value = |row: usize, column: &str| match col(&zoo, &rows[row], column) {
        TupleColumn::Text(bytes) => Some(std::str::from_utf8(bytes).unwrap().to_owned()),
        TupleColumn::Null => None,
        other => panic!("row {row} {column}: {other:?} in text mode"),
    };
    let expected = [
        (0, "c_numeric", "123.4500"),
        (0, "c_bpchar", "ab   "),
        (0, "c_bytea", "\\x0102ff"),
        (0, "c_time", "13:45:06.5"),
        (0, "c_timestamptz", "2024-03-01 13:45:06.1+00"),
        (0, "c_interval", "1 year 2 mons 3 days 04:05:06.789"),
        (0, "c_json", "{\"b\": 1,  \"a\": [1, 2]}"),
        (0, "c_jsonb", "{\"a\": [1, 2], \"b\": 1}"),
        (0, "c_inet", "10.0.0.1"),
        (0, "c_mood", "happy"),
        (0, "c_positive", "42"),
        (0, "c_text_array", "{\"a b\",\"x\\\"y\",\"\"}"),
        (0, "c_int4_matrix", "{{1,2},{3,4}}"),
        (1, "c_float4", "NaN"),
        (1, "c_float8", "-Infinity"),
        (1, "c_numeric", "NaN"),
        (1, "c_text", "quote ' backslash \\ tab \t newline \n unicode é😀"),
        (1, "c_date", "infinity"),
        (1, "c_timestamp", "-infinity"),
        (1, "c_interval", "-1 days +02:00:00"),
        (1, "c_int4_array", "{1,NULL,3}"),
        (1, "c_text_array", "{NULL,\"NULL\"}"),
        (1, "c_int4_matrix", "{{1,NULL},{NULL,4}}"),
        (2, "c_float8", "Infinity"),
        (2, "c_numeric", "Infinity"),
        (2, "c_date", "0044-03-15 BC"),
        (2, "c_int4_array", "[0:1]={7,8}"),
        (4, "c_float4", "-Infinity"),
        (4, "c_float8", "-0"),
        (4, "c_numeric", "-Infinity"),
        (5, "c_mood", "ok"),
    ];
    for (row, column, text) in expected {
        assert_eq!(value(row, column).as_deref(), Some(text), "row {row} {column}");
    }
    assert!(rows[3].columns[1..].iter().all(|c| *c == TupleColumn::Null), "row 4 is NULL but for its key");
}

#[test]
fn type_zoo_in_binary_mode() {
    let (_, zoo, rows) = type_zoo("types_binary");
    let (_, _, text_rows) = type_zoo("types_text");
    for (binary_row, text_row) in rows.iter().zip(&text_rows) {
        for (b, t) in binary_row.columns.iter().zip(&text_row.columns) {
            match (b, t) {
                (TupleColumn::Null, TupleColumn::Null) | (TupleColumn::Binary(_), TupleColumn::Text(_)) => {}
                other => panic!("binary and text captures disagree: {other:?}"),
            }
        }
    }
    let bytes = |row: usize, column: &str| match col(&zoo, &rows[row], column) {
        TupleColumn::Binary(bytes) => bytes.to_vec(),
        other => panic!("row {row} {column}: {other:?}"),
    };
    assert_eq!(bytes(0, "c_int4"), 123_456_i32.to_be_bytes());
    assert_eq!(bytes(0, "c_int8"), 1_234_567_890_123_i64.to_be_bytes());
    assert_eq!(bytes(0, "c_float4"), 1.5_f32.to_be_bytes());
    assert_eq!(bytes(0, "c_bool"), [1]);
    assert_eq!(bytes(0, "c_text"), b"hello");
    assert_eq!(bytes(0, "c_bytea"), [0x01, 0x02, 0xff]);
    assert_eq!(bytes(0, "c_mood"), b"happy", "an enum's binary form is its label");
    assert_eq!(bytes(0, "c_jsonb")[0], 1, "jsonb starts with its format version");
    assert_eq!(
        bytes(0, "c_uuid"),
        [0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a, 0x11]
    );
    // 2024-03-01 is 8826 days after 2000-01-01.
    assert_eq!(bytes(0, "c_date"), 8826_i32.to_be_bytes());
    assert!(f32::from_be_bytes(bytes(1, "c_float4").try_into().unwrap()).is_nan());
    assert_eq!(f64::from_be_bytes(bytes(1, "c_float8").try_into().unwrap()), f64::NEG_INFINITY);
    // Infinities are the extreme integers.
    assert_eq!(bytes(1, "c_date"), i32::MAX.to_be_bytes());
    assert_eq!(bytes(1, "c_timestamp"), i64::MIN.to_be_bytes());
    assert_eq!(bytes(1, "c_timestamptz"), i64::MAX.to_be_bytes());
    // numeric NaN: no digits, sign word 0xC000.
    assert_eq!(bytes(1, "c_numeric"), [0, 0, 0, 0, 0xc0, 0x00, 0, 0]);
    // int4[] with a NULL: one dimension, has-nulls flag set, element type int4 (23).
    let array = bytes(1, "c_int4_array");
    assert_eq!(array[..12], [0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 23]);
}
