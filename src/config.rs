//! Configuration: every field is a `--flag` and a `MODELPRESS_*` environment variable.
//! The doc comment of each field is its `--help` text and its row in the README table.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Command line: `modelpress [serve] [OPTIONS]` (`serve` is the default) or a client command
/// such as `modelpress quantize MODEL --scheme int8 --wait`.
#[derive(Debug, Parser)]
#[command(name = "modelpress", version, about = "Self-hostable model-compression service")]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service (the default).
    Serve(Config),
    /// Client commands (see `cli`).
    #[command(flatten)]
    Client(crate::cli::ClientCommand),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Service configuration.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    #[arg(long, env = "MODELPRESS_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// Directory holding `modelpress.db` and the artifact files; created if missing.
    #[arg(long, env = "MODELPRESS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// API keys, the open-mode bind policy and CORS (see `auth`).
    #[command(flatten)]
    pub auth: crate::auth::AuthConfig,

    /// Rate limits, quotas, timeouts and body limits (see `limits`).
    #[command(flatten)]
    pub limits: crate::limits::LimitsConfig,

    /// Webhooks: allowed hosts, retries, timeouts (see `webhooks`).
    #[command(flatten)]
    pub webhooks: crate::webhooks::WebhookConfig,

    /// Number of job worker threads (jobs that run at the same time).
    #[arg(long, env = "MODELPRESS_WORKERS", default_value_t = 1)]
    pub workers: usize,

    /// Compute threads each job may use (candle / rayon pool per worker). Keep
    /// workers × job-threads + inference threads ≈ cores: candle's spinning pools degrade
    /// badly when oversubscribed.
    #[arg(long, env = "MODELPRESS_JOB_THREADS", default_value_t = 1)]
    pub job_threads: usize,

    /// Async runtime threads serving HTTP (uploads, downloads, SSE).
    #[arg(long, env = "MODELPRESS_HTTP_THREADS", default_value_t = 2)]
    pub http_threads: usize,

    /// Largest accepted upload (model or dataset) in bytes; larger bodies get 413.
    #[arg(long, env = "MODELPRESS_MAX_UPLOAD_BYTES", default_value_t = 4 * 1024 * 1024 * 1024)]
    pub max_upload_bytes: u64,

    /// Most tensors a safetensors upload may hold.
    #[arg(long, env = "MODELPRESS_MAX_TENSORS", default_value_t = 65_536)]
    pub max_tensors: usize,

    /// Largest safetensors JSON header in bytes.
    #[arg(long, env = "MODELPRESS_MAX_HEADER_BYTES", default_value_t = 100 * 1024 * 1024)]
    pub max_header_bytes: u64,

    /// Largest architecture spec (JSON) in bytes.
    #[arg(long, env = "MODELPRESS_MAX_SPEC_BYTES", default_value_t = 1024 * 1024)]
    pub max_spec_bytes: usize,

    /// Most jobs waiting in the queue; further submissions get 429 with `Retry-After`.
    #[arg(long, env = "MODELPRESS_MAX_QUEUED_JOBS", default_value_t = 100)]
    pub max_queued_jobs: usize,

    /// Seconds running jobs get to finish at shutdown before they are stopped and requeued.
    #[arg(long, env = "MODELPRESS_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,

    /// Seconds between heartbeats written for running jobs.
    #[arg(long, env = "MODELPRESS_HEARTBEAT_SECS", default_value_t = 5)]
    pub heartbeat_secs: u64,

    /// A job interrupted this many times (crash, kill) fails instead of being requeued.
    #[arg(long, env = "MODELPRESS_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: i64,

    /// Log format.
    #[arg(long, env = "MODELPRESS_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Dedicated inference threads (each computes on one core; separate from the job workers).
    #[arg(long, env = "MODELPRESS_INFERENCE_THREADS", default_value_t = 1)]
    pub inference_threads: usize,

    /// Threads one large own-kernel call (int8 GEMM) may use, the calling inference thread
    /// included; 0 = all cores. Helpers only take chunks the caller has not reached, so a core
    /// busy with a job slows a product to single-thread speed, no further.
    #[arg(long, env = "MODELPRESS_KERNEL_THREADS", default_value_t = 0)]
    pub kernel_threads: usize,

    /// Memory budget of the inference model cache in bytes (estimated resident weights); the
    /// least recently used models are unloaded beyond it.
    #[arg(long, env = "MODELPRESS_INFERENCE_CACHE_BYTES", default_value_t = 2 * 1024 * 1024 * 1024)]
    pub inference_cache_bytes: u64,

    /// Most rows dynamic batching merges into one forward pass.
    #[arg(long, env = "MODELPRESS_MAX_BATCH", default_value_t = 64)]
    pub max_batch: usize,

    /// Longest (µs) a prediction waits for concurrent requests to join its batch; only models
    /// with concurrent traffic wait.
    #[arg(long, env = "MODELPRESS_MAX_WAIT_US", default_value_t = 500)]
    pub max_wait_us: u64,

    /// Most prediction requests waiting for an inference thread; beyond it 429 with `Retry-After`.
    #[arg(long, env = "MODELPRESS_MAX_INFERENCE_QUEUE", default_value_t = 256)]
    pub max_inference_queue: usize,

    /// Most rows (samples) in one prediction request; larger batches get 413.
    #[arg(long, env = "MODELPRESS_MAX_PREDICT_ROWS", default_value_t = 1024)]
    pub max_predict_rows: usize,

    /// Enable the `debug_sleep` job kind (test suites only: a slow job with check points).
    #[arg(long, env = "MODELPRESS_ENABLE_TEST_JOBS", default_value_t = false, hide = true)]
    pub enable_test_jobs: bool,
}

/// A configuration the service refuses to start with (public bind without keys, unreadable key
/// file, …). `main` prints it as one line and exits with status 2, like clap's usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Defaults for tests and embedding: everything as on the command line, with the given
    /// data directory and a free port on loopback.
    pub fn for_tests(data_dir: PathBuf) -> Config {
        let mut cli = Cli::parse_from(["modelpress", "--bind", "127.0.0.1:0"]);
        cli.serve.data_dir = data_dir;
        cli.serve
    }
}
