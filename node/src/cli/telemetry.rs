//! Where log lines and spans go: stderr in the chosen format, and, in builds with the `otlp`
//! feature, an OTLP/HTTP exporter of spans when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. The exporter reads the standard `OTEL_*`
//! variables itself (endpoint, headers, timeout, batch delay); the service name is
//! `OTEL_SERVICE_NAME`, or `uniqlog`.
//!
//! A forwarded request keeps its id (`x-request-id`), not its trace context: the receiving
//! node's span and the leader's are two traces that share the `id` attribute.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer, Registry};

use super::LogFormat;

/// What must be flushed before the process exits.
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Send the spans still buffered (the exporter batches them).
    pub fn flush(self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("warning: exporting the last spans failed: {e}");
            }
        }
    }
}

/// The lines shown without RUST_LOG. openraft's own lines are off: at warn and error it
/// reports every failed heartbeat to a peer that is down (ten a second) and vote changes at
/// every clean start. What an operator needs of them is logged by uniqlog: a peer going away
/// and coming back (`uniqlog_node::peer::Reachability`), and a stopped Raft (the node exits with the
/// error). `RUST_LOG=info,openraft=info` shows them again.
pub const DEFAULT_FILTER: &str = "info,openraft=off";

/// Install the subscriber; the level of the lines is RUST_LOG's (default [`DEFAULT_FILTER`]). Call it before any runtime exists: the OTLP exporter's blocking
/// client starts its own.
pub fn init(format: LogFormat) -> Telemetry {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Colours only on a terminal: a log file or a collector gets plain text.
    let ansi = std::io::stderr().is_terminal();
    let lines: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
        // The request span (its id) on every line, and the whole span list, for collectors
        // that index by field.
        LogFormat::Json => fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Pretty => fmt::layer()
            .pretty()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    // Each layer its own filter: spans worth exporting (debug spans of a write's path) are
    // not lines worth printing.
    #[cfg_attr(not(feature = "otlp"), allow(unused_mut))]
    let mut layers = vec![lines.with_filter(filter).boxed()];
    #[cfg(feature = "otlp")]
    let provider = match otlp::layer() {
        Ok(Some((layer, provider))) => {
            layers.push(layer);
            Some(provider)
        }
        Ok(None) => None,
        Err(e) => {
            eprintln!("warning: OTLP export is off: {e}");
            None
        }
    };
    tracing_subscriber::registry().with(layers).init();
    Telemetry {
        #[cfg(feature = "otlp")]
        provider,
    }
}

#[cfg(feature = "otlp")]
mod otlp {
    use opentelemetry::trace::TracerProvider;
    use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use opentelemetry_sdk::Resource;
    use tracing_subscriber::{EnvFilter, Layer, Registry};

    type Boxed = Box<dyn Layer<Registry> + Send + Sync>;

    /// What is exported unless `UNIQLOG_OTLP_FILTER` says otherwise: uniqlog's own spans down
    /// to debug (a write's request, its entry, its apply), openraft's at warn.
    const FILTER: &str = "info,api=debug,raft_store=debug,uniqlog::request=debug,openraft=warn";

    fn set(var: &str) -> bool {
        std::env::var_os(var).is_some_and(|v| !v.is_empty())
    }

    /// The exporting layer, when an endpoint is configured.
    pub fn layer() -> Result<Option<(Boxed, SdkTracerProvider)>, String> {
        if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            return Ok(None);
        }
        let mut exporter = SpanExporter::builder().with_http();
        // The specification's default is protobuf; the variables choose otherwise.
        if !set("OTEL_EXPORTER_OTLP_PROTOCOL") && !set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
            exporter = exporter.with_protocol(Protocol::HttpBinary);
        }
        let exporter = exporter.build().map_err(|e| e.to_string())?;
        let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "uniqlog".into());
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(name).build())
            .build();
        let filter = EnvFilter::try_from_env("UNIQLOG_OTLP_FILTER")
            .unwrap_or_else(|_| EnvFilter::new(FILTER));
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("uniqlog"))
            .with_filter(filter)
            .boxed();
        Ok(Some((layer, provider)))
    }
}
