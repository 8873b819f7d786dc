//! What a consumer's token may do, asked of the cluster once at start: a consumer that must
//! write to a `__` topic refuses to start with a weaker token, instead of working until its
//! first checkpoint and then failing in a loop.

use std::sync::Arc;
use std::time::Duration;

use api::client::Client;
use api::{Role, Transport};

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(
        "the cluster refused the token ({status}): set [auth] client_token, UNIQLOG_TOKEN or \
         --token to a configured token"
    )]
    Refused { status: u16 },
}

/// The role of the transport's token (`admin` when auth is off), from the first node that
/// answers. Waits for the cluster while no node answers.
pub async fn token_role(
    nodes: &[String],
    transport: &Arc<dyn Transport>,
) -> Result<Role, AccessError> {
    let client = Client::new(transport.clone());
    let mut tries = 0u32;
    loop {
        for addr in nodes {
            match client.whoami(addr, Duration::from_secs(5)).await {
                Ok(w) => return Ok(w.role),
                Err(e) => match e.status() {
                    Some(status @ (401 | 403)) => return Err(AccessError::Refused { status }),
                    _ => tracing::debug!(addr = %addr, error = %e, "whoami failed"),
                },
            }
        }
        tries += 1;
        if tries == 20 {
            tries = 0;
            tracing::warn!(?nodes, "no node answers yet; still trying");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
