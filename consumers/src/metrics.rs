//! `/metrics` of the consumers in Prometheus text format, rendered from their current stats
//! on each scrape (prometheus-client, no background threads, so it runs in the simulator).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// One gauge per (name, help, value); the consumer's name is the prefix.
pub fn render(prefix: &str, values: &[(&str, &str, i64)]) -> String {
    let mut registry = Registry::with_prefix(prefix);
    for (name, help, value) in values {
        let g: Gauge = Gauge::default();
        g.set(*value);
        registry.register(*name, *help, g);
    }
    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_prometheus_text() {
        let text = super::render(
            "uniqlog_mail",
            &[("lag_events", "Events not yet handled.", 3)],
        );
        assert!(
            text.contains("# HELP uniqlog_mail_lag_events Events not yet handled."),
            "{text}"
        );
        assert!(text.contains("uniqlog_mail_lag_events 3"), "{text}");
    }
}
