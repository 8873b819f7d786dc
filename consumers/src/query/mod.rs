//! `uniqlog query`: tails `users`, keeps the users read model, serves the query API.

pub mod answers;
pub mod openapi;
mod routes;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use api::Transport;
use serde::Deserialize;
use tokio::sync::watch;

use crate::checkpoint::CheckpointReporter;
use crate::tail::Tailer;
pub use routes::router;
pub use store::QueryStore;

/// `[query]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// Where the query API listens.
    pub listen: String,
    /// The read model's own redb file lives here. Relative to the config file.
    pub data_dir: PathBuf,
    /// Report the position to `__checkpoints` after this many events ...
    pub checkpoint_every_events: u64,
    /// ... or this long, whichever comes first (only when it advanced).
    pub checkpoint_every_ms: u64,
    /// Longest `min_offset` wait before 503 `not_yet_applied`.
    pub min_offset_wait_ms_max: u64,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            listen: "127.0.0.1:7101".into(),
            data_dir: "data/query".into(),
            checkpoint_every_events: 100,
            checkpoint_every_ms: 1000,
            min_offset_wait_ms_max: 5000,
        }
    }
}

pub const TOPIC: &str = "users";
pub const NAME: &str = "query";
pub const DATA_FILE: &str = "query.redb";

/// The query process's shared state.
pub struct QueryState {
    pub store: QueryStore,
    /// The next offset to apply, for `min_offset` waits.
    pub applied: watch::Receiver<u64>,
    /// The topic's length as last seen, for `/health`.
    pub head: watch::Receiver<u64>,
    pub config: QueryConfig,
    /// The cluster's client tokens: the query routes need the `read` role when auth is on.
    pub auth: api::auth::Auth,
    /// Requests and latencies of the query API, for `/metrics`.
    pub http: api::metrics::HttpMetrics,
}

/// Tail `users` into the store for ever, reporting the position.
pub async fn follow(
    store_state: Arc<QueryState>,
    applied_tx: watch::Sender<u64>,
    head_tx: watch::Sender<u64>,
    nodes: Vec<String>,
    transport: Arc<dyn Transport>,
    stale_after: Duration,
) {
    let store = &store_state.store;
    let from = match store.next_offset() {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the checkpoint");
            return;
        }
    };
    let config = &store_state.config;
    // The read model keeps its own checkpoint; the report to `__checkpoints` is only for
    // visibility, so a read token is enough to run.
    let may_report = match crate::access::token_role(&nodes, &transport).await {
        Ok(role) => role >= api::Role::Admin,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the log");
            return;
        }
    };
    if !may_report {
        tracing::warn!(
            "the token has no admin role: the position is not reported to __checkpoints              (the read model works as usual)"
        );
    }
    let mut tail = Tailer::new(nodes.clone(), transport.clone(), TOPIC, from, stale_after);
    let mut reporter = CheckpointReporter::new(
        NAME,
        TOPIC,
        nodes,
        transport,
        config.checkpoint_every_events,
        Duration::from_millis(config.checkpoint_every_ms),
    );
    if !may_report {
        reporter = reporter.off();
    }
    loop {
        let events = match tail.next_batch().await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "tail failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if !events.is_empty() {
            if let Err(e) = store.apply(&events, tail.next_offset) {
                // The model must not skip: stop here and let the operator see it.
                tracing::error!(error = %e, "cannot apply events to the read model");
                return;
            }
            applied_tx.send_replace(tail.next_offset);
        }
        head_tx.send_replace(tail.head());
        reporter.maybe_report(tail.next_offset).await;
    }
}
