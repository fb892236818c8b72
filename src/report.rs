//! Headline figures of a job report: a few comparable numbers under the same names for every
//! kind, used by webhook events and by the command-line client's `--require` gates. Pure.
//!
//! | key | meaning | quantize | prune | distill | evaluate / train | compress |
//! |---|---|---|---|---|---|---|
//! | `size_ratio` | output file bytes / input file bytes (smaller is better) | `size_ratio` | `size_ratio` | student / teacher bytes (1 / report `size_ratio`) | – | `size_ratio` |
//! | `accuracy` | accuracy of the output model (0..1) | `accuracy.quantized.accuracy` | after fine-tune, else after pruning | student | `accuracy` | `accuracy` |
//! | `accuracy_before` | accuracy of the input model | `accuracy.float.accuracy` | `accuracy_before` | teacher | – | `accuracy_before` |
//! | `accuracy_drop` | `accuracy_before − accuracy` (lower is better) | derived | derived | derived | – | `accuracy_drop` or derived |
//! | `sparsity` | fraction of zero weights | – | `global_sparsity` | – | – | `sparsity` |
//! | `speedup` | input latency / output latency | – | `latency_speedup` | `speedup` | – | `speedup` |
//! | `bits_per_weight` | stored bits per quantized weight | `bits_per_weight` | – | – | – | `bits_per_weight` |
//! | `mean_loss` | mean cross-entropy on the evaluated split | – | – | – | `mean_loss` | – |
//! | `duration_s` | seconds the job computed | `duration_s` | – | – | `duration_s` (train) | `duration_s` |
//!
//! A key is absent when the report has no such figure (e.g. no accuracy without an
//! evaluation dataset).

use serde_json::{Map, Value};

/// Every key [`headline`] may produce (for error messages and docs).
pub const KEYS: &[&str] = &[
    "size_ratio",
    "accuracy",
    "accuracy_before",
    "accuracy_drop",
    "sparsity",
    "speedup",
    "bits_per_weight",
    "mean_loss",
    "duration_s",
];

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64()
}

/// The headline figures of a report of job kind `kind`.
pub fn headline(kind: &str, report: &Value) -> Map<String, Value> {
    let mut h: Vec<(&str, Option<f64>)> = Vec::new();
    match kind {
        "quantize" => {
            h.push(("size_ratio", num(report, &["size_ratio"])));
            h.push(("accuracy", num(report, &["accuracy", "quantized", "accuracy"])));
            h.push(("accuracy_before", num(report, &["accuracy", "float", "accuracy"])));
            h.push(("bits_per_weight", num(report, &["bits_per_weight"])));
            h.push(("duration_s", num(report, &["duration_s"])));
        }
        "prune" => {
            h.push(("size_ratio", num(report, &["size_ratio"])));
            let after = num(report, &["accuracy_after_finetune"]).or_else(|| num(report, &["accuracy_after_pruning"]));
            h.push(("accuracy", after));
            h.push(("accuracy_before", num(report, &["accuracy_before"])));
            h.push(("sparsity", num(report, &["global_sparsity"])));
            h.push(("speedup", num(report, &["latency_speedup"])));
        }
        "distill" => {
            // The report's size_ratio is teacher / student (how many times smaller).
            h.push(("size_ratio", num(report, &["size_ratio"]).filter(|r| *r > 0.0).map(|r| 1.0 / r)));
            h.push(("accuracy", num(report, &["student", "accuracy"]).or_else(|| num(report, &["accuracy"]))));
            h.push(("accuracy_before", num(report, &["teacher", "accuracy"])));
            h.push(("speedup", num(report, &["speedup"])));
        }
        "evaluate" | "train" => {
            h.push(("accuracy", num(report, &["accuracy"])));
            h.push(("mean_loss", num(report, &["mean_loss"])));
            h.push(("duration_s", num(report, &["duration_s"])));
        }
        _ => {
            // Other kinds (`compress`, future ones): the standard names where the report has them.
            for k in KEYS {
                h.push((k, num(report, &[k])));
            }
        }
    }
    let mut out = Map::new();
    for (k, v) in h {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            out.insert(k.to_string(), Value::from(v));
        }
    }
    if !out.contains_key("accuracy_drop") {
        if let (Some(b), Some(a)) =
            (out.get("accuracy_before").and_then(Value::as_f64), out.get("accuracy").and_then(Value::as_f64))
        {
            out.insert("accuracy_drop".into(), Value::from(b - a));
        }
    }
    out
}

/// A `--require` condition: `key<=number` (also `<`, `>=`, `>`, `==`, `!=`).
#[derive(Debug, Clone, PartialEq)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
    pub value: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Le,
    Lt,
    Ge,
    Gt,
    Eq,
    Ne,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Le => "<=",
            Op::Lt => "<",
            Op::Ge => ">=",
            Op::Gt => ">",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }
}

impl std::fmt::Display for Requirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}{}", self.key, self.op.as_str(), self.value)
    }
}

impl std::str::FromStr for Requirement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        // Two-character operators first, so `<=` is not read as `<`.
        for (tok, op) in [("<=", Op::Le), (">=", Op::Ge), ("==", Op::Eq), ("!=", Op::Ne), ("<", Op::Lt), (">", Op::Gt)]
        {
            if let Some((k, v)) = s.split_once(tok) {
                let key = k.trim().to_string();
                if !KEYS.contains(&key.as_str()) {
                    return Err(format!("unknown report key '{key}'; use one of {}", KEYS.join(", ")));
                }
                let value: f64 = v.trim().parse().map_err(|_| format!("'{}' is not a number (in '{s}')", v.trim()))?;
                return Ok(Requirement { key, op, value });
            }
        }
        Err(format!("'{s}' is not a condition like 'accuracy_drop<=0.005'"))
    }
}

impl Requirement {
    /// `Ok(actual)` when met; `Err(message)` when not met or the figure is missing.
    pub fn check(&self, headline: &Map<String, Value>) -> Result<f64, String> {
        let Some(actual) = headline.get(&self.key).and_then(Value::as_f64) else {
            return Err(format!("{self}: the report has no '{}' (figures present: {})", self.key, keys_of(headline)));
        };
        let ok = match self.op {
            Op::Le => actual <= self.value,
            Op::Lt => actual < self.value,
            Op::Ge => actual >= self.value,
            Op::Gt => actual > self.value,
            Op::Eq => actual == self.value,
            Op::Ne => actual != self.value,
        };
        if ok {
            Ok(actual)
        } else {
            Err(format!("{self} failed: {} = {actual}", self.key))
        }
    }
}

fn keys_of(h: &Map<String, Value>) -> String {
    if h.is_empty() {
        "none".into()
    } else {
        h.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantize_headline_derives_the_drop() {
        let r = json!({"size_ratio": 0.27, "bits_per_weight": 8.5, "duration_s": 1.0,
            "accuracy": {"float": {"accuracy": 0.98}, "quantized": {"accuracy": 0.975}}, "tensors": []});
        let h = headline("quantize", &r);
        assert_eq!(h["size_ratio"], 0.27);
        assert!((h["accuracy_drop"].as_f64().unwrap() - 0.005).abs() < 1e-12);
        assert!(!h.contains_key("sparsity"));
        // Without an evaluation there is no accuracy figure at all.
        let h = headline("quantize", &json!({"size_ratio": 0.5, "accuracy": null}));
        assert_eq!(h.keys().collect::<Vec<_>>(), vec!["size_ratio"]);
    }

    #[test]
    fn distill_size_ratio_is_output_over_input() {
        let r = json!({"size_ratio": 4.0, "student": {"accuracy": 0.9}, "teacher": {"accuracy": 0.95}});
        let h = headline("distill", &r);
        assert_eq!(h["size_ratio"], 0.25);
        assert!((h["accuracy_drop"].as_f64().unwrap() - 0.05).abs() < 1e-12);
    }

    #[test]
    fn prune_prefers_accuracy_after_finetune() {
        let r = json!({"accuracy_before": 0.9, "accuracy_after_pruning": 0.7, "accuracy_after_finetune": 0.88,
            "global_sparsity": 0.5, "size_ratio": 0.6});
        let h = headline("prune", &r);
        assert_eq!(h["accuracy"], 0.88);
        assert_eq!(h["sparsity"], 0.5);
    }

    #[test]
    fn requirements_parse_and_check() {
        let r: Requirement = "accuracy_drop<=0.005".parse().unwrap();
        assert_eq!(r, Requirement { key: "accuracy_drop".into(), op: Op::Le, value: 0.005 });
        let r2: Requirement = " size_ratio < 0.3 ".parse().unwrap();
        assert_eq!(r2.op, Op::Lt);
        assert!("speed<=1".parse::<Requirement>().unwrap_err().contains("unknown report key"));
        assert!("size_ratio<=abc".parse::<Requirement>().is_err());
        assert!("size_ratio".parse::<Requirement>().is_err());
        let mut h = Map::new();
        h.insert("size_ratio".into(), json!(0.28));
        assert_eq!(r2.check(&h), Ok(0.28));
        assert!("size_ratio<=0.25".parse::<Requirement>().unwrap().check(&h).unwrap_err().contains("failed"));
        assert!(r.check(&h).unwrap_err().contains("no 'accuracy_drop'"));
        assert!("size_ratio>=0.28".parse::<Requirement>().unwrap().check(&h).is_ok());
        assert!("size_ratio!=0.28".parse::<Requirement>().unwrap().check(&h).is_err());
    }
}
