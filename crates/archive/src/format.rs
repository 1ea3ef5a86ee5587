//! The archive's byte layout: segment header, record frames, record bodies.
//! Pure functions, no I/O.
//!
//! ```text
//! segment  = header frame*
//! header   = "PGFANARC" version:u32le                         (12 bytes)
//! frame    = length:u32le crc:u32le body                      (crc32c of length bytes + body)
//! body     = schema | piece
//! schema   = 1 id:var oid:u32le identity:u8 schema:str table:str ncols:var (name:str type:u32le key:u8)*
//! piece    = 2 flags:u8 commit_lsn:u64le end_lsn:u64le commit_time:i64le xid:u32le nchanges:var change*
//! change   = table_id:var op:u8 ordinal_gap:var row*            (rows by op: see ChangeOp tags)
//! row      = ncols:var value*
//! value    = kind:var bytes                 (kind: 0 null, 1 unchanged TOAST, len*4+2 text, len*4+3 binary)
//! str      = len:var utf-8 bytes
//! var      = unsigned LEB128, at most 5 bytes (u32)
//! ```
//!
//! A transaction is one or more piece records with the same commit LSN; the
//! last has the `ENDS_TRANSACTION` flag. A schema record defines a table id
//! for the rest of its segment; changes name their table by that id, so a
//! table's name and columns are written once per segment, not per change.
//! `ordinal_gap` is the change's ordinal minus the previous one's plus one
//! (0 for consecutive changes; the first change of a piece counts from 0),
//! so ordinals cost one byte where nothing was filtered out.
//!
//! A value's kind and length share one varint, so a value shorter than 32
//! bytes costs one byte of framing, and encoding it is one varint and one
//! copy of the bytes as they arrived.
//!
//! Versions: 2 (above) is written; 1, whose values are `0 | 1 | 2 len:var
//! bytes | 3 len:var bytes` (a tag byte, then the length), is still read, so
//! an archive written before an upgrade stays replayable. A segment holds one
//! version (the writer starts a new segment at open).
//!
//! Invariant: a body the decoder accepts was produced by the encoder of the
//! version its segment header names; the crc rejects torn or bit-flipped
//! frames before the decoder sees them.

use bytes::Bytes;
use pgfanout_core::{Change, ChangeOp, ColumnValue, Row, TableName, TableSchema};
use pgoutput::{Lsn, Oid, PgTimestamp, ReplicaIdentity, Xid};

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"PGFANARC";
/// Version of the layout above, written in every new segment's header.
/// Bumped on any change to it; a reader refuses versions it does not know.
pub const FORMAT_VERSION: u32 = 2;
/// Oldest version still read (see the module docs).
pub const OLDEST_READ_VERSION: u32 = 1;
/// Bytes of the segment header.
pub const SEGMENT_HEADER_LEN: u64 = 12;
/// Bytes of a frame's length and crc.
pub const FRAME_HEADER_LEN: usize = 8;
/// Largest body accepted: a length above it is a torn or corrupt frame.
pub const MAX_BODY_BYTES: u32 = 1 << 30;

const KIND_SCHEMA: u8 = 1;
const KIND_PIECE: u8 = 2;
const FLAG_ENDS_TRANSACTION: u8 = 1;

const OP_INSERT: u8 = 0;
const OP_UPDATE: u8 = 1;
const OP_UPDATE_WITH_OLD: u8 = 2;
const OP_DELETE: u8 = 3;
const OP_TRUNCATE: u8 = 4;

const VALUE_NULL: u8 = 0;
const VALUE_UNCHANGED_TOAST: u8 = 1;
const VALUE_TEXT: u8 = 2;
const VALUE_BINARY: u8 = 3;
/// Bits of a version-2 value kind below its length.
const VALUE_KIND_BITS: u32 = 2;

/// Why a record body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The body ended inside a field.
    #[error("record ends early: {needed} more bytes needed")]
    UnexpectedEof {
        /// Bytes missing.
        needed: usize,
    },
    /// A tag byte no writer of the segment's version produces.
    #[error("unknown {what} tag {tag}")]
    UnknownTag {
        /// Which tag (record kind, op, value, replica identity).
        what: &'static str,
        /// The byte.
        tag: u8,
    },
    /// A variable-length integer longer than a u32 allows.
    #[error("variable-length integer overflows 32 bits")]
    VarintOverflow,
    /// A name that is not UTF-8.
    #[error("name is not UTF-8")]
    InvalidUtf8,
    /// Bytes left after the record's last field.
    #[error("{0} bytes after the end of the record")]
    TrailingBytes(usize),
}

/// The identity of a transaction piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceHeader {
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End of the commit record.
    pub end_lsn: Lsn,
    /// Commit time on the source.
    pub commit_time: PgTimestamp,
    /// Transaction id on the source.
    pub xid: Xid,
    /// Whether this is the transaction's last piece.
    pub ends_transaction: bool,
}

/// A table's shape as archived, without a type registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaRecord {
    /// Id the segment's changes use for this shape.
    pub id: u32,
    /// Relation OID on the source.
    pub oid: Oid,
    /// Qualified name.
    pub table: TableName,
    /// Replica identity setting.
    pub replica_identity: ReplicaIdentity,
    /// Columns: name, type OID, whether part of the key.
    pub columns: Vec<(String, Oid, bool)>,
}

/// One change as decoded, its table still an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedChange {
    /// Schema id (see [`SchemaRecord::id`]).
    pub table_id: u32,
    /// What happened.
    pub op: ChangeOp,
    /// Position in the transaction.
    pub ordinal: u32,
}

/// A decoded record body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A table shape definition.
    Schema(SchemaRecord),
    /// Some or all changes of a transaction.
    Piece(PieceHeader, Vec<ArchivedChange>),
}

/// The segment header bytes.
pub fn segment_header() -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    header[..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header
}

/// The format version a segment header announces, `None` if it is not one.
pub fn parse_segment_header(header: &[u8]) -> Option<u32> {
    let magic = header.get(..8)?;
    let version = header.get(8..12)?;
    (magic == SEGMENT_MAGIC).then(|| u32::from_le_bytes([version[0], version[1], version[2], version[3]]))
}

/// Appends a frame around the body `write_body` appends to `out`.
pub fn frame(out: &mut Vec<u8>, write_body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    write_body(out);
    let body_len = (out.len() - start - FRAME_HEADER_LEN) as u32;
    let length = body_len.to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&length), &out[start + FRAME_HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&length);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What the bytes at the start of `bytes` hold, frame-wise.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole frame whose crc matches: its body and its total length.
    Complete {
        /// The body.
        body: &'a [u8],
        /// Header plus body bytes.
        len: usize,
    },
    /// Fewer bytes than the frame announces (or than a header): a torn write,
    /// or a write still under way.
    Incomplete,
    /// A length out of range or a crc mismatch.
    Corrupt,
}

/// Reads the frame at the start of `bytes`.
pub fn read_frame(bytes: &[u8]) -> Frame<'_> {
    let Some(header) = bytes.get(..FRAME_HEADER_LEN) else { return Frame::Incomplete };
    let length = [header[0], header[1], header[2], header[3]];
    let body_len = u32::from_le_bytes(length);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if body_len == 0 || body_len > MAX_BODY_BYTES {
        return Frame::Corrupt;
    }
    let len = FRAME_HEADER_LEN + body_len as usize;
    let Some(body) = bytes.get(FRAME_HEADER_LEN..len) else { return Frame::Incomplete };
    if crc32c::crc32c_append(crc32c::crc32c(&length), body) != crc {
        return Frame::Corrupt;
    }
    Frame::Complete { body, len }
}

/// Appends a schema record body for `schema` under `id`.
pub fn encode_schema(id: u32, schema: &TableSchema, out: &mut Vec<u8>) {
    out.push(KIND_SCHEMA);
    put_var(out, id);
    out.extend_from_slice(&schema.oid.0.to_le_bytes());
    out.push(identity_tag(schema.replica_identity));
    put_str(out, &schema.table.schema);
    put_str(out, &schema.table.name);
    put_var(out, schema.columns.len() as u32);
    for column in &schema.columns {
        put_str(out, &column.name);
        out.extend_from_slice(&column.type_oid.0.to_le_bytes());
        out.push(u8::from(column.is_key));
    }
}

/// Appends a piece record body: `header` and `changes`, each with its table's schema id.
pub fn encode_piece<'a>(
    header: &PieceHeader,
    changes: impl ExactSizeIterator<Item = (u32, &'a Change)>,
    out: &mut Vec<u8>,
) {
    out.push(KIND_PIECE);
    out.push(if header.ends_transaction { FLAG_ENDS_TRANSACTION } else { 0 });
    out.extend_from_slice(&header.commit_lsn.0.to_le_bytes());
    out.extend_from_slice(&header.end_lsn.0.to_le_bytes());
    out.extend_from_slice(&header.commit_time.0.to_le_bytes());
    out.extend_from_slice(&header.xid.0.to_le_bytes());
    put_var(out, changes.len() as u32);
    let mut next_ordinal = 0u32;
    for (table_id, change) in changes {
        put_var(out, table_id);
        let gap = change.ordinal.wrapping_sub(next_ordinal);
        match &change.op {
            ChangeOp::Insert { new } => {
                out.push(OP_INSERT);
                put_var(out, gap);
                put_row(out, new);
            }
            ChangeOp::Update { old: None, new } => {
                out.push(OP_UPDATE);
                put_var(out, gap);
                put_row(out, new);
            }
            ChangeOp::Update { old: Some(old), new } => {
                out.push(OP_UPDATE_WITH_OLD);
                put_var(out, gap);
                put_row(out, old);
                put_row(out, new);
            }
            ChangeOp::Delete { old } => {
                out.push(OP_DELETE);
                put_var(out, gap);
                put_row(out, old);
            }
            ChangeOp::Truncate => {
                out.push(OP_TRUNCATE);
                put_var(out, gap);
            }
        }
        next_ordinal = change.ordinal.wrapping_add(1);
    }
}

/// Decodes a record body of a segment of format `version` (one from
/// [`OLDEST_READ_VERSION`] to [`FORMAT_VERSION`]). `body` shares its buffer
/// with the values it holds.
pub fn decode(body: &Bytes, version: u32) -> Result<Record, FormatError> {
    let mut cursor = Cursor { bytes: body, position: 0, version };
    let record = match cursor.u8()? {
        KIND_SCHEMA => Record::Schema(decode_schema(&mut cursor)?),
        KIND_PIECE => decode_piece(&mut cursor)?,
        tag => return Err(FormatError::UnknownTag { what: "record kind", tag }),
    };
    match body.len() - cursor.position {
        0 => Ok(record),
        left => Err(FormatError::TrailingBytes(left)),
    }
}

fn decode_schema(cursor: &mut Cursor<'_>) -> Result<SchemaRecord, FormatError> {
    let id = cursor.var()?;
    let oid = Oid(cursor.u32()?);
    let replica_identity = match cursor.u8()? {
        b'd' => ReplicaIdentity::Default,
        b'n' => ReplicaIdentity::Nothing,
        b'f' => ReplicaIdentity::Full,
        b'i' => ReplicaIdentity::Index,
        tag => return Err(FormatError::UnknownTag { what: "replica identity", tag }),
    };
    let schema = cursor.string()?;
    let name = cursor.string()?;
    let count = cursor.var()?;
    let mut columns = Vec::with_capacity(count.min(1600) as usize);
    for _ in 0..count {
        let name = cursor.string()?;
        let type_oid = Oid(cursor.u32()?);
        let is_key = cursor.u8()? != 0;
        columns.push((name, type_oid, is_key));
    }
    Ok(SchemaRecord { id, oid, table: TableName::new(schema, name), replica_identity, columns })
}

fn decode_piece(cursor: &mut Cursor<'_>) -> Result<Record, FormatError> {
    let flags = cursor.u8()?;
    let header = PieceHeader {
        ends_transaction: flags & FLAG_ENDS_TRANSACTION != 0,
        commit_lsn: Lsn(cursor.u64()?),
        end_lsn: Lsn(cursor.u64()?),
        commit_time: PgTimestamp(cursor.u64()? as i64),
        xid: Xid(cursor.u32()?),
    };
    let count = cursor.var()?;
    // The count comes from a crc-checked body, but a bound keeps a bad writer from costing memory.
    let mut changes = Vec::with_capacity(count.min(65_536) as usize);
    let mut next_ordinal = 0u32;
    for _ in 0..count {
        let table_id = cursor.var()?;
        let tag = cursor.u8()?;
        let ordinal = next_ordinal.wrapping_add(cursor.var()?);
        let op = match tag {
            OP_INSERT => ChangeOp::Insert { new: cursor.row()? },
            OP_UPDATE => ChangeOp::Update { old: None, new: cursor.row()? },
            OP_UPDATE_WITH_OLD => {
                let old = cursor.row()?;
                ChangeOp::Update { old: Some(old), new: cursor.row()? }
            }
            OP_DELETE => ChangeOp::Delete { old: cursor.row()? },
            OP_TRUNCATE => ChangeOp::Truncate,
            tag => return Err(FormatError::UnknownTag { what: "change op", tag }),
        };
        changes.push(ArchivedChange { table_id, op, ordinal });
        next_ordinal = ordinal.wrapping_add(1);
    }
    Ok(Record::Piece(header, changes))
}

fn identity_tag(identity: ReplicaIdentity) -> u8 {
    match identity {
        ReplicaIdentity::Default => b'd',
        ReplicaIdentity::Nothing => b'n',
        ReplicaIdentity::Full => b'f',
        ReplicaIdentity::Index => b'i',
    }
}

fn put_var(out: &mut Vec<u8>, mut value: u32) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    put_var(out, text.len() as u32);
    out.extend_from_slice(text.as_bytes());
}

/// Appends a row. No reservation up front: the writer reuses its buffer,
/// which soon has room for a whole batch, and summing the row's lengths
/// first costs more than the capacity checks it would spare.
fn put_row(out: &mut Vec<u8>, row: &Row) {
    put_var(out, row.len() as u32);
    for value in row {
        match value {
            ColumnValue::Null => out.push(VALUE_NULL),
            ColumnValue::UnchangedToast => out.push(VALUE_UNCHANGED_TOAST),
            // A value of 1 GiB or more overflows the kind: its record is over
            // MAX_BODY_BYTES, which the writer refuses.
            ColumnValue::Text(bytes) => {
                put_var(out, ((bytes.len() as u32) << VALUE_KIND_BITS) | u32::from(VALUE_TEXT));
                out.extend_from_slice(bytes);
            }
            ColumnValue::Binary(bytes) => {
                put_var(out, ((bytes.len() as u32) << VALUE_KIND_BITS) | u32::from(VALUE_BINARY));
                out.extend_from_slice(bytes);
            }
        }
    }
}

/// Reads fields off a body; values are slices of the body's buffer.
struct Cursor<'a> {
    bytes: &'a Bytes,
    position: usize,
    /// Format version of the segment the body comes from.
    version: u32,
}

impl Cursor<'_> {
    fn take(&mut self, len: usize) -> Result<std::ops::Range<usize>, FormatError> {
        let end = self.position.checked_add(len).filter(|&end| end <= self.bytes.len());
        let end = end.ok_or_else(|| FormatError::UnexpectedEof {
            needed: self.position.saturating_add(len).saturating_sub(self.bytes.len()),
        })?;
        let range = self.position..end;
        self.position = end;
        Ok(range)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let range = self.take(N)?;
        let mut array = [0u8; N];
        array.copy_from_slice(&self.bytes[range]);
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn var(&mut self) -> Result<u32, FormatError> {
        let mut value = 0u32;
        for shift in (0..35).step_by(7) {
            let byte = self.u8()?;
            let part = u32::from(byte & 0x7f);
            if shift == 28 && part > 0x0f {
                return Err(FormatError::VarintOverflow);
            }
            value |= part << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(FormatError::VarintOverflow)
    }

    fn string(&mut self) -> Result<String, FormatError> {
        let len = self.var()? as usize;
        let range = self.take(len)?;
        String::from_utf8(self.bytes[range].to_vec()).map_err(|_| FormatError::InvalidUtf8)
    }

    fn row(&mut self) -> Result<Row, FormatError> {
        let count = self.var()?;
        let mut row = Vec::with_capacity(count.min(1600) as usize);
        for _ in 0..count {
            row.push(if self.version == 1 { self.value_v1()? } else { self.value()? });
        }
        Ok(row)
    }

    /// A version-2 value: kind and length in one varint.
    fn value(&mut self) -> Result<ColumnValue, FormatError> {
        let kind = self.var()?;
        let len = (kind >> VALUE_KIND_BITS) as usize;
        Ok(match (kind & ((1 << VALUE_KIND_BITS) - 1)) as u8 {
            VALUE_NULL if len == 0 => ColumnValue::Null,
            VALUE_UNCHANGED_TOAST if len == 0 => ColumnValue::UnchangedToast,
            VALUE_TEXT => ColumnValue::Text(self.value_bytes(len)?),
            VALUE_BINARY => ColumnValue::Binary(self.value_bytes(len)?),
            // A null or TOAST kind with a length: only the low byte is shown.
            _ => return Err(FormatError::UnknownTag { what: "value", tag: kind as u8 }),
        })
    }

    /// A version-1 value: a tag byte, then a length for text and binary.
    fn value_v1(&mut self) -> Result<ColumnValue, FormatError> {
        Ok(match self.u8()? {
            VALUE_NULL => ColumnValue::Null,
            VALUE_UNCHANGED_TOAST => ColumnValue::UnchangedToast,
            VALUE_TEXT => {
                let len = self.var()? as usize;
                ColumnValue::Text(self.value_bytes(len)?)
            }
            VALUE_BINARY => {
                let len = self.var()? as usize;
                ColumnValue::Binary(self.value_bytes(len)?)
            }
            tag => return Err(FormatError::UnknownTag { what: "value", tag }),
        })
    }

    fn value_bytes(&mut self, len: usize) -> Result<Bytes, FormatError> {
        let range = self.take(len)?;
        Ok(self.bytes.slice(range))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_their_edges() {
        for value in [0, 1, 127, 128, 16_383, 16_384, u32::MAX] {
            let mut out = Vec::new();
            put_var(&mut out, value);
            let bytes = Bytes::from(out);
            let mut cursor = Cursor { bytes: &bytes, position: 0, version: FORMAT_VERSION };
            assert_eq!(cursor.var(), Ok(value));
            assert_eq!(cursor.position, bytes.len());
        }
        let too_long = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x1f]);
        assert_eq!(
            Cursor { bytes: &too_long, position: 0, version: FORMAT_VERSION }.var(),
            Err(FormatError::VarintOverflow)
        );
    }

    #[test]
    fn a_flipped_bit_or_a_short_frame_is_never_complete() {
        let mut out = Vec::new();
        frame(&mut out, |body| body.extend_from_slice(b"\x02hello"));
        assert!(matches!(read_frame(&out), Frame::Complete { len, .. } if len == out.len()));
        for cut in 0..out.len() {
            assert_eq!(read_frame(&out[..cut]), Frame::Incomplete, "cut at {cut}");
        }
        for bit in 0..out.len() * 8 {
            let mut flipped = out.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(!matches!(read_frame(&flipped), Frame::Complete { .. }), "bit {bit}");
        }
    }

    /// The same piece as version 1 wrote it and as version 2 writes it:
    /// a null, an unchanged TOAST value, a text and a binary value.
    #[test]
    fn version_1_values_still_decode_to_what_version_2_encodes() {
        let header = PieceHeader {
            commit_lsn: Lsn(0x10),
            end_lsn: Lsn(0x20),
            commit_time: PgTimestamp(3),
            xid: Xid(4),
            ends_transaction: true,
        };
        let table = std::sync::Arc::new(TableSchema {
            oid: Oid(16384),
            table: TableName::new("public", "t"),
            replica_identity: ReplicaIdentity::Default,
            columns: Vec::new(),
            types: std::sync::Arc::new(pgoutput::TypeRegistry::new()),
        });
        let row = vec![
            ColumnValue::Null,
            ColumnValue::UnchangedToast,
            ColumnValue::Text(Bytes::from_static(b"ab")),
            ColumnValue::Binary(Bytes::from_static(&[0xff])),
        ];
        let change = Change { table, op: ChangeOp::Insert { new: row }, ordinal: 0 };
        let mut v2 = Vec::new();
        encode_piece(&header, std::iter::once((0, &change)), &mut v2);
        let mut prefix = vec![KIND_PIECE, FLAG_ENDS_TRANSACTION];
        for field in [0x10u64, 0x20, 3] {
            prefix.extend_from_slice(&field.to_le_bytes());
        }
        prefix.extend_from_slice(&4u32.to_le_bytes());
        // One change: table id 0, insert, ordinal gap 0, four values.
        prefix.extend_from_slice(&[1, 0, OP_INSERT, 0, 4]);
        let v2_values: &[u8] = &[0, 1, 2 << 2 | 2, b'a', b'b', 1 << 2 | 3, 0xff];
        let v1_values: &[u8] = &[0, 1, 2, 2, b'a', b'b', 3, 1, 0xff];
        assert_eq!(v2, [&prefix[..], v2_values].concat(), "the version-2 layout");
        let v1 = Bytes::from([&prefix[..], v1_values].concat());
        let decoded_v1 = decode(&v1, 1).unwrap();
        assert_eq!(decoded_v1, decode(&Bytes::from(v2), FORMAT_VERSION).unwrap());
        let Record::Piece(_, changes) = decoded_v1 else { panic!("a piece") };
        assert_eq!(changes[0].op, change.op);
        // Version-2 bytes read as version 1 are not silently taken.
        assert!(decode(&Bytes::from([&prefix[..], &[0, 1, 10, b'a', b'b', 7, 0xff]].concat()), 1).is_err());
    }

    #[test]
    fn unknown_tags_and_trailing_bytes_are_refused() {
        assert_eq!(
            decode(&Bytes::from_static(&[9]), FORMAT_VERSION),
            Err(FormatError::UnknownTag { what: "record kind", tag: 9 })
        );
        let mut body = Vec::new();
        encode_piece(
            &PieceHeader {
                commit_lsn: Lsn(1),
                end_lsn: Lsn(2),
                commit_time: PgTimestamp(3),
                xid: Xid(4),
                ends_transaction: true,
            },
            std::iter::empty(),
            &mut body,
        );
        body.push(0);
        assert_eq!(decode(&Bytes::from(body), FORMAT_VERSION), Err(FormatError::TrailingBytes(1)));
    }
}
