//! Command line: `uniqlog node | dev | cluster ...`. anyhow lives here, at the binary's edge.

mod backup;
mod bench;
mod certs;
mod client;
mod cluster;
mod consumer_list;
mod health;
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

/// How a command reaches the nodes: on the commands that talk to them (and their
/// subcommands), not on those that do not (`dev`, `mail-sink`, `restore`).
#[derive(clap::Args, Clone, Default)]
struct Connect {
    /// The token consumers and the CLI present. Overrides `[auth] client_token` and
    /// UNIQLOG_TOKEN; prefer the variable, a flag is visible to other users in `ps`.
    #[arg(long, global = true, value_name = "TOKEN")]
    token: Option<String>,
    /// The CA bundle (PEM) nodes are verified against. Overrides `[auth] tls_ca` and
    /// UNIQLOG_TLS_CA.
    #[arg(long, global = true, value_name = "PEM")]
    ca: Option<PathBuf>,
}

impl Connect {
    /// The flags win over the config through the variables the config loader reads last;
    /// set before any thread exists.
    fn apply(&self) {
        if let Some(token) = &self.token {
            std::env::set_var(uniqlog_node::config::CLIENT_TOKEN_ENV, token);
        }
        if let Some(ca) = &self.ca {
            // Relative to where the command runs, not to the config file.
            let ca = std::path::absolute(ca).unwrap_or_else(|_| ca.clone());
            std::env::set_var(uniqlog_node::config::TLS_CA_ENV, ca);
        }
    }
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
        /// The cluster's config file.
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        /// Which `[[node]]` of the config this process is. Without it: the one whose
        /// address's host is this machine's hostname (or begins with it and a dot).
        #[arg(long, env = "UNIQLOG_NODE_ID")]
        id: Option<u64>,
        #[command(flatten)]
        connect: Connect,
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
        /// The cluster's config file (`[query]` says where to listen and keep the model).
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        #[command(flatten)]
        connect: Connect,
        /// Drop the read model and replay `users` from offset 0.
        #[arg(long)]
        rebuild: bool,
    },
    /// Send activation emails for new accounts through the configured provider.
    Mail {
        /// The cluster's config file (`[mail]` names the provider).
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        #[command(flatten)]
        connect: Connect,
    },
    /// A local stand-in for an email provider (webhook protocol), with injectable faults.
    MailSink {
        /// Where the sink listens (`/send`, `/messages`, `/control`).
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
        #[command(flatten)]
        connect: Connect,
    },
    /// Each consumer's checkpoint, the head of its topic and the lag between them.
    Consumers {
        #[command(flatten)]
        args: consumer_list::ConsumersArgs,
        #[command(flatten)]
        connect: Connect,
    },
    /// Look up keys of the uniq sets.
    Uniq {
        #[command(subcommand)]
        command: uniq::UniqCommand,
        #[command(flatten)]
        connect: Connect,
    },
    /// Load a cluster with sign-ups (closed loop, seeded email collisions) and check the
    /// topic afterwards.
    Bench {
        #[command(flatten)]
        args: bench::BenchArgs,
        #[command(flatten)]
        connect: Connect,
    },
    /// Stream a consistent backup of the leader's (or `--node`'s) state into a file.
    Backup {
        #[command(flatten)]
        args: backup::BackupArgs,
        #[command(flatten)]
        connect: Connect,
    },
    /// Make a new data dir from a backup: the node starts as a one-node cluster with the
    /// backup's topics, streams, uniq sets and idempotency records.
    Restore(backup::RestoreArgs),
    /// Make a CA, a certificate per node and for query and mail, a cluster secret, an
    /// activation secret and client tokens for a config, all 0600 (files already there kept).
    Certs(certs::CertsArgs),
    /// Exit 0 when the node at an address is ready (a leader known, its commit index
    /// applied), 1 otherwise: for container health checks and scripts.
    Health(health::HealthArgs),
    /// Operate a cluster.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
        #[command(flatten)]
        connect: Connect,
    },
}

impl Command {
    fn connect(&self) -> Option<&Connect> {
        match self {
            Command::Node { connect, .. }
            | Command::Query { connect, .. }
            | Command::Mail { connect, .. }
            | Command::Log { connect, .. }
            | Command::Uniq { connect, .. }
            | Command::Consumers { connect, .. }
            | Command::Cluster { connect, .. }
            | Command::Bench { connect, .. }
            | Command::Backup { connect, .. } => Some(connect),
            Command::Dev { .. }
            | Command::MailSink { .. }
            | Command::Restore(_)
            | Command::Health(_)
            | Command::Certs(_) => None,
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = telemetry::init(cli.log_format);
    if let Some(connect) = cli.command.connect() {
        connect.apply();
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
            Command::Node { config, id, .. } => run::node(&config, id).await,
            Command::Dev {
                port_base,
                data_dir,
                reset,
            } => run::dev(port_base, &data_dir, reset).await,
            Command::Query {
                config, rebuild, ..
            } => run::query(&config, rebuild).await,
            Command::Mail { config, .. } => run::mail(&config).await,
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
            Command::Log { command, .. } => log::run(command).await,
            Command::Uniq { command, .. } => uniq::run(command).await,
            Command::Consumers { args, .. } => consumer_list::run(args).await,
            Command::Cluster { command, .. } => cluster::run(command).await,
            Command::Health(args) => health::run(args).await,
            Command::Certs(args) => certs::run(args),
            Command::Bench { args, .. } => bench::run(args).await,
            Command::Backup { args, .. } => backup::backup(args).await,
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
    /// Every argument of every command says what it is, and the flags that reach the nodes
    /// are offered only where a command talks to them.
    #[test]
    fn every_argument_has_a_description_and_only_applicable_flags_are_listed() {
        use clap::CommandFactory;
        fn walk(
            cmd: &clap::Command,
            path: &str,
            missing: &mut Vec<String>,
            seen: &mut Vec<String>,
        ) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
                seen.push(format!("{path} {id}"));
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing, seen);
            }
        }
        let mut cmd = super::Cli::command();
        cmd.build();
        let (mut missing, mut seen) = (Vec::new(), Vec::new());
        walk(&cmd, "uniqlog", &mut missing, &mut seen);
        assert_eq!(missing, Vec::<String>::new());
        for command in ["uniqlog dev", "uniqlog mail-sink", "uniqlog restore"] {
            assert!(
                !seen.contains(&format!("{command} token")),
                "{command} offers --token"
            );
        }
        assert!(seen.contains(&"uniqlog log append token".to_string()));
        assert!(seen.contains(&"uniqlog cluster status ca".to_string()));
    }

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
