//! `uniqlog log append | read | tail | replay-parked`: the event log from the command line.
//! Events print as one JSON object per line, so the output pipes into `jq` or a file.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::{json, Value};
use uniqlog_node::Config;

use super::client::{write_targets, Client};
use super::cluster::any_node;
use api::client::{ReadStream, ReadTopic};
use api::parking::{retry_topic, Parked, Record, Retry, PARKED_TOPIC};
use api::wire::{AppendBody, Event, EventBody};

/// Events per page read.
const PAGE: u64 = 500;
/// How long a tail's read waits for new events (within the nodes' default `wait_ms_max`).
const TAIL_WAIT_MS: u64 = 5_000;

#[derive(Subcommand)]
pub enum LogCommand {
    /// Append one event to TOPIC and print the append result (JSON).
    Append {
        /// The cluster's config file.
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        /// The topic to append to (created by its first event).
        topic: String,
        /// The event's type.
        #[arg(long = "type", value_name = "TYPE")]
        event_type: String,
        /// The event's data, a JSON object.
        #[arg(long, default_value = "{}")]
        data: String,
        /// The stream the event belongs to.
        #[arg(long)]
        stream: Option<String>,
        /// Refuse unless the stream is at this version: a number of events, `no_stream` or
        /// `any`.
        #[arg(long, requires = "stream")]
        expected_version: Option<String>,
        /// Retrying with the same key never appends twice (and lets the CLI try another node
        /// when an answer is lost).
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Send the write to this node only (default: any node of the config that takes it).
        #[arg(long, value_name = "ID")]
        node: Option<u64>,
    },
    /// Print the events of TOPIC (or of one stream), one JSON object per line.
    Read {
        /// The cluster's config file.
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        /// The topic to read.
        #[arg(required_unless_present = "stream")]
        topic: Option<String>,
        /// The first offset (for a stream: how many of its events to skip).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Stop after this many events (default: all there are).
        #[arg(long)]
        limit: Option<u64>,
        /// Read this stream instead of a topic.
        #[arg(long, conflicts_with = "topic")]
        stream: Option<String>,
    },
    /// Print the events of TOPIC as they are committed, one JSON object per line, until
    /// interrupted.
    Tail {
        /// The cluster's config file.
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        /// The topic to follow.
        topic: String,
        /// The first offset (default: the end, only new events).
        #[arg(long)]
        from: Option<u64>,
    },
    /// Append the parked events of a consumer to `__retry.<consumer>`, keeping their original
    /// idempotency keys. Replaying twice re-queues nothing new.
    ReplayParked {
        /// The cluster's config file.
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        /// The consumer whose parked events to re-queue (`mail`).
        #[arg(long)]
        consumer: String,
        /// Send the writes to this node only (default: any node of the config that takes them).
        #[arg(long, value_name = "ID")]
        node: Option<u64>,
    },
}

pub async fn run(command: LogCommand) -> Result<()> {
    match command {
        LogCommand::Append {
            config,
            topic,
            event_type,
            data,
            stream,
            expected_version,
            idempotency_key,
            node,
        } => {
            let data: Value = serde_json::from_str(&data).context("--data is not JSON")?;
            let mut body =
                AppendBody::of(vec![EventBody::new(&event_type, stream.as_deref(), &data)]);
            if let (Some(stream), Some(v)) = (&stream, expected_version) {
                let v = serde_json::from_value(v.parse::<u64>().map_or(json!(v), |n| json!(n)))
                    .context("--expected-version is a number of events, no_stream or any")?;
                body.expected_version.insert(stream.clone(), v);
            }
            body.idempotency_key = idempotency_key;
            let config = Config::load(&config)?;
            let targets = write_targets(&config, node)?;
            append(&config, &targets, &topic, &body).await
        }
        LogCommand::Read {
            config,
            topic,
            from,
            limit,
            stream,
        } => {
            let what = match (topic, stream) {
                (_, Some(stream)) => Pages::Stream(stream),
                (Some(topic), None) => Pages::Topic(topic),
                (None, None) => anyhow::bail!("name a topic or a --stream"),
            };
            read(&Config::load(&config)?, &what, from, limit).await
        }
        LogCommand::Tail {
            config,
            topic,
            from,
        } => tail(&Config::load(&config)?, &topic, from).await,
        LogCommand::ReplayParked {
            config,
            consumer,
            node,
        } => {
            let config = Config::load(&config)?;
            let targets = write_targets(&config, node)?;
            replay_parked(&config, &targets, &consumer).await
        }
    }
}

async fn replay_parked(config: &Config, targets: &[(u64, String)], consumer: &str) -> Result<()> {
    let client = Client::for_config(config)?;
    let mut from = 0;
    let mut queued = 0;
    loop {
        let read = ReadTopic {
            from,
            limit: 1000,
            wait_ms: 0,
            linearizable: true,
        };
        let page = any_node(config, |c, a| async move {
            Ok(c.api()
                .read_topic(&a, PARKED_TOPIC, read, c.timeout)
                .await?)
        })
        .await?;
        if page.events.is_empty() {
            break;
        }
        for p in &page.events {
            let offset = p.offset;
            from = offset + 1;
            let Some(parked) = Parked::of(p).filter(|parked| parked.consumer == consumer) else {
                continue;
            };
            let retry = Retry {
                topic: parked.event.topic.clone(),
                offset: parked.event.offset,
                event: parked.event,
            };
            // One re-queue per parked event, however often this runs (within the window).
            let body = retry.append_body(Some(format!("replay:{offset}")));
            let topic = retry_topic(consumer);
            let (c, body, topic) = (&client, &body, &topic);
            client
                .write(targets, true, |a| async move {
                    c.api().append(&a, topic, body, c.timeout).await
                })
                .await?;
            queued += 1;
        }
    }
    println!(
        "re-queued {queued} parked event(s) of {consumer} to {}",
        retry_topic(consumer)
    );
    Ok(())
}

/// `log append`: one event, with the optional stream, expected version and idempotency key.
async fn append(
    config: &Config,
    targets: &[(u64, String)],
    topic: &str,
    body: &AppendBody,
) -> Result<()> {
    let client = Client::for_config(config)?;
    let c = &client;
    let answer = client
        .write(targets, body.idempotency_key.is_some(), |a| async move {
            c.api().append(&a, topic, body, c.timeout).await
        })
        .await?;
    println!("{}", serde_json::to_string(&answer)?);
    Ok(())
}

/// What `log read` pages through.
enum Pages {
    Topic(String),
    Stream(String),
}

/// Pages of a topic or a stream from `from` on, each event printed as one line, until the end
/// or `limit` events.
async fn read(config: &Config, what: &Pages, from: u64, limit: Option<u64>) -> Result<()> {
    let mut next = from;
    let mut left = limit.unwrap_or(u64::MAX);
    while left > 0 {
        let n = left.min(PAGE) as usize;
        let page = any_node(config, |c, a| async move {
            Ok(match what {
                Pages::Topic(topic) => {
                    let read = ReadTopic {
                        from: next,
                        limit: n,
                        ..ReadTopic::default()
                    };
                    c.api().read_topic(&a, topic, read, c.timeout).await?
                }
                Pages::Stream(stream) => {
                    let read = ReadStream {
                        from: next,
                        limit: Some(n),
                        linearizable: false,
                    };
                    c.api().read_stream(&a, stream, read, c.timeout).await?
                }
            })
        })
        .await?;
        if page.events.is_empty() {
            break;
        }
        print_lines(&page.events)?;
        left = left.saturating_sub(page.events.len() as u64);
        next = page.next_offset;
    }
    Ok(())
}

/// Follow a topic: long-polls from `from` (default: its current length), moving to another
/// node when one fails, printing each event as one line as soon as it is committed.
async fn tail(config: &Config, topic: &str, from: Option<u64>) -> Result<()> {
    let client = Client::for_config(config)?;
    let mut next = match from {
        Some(from) => from,
        None => {
            let topics = any_node(config, |c, a| async move {
                Ok(c.api().topics(&a, c.timeout).await?)
            })
            .await?;
            topics
                .topics
                .iter()
                .find(|t| t.name == topic)
                .map_or(0, |t| t.length)
        }
    };
    let mut node = 0;
    let mut failures = 0;
    loop {
        let addr = &config.nodes[node % config.nodes.len()].addr;
        let read = ReadTopic {
            from: next,
            limit: PAGE as usize,
            wait_ms: TAIL_WAIT_MS,
            linearizable: false,
        };
        match client
            .api()
            .read_topic(addr, topic, read, client.timeout)
            .await
        {
            Ok(page) => {
                failures = 0;
                print_lines(&page.events)?;
                next = page.next_offset;
            }
            Err(e) => {
                failures += 1;
                if failures > 3 * config.nodes.len() {
                    return Err(anyhow::Error::from(e).context("no node answers"));
                }
                tracing::warn!(addr, error = %e, "tail: trying another node");
                node += 1;
                tokio::time::sleep(Duration::from_millis(200 * failures as u64)).await;
            }
        }
    }
}

fn print_lines(events: &[Event]) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for e in events {
        writeln!(out, "{}", serde_json::to_string(e)?)?;
    }
    out.flush()?;
    Ok(())
}
