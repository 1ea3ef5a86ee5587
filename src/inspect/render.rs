//! The JSON form of decoded pgoutput messages, used by `pgfanout inspect`: one JSON object per
//! message, written on one line. This is the only place that decides how a message looks in
//! JSON.
//!
//! Conventions:
//! - every field of the message body is present, under the body's field name; fields that are
//!   absent on the wire (`xid` outside a stream block, `old_tuple` of most updates, the v4-only
//!   abort fields) are `null`;
//! - `"type"` names the message in snake case (`begin`, `stream_abort`, …);
//! - LSNs are PostgreSQL's `X/Y` text, timestamps RFC 3339 UTC with microseconds
//!   (`2024-01-02T03:04:05.000000Z`; the `infinity` sentinels as `"infinity"`/`"-infinity"`);
//! - tuple columns are objects: `{"null":true}`, `{"unchanged_toast":true}`, `{"text":"…"}`,
//!   `{"binary":"<hex>"}` (and `{"text_hex":"<hex>"}` for text output that is not UTF-8);
//! - logical message content is `{"text":"…"}` when it is UTF-8, else `{"binary":"<hex>"}`.
//!
//! The renderer keeps the last Relation message of each OID so that DML lines also say which
//! table (`"table"`) and column (`"name"`) they are about. Those two derived keys are left out
//! when no Relation was seen for the OID; every other key is always present.

use std::collections::HashMap;
use std::fmt;

use pgoutput::TypeRegistry;
use pgoutput::{
    Lsn, OldTuple, PgOutputMessage, PgTimestamp, Relation, RelationColumn, ReplicaIdentity, TupleColumn, TupleData,
};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::Serialize;

/// Renders messages as JSON lines, remembering Relation messages to name tables and columns.
#[derive(Debug, Default)]
pub struct Renderer {
    relations: HashMap<pgoutput::Oid, Relation>,
    /// Converts binary-format values to their text form (the `"value"` key).
    types: TypeRegistry,
}

/// Where a message was in the replication stream; added to the line in live mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalPosition {
    /// XLogData `walStart` (0 for Relation and Type messages).
    pub wal_start: Lsn,
    /// XLogData `walEnd`.
    pub wal_end: Lsn,
}

impl Renderer {
    /// A renderer that has seen no Relation yet.
    pub fn new() -> Self {
        Renderer::default()
    }

    /// Records what a message tells about the schema. Call it for every decoded message, in
    /// order, whether or not the message is rendered.
    pub fn observe(&mut self, message: &PgOutputMessage) {
        match message {
            PgOutputMessage::Relation(relation) => {
                self.relations.insert(relation.oid, relation.clone());
            }
            PgOutputMessage::Type(announced) => self.types.observe(announced),
            _ => {}
        }
    }

    /// Appends `message` as one JSON object (without a newline) to `out`. `position` adds
    /// `wal_start`/`wal_end` keys first.
    pub fn write_json(
        &self,
        message: &PgOutputMessage,
        position: Option<WalPosition>,
        out: &mut impl std::io::Write,
    ) -> serde_json::Result<()> {
        serde_json::to_writer(out, &MessageJson { message, position, relations: &self.relations, types: &self.types })
    }
}

struct MessageJson<'a> {
    message: &'a PgOutputMessage,
    position: Option<WalPosition>,
    relations: &'a HashMap<pgoutput::Oid, Relation>,
    types: &'a TypeRegistry,
}

impl Serialize for MessageJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if let Some(position) = self.position {
            map.serialize_entry("wal_start", &LsnJson(position.wal_start))?;
            map.serialize_entry("wal_end", &LsnJson(position.wal_end))?;
        }
        let table = |oid| self.relations.get(&oid);
        match self.message {
            PgOutputMessage::Begin(m) => {
                map.serialize_entry("type", "begin")?;
                map.serialize_entry("final_lsn", &LsnJson(m.final_lsn))?;
                map.serialize_entry("commit_time", &TimeJson(m.commit_time))?;
                map.serialize_entry("xid", &m.xid.0)?;
            }
            PgOutputMessage::Commit(m) => {
                map.serialize_entry("type", "commit")?;
                map.serialize_entry("flags", &m.flags)?;
                map.serialize_entry("commit_lsn", &LsnJson(m.commit_lsn))?;
                map.serialize_entry("end_lsn", &LsnJson(m.end_lsn))?;
                map.serialize_entry("commit_time", &TimeJson(m.commit_time))?;
            }
            PgOutputMessage::Origin(m) => {
                map.serialize_entry("type", "origin")?;
                map.serialize_entry("commit_lsn", &LsnJson(m.commit_lsn))?;
                map.serialize_entry("name", &m.name)?;
            }
            PgOutputMessage::Relation(m) => {
                map.serialize_entry("type", "relation")?;
                map.serialize_entry("xid", &m.xid.map(|x| x.0))?;
                map.serialize_entry("oid", &m.oid.0)?;
                map.serialize_entry("namespace", &m.namespace)?;
                map.serialize_entry("name", &m.name)?;
                map.serialize_entry("replica_identity", replica_identity_name(m.replica_identity))?;
                map.serialize_entry("columns", &RelationColumnsJson(&m.columns))?;
            }
            PgOutputMessage::Type(m) => {
                map.serialize_entry("type", "type")?;
                map.serialize_entry("xid", &m.xid.map(|x| x.0))?;
                map.serialize_entry("oid", &m.oid.0)?;
                map.serialize_entry("namespace", &m.namespace)?;
                map.serialize_entry("name", &m.name)?;
            }
            PgOutputMessage::Insert(m) => {
                let relation = table(m.relation);
                map.serialize_entry("type", "insert")?;
                map.serialize_entry("xid", &m.xid.map(|x| x.0))?;
                map.serialize_entry("relation", &m.relation.0)?;
                serialize_table(&mut map, relation)?;
                map.serialize_entry("new_tuple", &TupleJson { tuple: &m.new_tuple, relation, types: self.types })?;
            }
            PgOutputMessage::Update(m) => {
                let relation = table(m.relation);
                map.serialize_entry("type", "update")?;
                map.serialize_entry("xid", &m.xid.map(|x| x.0))?;
                map.serialize_entry("relation", &m.relation.0)?;
                serialize_table(&mut map, relation)?;
                map.serialize_entry(
                    "old_tuple",
                    &m.old_tuple.as_ref().map(|old| OldTupleJson { old, relation, types: self.types }),
                )?;
                map.serialize_entry("new_tuple", &TupleJson { tuple: &m.new_tuple, relation, types: self.types })?;
            }
            PgOutputMessage::Delete(m) => {
                let relation = table(m.relation);
                map.serialize_entry("type", "delete")?;
                map.serialize_entry("xid", &m.xid.map(|x| x.0))?;
                map.serialize_entry("relation", &m.relation.0)?;
                serialize_table(&mut map, relation)?;
                map.serialize_entry("old_tuple", &OldTupleJson { old: &m.old_tuple, relation, types: self.types })?;
            }
            PgOutputMessage::Truncate(m) => {
                map.serialize_entry("type", "truncate")?;
                map.serialize_entry("xid", &m.xid.map(|x| x.0))?;
                map.serialize_entry("cascade", &m.options.cascade)?;
                map.serialize_entry("restart_identity", &m.options.restart_identity)?;
                let oids: Vec<u32> = m.relations.iter().map(|oid| oid.0).collect();
                map.serialize_entry("relations", &oids)?;
            }
            PgOutputMessage::Message(m) => {
                map.serialize_entry("type", "message")?;
                map.serialize_entry("xid", &m.xid.map(|x| x.0))?;
                map.serialize_entry("transactional", &m.transactional)?;
                map.serialize_entry("lsn", &LsnJson(m.lsn))?;
                map.serialize_entry("prefix", &m.prefix)?;
                map.serialize_entry("content", &ContentJson(&m.content))?;
            }
            PgOutputMessage::StreamStart(m) => {
                map.serialize_entry("type", "stream_start")?;
                map.serialize_entry("xid", &m.xid.0)?;
                map.serialize_entry("first_segment", &m.first_segment)?;
            }
            PgOutputMessage::StreamStop => {
                map.serialize_entry("type", "stream_stop")?;
            }
            PgOutputMessage::StreamCommit(m) => {
                map.serialize_entry("type", "stream_commit")?;
                map.serialize_entry("xid", &m.xid.0)?;
                map.serialize_entry("flags", &m.flags)?;
                map.serialize_entry("commit_lsn", &LsnJson(m.commit_lsn))?;
                map.serialize_entry("end_lsn", &LsnJson(m.end_lsn))?;
                map.serialize_entry("commit_time", &TimeJson(m.commit_time))?;
            }
            PgOutputMessage::StreamAbort(m) => {
                map.serialize_entry("type", "stream_abort")?;
                map.serialize_entry("xid", &m.xid.0)?;
                map.serialize_entry("subxid", &m.subxid.0)?;
                map.serialize_entry("abort_lsn", &m.abort_lsn.map(LsnJson))?;
                map.serialize_entry("abort_time", &m.abort_time.map(TimeJson))?;
            }
            PgOutputMessage::BeginPrepare(m) => {
                map.serialize_entry("type", "begin_prepare")?;
                map.serialize_entry("prepare_lsn", &LsnJson(m.prepare_lsn))?;
                map.serialize_entry("end_lsn", &LsnJson(m.end_lsn))?;
                map.serialize_entry("prepare_time", &TimeJson(m.prepare_time))?;
                map.serialize_entry("xid", &m.xid.0)?;
                map.serialize_entry("gid", &m.gid)?;
            }
            PgOutputMessage::Prepare(m) => serialize_prepare(
                &mut map,
                "prepare",
                PrepareFields {
                    flags: m.flags,
                    lsn: m.prepare_lsn,
                    end: m.end_lsn,
                    time: m.prepare_time,
                    xid: m.xid.0,
                },
                &m.gid,
            )?,
            PgOutputMessage::CommitPrepared(m) => {
                map.serialize_entry("type", "commit_prepared")?;
                map.serialize_entry("flags", &m.flags)?;
                map.serialize_entry("commit_lsn", &LsnJson(m.commit_lsn))?;
                map.serialize_entry("end_lsn", &LsnJson(m.end_lsn))?;
                map.serialize_entry("commit_time", &TimeJson(m.commit_time))?;
                map.serialize_entry("xid", &m.xid.0)?;
                map.serialize_entry("gid", &m.gid)?;
            }
            PgOutputMessage::RollbackPrepared(m) => {
                map.serialize_entry("type", "rollback_prepared")?;
                map.serialize_entry("flags", &m.flags)?;
                map.serialize_entry("prepare_end_lsn", &LsnJson(m.prepare_end_lsn))?;
                map.serialize_entry("rollback_end_lsn", &LsnJson(m.rollback_end_lsn))?;
                map.serialize_entry("prepare_time", &TimeJson(m.prepare_time))?;
                map.serialize_entry("rollback_time", &TimeJson(m.rollback_time))?;
                map.serialize_entry("xid", &m.xid.0)?;
                map.serialize_entry("gid", &m.gid)?;
            }
            PgOutputMessage::StreamPrepare(m) => serialize_prepare(
                &mut map,
                "stream_prepare",
                PrepareFields {
                    flags: m.flags,
                    lsn: m.prepare_lsn,
                    end: m.end_lsn,
                    time: m.prepare_time,
                    xid: m.xid.0,
                },
                &m.gid,
            )?,
        }
        map.end()
    }
}

/// The fields Prepare and Stream Prepare share (they differ in tag only).
struct PrepareFields {
    flags: u8,
    lsn: Lsn,
    end: Lsn,
    time: PgTimestamp,
    xid: u32,
}

fn serialize_prepare<M: SerializeMap>(
    map: &mut M,
    kind: &str,
    fields: PrepareFields,
    gid: &str,
) -> Result<(), M::Error> {
    map.serialize_entry("type", kind)?;
    map.serialize_entry("flags", &fields.flags)?;
    map.serialize_entry("prepare_lsn", &LsnJson(fields.lsn))?;
    map.serialize_entry("end_lsn", &LsnJson(fields.end))?;
    map.serialize_entry("prepare_time", &TimeJson(fields.time))?;
    map.serialize_entry("xid", &fields.xid)?;
    map.serialize_entry("gid", gid)
}

fn serialize_table<M: SerializeMap>(map: &mut M, relation: Option<&Relation>) -> Result<(), M::Error> {
    match relation {
        Some(relation) => map.serialize_entry("table", &QualifiedName(relation)),
        None => Ok(()),
    }
}

fn replica_identity_name(identity: ReplicaIdentity) -> &'static str {
    match identity {
        ReplicaIdentity::Default => "default",
        ReplicaIdentity::Nothing => "nothing",
        ReplicaIdentity::Full => "full",
        ReplicaIdentity::Index => "index",
    }
}

/// `schema.table` of a Relation.
struct QualifiedName<'a>(&'a Relation);

impl Serialize for QualifiedName<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{}.{}", self.0.namespace, self.0.name))
    }
}

struct RelationColumnsJson<'a>(&'a [RelationColumn]);

impl Serialize for RelationColumnsJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for column in self.0 {
            seq.serialize_element(&RelationColumnJson(column))?;
        }
        seq.end()
    }
}

struct RelationColumnJson<'a>(&'a RelationColumn);

impl Serialize for RelationColumnJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("name", &self.0.name)?;
        map.serialize_entry("type_oid", &self.0.type_oid.0)?;
        map.serialize_entry("type_modifier", &self.0.type_modifier)?;
        map.serialize_entry("is_key", &self.0.is_key)?;
        map.end()
    }
}

struct OldTupleJson<'a> {
    old: &'a OldTuple,
    relation: Option<&'a Relation>,
    types: &'a TypeRegistry,
}

impl Serialize for OldTupleJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (kind, tuple) = match self.old {
            OldTuple::Key(tuple) => ("key", tuple),
            OldTuple::Full(tuple) => ("full", tuple),
        };
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("kind", kind)?;
        map.serialize_entry("columns", &TupleJson { tuple, relation: self.relation, types: self.types })?;
        map.end()
    }
}

struct TupleJson<'a> {
    tuple: &'a TupleData,
    relation: Option<&'a Relation>,
    types: &'a TypeRegistry,
}

impl Serialize for TupleJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.tuple.columns.len()))?;
        for (index, value) in self.tuple.columns.iter().enumerate() {
            // A tuple wider than its Relation (a corrupt stream) still renders, without names.
            let column = self.relation.and_then(|relation| relation.columns.get(index));
            seq.serialize_element(&ColumnJson { value, column, types: self.types })?;
        }
        seq.end()
    }
}

/// One tuple column. A binary-format value also gets `"value"`: its text form, converted
/// through the type registry, so binary captures are readable.
struct ColumnJson<'a> {
    value: &'a TupleColumn,
    column: Option<&'a RelationColumn>,
    types: &'a TypeRegistry,
}

impl Serialize for ColumnJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if let Some(column) = self.column {
            map.serialize_entry("name", &column.name)?;
        }
        match self.value {
            TupleColumn::Null => map.serialize_entry("null", &true)?,
            TupleColumn::UnchangedToast => map.serialize_entry("unchanged_toast", &true)?,
            TupleColumn::Text(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => map.serialize_entry("text", text)?,
                Err(_) => map.serialize_entry("text_hex", &HexJson(bytes))?,
            },
            TupleColumn::Binary(bytes) => {
                map.serialize_entry("binary", &HexJson(bytes))?;
                if let Some(column) = self.column {
                    match self.types.decode_binary(column.type_oid, bytes) {
                        Ok(value) => map.serialize_entry("value", &value.to_string())?,
                        Err(err) => map.serialize_entry("value_error", &err.to_string())?,
                    }
                }
            }
        }
        map.end()
    }
}

struct ContentJson<'a>(&'a [u8]);

impl Serialize for ContentJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        match std::str::from_utf8(self.0) {
            Ok(text) => map.serialize_entry("text", text)?,
            Err(_) => map.serialize_entry("binary", &HexJson(self.0))?,
        }
        map.end()
    }
}

/// Bytes as lower-case hex, written without an intermediate string.
struct HexJson<'a>(&'a [u8]);

impl Serialize for HexJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&Hex(self.0))
    }
}

/// Lower-case hex of a byte slice.
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        // Chunked so long values do not pay one formatter call per byte.
        let mut chunk = [0u8; 128];
        for bytes in self.0.chunks(chunk.len() / 2) {
            for (pair, byte) in chunk.chunks_exact_mut(2).zip(bytes) {
                pair[0] = DIGITS[usize::from(byte >> 4)];
                pair[1] = DIGITS[usize::from(byte & 0x0f)];
            }
            let text = std::str::from_utf8(&chunk[..bytes.len() * 2]).map_err(|_| fmt::Error)?;
            f.write_str(text)?;
        }
        Ok(())
    }
}

struct LsnJson(Lsn);

impl Serialize for LsnJson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

struct TimeJson(PgTimestamp);

impl Serialize for TimeJson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&Rfc3339(self.0))
    }
}

/// A `timestamptz` in RFC 3339, UTC, with microseconds: `2024-01-02T03:04:05.000006Z`.
///
/// PostgreSQL's `infinity`/`-infinity` sentinels (`i64::MAX`/`i64::MIN`) print as those words.
/// Years outside 0000–9999 (which RFC 3339 cannot write) use ISO 8601's expanded form with a
/// sign, e.g. `+12024-…` or `-0044-…` (astronomical numbering: 1 BC is year 0).
pub struct Rfc3339(pub PgTimestamp);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 .0 {
            i64::MAX => return f.write_str("infinity"),
            i64::MIN => return f.write_str("-infinity"),
            _ => {}
        }
        let unix_micros = i128::from(self.0 .0) + i128::from(PgTimestamp::UNIX_EPOCH_OFFSET_MICROS);
        let seconds = unix_micros.div_euclid(1_000_000);
        let micros = unix_micros.rem_euclid(1_000_000);
        let days = seconds.div_euclid(86_400);
        let second_of_day = seconds.rem_euclid(86_400);
        let (year, month, day) = civil_from_unix_days(days);
        if (0..=9999).contains(&year) {
            write!(f, "{year:04}")?;
        } else {
            write!(f, "{year:+05}")?;
        }
        write!(
            f,
            "-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            second_of_day / 3600,
            second_of_day / 60 % 60,
            second_of_day % 60
        )
    }
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01.
///
/// Works in 400-year eras (146 097 days each), counting years from March so that the leap day
/// is the last day of a year; then shifts January and February into the next civil year.
fn civil_from_unix_days(days: i128) -> (i128, u32, u32) {
    const DAYS_PER_ERA: i128 = 146_097;
    // 1970-01-01 is day 719 468 counted from 0000-03-01.
    let from_march_0000 = days + 719_468;
    let era = from_march_0000.div_euclid(DAYS_PER_ERA);
    let day_of_era = from_march_0000.rem_euclid(DAYS_PER_ERA);
    // Leap days inside the era: one every 4 years, except every 100, except the 400th.
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / (DAYS_PER_ERA - 1)) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months from March have lengths 31,30,31,30,31 repeating: (5 * day + 2) / 153 finds them.
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + i128::from(month <= 2);
    // Both are small by construction: month in 1..=12, day in 1..=31.
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use pgoutput::{Begin, Delete, Insert, LogicalMessage, Oid, StreamAbort, Truncate, TruncateOptions, Update, Xid};
    use serde_json::{json, Value};

    use super::*;

    fn render(renderer: &Renderer, message: &PgOutputMessage, position: Option<WalPosition>) -> Value {
        let mut out = Vec::new();
        renderer.write_json(message, position, &mut out).unwrap();
        assert!(!out.contains(&b'\n'), "one line per message");
        serde_json::from_slice(&out).unwrap()
    }

    fn users() -> Relation {
        let column = |name: &str, type_oid, is_key| RelationColumn {
            is_key,
            name: name.into(),
            type_oid: Oid(type_oid),
            type_modifier: -1,
        };
        Relation {
            xid: None,
            oid: Oid(16_384),
            namespace: "public".into(),
            name: "users".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![column("id", 23, true), column("bio", 25, false), column("avatar", 17, false)],
        }
    }

    fn time(text_unix_seconds: i64, micros: i64) -> PgTimestamp {
        PgTimestamp(text_unix_seconds * 1_000_000 + micros - PgTimestamp::UNIX_EPOCH_OFFSET_MICROS)
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let cases = [
            (PgTimestamp(0), "2000-01-01T00:00:00.000000Z"),
            (time(0, 0), "1970-01-01T00:00:00.000000Z"),
            (time(-1, 999_999), "1969-12-31T23:59:59.999999Z"),
            // 2024-02-29 12:34:56.000007 UTC, a leap day.
            (time(1_709_210_096, 7), "2024-02-29T12:34:56.000007Z"),
            (time(951_782_400, 0), "2000-02-29T00:00:00.000000Z"),
            (time(253_402_300_799, 0), "9999-12-31T23:59:59.000000Z"),
            (time(253_402_300_800, 0), "+10000-01-01T00:00:00.000000Z"),
            // 0001-01-01 minus one day is 1 BC (astronomical year 0), 0000-12-31.
            (time(-62_135_596_801, 0), "0000-12-31T23:59:59.000000Z"),
            (time(-62_198_755_200, 0), "-0001-01-01T00:00:00.000000Z"),
            (PgTimestamp(i64::MAX), "infinity"),
            (PgTimestamp(i64::MIN), "-infinity"),
            (PgTimestamp(i64::MAX - 1), "+294277-01-09T04:00:54.775806Z"),
        ];
        for (timestamp, expected) in cases {
            assert_eq!(Rfc3339(timestamp).to_string(), expected, "{timestamp:?}");
        }
    }

    #[test]
    fn dates_agree_with_a_day_by_day_walk() {
        // Walk four centuries (a whole era, leap rules included) one day at a time.
        let (mut year, mut month, mut day) = (1900_i128, 1_u32, 1_u32);
        let start = -25_567; // 1900-01-01
        for days in start..start + 146_097 {
            assert_eq!(civil_from_unix_days(days), (year, month, day), "day {days}");
            let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
            let month_len = match month {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            day += 1;
            if day > month_len {
                day = 1;
                month += 1;
                if month > 12 {
                    month = 1;
                    year += 1;
                }
            }
        }
    }

    #[test]
    fn hex_is_lower_case_and_chunk_safe() {
        assert_eq!(Hex(&[]).to_string(), "");
        assert_eq!(Hex(&[0x00, 0xff, 0x10]).to_string(), "00ff10");
        let long: Vec<u8> = (0..=255).collect();
        let expected: String = long.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(Hex(&long).to_string(), expected);
    }

    #[test]
    fn begin_renders_every_field() {
        let begin = PgOutputMessage::Begin(Begin {
            final_lsn: Lsn(0x16_B374_D848),
            commit_time: PgTimestamp(1_500),
            xid: Xid(742),
        });
        assert_eq!(
            render(&Renderer::new(), &begin, None),
            json!({"type": "begin", "final_lsn": "16/B374D848", "commit_time": "2000-01-01T00:00:00.001500Z", "xid": 742})
        );
        let position = WalPosition { wal_start: Lsn(0x10), wal_end: Lsn(0x20) };
        let line = render(&Renderer::new(), &begin, Some(position));
        assert_eq!(line["wal_start"], "0/10");
        assert_eq!(line["wal_end"], "0/20");
    }

    #[test]
    fn tuple_columns_are_named_after_the_last_relation() {
        let mut renderer = Renderer::new();
        let insert = PgOutputMessage::Insert(Insert {
            xid: Some(Xid(9)),
            relation: Oid(16_384),
            new_tuple: TupleData {
                columns: vec![
                    TupleColumn::Text(Bytes::from_static(b"1")),
                    TupleColumn::UnchangedToast,
                    TupleColumn::Binary(Bytes::from_static(&[0xca, 0xfe])),
                ],
            },
        });
        // Before any Relation: positional columns, no table.
        let unnamed = render(&renderer, &insert, None);
        assert_eq!(unnamed.get("table"), None);
        assert_eq!(unnamed["new_tuple"], json!([{"text": "1"}, {"unchanged_toast": true}, {"binary": "cafe"}]));

        let relation = PgOutputMessage::Relation(users());
        renderer.observe(&relation);
        assert_eq!(
            render(&renderer, &relation, None),
            json!({
                "type": "relation", "xid": null, "oid": 16384, "namespace": "public", "name": "users",
                "replica_identity": "default",
                "columns": [
                    {"name": "id", "type_oid": 23, "type_modifier": -1, "is_key": true},
                    {"name": "bio", "type_oid": 25, "type_modifier": -1, "is_key": false},
                    {"name": "avatar", "type_oid": 17, "type_modifier": -1, "is_key": false},
                ]
            })
        );
        assert_eq!(
            render(&renderer, &insert, None),
            json!({
                "type": "insert", "xid": 9, "relation": 16384, "table": "public.users",
                "new_tuple": [
                    {"name": "id", "text": "1"},
                    {"name": "bio", "unchanged_toast": true},
                    {"name": "avatar", "binary": "cafe", "value": "\\xcafe"},
                ]
            })
        );
    }

    #[test]
    fn old_tuples_say_their_kind() {
        let mut renderer = Renderer::new();
        renderer.observe(&PgOutputMessage::Relation(users()));
        let key = TupleData {
            columns: vec![TupleColumn::Text(Bytes::from_static(b"7")), TupleColumn::Null, TupleColumn::Null],
        };
        let update = PgOutputMessage::Update(Update {
            xid: None,
            relation: Oid(16_384),
            old_tuple: None,
            new_tuple: key.clone(),
        });
        assert_eq!(render(&renderer, &update, None)["old_tuple"], Value::Null);
        let delete =
            PgOutputMessage::Delete(Delete { xid: None, relation: Oid(16_384), old_tuple: OldTuple::Key(key) });
        assert_eq!(
            render(&renderer, &delete, None)["old_tuple"],
            json!({"kind": "key", "columns": [
                {"name": "id", "text": "7"}, {"name": "bio", "null": true}, {"name": "avatar", "null": true}
            ]})
        );
    }

    #[test]
    fn text_that_is_not_utf8_is_shown_as_hex() {
        let insert = PgOutputMessage::Insert(Insert {
            xid: None,
            relation: Oid(1),
            new_tuple: TupleData { columns: vec![TupleColumn::Text(Bytes::from_static(&[0x66, 0xff]))] },
        });
        assert_eq!(render(&Renderer::new(), &insert, None)["new_tuple"], json!([{"text_hex": "66ff"}]));
    }

    #[test]
    fn messages_truncates_and_aborts() {
        let renderer = Renderer::new();
        let message = |content: &'static [u8]| {
            PgOutputMessage::Message(LogicalMessage {
                xid: None,
                transactional: true,
                lsn: Lsn(1),
                prefix: "audit".into(),
                content: Bytes::from_static(content),
            })
        };
        assert_eq!(
            render(&renderer, &message(b"hello \"x\""), None),
            json!({"type": "message", "xid": null, "transactional": true, "lsn": "0/1", "prefix": "audit",
                   "content": {"text": "hello \"x\""}})
        );
        assert_eq!(render(&renderer, &message(&[0, 0xff]), None)["content"], json!({"binary": "00ff"}));

        let truncate = PgOutputMessage::Truncate(Truncate {
            xid: None,
            options: TruncateOptions { cascade: true, restart_identity: false },
            relations: vec![Oid(1), Oid(2)],
        });
        assert_eq!(
            render(&renderer, &truncate, None),
            json!({"type": "truncate", "xid": null, "cascade": true, "restart_identity": false, "relations": [1, 2]})
        );

        let abort = PgOutputMessage::StreamAbort(StreamAbort {
            xid: Xid(5),
            subxid: Xid(6),
            abort_lsn: Some(Lsn(0x1_0000_0000)),
            abort_time: None,
        });
        assert_eq!(
            render(&renderer, &abort, None),
            json!({"type": "stream_abort", "xid": 5, "subxid": 6, "abort_lsn": "1/0", "abort_time": null})
        );
        assert_eq!(render(&renderer, &PgOutputMessage::StreamStop, None), json!({"type": "stream_stop"}));
    }
}
