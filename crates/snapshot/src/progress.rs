//! How far a sink's snapshot got, stored beside its checkpoint
//! ([`pgfanout_core::Sink::store_snapshot_progress`]).
//!
//! Per table, one state, written only by the snapshot task of that sink and
//! persisted after every chunk the sink acknowledged:
//!
//! ```text
//!  (absent) ──first chunk applied──► Copying { after } ──────────────last chunk──► Done
//!     ▲     ──first chunk applied──► CopyingBlocks { before, file } ──last chunk──► Done
//!     └───────────── rebuild of the table (the entry is removed) ◄───────────────────┘
//! ```
//!
//! A table absent from the record has not been copied into the sink; one
//! in `Copying` resumes after `after`, one in `CopyingBlocks` at block
//! `before` of the same file (or starts over, after a rewrite), so chunks
//! the sink already holds are not read again. The stored form is JSON with
//! a version number.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::reader::KeyText;

/// The stored form's version, bumped on incompatible changes.
const PROGRESS_VERSION: u32 = 1;

/// One table's snapshot state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TableProgress {
    /// Chunks up to and including the row with key `after` are applied.
    Copying {
        /// The last applied row's key, in key order.
        after: KeyText,
        /// Chunks applied so far.
        chunks: u64,
        /// Rows written so far.
        rows: u64,
    },
    /// Chunks of heap blocks before `before` are applied (a table read by
    /// block range, see [`crate::table::BlockLayout`]).
    CopyingBlocks {
        /// The first block not applied yet.
        before: u64,
        /// The table's file when the copy began: after a rewrite the
        /// copy starts over.
        file: String,
        /// Chunks applied so far.
        chunks: u64,
        /// Rows written so far.
        rows: u64,
    },
    /// Every row is copied; the stream keeps the table current.
    Done {
        /// Chunks applied in all.
        chunks: u64,
        /// Rows written in all.
        rows: u64,
    },
}

/// A sink's snapshot progress over all its tables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotProgress {
    version: u32,
    /// By table (`schema.table`).
    pub tables: BTreeMap<String, TableProgress>,
}

/// A stored progress text that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error(
    "the stored snapshot progress cannot be read ({reason}); run `pgfanout rebuild --sink NAME` to copy the \
     sink's tables again"
)]
pub struct ProgressError {
    reason: String,
}

impl SnapshotProgress {
    /// Parses the stored text.
    pub fn parse(text: &str) -> Result<SnapshotProgress, ProgressError> {
        let progress: SnapshotProgress =
            serde_json::from_str(text).map_err(|err| ProgressError { reason: err.to_string() })?;
        if progress.version != PROGRESS_VERSION {
            return Err(ProgressError { reason: format!("version {} is not {PROGRESS_VERSION}", progress.version) });
        }
        Ok(progress)
    }

    /// The text to store.
    pub fn to_stored(&self) -> String {
        let stored = SnapshotProgress { version: PROGRESS_VERSION, tables: self.tables.clone() };
        serde_json::to_string(&stored).unwrap_or_default()
    }

    /// Whether `table` is fully copied.
    pub fn is_done(&self, table: &str) -> bool {
        matches!(self.tables.get(table), Some(TableProgress::Done { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_round_trips_and_refuses_what_it_cannot_read() {
        let mut progress = SnapshotProgress::default();
        progress.tables.insert(
            "public.a".into(),
            TableProgress::Copying { after: vec!["7".into(), "x'y".into()], chunks: 2, rows: 9 },
        );
        progress.tables.insert("public.b".into(), TableProgress::Done { chunks: 1, rows: 3 });
        progress.tables.insert(
            "public.c".into(),
            TableProgress::CopyingBlocks { before: 400, file: "16384".into(), chunks: 1, rows: 20_000 },
        );
        let text = progress.to_stored();
        let read = SnapshotProgress::parse(&text).unwrap();
        assert_eq!(read.tables, progress.tables);
        assert!(read.is_done("public.b") && !read.is_done("public.a") && !read.is_done("public.c"));
        assert!(!read.is_done("public.d"));
        let err = SnapshotProgress::parse(&text.replace("\"version\":1", "\"version\":9")).unwrap_err();
        assert!(err.to_string().contains("pgfanout rebuild"), "{err}");
        assert!(SnapshotProgress::parse("{").is_err());
    }
}
