//! The carry log: what each key move carried over from its old row, kept
//! as long as the move may be applied again (after a crash, or by a replay).
//!
//! Why: a key move under identity DEFAULT ([`crate::encode::CarriedMove`])
//! takes its unchanged TOAST values from the row under the old key, which
//! it then deletes. After a crash the changes after the checkpoint are
//! applied again, with write timestamps above every earlier one
//! ([`crate::timestamp`]). Among them, a change that deletes key K (or moves
//! it away) and, later, a move *into* K: applied again, the first removes
//! what the move wrote under K the first time, and the move finds its old
//! row gone — the value would exist nowhere. Write timestamps cannot stay
//! the same across a restart (they follow first sight and wall-clock time),
//! so the move instead finds what it carried the first time here.
//!
//! Why that is exact: a move's entry is written before any of its writes,
//! so an old row is deleted only once its values are durable here. The
//! first attempt that stores the entry reads correct rows: an attempt before
//! it wrote nothing of the move nor of anything after it (a batch with a key
//! move is one lane, applied in order), and this attempt applied every
//! change since the checkpoint before the move again, in order, with the
//! earlier attempts' timestamps (a retry) or newer ones (after a restart),
//! so their writes end as the first time. Every later attempt writes
//! the entry's values under the new key at the move's timestamp of that
//! attempt, and the changes after the move follow it again in order, so the
//! last state is PostgreSQL's.
//!
//! How long an entry is kept: as long as a change may be applied again.
//! Without a change archive only a crash does that, to the changes after
//! the checkpoint: once the checkpoint row passes a move's transaction, its
//! entry goes. With an archive, `pgfanout replay --from L` re-applies any
//! archived transaction, in order, with newer timestamps again: the same
//! delete-then-move-into-K pair loses the value unless the move finds its
//! entry. So entries are kept until both the checkpoint and the archive's
//! start ([`pgfanout_core::ReplayHorizon`], which retention moves forward)
//! pass them ([`forget_below`]); a replay then writes exactly what each
//! move carried the first time, whatever the replay removed before it.
//! A `rebuild` leaves the entries alone: they record what PostgreSQL's rows
//! held at each move, which a re-copy does not change.
//!
//! Layout: one partition per sink in `<checkpoint_table>_carried`, rows
//! `(sink, commit_lsn, ordinal, target)` with `carried map<text, blob>`:
//! each carried column (CQL name, quoted where needed) and its value in the
//! serialized form of its column's type. An entry is written once (again
//! only after an attempt that failed before any write of the move, with the
//! same values); one range delete removes the entries below the bound
//! (transactions the checkpoint covers have commit LSNs below it).
//!
//! Memory: the values stay in the table. The sink holds only the newest
//! recorded version and the oldest commit LSN held ([`CarryLog`]), loaded
//! at start: a move newer than every entry (every move the stream sends
//! for the first time) reads nothing from the log; a move applied again
//! reads its entry by key. Cost: one write per carried move, one read per
//! re-applied one, one range delete per move of the bound past an entry.

use pgfanout_core::{Lsn, Version};
use scylla::deserialize::value::DeserializeValue;
use scylla::deserialize::FrameSlice;
use scylla::frame::response::result::ColumnType;
use scylla::serialize::value::SerializeValue;
use scylla::serialize::writers::CellWriter;
use scylla::value::CqlValue;

/// The table holding the carry log, beside the checkpoint table.
pub fn carried_table(checkpoint_table: &str) -> String {
    format!("{checkpoint_table}_carried")
}

/// `CREATE TABLE IF NOT EXISTS` of the carry log `ks.table`.
pub fn create_cql(qualified: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {qualified} (sink text, commit_lsn bigint, ordinal bigint, target text, \
         carried map<text, blob>, PRIMARY KEY ((sink), commit_lsn, ordinal, target))"
    )
}

/// One key move of one target table: the change's version and the table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CarryKey {
    /// The move's version.
    pub version: Version,
    /// The target table, `ks.table`.
    pub target: String,
}

/// Carried columns and their serialized values.
pub type CarriedCells = Vec<(String, Vec<u8>)>;

/// What the sink knows of its carry log without reading it: which moves
/// may have an entry, and whether any entry lies below a bound.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CarryLog {
    /// The newest version that has (or may have) an entry.
    newest: Option<Version>,
    /// The lowest commit LSN an entry may have; `None` when there is none.
    oldest: Option<Lsn>,
}

impl CarryLog {
    /// The log as stored: the oldest entry's commit LSN and the newest
    /// entry's version, `None` for an empty log.
    pub fn from_stored(oldest: Option<Lsn>, newest: Option<Version>) -> Self {
        CarryLog { newest, oldest }
    }

    /// Whether a move of `version` may have an entry: only a move at or
    /// before the newest one recorded can (moves are recorded in stream
    /// order; a move applied again is at or before it).
    pub fn may_hold(&self, version: Version) -> bool {
        self.newest.is_some_and(|newest| version <= newest)
    }

    /// Notes an entry of `version`, before it is written: a write whose
    /// answer is lost may have stored it.
    pub fn recording(&mut self, version: Version) {
        self.newest = self.newest.max(Some(version));
        self.oldest = Some(self.oldest.map_or(version.commit_lsn, |oldest| oldest.min(version.commit_lsn)));
    }

    /// Whether an entry may belong to a transaction committed below `bound`.
    pub fn holds_before(&self, bound: Lsn) -> bool {
        self.oldest.is_some_and(|oldest| oldest < bound)
    }

    /// Notes that the entries below `bound` are deleted from the store.
    pub fn forget_before(&mut self, bound: Lsn) {
        let left = self.newest.is_some_and(|newest| newest.commit_lsn >= bound);
        self.oldest = left.then(|| self.oldest.map_or(bound, |oldest| oldest.max(bound)));
    }
}

/// Below which commit LSN entries go once the checkpoint `end_lsn` is
/// stored: the checkpoint's, or the archive's start when a change archive
/// can replay from before it (`replayable_from`; [`Lsn::ZERO`] while it
/// holds nothing: then nothing goes).
pub fn forget_below(end_lsn: Lsn, replayable_from: Option<Lsn>) -> Lsn {
    replayable_from.map_or(end_lsn, |from| end_lsn.min(from))
}

/// An LSN or ordinal as a CQL `bigint`; LSNs stay below 2^63 (8 EiB of WAL).
pub fn as_bigint(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// `value` serialized as a cell of type `typ` (without the length prefix).
pub fn cell_bytes(value: &CqlValue, typ: &ColumnType<'_>) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    value.serialize(typ, CellWriter::new_without_size(&mut bytes)).map_err(|err| err.to_string())?;
    Ok(bytes)
}

/// The value [`cell_bytes`] serialized.
pub fn cell_value(bytes: &[u8], typ: &ColumnType<'_>) -> Result<CqlValue, String> {
    CqlValue::deserialize(typ, Some(FrameSlice::new_borrowed(bytes))).map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use scylla::frame::response::result::{CollectionType, NativeType};
    use scylla::value::CqlDecimal;

    #[test]
    fn values_round_trip_through_their_cell_bytes() {
        let list = ColumnType::Collection {
            frozen: false,
            typ: CollectionType::List(Box::new(ColumnType::Native(NativeType::Text))),
        };
        let map = ColumnType::Collection {
            frozen: false,
            typ: CollectionType::Map(
                Box::new(ColumnType::Native(NativeType::Text)),
                Box::new(ColumnType::Native(NativeType::Int)),
            ),
        };
        let cases = [
            (CqlValue::Text("a long note".repeat(1_000)), ColumnType::Native(NativeType::Text)),
            (CqlValue::Blob(vec![0, 1, 255]), ColumnType::Native(NativeType::Blob)),
            (CqlValue::BigInt(-7), ColumnType::Native(NativeType::BigInt)),
            (
                CqlValue::Decimal(CqlDecimal::from_signed_be_bytes_slice_and_exponent(&[0x30, 0x39], 2)),
                ColumnType::Native(NativeType::Decimal),
            ),
            (CqlValue::List(vec![CqlValue::Text("x".into()), CqlValue::Text(String::new())]), list),
            (CqlValue::Map(vec![(CqlValue::Text("k".into()), CqlValue::Int(3))]), map),
        ];
        for (value, typ) in cases {
            let bytes = cell_bytes(&value, &typ).unwrap();
            assert_eq!(cell_value(&bytes, &typ).unwrap(), value, "{typ:?}");
        }
        assert!(cell_bytes(&CqlValue::Int(1), &ColumnType::Native(NativeType::Text)).is_err());
    }

    #[test]
    fn only_moves_at_or_before_the_newest_entry_read_the_log() {
        let version = |commit_lsn: u64, ordinal: u32| Version { commit_lsn: Lsn(commit_lsn), ordinal };
        let mut log = CarryLog::default();
        assert!(!log.may_hold(version(100, 1)));
        log.recording(version(100, 1));
        log.recording(version(200, 3));
        assert!(log.may_hold(version(100, 1)) && log.may_hold(version(200, 3)) && log.may_hold(version(150, 0)));
        assert!(!log.may_hold(version(200, 4)));
        let stored = CarryLog::from_stored(Some(Lsn(100)), Some(version(200, 3)));
        assert_eq!(stored, log);
    }

    #[test]
    fn entries_go_once_the_checkpoint_covers_their_transaction() {
        let version = |commit_lsn: u64| Version { commit_lsn: Lsn(commit_lsn), ordinal: 1 };
        let mut log = CarryLog::default();
        log.recording(version(100));
        log.recording(version(200));
        assert!(!log.holds_before(Lsn(100)));
        assert!(log.holds_before(Lsn(108)));
        log.forget_before(Lsn(108));
        assert!(!log.holds_before(Lsn(108)));
        assert!(log.holds_before(Lsn(208)), "the entry at 200 is still there");
        log.forget_before(Lsn(208));
        assert!(!log.holds_before(Lsn(u64::MAX)), "no entry left");
        assert!(log.may_hold(version(200)), "an entry deleted may still be asked for: it is then missing");
    }

    #[test]
    fn with_an_archive_entries_stay_until_the_archive_cannot_replay_them() {
        // No archive: the checkpoint alone.
        assert_eq!(forget_below(Lsn(500), None), Lsn(500));
        // An archive starting before the checkpoint keeps what it can replay.
        assert_eq!(forget_below(Lsn(500), Some(Lsn(300))), Lsn(300));
        // An archive holding nothing yet (start 0): nothing goes.
        assert_eq!(forget_below(Lsn(500), Some(Lsn::ZERO)), Lsn::ZERO);
        // Retention past the checkpoint: the checkpoint still bounds it.
        assert_eq!(forget_below(Lsn(500), Some(Lsn(900))), Lsn(500));
    }
}
