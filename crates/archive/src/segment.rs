//! Segment files and their LSN indexes on disk, and the scan that finds a
//! segment's last good record.
//!
//! A segment is `NNNNNNNNNN.seg` (a sequence number, so names sort in write
//! order) beside its index `NNNNNNNNNN.idx`. The index is a run of fixed
//! 17-byte entries `kind:u8 commit_lsn:u64le offset:u64le`: kind 0 marks a
//! piece that starts a transaction (written for the first one of a segment and
//! then every [`INDEX_INTERVAL_BYTES`]), kind 1 a schema record (every one, so
//! that a reader seeking into a segment can load the table shapes defined
//! before its start without scanning). The index is derived data: a sealed
//! segment's index is synced when the segment is sealed; at open the last
//! segment's index is rebuilt from its scan; a reader ignores entries past the
//! segment's end and falls back to the segment's start without an index.
//!
//! Beside the segments, the file `start` holds the archive's start LSN as
//! text (`0/16B3748`): every transaction committed at or after it is in the
//! segments. It is written when the archive receives its first stream (the
//! slot's position then, which may lie well before the first routed
//! transaction) and moved forward by retention before it removes a segment.
//! An archive without it starts at its oldest transaction's commit LSN.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use pgoutput::Lsn;

use crate::error::ArchiveError;
use crate::format::{self, Frame, Record, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};

/// Bytes of segment between two transaction entries of the index: a seek
/// reads at most about this much before the transaction it wants.
pub const INDEX_INTERVAL_BYTES: u64 = 64 * 1024;
/// Bytes of one index entry.
pub const INDEX_ENTRY_LEN: usize = 17;

const ENTRY_TRANSACTION: u8 = 0;
const ENTRY_SCHEMA: u8 = 1;

/// One entry of a segment's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexEntry {
    /// A transaction's first piece starts at `offset`.
    Transaction {
        /// Its commit LSN.
        commit_lsn: Lsn,
        /// Byte offset of its frame in the segment.
        offset: u64,
    },
    /// A schema record at `offset`.
    Schema {
        /// Byte offset of its frame in the segment.
        offset: u64,
    },
}

impl IndexEntry {
    /// Appends the entry's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (kind, lsn, offset) = match *self {
            IndexEntry::Transaction { commit_lsn, offset } => (ENTRY_TRANSACTION, commit_lsn.0, offset),
            IndexEntry::Schema { offset } => (ENTRY_SCHEMA, 0, offset),
        };
        out.push(kind);
        out.extend_from_slice(&lsn.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
    }

    /// Reads the index file bytes back; stops at a partial or unknown entry.
    pub fn decode_all(bytes: &[u8]) -> Vec<IndexEntry> {
        bytes
            .chunks_exact(INDEX_ENTRY_LEN)
            .map_while(|entry| {
                let lsn = u64::from_le_bytes(entry[1..9].try_into().ok()?);
                let offset = u64::from_le_bytes(entry[9..17].try_into().ok()?);
                match entry[0] {
                    ENTRY_TRANSACTION => Some(IndexEntry::Transaction { commit_lsn: Lsn(lsn), offset }),
                    ENTRY_SCHEMA => Some(IndexEntry::Schema { offset }),
                    _ => None,
                }
            })
            .collect()
    }
}

/// Path of segment `sequence` in `dir`.
pub fn segment_path(dir: &Path, sequence: u64) -> PathBuf {
    dir.join(format!("{sequence:010}.seg"))
}

/// Path of the index of segment `sequence` in `dir`.
pub fn index_path(dir: &Path, sequence: u64) -> PathBuf {
    dir.join(format!("{sequence:010}.idx"))
}

/// Sequence numbers of the segments in `dir`, in order.
pub fn list_segments(dir: &Path) -> Result<Vec<u64>, ArchiveError> {
    let entries = std::fs::read_dir(dir).map_err(ArchiveError::io("list", dir))?;
    let mut sequences = Vec::new();
    for entry in entries {
        let entry = entry.map_err(ArchiveError::io("list", dir))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|name| name.strip_suffix(".seg")) else { continue };
        if let Ok(sequence) = stem.parse::<u64>() {
            sequences.push(sequence);
        }
    }
    sequences.sort_unstable();
    Ok(sequences)
}

/// Name of the start file in the archive folder.
const START_FILE: &str = "start";

/// The start LSN recorded in `dir`, if any.
pub fn read_start(dir: &Path) -> Result<Option<Lsn>, ArchiveError> {
    let path = dir.join(START_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<Lsn>().map(Some).map_err(|_| ArchiveError::Io {
            action: "parse",
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not an LSN such as 0/16B3748"),
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(ArchiveError::Io { action: "read", path, source: err }),
    }
}

/// Records `lsn` as the start LSN of `dir`, durably (write, sync, rename).
pub fn write_start(dir: &Path, lsn: Lsn) -> Result<(), ArchiveError> {
    use std::io::Write;
    let path = dir.join(START_FILE);
    let temporary = dir.join(format!("{START_FILE}.tmp"));
    let mut file = File::create(&temporary).map_err(ArchiveError::io("create", &temporary))?;
    file.write_all(format!("{lsn}\n").as_bytes()).map_err(ArchiveError::io("write", &temporary))?;
    file.sync_all().map_err(ArchiveError::io("sync", &temporary))?;
    std::fs::rename(&temporary, &path).map_err(ArchiveError::io("rename", &temporary))?;
    File::open(dir).and_then(|dir| dir.sync_all()).map_err(ArchiveError::io("sync", dir))
}

/// Reads `path` from `offset` to its end.
pub fn read_from(path: &Path, offset: u64) -> Result<Bytes, ArchiveError> {
    let mut file = File::open(path).map_err(ArchiveError::io("open", path))?;
    let mut bytes = Vec::new();
    if offset > 0 {
        use std::io::Seek;
        file.seek(std::io::SeekFrom::Start(offset)).map_err(ArchiveError::io("seek", path))?;
    }
    file.read_to_end(&mut bytes).map_err(ArchiveError::io("read", path))?;
    Ok(Bytes::from(bytes))
}

/// Checks the header at the start of a whole segment's bytes; returns the
/// segment's format version, one this pgfanout reads.
pub fn check_header(path: &Path, bytes: &[u8]) -> Result<u32, ArchiveError> {
    match format::parse_segment_header(bytes) {
        Some(version @ format::OLDEST_READ_VERSION..=format::FORMAT_VERSION) => Ok(version),
        Some(version) => Err(ArchiveError::UnsupportedVersion { path: path.to_owned(), version }),
        None => Err(ArchiveError::NotASegment { path: path.to_owned() }),
    }
}

/// What a scan of a whole segment found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Byte length up to the end of the last whole transaction (schema
    /// records after it included): where a torn or unfinished tail is cut.
    pub good_len: u64,
    /// Index entries of everything up to `good_len`.
    pub index: Vec<IndexEntry>,
    /// Commit LSN of the first transaction.
    pub first_commit_lsn: Option<Lsn>,
    /// Commit LSN and end LSN of the last whole transaction.
    pub last_transaction: Option<(Lsn, Lsn)>,
    /// Whether the bytes after `good_len` hold a frame that is not torn but
    /// corrupt (a crc mismatch rather than a short write).
    pub corrupt_tail: bool,
}

/// Scans a whole segment's bytes (header included): every frame up to the
/// first torn or corrupt one, decoding each to find transaction ends.
pub fn scan(path: &Path, bytes: &Bytes) -> Result<Scan, ArchiveError> {
    let version = check_header(path, bytes)?;
    let mut scan = Scan { good_len: SEGMENT_HEADER_LEN, ..Scan::default() };
    let mut offset = SEGMENT_HEADER_LEN as usize;
    let mut pending_index = Vec::new();
    let mut open_transaction: Option<Lsn> = None;
    let mut since_index = u64::MAX;
    loop {
        let rest = bytes.get(offset..).unwrap_or_default();
        if rest.is_empty() {
            break;
        }
        let len = match format::read_frame(rest) {
            Frame::Complete { len, .. } => len,
            Frame::Incomplete => break,
            Frame::Corrupt => {
                scan.corrupt_tail = true;
                break;
            }
        };
        let body = bytes.slice(offset + FRAME_HEADER_LEN..offset + len);
        let record = format::decode(&body, version).map_err(|source| ArchiveError::Format {
            path: path.to_owned(),
            offset: offset as u64,
            source,
        })?;
        match record {
            Record::Schema(_) => {
                pending_index.push(IndexEntry::Schema { offset: offset as u64 });
                if open_transaction.is_none() {
                    scan.good_len = (offset + len) as u64;
                    scan.index.append(&mut pending_index);
                }
            }
            Record::Piece(header, _) => {
                if open_transaction != Some(header.commit_lsn) {
                    if since_index >= INDEX_INTERVAL_BYTES {
                        pending_index
                            .push(IndexEntry::Transaction { commit_lsn: header.commit_lsn, offset: offset as u64 });
                        since_index = 0;
                    }
                    open_transaction = Some(header.commit_lsn);
                }
                if header.ends_transaction {
                    open_transaction = None;
                    scan.first_commit_lsn.get_or_insert(header.commit_lsn);
                    scan.last_transaction = Some((header.commit_lsn, header.end_lsn));
                    scan.good_len = (offset + len) as u64;
                    scan.index.append(&mut pending_index);
                }
            }
        }
        since_index = since_index.saturating_add(len as u64);
        offset += len;
    }
    Ok(scan)
}
