//! Runs one job on the calling (worker) thread: picks the implementation for the job's kind.
//! Also callable directly from tests (`run_job`) to drive compute deterministically.

use serde_json::json;

use super::params::{JobParams, SleepParams};
use super::{JobContext, JobError, JobOutput};

/// Runs the job described by `ctx` to completion, cancellation or failure.
pub fn run_job(ctx: &JobContext) -> Result<JobOutput, JobError> {
    match &ctx.params {
        JobParams::Quantize(p) => super::quantize::run(ctx, p),
        JobParams::Evaluate(p) => super::training::run_evaluate(ctx, p),
        JobParams::Train(p) => super::training::run_train(ctx, p),
        JobParams::Prune(p) => super::prune::run(ctx, p),
        JobParams::Distill(p) => super::distill::run(ctx, p),
        JobParams::Sensitivity(p) => super::sensitivity::run(ctx, p),
        JobParams::DebugSleep(p) => debug_sleep(ctx, p),
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
