//! `uniqlog consumers`: each consumer's reported checkpoint beside the head of the topic it
//! follows, and the lag between them.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::{json, Value};
use uniqlog_node::Config;

use super::cluster::any_node;

#[derive(Args)]
pub struct ConsumersArgs {
    /// The cluster's config file.
    #[arg(long, default_value = "cluster.toml")]
    config: PathBuf,
    /// One JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: ConsumersArgs) -> Result<()> {
    let config = Config::load(&args.config)?;
    let consumers = any_node(&config, |c, a| async move {
        Ok(c.api().consumers(&a, c.timeout).await?)
    })
    .await?;
    let topics = any_node(&config, |c, a| async move {
        Ok(c.api().topics(&a, c.timeout).await?)
    })
    .await?;
    let head = |topic: &str| -> u64 {
        // A topic nothing was appended to yet has no row: its head is 0.
        topics
            .topics
            .iter()
            .find(|t| t.name == topic)
            .map_or(0, |t| t.length)
    };
    let rows: Vec<Value> = consumers
        .consumers
        .into_iter()
        .map(|c| {
            let head = c.topic.as_deref().map(head);
            json!({
                "consumer": c.consumer,
                "topic": c.topic,
                "checkpoint": c.offset,
                "head": head,
                "lag_events": head.map(|h| h.saturating_sub(c.offset)),
                "reported_at": c.reported_at,
            })
        })
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<20} {:>10} {:>10} {:>8}",
        "CONSUMER", "TOPIC", "CHECKPOINT", "HEAD", "LAG"
    );
    let shown = |v: &Value| v.as_u64().map_or("-".to_string(), |n| n.to_string());
    for r in &rows {
        println!(
            "{:<20} {:<20} {:>10} {:>10} {:>8}",
            r["consumer"].as_str().unwrap_or("?"),
            r["topic"].as_str().unwrap_or("-"),
            shown(&r["checkpoint"]),
            shown(&r["head"]),
            shown(&r["lag_events"]),
        );
    }
    Ok(())
}
