//! The checkpoint coordinator: which LSN may be confirmed to PostgreSQL.
//!
//! Rule: the flush LSN is the minimum, over sinks, of what each sink has
//! acknowledged — except that a sink with nothing in flight is "caught up"
//! and does not hold the position back. When no sink has anything in flight
//! and no transaction is half-received, the position of the last keepalive
//! may be confirmed too, so an idle or unpublished-only workload still lets
//! the slot advance and PostgreSQL recycle WAL.
//!
//! Only acknowledgements move the LSN; the coordinator never confirms a
//! transaction that some sink it was sent to has not acknowledged.
//!
//! Each sink also keeps a [`SourceRecord`] beside its checkpoint: which
//! server, database and slot instance the checkpoint belongs to, and how far
//! pgfanout may have confirmed the slot. With it, a restart can tell a slot
//! that pgfanout advanced (nothing lost) from one that was re-created or
//! moved by someone else (changes lost to the sinks).

use pgoutput::Lsn;
use tokio::sync::watch;

/// Per-sink bookkeeping.
#[derive(Debug)]
struct SinkProgress {
    /// End LSN of the last transaction sent to this sink.
    dispatched: Lsn,
    /// End LSN of the last transaction this sink acknowledged.
    acked: watch::Receiver<Lsn>,
}

/// Computes the confirmable flush LSN from dispatches and acknowledgements.
#[derive(Debug, Default)]
pub struct CheckpointCoordinator {
    sinks: Vec<SinkProgress>,
    /// End LSN of the last transaction received from the stream (routed or not).
    received: Lsn,
    /// Highest keepalive position seen while no transaction was half-received.
    idle_position: Lsn,
}

/// Index of a sink inside the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkSlot(usize);

impl CheckpointCoordinator {
    /// An empty coordinator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a sink whose worker publishes acknowledgements on `acked`.
    pub fn add_sink(&mut self, acked: watch::Receiver<Lsn>) -> SinkSlot {
        self.sinks.push(SinkProgress { dispatched: Lsn::ZERO, acked });
        SinkSlot(self.sinks.len() - 1)
    }

    /// Records that a transaction ending at `end_lsn` was fully received.
    pub fn transaction_received(&mut self, end_lsn: Lsn) {
        self.received = self.received.max(end_lsn);
    }

    /// Records that a transaction ending at `end_lsn` was sent to `sink`.
    pub fn dispatched(&mut self, sink: SinkSlot, end_lsn: Lsn) {
        let progress = &mut self.sinks[sink.0];
        progress.dispatched = progress.dispatched.max(end_lsn);
    }

    /// Records a keepalive position; only meaningful when `assembler_idle`
    /// (no Begin without its Commit yet), because then every message before
    /// `wal_end` has been received.
    pub fn keepalive(&mut self, wal_end: Lsn, assembler_idle: bool) {
        if assembler_idle {
            self.idle_position = self.idle_position.max(wal_end);
        }
    }

    /// End LSN of the last transaction received whole.
    pub fn received_lsn(&self) -> Lsn {
        self.received
    }

    /// The LSN that may be confirmed now.
    pub fn flush_lsn(&self) -> Lsn {
        let mut all_caught_up = true;
        let mut flush = self.received;
        for sink in &self.sinks {
            let acked = *sink.acked.borrow();
            if acked < sink.dispatched {
                all_caught_up = false;
                flush = flush.min(acked);
            }
        }
        if all_caught_up {
            flush.max(self.idle_position)
        } else {
            flush
        }
    }
}

/// The source a sink's checkpoint belongs to, stored beside it.
///
/// A slot instance is identified by its name plus the consistent point
/// `CREATE_REPLICATION_SLOT` returned when pgfanout created it
/// (`slot_created_at`; `None` for a slot pgfanout adopted). PostgreSQL does
/// not show a slot's creation point, so a slot re-created behind pgfanout's
/// back is caught by the position check instead: pgfanout records
/// `confirmable` in every sink *before* it confirms that position to the
/// slot, so the slot's `confirmed_flush_lsn` can never be legitimately ahead
/// of `max(checkpoint, confirmable)`; if it is, something else moved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecord {
    /// `IDENTIFY_SYSTEM`'s system identifier: which cluster.
    pub system_id: String,
    /// `IDENTIFY_SYSTEM`'s timeline: changes after a promotion.
    pub timeline: u32,
    /// The database the slot decodes.
    pub database: String,
    /// The slot's name.
    pub slot: String,
    /// Consistent point of the slot when pgfanout created it.
    pub slot_created_at: Option<Lsn>,
    /// The highest position pgfanout may confirm to this slot instance.
    pub confirmable: Lsn,
}

/// The stored form's version, bumped on incompatible changes.
const SOURCE_RECORD_VERSION: u32 = 1;

/// The stored (JSON) form of [`SourceRecord`]: LSNs as text, as PostgreSQL writes them.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSourceRecord {
    version: u32,
    system_id: String,
    timeline: u32,
    database: String,
    slot: String,
    slot_created_at: Option<String>,
    confirmable: String,
}

/// A stored source record that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("stored source record {text:?} is unreadable: {reason}")]
pub struct SourceRecordError {
    /// What was stored.
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

impl SourceRecord {
    /// The text a sink stores.
    pub fn to_stored(&self) -> String {
        let stored = StoredSourceRecord {
            version: SOURCE_RECORD_VERSION,
            system_id: self.system_id.clone(),
            timeline: self.timeline,
            database: self.database.clone(),
            slot: self.slot.clone(),
            slot_created_at: self.slot_created_at.map(|lsn| lsn.to_string()),
            confirmable: self.confirmable.to_string(),
        };
        serde_json::to_string(&stored).unwrap_or_default()
    }

    /// Reads [`to_stored`](Self::to_stored)'s output back.
    pub fn from_stored(text: &str) -> Result<SourceRecord, SourceRecordError> {
        let error = |reason: String| SourceRecordError { text: text.to_owned(), reason };
        let stored: StoredSourceRecord = serde_json::from_str(text).map_err(|err| error(err.to_string()))?;
        if stored.version != SOURCE_RECORD_VERSION {
            return Err(error(format!(
                "version {} (this pgfanout reads version {SOURCE_RECORD_VERSION})",
                stored.version
            )));
        }
        let lsn = |text: &str| text.parse::<Lsn>().map_err(|_| error(format!("{text:?} is not an LSN")));
        Ok(SourceRecord {
            system_id: stored.system_id,
            timeline: stored.timeline,
            database: stored.database,
            slot: stored.slot,
            slot_created_at: stored.slot_created_at.as_deref().map(lsn).transpose()?,
            confirmable: lsn(&stored.confirmable)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_records_read_back_what_was_stored() {
        let record = SourceRecord {
            system_id: "7412345678901234567".into(),
            timeline: 2,
            database: "app".into(),
            slot: "feed".into(),
            slot_created_at: Some(Lsn(0x016B_3748)),
            confirmable: Lsn(0xCAE_1018),
        };
        assert_eq!(SourceRecord::from_stored(&record.to_stored()).unwrap(), record);
        let adopted = SourceRecord { slot_created_at: None, ..record };
        assert_eq!(SourceRecord::from_stored(&adopted.to_stored()).unwrap(), adopted);
        let err = SourceRecord::from_stored("0/16B3748").unwrap_err();
        assert!(err.to_string().contains("unreadable"), "{err}");
        let future = adopted.to_stored().replace("\"version\":1", "\"version\":9");
        assert!(SourceRecord::from_stored(&future).unwrap_err().reason.contains("version 9"));
    }

    #[test]
    fn flush_is_the_minimum_of_sinks_with_work_in_flight() {
        let (ack_a, rx_a) = watch::channel(Lsn::ZERO);
        let (ack_b, rx_b) = watch::channel(Lsn::ZERO);
        let mut coordinator = CheckpointCoordinator::new();
        let a = coordinator.add_sink(rx_a);
        let b = coordinator.add_sink(rx_b);

        coordinator.transaction_received(Lsn(100));
        coordinator.dispatched(a, Lsn(100));
        coordinator.dispatched(b, Lsn(100));
        assert_eq!(coordinator.flush_lsn(), Lsn::ZERO);

        ack_a.send(Lsn(100)).unwrap();
        assert_eq!(coordinator.flush_lsn(), Lsn::ZERO, "sink b has not acknowledged");

        // A transaction only sink a receives does not wait for b beyond what b holds.
        coordinator.transaction_received(Lsn(200));
        coordinator.dispatched(a, Lsn(200));
        ack_b.send(Lsn(100)).unwrap();
        assert_eq!(coordinator.flush_lsn(), Lsn(100));
        ack_a.send(Lsn(200)).unwrap();
        assert_eq!(coordinator.flush_lsn(), Lsn(200));
    }

    #[test]
    fn unrouted_transactions_advance_when_nothing_is_in_flight() {
        let (_ack, rx) = watch::channel(Lsn::ZERO);
        let mut coordinator = CheckpointCoordinator::new();
        coordinator.add_sink(rx);
        coordinator.transaction_received(Lsn(300));
        assert_eq!(coordinator.flush_lsn(), Lsn(300));
    }

    #[test]
    fn keepalives_count_only_when_idle_and_caught_up() {
        let (ack, rx) = watch::channel(Lsn::ZERO);
        let mut coordinator = CheckpointCoordinator::new();
        let sink = coordinator.add_sink(rx);
        coordinator.keepalive(Lsn(50), false);
        assert_eq!(coordinator.flush_lsn(), Lsn::ZERO, "a half-received transaction blocks keepalives");

        coordinator.transaction_received(Lsn(100));
        coordinator.dispatched(sink, Lsn(100));
        coordinator.keepalive(Lsn(150), true);
        assert_eq!(coordinator.flush_lsn(), Lsn::ZERO, "the transaction before the keepalive is unacknowledged");
        ack.send(Lsn(100)).unwrap();
        assert_eq!(coordinator.flush_lsn(), Lsn(150));
    }
}
