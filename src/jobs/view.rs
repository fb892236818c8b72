//! The job as clients see it (JSON field names are a public contract).

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::db::JobRow;
use crate::error::Problem;
use crate::jobs::{JobKind, JobStatus};

/// A job.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Job {
    pub id: String,
    /// `quantize`, `prune`, `distill`, `evaluate`, `train`, `sensitivity`.
    #[schema(value_type = JobKind)]
    pub kind: String,
    pub status: JobStatus,
    /// 0..1.
    pub progress: f64,
    pub stage: Option<String>,
    pub model_id: Option<String>,
    #[schema(value_type = Object)]
    pub params: Value,
    pub output_model_id: Option<String>,
    /// What the job measured (sizes, errors, accuracy, timings); kind-specific.
    #[schema(value_type = Option<Object>)]
    pub report: Option<Value>,
    pub error: Option<Problem>,
    pub attempts: i64,
    pub cancel_requested: bool,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub heartbeat_at: Option<String>,
}

impl From<JobRow> for Job {
    fn from(r: JobRow) -> Self {
        Job {
            params: serde_json::from_str(&r.params).unwrap_or(Value::Null),
            report: r.report.as_deref().and_then(|s| serde_json::from_str(s).ok()),
            error: r.error.as_deref().and_then(|s| serde_json::from_str(s).ok()),
            id: r.id,
            kind: r.kind,
            status: r.status,
            progress: r.progress,
            stage: r.stage,
            model_id: r.model_id,
            output_model_id: r.output_model_id,
            attempts: r.attempts,
            cancel_requested: r.cancel_requested != 0,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            heartbeat_at: r.heartbeat_at,
        }
    }
}
