//! `pgfanout check`: validates the config, PostgreSQL's prerequisites and
//! every sink, printing one line per finding with its fix.
//!
//! Output, on stdout:
//!
//! - `problem: …` — something `run` would stop on or could not work with
//!   (a table without replica identity, a slot held by another process, an
//!   unreachable sink). Any problem makes `check` exit 1, with a summary
//!   line on stderr.
//! - `warning: …` — a risk worth fixing that does not stop replication
//!   (WAL piling up behind the slot, no `max_slot_wal_keep_size`). Warnings
//!   alone leave the exit code 0.
//! - `ok: …` — the last line when there is no problem.
//!
//! `check` only reads: it creates no publication or slot, and writes nothing
//! to the sinks. It is a pre-flight check: run against a slot that a
//! pgfanout is streaming from, it reports the slot as held by another
//! process. Config errors are reported by loading the config, before this
//! module runs, one line per problem (on stderr, exit 1).

use anyhow::bail;
use pg_replication::ReplicationConnection;

use crate::config::Config;
use pgfanout_source::{slot_health, source_problems};

use crate::sinks::build_sink;

/// What `check` found.
#[derive(Debug, Default)]
struct Findings {
    problems: Vec<String>,
    warnings: Vec<String>,
}

/// `pgfanout check`: config (already loaded), PostgreSQL prerequisites and
/// every sink; one line per finding, `Err` when there is a problem.
pub async fn check(config: &Config) -> anyhow::Result<()> {
    let mut findings = Findings::default();
    let routing = crate::sinks::routing(config);
    match config.source.connect_options() {
        Ok(options) => match ReplicationConnection::connect(&options).await {
            Ok(mut connection) => {
                findings
                    .problems
                    .extend(source_problems(&mut connection, &config.source, &routing, options.database()).await);
                findings.problems.extend(crate::privileges::privilege_problems(&mut connection, config).await);
                findings.problems.extend(crate::table_check::problems(&mut connection, config).await);
                let health = slot_health(&mut connection, &config.source).await;
                findings.problems.extend(health.problems);
                findings.warnings.extend(health.warnings);
                // Only frees the walsender early; the server cleans up anyway.
                let _ = connection.close().await;
            }
            // Covers a role without LOGIN or REPLICATION, a wrong password and
            // a missing pg_hba.conf entry: the error says which and what to fix.
            Err(err) => findings.problems.push(format!(
                "cannot connect to PostgreSQL at {}: {}",
                options.endpoint(),
                describe(&err)
            )),
        },
        Err(err) => findings.problems.push(describe(&err)),
    }
    if let Some(archive) = &config.archive {
        let found = pgfanout_archive::preflight::check_folder(&archive.path, &archive.options());
        findings.problems.extend(found.problems);
        findings.warnings.extend(found.warnings);
    }
    for sink_config in &config.sinks {
        match build_sink(sink_config) {
            // Reading the checkpoint reaches the store without writing to it.
            Ok((sink, _)) => {
                if let Err(err) = sink.load_checkpoint().await {
                    let text = describe(&err);
                    let hint = pgfanout_core::tls::certificate_hint(&text).map(|hint| format!(" ({hint})"));
                    findings.problems.push(text + &hint.unwrap_or_default());
                }
            }
            Err(err) => findings.problems.push(format!("{err:#}")),
        }
    }
    findings.print(config.sinks.len())
}

impl Findings {
    fn print(&self, sinks: usize) -> anyhow::Result<()> {
        for problem in &self.problems {
            println!("problem: {}", one_line(problem));
        }
        for warning in &self.warnings {
            println!("warning: {}", one_line(warning));
        }
        if !self.problems.is_empty() {
            bail!("check found {} problem(s) and {} warning(s)", self.problems.len(), self.warnings.len());
        }
        let note = match self.warnings.len() {
            0 => String::new(),
            n => format!(" ({n} warning(s) above)"),
        };
        println!("ok: config, PostgreSQL and {sinks} sink(s) are ready{note}");
        Ok(())
    }
}

/// An error and its causes, `: `-separated, leaving out a cause whose text
/// the message already ends with (client libraries often repeat theirs).
fn describe(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `text` on one line: a finding is one line, even when a server message
/// it quotes spans several.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Failure {
        message: &'static str,
        cause: Option<Box<Failure>>,
    }

    impl std::fmt::Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.message)
        }
    }

    impl std::error::Error for Failure {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.cause.as_deref().map(|cause| cause as &(dyn std::error::Error + 'static))
        }
    }

    #[test]
    fn causes_are_chained_once() {
        let refused = Failure { message: "Connection refused (os error 111)", cause: None };
        let client = Failure {
            message: "cannot reach redis: Connection refused (os error 111)",
            cause: Some(Box::new(refused)),
        };
        let err = Failure { message: "sink cache: reading the checkpoint", cause: Some(Box::new(client)) };
        assert_eq!(
            describe(&err),
            "sink cache: reading the checkpoint: cannot reach redis: Connection refused (os error 111)"
        );
    }

    #[test]
    fn multi_line_messages_become_one_line() {
        assert_eq!(one_line("ERROR: no such table\n  DETAIL:  gone\n"), "ERROR: no such table DETAIL: gone");
    }
}
