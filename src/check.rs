//! `pgfanout check`: validates the config, PostgreSQL's prerequisites and
//! every sink, printing one line per problem with its fix.

use anyhow::bail;
use pg_replication::ReplicationConnection;
use pgfanout_core::error_chain;

use crate::config::Config;
use crate::run::build_sink;
use crate::source::{connect_options, source_problems};

/// `pgfanout check`: config (already loaded), PostgreSQL prerequisites and
/// every sink; one line per problem.
pub async fn check(config: &Config) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    match connect_options(config) {
        Ok(options) => match ReplicationConnection::connect(&options).await {
            Ok(mut connection) => problems.extend(source_problems(&mut connection, config, options.database()).await),
            Err(err) => {
                problems.push(format!("cannot connect to PostgreSQL at {}: {}", options.endpoint(), error_chain(&err)))
            }
        },
        Err(err) => problems.push(format!("{err:#}")),
    }
    for sink_config in &config.sinks {
        match build_sink(sink_config) {
            Ok((sink, _)) => {
                if let Err(err) = sink.load_checkpoint().await {
                    problems.push(error_chain(&err));
                }
            }
            Err(err) => problems.push(format!("{err:#}")),
        }
    }
    if problems.is_empty() {
        println!("ok: config, PostgreSQL and {} sink(s) are ready", config.sinks.len());
        Ok(())
    } else {
        for problem in &problems {
            println!("problem: {problem}");
        }
        bail!("{} problem(s) found", problems.len())
    }
}
