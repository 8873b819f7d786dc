//! `/metrics` of the consumers (OpenMetrics text), rendered from their current stats on each
//! scrape: prometheus-client, no background threads, so it runs in the simulator too.

use api::metrics::HttpMetrics;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `(name, help, value)` of one series.
pub type Series<'a, V> = (&'a str, &'a str, V);

/// Gauges (values that go up and down) and counters (totals since the process started,
/// exposed with `_total`), under `prefix`; the HTTP series too when the consumer serves an API.
pub fn render(
    prefix: &str,
    gauges: &[Series<'_, i64>],
    counters: &[Series<'_, u64>],
    http: Option<&HttpMetrics>,
) -> String {
    let mut registry = Registry::with_prefix(prefix);
    for (name, help, value) in gauges {
        let g: Gauge = Gauge::default();
        g.set(*value);
        registry.register(*name, *help, g);
    }
    for (name, help, value) in counters {
        let c: Counter = Counter::default();
        c.inc_by(*value);
        registry.register(*name, *help, c);
    }
    if let Some(http) = http {
        http.register(&mut registry);
    }
    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

/// The answer to a scrape: the text with its content type.
pub fn answer(text: String) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, api::metrics::CONTENT_TYPE)],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_gauges_and_counters_in_openmetrics_text() {
        let text = super::render(
            "uniqlog_mail",
            &[("lag_events", "Events not yet handled", 3)],
            &[("sent", "Emails sent", 7)],
            None,
        );
        assert!(
            text.contains("# HELP uniqlog_mail_lag_events Events not yet handled."),
            "{text}"
        );
        assert!(
            text.contains("# TYPE uniqlog_mail_lag_events gauge"),
            "{text}"
        );
        assert!(text.contains("uniqlog_mail_lag_events 3"), "{text}");
        assert!(text.contains("# TYPE uniqlog_mail_sent counter"), "{text}");
        assert!(text.contains("uniqlog_mail_sent_total 7"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
