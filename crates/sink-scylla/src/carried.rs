//! The carry log: what each key move carried over from its old row, kept
//! until the checkpoint passes the move.
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
//! Layout: one partition per sink in `<checkpoint_table>_carried`, rows
//! `(sink, commit_lsn, ordinal, target)` with `carried map<text, blob>`:
//! each carried column (CQL name, quoted where needed) and its value in the
//! serialized form of its column's type. An entry is written once (again
//! only after an attempt that failed before any write of the move, with the
//! same values); once the checkpoint row passes its transaction, one range
//! delete removes it (transactions the checkpoint covers have commit LSNs
//! below it). The entries are loaded with the checkpoint at start. Cost: one
//! write per carried move, one range delete per checkpoint after them.

use std::collections::HashMap;

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

/// The sink's entries above its checkpoint, as stored.
#[derive(Debug, Default)]
pub struct CarryLog {
    entries: HashMap<CarryKey, CarriedCells>,
}

impl CarryLog {
    /// What the move `key` carried when it was first applied, if recorded.
    pub fn get(&self, key: &CarryKey) -> Option<&CarriedCells> {
        self.entries.get(key)
    }

    /// Records a stored entry.
    pub fn insert(&mut self, key: CarryKey, cells: CarriedCells) {
        self.entries.insert(key, cells);
    }

    /// Whether any entry belongs to a transaction the checkpoint `end_lsn`
    /// covers (its commit LSN is below it).
    pub fn holds_before(&self, end_lsn: Lsn) -> bool {
        self.entries.keys().any(|key| key.version.commit_lsn < end_lsn)
    }

    /// Forgets the entries [`holds_before`](Self::holds_before) finds, once
    /// they are deleted from the store.
    pub fn forget_before(&mut self, end_lsn: Lsn) {
        self.entries.retain(|key, _| key.version.commit_lsn >= end_lsn);
    }
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
    fn entries_go_once_the_checkpoint_covers_their_transaction() {
        let key = |commit_lsn: u64| CarryKey {
            version: Version { commit_lsn: Lsn(commit_lsn), ordinal: 1 },
            target: "ks.item".into(),
        };
        let mut log = CarryLog::default();
        log.insert(key(100), vec![("note".into(), b"long".to_vec())]);
        log.insert(key(200), Vec::new());
        assert!(!log.holds_before(Lsn(100)));
        assert!(log.holds_before(Lsn(108)));
        log.forget_before(Lsn(108));
        assert_eq!(log.get(&key(100)), None);
        assert_eq!(log.get(&key(200)), Some(&Vec::new()));
    }
}
