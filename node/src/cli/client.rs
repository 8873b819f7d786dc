//! The CLI's HTTP client: the same transport the nodes use for peer RPC.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use std::sync::Arc;

use api::wire::ClusterStatus;
use api::{HttpRequest, Transport};
use serde_json::Value;
use uniqlog_node::Config;

pub struct Client {
    transport: Arc<dyn Transport>,
    timeout: Duration,
}

impl Client {
    /// A client presenting the config's token (`[auth] client_token` or `UNIQLOG_TOKEN`) if
    /// any, over TLS trusting only the config's CA (`[auth] tls_ca` or `UNIQLOG_TLS_CA`) if any.
    pub fn for_config(config: &Config) -> Result<Self> {
        Ok(Client {
            transport: api::client_transport_with(config.client_token(), config.client_tls()?),
            timeout: Duration::from_secs(15),
        })
    }

    /// Send and decode the JSON answer, whatever its status.
    pub async fn call(&self, addr: &str, req: HttpRequest) -> Result<(u16, Value)> {
        let resp = self.transport.send(addr, req, self.timeout).await?;
        let body: Value = serde_json::from_slice(&resp.body).with_context(|| {
            format!(
                "{addr} answered {} with a body that is not JSON",
                resp.status
            )
        })?;
        Ok((resp.status, body))
    }

    /// Send and require a 2xx answer.
    pub async fn ok(&self, addr: &str, req: HttpRequest) -> Result<Value> {
        let (status, body) = self.call(addr, req).await?;
        if !(200..300).contains(&status) {
            let msg = body["message"].as_str().unwrap_or("no message");
            return Err(anyhow!("{addr} answered {status}: {msg}"));
        }
        Ok(body)
    }

    pub async fn get(&self, addr: &str, path: &str) -> Result<Value> {
        self.ok(addr, HttpRequest::get(path)).await
    }

    /// `GET /v1/cluster/status` of one node, in the type the node answers with.
    pub async fn status(&self, addr: &str) -> Result<ClusterStatus> {
        let body = self.get(addr, "/v1/cluster/status").await?;
        serde_json::from_value(body)
            .with_context(|| format!("{addr} answered a cluster status this build does not read"))
    }
}

/// The nodes a write may go to, in order: the one `--node` pins, or every node of the config.
pub fn write_targets(config: &Config, node: Option<u64>) -> Result<Vec<(u64, String)>> {
    match node {
        Some(id) => Ok(vec![(id, config.node(id)?.addr.clone())]),
        None if config.nodes.is_empty() => Err(anyhow!("the config lists no nodes")),
        None => Ok(config
            .nodes
            .iter()
            .map(|n| (n.id, n.addr.clone()))
            .collect()),
    }
}

impl Client {
    /// Send a write to the first of `targets` that takes it. Any node takes writes (a
    /// follower forwards to the leader), so the next one is tried whenever that is safe: the
    /// node was not reached (nothing was sent), or it answered 503 `unavailable` (nothing was
    /// applied), or the request is `keyed` (an idempotency key makes every retry safe). A
    /// write whose answer was lost without a key is reported as such, never sent twice.
    pub async fn write(
        &self,
        targets: &[(u64, String)],
        req: HttpRequest,
        keyed: bool,
    ) -> Result<Value> {
        let mut tried = Vec::new();
        for (id, addr) in targets {
            let what = format!("node {id} at {addr}");
            match self.transport.send(addr, req.clone(), self.timeout).await {
                Err(e) if e.nothing_sent() || keyed => tried.push(format!("{what}: {e}")),
                Err(e) => bail!(
                    "{what}: {e}. The write may or may not have been applied; check before \
                     sending it again, or send it with an idempotency key"
                ),
                Ok(resp) => {
                    let body: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
                    let retry_safe =
                        resp.status == 503 && (keyed || body["error"] == "unavailable");
                    if (200..300).contains(&resp.status) {
                        return Ok(body);
                    }
                    let msg = body["message"].as_str().unwrap_or("no message");
                    if !retry_safe {
                        bail!("{what} answered {}: {msg}", resp.status);
                    }
                    tried.push(format!("{what} answered {}: {msg}", resp.status));
                }
            }
        }
        bail!("no node took the write: {}", tried.join("; "))
    }
}

pub use api::client::path_segment;
