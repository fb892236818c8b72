//! `debug_sleep` jobs (test builds only, `--enable-test-jobs`): sleep in steps with a check
//! point per step, or panic; they exercise the queue, cancellation and the panic boundary.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::common::{typed, Needs};
use super::kind::Kind;
use super::{JobContext, JobError, JobOutput};
use crate::error::DomainError;

/// `kind: "debug_sleep"` (test builds only): sleeps `steps` × `step_ms` with a check point
/// per step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
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

impl Kind for SleepParams {
    fn parse(params: &Value) -> Result<Self, DomainError> {
        let p: SleepParams = typed("params", params.clone())?;
        if p.steps > 100_000 || p.step_ms > 60_000 {
            return Err(DomainError::validation("params.steps", "steps ≤ 100000 and step_ms ≤ 60000"));
        }
        Ok(p)
    }

    fn needs(&self) -> Needs {
        Needs { model: false, ..Needs::default() }
    }

    fn run(&self, ctx: &JobContext) -> Result<JobOutput, JobError> {
        debug_sleep(ctx, self)
    }
}

fn debug_sleep(ctx: &JobContext, p: &SleepParams) -> Result<JobOutput, JobError> {
    if p.panic {
        panic!("debug_sleep asked to panic");
    }
    for step in 0..p.steps {
        ctx.checkpoint()?;
        std::thread::sleep(std::time::Duration::from_millis(p.step_ms));
        ctx.progress((step + 1) as f64 / p.steps.max(1) as f64, &format!("step {}/{}", step + 1, p.steps));
    }
    Ok(JobOutput { report: json!({"kind": "debug_sleep", "steps": p.steps, "attempts": ctx.attempts}), model: None })
}
