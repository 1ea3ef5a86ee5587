//! A hook on the stream for the snapshot: it sees every committed
//! transaction and every non-transactional logical message in stream order,
//! and may inject a transaction into one sink's queue at that point.
//!
//! ```text
//!  stream ─► Pipeline::push ─┬─► StreamTap::transaction (before dispatch)
//!                            └─► StreamTap::message ─► [Injection] ─► that sink's queue only
//! ```
//!
//! The pipeline calls the tap on the task that reads the stream, so what
//! the tap sees is exactly the order the sinks receive: an injection made at
//! a message lands after every transaction committed before the message and
//! before every transaction committed after it.

use pgoutput::LogicalMessage;

use crate::model::Transaction;

/// What a tap asks the pipeline to write into one sink's queue.
#[derive(Debug)]
pub struct Injection {
    /// The sink's name from the config.
    pub sink: String,
    /// Changes to apply, routed and mapped as the sink's streamed changes
    /// are; its `end_lsn` is what the sink acknowledges once they are applied
    /// (an injection is acknowledged even when the sink's filters leave no
    /// change of it).
    pub transaction: Transaction,
}

/// Sees the stream in order and may inject (see the module doc).
pub trait StreamTap: Send {
    /// A committed transaction (or, for a large one, each piece of it), just
    /// before it is dispatched to the sinks.
    fn transaction(&mut self, transaction: &Transaction);

    /// A non-transactional logical message; returns what to inject now, in order.
    fn message(&mut self, message: &LogicalMessage) -> Vec<Injection>;
}
