//! `pgfanout`: the binary. Parses the command line, loads the config, sets up
//! logging and hands over to the command; the wiring of crates lives in
//! [`run`], the sink kinds in [`sinks`], the source side in the
//! `pgfanout-source` crate.

mod check;
mod config;
mod dead_letter;
mod discard;
mod http;
mod inspect;
mod privileges;
mod progress;
mod rebuild;
mod replay;
mod run;
mod secrets;
mod sinks;
mod snapshot;
mod table_check;
mod verify;

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// PostgreSQL change-data-capture sidecar.
#[derive(Parser)]
#[command(name = "pgfanout", version, about)]
struct Cli {
    /// Log format; `auto` is human-readable on a terminal and JSON otherwise.
    #[arg(long, value_enum, default_value_t = LogFormat::Auto, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stream changes from PostgreSQL into the configured sinks until stopped.
    Run {
        /// Path of the TOML config.
        #[arg(long, short, env = "PGFANOUT_CONFIG")]
        config: PathBuf,
        /// Exit once every transaction committed at or before this LSN is applied by every sink
        /// and confirmed, like `pg_recvlogical -E`: later transactions are left whole to the
        /// next run (a keepalive at or past it ends the stream when none is open).
        #[arg(long, value_name = "LSN")]
        until_lsn: Option<pgfanout_core::Lsn>,
    },
    /// Validate the config, PostgreSQL's prerequisites and every sink:
    /// "problem:" lines exit 1, "warning:" lines alone exit 0.
    Check {
        /// Path of the TOML config.
        #[arg(long, short, env = "PGFANOUT_CONFIG")]
        config: PathBuf,
    },
    /// Print decoded pgoutput messages as JSON lines, from a `pg_recvlogical` capture or live
    /// from a slot (which is never advanced unless --confirm is given).
    Inspect(inspect::InspectArgs),
    /// Re-apply archived changes from an LSN to some sinks (needs `[archive]`): through the
    /// running pgfanout's HTTP port, which pauses each sink while it replays into it and the
    /// others keep streaming, or, when none runs, straight into the stores.
    Replay(replay::ReplayArgs),
    /// Copy tables into one sink again (optionally wiping what pgfanout wrote for them first)
    /// while every sink keeps streaming: through the running pgfanout's HTTP port, or, when none
    /// runs, by marking them for the next `run` to copy.
    Rebuild(rebuild::RebuildArgs),
    /// Compare PostgreSQL with the sinks and print each differing key: exit 0 when equal, 1 when
    /// rows differ (with --repair: still differ after repair), 2 on an error.
    Verify {
        /// Path of the TOML config.
        #[arg(long, short, env = "PGFANOUT_CONFIG")]
        config: PathBuf,
        /// Sinks to verify; all when omitted.
        #[arg(long)]
        sink: Vec<String>,
        /// Tables to verify (`schema.table`); all routed ones when omitted.
        #[arg(long)]
        table: Vec<String>,
        /// Re-write the rows that differ from PostgreSQL (and delete extra ones) through the sink.
        #[arg(long)]
        repair: bool,
        /// Seconds to wait for a sink to catch up before re-checking a differing row.
        #[arg(long, default_value_t = 60)]
        catch_up_timeout_secs: u64,
    },
    /// Print the version.
    Version,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Auto,
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGFANOUT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // `inspect` is one reader and its status task: on a single thread they hand over without
    // waking other threads, which costs less CPU than the work itself (see benches/README.md).
    let mut builder = match cli.command {
        Command::Inspect(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // `verify` exits 1 for differences, 2 for an error.
    let is_verify = matches!(cli.command, Command::Verify { .. });
    let mut differences_found = false;
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config, until_lsn } => {
                let config = config::Config::load(&config)?;
                // On a worker thread, not on this one: the stream task then hands
                // transactions to the sink workers within one thread (no wake-up of
                // another), as block_on's own thread never runs spawned tasks.
                anyhow::Context::context(
                    tokio::spawn(async move { run::run(&config, until_lsn).await }).await,
                    "pgfanout run",
                )?
            }
            Command::Check { config } => match config::Config::load(&config) {
                Ok(config) => check::check(&config).await,
                Err(err) => {
                    // A broken config is a problem like any other: one line each.
                    for line in format!("{err:#}").lines().filter(|line| !line.trim().is_empty()) {
                        println!("problem: {}", line.trim());
                    }
                    Err(err)
                }
            },
            Command::Replay(args) => replay::replay(args).await,
            Command::Rebuild(args) => rebuild::rebuild(args).await,
            Command::Verify { config, sink, table, repair, catch_up_timeout_secs } => {
                let options = verify::VerifyOptions {
                    sinks: sink,
                    tables: table,
                    repair,
                    catch_up_timeout: std::time::Duration::from_secs(catch_up_timeout_secs),
                };
                differences_found = !verify::verify(&config::Config::load(&config)?, &options).await?;
                Ok(())
            }
            Command::Inspect(args) => inspect::run(args).await,
            Command::Version => {
                println!("pgfanout {}", env!("CARGO_PKG_VERSION"));
                Ok(())
            }
        }
    });
    match result {
        Ok(()) if differences_found => std::process::ExitCode::from(1),
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "pgfanout stopped");
            eprintln!("error: {err:#}");
            if is_verify {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}
