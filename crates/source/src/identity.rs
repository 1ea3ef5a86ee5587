//! Never resume blind: the checks that the slot and server pgfanout is about
//! to stream from are the ones the sinks' checkpoints belong to.
//!
//! Every sink stores a [`SourceRecord`] beside its checkpoint: the server's
//! system identifier and timeline, the database, the slot, the slot's
//! creation point (when pgfanout created it) and `confirmable`, the highest
//! position pgfanout may confirm. pgfanout writes a new `confirmable` to
//! every sink *before* it confirms that position to PostgreSQL, so for the
//! slot instance the sinks know, `confirmed_flush_lsn` never passes
//! `max(checkpoint, confirmable)` of any sink. When it does, something other
//! than pgfanout moved the slot (it was dropped and re-created, advanced, or
//! read by another consumer) and the changes in between are lost to that
//! sink: [`verify`] refuses, as it does for another cluster (system
//! identifier), a promotion or point-in-time recovery (timeline), another
//! database or slot name, an invalidated slot, and a missing slot while
//! sinks hold checkpoints (unless `source.recreate_slot` says so).
//!
//! These checks run before anything is applied: at start, and on every
//! reconnect ([`verify_reconnect`]).

use pg_replication::SlotState;
use pgfanout_core::{Lsn, SourceRecord};
use postgres_protocol::escape::escape_literal;

/// What `IDENTIFY_SYSTEM` and the config say about the source now.
#[derive(Debug, Clone)]
pub struct ServerIdentity {
    /// `IDENTIFY_SYSTEM` systemid.
    pub system_id: String,
    /// `IDENTIFY_SYSTEM` timeline.
    pub timeline: u32,
    /// The database of the connection.
    pub database: String,
    /// `source.slot`.
    pub slot: String,
}

/// What one sink holds.
#[derive(Debug, Clone)]
pub struct SinkHolding {
    /// The sink's name.
    pub sink: String,
    /// Its stored checkpoint.
    pub checkpoint: Option<Lsn>,
    /// Its stored source record (`None` when written by an older pgfanout).
    pub record: Option<SourceRecord>,
}

impl SinkHolding {
    /// The position this sink can resume from without losing a change.
    fn safe_position(&self) -> Option<Lsn> {
        match (&self.record, self.checkpoint) {
            (Some(record), checkpoint) => Some(record.confirmable.max(checkpoint.unwrap_or_default())),
            (None, _) => None,
        }
    }

    fn holds_anything(&self) -> bool {
        self.checkpoint.is_some() || self.record.is_some()
    }
}

/// What to do at start once the checks passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotPlan {
    /// The slot exists and belongs to the sinks: stream from it.
    Use,
    /// No slot, and no sink holds anything (first start): create it.
    Create,
    /// No slot, sinks hold checkpoints, and `source.recreate_slot` is set:
    /// create it; the sinks miss what happened while there was none.
    Recreate,
}

/// Recovery steps every refusal ends with.
fn recovery(slot: &str) -> String {
    format!(
        "to start over, stop pgfanout, delete the affected sinks' checkpoint and source record, drop the slot if \
         it exists (SELECT pg_drop_replication_slot({})), run `pgfanout rebuild --sink NAME --wipe` for each \
         affected sink and start pgfanout again: it copies the tables' current rows while it streams",
        escape_literal(slot)
    )
}

/// The checks at start. `slot` is the slot's row, `None` when it does not
/// exist; `recreate_slot` is `source.recreate_slot`.
pub fn verify(
    server: &ServerIdentity,
    slot: Option<&SlotState>,
    sinks: &[SinkHolding],
    recreate_slot: bool,
) -> Result<SlotPlan, String> {
    for holding in sinks {
        if let Some(record) = &holding.record {
            verify_record(server, slot, &holding.sink, record)?;
        }
    }
    let Some(slot_state) = slot else {
        let holding: Vec<&str> = sinks.iter().filter(|h| h.holds_anything()).map(|h| h.sink.as_str()).collect();
        return match (holding.is_empty(), recreate_slot) {
            (true, _) => Ok(SlotPlan::Create),
            (false, true) => Ok(SlotPlan::Recreate),
            (false, false) => Err(format!(
                "slot {slot} does not exist, but sink(s) {sinks} hold checkpoints from it: it was dropped (by \
                 hand, or lost in a failover to a standby that did not have it), so the changes made since are \
                 lost to those sinks. pgfanout does not re-create it silently: either set source.recreate_slot = \
                 true for one start (the sinks then miss the changes made while there was no slot), or {}",
                recovery(&server.slot),
                slot = server.slot,
                sinks = holding.join(", ")
            )),
        };
    };
    if slot_state.wal_status.as_deref() == Some("lost") {
        return Err(format!(
            "slot {} is invalidated (wal_status = lost): PostgreSQL removed WAL it still needed \
             (max_slot_wal_keep_size), so changes are lost to every sink; {}",
            server.slot,
            recovery(&server.slot)
        ));
    }
    verify_position(server, slot_state, sinks)?;
    Ok(SlotPlan::Use)
}

/// The checks on every reconnect: same server, timeline, slot instance, and
/// the slot no further than pgfanout let it go (`confirmable`).
pub fn verify_reconnect(
    server: &ServerIdentity,
    slot: Option<&SlotState>,
    record: &SourceRecord,
) -> Result<(), String> {
    verify_record(server, slot, "(every sink)", record)?;
    let Some(slot_state) = slot else {
        return Err(format!(
            "slot {} disappeared while pgfanout was streaming from it (dropped, or lost in a failover): the \
             changes made since are lost to every sink; {}",
            server.slot,
            recovery(&server.slot)
        ));
    };
    if slot_state.wal_status.as_deref() == Some("lost") {
        return Err(format!(
            "slot {} was invalidated (wal_status = lost) while pgfanout was away; {}",
            server.slot,
            recovery(&server.slot)
        ));
    }
    let holding = SinkHolding { sink: "(every sink)".into(), checkpoint: None, record: Some(record.clone()) };
    verify_position(server, slot_state, std::slice::from_ref(&holding))
}

/// Same cluster, timeline, database and slot name as the record.
fn verify_record(
    server: &ServerIdentity,
    slot: Option<&SlotState>,
    sink: &str,
    record: &SourceRecord,
) -> Result<(), String> {
    if record.system_id != server.system_id {
        return Err(format!(
            "sink {sink} holds changes from another PostgreSQL cluster (system identifier {}), but this server \
             is {} (a restored backup, a new cluster, or a wrong source.url): resuming would mix two histories. \
             Point source.url back at the cluster the sink came from, or {}",
            record.system_id,
            server.system_id,
            recovery(&server.slot)
        ));
    }
    if record.database != server.database || record.slot != server.slot {
        return Err(format!(
            "sink {sink} holds changes from slot {} of database {}, but pgfanout is configured for slot {} of \
             database {}: configure that slot and database again, or {}",
            record.slot,
            record.database,
            server.slot,
            server.database,
            recovery(&server.slot)
        ));
    }
    if record.timeline != server.timeline {
        // A failover slot synchronized to the promoted standby is the same
        // slot instance; its position check still follows.
        let failover_slot = slot.is_some_and(|state| state.failover);
        if !(failover_slot && server.timeline > record.timeline) {
            return Err(format!(
                "the server switched from timeline {} to {} since sink {sink} was written (a promotion or a \
                 point-in-time recovery) and slot {} is not a failover slot, so the changes of the old timeline \
                 past the switch may be lost or differ. Check that the sink holds nothing the new timeline lacks, \
                 or {}",
                record.timeline,
                server.timeline,
                server.slot,
                recovery(&server.slot)
            ));
        }
    }
    Ok(())
}

/// The slot's `confirmed_flush_lsn` is not past what any sink can resume from.
fn verify_position(server: &ServerIdentity, slot: &SlotState, sinks: &[SinkHolding]) -> Result<(), String> {
    let Some(confirmed) = slot.confirmed_flush_lsn else { return Ok(()) };
    let behind = sinks
        .iter()
        .filter_map(|holding| holding.safe_position().map(|position| (holding, position)))
        .filter(|(_, position)| *position < confirmed)
        .min_by_key(|(_, position)| *position);
    match behind {
        None => Ok(()),
        Some((holding, position)) => Err(format!(
            "slot {slot} has confirmed_flush_lsn {confirmed}, past {position}, the furthest sink {sink} can \
             resume from (pgfanout never confirms further): the slot was dropped and re-created, advanced \
             (pg_replication_slot_advance), or read by another consumer after the checkpoint was written, so the \
             changes between {position} and {confirmed} are lost to the sink. {}",
            recovery(&server.slot),
            slot = server.slot,
            sink = holding.sink,
        )),
    }
}

/// The record to store in every sink once the checks passed: this server,
/// this slot, `confirmable` at `confirmed` (what the slot already confirmed),
/// the creation point when pgfanout just created the slot, else the one the
/// sinks agree on.
pub fn current_record(
    server: &ServerIdentity,
    sinks: &[SinkHolding],
    created_at: Option<Lsn>,
    confirmed: Lsn,
) -> SourceRecord {
    let known_creation = || {
        let mut points = sinks.iter().filter_map(|h| h.record.as_ref().map(|r| r.slot_created_at));
        let first = points.next().flatten();
        points.all(|point| point == first).then_some(first).flatten()
    };
    SourceRecord {
        system_id: server.system_id.clone(),
        timeline: server.timeline,
        database: server.database.clone(),
        slot: server.slot.clone(),
        slot_created_at: created_at.or_else(known_creation),
        confirmable: confirmed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> ServerIdentity {
        ServerIdentity { system_id: "7400".into(), timeline: 1, database: "app".into(), slot: "feed".into() }
    }

    fn record(confirmable: u64) -> SourceRecord {
        SourceRecord {
            system_id: "7400".into(),
            timeline: 1,
            database: "app".into(),
            slot: "feed".into(),
            slot_created_at: Some(Lsn(10)),
            confirmable: Lsn(confirmable),
        }
    }

    fn slot(confirmed: u64) -> SlotState {
        SlotState {
            plugin: Some("pgoutput".into()),
            slot_type: "logical".into(),
            database: Some("app".into()),
            active: false,
            temporary: false,
            two_phase: false,
            failover: false,
            confirmed_flush_lsn: Some(Lsn(confirmed)),
            restart_lsn: Some(Lsn(confirmed)),
            wal_status: Some("reserved".into()),
            safe_wal_size: None,
        }
    }

    fn holding(checkpoint: Option<u64>, record: Option<SourceRecord>) -> SinkHolding {
        SinkHolding { sink: "cache".into(), checkpoint: checkpoint.map(Lsn), record }
    }

    #[test]
    fn a_slot_no_further_than_pgfanout_confirmed_is_used() {
        let sinks = [holding(Some(100), Some(record(150)))];
        assert_eq!(verify(&server(), Some(&slot(150)), &sinks, false), Ok(SlotPlan::Use));
        assert_eq!(verify(&server(), Some(&slot(90)), &sinks, false), Ok(SlotPlan::Use));
    }

    #[test]
    fn a_slot_past_every_safe_position_is_a_gap() {
        let sinks = [holding(Some(100), Some(record(150)))];
        let err = verify(&server(), Some(&slot(151)), &sinks, false).unwrap_err();
        assert!(err.starts_with("slot feed has confirmed_flush_lsn 0/97, past 0/96"), "{err}");
        assert!(err.contains("re-created"), "{err}");
    }

    #[test]
    fn a_missing_slot_is_created_only_for_empty_sinks_or_with_the_flag() {
        assert_eq!(verify(&server(), None, &[holding(None, None)], false), Ok(SlotPlan::Create));
        let holding_sinks = [holding(Some(100), None)];
        let err = verify(&server(), None, &holding_sinks, false).unwrap_err();
        assert!(err.contains("source.recreate_slot = true"), "{err}");
        assert_eq!(verify(&server(), None, &holding_sinks, true), Ok(SlotPlan::Recreate));
    }

    #[test]
    fn another_cluster_database_or_slot_is_refused() {
        let other = SourceRecord { system_id: "7999".into(), ..record(100) };
        let err = verify(&server(), Some(&slot(100)), &[holding(Some(100), Some(other))], false).unwrap_err();
        assert!(err.contains("another PostgreSQL cluster (system identifier 7999)"), "{err}");
        let other = SourceRecord { slot: "old".into(), ..record(100) };
        let err = verify(&server(), Some(&slot(100)), &[holding(Some(100), Some(other))], false).unwrap_err();
        assert!(err.contains("slot old of database app"), "{err}");
    }

    #[test]
    fn a_timeline_switch_is_refused_unless_the_slot_is_a_failover_slot() {
        let moved = ServerIdentity { timeline: 2, ..server() };
        let sinks = [holding(Some(100), Some(record(100)))];
        let err = verify(&moved, Some(&slot(100)), &sinks, false).unwrap_err();
        assert!(err.contains("switched from timeline 1 to 2"), "{err}");
        let failover = SlotState { failover: true, ..slot(100) };
        assert_eq!(verify(&moved, Some(&failover), &sinks, false), Ok(SlotPlan::Use));
    }

    #[test]
    fn an_invalidated_slot_is_refused() {
        let lost = SlotState { wal_status: Some("lost".into()), ..slot(100) };
        let err = verify(&server(), Some(&lost), &[holding(Some(100), Some(record(100)))], false).unwrap_err();
        assert!(err.contains("wal_status = lost"), "{err}");
    }

    #[test]
    fn legacy_checkpoints_without_a_record_pass_and_are_adopted() {
        let sinks = [holding(Some(100), None)];
        assert_eq!(verify(&server(), Some(&slot(500)), &sinks, false), Ok(SlotPlan::Use));
        let adopted = current_record(&server(), &sinks, None, Lsn(500));
        assert_eq!(adopted.slot_created_at, None);
        assert_eq!(adopted.confirmable, Lsn(500));
    }
}
