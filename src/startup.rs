//! `Application::build(config)`: data dir, database + migrations, start-up recovery, workers,
//! router, listener. `run_until_stopped` serves until SIGINT/SIGTERM (or a test's stop
//! signal), then shuts down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{self, AppState};
use crate::config::{Config, ConfigError};
use crate::db;
use crate::inference::{InferenceConfig, InferenceHandle};
use crate::jobs::{JobError, JobsHandle};
use crate::storage::{ArtifactKind, ArtifactStore};
use crate::telemetry::Metrics;

/// A built, bound, not yet serving application.
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    state: AppState,
    stop_tx: watch::Sender<bool>,
}

/// Stops an [`Application`] from another task (tests).
#[derive(Clone)]
pub struct StopHandle(watch::Sender<bool>);

impl StopHandle {
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }
}

impl Application {
    pub async fn build(mut config: Config) -> anyhow::Result<Application> {
        // Before anything else is created: load (or generate) the key file, then refuse to
        // expose the service without keys. Both are `ConfigError`s (exit status 2).
        if let Some(path) = config.auth.load_key_file().map_err(ConfigError)? {
            tracing::warn!(path = %path.display(), "generated a new admin key into this file (read it from there)");
        }
        config.auth.check_bind(config.bind).map_err(ConfigError)?;
        let store = ArtifactStore::open(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        let db = db::connect(&config.data_dir).await.context("opening the database")?;

        // Start-up recovery: interrupted jobs back to the queue (or failed after too many
        // attempts), then orphan files from interrupted writes removed.
        let failed = serde_json::to_string(
            &JobError::input(format!(
                "the job was interrupted {} times (crash or kill) and was not retried again",
                config.max_attempts
            ))
            .problem(),
        )?;
        let (requeued, gave_up) = db::recover_interrupted(&db, config.max_attempts, &failed).await?;
        if requeued + gave_up > 0 {
            tracing::warn!(requeued, failed = gave_up, "recovered jobs interrupted by a previous run");
        }
        let models = db::all_ids(&db, "models").await?;
        let datasets = db::all_ids(&db, "datasets").await?;
        let swept = store.sweep(ArtifactKind::Model, &models)? + store.sweep(ArtifactKind::Dataset, &datasets)?;
        if swept > 0 {
            tracing::warn!(files = swept, "removed partial or orphaned files");
        }

        let metrics = Arc::new(Metrics::default());
        let jobs = JobsHandle::start(db.clone(), store.clone(), &config, metrics.clone())?;
        let webhooks = crate::webhooks::WebhookSender::start(db.clone(), &config.webhooks, &jobs, metrics.clone())
            .map_err(anyhow::Error::msg)?;
        crate::kernels::set_threads(config.kernel_threads);
        let inference = InferenceHandle::start(InferenceConfig::from_config(&config), metrics.clone())
            .context("starting the inference threads")?;
        let listener = TcpListener::bind(config.bind).await.with_context(|| format!("binding {}", config.bind))?;
        let addr = listener.local_addr()?;
        let limits = Arc::new(crate::limits::Limits::new(&config.limits));
        let state = AppState { db, store, config: Arc::new(config), jobs, metrics, limits, inference, webhooks };
        let (stop_tx, _) = watch::channel(false);
        Ok(Application { listener, addr, state, stop_tx })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.stop_tx.clone())
    }

    /// Serves until a signal or [`StopHandle::stop`], then drains: stops claiming jobs, gives
    /// running jobs the grace period, requeues the rest.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Application { listener, addr, state, stop_tx } = self;
        tracing::info!("modelpress listening on http://{addr}");
        let grace = Duration::from_secs(state.config.shutdown_grace_secs);
        let jobs: JobsHandle = state.jobs.clone();
        let inference = state.inference.clone();
        let mut stop_rx = stop_tx.subscribe();
        let app = api::router(state);
        let jobs_for_signal = jobs.clone();
        let shutdown = async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = stop_rx.wait_for(|v| *v) => {}
            }
            tracing::info!("shutting down: no new jobs; waiting for running jobs");
            // Ends SSE streams so the server can drain.
            jobs_for_signal.shutdown(grace).await;
        };
        let served = axum::serve(listener, app).with_graceful_shutdown(shutdown).await.context("HTTP server");
        // No request is left to answer: stop the inference threads (a running batch finishes).
        if let Err(e) = tokio::task::spawn_blocking(move || inference.shutdown()).await {
            tracing::error!(error = %e, "stopping the inference threads failed");
        }
        served?;
        tracing::info!("stopped");
        Ok(())
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
