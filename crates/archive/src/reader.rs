//! Reading the archive back: seek to a commit LSN through the segments'
//! indexes, then read transaction pieces in order.
//!
//! A reader sees the segments as they are when it reaches them; it may run
//! beside the writer (a frame still being written reads as the end). A
//! damaged frame at the end of the last segment is a torn tail (the writer
//! cuts it at its next open) and ends the read; one anywhere else is an error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use pgfanout_core::{Change, ColumnSchema, TableSchema, Transaction};
use pgoutput::{Lsn, TypeRegistry};

use crate::error::ArchiveError;
use crate::format::{self, Frame, PieceHeader, Record, SchemaRecord, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
use crate::segment::{self, IndexEntry};

/// Some or all changes of an archived transaction.
#[derive(Debug, Clone)]
pub struct ArchivedPiece {
    /// The transaction's identity and these changes.
    pub transaction: Transaction,
    /// Whether this is the transaction's last piece.
    pub ends_transaction: bool,
}

/// A segment being read.
struct SegmentCursor {
    path: PathBuf,
    /// The segment's bytes from `base` on.
    bytes: Bytes,
    base: u64,
    offset: usize,
    /// The segment's format version.
    version: u32,
    schemas: HashMap<u32, Arc<TableSchema>>,
    is_last: bool,
}

/// Reads pieces in stream order from a commit LSN on.
pub struct ArchiveReader {
    dir: PathBuf,
    types: Arc<TypeRegistry>,
    sequences: Vec<u64>,
    /// Index into `sequences` of the next segment to open.
    next_segment: usize,
    current: Option<SegmentCursor>,
    from: Lsn,
}

impl ArchiveReader {
    /// A reader of the archive in `dir` from its oldest transaction; column
    /// values convert to typed values through `types`.
    pub fn open(dir: &Path, types: Arc<TypeRegistry>) -> Result<ArchiveReader, ArchiveError> {
        if !dir.is_dir() {
            return Err(ArchiveError::Io {
                action: "open",
                path: dir.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such archive folder"),
            });
        }
        let sequences = segment::list_segments(dir)?;
        Ok(ArchiveReader { dir: dir.to_owned(), types, sequences, next_segment: 0, current: None, from: Lsn::ZERO })
    }

    /// Commit LSN of the oldest transaction in the archive.
    pub fn oldest_commit_lsn(&self) -> Result<Option<Lsn>, ArchiveError> {
        for &sequence in &self.sequences {
            if let Some(lsn) = self.first_commit_lsn(sequence)? {
                return Ok(Some(lsn));
            }
        }
        Ok(None)
    }

    /// The oldest LSN a seek accepts: every transaction committed at or
    /// after it is held (the archive's recorded start, see [`segment`], or
    /// its oldest commit LSN).
    pub fn start_lsn(&self) -> Result<Option<Lsn>, ArchiveError> {
        match segment::read_start(&self.dir)? {
            Some(start) => Ok(Some(start)),
            None => self.oldest_commit_lsn(),
        }
    }

    /// Commit LSN and end LSN of the newest whole transaction held.
    pub fn newest_transaction(&self) -> Result<Option<(Lsn, Lsn)>, ArchiveError> {
        for &sequence in self.sequences.iter().rev() {
            let path = segment::segment_path(&self.dir, sequence);
            let bytes = segment::read_from(&path, 0)?;
            if let Some(last) = segment::scan(&path, &bytes)?.last_transaction {
                return Ok(Some(last));
            }
        }
        Ok(None)
    }

    /// Positions the reader at the first transaction whose commit LSN is at
    /// or after `from`, reading only the index of the segment holding it and
    /// at most [`segment::INDEX_INTERVAL_BYTES`] of records before it.
    /// Refuses an LSN before [`ArchiveReader::start_lsn`].
    pub fn seek(&mut self, from: Lsn) -> Result<(), ArchiveError> {
        let start = segment::read_start(&self.dir)?;
        if let Some(start) = start.filter(|&start| from < start) {
            return Err(ArchiveError::BeforeOldest { requested: from, oldest: start });
        }
        let mut chosen = None;
        let mut oldest = None;
        for (at, &sequence) in self.sequences.iter().enumerate() {
            let Some(first) = self.first_commit_lsn(sequence)? else { continue };
            oldest.get_or_insert((at, first));
            if first > from {
                break;
            }
            chosen = Some(at);
        }
        // Between the recorded start and the oldest transaction nothing was
        // committed that the archive lacks: read from the oldest one.
        if chosen.is_none() && start.is_some() {
            chosen = oldest.map(|(at, _)| at);
        }
        match (chosen, oldest) {
            (None, Some((_, oldest))) => return Err(ArchiveError::BeforeOldest { requested: from, oldest }),
            (None, None) => {
                self.next_segment = self.sequences.len();
                self.current = None;
                return Ok(());
            }
            (Some(at), _) => {
                let sequence = self.sequences[at];
                let entries = self.index(sequence);
                let start = entries
                    .iter()
                    .filter_map(|entry| match *entry {
                        IndexEntry::Transaction { commit_lsn, offset } if commit_lsn < from => Some(offset),
                        _ => None,
                    })
                    .next_back()
                    .unwrap_or(SEGMENT_HEADER_LEN);
                let path = segment::segment_path(&self.dir, sequence);
                let version = read_version(&path)?;
                let mut schemas = HashMap::new();
                for entry in &entries {
                    if let IndexEntry::Schema { offset } = *entry {
                        if offset < start {
                            let record = read_schema_at(&path, offset, version)?;
                            schemas.insert(record.id, Arc::new(self.table_schema(record)));
                        }
                    }
                }
                let bytes = segment::read_from(&path, start)?;
                let is_last = at + 1 == self.sequences.len();
                self.current = Some(SegmentCursor { path, bytes, base: start, offset: 0, version, schemas, is_last });
                self.next_segment = at + 1;
            }
        }
        self.from = from;
        Ok(())
    }

    /// The next piece at or after the seek position, `None` at the end.
    pub fn next_piece(&mut self) -> Result<Option<ArchivedPiece>, ArchiveError> {
        loop {
            if self.current.is_none() && !self.open_next_segment()? {
                return Ok(None);
            }
            let Some(cursor) = self.current.as_mut() else { return Ok(None) };
            let rest = cursor.bytes.get(cursor.offset..).unwrap_or_default();
            if rest.is_empty() {
                self.current = None;
                continue;
            }
            let frame_offset = cursor.base + cursor.offset as u64;
            let len = match format::read_frame(rest) {
                Frame::Complete { len, .. } => len,
                Frame::Incomplete | Frame::Corrupt if cursor.is_last => return Ok(None),
                Frame::Incomplete | Frame::Corrupt => {
                    return Err(ArchiveError::Corrupt { path: cursor.path.clone(), offset: frame_offset })
                }
            };
            let body = cursor.bytes.slice(cursor.offset + FRAME_HEADER_LEN..cursor.offset + len);
            cursor.offset += len;
            let record = format::decode(&body, cursor.version).map_err(|source| ArchiveError::Format {
                path: cursor.path.clone(),
                offset: frame_offset,
                source,
            })?;
            match record {
                Record::Schema(schema) => {
                    cursor.schemas.insert(schema.id, Arc::new(table_schema(schema, &self.types)));
                }
                Record::Piece(header, _) if header.commit_lsn < self.from => {}
                Record::Piece(header, changes) => {
                    let mut resolved = Vec::with_capacity(changes.len());
                    for change in changes {
                        let table = cursor.schemas.get(&change.table_id).cloned().ok_or_else(|| {
                            ArchiveError::UnknownTable {
                                path: cursor.path.clone(),
                                offset: frame_offset,
                                table_id: change.table_id,
                            }
                        })?;
                        resolved.push(Change { table, op: change.op, ordinal: change.ordinal });
                    }
                    return Ok(Some(piece(header, resolved)));
                }
            }
        }
    }

    fn open_next_segment(&mut self) -> Result<bool, ArchiveError> {
        let Some(&sequence) = self.sequences.get(self.next_segment) else { return Ok(false) };
        let path = segment::segment_path(&self.dir, sequence);
        let bytes = match segment::read_from(&path, 0) {
            Ok(bytes) => bytes,
            // Removed by retention since the listing: it held only older transactions.
            Err(ArchiveError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                self.next_segment += 1;
                return self.open_next_segment();
            }
            Err(err) => return Err(err),
        };
        let version = segment::check_header(&path, &bytes)?;
        let is_last = self.next_segment + 1 == self.sequences.len();
        self.current = Some(SegmentCursor {
            path,
            bytes,
            base: 0,
            offset: SEGMENT_HEADER_LEN as usize,
            version,
            schemas: HashMap::new(),
            is_last,
        });
        self.next_segment += 1;
        Ok(true)
    }

    fn index(&self, sequence: u64) -> Vec<IndexEntry> {
        std::fs::read(segment::index_path(&self.dir, sequence))
            .map(|bytes| IndexEntry::decode_all(&bytes))
            .unwrap_or_default()
    }

    fn first_commit_lsn(&self, sequence: u64) -> Result<Option<Lsn>, ArchiveError> {
        let first = self.index(sequence).into_iter().find_map(|entry| match entry {
            IndexEntry::Transaction { commit_lsn, .. } => Some(commit_lsn),
            IndexEntry::Schema { .. } => None,
        });
        if first.is_some() {
            return Ok(first);
        }
        let path = segment::segment_path(&self.dir, sequence);
        let bytes = segment::read_from(&path, 0)?;
        Ok(segment::scan(&path, &bytes)?.first_commit_lsn)
    }

    fn table_schema(&self, record: SchemaRecord) -> TableSchema {
        table_schema(record, &self.types)
    }
}

fn piece(header: PieceHeader, changes: Vec<Change>) -> ArchivedPiece {
    ArchivedPiece {
        transaction: Transaction {
            xid: header.xid,
            commit_lsn: header.commit_lsn,
            end_lsn: header.end_lsn,
            commit_time: header.commit_time,
            changes,
        },
        ends_transaction: header.ends_transaction,
    }
}

fn table_schema(record: SchemaRecord, types: &Arc<TypeRegistry>) -> TableSchema {
    TableSchema {
        oid: record.oid,
        table: record.table,
        replica_identity: record.replica_identity,
        columns: record
            .columns
            .into_iter()
            .map(|(name, type_oid, is_key)| ColumnSchema { name, type_oid, is_key })
            .collect(),
        types: types.clone(),
    }
}

/// The format version in the header of segment `path`.
fn read_version(path: &Path) -> Result<u32, ArchiveError> {
    use std::io::Read;
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    let mut file = std::fs::File::open(path).map_err(ArchiveError::io("open", path))?;
    file.read_exact(&mut header).map_err(ArchiveError::io("read", path))?;
    segment::check_header(path, &header)
}

/// Reads the schema record whose frame starts at `offset` of `path`, a
/// segment of format `version`.
fn read_schema_at(path: &Path, offset: u64, version: u32) -> Result<SchemaRecord, ArchiveError> {
    use std::io::{Read, Seek};
    let mut file = std::fs::File::open(path).map_err(ArchiveError::io("open", path))?;
    file.seek(std::io::SeekFrom::Start(offset)).map_err(ArchiveError::io("seek", path))?;
    let mut header = [0u8; FRAME_HEADER_LEN];
    file.read_exact(&mut header).map_err(ArchiveError::io("read", path))?;
    let body_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]).min(format::MAX_BODY_BYTES);
    let mut frame = header.to_vec();
    frame.resize(FRAME_HEADER_LEN + body_len as usize, 0);
    file.read_exact(&mut frame[FRAME_HEADER_LEN..]).map_err(ArchiveError::io("read", path))?;
    let corrupt = || ArchiveError::Corrupt { path: path.to_owned(), offset };
    let Frame::Complete { body, .. } = format::read_frame(&frame) else { return Err(corrupt()) };
    let body = Bytes::copy_from_slice(body);
    match format::decode(&body, version) {
        Ok(Record::Schema(record)) => Ok(record),
        Ok(Record::Piece(..)) => Err(corrupt()),
        Err(source) => Err(ArchiveError::Format { path: path.to_owned(), offset, source }),
    }
}
