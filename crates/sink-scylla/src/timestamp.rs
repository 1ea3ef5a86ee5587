//! Write timestamps (`USING TIMESTAMP`) from change versions.
//!
//! Cassandra resolves concurrent writes to a cell by their timestamp, in
//! microseconds, the highest winning; other clients write wall-clock
//! microseconds. pgfanout needs timestamps that
//! 1. grow strictly along the stream, change by change, also for several
//!    changes to one row in one transaction — so the last change wins;
//! 2. are close to wall-clock time and never below the commit time — so a
//!    change does not lose against what another client wrote before the
//!    commit;
//! 3. never fall below a timestamp used before a restart — so changes
//!    re-sent after a crash win over the writes of the first attempt.
//!
//! A pure function of the version (commit LSN, ordinal) cannot do all three:
//! LSNs are not microseconds, and commit times may repeat or step back
//! (concurrent commits, clock adjustments), so `commit_time * k + ordinal`
//! either breaks (1) or drifts from wall-clock time by a factor `k`. Hence a
//! small clock with state:
//!
//! ```text
//! base(T)       = max(commit_time_µs(T), last + 1)     on the first sight of transaction T
//! last          = base(T) + span(T) − 1                 span = last ordinal + 1
//! timestamp(c)  = base(T) + ordinal(c)
//! ```
//!
//! Each transaction gets a block of consecutive microseconds, one per
//! change, starting at its commit time or right after the previous block.
//! The block is remembered by commit LSN until the checkpoint passes it, so a
//! retried batch (or the same transaction seen by two lanes) reuses it.
//!
//! (3) comes from a *reservation* stored with the checkpoint: before a
//! timestamp above the stored reservation is used, the sink stores a new
//! reservation [`RESERVATION_WINDOW_MICROS`] above it; after a restart the
//! clock starts above the stored reservation. So every timestamp after a
//! restart exceeds every timestamp before it, and re-sent changes, applied
//! again in commit order, end in the state of the last one.
//!
//! Limits, as documented for users: timestamps run ahead of wall-clock time
//! while the stream sustains more than one million changes per second, and
//! by up to the reservation window after a restart; during either, a write
//! another client makes to the same cells with a wall-clock timestamp loses.
//! Changes of different rows are ordered by first sight, which with several
//! lanes may differ from commit order — harmless, as no key spans lanes.

use std::collections::BTreeMap;

use pgfanout_core::{ChangeRef, Lsn, Transaction};

/// How far above the highest used timestamp a reservation reaches: one
/// second, so the clock stores a reservation about once per second of stream
/// time and, after a restart, writes at most one second into the future.
pub const RESERVATION_WINDOW_MICROS: i64 = 1_000_000;

/// Hands out write timestamps; see the module docs.
#[derive(Debug, Clone)]
pub struct WriteClock {
    /// Highest timestamp handed out (or the reservation the clock started from).
    last: i64,
    /// Timestamps up to here may be used without storing a new reservation.
    reserved: i64,
    /// Base timestamp per commit LSN, for transactions not yet checkpointed.
    bases: BTreeMap<Lsn, i64>,
}

impl WriteClock {
    /// A clock above `reserved`, the reservation stored before a restart
    /// (0 when none).
    pub fn starting_after(reserved: i64) -> Self {
        WriteClock { last: reserved, reserved, bases: BTreeMap::new() }
    }

    /// The timestamp of one change.
    pub fn timestamp(&mut self, change: &ChangeRef<'_>) -> i64 {
        self.base(change.transaction).saturating_add(i64::from(change.change.ordinal))
    }

    fn base(&mut self, transaction: &Transaction) -> i64 {
        if let Some(base) = self.bases.get(&transaction.commit_lsn) {
            return *base;
        }
        let commit = transaction.commit_time.to_unix_micros();
        let base = commit.max(self.last.saturating_add(1));
        let span = transaction.changes.last().map_or(1, |last| i64::from(last.ordinal) + 1);
        self.last = base.saturating_add(span - 1);
        self.bases.insert(transaction.commit_lsn, base);
        base
    }

    /// The reservation to store before using the timestamps handed out so
    /// far, if the current one does not cover them.
    pub fn reservation_needed(&self) -> Option<i64> {
        (self.last > self.reserved).then(|| self.last.saturating_add(RESERVATION_WINDOW_MICROS))
    }

    /// Records that `reservation` is stored.
    pub fn reserved(&mut self, reservation: i64) {
        self.reserved = self.reserved.max(reservation);
    }

    /// The stored reservation (what the next checkpoint row repeats).
    pub fn reservation(&self) -> i64 {
        self.reserved
    }

    /// Forgets the blocks of transactions the checkpoint `end_lsn` covers
    /// (their commit LSN is below it): they will not be applied again by
    /// this process.
    pub fn forget_before(&mut self, end_lsn: Lsn) {
        self.bases = self.bases.split_off(&end_lsn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgfanout_core::{Change, ChangeOp, TableName, TableSchema};
    use pgoutput::{Oid, PgTimestamp, ReplicaIdentity, Xid};
    use proptest::prelude::*;
    use std::sync::Arc;

    fn transactions(first_lsn: u64, shapes: &[(i64, u32)]) -> Vec<Transaction> {
        let table = Arc::new(TableSchema {
            oid: Oid(1),
            table: TableName::new("public", "t"),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![],
            types: Default::default(),
        });
        shapes
            .iter()
            .enumerate()
            .map(|(i, &(commit_unix_micros, changes))| Transaction {
                xid: Xid(i as u32),
                commit_lsn: Lsn(first_lsn + 100 * i as u64),
                end_lsn: Lsn(first_lsn + 100 * i as u64 + 8),
                commit_time: PgTimestamp(commit_unix_micros - PgTimestamp::UNIX_EPOCH_OFFSET_MICROS),
                changes: (0..changes)
                    .map(|ordinal| Change { table: table.clone(), op: ChangeOp::Truncate, ordinal })
                    .collect(),
            })
            .collect()
    }

    fn stamp_all(clock: &mut WriteClock, batch: &[Transaction]) -> Vec<i64> {
        batch
            .iter()
            .flat_map(|transaction| transaction.changes.iter().map(move |change| ChangeRef { transaction, change }))
            .map(|change| clock.timestamp(&change))
            .collect()
    }

    #[test]
    fn follows_commit_time_and_packs_changes_of_one_transaction() {
        let now = 1_800_000_000_000_000;
        let batch = transactions(100, &[(now, 3), (now, 1), (now - 50, 2), (now + 1_000, 1)]);
        let mut clock = WriteClock::starting_after(0);
        let stamps = stamp_all(&mut clock, &batch);
        // Same commit time, then a clock step back: blocks follow each other.
        assert_eq!(stamps, [now, now + 1, now + 2, now + 3, now + 4, now + 5, now + 1_000]);
        // Asking again (a retry, another lane) gives the same block.
        assert_eq!(stamp_all(&mut clock, &batch[1..2]), [now + 3]);
        assert_eq!(clock.reservation_needed(), Some(now + 1_000 + RESERVATION_WINDOW_MICROS));
    }

    proptest! {
        #[test]
        fn strictly_increasing_never_below_commit_time_and_above_everything_before_a_restart(
            first in prop::collection::vec((1_700_000_000_000_000i64..1_700_000_000_100_000, 1u32..5), 1..40),
            second in prop::collection::vec((1_700_000_000_000_000i64..1_700_000_000_100_000, 1u32..5), 1..40),
        ) {
            let mut clock = WriteClock::starting_after(0);
            let batch = transactions(100, &first);
            let stamps = stamp_all(&mut clock, &batch);
            prop_assert!(stamps.windows(2).all(|pair| pair[0] < pair[1]), "{stamps:?}");
            let commits = batch.iter().flat_map(|t| t.changes.iter().map(move |_| t.commit_time.to_unix_micros()));
            prop_assert!(stamps.iter().zip(commits).all(|(stamp, commit)| *stamp >= commit));
            // The sink stores the reservation before writing; a restart starts above it.
            let reservation = clock.reservation_needed().unwrap();
            clock.reserved(reservation);
            prop_assert_eq!(clock.reservation_needed(), None);
            let mut restarted = WriteClock::starting_after(reservation);
            // The same transactions re-sent after the restart, then new ones.
            let again = stamp_all(&mut restarted, &batch);
            let later = stamp_all(&mut restarted, &transactions(1_000_000, &second));
            let highest_before = *stamps.iter().max().unwrap();
            prop_assert!(again.iter().chain(&later).all(|stamp| *stamp > highest_before));
            prop_assert!(again.iter().chain(&later).collect::<Vec<_>>().windows(2).all(|pair| pair[0] < pair[1]));
        }
    }

    #[test]
    fn forgets_checkpointed_transactions() {
        let batch = transactions(100, &[(5_000_000, 1), (5_000_000, 1)]);
        let mut clock = WriteClock::starting_after(0);
        stamp_all(&mut clock, &batch);
        clock.forget_before(batch[0].end_lsn);
        assert_eq!(clock.bases.len(), 1);
        assert!(clock.bases.contains_key(&batch[1].commit_lsn));
    }
}
