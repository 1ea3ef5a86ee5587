//! Per-sink delivery settings shared by every sink kind: `[sink.delivery]`.
//!
//! ```toml
//! [sink.delivery]
//! lanes = 4                      # batches split by key, applied concurrently
//! on_error = "dead_letter"       # or "block" (default)
//! max_consecutive_dead_letters = 10
//! [sink.delivery.dead_letter]
//! kind = "file"                  # or "redis" / "postgres"
//! path = "/var/lib/pgfanout/cache.dead-letters.jsonl"
//! ```

use std::path::PathBuf;

use serde::Deserialize;

/// `[sink.delivery]` of one sink.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Lanes a batch is split into by primary key and applied concurrently;
    /// one key's changes always share a lane. A Redis sink gives a lane at
    /// least 64 changes, so a small batch is one call. Default: 4.
    #[serde(default = "default_lanes")]
    pub lanes: usize,
    /// What to do with a change the store rejects: `"block"` (retry until it
    /// is accepted; nothing is skipped, the slot waits) or `"dead_letter"`
    /// (write it to `dead_letter` and go on). Default: `"block"`.
    #[serde(default)]
    pub on_error: OnErrorPolicy,
    /// Where rejected changes go; required with `on_error = "dead_letter"`.
    #[serde(default)]
    pub dead_letter: Option<DeadLetterConfig>,
    /// Circuit breaker of `on_error = "dead_letter"`: once this many changes
    /// in a row went to the dead-letter destination (none applied between
    /// them), the next rejected change is not dead-lettered: the sink blocks
    /// on it, retrying, until the store accepts a change. A run of rejections
    /// that long is more likely a store that fails for every change than that
    /// many bad rows. Default: 10.
    #[serde(default = "default_max_consecutive_dead_letters")]
    pub max_consecutive_dead_letters: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            lanes: default_lanes(),
            on_error: OnErrorPolicy::Block,
            dead_letter: None,
            max_consecutive_dead_letters: default_max_consecutive_dead_letters(),
        }
    }
}

fn default_lanes() -> usize {
    4
}

/// Small on purpose: tripping costs a blocked sink (nothing lost, an
/// operator looks), not tripping costs a stream of dead letters.
fn default_max_consecutive_dead_letters() -> u64 {
    10
}

/// `on_error` values.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnErrorPolicy {
    /// Retry until the store accepts the change.
    #[default]
    Block,
    /// Record the change in the dead-letter destination and continue.
    DeadLetter,
}

/// A dead-letter destination, by `kind`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum DeadLetterConfig {
    /// JSON lines appended to a file (fsynced per record).
    File {
        /// The file; created if missing. Example: `"/var/lib/pgfanout/dead.jsonl"`.
        path: PathBuf,
    },
    /// Entries of a Redis stream (`XADD … MAXLEN ~ max_len`), field `record`.
    Redis {
        /// Server URL. Example: `"redis://127.0.0.1:6379/0"`.
        url: String,
        /// Stream key. Example: `"pgfanout:dead-letters"`.
        stream: String,
        /// Approximate cap on the stream length. Default: 100000.
        #[serde(default = "default_stream_max_len")]
        max_len: u64,
    },
    /// Rows of a PostgreSQL table (created if missing).
    Postgres {
        /// Connection URL; default: the source's URL and password.
        #[serde(default)]
        url: Option<String>,
        /// Table, `schema.table`. Default: `public.pgfanout_dead_letter`.
        #[serde(default = "default_dead_letter_table")]
        table: String,
    },
}

fn default_stream_max_len() -> u64 {
    100_000
}

fn default_dead_letter_table() -> String {
    "public.pgfanout_dead_letter".into()
}

impl DeliveryConfig {
    /// Problems serde cannot see, each saying what to change.
    pub fn validate(&self, sink: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if !(1..=64).contains(&self.lanes) {
            problems.push(format!("sink {sink}: delivery.lanes must be between 1 and 64, not {}", self.lanes));
        }
        if self.on_error == OnErrorPolicy::DeadLetter && self.dead_letter.is_none() {
            problems.push(format!(
                "sink {sink}: delivery.on_error = \"dead_letter\" needs a [sink.delivery.dead_letter] destination \
                 (kind = \"file\", \"redis\" or \"postgres\")"
            ));
        }
        if self.max_consecutive_dead_letters == 0 {
            problems.push(format!(
                "sink {sink}: delivery.max_consecutive_dead_letters must be at least 1 (a sink that may dead-letter \
                 nothing should use on_error = \"block\")"
            ));
        }
        problems
    }
}
