//! The command-line client (`modelpress upload|quantize|prune|distill|compress|evaluate|jobs|
//! download|predict`), for people and for pipelines. It speaks the public HTTP API only, so it
//! works against any server (`--server`, `MODELPRESS_URL`; key from `MODELPRESS_API_KEY`).
//!
//! - Output: the one id a script needs goes to stdout (the uploaded model, the job's output
//!   model, …); progress and summaries go to stderr. `--json` prints JSON documents on stdout.
//! - Progress: following a job (`--wait`) reads its SSE stream; on a terminal stderr it draws a
//!   progress bar (`indicatif`), otherwise it prints plain lines.
//! - Exit codes ([`exit`]): 0 success, 1 error (HTTP, I/O, refused request), 2 usage, 3 the job
//!   failed or was cancelled, 4 a `--require` condition on the report did not hold.
//! - `--local DIR` (offline): the same binary starts the whole service in-process on a loopback
//!   port 0 with data directory DIR, runs the command against it, waits for the job and stops
//!   the service. No separate server, same engine and same data layout as `serve --data-dir DIR`.
//!
//! Threads: `main` builds a small tokio runtime for the client; in `--local` mode that runtime
//! also hosts the in-process service, whose job workers are their own OS threads as in `serve`.

pub mod client;
pub mod follow;

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Map, Value};

use crate::auth::Secret;
use crate::report::Requirement;
use client::{CliError, Client};

/// Exit codes.
pub mod exit {
    pub const OK: i32 = 0;
    pub const ERROR: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const JOB_FAILED: i32 = 3;
    pub const REQUIREMENT_FAILED: i32 = 4;
}

/// How to show a followed job's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, plain lines otherwise.
    Auto,
    Bar,
    Plain,
    None,
}

/// Options of every client command.
#[derive(Debug, Clone, Args)]
pub struct ClientOpts {
    /// Server base URL.
    #[arg(long, env = "MODELPRESS_URL", default_value = "http://127.0.0.1:8080")]
    pub server: String,

    /// API key (`Authorization: Bearer`), when the server requires keys.
    #[arg(long, env = "MODELPRESS_API_KEY", hide_env_values = true)]
    pub api_key: Option<Secret>,

    /// Print JSON documents on stdout instead of ids and text.
    #[arg(long)]
    pub json: bool,

    /// Offline mode: run the service in this process with data directory DIR (created if
    /// missing) instead of talking to `--server`. Jobs are always waited for.
    #[arg(long, value_name = "DIR")]
    pub local: Option<PathBuf>,

    /// Progress display while waiting for a job.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
}

/// Client subcommands (next to `serve`).
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Upload a model (safetensors, optional architecture spec) or, with --dataset, a dataset.
    /// Prints the new id.
    Upload(UploadArgs),
    /// Quantize a model (e.g. `--scheme int8`).
    Quantize(QuantizeArgs),
    /// Prune a model (e.g. `--sparsity 0.5`, or `--params '{"pattern":"2:4"}'`).
    Prune(PruneArgs),
    /// Distill a model into a smaller student (`--params '{"dataset_id":…,"student":…}'`).
    Distill(JobArgs),
    /// Auto-compress a model within a budget (`kind: "compress"`). The server must support this
    /// kind (issue 20); older servers answer 422 "unknown kind".
    Compress(JobArgs),
    /// Evaluate a model on a labelled dataset (`--dataset ID`).
    Evaluate(EvaluateArgs),
    /// List jobs, or show / follow / cancel / gate one.
    Jobs(JobsArgs),
    /// Download a model (`--format native|safetensors-f32|gguf`).
    Download(DownloadArgs),
    /// Run a prediction (`--input '[[…]]'` or `--input @file.json`); prints the JSON answer.
    Predict(PredictArgs),
}

#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The file to upload.
    pub file: PathBuf,
    /// Architecture spec (JSON file) to store with the model.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Name (default: the server's default).
    #[arg(long)]
    pub name: Option<String>,
    /// Upload a dataset instead of a model.
    #[arg(long)]
    pub dataset: bool,
    /// Dataset format: `safetensors` (default) or `csv`.
    #[arg(long, requires = "dataset")]
    pub format: Option<String>,
    /// CSV dataset: the label column.
    #[arg(long, requires = "dataset")]
    pub label: Option<String>,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// What every job command takes.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// The model id.
    pub model: String,
    /// Kind parameters as a JSON object (merged under the --param values).
    #[arg(long)]
    pub params: Option<String>,
    /// One parameter, `KEY=VALUE` (VALUE read as JSON when it parses, else as a string); repeatable.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub param: Vec<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Also POST the job's end event to this URL (signed; see --webhook-secret).
    #[arg(long)]
    pub webhook: Option<String>,
    /// Signing secret of --webhook (default: generated by the server and printed once).
    #[arg(long, env = "MODELPRESS_WEBHOOK_SECRET", hide_env_values = true, requires = "webhook")]
    pub webhook_secret: Option<Secret>,
    /// `Idempotency-Key` of the submission (a retried pipeline step gets the same job).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// Waiting and gating.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Wait until the job ends (exit 3 if it fails or is cancelled).
    #[arg(long)]
    pub wait: bool,
    /// A condition on the report's headline figures, e.g. `size_ratio<=0.3` or
    /// `accuracy_drop<=0.005` (keys: size_ratio, accuracy, accuracy_before, accuracy_drop,
    /// sparsity, speedup, bits_per_weight, mean_loss, duration_s); implies --wait; exit 4 when
    /// one fails or the report lacks the figure. Repeatable.
    #[arg(long, value_name = "CONDITION")]
    pub require: Vec<Requirement>,
    /// Longest wait in seconds (exit 1 after it).
    #[arg(long, default_value_t = 86_400)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// Scheme: int8, int4, f16, bf16, q8_0, q4_0, q4_k, … (see the README).
    #[arg(long)]
    pub scheme: Option<String>,
    /// Dataset to measure the accuracy drop on (sets `eval_dataset_id`).
    #[arg(long)]
    pub eval_dataset: Option<String>,
    #[command(flatten)]
    pub job: JobArgs,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Target sparsity in [0, 1).
    #[arg(long)]
    pub sparsity: Option<f64>,
    /// Dataset to measure accuracy before/after on (sets `eval_dataset_id`).
    #[arg(long)]
    pub eval_dataset: Option<String>,
    #[command(flatten)]
    pub job: JobArgs,
}

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// The labelled dataset id.
    #[arg(long)]
    pub dataset: Option<String>,
    #[command(flatten)]
    pub job: JobArgs,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// A job id: show it (and with --wait follow it, with --require gate it).
    pub id: Option<String>,
    /// Cancel the job.
    #[arg(long, requires = "id")]
    pub cancel: bool,
    /// List only jobs with this status.
    #[arg(long)]
    pub status: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// The model id.
    pub model: String,
    /// Output file (default `<model id>.<extension>`); written to a temp name, then renamed.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// `native` (stored file), `safetensors-f32` or `gguf`.
    #[arg(long)]
    pub format: Option<String>,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// The model id.
    pub model: String,
    /// Inputs as JSON (`[[…], …]`) or `@file.json`.
    #[arg(long)]
    pub input: String,
    /// `logits`, `probabilities` or `top_k`.
    #[arg(long)]
    pub output: Option<String>,
    /// k of `top_k`.
    #[arg(long)]
    pub k: Option<usize>,
    #[command(flatten)]
    pub client: ClientOpts,
}

impl ClientCommand {
    fn opts(&self) -> &ClientOpts {
        match self {
            ClientCommand::Upload(a) => &a.client,
            ClientCommand::Quantize(a) => &a.job.client,
            ClientCommand::Prune(a) => &a.job.client,
            ClientCommand::Distill(a) | ClientCommand::Compress(a) => &a.client,
            ClientCommand::Evaluate(a) => &a.job.client,
            ClientCommand::Jobs(a) => &a.client,
            ClientCommand::Download(a) => &a.client,
            ClientCommand::Predict(a) => &a.client,
        }
    }
}

/// Runs a client command; returns the process exit code.
pub fn run(cmd: ClientCommand) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("modelpress-cli")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::ERROR;
        }
    };
    runtime.block_on(async move {
        let opts = cmd.opts().clone();
        let local = match &opts.local {
            Some(dir) => match local::start(dir).await {
                Ok(l) => Some(l),
                Err(e) => {
                    eprintln!("error: starting the local service in {}: {e:#}", dir.display());
                    return exit::ERROR;
                }
            },
            None => None,
        };
        let server = local.as_ref().map(|l| l.base.clone()).unwrap_or_else(|| opts.server.clone());
        let client = Client::new(&server, opts.api_key.as_ref());
        let code = match dispatch(&client, &opts, cmd).await {
            Ok(code) => code,
            Err(e @ CliError::Usage(_)) => {
                eprintln!("error: {e}");
                exit::USAGE
            }
            Err(e) => {
                eprintln!("error: {e}");
                exit::ERROR
            }
        };
        if let Some(l) = local {
            l.stop().await;
        }
        code
    })
}

async fn dispatch(client: &Client, opts: &ClientOpts, cmd: ClientCommand) -> Result<i32, CliError> {
    match cmd {
        ClientCommand::Upload(a) => upload(client, opts, &a).await,
        ClientCommand::Quantize(a) => {
            let mut extra = Map::new();
            if let Some(s) = a.scheme {
                extra.insert("scheme".into(), json!(s));
            }
            if let Some(d) = a.eval_dataset {
                extra.insert("eval_dataset_id".into(), json!(d));
            }
            submit(client, opts, "quantize", &a.job, extra).await
        }
        ClientCommand::Prune(a) => {
            let mut extra = Map::new();
            if let Some(s) = a.sparsity {
                extra.insert("sparsity".into(), json!(s));
            }
            if let Some(d) = a.eval_dataset {
                extra.insert("eval_dataset_id".into(), json!(d));
            }
            submit(client, opts, "prune", &a.job, extra).await
        }
        ClientCommand::Distill(a) => submit(client, opts, "distill", &a, Map::new()).await,
        ClientCommand::Compress(a) => submit(client, opts, "compress", &a, Map::new()).await,
        ClientCommand::Evaluate(a) => {
            let mut extra = Map::new();
            if let Some(d) = a.dataset {
                extra.insert("dataset_id".into(), json!(d));
            }
            submit(client, opts, "evaluate", &a.job, extra).await
        }
        ClientCommand::Jobs(a) => jobs(client, opts, &a).await,
        ClientCommand::Download(a) => {
            let out = client.download(&a.model, a.format.as_deref(), a.output.as_deref()).await?;
            if opts.json {
                println!("{}", json!({"model_id": a.model, "path": out.path, "bytes": out.bytes}));
            } else {
                eprintln!("wrote {} ({} bytes)", out.path.display(), out.bytes);
                println!("{}", out.path.display());
            }
            Ok(exit::OK)
        }
        ClientCommand::Predict(a) => {
            let raw = match a.input.strip_prefix('@') {
                Some(path) => std::fs::read_to_string(path).map_err(|e| CliError::Io(format!("{path}: {e}")))?,
                None => a.input.clone(),
            };
            let inputs: Value =
                serde_json::from_str(&raw).map_err(|e| CliError::Usage(format!("--input is not JSON: {e}")))?;
            let mut body = json!({"inputs": inputs});
            if let Some(o) = a.output {
                body["output"] = json!(o);
            }
            if let Some(k) = a.k {
                body["k"] = json!(k);
            }
            let r = client.post_json(&format!("/v1/models/{}/predict", a.model), &body, None).await?;
            println!("{}", r.body);
            Ok(exit::OK)
        }
    }
}

async fn upload(client: &Client, opts: &ClientOpts, a: &UploadArgs) -> Result<i32, CliError> {
    let v = if a.dataset {
        let mut fields = Vec::new();
        if let Some(n) = &a.name {
            fields.push(("name", n.clone()));
        }
        if let Some(f) = &a.format {
            fields.push(("format", f.clone()));
        }
        if let Some(l) = &a.label {
            fields.push(("label", l.clone()));
        }
        client.upload("/v1/datasets", "data", &a.file, fields).await?
    } else {
        let mut fields = Vec::new();
        if let Some(n) = &a.name {
            fields.push(("name", n.clone()));
        }
        if let Some(s) = &a.spec {
            let spec = std::fs::read_to_string(s).map_err(|e| CliError::Io(format!("{}: {e}", s.display())))?;
            fields.push(("spec", spec));
        }
        client.upload("/v1/models", "weights", &a.file, fields).await?
    };
    if opts.json {
        println!("{v}");
    } else {
        let id = v["id"].as_str().unwrap_or_default();
        eprintln!(
            "uploaded {} as {} '{}'",
            a.file.display(),
            if a.dataset { "dataset" } else { "model" },
            v["name"].as_str().unwrap_or_default()
        );
        println!("{id}");
    }
    Ok(exit::OK)
}

/// Builds the params object: `--params` JSON, then `--param KEY=VALUE`, then the typed flags.
fn build_params(a: &JobArgs, extra: Map<String, Value>) -> Result<Value, CliError> {
    let mut params = match &a.params {
        Some(p) => match serde_json::from_str::<Value>(p) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(CliError::Usage("--params must be a JSON object".into())),
            Err(e) => return Err(CliError::Usage(format!("--params is not JSON: {e}"))),
        },
        None => Map::new(),
    };
    for kv in &a.param {
        let (k, v) = kv.split_once('=').ok_or_else(|| CliError::Usage(format!("--param '{kv}' is not KEY=VALUE")))?;
        let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        params.insert(k.trim().to_string(), v);
    }
    params.extend(extra);
    Ok(Value::Object(params))
}

async fn submit(
    client: &Client,
    opts: &ClientOpts,
    kind: &str,
    a: &JobArgs,
    extra: Map<String, Value>,
) -> Result<i32, CliError> {
    let params = build_params(a, extra)?;
    let mut body = json!({"kind": kind, "model_id": a.model, "params": params});
    if let Some(url) = &a.webhook {
        body["webhook"] = json!({"url": url});
        if let Some(s) = &a.webhook_secret {
            body["webhook"]["secret"] = json!(s.expose());
        }
    }
    let r = client.post_json("/v1/jobs", &body, a.idempotency_key.as_deref()).await?;
    let job: Value = serde_json::from_str(&r.body).map_err(|e| CliError::Protocol(format!("job JSON: {e}")))?;
    let id = job["id"].as_str().unwrap_or_default().to_string();
    if let Some(secret) = r.webhook_secret {
        eprintln!("webhook signing secret (shown once): {secret}");
    }
    let wait = a.wait.wait || !a.wait.require.is_empty() || opts.local.is_some();
    if !wait {
        if opts.json {
            println!("{job}");
        } else {
            eprintln!("job {id} queued ({kind})");
            println!("{id}");
        }
        return Ok(exit::OK);
    }
    let done = follow::follow(client, &id, opts.progress, a.wait.timeout).await?;
    Ok(conclude(opts, &done, &a.wait.require))
}

async fn jobs(client: &Client, opts: &ClientOpts, a: &JobsArgs) -> Result<i32, CliError> {
    let Some(id) = &a.id else {
        let path = match &a.status {
            Some(s) => format!("/v1/jobs?status={s}"),
            None => "/v1/jobs".to_string(),
        };
        let list = client.get_json(&path).await?;
        if opts.json {
            println!("{list}");
        } else {
            for j in list["items"].as_array().into_iter().flatten() {
                println!(
                    "{}  {:<10} {:<10} {:>5.1}%  {}",
                    j["id"].as_str().unwrap_or_default(),
                    j["kind"].as_str().unwrap_or_default(),
                    j["status"].as_str().unwrap_or_default(),
                    j["progress"].as_f64().unwrap_or(0.0) * 100.0,
                    j["created_at"].as_str().unwrap_or_default()
                );
            }
        }
        return Ok(exit::OK);
    };
    if a.cancel {
        client.post_json(&format!("/v1/jobs/{id}/cancel"), &json!({}), None).await?;
    }
    let job = if a.wait.wait || !a.wait.require.is_empty() {
        follow::follow(client, id, opts.progress, a.wait.timeout).await?
    } else {
        client.get_json(&format!("/v1/jobs/{id}")).await?
    };
    if !is_terminal(job["status"].as_str().unwrap_or_default()) {
        if opts.json {
            println!("{job}");
        } else {
            eprintln!("job {id}: {} {:.0}%", job["status"], job["progress"].as_f64().unwrap_or(0.0) * 100.0);
            println!("{id}");
        }
        return Ok(exit::OK);
    }
    Ok(conclude(opts, &job, &a.wait.require))
}

/// Prints the outcome of a finished job, checks the requirements, and picks the exit code.
fn conclude(opts: &ClientOpts, job: &Value, require: &[Requirement]) -> i32 {
    let id = job["id"].as_str().unwrap_or_default();
    let status = job["status"].as_str().unwrap_or_default();
    let kind = job["kind"].as_str().unwrap_or_default();
    let headline = match job.get("report") {
        Some(r) if !r.is_null() => crate::report::headline(kind, r),
        _ => Map::new(),
    };
    let checks: Vec<(String, Result<f64, String>)> = if status == "succeeded" {
        require.iter().map(|r| (r.to_string(), r.check(&headline))).collect()
    } else {
        vec![]
    };
    let gate_ok = checks.iter().all(|(_, r)| r.is_ok());
    let code = if status != "succeeded" {
        exit::JOB_FAILED
    } else if !gate_ok {
        exit::REQUIREMENT_FAILED
    } else {
        exit::OK
    };
    if opts.json {
        let reqs: Vec<Value> = checks
            .iter()
            .map(|(c, r)| match r {
                Ok(v) => json!({"condition": c, "ok": true, "actual": v}),
                Err(e) => json!({"condition": c, "ok": false, "message": e}),
            })
            .collect();
        println!("{}", json!({"job": job, "headline": headline, "requirements": reqs, "exit_code": code}));
    } else {
        match status {
            "succeeded" => eprintln!("job {id} succeeded ({kind})"),
            other => {
                let detail = job["error"]["detail"].as_str().unwrap_or("no detail");
                eprintln!("job {id} {other} ({kind}): {detail}");
            }
        }
        for (k, v) in &headline {
            eprintln!("  {k} = {v}");
        }
        for (c, r) in &checks {
            match r {
                Ok(v) => eprintln!("  require {c}: ok ({v})"),
                Err(e) => eprintln!("  require {e}"),
            }
        }
        if code == exit::REQUIREMENT_FAILED {
            eprintln!("gate failed: the report does not meet every --require");
        }
        // The id a pipeline continues with: the output model, else the job.
        println!("{}", job["output_model_id"].as_str().unwrap_or(id));
    }
    code
}

/// `--local`: the service in this process.
mod local {
    use std::path::Path;

    use crate::config::Config;
    use crate::startup::{Application, StopHandle};

    pub struct Local {
        pub base: String,
        stop: StopHandle,
        join: tokio::task::JoinHandle<anyhow::Result<()>>,
    }

    pub async fn start(dir: &Path) -> anyhow::Result<Local> {
        // Everything as `serve` would read it from the environment, on a free loopback port.
        let mut config = Config::for_tests(dir.to_path_buf());
        // Only this process can reach it (loopback, port 0): no keys, even if the environment
        // holds the server's admin key.
        config.auth.admin_key = None;
        let app = Application::build(config).await?;
        let base = format!("http://{}", app.addr());
        let stop = app.stop_handle();
        let join = tokio::spawn(app.run_until_stopped());
        Ok(Local { base, stop, join })
    }

    impl Local {
        pub async fn stop(self) {
            self.stop.stop();
            match self.join.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("warning: the local service stopped with an error: {e:#}"),
                Err(e) => eprintln!("warning: the local service task failed: {e}"),
            }
        }
    }
}

/// Whether a job status read from the server is final (unknown texts count as not final).
pub(crate) fn is_terminal(status: &str) -> bool {
    status.parse::<crate::jobs::JobStatus>().is_ok_and(|s| s.is_terminal())
}
