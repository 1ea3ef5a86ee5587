//! Replication slot commands: the options of `CREATE_REPLICATION_SLOT` and
//! the text of the commands that create a slot and read its state.
//!
//! The command syntax depends on the server: PostgreSQL 15 introduced the
//! parenthesized option list (`(SNAPSHOT 'export', TWO_PHASE true)`); older
//! servers get the keyword form (`EXPORT_SNAPSHOT`, `TWO_PHASE`), which 15
//! and later still accept but no longer document.

use postgres_protocol::escape::escape_literal;

use crate::error::{ReplicationError, Result};

/// First server version with the parenthesized `CREATE_REPLICATION_SLOT` options.
const PARENTHESIZED_OPTIONS_SINCE: u32 = 150_000;
/// First server version with two-phase decoding in logical slots.
const TWO_PHASE_SINCE: u32 = 140_000;
/// First server version with failover slots (synchronized to standbys).
const FAILOVER_SINCE: u32 = 170_000;

/// What `CREATE_REPLICATION_SLOT` does with the snapshot taken at the slot's
/// consistent point: the database state just before the first change the
/// slot will stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SnapshotAction {
    /// Export it under a name that other sessions can adopt with
    /// `SET TRANSACTION SNAPSHOT '<name>'` (returned in
    /// [`CreatedSlot::snapshot_name`](crate::CreatedSlot::snapshot_name)).
    /// The snapshot stays importable only while the creating connection
    /// stays open and idle in command mode: the next command on it
    /// (`START_REPLICATION` included) or closing it ends the export.
    Export,
    /// Neither export nor use it; the usual choice when no initial copy is made.
    #[default]
    NoExport,
    /// Make it the snapshot of the transaction open on the creating
    /// connection, which must have started with
    /// `BEGIN ISOLATION LEVEL REPEATABLE READ` and run nothing else yet;
    /// queries in that transaction then see exactly the data the slot starts after.
    Use,
}

/// Options of a new logical slot; the default is a permanent slot that
/// exports no snapshot and decodes prepared transactions only at commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotOptions {
    temporary: bool,
    snapshot: SnapshotAction,
    two_phase: bool,
    failover: bool,
}

impl SlotOptions {
    /// A permanent slot, no snapshot export, no two-phase decoding.
    pub fn new() -> Self {
        SlotOptions::default()
    }

    /// A temporary slot is dropped by the server when the creating
    /// connection closes or fails, and is never written to disk.
    pub fn temporary(mut self, temporary: bool) -> Self {
        self.temporary = temporary;
        self
    }

    /// What to do with the snapshot at the consistent point.
    pub fn snapshot(mut self, action: SnapshotAction) -> Self {
        self.snapshot = action;
        self
    }

    /// Whether the slot decodes transactions at `PREPARE TRANSACTION` time
    /// (needs a consumer that also asks for `two_phase` when streaming; PostgreSQL 14+).
    pub fn two_phase(mut self, two_phase: bool) -> Self {
        self.two_phase = two_phase;
        self
    }

    /// Whether the slot is a failover slot: PostgreSQL 17+ synchronizes it to
    /// standbys that set `sync_replication_slots`, so it survives a promotion.
    pub fn failover(mut self, failover: bool) -> Self {
        self.failover = failover;
        self
    }

    /// The `CREATE_REPLICATION_SLOT` command for `slot` (already validated) on a
    /// server of version `server_version` (`server_version_num` style).
    pub(crate) fn create_command(&self, slot: &str, server_version: u32) -> Result<String> {
        if self.two_phase && server_version < TWO_PHASE_SINCE {
            return Err(ReplicationError::Config(format!(
                "two-phase slots need PostgreSQL 14 or later; this server is version {server_version}"
            )));
        }
        if self.failover && server_version < FAILOVER_SINCE {
            return Err(ReplicationError::Config(format!(
                "failover slots need PostgreSQL 17 or later; this server is version {server_version}: \
                 set source.failover = false"
            )));
        }
        let temporary = if self.temporary { " TEMPORARY" } else { "" };
        let options = if server_version >= PARENTHESIZED_OPTIONS_SINCE {
            let snapshot = match self.snapshot {
                SnapshotAction::Export => "export",
                SnapshotAction::NoExport => "nothing",
                SnapshotAction::Use => "use",
            };
            let two_phase = if self.two_phase { ", TWO_PHASE true" } else { "" };
            let failover = if self.failover { ", FAILOVER true" } else { "" };
            format!(" (SNAPSHOT '{snapshot}'{two_phase}{failover})")
        } else {
            let snapshot = match self.snapshot {
                SnapshotAction::Export => "EXPORT_SNAPSHOT",
                SnapshotAction::NoExport => "NOEXPORT_SNAPSHOT",
                SnapshotAction::Use => "USE_SNAPSHOT",
            };
            let two_phase = if self.two_phase { " TWO_PHASE" } else { "" };
            format!("{two_phase} {snapshot}")
        };
        Ok(format!("CREATE_REPLICATION_SLOT {slot}{temporary} LOGICAL pgoutput{options}"))
    }
}

/// The query behind [`ReplicationConnection::slot_state`](crate::ReplicationConnection::slot_state);
/// columns a server version lacks are selected as NULL.
pub(crate) fn slot_state_query(slot: &str, server_version: u32) -> String {
    let two_phase = if server_version >= TWO_PHASE_SINCE { "two_phase::text" } else { "NULL::text" };
    let failover = if server_version >= FAILOVER_SINCE { "failover::text" } else { "NULL::text" };
    format!(
        "SELECT slot_type, plugin, database, active::text, temporary::text, {two_phase} AS two_phase, \
         {failover} AS failover, \
         confirmed_flush_lsn::text, restart_lsn::text, wal_status, safe_wal_size::text \
         FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
        escape_literal(slot)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options_create_a_permanent_slot_without_snapshot() {
        assert_eq!(
            SlotOptions::new().create_command("s", 150004).unwrap(),
            "CREATE_REPLICATION_SLOT s LOGICAL pgoutput (SNAPSHOT 'nothing')"
        );
        assert_eq!(
            SlotOptions::new().create_command("s", 140010).unwrap(),
            "CREATE_REPLICATION_SLOT s LOGICAL pgoutput NOEXPORT_SNAPSHOT"
        );
    }

    #[test]
    fn failover_slots_need_postgresql_17() {
        assert_eq!(
            SlotOptions::new().failover(true).create_command("s", 170002).unwrap(),
            "CREATE_REPLICATION_SLOT s LOGICAL pgoutput (SNAPSHOT 'nothing', FAILOVER true)"
        );
        let err = SlotOptions::new().failover(true).create_command("s", 160004).unwrap_err();
        assert!(err.to_string().contains("source.failover = false"), "{err}");
    }

    #[test]
    fn every_option_is_rendered_in_both_syntaxes() {
        let options = SlotOptions::new().temporary(true).snapshot(SnapshotAction::Export).two_phase(true);
        assert_eq!(
            options.create_command("s", 170000).unwrap(),
            "CREATE_REPLICATION_SLOT s TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export', TWO_PHASE true)"
        );
        assert_eq!(
            options.create_command("s", 140000).unwrap(),
            "CREATE_REPLICATION_SLOT s TEMPORARY LOGICAL pgoutput TWO_PHASE EXPORT_SNAPSHOT"
        );
        let using = SlotOptions::new().snapshot(SnapshotAction::Use);
        assert_eq!(
            using.create_command("s", 150000).unwrap(),
            "CREATE_REPLICATION_SLOT s LOGICAL pgoutput (SNAPSHOT 'use')"
        );
        assert_eq!(
            using.create_command("s", 130000).unwrap(),
            "CREATE_REPLICATION_SLOT s LOGICAL pgoutput USE_SNAPSHOT"
        );
    }

    #[test]
    fn two_phase_before_14_is_refused() {
        let err = SlotOptions::new().two_phase(true).create_command("s", 130011).unwrap_err();
        assert!(err.to_string().contains("14"), "{err}");
    }

    #[test]
    fn slot_state_query_quotes_the_name_and_fits_the_version() {
        let query = slot_state_query("o'x", 150000);
        assert!(query.ends_with("slot_name = 'o''x'"), "{query}");
        assert!(query.contains("two_phase::text"));
        assert!(slot_state_query("s", 130000).contains("NULL::text AS two_phase"));
    }
}
