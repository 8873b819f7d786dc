//! Command line: `uniqlog node | dev | cluster ...`. anyhow lives here, at the binary's edge.

mod backup;
mod bench;
mod client;
mod cluster;
mod consumer_list;
mod log;
mod progress;
mod rolling;
mod run;
mod supervise;
mod telemetry;
mod uniq;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "uniqlog",
    version,
    about = "A Raft-replicated event log with uniqueness constraints"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The token consumers and the CLI present. Overrides `[auth] client_token` and
    /// UNIQLOG_TOKEN; prefer the variable, a flag is visible to other users in `ps`.
    #[arg(long, global = true, value_name = "TOKEN")]
    token: Option<String>,
    /// The CA bundle (PEM) nodes are verified against. Overrides `[auth] tls_ca` and
    /// UNIQLOG_TLS_CA.
    #[arg(long, global = true, value_name = "PEM")]
    ca: Option<PathBuf>,
    /// How log lines look on stderr: `text` (one line each), `json` (one object per line,
    /// for collectors) or `pretty` (several lines each, for reading by eye). The level is
    /// RUST_LOG's (default `info,openraft=off`: openraft's own chatter; uniqlog logs what
    /// matters of it).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        env = "UNIQLOG_LOG_FORMAT"
    )]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
    Pretty,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node of a cluster.
    Node {
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        #[arg(long)]
        id: u64,
    },
    /// Run a single-node cluster in one process, data in ./data/dev, bound to 127.0.0.1.
    Dev {
        /// The node listens on port-base + 1, the query API on + 101, the mail consumer's
        /// health on + 102, the mail sink on + 201.
        #[arg(long, default_value_t = 7000)]
        port_base: u16,
        /// Where the node, the read model and the activation secret are kept.
        #[arg(long, default_value = "data/dev")]
        data_dir: PathBuf,
        /// Start from an empty data dir (removes the one there).
        #[arg(long)]
        reset: bool,
    },
    /// Keep the users read model and serve the query API.
    Query {
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        /// Drop the read model and replay `users` from offset 0.
        #[arg(long)]
        rebuild: bool,
    },
    /// Send activation emails for new accounts through the configured provider.
    Mail {
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
    },
    /// A local stand-in for an email provider (webhook protocol), with injectable faults.
    MailSink {
        #[arg(long, default_value = "127.0.0.1:7201")]
        listen: String,
        /// Share of requests answered 500, 0 to 1.
        #[arg(long, default_value_t = 0.0)]
        fail_rate: f64,
        /// Delay every answer by this long.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Answer 503 to everything for this long after start.
        #[arg(long, default_value_t = 0)]
        down_for_ms: u64,
        /// Listen on a non-loopback address: the sink has no auth and no TLS, and shows every
        /// message it received (activation links included) to whoever asks.
        #[arg(long)]
        insecure: bool,
        /// Answer 422 invalid_recipient for this address (repeatable).
        #[arg(long)]
        reject: Vec<String>,
    },
    /// Work with the event log.
    Log {
        #[command(subcommand)]
        command: log::LogCommand,
    },
    /// Each consumer's checkpoint, the head of its topic and the lag between them.
    Consumers(consumer_list::ConsumersArgs),
    /// Look up keys of the uniq sets.
    Uniq {
        #[command(subcommand)]
        command: uniq::UniqCommand,
    },
    /// Load a cluster with sign-ups (closed loop, seeded email collisions) and check the
    /// topic afterwards.
    Bench(bench::BenchArgs),
    /// Stream a consistent backup of the leader's (or `--node`'s) state into a file.
    Backup(backup::BackupArgs),
    /// Make a new data dir from a backup: the node starts as a one-node cluster with the
    /// backup's topics, streams, uniq sets and idempotency records.
    Restore(backup::RestoreArgs),
    /// Operate a cluster.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = telemetry::init(cli.log_format);
    // The flags win over the config through the variables the config loader already reads
    // last; set here, before any thread exists.
    if let Some(token) = &cli.token {
        std::env::set_var(uniqlog_node::config::CLIENT_TOKEN_ENV, token);
    }
    if let Some(ca) = &cli.ca {
        // Relative to where the command runs, not to the config file.
        let ca = std::path::absolute(ca).unwrap_or_else(|_| ca.clone());
        std::env::set_var(uniqlog_node::config::TLS_CA_ENV, ca);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Node { config, id } => run::node(&config, id).await,
            Command::Dev {
                port_base,
                data_dir,
                reset,
            } => run::dev(port_base, &data_dir, reset).await,
            Command::Query { config, rebuild } => run::query(&config, rebuild).await,
            Command::Mail { config } => run::mail(&config).await,
            Command::MailSink {
                listen,
                fail_rate,
                delay_ms,
                down_for_ms,
                reject,
                insecure,
            } => {
                let faults = consumers::mail_sink::Faults {
                    fail_rate,
                    delay_ms,
                    down_for_ms,
                    reject,
                };
                run::mail_sink(&listen, faults, insecure).await
            }
            Command::Log { command } => log::run(command).await,
            Command::Uniq { command } => uniq::run(command).await,
            Command::Consumers(args) => consumer_list::run(args).await,
            Command::Cluster { command } => cluster::run(command).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Backup(args) => backup::backup(args).await,
            Command::Restore(args) => backup::restore(args).await,
        }
    });
    drop(rt);
    telemetry.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<run::Removed>().is_some() => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(run::EXIT_REMOVED)
        }
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, each said once: many errors already show their cause in their
/// own message (`cannot read X: No such file`), and printing the chain would repeat it.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cause_already_in_the_message_is_not_said_again() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(io).context("cannot read cluster.toml: No such file");
        assert_eq!(
            super::one_line(&e),
            "cannot read cluster.toml: No such file"
        );
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(super::one_line(&e), "outer: inner");
    }
}
