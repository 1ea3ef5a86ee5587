//! `[source]`: the PostgreSQL server to replicate from and how.
//!
//! The binary embeds [`SourceConfig`] in its configuration file; this crate
//! knows nothing else of that file. The password comes only from the
//! environment or a file, is held as a `SecretString` and is never logged.

use std::path::PathBuf;

use pg_replication::ConnectOptions;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::SourceError;

/// `[source]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// libpq-style URL or key/value string, without password.
    /// Example: `"postgres://pgfanout@db:5432/app"`, or `"host=/var/run/postgresql dbname=app user=pgfanout"`.
    pub url: String,
    /// Password; set it with `PGFANOUT_SOURCE__PASSWORD`, not in the file.
    #[serde(default)]
    pub password: Option<SecretString>,
    /// File holding the password (first line), e.g. a mounted secret.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Logical replication slot. Default: `pgfanout`.
    #[serde(default = "default_slot")]
    pub slot: String,
    /// Publication to stream. Default: `pgfanout`.
    #[serde(default = "default_publication")]
    pub publication: String,
    /// Create the slot when missing. Default: true.
    #[serde(default = "default_true")]
    pub create_slot: bool,
    /// Create the slot even though sinks hold checkpoints (they then miss the
    /// changes made while there was no slot: rebuild them). Default `false`:
    /// a missing slot stops pgfanout. Set it for one start, then remove it.
    #[serde(default)]
    pub recreate_slot: bool,
    /// Create the slot as a failover slot (PostgreSQL 17+), which standbys
    /// with `sync_replication_slots = on` keep, so pgfanout can resume after
    /// a promotion. Default `false`.
    #[serde(default)]
    pub failover: bool,
    /// Create the publication (for the routed tables) when missing, and add
    /// routed tables it lacks. False: report what to run instead. Default: true.
    #[serde(default = "default_true")]
    pub create_publication: bool,
    /// Milliseconds between standby status updates. Default: 10000.
    #[serde(default = "default_status_interval_ms")]
    pub status_interval_ms: u64,
    /// Over TCP, microseconds the stream waits before reading again after a
    /// read of 16 KiB or more (a busy stream), so the walsender's messages
    /// pile up in the socket and are taken in one read rather than waking
    /// pgfanout one by one: over loopback this halves the walsender's CPU
    /// per message. An idle stream is read the moment data arrives; unix
    /// sockets (too small a buffer to pile up in) are never paused; 0 turns
    /// it off. The timer rounds it up to the millisecond. At most 100000
    /// (100 ms). Default: 500.
    #[serde(default = "default_busy_read_pause_us")]
    pub busy_read_pause_us: u64,
    /// Receive large transactions while they run (pgoutput `streaming`,
    /// PostgreSQL 14+), held until they commit and spilled to disk past
    /// `pipeline.spill_memory_mb`. Off: the server holds (and spills) them.
    /// Default: true.
    #[serde(default = "default_true")]
    pub streaming: bool,
    /// Seconds without any transaction after which pgfanout writes a tiny
    /// `pg_logical_emit_message` (prefix `pgfanout.heartbeat`, not
    /// transactional) so the slot keeps advancing on an idle database; 0
    /// turns it off. The role needs EXECUTE on `pg_logical_emit_message`.
    /// Default: 30.
    #[serde(default = "default_heartbeat_interval_secs")]
    pub heartbeat_interval_secs: u64,
    /// Seconds between a standby's checks whether the slot is free. A
    /// second pgfanout on the same slot waits (`/readyz` says `"standby"`)
    /// while another streams from it, and takes over within this long once
    /// PostgreSQL frees the slot. Default: 5.
    #[serde(default = "default_standby_poll_secs")]
    pub standby_poll_secs: u64,
}

impl SourceConfig {
    /// The password from the environment or the password file.
    pub fn password(&self) -> Result<Option<SecretString>, SourceError> {
        if let Some(password) = &self.password {
            return Ok(Some(password.clone()));
        }
        match &self.password_file {
            Some(file) => {
                let text = std::fs::read_to_string(file)
                    .map_err(|source| SourceError::PasswordFile { path: file.clone(), source })?;
                Ok(Some(SecretString::from(text.lines().next().unwrap_or_default().to_owned())))
            }
            None => Ok(None),
        }
    }

    /// Connection settings for the source, password included.
    pub fn connect_options(&self) -> Result<ConnectOptions, SourceError> {
        let mut options = ConnectOptions::parse(&self.url).map_err(|err| SourceError::Url(Box::new(err)))?;
        if let Some(password) = self.password()? {
            options = options.with_password(password.expose_secret().as_bytes().to_vec());
        }
        Ok(options)
    }
}

fn default_slot() -> String {
    "pgfanout".into()
}
fn default_publication() -> String {
    "pgfanout".into()
}
fn default_true() -> bool {
    true
}
fn default_heartbeat_interval_secs() -> u64 {
    30
}
fn default_standby_poll_secs() -> u64 {
    5
}
fn default_status_interval_ms() -> u64 {
    10_000
}
fn default_busy_read_pause_us() -> u64 {
    pg_replication::DEFAULT_BUSY_READ_PAUSE.as_micros() as u64
}
