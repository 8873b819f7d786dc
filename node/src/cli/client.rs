//! The CLI's view of the cluster: `api::client` over the config's token and TLS, the nodes a
//! write may go to, and errors worded for a terminal.

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, Result};

use api::client::{ClientError, WriteError};
use api::wire::ClusterStatus;
use uniqlog_node::Config;

pub struct Client {
    api: api::client::Client,
    /// How long one call may take.
    pub timeout: Duration,
}

impl Client {
    /// A client presenting the config's token (`[auth] client_token` or `UNIQLOG_TOKEN`) if
    /// any, over TLS trusting only the config's CA (`[auth] tls_ca` or `UNIQLOG_TLS_CA`) if any.
    pub fn for_config(config: &Config) -> Result<Self> {
        let transport = api::client_transport_with(config.client_token(), config.client_tls()?);
        Ok(Client {
            api: api::client::Client::new(transport),
            timeout: Duration::from_secs(15),
        })
    }

    /// The typed calls.
    pub fn api(&self) -> &api::client::Client {
        &self.api
    }

    /// `GET /v1/cluster/status` of one node.
    pub async fn status(&self, addr: &str) -> Result<ClusterStatus> {
        Ok(self.api.status(addr, self.timeout).await?)
    }

    /// Send a write to the first of `targets` that takes it, moving on only when that is safe
    /// (`api::client::write_any`).
    pub async fn write<T, F, Fut>(
        &self,
        targets: &[(u64, String)],
        keyed: bool,
        write: F,
    ) -> Result<T>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let addrs: Vec<String> = targets.iter().map(|(_, addr)| addr.clone()).collect();
        let named = |(at, e): &(usize, ClientError)| {
            let (id, addr) = &targets[*at];
            format!("node {id} at {addr}: {e}")
        };
        api::client::write_any(&addrs, keyed, write)
            .await
            .map_err(|e| match &e {
                WriteError::Uncertain(failed) => {
                    anyhow!("{}. {}", named(failed), api::client::UNCERTAIN)
                }
                WriteError::Refused(failed) => anyhow!("{}", named(failed)),
                WriteError::NoNode(tried) => anyhow!(
                    "no node took the write: {}",
                    tried.iter().map(named).collect::<Vec<_>>().join("; ")
                ),
            })
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
