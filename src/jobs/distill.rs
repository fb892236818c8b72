//! `distill` jobs (runs on a worker thread). Being built: until then the kind is refused at
//! submission with a clear 422.

use serde::Serialize;
use serde_json::Value;

use super::params::Needs;
use super::{JobContext, JobError, JobOutput};
use crate::error::ApiError;

/// Parameters of a `distill` job.
#[derive(Debug, Clone, Serialize)]
pub struct DistillParams {
    pub raw: Value,
}

impl DistillParams {
    pub fn parse(_params: &Value) -> Result<DistillParams, ApiError> {
        Err(ApiError::validation("kind", "the distill kind is not available in this build yet"))
    }
    pub fn needs(&self) -> Needs {
        Needs::default()
    }
    pub fn model_ids(&self) -> Vec<String> {
        Vec::new()
    }
}

pub fn run(_ctx: &JobContext, _p: &DistillParams) -> Result<JobOutput, JobError> {
    Err(JobError::input("the distill kind is not available in this build yet"))
}
