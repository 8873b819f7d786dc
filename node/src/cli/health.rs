//! `uniqlog health --addr HOST:PORT`: exit 0 when the node there is ready (it knows a leader
//! and has applied its commit index), 1 with the reason otherwise. For container health
//! checks and scripts: a `FROM scratch` image has no curl, and a probe verifies the node's
//! certificate like any other client.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use api::transport::HttpRequest;

#[derive(clap::Args)]
pub struct HealthArgs {
    /// The address of a node, or of the query or mail process.
    #[arg(long, value_name = "HOST:PORT", env = "UNIQLOG_HEALTH_ADDR")]
    addr: String,
    /// Only that the process serves (`GET /health`), not that it is ready (`GET /ready`):
    /// for liveness probes, which must not restart a node that waits for an election, and
    /// for the mail process, which has no `/ready`.
    #[arg(long)]
    live: bool,
    /// Give up after this long.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// The CA bundle (PEM) to verify a TLS process against; with it the probe speaks TLS.
    #[arg(long, value_name = "PEM", env = "UNIQLOG_TLS_CA")]
    ca: Option<PathBuf>,
}

pub async fn run(args: HealthArgs) -> Result<()> {
    let tls = match &args.ca {
        Some(ca) => Some(
            api::ClientTls::from_ca_file(ca)
                .with_context(|| format!("reading the CA {}", ca.display()))?,
        ),
        None => None,
    };
    let transport = api::client_transport_with(None, tls);
    let path = if args.live { "/health" } else { "/ready" };
    let answer = transport
        .send(
            &args.addr,
            HttpRequest::get(path),
            Duration::from_millis(args.timeout_ms),
        )
        .await
        .with_context(|| format!("{} did not answer {path}", args.addr))?;
    let body = String::from_utf8_lossy(&answer.body);
    if answer.status != 200 {
        bail!(
            "{} answered {path} with {}: {body}",
            args.addr,
            answer.status
        );
    }
    println!("{}: {body}", args.addr);
    Ok(())
}
