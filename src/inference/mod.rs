//! Serving predictions from stored artifacts: [`InferenceHandle`] is the cloneable front the HTTP
//! handlers use; behind it, `--inference-threads` dedicated OS threads (`modelpress-infer-N`,
//! not the job workers, not `spawn_blocking`) own all model compute.
//!
//! # Who owns what
//! - The **request queue** ([`Shared::queue`], bounded by `--max-inference-queue` requests) is
//!   filled by handlers ([`InferenceHandle::submit`], never blocks: a full queue is an immediate
//!   [`InferError::QueueFull`] → 429 + `Retry-After`) and drained by the inference threads.
//! - **Dynamic batching**: a free inference thread takes the oldest request, then gathers every
//!   queued request for the same model (same id and spec) up to `--max-batch` rows, concatenates
//!   them into one batch, runs one forward pass and splits the rows back, each to its own
//!   `oneshot` reply. It waits up to `--max-wait-us` (counted from the oldest request's arrival)
//!   for more rows only while the model has concurrent traffic (its previous batch merged several
//!   requests): a lone client is never delayed, concurrent clients fill batches. Requests that
//!   arrive while a batch computes are merged into the next one without waiting. While one thread
//!   gathers for a model, the others serve other models.
//! - Requests whose client has gone (the handler future was dropped, so the `oneshot` receiver
//!   is closed) are dropped before compute.
//! - The **model cache** ([`cache::Cache`]) maps model id → loaded [`ServedModel`], LRU,
//!   bounded by `--inference-cache-bytes` of estimated resident weights. A miss loads the
//!   artifact on the inference thread that needs it (others needing the same model wait for that
//!   load, not a second one), builds the network and runs a warm-up pass. Deleting a model
//!   evicts it ([`InferenceHandle::evict`]) and tombstones its id so a load racing with the
//!   delete cannot re-insert it.
//! - **Threads** (the policy): each inference thread runs its candle work inside its own
//!   one-thread rayon pool (candle's spin-waiting pools collapse when oversubscribed), plus
//!   candle's process-wide pool for ggml quantized matmuls, sized by `CANDLE_NUM_THREADS`. Our
//!   own kernels (int8 layers, [`crate::kernels`]) run on the inference thread and share large
//!   products with the process-wide kernel helper pool (`--kernel-threads`, default all cores):
//!   helpers take chunks (a quarter of a thread's share) from a counter the inference thread
//!   also drains, so they add speed when cores are idle and, when job workers hold the cores,
//!   cost at most the one chunk a descheduled helper holds. Keep
//!   `workers × job-threads + inference-threads ≈ cores`; the kernel helpers are the only
//!   threads allowed to go beyond that, because the caller never waits for them to start.
//!
//! Metrics: `modelpress_inference_queue_seconds` (per request, arrival → compute start),
//! `modelpress_inference_compute_seconds` and `modelpress_inference_batch_size` (per batch),
//! `modelpress_model_cache_total{event=hit|load|evict}`,
//! `modelpress_rejections_total{reason=inference_queue_full|client_gone}`.

mod cache;
pub mod model;

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use tokio::sync::oneshot;

pub use model::{LayerKernel, LoadError, OutputMode, ServedModel, ServingPlan};

use crate::nn::ModelSpec;
use crate::telemetry::Metrics;

/// Settings of the inference threads (from [`crate::config::Config`]).
#[derive(Debug, Clone)]
pub struct InferenceConfig {
    /// Dedicated inference threads.
    pub threads: usize,
    /// Budget of the model cache, bytes of estimated resident weights.
    pub cache_bytes: u64,
    /// Most rows merged into one forward pass.
    pub max_batch: usize,
    /// Longest a request waits for others to join its batch.
    pub max_wait: Duration,
    /// Most requests waiting for a thread; beyond it, [`InferError::QueueFull`].
    pub max_queue: usize,
    /// Batch sizes run once at load (repacking of quantized weights, allocations).
    pub warm_rows: Vec<usize>,
}

impl InferenceConfig {
    pub fn from_config(c: &crate::config::Config) -> InferenceConfig {
        InferenceConfig {
            threads: c.inference_threads.max(1),
            cache_bytes: c.inference_cache_bytes,
            max_batch: c.max_batch.max(1),
            max_wait: Duration::from_micros(c.max_wait_us),
            max_queue: c.max_inference_queue.max(1),
            warm_rows: vec![1, c.max_batch.clamp(1, 64)],
        }
    }
}

/// Which model a request is for, as the database describes it.
#[derive(Debug, Clone)]
pub struct ModelSource {
    pub id: String,
    /// The artifact file.
    pub path: PathBuf,
    /// The parsed spec and its text (the text is part of the cache key).
    pub spec: Arc<ModelSpec>,
    pub spec_json: Arc<str>,
}

/// One prediction request: `rows` samples, preprocessed nothing, as f32 in the spec's input
/// layout (row-major, `rows × input numel` values, already checked).
#[derive(Debug)]
pub struct PredictRequest {
    pub model: ModelSource,
    pub rows: usize,
    pub inputs: Vec<f32>,
    pub output: OutputMode,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub rows: usize,
    /// Values per row.
    pub width: usize,
    /// `rows × width` values, row-major.
    pub values: Vec<f32>,
    /// Class indices per row for top-k (`rows × width`), empty otherwise.
    pub indices: Vec<u32>,
    /// Rows in the forward pass this request was part of.
    pub batch_rows: usize,
}

/// Why a prediction failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InferError {
    #[error("the inference queue is full ({capacity} requests waiting); retry shortly")]
    QueueFull { capacity: usize },
    #[error("the inference service is shutting down")]
    Stopping,
    #[error("model '{0}' does not exist")]
    ModelGone(String),
    #[error("model '{id}' cannot be served: {reason}")]
    Unusable { id: String, reason: String },
    #[error(
        "model '{id}' needs about {needs} bytes in memory, more than the whole inference cache \
         ({budget} bytes, --inference-cache-bytes)"
    )]
    TooLarge { id: String, needs: u64, budget: u64 },
    #[error("internal inference failure: {0}")]
    Internal(String),
}

struct Pending {
    req: PredictRequest,
    reply: oneshot::Sender<Result<Prediction, InferError>>,
    enqueued: Instant,
}

impl Pending {
    fn key_matches(&self, model: &ModelSource) -> bool {
        self.req.model.id == model.id && self.req.model.spec_json == model.spec_json
    }
}

#[derive(Default)]
struct QueueState {
    pending: VecDeque<Pending>,
    /// Models a thread is currently gathering a batch for.
    gathering: HashSet<String>,
    /// Models whose last batch merged several requests (worth waiting for more).
    concurrent: HashSet<String>,
    stopping: bool,
}

struct Shared {
    config: InferenceConfig,
    metrics: Arc<Metrics>,
    /// Handlers push, inference threads pop; `wake` signals both directions.
    queue: Mutex<QueueState>,
    wake: Condvar,
    cache: cache::Cache,
    batches: AtomicU64,
}

/// The cloneable front of the inference threads.
#[derive(Clone)]
pub struct InferenceHandle {
    shared: Arc<Shared>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl std::fmt::Debug for InferenceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferenceHandle").field("config", &self.shared.config).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data (queues, maps) consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl InferenceHandle {
    /// Starts the inference threads.
    pub fn start(config: InferenceConfig, metrics: Arc<Metrics>) -> std::io::Result<InferenceHandle> {
        let shared = Arc::new(Shared {
            cache: cache::Cache::new(config.cache_bytes),
            config,
            metrics,
            queue: Mutex::new(QueueState::default()),
            wake: Condvar::new(),
            batches: AtomicU64::new(0),
        });
        let mut threads = Vec::new();
        for i in 0..shared.config.threads {
            let s = shared.clone();
            threads.push(std::thread::Builder::new().name(format!("modelpress-infer-{i}")).spawn(move || run(s, i))?);
        }
        Ok(InferenceHandle { shared, threads: Arc::new(Mutex::new(threads)) })
    }

    /// The settings the threads run with.
    pub fn config(&self) -> &InferenceConfig {
        &self.shared.config
    }

    /// Queues a request; the receiver gets the answer. Never blocks.
    pub fn submit(&self, req: PredictRequest) -> Result<oneshot::Receiver<Result<Prediction, InferError>>, InferError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut q = lock(&self.shared.queue);
            if q.stopping {
                return Err(InferError::Stopping);
            }
            if q.pending.len() >= self.shared.config.max_queue {
                drop(q);
                self.shared.metrics.inc(
                    "modelpress_rejections_total",
                    vec![("reason", "inference_queue_full".into())],
                    1.0,
                );
                return Err(InferError::QueueFull { capacity: self.shared.config.max_queue });
            }
            q.pending.push_back(Pending { req, reply: tx, enqueued: Instant::now() });
        }
        self.shared.wake.notify_all();
        Ok(rx)
    }

    /// Queues a request and waits for its answer. Dropping the future withdraws the request
    /// (it is skipped before compute).
    pub async fn predict(&self, req: PredictRequest) -> Result<Prediction, InferError> {
        let rx = self.submit(req)?;
        rx.await.unwrap_or_else(|_| Err(InferError::Internal("the inference thread dropped the request".into())))
    }

    /// Removes a deleted model from the cache; a load in flight for it is not kept.
    pub fn evict(&self, id: &str) {
        if self.shared.cache.remove(id, true) {
            self.shared.metrics.inc("modelpress_model_cache_total", vec![("event", "evict".into())], 1.0);
        }
    }

    /// The loaded model, if it is in the cache (no load, no LRU update).
    pub fn cached(&self, id: &str) -> Option<Arc<ServedModel>> {
        self.shared.cache.peek(id)
    }

    /// The parsed spec of a cached model when its text is `spec_json` (saves re-parsing).
    pub fn cached_spec(&self, id: &str, spec_json: &str) -> Option<Arc<ModelSpec>> {
        self.shared.cache.peek(id).filter(|m| m.spec_json == spec_json).map(|m| m.spec.clone())
    }

    /// Estimated bytes held by the model cache.
    pub fn cache_used_bytes(&self) -> u64 {
        self.shared.cache.used()
    }

    /// Requests waiting for a thread.
    pub fn queue_len(&self) -> usize {
        lock(&self.shared.queue).pending.len()
    }

    /// Forward passes run so far.
    pub fn batches_run(&self) -> u64 {
        self.shared.batches.load(Ordering::Relaxed)
    }

    /// Stops the threads: queued requests are answered [`InferError::Stopping`], running
    /// batches finish. Blocks until the threads have exited (call it off the runtime).
    pub fn shutdown(&self) {
        lock(&self.shared.queue).stopping = true;
        self.shared.wake.notify_all();
        let threads: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&self.threads));
        for t in threads {
            if t.join().is_err() {
                tracing::error!("an inference thread panicked outside its panic boundary");
            }
        }
    }
}

/// The batch a thread took.
struct Batch {
    model: ModelSource,
    items: Vec<Pending>,
}

impl Shared {
    /// Blocks until a batch is ready; `None` when stopping.
    fn next_batch(&self) -> Option<Batch> {
        let mut q = lock(&self.queue);
        loop {
            if q.stopping {
                for p in q.pending.drain(..) {
                    let _ = p.reply.send(Err(InferError::Stopping));
                }
                return None;
            }
            let client_gone = q.pending.iter().filter(|p| p.reply.is_closed()).count();
            if client_gone > 0 {
                q.pending.retain(|p| !p.reply.is_closed());
                self.metrics.inc(
                    "modelpress_rejections_total",
                    vec![("reason", "client_gone".into())],
                    client_gone as f64,
                );
            }
            // The oldest request of a model no other thread is gathering for.
            let first = q.pending.iter().position(|p| !q.gathering.contains(&p.req.model.id));
            let Some(first) = first else {
                q = self.wake.wait(q).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            let model = q.pending[first].req.model.clone();
            let deadline = q.pending[first].enqueued + self.config.max_wait;
            let wait = q.concurrent.contains(&model.id) && !self.config.max_wait.is_zero();
            if wait {
                q.gathering.insert(model.id.clone());
                loop {
                    let rows: usize = q.pending.iter().filter(|p| p.key_matches(&model)).map(|p| p.req.rows).sum();
                    let now = Instant::now();
                    if rows >= self.config.max_batch || now >= deadline || q.stopping {
                        break;
                    }
                    q = self.wake.wait_timeout(q, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
                }
                q.gathering.remove(&model.id);
                if q.stopping {
                    continue;
                }
            }
            // Take matching requests in arrival order up to max_batch rows (the first always).
            let mut items = Vec::new();
            let mut rows = 0usize;
            let mut rest = VecDeque::with_capacity(q.pending.len());
            for p in q.pending.drain(..) {
                let fits = items.is_empty() || rows + p.req.rows <= self.config.max_batch;
                if fits && p.key_matches(&model) && !p.reply.is_closed() {
                    rows += p.req.rows;
                    items.push(p);
                } else {
                    rest.push_back(p);
                }
            }
            q.pending = rest;
            if items.is_empty() {
                continue; // every match withdrew while we waited
            }
            if items.len() > 1 {
                q.concurrent.insert(model.id.clone());
            } else {
                q.concurrent.remove(&model.id);
            }
            let more = !q.pending.is_empty();
            drop(q);
            if more {
                self.wake.notify_all();
            }
            return Some(Batch { model, items });
        }
    }
}

/// The loop of one inference thread.
fn run(shared: Arc<Shared>, index: usize) {
    let pool = match rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .thread_name(move |t| format!("modelpress-infer-{index}-compute-{t}"))
        .build()
    {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the inference compute pool");
            return;
        }
    };
    while let Some(batch) = shared.next_batch() {
        let span = tracing::debug_span!("inference_batch", model_id = %batch.model.id, requests = batch.items.len());
        let _entered = span.enter();
        let outcome =
            pool.install(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_batch(&shared, batch))));
        if let Err(panic) = outcome {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            // The batch's reply senders were dropped by the unwind: their handlers answer 500.
            tracing::error!(panic = %msg, "inference batch panicked");
        }
    }
}

fn run_batch(shared: &Shared, batch: Batch) {
    let Batch { model: source, items } = batch;
    let model = match shared.cache.get_or_load(&source, || {
        model::load(
            &source.id,
            &source.path,
            source.spec.clone(),
            source.spec_json.to_string(),
            &shared.config.warm_rows,
        )
    }) {
        Ok((m, event)) => {
            shared.metrics.inc("modelpress_model_cache_total", vec![("event", event.as_str().into())], 1.0);
            if let cache::CacheEvent::Load { evicted } = event {
                if evicted > 0 {
                    shared.metrics.inc("modelpress_model_cache_total", vec![("event", "evict".into())], evicted as f64);
                }
                tracing::info!(model_id = %source.id, bytes = m.bytes, "model loaded for inference");
            }
            m
        }
        Err(e) => {
            let err = match e {
                cache::CacheError::Load(LoadError::Missing) | cache::CacheError::Deleted => {
                    InferError::ModelGone(source.id.clone())
                }
                cache::CacheError::Load(LoadError::Unusable(reason)) => {
                    InferError::Unusable { id: source.id.clone(), reason }
                }
                cache::CacheError::Load(LoadError::Internal(m)) => InferError::Internal(m),
                cache::CacheError::TooLarge { needs, budget } => {
                    InferError::TooLarge { id: source.id.clone(), needs, budget }
                }
            };
            for p in items {
                let _ = p.reply.send(Err(err.clone()));
            }
            return;
        }
    };
    // Loading may have taken a while: drop requests whose client left meanwhile.
    let before = items.len();
    let items: Vec<Pending> = items.into_iter().filter(|p| !p.reply.is_closed()).collect();
    if items.len() < before {
        shared.metrics.inc(
            "modelpress_rejections_total",
            vec![("reason", "client_gone".into())],
            (before - items.len()) as f64,
        );
    }
    if items.is_empty() {
        return;
    }
    let start = Instant::now();
    for p in &items {
        shared.metrics.observe("modelpress_inference_queue_seconds", vec![], (start - p.enqueued).as_secs_f64());
    }
    let rows: usize = items.iter().map(|p| p.req.rows).sum();
    let result = forward(&model, &items, rows);
    let compute = start.elapsed().as_secs_f64();
    shared.batches.fetch_add(1, Ordering::Relaxed);
    shared.metrics.observe("modelpress_inference_compute_seconds", vec![], compute);
    shared.metrics.observe("modelpress_inference_batch_size", vec![], rows as f64);
    match result {
        Ok(out) => {
            let classes = model.net.classes();
            let kind = model.net.output_kind();
            let mut offset = 0;
            for p in items {
                let n = p.req.rows;
                let width = p.req.output.width(classes);
                let mut values = Vec::with_capacity(n * width);
                let mut indices = Vec::new();
                for r in 0..n {
                    let row = &out[(offset + r) * classes..(offset + r + 1) * classes];
                    model::postprocess(row, kind, p.req.output, &mut values, &mut indices);
                }
                offset += n;
                let _ = p.reply.send(Ok(Prediction { rows: n, width, values, indices, batch_rows: rows }));
            }
        }
        Err(e) => {
            for p in items {
                let _ = p.reply.send(Err(e.clone()));
            }
        }
    }
}

/// One forward pass over the concatenated rows; returns `rows × classes` values.
fn forward(model: &ServedModel, items: &[Pending], rows: usize) -> Result<Vec<f32>, InferError> {
    let internal = |e: &dyn std::fmt::Display| InferError::Internal(e.to_string());
    let mut data = Vec::with_capacity(rows * model.input_numel);
    for p in items {
        if p.req.inputs.len() != p.req.rows * model.input_numel {
            return Err(InferError::Internal(format!(
                "request holds {} values for {} rows of {}",
                p.req.inputs.len(),
                p.req.rows,
                model.input_numel
            )));
        }
        data.extend_from_slice(&p.req.inputs);
    }
    let mut shape = vec![rows];
    shape.extend_from_slice(&model.spec.input.shape);
    let x = Tensor::from_vec(data, shape, &Device::Cpu).map_err(|e| internal(&e))?;
    let y = model.network_for(rows).forward(&x).map_err(|e| internal(&e))?;
    y.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(|e| internal(&e))
}

#[cfg(test)]
mod tests;
