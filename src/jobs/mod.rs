//! Jobs: kinds, states, the messages between the async side and the worker threads.
//!
//! Life of a job: `POST /v1/jobs` parses the kind's parameters ([`kinds`]), looks up and checks
//! the stored inputs, inserts (`queued`), commits, then wakes the [`dispatcher`]. The
//! dispatcher claims it (`running`) when a worker is free, resolves every file it needs, and
//! sends a [`JobCommand`] to a [`worker`] thread. The worker runs the kind's `run` and reports
//! progress and the outcome over a bounded channel to the reporter task, which persists them
//! and broadcasts them to SSE subscribers. docs/architecture.md tells the whole story.
//!
//! One module per kind ([`quantize`], [`evaluate`], [`train`], [`prune`], [`distill`],
//! [`sensitivity`], [`debug_sleep`]); [`kinds`] is the registry and [`kind`] the trait each kind implements; [`common`] holds the leaves the
//! kinds share. Job code returns [`JobError`] / [`crate::error::DomainError`], never HTTP types.

pub mod common;
pub mod debug_sleep;
pub mod dispatcher;
pub mod distill;
pub mod engine;
pub mod evaluate;
pub mod kind;
pub mod kinds;
pub mod prune;
pub mod quantize;
pub mod sensitivity;
pub mod train;
pub mod view;
pub mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::{DomainError, ErrorCode, Problem};
use crate::storage::{ArtifactStore, TempFile};

pub use crate::job_status::JobStatus;
pub use dispatcher::{JobUpdate, JobsHandle};
pub use kinds::{JobKind, JobParams};

/// A model file a job reads.
#[derive(Debug, Clone)]
pub struct InputModel {
    pub id: String,
    pub name: String,
    pub path: PathBuf,
    pub spec: Option<String>,
}

/// A dataset file a job reads.
#[derive(Debug, Clone)]
pub struct InputDataset {
    pub id: String,
    pub path: PathBuf,
    pub format: String,
}

/// Everything a worker needs to run one job; built by the dispatcher.
pub struct JobCommand {
    pub ctx: JobContext,
    /// Released when the reporter has recorded the outcome; frees the worker slot.
    pub permit: tokio::sync::OwnedSemaphorePermit,
    pub claimed_at: Instant,
}

/// The job as the compute sees it, plus its channels back to the async side.
pub struct JobContext {
    pub id: String,
    pub params: JobParams,
    /// The claimed row's tenant (owner of any output).
    pub tenant: crate::tenant::Tenant,
    pub attempts: i64,
    pub model: Option<InputModel>,
    pub models: HashMap<String, InputModel>,
    pub datasets: HashMap<String, InputDataset>,
    pub store: ArtifactStore,
    pub cancel: Arc<AtomicBool>,
    pub shutdown: Arc<AtomicBool>,
    /// To the reporter task (bounded; progress is dropped when full, outcomes are not).
    pub events: mpsc::Sender<WorkerEvent>,
}

impl JobContext {
    /// Reports progress (0..1) and a stage text. Lossy under pressure: the next call carries
    /// newer numbers anyway.
    pub fn progress(&self, progress: f64, stage: &str) {
        let _ = self.events.try_send(WorkerEvent::Progress {
            job_id: self.id.clone(),
            progress: progress.clamp(0.0, 1.0),
            stage: stage.to_string(),
        });
    }

    /// A structured event for SSE subscribers (e.g. one epoch's statistics).
    pub fn event(&self, name: &str, data: Value) {
        let _ = self.events.try_send(WorkerEvent::Custom { job_id: self.id.clone(), name: name.to_string(), data });
    }

    /// A check point: returns `Err` when the job was cancelled or the service is stopping.
    pub fn checkpoint(&self) -> Result<(), JobError> {
        crate::fault::point("computing");
        if self.cancel.load(Ordering::Relaxed) {
            return Err(JobError::Cancelled);
        }
        if self.shutdown.load(Ordering::Relaxed) {
            return Err(JobError::Shutdown);
        }
        Ok(())
    }

    pub fn is_stopping(&self) -> bool {
        self.cancel.load(Ordering::Relaxed) || self.shutdown.load(Ordering::Relaxed)
    }

    pub fn input_model(&self) -> Result<&InputModel, JobError> {
        self.model.as_ref().ok_or_else(|| JobError::invalid("model_id", "this job kind needs a model_id"))
    }
}

/// A new model produced by a job, fully written under a temp name.
#[derive(Debug)]
pub struct OutputModel {
    pub file: TempFile,
    pub name: String,
    pub spec: Option<String>,
    pub size_bytes: u64,
    pub sha256: String,
    pub tensor_count: u64,
    pub parameter_count: u64,
    pub dtype_bytes: std::collections::BTreeMap<String, u64>,
    pub metadata: std::collections::BTreeMap<String, String>,
}

impl OutputModel {
    /// Reads back the written file's header and hash (on the worker thread).
    pub fn from_file(file: TempFile, name: String, spec: Option<String>) -> Result<OutputModel, JobError> {
        let tf = crate::tensorfile::Tensorfile::open_trusted(file.path())
            .map_err(|e| JobError::Internal(format!("re-reading output: {e}")))?;
        let size_bytes = std::fs::metadata(file.path())?.len();
        let sha256 = ArtifactStore::sha256_file(file.path())?;
        let h = &tf.header;
        Ok(OutputModel {
            name,
            spec,
            size_bytes,
            sha256,
            tensor_count: h.tensors.len() as u64,
            parameter_count: h.parameter_count(),
            dtype_bytes: h.bytes_by_dtype(),
            metadata: h.metadata.clone(),
            file,
        })
    }
}

/// What a successful job produced.
#[derive(Debug)]
pub struct JobOutput {
    pub report: Value,
    pub model: Option<OutputModel>,
}

/// Why a job did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The input or parameters turned out unusable (the client can fix it).
    #[error("{detail}")]
    Invalid { field: Option<String>, detail: String },
    #[error("cancelled")]
    Cancelled,
    /// The service is shutting down: the job goes back to the queue.
    #[error("interrupted by shutdown")]
    Shutdown,
    #[error("internal: {0}")]
    Internal(String),
    /// Writing the output failed for lack of space (ENOSPC/EDQUOT); the partial output is gone.
    #[error("data disk full")]
    DiskFull,
}

impl JobError {
    pub fn invalid(field: &str, detail: impl Into<String>) -> JobError {
        JobError::Invalid { field: Some(field.to_string()), detail: detail.into() }
    }
    pub fn input(detail: impl Into<String>) -> JobError {
        JobError::Invalid { field: None, detail: detail.into() }
    }

    /// The problem object stored as the job's `error`.
    pub fn problem(&self) -> Problem {
        let err = match self {
            JobError::Invalid { field, detail } => {
                let e = DomainError::new(ErrorCode::Validation, detail.clone());
                DomainError { field: field.clone(), ..e }
            }
            JobError::Cancelled => DomainError::new(ErrorCode::Cancelled, "the job was cancelled"),
            JobError::Shutdown => DomainError::new(ErrorCode::Unavailable, "the service shut down"),
            JobError::DiskFull => DomainError::new(ErrorCode::InsufficientStorage, crate::error::DISK_FULL),
            JobError::Internal(_) => DomainError::new(
                ErrorCode::Internal,
                "the job failed because of an internal error; see the server logs",
            ),
        };
        err.problem()
    }
}

/// A parameter refusal met on the worker (the inputs changed since submission, or a check
/// only the data can answer).
impl From<DomainError> for JobError {
    fn from(e: DomainError) -> Self {
        match e.code {
            ErrorCode::Internal => JobError::Internal(e.detail),
            _ => JobError::Invalid { field: e.field, detail: e.detail },
        }
    }
}

impl From<std::io::Error> for JobError {
    fn from(e: std::io::Error) -> Self {
        if crate::fault::is_disk_full(&e) {
            return JobError::DiskFull;
        }
        JobError::Internal(format!("io: {e}"))
    }
}

impl From<crate::tensorfile::TensorfileError> for JobError {
    fn from(e: crate::tensorfile::TensorfileError) -> Self {
        match e {
            crate::tensorfile::TensorfileError::Io(e) if crate::fault::is_disk_full(&e) => JobError::DiskFull,
            e => JobError::input(e.to_string()),
        }
    }
}

/// Messages from workers to the reporter task.
pub enum WorkerEvent {
    Progress { job_id: String, progress: f64, stage: String },
    Custom { job_id: String, name: String, data: Value },
    Finished(Box<Finished>),
}

/// A job's outcome, with the worker slot it frees, and what the reporter needs to record a
/// success in one transaction (the output model's parent and tenant).
pub struct Finished {
    pub job_id: String,
    pub kind: JobKind,
    /// The job's `model_id`: the output model's parent.
    pub parent_model_id: Option<String>,
    /// The job's tenant: the output model's owner.
    pub tenant: crate::tenant::Tenant,
    pub result: Result<JobOutput, JobError>,
    pub permit: tokio::sync::OwnedSemaphorePermit,
    pub duration: std::time::Duration,
}
