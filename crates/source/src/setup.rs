//! The source side before streaming: connection settings, the checks that
//! PostgreSQL is ready for logical replication, and creating (or completing)
//! the publication and the slot.
//!
//! The checks come in two kinds:
//!
//! - [`source_problems`]: prerequisites (wal_level, the routed tables and
//!   their replica identity, the publication, the slot). `run` refuses to
//!   start on any of them, `check` fails on them.
//! - [`slot_health`]: how the slot is being used right now (another consumer
//!   holding it, WAL it holds back, the server's limit on that WAL). `run`
//!   retries through a busy slot and lives with the rest, so only `check`
//!   reports them.
//!
//! Every check reads the catalogs through the replication connection itself
//! (a `replication=database` session accepts plain SQL), so `check` needs no
//! second connection and no grant beyond what streaming needs. Every problem
//! is one line ending with the statement or setting that fixes it.

use pg_replication::{QueryResult, ReplicationConnection, ReplicationError};
use pgfanout_core::{error_chain, metrics, TableName};
use postgres_protocol::escape::{escape_identifier, escape_literal};

use crate::{Routing, SourceConfig, SourceError};

/// Retained WAL past which `check` warns when `max_slot_wal_keep_size` is
/// unlimited: 1 GiB is far beyond what a healthy pgfanout holds back (it
/// confirms every few seconds) and far below a typical WAL disk.
const RETAINED_WAL_WARNING_BYTES: u64 = 1 << 30;

/// Share of `max_slot_wal_keep_size`, in percent, past which `check` warns:
/// beyond the limit PostgreSQL invalidates the slot and the sinks need a
/// rebuild, so the warning comes while there is still room.
const KEEP_SIZE_WARNING_PERCENT: u64 = 80;

/// First server version with failover slots.
const FAILOVER_SLOTS_SINCE: u32 = 170_000;

/// The `publish` option pgfanout needs: the sinks apply inserts, updates,
/// deletes and truncates.
const PUBLISHED_OPERATIONS: [&str; 4] = ["insert", "update", "delete", "truncate"];

/// Problems with the source that `run` would stop on, one line each.
pub async fn source_problems(
    connection: &mut ReplicationConnection,
    source: &SourceConfig,
    routing: &Routing,
    database: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    match connection.simple_query("SHOW wal_level").await {
        Ok(result) => problems.extend(wal_level_problem(result.get(0, "wal_level").unwrap_or("unknown"))),
        Err(err) => problems.push(format!("cannot read wal_level: {}", error_chain(&err))),
    }

    let routed = routing.tables();
    // The publication fixes name only the tables without a problem of their
    // own: publishing a table that lacks a replica identity would make
    // PostgreSQL refuse the application's UPDATEs and DELETEs on it, and a
    // missing table or a view would make the statement fail.
    let mut partitioned = Vec::new();
    let publishable: Vec<TableName> = match read_routed_tables(connection, &routed).await {
        Ok(tables) => {
            let mut publishable = Vec::new();
            for table in tables {
                if table.relation.as_ref().is_some_and(|relation| relation.kind == "p") {
                    partitioned.push(table.name.clone());
                }
                match table_problem(&table, routing) {
                    Some(problem) => problems.push(problem),
                    None => publishable.push(table.name),
                }
            }
            publishable
        }
        Err(err) => {
            problems.push(format!("cannot read the routed tables from pg_class: {}", error_chain(&err)));
            routed
        }
    };

    let publication = &source.publication;
    match read_publication(connection, publication).await {
        Ok(None) if !source.create_publication => problems.push(format!(
            "publication {publication} does not exist and source.create_publication is false: run {}",
            create_publication_sql(publication, &publishable)
        )),
        Ok(None) => {}
        Ok(Some(state)) => {
            let lacking = state.lacking(&publishable);
            if !lacking.is_empty() && !source.create_publication {
                problems.push(format!(
                    "publication {publication} lacks routed tables and source.create_publication is false: run {}",
                    add_tables_sql(publication, &lacking)
                ));
            }
            problems.extend(state.publish_problem(publication));
            problems.extend(state.partition_root_problem(publication, &partitioned));
        }
        Err(err) => problems.push(format!("cannot read publication {publication}: {}", error_chain(&err))),
    }

    let slot = &source.slot;
    if source.failover && connection.server_version() < FAILOVER_SLOTS_SINCE {
        problems.push(format!(
            "source.failover = true needs PostgreSQL 17 or later (failover slots); this server is version {}: \
             set source.failover = false",
            connection.server_version()
        ));
    }
    match connection.slot_state(slot).await {
        Ok(Some(state)) if state.slot_type != "logical" => problems.push(format!(
            "slot {slot} is a {} slot, not a logical one: configure another source.slot",
            state.slot_type
        )),
        Ok(Some(state)) if state.plugin.as_deref() != Some("pgoutput") => problems.push(format!(
            "slot {slot} uses plugin {}, not pgoutput: configure another source.slot, or if nothing else reads \
             it, run SELECT pg_drop_replication_slot({})",
            state.plugin.as_deref().unwrap_or("(none)"),
            escape_literal(slot)
        )),
        Ok(Some(state)) if state.database.as_deref() != Some(database) => problems.push(format!(
            "slot {slot} belongs to database {}, not {database} (a logical slot decodes one database): \
             configure another source.slot",
            state.database.as_deref().unwrap_or("(none)")
        )),
        Ok(Some(state)) if state.wal_status.as_deref() == Some("lost") => problems.push(format!(
            "slot {slot} is invalidated (wal_status = lost: the WAL it needed was removed): run \
             SELECT pg_drop_replication_slot({}), then `pgfanout rebuild --sink NAME --wipe` each sink",
            escape_literal(slot)
        )),
        Ok(Some(_)) => {}
        Ok(None) if !source.create_slot => problems.push(format!(
            "slot {slot} does not exist and source.create_slot is false: run \
             SELECT pg_create_logical_replication_slot({}, 'pgoutput')",
            escape_literal(slot)
        )),
        // `run` will create the slot: there must be room for one more. (A
        // free walsender needs no check: this connection is one, and `run`
        // streams on the connection it prepared the source with. When
        // max_wal_senders is exhausted, connecting already failed.)
        Ok(None) => match free_slot_problem(connection, slot).await {
            Ok(problem) => problems.extend(problem),
            Err(err) => problems.push(format!("cannot count the replication slots: {}", error_chain(&err))),
        },
        Err(err) => problems.push(format!("cannot read slot {slot}: {}", error_chain(&err))),
    }
    problems
}

/// The wal_level problem, if `level` is not `logical`.
fn wal_level_problem(level: &str) -> Option<String> {
    (level != "logical").then(|| {
        format!(
            "wal_level is {level}, not logical: run ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL \
             (a reload is not enough)"
        )
    })
}

/// What the catalogs say about one routed table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RoutedTable {
    name: TableName,
    /// `None` when no relation of that name exists.
    relation: Option<Relation>,
}

/// The facts about a relation that decide whether it can be replicated.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Relation {
    /// `pg_class.relkind`: `r` table, `p` partitioned table, `v` view, …
    kind: String,
    /// `pg_class.relreplident`: `d` default (the primary key), `n` nothing,
    /// `f` full (every column), `i` a chosen unique index.
    replica_identity: String,
    has_primary_key: bool,
    /// For identity `i`: the chosen index still exists and is valid.
    /// Dropping it leaves `relreplident` at `i`, and PostgreSQL then logs no
    /// old key at all, as with NOTHING.
    identity_index_usable: bool,
    /// A unique index that could serve as the replica identity (valid,
    /// immediate, not partial, on plain NOT NULL columns), to offer as a fix.
    unique_index: Option<String>,
}

async fn read_routed_tables(
    connection: &mut ReplicationConnection,
    routed: &[TableName],
) -> Result<Vec<RoutedTable>, ReplicationError> {
    if routed.is_empty() {
        return Ok(Vec::new());
    }
    let names = routed
        .iter()
        .map(|table| format!("({}, {})", escape_literal(&table.schema), escape_literal(&table.name)))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT t.schema_name, t.table_name, c.relkind, c.relreplident, \
           EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) \
             AS has_primary_key, \
           EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisreplident \
             AND i.indisvalid AND i.indisready AND i.indislive) AS identity_index_usable, \
           (SELECT ic.relname FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
             WHERE i.indrelid = c.oid AND i.indisunique AND i.indimmediate AND i.indisvalid \
               AND i.indpred IS NULL AND i.indexprs IS NULL \
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a \
                 WHERE a.attrelid = c.oid AND a.attnum = ANY (i.indkey) AND NOT a.attnotnull) \
             ORDER BY ic.relname LIMIT 1) AS unique_index \
         FROM (VALUES {names}) AS t (schema_name, table_name) \
         LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = t.schema_name \
         LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.table_name"
    );
    let result = connection.simple_query(&sql).await?;
    Ok((0..result.rows.len())
        .map(|row| RoutedTable {
            name: TableName::new(
                result.get(row, "schema_name").unwrap_or_default(),
                result.get(row, "table_name").unwrap_or_default(),
            ),
            relation: result.get(row, "relkind").map(|kind| Relation {
                kind: kind.to_owned(),
                replica_identity: result.get(row, "relreplident").unwrap_or_default().to_owned(),
                has_primary_key: flag(&result, row, "has_primary_key"),
                identity_index_usable: flag(&result, row, "identity_index_usable"),
                unique_index: result.get(row, "unique_index").map(str::to_owned),
            }),
        })
        .collect())
}

/// Why a routed table cannot be replicated, with the fix.
fn table_problem(table: &RoutedTable, routing: &Routing) -> Option<String> {
    let name = &table.name;
    let Some(relation) = &table.relation else {
        return Some(format!(
            "routed table {name} (sink {}) does not exist: create it, or remove its [[sink.table]] from the config",
            sinks_routing(routing, name)
        ));
    };
    match relation.kind.as_str() {
        "r" | "p" => identity_problem(name, relation).or_else(|| full_identity_problem(name, relation, routing)),
        kind => Some(format!(
            "routed table {name} (sink {}) is a {}, and logical replication publishes tables only: route the \
             table it reads from instead",
            sinks_routing(routing, name),
            relation_kind_name(kind)
        )),
    }
}

/// The replica identity problem of a table, if any. Without an identity,
/// PostgreSQL logs no old key for UPDATE and DELETE — and refuses those
/// statements outright on a table whose publication publishes them.
fn identity_problem(name: &TableName, relation: &Relation) -> Option<String> {
    let table = qualified(name);
    let why = match relation.replica_identity.as_str() {
        // FULL works: the old row carries every column, so a sink can find
        // the row whatever its key. Sinks without a configured key then key
        // the table by all its columns (that is what pgoutput marks as key).
        "f" => return None,
        "d" if relation.has_primary_key => return None,
        "i" if relation.identity_index_usable => return None,
        "d" => "has no primary key",
        "n" => "has REPLICA IDENTITY NOTHING",
        "i" => "has REPLICA IDENTITY USING INDEX, but that index was dropped or is invalid",
        // relreplident has no other values.
        _ => return None,
    };
    let mut fixes = Vec::new();
    if relation.has_primary_key {
        fixes.push(format!("ALTER TABLE {table} REPLICA IDENTITY DEFAULT"));
    } else {
        // A primary key only helps where the identity is DEFAULT.
        if relation.replica_identity == "d" {
            fixes.push(format!("ALTER TABLE {table} ADD PRIMARY KEY (…)"));
        }
        if let Some(index) = &relation.unique_index {
            fixes.push(format!("ALTER TABLE {table} REPLICA IDENTITY USING INDEX {}", escape_identifier(index)));
        }
        fixes.push(format!("ALTER TABLE {table} REPLICA IDENTITY FULL"));
    }
    Some(format!(
        "table {name} {why}, so its updates and deletes cannot be replicated (PostgreSQL rejects them once the \
         table is published): run {}",
        fixes.join(" or ")
    ))
}

/// A table some sink needs the whole old row of (running aggregates: old value out, new
/// value in) without `REPLICA IDENTITY FULL`.
fn full_identity_problem(name: &TableName, relation: &Relation, routing: &Routing) -> Option<String> {
    if relation.replica_identity == "f" {
        return None;
    }
    let sinks = routing.sinks_needing_full_identity(name);
    if sinks.is_empty() {
        return None;
    }
    Some(format!(
        "table {name} feeds running aggregates (sink {}), which need the old row of every update and delete: \
         run ALTER TABLE {} REPLICA IDENTITY FULL",
        sinks.join(", "),
        qualified(name)
    ))
}

fn relation_kind_name(kind: &str) -> &'static str {
    match kind {
        "v" => "view",
        "m" => "materialized view",
        "f" => "foreign table",
        "S" => "sequence",
        "i" | "I" => "index",
        "c" => "composite type",
        "t" => "TOAST table",
        _ => "relation that is not a table",
    }
}

/// The names of the sinks that route `table`, for messages.
fn sinks_routing(routing: &Routing, table: &TableName) -> String {
    routing.sinks_routing(table).join(", ")
}

/// What the catalogs say about the publication.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PublicationState {
    publishes_insert: bool,
    publishes_update: bool,
    publishes_delete: bool,
    publishes_truncate: bool,
    /// `publish_via_partition_root`: changes to a partition arrive under
    /// the partitioned table's name.
    via_root: bool,
    tables: Vec<TableName>,
}

impl PublicationState {
    /// The `tables` the publication does not publish.
    fn lacking(&self, tables: &[TableName]) -> Vec<TableName> {
        tables.iter().filter(|table| !self.tables.contains(table)).cloned().collect()
    }

    /// Routed partitioned tables while the publication sends their changes
    /// under each partition's own name, which no sink routes.
    fn partition_root_problem(&self, publication: &str, partitioned: &[TableName]) -> Option<String> {
        if self.via_root || partitioned.is_empty() {
            return None;
        }
        let tables = partitioned.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        Some(format!(
            "publication {publication} sends the changes of partitioned table(s) {tables} under each partition's \
             own name, which no sink routes: run ALTER PUBLICATION {} SET (publish_via_partition_root = true)",
            escape_identifier(publication)
        ))
    }

    /// The operations pgfanout needs that the publication leaves out.
    fn publish_problem(&self, publication: &str) -> Option<String> {
        let needed = [self.publishes_insert, self.publishes_update, self.publishes_delete, self.publishes_truncate];
        let missing: Vec<&str> =
            PUBLISHED_OPERATIONS.iter().zip(needed).filter(|(_, published)| !published).map(|(op, _)| *op).collect();
        if missing.is_empty() {
            return None;
        }
        let publish = PUBLISHED_OPERATIONS.to_vec();
        Some(format!(
            "publication {publication} does not publish {}, so the sinks would miss those changes: run \
             ALTER PUBLICATION {} SET (publish = '{}')",
            missing.join(", "),
            escape_identifier(publication),
            publish.join(", ")
        ))
    }
}

/// The publication's options and tables, `None` if it does not exist.
async fn read_publication(
    connection: &mut ReplicationConnection,
    publication: &str,
) -> Result<Option<PublicationState>, ReplicationError> {
    let name = escape_literal(publication);
    let options = connection
        .simple_query(&format!(
            "SELECT pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot FROM pg_catalog.pg_publication \
             WHERE pubname = {name}"
        ))
        .await?;
    if options.rows.is_empty() {
        return Ok(None);
    }
    let published = connection
        .simple_query(&format!(
            "SELECT schemaname, tablename FROM pg_catalog.pg_publication_tables WHERE pubname = {name}"
        ))
        .await?;
    Ok(Some(PublicationState {
        publishes_insert: flag(&options, 0, "pubinsert"),
        publishes_update: flag(&options, 0, "pubupdate"),
        publishes_delete: flag(&options, 0, "pubdelete"),
        publishes_truncate: flag(&options, 0, "pubtruncate"),
        via_root: flag(&options, 0, "pubviaroot"),
        tables: (0..published.rows.len())
            .map(|row| {
                TableName::new(
                    published.get(row, "schemaname").unwrap_or_default(),
                    published.get(row, "tablename").unwrap_or_default(),
                )
            })
            .collect(),
    }))
}

/// The statement `run` creates the publication with (and `check` offers).
/// Changes to a partition are published under the partitioned table's
/// name, the one the config routes (PostgreSQL 13+).
fn create_publication_sql(publication: &str, tables: &[TableName]) -> String {
    format!(
        "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = '{}', publish_via_partition_root = true)",
        escape_identifier(publication),
        table_list(tables),
        PUBLISHED_OPERATIONS.join(", ")
    )
}

/// The statement `run` adds routed tables with (and `check` offers).
fn add_tables_sql(publication: &str, tables: &[TableName]) -> String {
    format!("ALTER PUBLICATION {} ADD TABLE {}", escape_identifier(publication), table_list(tables))
}

/// Quoted, comma-separated; `…` when no table qualifies yet (the problems
/// with the tables themselves come first).
fn table_list(tables: &[TableName]) -> String {
    if tables.is_empty() {
        return "…".to_owned();
    }
    tables.iter().map(qualified).collect::<Vec<_>>().join(", ")
}

/// A problem when every replication slot is taken, so `slot` cannot be created.
async fn free_slot_problem(
    connection: &mut ReplicationConnection,
    slot: &str,
) -> Result<Option<String>, ReplicationError> {
    let result = connection
        .simple_query(
            "SELECT count(*) AS used, current_setting('max_replication_slots') AS max \
             FROM pg_catalog.pg_replication_slots",
        )
        .await?;
    let number = |column| result.get(0, column).and_then(|value| value.parse::<u64>().ok());
    Ok(match (number("used"), number("max")) {
        (Some(used), Some(max)) if used >= max => Some(format!(
            "all {max} replication slots are taken (max_replication_slots = {max}), so slot {slot} cannot be \
             created: drop one that is no longer used (SELECT slot_name, active FROM pg_replication_slots; \
             SELECT pg_drop_replication_slot('…')), or raise max_replication_slots and restart PostgreSQL"
        )),
        _ => None,
    })
}

/// What `check` says about the slot's current use, beyond the prerequisites.
#[derive(Debug, Default)]
pub struct SlotHealth {
    /// Make `check` fail: another consumer holds the slot.
    pub problems: Vec<String>,
    /// Risks to act on soon; `check` still passes.
    pub warnings: Vec<String>,
}

/// `max_slot_wal_keep_size`: how much WAL a slot may hold back before
/// PostgreSQL invalidates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WalKeepLimit {
    /// `-1`, the default: a slot keeps WAL until the disk is full.
    Unlimited,
    Bytes(u64),
}

/// The slot as `pg_replication_slots` shows it right now.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SlotUse {
    /// Process streaming from the slot, if any.
    active_pid: Option<i32>,
    /// That process's `application_name` and address, when visible.
    holder: Option<String>,
    /// Bytes of WAL between the slot's `restart_lsn` and the current position.
    retained_bytes: Option<u64>,
    /// Bytes left before `max_slot_wal_keep_size` invalidates the slot.
    safe_wal_size: Option<i64>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    wal_status: Option<String>,
}

/// The slot's current use and the WAL it holds back (`check` only).
pub async fn slot_health(connection: &mut ReplicationConnection, source: &SourceConfig) -> SlotHealth {
    let slot = &source.slot;
    let mut health = SlotHealth::default();
    let limit = match read_wal_keep_limit(connection).await {
        Ok(limit) => limit,
        Err(err) => {
            health.problems.push(format!("cannot read max_slot_wal_keep_size: {}", error_chain(&err)));
            None
        }
    };
    if limit == Some(WalKeepLimit::Unlimited) {
        health.warnings.push(format!(
            "max_slot_wal_keep_size is -1 (unlimited): while pgfanout is stopped or a sink is stuck, slot {slot} \
             holds back WAL until PostgreSQL's disk is full; run ALTER SYSTEM SET max_slot_wal_keep_size = \
             '50GB' (well below the WAL disk's free space) and SELECT pg_reload_conf() (past that size the slot \
             is invalidated and the sinks need `pgfanout rebuild`, but the primary stays up)"
        ));
    }
    if source.failover && connection.server_version() >= FAILOVER_SLOTS_SINCE {
        match connection.simple_query("SHOW synchronized_standby_slots").await {
            Ok(result) if result.get(0, "synchronized_standby_slots").unwrap_or_default().is_empty() => {
                health.warnings.push(format!(
                    "slot {slot} is a failover slot, but synchronized_standby_slots is empty: pgfanout may receive \
                     changes a standby has not yet received, and after a failover to that standby the slot would \
                     be behind what the sinks hold; on the primary run ALTER SYSTEM SET \
                     synchronized_standby_slots = '<the standby's physical slot>' and SELECT pg_reload_conf(), \
                     and set sync_replication_slots = on and hot_standby_feedback = on on the standby"
                ));
            }
            Ok(_) => {}
            Err(err) => health.problems.push(format!("cannot read synchronized_standby_slots: {}", error_chain(&err))),
        }
    }
    match read_slot_use(connection, slot).await {
        Ok(Some(slot_use)) => {
            // This connection never streams, so whoever holds the slot is
            // another process: a second pgfanout, pg_recvlogical, a stale
            // walsender.
            if let Some(pid) = slot_use.active_pid {
                health.problems.push(format!(
                    "slot {slot} is in use by another process (pid {pid}{}), so pgfanout cannot stream from it: \
                     stop that process, or end it with SELECT pg_terminate_backend({pid})",
                    slot_use.holder.as_deref().map(|holder| format!(", {holder}")).unwrap_or_default()
                ));
            }
            health.warnings.extend(retained_wal_warning(slot, &slot_use, limit));
        }
        Ok(None) => {}
        Err(err) => health.problems.push(format!("cannot read slot {slot}: {}", error_chain(&err))),
    }
    health
}

/// `None` on servers without the setting (before PostgreSQL 13).
async fn read_wal_keep_limit(connection: &mut ReplicationConnection) -> Result<Option<WalKeepLimit>, ReplicationError> {
    let result = connection
        .simple_query(
            "SELECT CASE WHEN setting::bigint < 0 THEN -1 ELSE pg_catalog.pg_size_bytes(setting || coalesce(unit, '')) \
             END AS bytes FROM pg_catalog.pg_settings WHERE name = 'max_slot_wal_keep_size'",
        )
        .await?;
    Ok(result.get(0, "bytes").and_then(|bytes| bytes.parse::<i64>().ok()).map(|bytes| match u64::try_from(bytes) {
        Ok(bytes) => WalKeepLimit::Bytes(bytes),
        Err(_) => WalKeepLimit::Unlimited,
    }))
}

async fn read_slot_use(
    connection: &mut ReplicationConnection,
    slot: &str,
) -> Result<Option<SlotUse>, ReplicationError> {
    // On a standby the WAL position is the last one received.
    let sql = format!(
        "SELECT s.active_pid, r.application_name, r.client_addr, \
           ((CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_receive_lsn() \
             ELSE pg_catalog.pg_current_wal_lsn() END) - s.restart_lsn)::bigint AS retained_bytes, \
           s.safe_wal_size, s.wal_status \
         FROM pg_catalog.pg_replication_slots s \
         LEFT JOIN pg_catalog.pg_stat_replication r ON r.pid = s.active_pid \
         WHERE s.slot_name = {}",
        escape_literal(slot)
    );
    let result = connection.simple_query(&sql).await?;
    if result.rows.is_empty() {
        return Ok(None);
    }
    let text = |column| result.get(0, column).map(str::to_owned);
    let holder = match (result.get(0, "application_name").filter(|name| !name.is_empty()), result.get(0, "client_addr"))
    {
        (Some(name), Some(address)) => Some(format!("{name} from {address}")),
        (Some(name), None) => Some(name.to_owned()),
        (None, Some(address)) => Some(format!("from {address}")),
        (None, None) => None,
    };
    Ok(Some(SlotUse {
        active_pid: result.get(0, "active_pid").and_then(|pid| pid.parse().ok()),
        holder,
        retained_bytes: result.get(0, "retained_bytes").and_then(|bytes| bytes.parse().ok()),
        safe_wal_size: result.get(0, "safe_wal_size").and_then(|bytes| bytes.parse().ok()),
        wal_status: text("wal_status"),
    }))
}

/// A warning when the slot holds back more WAL than is healthy: past 80% of
/// `max_slot_wal_keep_size` (the slot is about to be invalidated), or past
/// 1 GiB when there is no limit (the disk is what runs out).
fn retained_wal_warning(slot: &str, slot_use: &SlotUse, limit: Option<WalKeepLimit>) -> Option<String> {
    let retained = slot_use.retained_bytes?;
    let remedy = format!(
        "start pgfanout, or unblock the sink whose {} lags; if the slot is abandoned, run \
         SELECT pg_drop_replication_slot({})",
        metrics::CHECKPOINT_LSN,
        escape_literal(slot)
    );
    if slot_use.wal_status.as_deref() == Some("unreserved") {
        return Some(format!(
            "slot {slot} holds back {} of WAL, past max_slot_wal_keep_size (wal_status = unreserved): PostgreSQL \
             invalidates it at the next checkpoint unless it catches up; {remedy}",
            human_bytes(retained)
        ));
    }
    let (threshold, context) = match limit {
        Some(WalKeepLimit::Bytes(limit)) => (
            limit / 100 * KEEP_SIZE_WARNING_PERCENT,
            match slot_use.safe_wal_size.and_then(|left| u64::try_from(left).ok()) {
                Some(left) => format!(
                    "{} left before max_slot_wal_keep_size ({}) invalidates it",
                    human_bytes(left),
                    human_bytes(limit)
                ),
                None => format!("max_slot_wal_keep_size is {}", human_bytes(limit)),
            },
        ),
        _ => (RETAINED_WAL_WARNING_BYTES, "with no max_slot_wal_keep_size it grows until the disk is full".to_owned()),
    };
    (retained > threshold).then(|| {
        format!(
            "slot {slot} holds back {} of WAL (wal_status = {}; {context}): {remedy}",
            human_bytes(retained),
            slot_use.wal_status.as_deref().unwrap_or("unknown")
        )
    })
}

/// `1.5 GiB`, `300.0 MiB`, `12 kB`: sizes as an operator reads them.
fn human_bytes(bytes: u64) -> String {
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    // Precision loss in the conversion is far below the one decimal shown.
    match bytes {
        b if b >= GIB => format!("{:.1} GiB", b as f64 / GIB as f64),
        b if b >= MIB => format!("{:.1} MiB", b as f64 / MIB as f64),
        b if b >= KIB => format!("{} kB", b / KIB),
        b => format!("{b} bytes"),
    }
}

/// A boolean column in the simple query protocol's text form (`t`/`f`).
fn flag(result: &QueryResult, row: usize, column: &str) -> bool {
    result.get(row, column) == Some("t")
}

/// Creates the publication when missing. It comes before the slot, which
/// `run` creates after checking the sinks' checkpoints: a slot only decodes
/// publications that existed when its WAL was written.
pub async fn prepare_source(
    connection: &mut ReplicationConnection,
    source: &SourceConfig,
    routing: &Routing,
    database: &str,
) -> Result<(), SourceError> {
    let problems = source_problems(connection, source, routing, database).await;
    if !problems.is_empty() {
        return Err(SourceError::NotReady(problems));
    }
    let publication = &source.publication;
    let routed = routing.tables();
    let read = read_publication(connection, publication).await;
    match read.map_err(SourceError::replication(format!("cannot read publication {publication}")))? {
        None => {
            let sql = create_publication_sql(publication, &routed);
            connection
                .simple_query(&sql)
                .await
                .map_err(SourceError::replication(format!("cannot create publication {publication}")))?;
            let tables = routed.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            tracing::info!(%publication, %tables, "created publication");
        }
        // The config is the source of truth for what is routed: a table
        // added to it is added to the publication (changes to it are
        // streamed from this point on).
        Some(state) => {
            let lacking = state.lacking(&routed);
            if !lacking.is_empty() {
                let tables = lacking.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
                connection.simple_query(&add_tables_sql(publication, &lacking)).await.map_err(
                    SourceError::replication(format!(
                        "cannot add {tables} to publication {publication}; add them yourself or fix the grants"
                    )),
                )?;
                tracing::info!(%publication, %tables, "added routed tables to the publication");
            }
        }
    }
    // The slot is created by `run` once the sinks' checkpoints allow it
    // (crate::identity).
    Ok(())
}

/// `"schema"."table"`, quoted for SQL.
pub fn qualified(table: &TableName) -> String {
    format!("{}.{}", escape_identifier(&table.schema), escape_identifier(&table.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relation(replica_identity: &str, has_primary_key: bool) -> Relation {
        Relation {
            kind: "r".into(),
            replica_identity: replica_identity.into(),
            has_primary_key,
            identity_index_usable: false,
            unique_index: None,
        }
    }

    fn events() -> TableName {
        TableName::new("app", "Events")
    }

    #[test]
    fn wal_level_other_than_logical_names_the_setting_and_the_restart() {
        assert_eq!(wal_level_problem("logical"), None);
        let problem = wal_level_problem("replica").expect("replica is not enough for logical decoding");
        assert!(problem.starts_with("wal_level is replica, not logical: "), "{problem}");
        assert!(problem.contains("ALTER SYSTEM SET wal_level = logical"), "{problem}");
        assert!(problem.contains("restart PostgreSQL"), "{problem}");
        assert!(!problem.contains('\n'));
    }

    #[test]
    fn usable_replica_identities_are_no_problem() {
        assert_eq!(identity_problem(&events(), &relation("d", true)), None);
        assert_eq!(identity_problem(&events(), &relation("f", false)), None);
        let index = Relation { identity_index_usable: true, ..relation("i", false) };
        assert_eq!(identity_problem(&events(), &index), None);
    }

    #[test]
    fn missing_primary_key_offers_a_key_a_unique_index_or_full() {
        let problem = identity_problem(&events(), &relation("d", false)).unwrap();
        assert!(problem.starts_with("table app.Events has no primary key"), "{problem}");
        assert!(problem.contains(r#"ALTER TABLE "app"."Events" ADD PRIMARY KEY (…)"#), "{problem}");
        assert!(problem.contains(r#"ALTER TABLE "app"."Events" REPLICA IDENTITY FULL"#), "{problem}");
        assert!(!problem.contains("USING INDEX"), "{problem}");

        let with_index = Relation { unique_index: Some("events_code_key".into()), ..relation("d", false) };
        let problem = identity_problem(&events(), &with_index).unwrap();
        assert!(problem.contains(r#"ALTER TABLE "app"."Events" REPLICA IDENTITY USING INDEX "events_code_key""#));
    }

    #[test]
    fn identity_nothing_or_a_lost_index_points_back_to_the_primary_key_when_there_is_one() {
        for identity in ["n", "i"] {
            let problem = identity_problem(&events(), &relation(identity, true)).unwrap();
            assert!(problem.ends_with(r#"run ALTER TABLE "app"."Events" REPLICA IDENTITY DEFAULT"#), "{problem}");
            let problem = identity_problem(&events(), &relation(identity, false)).unwrap();
            assert!(problem.ends_with(r#"run ALTER TABLE "app"."Events" REPLICA IDENTITY FULL"#), "{problem}");
            // Adding a primary key does not change a NOTHING/index identity.
            assert!(!problem.contains("ADD PRIMARY KEY"), "{problem}");
        }
    }

    #[test]
    fn publication_without_updates_and_deletes_gets_the_whole_publish_list() {
        let state = PublicationState {
            publishes_insert: true,
            publishes_update: false,
            publishes_delete: false,
            publishes_truncate: true,
            via_root: true,
            tables: Vec::new(),
        };
        let problem = state.publish_problem("Feed").unwrap();
        assert!(problem.starts_with("publication Feed does not publish update, delete"), "{problem}");
        assert!(problem.ends_with(r#"run ALTER PUBLICATION "Feed" SET (publish = 'insert, update, delete, truncate')"#));
        let complete = PublicationState { publishes_update: true, publishes_delete: true, ..state.clone() };
        assert_eq!(complete.publish_problem("Feed"), None);
        let no_truncate = PublicationState { publishes_truncate: false, ..complete };
        let problem = no_truncate.publish_problem("Feed").unwrap();
        assert!(problem.starts_with("publication Feed does not publish truncate"), "{problem}");
    }

    fn slot_use(retained: u64, wal_status: &str, safe_wal_size: Option<i64>) -> SlotUse {
        SlotUse {
            active_pid: None,
            holder: None,
            retained_bytes: Some(retained),
            safe_wal_size,
            wal_status: Some(wal_status.into()),
        }
    }

    #[test]
    fn retained_wal_warns_past_one_gib_without_a_limit() {
        let under = slot_use(RETAINED_WAL_WARNING_BYTES, "extended", None);
        assert_eq!(retained_wal_warning("feed", &under, Some(WalKeepLimit::Unlimited)), None);
        let over = slot_use(3 << 29, "extended", None);
        let warning = retained_wal_warning("feed", &over, Some(WalKeepLimit::Unlimited)).unwrap();
        assert!(warning.starts_with("slot feed holds back 1.5 GiB of WAL (wal_status = extended"), "{warning}");
        assert!(warning.ends_with("SELECT pg_drop_replication_slot('feed')"), "{warning}");
    }

    #[test]
    fn retained_wal_warns_past_eighty_percent_of_the_limit() {
        let limit = Some(WalKeepLimit::Bytes(100 << 20));
        assert_eq!(retained_wal_warning("feed", &slot_use(79 << 20, "extended", Some(21 << 20)), limit), None);
        let warning = retained_wal_warning("feed", &slot_use(81 << 20, "extended", Some(19 << 20)), limit).unwrap();
        assert!(warning.contains("holds back 81.0 MiB of WAL"), "{warning}");
        assert!(
            warning.contains("19.0 MiB left before max_slot_wal_keep_size (100.0 MiB) invalidates it"),
            "{warning}"
        );
        // Unreserved: PostgreSQL is about to drop the slot's WAL, whatever the numbers.
        let warning = retained_wal_warning("feed", &slot_use(1 << 20, "unreserved", Some(-5)), limit).unwrap();
        assert!(warning.contains("invalidates it at the next checkpoint"), "{warning}");
    }

    #[test]
    fn sizes_read_like_an_operator_writes_them() {
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(12 << 10), "12 kB");
        assert_eq!(human_bytes(300 << 20), "300.0 MiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }
}
