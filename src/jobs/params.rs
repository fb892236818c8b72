//! Job kinds and their parameters, validated before a job is queued so that a bad request is
//! a 422 naming the field, not a failed job later.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;

/// The kinds of job this build knows.
pub const KINDS: &[&str] = &["quantize"];

/// Limits and switches that shape validation.
#[derive(Debug, Clone, Default)]
pub struct ParamRules {
    pub enable_test_jobs: bool,
}

/// Parameters of a job, by kind.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum JobParams {
    Quantize(QuantizeParams),
    DebugSleep(SleepParams),
}

impl JobParams {
    pub fn kind(&self) -> &'static str {
        match self {
            JobParams::Quantize(_) => "quantize",
            JobParams::DebugSleep(_) => "debug_sleep",
        }
    }

    /// Whether the job reads `model_id`.
    pub fn needs_model(&self) -> bool {
        !matches!(self, JobParams::DebugSleep(_))
    }

    /// Datasets the job reads (ids), besides `model_id`.
    pub fn dataset_ids(&self) -> Vec<String> {
        Vec::new()
    }

    /// Other models the job reads (ids), besides `model_id`.
    pub fn model_ids(&self) -> Vec<String> {
        Vec::new()
    }
}

fn typed<T: DeserializeOwned>(params: &Value) -> Result<T, ApiError> {
    let params = if params.is_null() { Value::Object(Default::default()) } else { params.clone() };
    serde_json::from_value(params).map_err(|e| ApiError::validation("params", e.to_string()))
}

/// Parses and checks `params` for `kind`.
pub fn parse(kind: &str, params: &Value, rules: &ParamRules) -> Result<JobParams, ApiError> {
    if !(params.is_object() || params.is_null()) {
        return Err(ApiError::validation("params", "must be a JSON object"));
    }
    match kind {
        "quantize" => {
            let p: QuantizeParams = typed(params)?;
            p.check()?;
            Ok(JobParams::Quantize(p))
        }
        "debug_sleep" if rules.enable_test_jobs => {
            let p: SleepParams = typed(params)?;
            if p.steps > 100_000 || p.step_ms > 60_000 {
                return Err(ApiError::validation("params.steps", "steps ≤ 100000 and step_ms ≤ 60000"));
            }
            Ok(JobParams::DebugSleep(p))
        }
        other => {
            Err(ApiError::validation("kind", format!("unknown job kind '{other}'; supported: {}", KINDS.join(", "))))
        }
    }
}

/// Float cast schemes (more arrive with the quantization issue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    F16,
    Bf16,
}

/// `kind: "quantize"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizeParams {
    /// Target representation: `f16` or `bf16` (cast every f32/f64 tensor).
    pub scheme: String,
}

impl QuantizeParams {
    pub fn scheme(&self) -> Result<Scheme, ApiError> {
        serde_json::from_value(Value::String(self.scheme.clone())).map_err(|_| {
            ApiError::validation("params.scheme", format!("unknown scheme '{}'; supported: f16, bf16", self.scheme))
        })
    }
    fn check(&self) -> Result<(), ApiError> {
        self.scheme().map(|_| ())
    }
}

/// `kind: "debug_sleep"` (test builds only): sleeps `steps` × `step_ms` with a check point
/// per step.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepParams {
    #[serde(default = "default_steps")]
    pub steps: u32,
    #[serde(default = "default_step_ms")]
    pub step_ms: u64,
    /// Panic at the first step (tests the panic boundary).
    #[serde(default)]
    pub panic: bool,
}

fn default_steps() -> u32 {
    10
}
fn default_step_ms() -> u64 {
    100
}
