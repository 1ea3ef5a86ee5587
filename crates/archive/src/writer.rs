//! The archive's single writer: appends transaction pieces to the active
//! segment, rolls segments, syncs, and removes old segments.
//!
//! Invariants:
//! - records are appended in stream order; a transaction's pieces never span
//!   two segments (segments roll only between transactions, and a reopened
//!   archive starts a new segment after cutting any unfinished transaction);
//! - a change is written at most once: a piece that comes again (the worker
//!   retries, or the slot re-sends after a crash) is skipped up to the last
//!   change already written, by commit LSN and ordinal;
//! - after [`Archive::sync`] returns under [`FsyncPolicy::Batch`], everything
//!   appended before it survives a power loss;
//! - a failed write is cut back off the file before the error is returned,
//!   so the file never keeps half a record that a later write would follow.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pgfanout_core::{Change, TableSchema};
use pgoutput::Lsn;

use crate::error::ArchiveError;
use crate::format::{self, PieceHeader, SEGMENT_HEADER_LEN};
use crate::segment::{self, IndexEntry, INDEX_INTERVAL_BYTES};

/// When the archive asks the OS to make appended records durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// `fsync` once per [`Archive::sync`] call, that is once per batch the
    /// archive's worker applies, before the batch is acknowledged: survives
    /// power loss; the cost is one `fsync` per batch, shared by its
    /// transactions.
    #[default]
    Batch,
    /// Never `fsync`; records reach the disk when the OS writes them back.
    /// Survives a crash of pgfanout, not of the machine: after a power loss
    /// the archive may lack transactions PostgreSQL no longer sends.
    Os,
}

/// Which old segments [`Archive::apply_retention`] removes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Remove the oldest segments while the archive is larger than this.
    pub max_bytes: Option<u64>,
    /// Remove segments whose last write is older than this.
    pub max_age: Option<Duration>,
}

/// How an archive is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveOptions {
    /// A segment is sealed and a new one started once it holds this many bytes
    /// (at the next transaction boundary).
    pub segment_bytes: u64,
    /// See [`FsyncPolicy`].
    pub fsync: FsyncPolicy,
    /// See [`Retention`].
    pub retention: Retention,
}

impl Default for ArchiveOptions {
    fn default() -> Self {
        ArchiveOptions { segment_bytes: 64 * 1024 * 1024, fsync: FsyncPolicy::Batch, retention: Retention::default() }
    }
}

/// What opening an archive found and repaired.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Bytes cut off the end of the last segment: a torn record, or the
    /// pieces of a transaction whose end was never written.
    pub cut_bytes: u64,
    /// Whether what was cut held a record with a checksum mismatch rather than
    /// only a short write.
    pub cut_corrupt: bool,
}

/// A sealed or active segment as the writer tracks it.
#[derive(Debug, Clone)]
struct SegmentInfo {
    sequence: u64,
    bytes: u64,
    first_commit_lsn: Option<Lsn>,
}

/// Where the writer is in the stream: the last change written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    commit_lsn: Lsn,
    /// Ordinal of the last change written of that transaction, if any.
    last_ordinal: Option<u32>,
    ended: bool,
}

/// The active segment.
struct Active {
    sequence: u64,
    file: File,
    index: File,
    len: u64,
    since_index: u64,
    /// Shapes defined in this segment, kept alive so that pointer equality
    /// stays meaningful, with their ids.
    schemas: Vec<(Arc<TableSchema>, u32)>,
}

/// The archive's writer. One per folder (a second writer would interleave).
pub struct Archive {
    dir: PathBuf,
    options: ArchiveOptions,
    /// Sealed segments, oldest first, then the active one if created.
    segments: Vec<SegmentInfo>,
    active: Option<Active>,
    position: Option<Position>,
    /// End LSN of the last whole transaction written.
    last_end_lsn: Option<Lsn>,
    /// The recorded start LSN (see [`Archive::start_lsn`]).
    start: Option<Lsn>,
    unsynced: bool,
    buffer: Vec<u8>,
    index_buffer: Vec<u8>,
}

impl Archive {
    /// Opens (creating if needed) the archive in `dir`: cuts a torn or
    /// unfinished tail off the last segment, rebuilds its index, and prepares
    /// a new segment for the next append.
    pub fn open(dir: &Path, options: ArchiveOptions) -> Result<(Archive, OpenReport), ArchiveError> {
        std::fs::create_dir_all(dir).map_err(ArchiveError::io("create", dir))?;
        let mut report = OpenReport::default();
        let mut segments = Vec::new();
        let sequences = segment::list_segments(dir)?;
        let mut position = None;
        let mut last_end_lsn = None;
        for (at, &sequence) in sequences.iter().enumerate() {
            let path = segment::segment_path(dir, sequence);
            let is_last = at + 1 == sequences.len();
            if !is_last {
                let first_commit_lsn = read_first_commit_lsn(dir, sequence)?;
                let bytes = std::fs::metadata(&path).map_err(ArchiveError::io("stat", &path))?.len();
                segments.push(SegmentInfo { sequence, bytes, first_commit_lsn });
                continue;
            }
            let bytes = segment::read_from(&path, 0)?;
            let scan = segment::scan(&path, &bytes)?;
            if scan.good_len < bytes.len() as u64 {
                report.cut_bytes = bytes.len() as u64 - scan.good_len;
                report.cut_corrupt = scan.corrupt_tail;
                tracing::warn!(
                    segment = %path.display(),
                    cut_bytes = report.cut_bytes,
                    corrupt = scan.corrupt_tail,
                    "cutting a torn or unfinished tail off the archive; PostgreSQL sends those transactions again"
                );
                let file = OpenOptions::new().write(true).open(&path).map_err(ArchiveError::io("open", &path))?;
                file.set_len(scan.good_len).map_err(ArchiveError::io("truncate", &path))?;
                file.sync_all().map_err(ArchiveError::io("sync", &path))?;
            }
            let mut index = Vec::new();
            for entry in &scan.index {
                entry.encode(&mut index);
            }
            let index_path = segment::index_path(dir, sequence);
            write_synced(&index_path, &index)?;
            if scan.last_transaction.is_none() {
                // Nothing whole in it: it only held what was cut.
                remove_segment(dir, sequence)?;
            } else {
                segments.push(SegmentInfo { sequence, bytes: scan.good_len, first_commit_lsn: scan.first_commit_lsn });
            }
            if let Some((commit_lsn, end_lsn)) = scan.last_transaction {
                position = Some(Position { commit_lsn, last_ordinal: None, ended: true });
                last_end_lsn = Some(end_lsn);
            }
        }
        // A removed last segment leaves the previous one's end as the position.
        if position.is_none() {
            if let Some(previous) = segments.last() {
                let path = segment::segment_path(dir, previous.sequence);
                let bytes = segment::read_from(&path, 0)?;
                let scan = segment::scan(&path, &bytes)?;
                if let Some((commit_lsn, end_lsn)) = scan.last_transaction {
                    position = Some(Position { commit_lsn, last_ordinal: None, ended: true });
                    last_end_lsn = Some(end_lsn);
                }
            }
        }
        sync_dir(dir)?;
        let start = segment::read_start(dir)?;
        let archive = Archive {
            dir: dir.to_owned(),
            options,
            segments,
            active: None,
            position,
            last_end_lsn,
            start,
            unsynced: false,
            buffer: Vec::new(),
            index_buffer: Vec::new(),
        };
        Ok((archive, report))
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// End LSN of the last whole transaction archived: every transaction
    /// ending at or before it is in the archive (or was never routed).
    pub fn last_end_lsn(&self) -> Option<Lsn> {
        self.last_end_lsn
    }

    /// Commit LSN of the oldest transaction the archive holds.
    pub fn oldest_commit_lsn(&self) -> Option<Lsn> {
        self.segments.iter().find_map(|segment| segment.first_commit_lsn)
    }

    /// The oldest LSN a replay may start from: every transaction committed
    /// at or after it is held. The stream position the archive started at
    /// (see [`Archive::record_start`]) until retention removes a segment,
    /// then the oldest commit LSN held; without either, the oldest commit LSN.
    pub fn start_lsn(&self) -> Option<Lsn> {
        self.start.or_else(|| self.oldest_commit_lsn())
    }

    /// Records where the stream starts for an archive that has never held a
    /// transaction: the slot sends every transaction committed after `lsn`,
    /// so a replay from any LSN at or after it misses nothing, even before
    /// the first routed transaction. Does nothing for an archive with history.
    pub fn record_start(&mut self, lsn: Lsn) -> Result<(), ArchiveError> {
        if self.start.is_some() || self.position.is_some() {
            return Ok(());
        }
        segment::write_start(&self.dir, lsn)?;
        self.start = Some(lsn);
        Ok(())
    }

    /// Bytes of every segment.
    pub fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|segment| segment.bytes).sum()
    }

    /// Appends a piece of a transaction: `changes` (each with its table's
    /// shape) under `header`. Changes already written (same commit LSN, an
    /// ordinal at or below the last one written) and whole transactions
    /// already written are skipped. Returns the bytes written.
    pub fn append(&mut self, header: PieceHeader, changes: &[&Change]) -> Result<u64, ArchiveError> {
        let mut skip = 0;
        if let Some(position) = self.position {
            if header.commit_lsn < position.commit_lsn || (header.commit_lsn == position.commit_lsn && position.ended) {
                return Ok(0);
            }
            if header.commit_lsn == position.commit_lsn {
                if let Some(last) = position.last_ordinal {
                    skip = changes.iter().take_while(|change| change.ordinal <= last).count();
                }
            }
        }
        let changes = &changes[skip..];
        if changes.is_empty() && !header.ends_transaction {
            return Ok(0);
        }
        let starts_transaction = self.position.is_none_or(|position| position.commit_lsn != header.commit_lsn);
        if starts_transaction {
            self.roll_if_full()?;
        }
        self.ensure_active()?;
        let Some(active) = self.active.as_mut() else { return Err(no_active_segment(&self.dir)) };
        let start = active.len;
        self.buffer.clear();
        self.index_buffer.clear();
        let mut ids = Vec::with_capacity(changes.len());
        let mut since_index = active.since_index;
        let known_schemas = active.schemas.len();
        // Changes come in runs of one table: the previous change's shape is checked first.
        let mut previous: Option<(&Arc<TableSchema>, u32)> = None;
        for change in changes {
            if let Some((_, id)) = previous.filter(|(table, _)| Arc::ptr_eq(table, &change.table)) {
                ids.push(id);
                continue;
            }
            let id = match active.schemas.iter().find(|(known, _)| same_shape(known, &change.table)) {
                Some((_, id)) => *id,
                None => {
                    let id = active.schemas.len() as u32;
                    let offset = start + self.buffer.len() as u64;
                    format::frame(&mut self.buffer, |body| format::encode_schema(id, &change.table, body));
                    IndexEntry::Schema { offset }.encode(&mut self.index_buffer);
                    active.schemas.push((change.table.clone(), id));
                    id
                }
            };
            previous = Some((&change.table, id));
            ids.push(id);
        }
        let piece_offset = start + self.buffer.len() as u64;
        if starts_transaction && since_index >= INDEX_INTERVAL_BYTES {
            IndexEntry::Transaction { commit_lsn: header.commit_lsn, offset: piece_offset }
                .encode(&mut self.index_buffer);
            since_index = 0;
        }
        format::frame(&mut self.buffer, |body| {
            format::encode_piece(&header, ids.iter().copied().zip(changes.iter().copied()), body)
        });
        let piece_bytes = self.buffer.len() as u64 - (piece_offset - start);
        if piece_bytes > u64::from(format::MAX_BODY_BYTES) {
            active.schemas.truncate(known_schemas);
            return Err(ArchiveError::RecordTooLarge { commit_lsn: header.commit_lsn, bytes: piece_bytes });
        }
        let written = self.buffer.len() as u64;
        let path = segment::segment_path(&self.dir, active.sequence);
        #[cfg(debug_assertions)]
        crash_mid_frame_if_asked(&mut active.file, &self.buffer);
        if let Err(source) = active.file.write_all(&self.buffer) {
            // Cut what may have reached the file, so the next append follows a whole record.
            let _ = active.file.set_len(start);
            active.schemas.truncate(known_schemas);
            return Err(ArchiveError::Io { action: "write", path, source });
        }
        if !self.index_buffer.is_empty() {
            let index_path = segment::index_path(&self.dir, active.sequence);
            active.index.write_all(&self.index_buffer).map_err(ArchiveError::io("write", &index_path))?;
        }
        active.len += written;
        active.since_index = since_index.saturating_add(written);
        let sequence = active.sequence;
        let info = self.segments.last_mut().filter(|segment| segment.sequence == sequence);
        if let Some(info) = info {
            info.bytes += written;
            if header.ends_transaction {
                info.first_commit_lsn.get_or_insert(header.commit_lsn);
            }
        }
        self.position = Some(Position {
            commit_lsn: header.commit_lsn,
            last_ordinal: changes.last().map(|change| change.ordinal).or(self.position.and_then(|position| {
                (position.commit_lsn == header.commit_lsn).then_some(position.last_ordinal).flatten()
            })),
            ended: header.ends_transaction,
        });
        if header.ends_transaction {
            self.last_end_lsn = Some(header.end_lsn);
        }
        self.unsynced = true;
        Ok(written)
    }

    /// Whether a transaction has pieces written but not its end.
    pub fn has_open_transaction(&self) -> Option<Lsn> {
        self.position.filter(|position| !position.ended).map(|position| position.commit_lsn)
    }

    /// Makes everything appended so far durable, per the [`FsyncPolicy`].
    pub fn sync(&mut self) -> Result<(), ArchiveError> {
        if !self.unsynced || self.options.fsync == FsyncPolicy::Os {
            return Ok(());
        }
        if let Some(active) = &self.active {
            let path = segment::segment_path(&self.dir, active.sequence);
            active.file.sync_data().map_err(ArchiveError::io("sync", &path))?;
        }
        self.unsynced = false;
        Ok(())
    }

    /// Removes whole sealed segments, oldest first, that the [`Retention`]
    /// no longer keeps. The active segment always stays. Returns how many went.
    pub fn apply_retention(&mut self, now: SystemTime) -> Result<usize, ArchiveError> {
        let retention = self.options.retention;
        let mut removed = 0;
        let active = self.active.as_ref().map(|active| active.sequence);
        while self.segments.len() > 1 || (self.segments.len() == 1 && active.is_none()) {
            let oldest = self.segments[0].sequence;
            if Some(oldest) == active {
                break;
            }
            let too_big = retention.max_bytes.is_some_and(|max| self.total_bytes() > max);
            let too_old = match retention.max_age {
                Some(max_age) => {
                    let path = segment::segment_path(&self.dir, oldest);
                    let modified = std::fs::metadata(&path)
                        .and_then(|metadata| metadata.modified())
                        .map_err(ArchiveError::io("stat", &path))?;
                    now.duration_since(modified).is_ok_and(|age| age > max_age)
                }
                None => false,
            };
            // The last whole transaction stays, so that a reopened archive knows where it is.
            if !(too_big || too_old) || (self.segments.len() == 1 && self.position.is_some()) {
                break;
            }
            // The start moves first: a crash between the two leaves a start
            // later than needed, never one before a removed transaction.
            let next_start = self.segments[1..]
                .iter()
                .find_map(|segment| segment.first_commit_lsn)
                .or(self.last_end_lsn)
                .unwrap_or_default();
            if self.start.is_none_or(|start| start < next_start) {
                segment::write_start(&self.dir, next_start)?;
                self.start = Some(next_start);
            }
            remove_segment(&self.dir, oldest)?;
            self.segments.remove(0);
            removed += 1;
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Seals the active segment once it is full; the next append starts a new one.
    fn roll_if_full(&mut self) -> Result<(), ArchiveError> {
        let full = self.active.as_ref().is_some_and(|active| active.len >= self.options.segment_bytes);
        if full {
            self.seal()?;
        }
        Ok(())
    }

    /// Syncs and closes the active segment and its index.
    fn seal(&mut self) -> Result<(), ArchiveError> {
        if let Some(active) = self.active.take() {
            let path = segment::segment_path(&self.dir, active.sequence);
            if self.options.fsync == FsyncPolicy::Batch {
                active.file.sync_data().map_err(ArchiveError::io("sync", &path))?;
                let index_path = segment::index_path(&self.dir, active.sequence);
                active.index.sync_data().map_err(ArchiveError::io("sync", &index_path))?;
            }
            self.unsynced = false;
        }
        Ok(())
    }

    /// Creates the active segment if there is none.
    fn ensure_active(&mut self) -> Result<(), ArchiveError> {
        if self.active.is_none() {
            let sequence = self.segments.last().map_or(0, |segment| segment.sequence + 1);
            let path = segment::segment_path(&self.dir, sequence);
            let mut file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .map_err(ArchiveError::io("create", &path))?;
            file.write_all(&format::segment_header()).map_err(ArchiveError::io("write", &path))?;
            let index_path = segment::index_path(&self.dir, sequence);
            let index = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&index_path)
                .map_err(ArchiveError::io("create", &index_path))?;
            if self.options.fsync == FsyncPolicy::Batch {
                file.sync_data().map_err(ArchiveError::io("sync", &path))?;
                sync_dir(&self.dir)?;
            }
            self.segments.push(SegmentInfo { sequence, bytes: SEGMENT_HEADER_LEN, first_commit_lsn: None });
            self.active = Some(Active {
                sequence,
                file,
                index,
                len: SEGMENT_HEADER_LEN,
                since_index: u64::MAX,
                schemas: Vec::new(),
            });
        }
        Ok(())
    }
}

/// Environment variable, for tests only: abort the process in the middle of
/// writing the frame of the Nth append (counting from 1), after half of its
/// bytes reached the file, as a crash or power loss mid-write would leave it.
/// Debug builds only (`cfg(debug_assertions)`, which `cargo test` builds):
/// a release binary has no test hook to trip by accident, and no feature
/// flag has to be remembered to run the test.
pub const CRASH_MID_FRAME_ENV: &str = "PGFANOUT_TEST_ARCHIVE_CRASH_AT_APPEND";

/// See [`CRASH_MID_FRAME_ENV`]; does nothing unless the variable is set.
#[cfg(debug_assertions)]
fn crash_mid_frame_if_asked(file: &mut File, frame: &[u8]) {
    static CRASH_AT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    static APPENDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let Some(crash_at) = *CRASH_AT.get_or_init(|| std::env::var(CRASH_MID_FRAME_ENV).ok()?.parse().ok()) else {
        return;
    };
    if APPENDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 == crash_at {
        let _ = file.write_all(&frame[..frame.len() / 2]);
        let _ = file.sync_data();
        tracing::error!(append = crash_at, "aborting mid-frame as {CRASH_MID_FRAME_ENV} asks (tests only)");
        std::process::abort();
    }
}

/// The error for an active segment missing right after its creation (cannot happen).
fn no_active_segment(dir: &Path) -> ArchiveError {
    ArchiveError::Io {
        action: "create a segment in",
        path: dir.to_owned(),
        source: std::io::Error::other("no active segment"),
    }
}

/// Whether two shapes archive the same way (the type registry is not archived).
fn same_shape(a: &Arc<TableSchema>, b: &Arc<TableSchema>) -> bool {
    Arc::ptr_eq(a, b)
        || (a.oid == b.oid && a.table == b.table && a.replica_identity == b.replica_identity && a.columns == b.columns)
}

/// Commit LSN of the first transaction of a sealed segment, from its index
/// (whose first transaction entry is the segment's first transaction), or
/// by scanning when the index is missing.
fn read_first_commit_lsn(dir: &Path, sequence: u64) -> Result<Option<Lsn>, ArchiveError> {
    let index_path = segment::index_path(dir, sequence);
    if let Ok(index) = std::fs::read(&index_path) {
        let first = IndexEntry::decode_all(&index).into_iter().find_map(|entry| match entry {
            IndexEntry::Transaction { commit_lsn, .. } => Some(commit_lsn),
            IndexEntry::Schema { .. } => None,
        });
        if first.is_some() {
            return Ok(first);
        }
    }
    let path = segment::segment_path(dir, sequence);
    let bytes = segment::read_from(&path, 0)?;
    Ok(segment::scan(&path, &bytes)?.first_commit_lsn)
}

fn remove_segment(dir: &Path, sequence: u64) -> Result<(), ArchiveError> {
    let path = segment::segment_path(dir, sequence);
    std::fs::remove_file(&path).map_err(ArchiveError::io("remove", &path))?;
    let index_path = segment::index_path(dir, sequence);
    match std::fs::remove_file(&index_path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(ArchiveError::Io { action: "remove", path: index_path, source: err })
        }
        _ => Ok(()),
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ArchiveError> {
    let mut file = File::create(path).map_err(ArchiveError::io("create", path))?;
    file.write_all(bytes).map_err(ArchiveError::io("write", path))?;
    file.sync_all().map_err(ArchiveError::io("sync", path))
}

/// Makes file creations and removals in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), ArchiveError> {
    File::open(dir).and_then(|dir| dir.sync_all()).map_err(ArchiveError::io("sync", dir))
}
