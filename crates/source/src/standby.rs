//! Standby: a second pgfanout on the same slot waits, ready, and takes over
//! when the active one is gone.
//!
//! The lock is the slot itself: PostgreSQL lets one walsender at a time
//! stream from a slot and refuses the next `START_REPLICATION` with SQLSTATE
//! 55006 ("replication slot … is active for PID …"), so two instances can
//! never both stream. Before it reads anything from the sinks, the binary's
//! `run` waits here ([`wait_for_slot`]) while the slot is active, asking
//! again every `source.standby_poll_secs`; `/readyz` then answers
//! `"standby"`. When the slot is free, it starts as usual (sink checkpoints
//! read then, not before: the active instance moved them meanwhile). An
//! instance that loses the race for a just-freed slot (55006 at
//! `START_REPLICATION`), or finds the slot active when it reconnects, stops
//! streaming with [`SourceError::SlotTaken`]
//! and comes back here.
//!
//! A holder that died (kill -9, a crash) closes its connection with the
//! process, and PostgreSQL frees the slot at once. A stale holder (its host
//! or network died without closing the connection) keeps the slot until its
//! walsender notices: PostgreSQL ends a walsender that heard nothing from its
//! client for `wal_sender_timeout` (default 60 s; pgfanout answers every
//! `source.status_interval_ms`, so keep the timeout well above that).
//! pgfanout never terminates the holder itself (`pg_terminate_backend`): it
//! cannot tell a dead holder from a live one behind a slow network, and
//! killing a live one would only make the two take turns. The same holds
//! for pgfanout's own walsender after a network outage: on reconnect it
//! finds the slot active and stands by until PostgreSQL lets go of it.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use pg_replication::{ConnectOptions, ReplicationError};
use pgfanout_core::error_chain;
use tokio::sync::watch;

use crate::SourceError;

use crate::stream::connect_with_retry;

/// SQLSTATE 55006 `object_in_use`: the slot is active for another process.
pub const SLOT_IN_USE: &str = "55006";

/// Whether `err` says another process streams from the slot.
pub fn is_slot_in_use(err: &ReplicationError) -> bool {
    err.sqlstate() == Some(SLOT_IN_USE)
}

/// What `/readyz` says while standing by: `Some(reason)` then.
#[derive(Clone, Default)]
pub struct StandbyState(Arc<RwLock<Option<String>>>);

impl StandbyState {
    /// The reason pgfanout stands by, if it does.
    pub fn reason(&self) -> Option<String> {
        self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    fn set(&self, reason: Option<String>) {
        *self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = reason;
    }
}

/// Waits while `slot` is active (streamed from by another process),
/// checking every `poll`. `Ok(true)` once it is free or missing (the caller
/// creates it), `Ok(false)` when shutdown came first.
pub async fn wait_for_slot(
    options: &ConnectOptions,
    slot: &str,
    poll: Duration,
    state: &StandbyState,
    shutdown: &watch::Receiver<bool>,
) -> Result<bool, SourceError> {
    let mut connection = None;
    let mut announced = false;
    loop {
        if *shutdown.borrow() {
            return Ok(false);
        }
        let mut current = match connection.take() {
            Some(connection) => connection,
            None => match connect_with_retry(options, shutdown).await {
                Ok(connection) => connection,
                Err(_) if *shutdown.borrow() => return Ok(false),
                Err(err) => return Err(err),
            },
        };
        match current.slot_state(slot).await {
            Ok(Some(found)) if found.active => {
                if !announced {
                    tracing::info!(
                        %slot,
                        poll_secs = poll.as_secs_f64(),
                        "standby: the slot is active (another pgfanout streams from it); taking over once it is free"
                    );
                    announced = true;
                }
                state.set(Some(format!(
                    "standby: slot {slot} is active for another process; taking over once it is free"
                )));
                connection = Some(current);
            }
            Ok(_) => {
                if announced {
                    tracing::info!(%slot, "standby: the slot is free; taking over");
                }
                state.set(None);
                return Ok(true);
            }
            Err(err) => {
                tracing::warn!(%slot, error = %error_chain(&err), "standby: cannot read the slot's state; reconnecting");
            }
        }
        let mut shutdown = shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.wait_for(|stop| *stop) => return Ok(false),
        }
    }
}
