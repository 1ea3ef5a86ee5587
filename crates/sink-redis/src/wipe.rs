//! `rebuild --wipe` for Redis: removes the keys pgfanout wrote for one
//! table, and only those.
//!
//! The table's keys are found with `SCAN … MATCH` of its key pattern (the
//! key template's fixed parts, or `scan_match`), a page at a time, never
//! `KEYS`: the server keeps answering other clients between pages. Each
//! page goes to `lua/wipe_page.lua`, which `UNLINK`s a key only if it holds
//! a row pgfanout wrote (the table's type, with the version field) at a
//! version below the bound. Keys other applications write under the same
//! prefix carry no version field and stay.
//!
//! Why it is safe while streaming: the script runs atomically, so a key is
//! checked and removed with no write in between; a change the stream
//! applies at or after the bound carries a newer version and is never
//! removed, whether it landed before or after the page was scanned.

use pgfanout_core::{SinkError, TableName, TableSchema, Version};

use crate::config::{RedisTableConfig, TruncateMode};
use crate::encode::KeyTemplate;
use crate::error::RedisSinkError;
use crate::sink::RedisSink;

/// The page script.
const WIPE_PAGE: &str = include_str!("lua/wipe_page.lua");

/// Keys one `SCAN` page asks for.
const SCAN_PAGE: usize = 1000;

/// The `SCAN … MATCH` pattern of a table's keys: `scan_match` when set,
/// else the fixed parts of its key template (the default template is the
/// table's name, then its key columns).
pub(crate) fn table_scan_pattern(table: &RedisTableConfig) -> Result<String, RedisSinkError> {
    if let Some(pattern) = &table.scan_match {
        return Ok(pattern.clone());
    }
    match &table.key {
        Some(template) => KeyTemplate::parse(template)
            .map(|template| template.scan_pattern())
            .map_err(|reason| RedisSinkError::Mapping { table: table.source.clone(), reason }),
        None => {
            let name = TableName::parse(&table.source);
            let prefix = if name.schema == "public" { name.name } else { name.to_string() };
            Ok(format!("{}:*", KeyTemplate::escape_pattern(&prefix)))
        }
    }
}

impl RedisSink {
    /// See [`pgfanout_core::Sink::wipe`]; the count of keys removed.
    pub(crate) async fn wipe_table(&self, table: &TableSchema, older_than: Option<Version>) -> Result<u64, SinkError> {
        let config = self.config();
        let name = &config.name;
        let label = table.table.to_string();
        let Some(table_config) = config.tables.iter().find(|t| TableName::parse(&t.source) == table.table) else {
            return Err(SinkError::cannot_wipe(name, &label, "the sink does not route this table"));
        };
        if !config.version_guard {
            return Err(SinkError::cannot_wipe(
                name,
                &label,
                "version_guard = false: without the version field pgfanout cannot tell its keys from other \
                 applications' keys; delete the table's keys yourself, then rebuild without --wipe",
            ));
        }
        let failed = |err: RedisSinkError| err.into_sink_error(name, format!("wiping table {label}"));
        let pattern = table_scan_pattern(table_config).map_err(failed)?;
        let index = match table_config.truncate {
            TruncateMode::IndexSet => {
                table_config.index_key.clone().unwrap_or_else(|| format!("{}{}", config.index_prefix(), table.table))
            }
            TruncateMode::Scan => String::new(),
        };
        let bound = older_than.map(|version| version.to_sortable_string()).unwrap_or_default();
        let script = redis::Script::new(WIPE_PAGE);
        let mut connection = self.connection().await.map_err(failed)?;
        let (mut cursor, mut removed) = (0u64, 0u64);
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_PAGE)
                .query_async(&mut connection)
                .await
                .map_err(|source| failed(RedisSinkError::Command { what: format!("SCAN MATCH {pattern}"), source }))?;
            if !keys.is_empty() {
                let mut call = script.prepare_invoke();
                for key in &keys {
                    call.key(key);
                }
                call.arg(&config.version_field).arg(table_config.format.code()).arg(&bound).arg(&index);
                let page: u64 = call.invoke_async(&mut connection).await.map_err(|source| {
                    failed(RedisSinkError::Command { what: format!("the wipe script on {} keys", keys.len()), source })
                })?;
                removed += page;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        tracing::info!(sink = %name, table = %label, removed, "wiped");
        Ok(removed)
    }
}
