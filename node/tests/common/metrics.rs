//! `/metrics` as the tests read it: parsed by prometheus_client's strict OpenMetrics parser
//! (Python, `scripts/parse_metrics.py`), so a malformed exposition fails the test instead of
//! being skipped over by a lenient reader.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct Sample {
    pub family: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: Option<f64>,
}

#[derive(Debug)]
pub struct Metrics(pub Vec<Sample>);

const PARSER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/parse_metrics.py");

/// Parse an exposition; panics (failing the test) when the parser refuses it.
pub fn parse(text: &str) -> Metrics {
    let mut child = Command::new("python3")
        .arg(PARSER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs the metrics parser");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'prometheus_client'"),
        "the metrics parser needs prometheus-client: scripts/test.sh installs it \
         (python3 -m pip install prometheus-client==0.23.1)"
    );
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the exposition: {stderr}\n{text}"
    );
    Metrics(serde_json::from_slice(&out.stdout).unwrap())
}

/// GET `/metrics` of `addr` and parse it.
pub fn scrape(addr: &str) -> Metrics {
    let resp = super::get(addr, "/metrics").expect("/metrics answers");
    assert_eq!(resp.status, 200, "{}", resp.text);
    parse(&resp.text)
}

impl Metrics {
    /// Samples named `name` whose labels include every pair of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The sum of the matching samples; panics when there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .matching(name, labels)
            .map(|s| s.value.expect("a finite value"))
            .collect();
        assert!(
            !found.is_empty(),
            "no sample {name} {labels:?} among {:#?}",
            self.0.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        found.iter().sum()
    }

    /// The sum of the matching samples, 0 when there is none (a counter not yet touched).
    pub fn value_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).filter_map(|s| s.value).sum()
    }

    /// The type of family `family`, as the exposition declared it.
    pub fn kind(&self, family: &str) -> &str {
        self.0
            .iter()
            .find(|s| s.family == family)
            .map(|s| s.kind.as_str())
            .unwrap_or_else(|| panic!("no family {family}"))
    }
}
