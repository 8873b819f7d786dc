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

/// Install the subscriber; the level is RUST_LOG's (default `info,openraft=warn`). Call it
/// before any runtime exists: the OTLP exporter's blocking client starts its own.
pub fn init(format: LogFormat) -> Telemetry {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
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
    let registry = tracing_subscriber::registry().with(lines);
    #[cfg(feature = "otlp")]
    {
        let (layer, provider) = match otlp::layer() {
            Ok(Some((layer, provider))) => (Some(layer), Some(provider)),
            Ok(None) => (None, None),
            Err(e) => {
                eprintln!("warning: OTLP export is off: {e}");
                (None, None)
            }
        };
        registry.with(layer).with(filter).init();
        Telemetry { provider }
    }
    #[cfg(not(feature = "otlp"))]
    {
        registry.with(filter).init();
        Telemetry {}
    }
}

#[cfg(feature = "otlp")]
mod otlp {
    use opentelemetry::trace::TracerProvider;
    use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use opentelemetry_sdk::Resource;
    use tracing_subscriber::Registry;

    type Layer = tracing_opentelemetry::OpenTelemetryLayer<
        tracing_subscriber::layer::Layered<
            Box<dyn tracing_subscriber::Layer<Registry> + Send + Sync>,
            Registry,
        >,
        opentelemetry_sdk::trace::Tracer,
    >;

    fn set(var: &str) -> bool {
        std::env::var_os(var).is_some_and(|v| !v.is_empty())
    }

    /// The exporting layer, when an endpoint is configured.
    pub fn layer() -> Result<Option<(Layer, SdkTracerProvider)>, String> {
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
        let tracer = provider.tracer("uniqlog");
        Ok(Some((
            tracing_opentelemetry::layer().with_tracer(tracer),
            provider,
        )))
    }
}
