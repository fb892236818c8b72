//! The async side of the queue: the dispatcher task claims queued jobs when a worker is free
//! and hands them to the worker threads; the reporter task records what workers report and
//! broadcasts it to SSE subscribers. Both run on the tokio runtime and only do short I/O.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, watch, Notify, Semaphore};

use super::kinds::{JobKind, JobParams, ParamRules};
use super::view::Job;
use super::{Finished, InputDataset, InputModel, JobCommand, JobContext, JobError, JobStatus, WorkerEvent};
use crate::config::Config;
use crate::db::{self, Db};
use crate::storage::ArtifactStore;
use crate::telemetry::Metrics;

/// One update on the job event bus.
#[derive(Debug, Clone, Serialize)]
pub struct JobUpdate {
    pub job_id: String,
    /// SSE event name: `state`, `progress` or a kind-specific name (`epoch`, …).
    pub event: String,
    pub data: Value,
    /// True on the last update of a job.
    pub terminal: bool,
}

struct Inner {
    db: Db,
    store: ArtifactStore,
    rules: ParamRules,
    wake: Notify,
    updates: broadcast::Sender<JobUpdate>,
    /// Cancel flags of the jobs running in this process.
    running: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Set after the shutdown grace period: running jobs stop at their next check point.
    shutdown_flag: Arc<AtomicBool>,
    /// `true` once shutdown began: the dispatcher stops claiming.
    stopping: watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

/// Cloneable front to the queue machinery.
#[derive(Clone)]
pub struct JobsHandle {
    inner: Arc<Inner>,
}

impl JobsHandle {
    /// Starts the worker threads, the dispatcher and the reporter.
    pub fn start(db: Db, store: ArtifactStore, config: &Config, metrics: Arc<Metrics>) -> std::io::Result<JobsHandle> {
        let workers = config.workers.max(1);
        let (updates, _) = broadcast::channel(1024);
        let (stopping, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            db,
            store,
            rules: ParamRules { enable_test_jobs: config.enable_test_jobs },
            wake: Notify::new(),
            updates,
            running: Mutex::new(HashMap::new()),
            shutdown_flag: Arc::new(AtomicBool::new(false)),
            stopping,
            metrics,
        });
        // Capacity = workers: the dispatcher holds a semaphore permit per command, so a send
        // never waits.
        let (cmd_tx, cmd_rx) = std::sync::mpsc::sync_channel::<JobCommand>(workers);
        // Bounded: a worker blocks on its outcome only if the reporter is far behind.
        let (ev_tx, ev_rx) = mpsc::channel::<WorkerEvent>(1024);
        super::worker::spawn_workers(workers, config.job_threads, cmd_rx)?;
        let handle = JobsHandle { inner };
        let sem = Arc::new(Semaphore::new(workers));
        tokio::spawn(handle.clone().dispatch_loop(sem, cmd_tx, ev_tx));
        tokio::spawn(handle.clone().report_loop(ev_rx, Duration::from_secs(config.heartbeat_secs.max(1))));
        Ok(handle)
    }

    /// Wakes the dispatcher (after a job was committed).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    pub fn subscribe(&self) -> broadcast::Receiver<JobUpdate> {
        self.inner.updates.subscribe()
    }

    /// Raises the cancel flag of a job running in this process.
    pub fn request_cancel(&self, job_id: &str) {
        if let Some(flag) = self.running().get(job_id) {
            flag.store(true, Ordering::Relaxed);
        }
    }

    /// Broadcasts a job's full state (after a change made outside the reporter, e.g. cancel).
    pub fn publish_state(&self, job: &Job) {
        let _ = self.inner.updates.send(JobUpdate {
            job_id: job.id.clone(),
            event: "state".into(),
            data: serde_json::to_value(job).unwrap_or(Value::Null),
            terminal: job.status.is_terminal(),
        });
    }

    pub fn running_count(&self) -> usize {
        self.running().len()
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<AtomicBool>>> {
        self.inner.running.lock().expect("running-jobs lock is never held across a panic")
    }

    /// A receiver that turns `true` when shutdown begins (SSE streams end on it).
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.inner.stopping.subscribe()
    }

    /// Graceful stop: no more claims; running jobs get `grace` to finish, then are told to stop
    /// at their next check point and are requeued.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.inner.stopping.send(true);
        self.inner.wake.notify_one();
        let deadline = Instant::now() + grace;
        while self.running_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if self.running_count() > 0 {
            tracing::info!(jobs = self.running_count(), "grace period over: stopping running jobs for requeue");
            self.inner.shutdown_flag.store(true, Ordering::Relaxed);
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.running_count() > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    async fn dispatch_loop(
        self,
        sem: Arc<Semaphore>,
        cmd_tx: std::sync::mpsc::SyncSender<JobCommand>,
        ev_tx: mpsc::Sender<WorkerEvent>,
    ) {
        let mut stop = self.inner.stopping.subscribe();
        loop {
            if *stop.borrow() {
                break;
            }
            let permit = tokio::select! {
                p = sem.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = stop.changed() => break,
            };
            match db::claim_next_job(&self.inner.db).await {
                Ok(Some(row)) => {
                    crate::fault::point("claimed");
                    let id = row.id.clone();
                    match self.prepare(row, ev_tx.clone()).await {
                        Ok(ctx) => {
                            self.publish_from_db(&id).await;
                            let cmd = JobCommand { ctx, permit, claimed_at: Instant::now() };
                            if let Err(e) = cmd_tx.try_send(cmd) {
                                tracing::error!(job_id = %id, error = %e, "worker channel refused a job; requeueing");
                                self.running().remove(&id);
                                let _ = db::requeue_after_shutdown(&self.inner.db, &id).await;
                            }
                        }
                        Err(err) => {
                            drop(permit);
                            self.record_failure_before_start(&id, err).await;
                        }
                    }
                }
                Ok(None) => {
                    drop(permit);
                    tokio::select! {
                        _ = self.inner.wake.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                        _ = stop.changed() => break,
                    }
                }
                Err(e) => {
                    drop(permit);
                    tracing::error!(error = %e, "claiming a job failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        tracing::info!("dispatcher stopped");
    }

    /// Resolves everything the worker needs (files, specs) so it never touches the database.
    async fn prepare(&self, row: db::JobRow, events: mpsc::Sender<WorkerEvent>) -> Result<JobContext, JobError> {
        let raw: Value =
            serde_json::from_str(&row.params).map_err(|e| JobError::Internal(format!("stored params: {e}")))?;
        let kind = JobKind::parse(&row.kind, &self.inner.rules)?;
        let params = JobParams::parse(kind, &raw)?;
        let db = &self.inner.db;
        let store = &self.inner.store;
        let mut models = HashMap::new();
        let needs = params.needs();
        let mut ids: Vec<String> = needs.models.iter().map(|(id, _)| id.clone()).collect();
        if let Some(m) = &row.model_id {
            ids.push(m.clone());
        }
        for id in ids {
            let m = db::get_model(db, &id)
                .await
                .map_err(|e| JobError::Internal(e.to_string()))?
                .ok_or_else(|| JobError::input(format!("model '{id}' no longer exists")))?;
            models
                .insert(id.clone(), InputModel { path: store.model_path(&m.id), id: m.id, name: m.name, spec: m.spec });
        }
        let mut datasets = HashMap::new();
        for id in needs.dataset_ids() {
            let d = db::get_dataset(db, &id)
                .await
                .map_err(|e| JobError::Internal(e.to_string()))?
                .ok_or_else(|| JobError::input(format!("dataset '{id}' no longer exists")))?;
            // CSV uploads are converted at upload time: every stored dataset is safetensors.
            datasets.insert(id.clone(), InputDataset { path: store.dataset_path(&d.id), id: d.id, format: d.format });
        }
        let cancel = Arc::new(AtomicBool::new(row.cancel_requested != 0));
        self.running().insert(row.id.clone(), cancel.clone());
        Ok(JobContext {
            model: row.model_id.as_ref().and_then(|m| models.get(m).cloned()),
            id: row.id,
            params,
            tenant: crate::tenant::Tenant::from_column(row.tenant_id),
            attempts: row.attempts,
            models,
            datasets,
            store: store.clone(),
            cancel,
            shutdown: self.inner.shutdown_flag.clone(),
            events,
        })
    }

    async fn record_failure_before_start(&self, id: &str, err: JobError) {
        let problem = serde_json::to_string(&err.problem()).unwrap_or_default();
        if let JobError::Internal(msg) = &err {
            tracing::error!(job_id = %id, error = %msg, "job failed before start");
        }
        let _ = db::finish_job_without_output(&self.inner.db, id, JobStatus::Failed, Some(&problem), None).await;
        self.running().remove(id);
        self.publish_from_db(id).await;
    }

    async fn publish_from_db(&self, id: &str) {
        if let Ok(Some(row)) = db::get_job(&self.inner.db, id).await {
            self.publish_state(&Job::from(row));
        }
    }

    async fn report_loop(self, mut rx: mpsc::Receiver<WorkerEvent>, heartbeat: Duration) {
        let mut last_write: HashMap<String, Instant> = HashMap::new();
        let mut tick = tokio::time::interval(heartbeat);
        loop {
            tokio::select! {
                ev = rx.recv() => {
                    let Some(ev) = ev else { break };
                    match ev {
                        WorkerEvent::Progress { job_id, progress, stage } => {
                            let due = last_write.get(&job_id).is_none_or(|t| t.elapsed() >= Duration::from_millis(250));
                            if due {
                                last_write.insert(job_id.clone(), Instant::now());
                                if let Err(e) = db::update_progress(&self.inner.db, &job_id, progress, &stage).await {
                                    tracing::warn!(error = %e, "progress update failed");
                                }
                            }
                            let _ = self.inner.updates.send(JobUpdate {
                                data: json!({"id": job_id, "status": JobStatus::Running, "progress": progress, "stage": stage}),
                                job_id, event: "progress".into(), terminal: false,
                            });
                        }
                        WorkerEvent::Custom { job_id, name, data } => {
                            let _ = self.inner.updates.send(JobUpdate { job_id, event: name, data, terminal: false });
                        }
                        WorkerEvent::Finished(f) => {
                            last_write.remove(&f.job_id);
                            self.finish(*f).await;
                        }
                    }
                }
                _ = tick.tick() => {
                    let ids: Vec<String> = self.running().keys().cloned().collect();
                    if !ids.is_empty() {
                        if let Err(e) = db::heartbeat(&self.inner.db, &ids).await {
                            tracing::warn!(error = %e, "heartbeat failed");
                        }
                    }
                }
            }
        }
    }

    async fn finish(&self, f: Finished) {
        let Finished { job_id, kind, parent_model_id, tenant, result, permit, duration } = f;
        let db = &self.inner.db;
        let outcome = match result {
            Ok(out) => {
                let report = serde_json::to_string(&out.report).unwrap_or_else(|_| "{}".into());
                match out.model {
                    None => match db::finish_job_success(db, &job_id, None, &report).await {
                        Ok(()) => JobStatus::Succeeded.as_str(),
                        Err(e) => self.fail_internal(&job_id, &format!("recording success: {e}")).await,
                    },
                    Some(m) => {
                        crate::fault::point("spool_written");
                        let id = uuid::Uuid::now_v7().to_string();
                        let dest = self.inner.store.model_path(&id);
                        let row = db::ModelRow {
                            id: id.clone(),
                            name: m.name.clone(),
                            created_at: crate::time::now_rfc3339(),
                            size_bytes: m.size_bytes as i64,
                            sha256: m.sha256.clone(),
                            tensor_count: m.tensor_count as i64,
                            parameter_count: m.parameter_count as i64,
                            dtype_bytes: serde_json::to_string(&m.dtype_bytes).unwrap_or_default(),
                            metadata: serde_json::to_string(&m.metadata).unwrap_or_default(),
                            spec: m.spec.clone(),
                            parent_model_id,
                            job_id: Some(job_id.clone()),
                            tenant_id: tenant.id().map(str::to_string),
                        };
                        // Rename first, commit second: a crash in between leaves an orphan
                        // file (swept at start-up), never a row without its file.
                        match m.file.persist(&dest).inspect(|()| crate::fault::point("renamed")) {
                            Err(e) => self.fail_internal(&job_id, &format!("storing output: {e}")).await,
                            Ok(()) => match db::finish_job_success(db, &job_id, Some(&row), &report).await {
                                Ok(()) => JobStatus::Succeeded.as_str(),
                                Err(e) => {
                                    let _ = std::fs::remove_file(&dest);
                                    self.fail_internal(&job_id, &format!("recording output: {e}")).await
                                }
                            },
                        }
                    }
                }
            }
            Err(JobError::Shutdown) => {
                let _ = db::requeue_after_shutdown(db, &job_id).await;
                "requeued"
            }
            Err(err) => {
                let status = if matches!(err, JobError::Cancelled) { JobStatus::Cancelled } else { JobStatus::Failed };
                if let JobError::Internal(msg) = &err {
                    tracing::error!(job_id = %job_id, error = %msg, "job failed");
                } else {
                    tracing::info!(job_id = %job_id, outcome = %status, reason = %err, "job ended");
                }
                let problem = serde_json::to_string(&err.problem()).unwrap_or_default();
                match db::finish_job_without_output(db, &job_id, status, Some(&problem), None).await {
                    Ok(()) => status.as_str(),
                    Err(e) => self.fail_internal(&job_id, &format!("recording failure: {e}")).await,
                }
            }
        };
        crate::fault::point("reporting");
        self.inner.metrics.inc(
            "modelpress_jobs_total",
            vec![("kind", kind.as_str().to_string()), ("outcome", outcome.to_string())],
            1.0,
        );
        self.inner.metrics.observe(
            "modelpress_job_duration_seconds",
            vec![("kind", kind.as_str().to_string())],
            duration.as_secs_f64(),
        );
        self.running().remove(&job_id);
        drop(permit);
        self.publish_from_db(&job_id).await;
    }

    async fn fail_internal(&self, job_id: &str, msg: &str) -> &'static str {
        tracing::error!(job_id = %job_id, error = %msg, "job failed");
        let problem = serde_json::to_string(&JobError::Internal(msg.into()).problem()).unwrap_or_default();
        let _ = db::finish_job_without_output(&self.inner.db, job_id, JobStatus::Failed, Some(&problem), None).await;
        JobStatus::Failed.as_str()
    }
}
