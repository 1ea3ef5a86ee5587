//! Errors of the archive: the file and offset they are about, and the cause.

use std::path::{Path, PathBuf};

use pgoutput::Lsn;

use crate::format::FormatError;

/// Why the archive cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A file operation failed (full disk, permissions, missing folder).
    #[error("cannot {action} {path}")]
    Io {
        /// What was being done (`open`, `write`, `sync`, …).
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A segment file does not start with the archive's header.
    #[error("{path} is not a pgfanout archive segment (wrong header); move it out of the archive folder")]
    NotASegment {
        /// The file.
        path: PathBuf,
    },
    /// A segment written by a newer pgfanout.
    #[error(
        "{path} uses archive format version {version}, this pgfanout reads versions {} to {}; upgrade pgfanout",
        crate::format::OLDEST_READ_VERSION,
        crate::format::FORMAT_VERSION
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version its header names.
        version: u32,
    },
    /// A record whose checksum matches but whose body does not decode.
    #[error("record at byte {offset} of {path} does not decode")]
    Format {
        /// The segment.
        path: PathBuf,
        /// Offset of the record's frame.
        offset: u64,
        /// What is wrong with it.
        #[source]
        source: FormatError,
    },
    /// A damaged record in the middle of the archive (not a torn tail).
    #[error("record at byte {offset} of {path} is damaged (checksum mismatch) and later segments exist; restore the archive folder from a backup or remove the segments from this one on")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Offset of the damaged frame.
        offset: u64,
    },
    /// A change names a table id its segment never defined.
    #[error("record at byte {offset} of {path} names table id {table_id}, which its segment does not define")]
    UnknownTable {
        /// The segment.
        path: PathBuf,
        /// Offset of the record.
        offset: u64,
        /// The id.
        table_id: u32,
    },
    /// A change too large for one record (a value of about 1 GiB).
    #[error("the transaction committed at {commit_lsn} holds a change of about {bytes} bytes, over the archive's 1 GiB record limit; leave its table out of the sinks' routing or turn the archive off")]
    RecordTooLarge {
        /// Commit LSN of the transaction.
        commit_lsn: Lsn,
        /// Bytes of the record that would hold it.
        bytes: u64,
    },
    /// A seek before the archive's start LSN.
    #[error("the archive starts at LSN {oldest} (it holds every transaction committed from there on); {requested} is older (removed by retention or before the archive was on): rebuild the store with `pgfanout rebuild` instead")]
    BeforeOldest {
        /// The LSN asked for.
        requested: Lsn,
        /// The archive's start LSN: the oldest a replay may start from.
        oldest: Lsn,
    },
}

impl ArchiveError {
    /// A closure turning an I/O error of `action` on `path` into an [`ArchiveError::Io`].
    pub fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ArchiveError + 'a {
        move |source| ArchiveError::Io { action, path: path.to_owned(), source }
    }
}
