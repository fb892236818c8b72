//! Logging (tracing subscriber, text or JSON) and the Prometheus metrics registry.
//!
//! Metrics are a handful of labelled counters and histograms kept behind one mutex each; they
//! are updated from handlers, the reporter and the inference threads, and rendered in the
//! Prometheus text format by `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber (`RUST_LOG` overrides the default `info` level).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Upper bounds (seconds) of the histogram buckets.
const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 1800.0,
];
const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }
    fn observe(&mut self, v: f64) {
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

type Labels = Vec<(&'static str, String)>;

/// A gauge to render: name, help, labelled values.
pub type Gauge<'a> = (&'a str, &'a str, Vec<(Labels, f64)>);

/// A label value in the text exposition format: backslash, double quote and line feed are
/// the three characters that must be escaped (anything else, UTF-8 included, goes as is).
fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn fmt_labels(l: &Labels, extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = l.iter().map(|(k, v)| format!("{k}=\"{}\"", escape_label_value(v))).collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{}\"", escape_label_value(&v)));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// The metrics registry.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, Labels), f64>>,
    histograms: Mutex<BTreeMap<(&'static str, Labels), Histogram>>,
}

/// Metric names, with their help text.
pub const HELP: &[(&str, &str, &str)] = &[
    ("modelpress_http_requests_total", "counter", "HTTP requests by matched route, method and status"),
    ("modelpress_http_request_duration_seconds", "histogram", "HTTP request latency by matched route"),
    ("modelpress_jobs_total", "counter", "Finished jobs by kind and outcome"),
    ("modelpress_job_duration_seconds", "histogram", "Job run time by kind"),
    ("modelpress_rejections_total", "counter", "Requests rejected for capacity or limits, by reason"),
    ("modelpress_inference_queue_seconds", "histogram", "Time a prediction waited before compute"),
    ("modelpress_inference_compute_seconds", "histogram", "Forward-pass time per batch"),
    ("modelpress_inference_batch_size", "histogram", "Rows per executed batch"),
    ("modelpress_model_cache_total", "counter", "Inference model cache events (hit, load, evict)"),
    ("modelpress_webhook_attempts_total", "counter", "Webhook delivery attempts by outcome (delivered, retry, failed)"),
];

impl Metrics {
    pub fn inc(&self, name: &'static str, labels: Labels, by: f64) {
        let mut c = self.counters.lock().expect("metrics lock poisoned only by a panic while formatting");
        *c.entry((name, labels)).or_insert(0.0) += by;
    }

    pub fn observe(&self, name: &'static str, labels: Labels, v: f64) {
        let bounds = if name.ends_with("batch_size") { SIZE_BUCKETS } else { DURATION_BUCKETS };
        let mut h = self.histograms.lock().expect("metrics lock poisoned only by a panic while formatting");
        h.entry((name, labels)).or_insert_with(|| Histogram::new(bounds)).observe(v);
    }

    /// Renders everything plus the given gauges (name, help, labelled values).
    pub fn render(&self, gauges: &[Gauge<'_>]) -> String {
        let mut out = String::new();
        for (name, help, values) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (l, v) in values {
                let _ = writeln!(out, "{name}{} {v}", fmt_labels(l, None));
            }
        }
        let counters = self.counters.lock().expect("metrics lock").clone();
        let histograms = self.histograms.lock().expect("metrics lock").clone();
        for (name, kind, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((n, l), v) in counters.iter().filter(|((n, _), _)| n == name) {
                let _ = writeln!(out, "{n}{} {v}", fmt_labels(l, None));
            }
            for ((n, l), h) in histograms.iter().filter(|((n, _), _)| n == name) {
                for (b, c) in h.bounds.iter().zip(&h.counts) {
                    let _ = writeln!(out, "{n}_bucket{} {c}", fmt_labels(l, Some(("le", b.to_string()))));
                }
                let _ = writeln!(out, "{n}_bucket{} {}", fmt_labels(l, Some(("le", "+Inf".into()))), h.count);
                let _ = writeln!(out, "{n}_sum{} {}", fmt_labels(l, None), h.sum);
                let _ = writeln!(out, "{n}_count{} {}", fmt_labels(l, None), h.count);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.inc("modelpress_rejections_total", vec![("reason", "a\"b\\c\nd".to_string())], 1.0);
        m.observe("modelpress_job_duration_seconds", vec![("kind", "x\ny".to_string())], 0.5);
        let text = m.render(&[("modelpress_queue_depth", "Jobs queued", vec![(vec![("q", "\"".to_string())], 1.0)])]);
        assert!(text.contains("modelpress_rejections_total{reason=\"a\\\"b\\\\c\\nd\"} 1\n"), "{text}");
        assert!(text.contains("modelpress_job_duration_seconds_count{kind=\"x\\ny\"} 1\n"), "{text}");
        assert!(text.contains("modelpress_queue_depth{q=\"\\\"\"} 1\n"), "{text}");
        // Every sample stays on one line: no raw line feed inside a label set.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert_eq!(line.matches('{').count(), line.matches('}').count(), "{line}");
        }
    }
}
