//! Splitting a batch into lanes that a sink may apply concurrently.
//!
//! Invariant: all changes to one row land in the same lane, in their
//! original order, so applying lanes in parallel never reorders a key.
//!
//! A row is recognised by its table and its replica identity key, which for
//! tables with identity DEFAULT or INDEX is stable across the row's life. Two
//! cases cannot be split safely and keep the batch in one lane:
//! - an update that changes the key (the old and the new key must stay
//!   ordered with every other change to either of them);
//! - a table with identity FULL, whose "key" is every column and so changes
//!   with each update: its changes all go to one lane, chosen by table;
//! - a truncate, which must come after every earlier change to its table and
//!   before every later one, whatever their keys.
//!
//! A sink may name further objects a change writes besides its own row
//! ([`crate::Sink::related_lane_keys`]: a graph node that a foreign key
//! merges). Changes that share a row or any such object form one group, kept
//! in one lane in stream order, so a delete of a node never races a write
//! that merges it.

use std::hash::{BuildHasher, Hash};

use pgoutput::ReplicaIdentity;

use crate::model::{ChangeOp, ColumnValue, Row};
use crate::sink::ChangeRef;

/// Splits `changes` into at most `lanes` non-empty lanes, each in original
/// order. Returns a single lane when `lanes <= 1` or the batch cannot be
/// split (see the module docs).
pub fn split_into_lanes<'a>(changes: Vec<ChangeRef<'a>>, lanes: usize) -> Vec<Vec<ChangeRef<'a>>> {
    split_into_lanes_with(changes, lanes, |_, _| {})
}

/// [`split_into_lanes`], where `related(change, keys)` pushes the hashes of
/// further objects `change` writes: changes sharing a row or one of those
/// keys stay in one lane, in original order.
pub fn split_into_lanes_with<'a>(
    changes: Vec<ChangeRef<'a>>,
    lanes: usize,
    related: impl Fn(&ChangeRef<'_>, &mut Vec<u64>),
) -> Vec<Vec<ChangeRef<'a>>> {
    if lanes <= 1 || changes.len() <= 1 || changes.iter().any(|change| changes_key(change) || is_truncate(change)) {
        return vec![changes];
    }
    // A fixed seed: the same key maps to the same lane in every batch.
    let hasher = foldhash::fast::FixedState::with_seed(LANE_HASH_SEED);
    let mut row_hashes = Vec::with_capacity(changes.len());
    // (change, key) for each further object a change writes, in change order.
    let mut related_keys: Vec<(usize, u64)> = Vec::new();
    let mut keys = Vec::new();
    for (index, change) in changes.iter().enumerate() {
        row_hashes.push(hasher.hash_one(LaneKey(change)));
        keys.clear();
        related(change, &mut keys);
        related_keys.extend(keys.iter().map(|&key| (index, key)));
    }
    // Without related objects a row's own hash places it: equal keys hash
    // alike, so they share a lane, in order.
    let group_hashes = match related_keys.is_empty() {
        true => row_hashes,
        false => group_by_shared_keys(&row_hashes, &related_keys),
    };
    let per_lane = changes.len() / lanes + 1;
    let mut split: Vec<Vec<ChangeRef<'a>>> = (0..lanes).map(|_| Vec::with_capacity(per_lane)).collect();
    for (change, group_hash) in changes.into_iter().zip(group_hashes) {
        // Lane count fits in u64; the remainder is below `lanes`.
        split[(group_hash % lanes as u64) as usize].push(change);
    }
    split.retain(|lane| !lane.is_empty());
    split
}

/// The seed of the lane hash: any constant, fixed so that a key's lane
/// never depends on the process.
const LANE_HASH_SEED: u64 = 0x6c61_6e65_7370_6c69;

/// Each change's group hash: changes sharing a row (equal `row_hashes`) or
/// one of `related_keys` form one group (union-find), each taking the row
/// hash of its first change.
fn group_by_shared_keys(row_hashes: &[u64], related_keys: &[(usize, u64)]) -> Vec<u64> {
    let mut parent: Vec<usize> = (0..row_hashes.len()).collect();
    let mut first_with: std::collections::HashMap<u64, usize, foldhash::fast::FixedState> =
        std::collections::HashMap::with_capacity_and_hasher(row_hashes.len(), Default::default());
    let mut related = related_keys.iter().peekable();
    for (index, &row_hash) in row_hashes.iter().enumerate() {
        let own_related = std::iter::from_fn(|| related.next_if(|&&(of, _)| of == index).map(|&(_, key)| key));
        for key in std::iter::once(row_hash).chain(own_related) {
            let first = *first_with.entry(key).or_insert(index);
            let (a, b) = (root(&mut parent, first), root(&mut parent, index));
            // The smaller index is the root: a group's root is its first change.
            parent[a.max(b)] = a.min(b);
        }
    }
    (0..row_hashes.len()).map(|index| row_hashes[root(&mut parent, index)]).collect()
}

/// The first change of `index`'s group (path halving keeps lookups short).
fn root(parent: &mut [usize], mut index: usize) -> usize {
    while parent[index] != index {
        parent[index] = parent[parent[index]];
        index = parent[index];
    }
    index
}

/// What identifies the row a change touches, hashed without allocating:
/// the table, then (unless identity FULL puts the whole table in one lane)
/// each key column's bytes.
struct LaneKey<'a>(&'a ChangeRef<'a>);

impl Hash for LaneKey<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let table = &self.0.change.table;
        table.table.hash(state);
        if table.replica_identity == ReplicaIdentity::Full {
            return;
        }
        // A truncate never reaches here: it keeps its batch in one lane.
        let Some(row) = self.0.change.identity_row() else { return };
        for position in table.key_positions() {
            row.get(position).and_then(ColumnValue::as_bytes).unwrap_or(&[]).hash(state);
        }
    }
}

fn is_truncate(change: &ChangeRef<'_>) -> bool {
    matches!(change.change.op, ChangeOp::Truncate)
}

/// Whether `change` is an update that moves its row to another key.
fn changes_key(change: &ChangeRef<'_>) -> bool {
    let ChangeOp::Update { old: Some(old), new } = &change.change.op else { return false };
    change.change.table.replica_identity != ReplicaIdentity::Full && key_of(change, old) != key_of(change, new)
}

fn key_of<'a>(change: &ChangeRef<'_>, row: &'a Row) -> Vec<Option<&'a [u8]>> {
    change.change.table.key_positions().map(|position| row.get(position).and_then(ColumnValue::as_bytes)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Change, ColumnSchema, TableName, TableSchema, Transaction};
    use bytes::Bytes;
    use pgoutput::{Lsn, Oid, PgTimestamp, Xid};
    use proptest::prelude::*;
    use std::sync::Arc;

    fn table(identity: ReplicaIdentity) -> Arc<TableSchema> {
        Arc::new(TableSchema {
            types: Default::default(),
            oid: Oid(1),
            table: TableName::new("public", "t"),
            replica_identity: identity,
            columns: vec![
                ColumnSchema { name: "id".into(), type_oid: Oid(23), is_key: true },
                ColumnSchema { name: "v".into(), type_oid: Oid(23), is_key: identity == ReplicaIdentity::Full },
            ],
        })
    }

    fn value(text: String) -> ColumnValue {
        ColumnValue::Text(Bytes::from(text))
    }

    /// One transaction per change; the change's value is its sequence number.
    fn transactions(table: &Arc<TableSchema>, ops: &[(u8, Option<u8>)]) -> Vec<Transaction> {
        ops.iter()
            .enumerate()
            .map(|(sequence, (key, moved_to))| {
                let new_key = moved_to.unwrap_or(*key);
                let new = vec![value(new_key.to_string()), value(sequence.to_string())];
                let old = moved_to.map(|_| vec![value(key.to_string()), ColumnValue::Null]);
                Transaction {
                    xid: Xid(1),
                    commit_lsn: Lsn(sequence as u64 * 10),
                    end_lsn: Lsn(sequence as u64 * 10 + 5),
                    commit_time: PgTimestamp(0),
                    changes: vec![Change { table: table.clone(), op: ChangeOp::Update { old, new }, ordinal: 0 }],
                }
            })
            .collect()
    }

    fn sequence_of(change: &ChangeRef<'_>) -> u64 {
        change.transaction.commit_lsn.0 / 10
    }

    proptest! {
        /// Random updates to few keys: every key's changes stay in one lane,
        /// in their original order, and nothing is lost or duplicated.
        #[test]
        fn per_key_order_holds_in_any_lane_count(
            keys in proptest::collection::vec(0u8..6, 1..200),
            lanes in 1usize..16,
        ) {
            let table = table(ReplicaIdentity::Default);
            let ops: Vec<_> = keys.iter().map(|k| (*k, None)).collect();
            let transactions = transactions(&table, &ops);
            let refs: Vec<_> =
                transactions.iter().map(|t| ChangeRef { transaction: t, change: &t.changes[0] }).collect();
            let split = split_into_lanes(refs, lanes);
            prop_assert!(split.len() <= lanes.max(1));
            let mut seen = Vec::new();
            for key in 0u8..6 {
                let holding: Vec<_> = split
                    .iter()
                    .filter(|lane| lane.iter().any(|c| keys[sequence_of(c) as usize] == key))
                    .collect();
                prop_assert!(holding.len() <= 1, "key {} is in {} lanes", key, holding.len());
                if let Some(lane) = holding.first() {
                    let order: Vec<u64> =
                        lane.iter().filter(|c| keys[sequence_of(c) as usize] == key).map(sequence_of).collect();
                    prop_assert!(order.windows(2).all(|w| w[0] < w[1]), "key {} reordered: {:?}", key, order);
                    seen.extend(order);
                }
            }
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..keys.len() as u64).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_key_change_keeps_the_batch_in_one_lane() {
        let table = table(ReplicaIdentity::Default);
        let transactions = transactions(&table, &[(1, None), (2, Some(3)), (3, None), (4, None)]);
        let refs: Vec<_> = transactions.iter().map(|t| ChangeRef { transaction: t, change: &t.changes[0] }).collect();
        let split = split_into_lanes(refs, 8);
        assert_eq!(split.len(), 1);
        assert_eq!(split[0].iter().map(sequence_of).collect::<Vec<_>>(), [0, 1, 2, 3]);
    }

    #[test]
    fn identity_full_tables_stay_in_one_lane() {
        let table = table(ReplicaIdentity::Full);
        let ops: Vec<_> = (0..50).map(|i| (i as u8, None)).collect();
        let transactions = transactions(&table, &ops);
        let refs: Vec<_> = transactions.iter().map(|t| ChangeRef { transaction: t, change: &t.changes[0] }).collect();
        assert_eq!(split_into_lanes(refs, 8).len(), 1);
    }

    #[test]
    fn distinct_keys_spread_over_lanes() {
        let table = table(ReplicaIdentity::Default);
        let ops: Vec<_> = (0..200).map(|i| ((i % 100) as u8, None)).collect();
        let transactions = transactions(&table, &ops);
        let refs: Vec<_> = transactions.iter().map(|t| ChangeRef { transaction: t, change: &t.changes[0] }).collect();
        assert!(split_into_lanes(refs, 4).len() > 1);
    }

    #[test]
    fn changes_sharing_a_related_key_share_a_lane_in_order() {
        let table = table(ReplicaIdentity::Default);
        let ops: Vec<_> = (0..60).map(|i| (i as u8, None)).collect();
        let transactions = transactions(&table, &ops);
        let refs: Vec<_> = transactions.iter().map(|t| ChangeRef { transaction: t, change: &t.changes[0] }).collect();
        // Keys 0..60 in three chains: every change relates to key % 3, as
        // rows pointing at one of three shared nodes.
        let split = split_into_lanes_with(refs, 8, |change, keys| keys.push(1_000 + sequence_of(change) % 3));
        assert!(split.len() <= 3, "at most one lane per shared node: {}", split.len());
        for lane in &split {
            let group = sequence_of(&lane[0]) % 3;
            assert!(lane.iter().all(|c| sequence_of(c) % 3 == group), "one group per lane");
            assert!(lane.windows(2).all(|w| sequence_of(&w[0]) < sequence_of(&w[1])), "in order");
        }
        assert_eq!(split.iter().map(Vec::len).sum::<usize>(), 60);
    }

    #[test]
    fn a_truncate_keeps_the_batch_in_one_lane() {
        let table = table(ReplicaIdentity::Default);
        let ops: Vec<_> = (0..40).map(|i| (i as u8, None)).collect();
        let mut transactions = transactions(&table, &ops);
        transactions[20].changes[0].op = ChangeOp::Truncate;
        let refs: Vec<_> = transactions.iter().map(|t| ChangeRef { transaction: t, change: &t.changes[0] }).collect();
        let split = split_into_lanes(refs, 4);
        assert_eq!(split.len(), 1);
        assert_eq!(split[0].iter().map(sequence_of).collect::<Vec<_>>(), (0..40).collect::<Vec<_>>());
    }
}
