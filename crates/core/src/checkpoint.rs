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

#[cfg(test)]
mod tests {
    use super::*;

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
