//! `uniqlog log replay-parked`: re-queue a consumer's parked events.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::{json, Value};
use uniqlog_node::Config;

use super::client::Client;

#[derive(Subcommand)]
pub enum LogCommand {
    /// Append the parked events of a consumer to `__retry.<consumer>`, keeping their original
    /// idempotency keys. Replaying twice re-queues nothing new.
    ReplayParked {
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        #[arg(long)]
        consumer: String,
    },
}

pub async fn run(command: LogCommand) -> Result<()> {
    match command {
        LogCommand::ReplayParked { config, consumer } => {
            replay_parked(&Config::load(&config)?, &consumer).await
        }
    }
}

async fn replay_parked(config: &Config, consumer: &str) -> Result<()> {
    let client = Client::for_config(config)?;
    let addr = &config
        .nodes
        .first()
        .context("the config lists no nodes")?
        .addr;
    let mut from = 0;
    let mut queued = 0;
    loop {
        let page = client
            .get(
                addr,
                &format!(
                    "/v1/topics/__parked/events?from={from}&limit=1000&consistency=linearizable"
                ),
            )
            .await?;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        if events.is_empty() {
            break;
        }
        for p in &events {
            from = p["offset"].as_u64().unwrap_or(from) + 1;
            if p["data"]["consumer"] != consumer {
                continue;
            }
            let original: &Value = &p["data"]["event"];
            let body = json!({
                "events": [{"type": "Retry", "data": {"topic": original["topic"], "offset": original["offset"], "event": original}}],
                // One re-queue per parked event, however often this runs (within the window).
                "idempotency_key": format!("replay:{}", p["offset"]),
            });
            client
                .post(
                    addr,
                    &format!("/v1/topics/__retry.{consumer}/events"),
                    &body,
                )
                .await?;
            queued += 1;
        }
    }
    println!("re-queued {queued} parked event(s) of {consumer} to __retry.{consumer}");
    Ok(())
}
