//! The CLI's HTTP client: the same transport the nodes use for peer RPC.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use std::sync::Arc;

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

    pub async fn post(&self, addr: &str, path: &str, body: &Value) -> Result<Value> {
        self.ok(addr, HttpRequest::post(path, serde_json::to_vec(body)?))
            .await
    }
}

/// `segment` made safe as one segment of a URL path (an email's `+`, a `/` in a key...).
pub fn path_segment(segment: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    utf8_percent_encode(segment, KEEP).to_string()
}
