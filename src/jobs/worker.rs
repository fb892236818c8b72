//! Worker threads: named OS threads (`modelpress-worker-N`) that run one job at a time.
//!
//! Each worker owns a rayon pool of `job_threads` threads for the intra-op parallelism of its
//! job (candle and our kernels use the current rayon pool), so workers × job threads stays
//! within the cores. A panic inside a job is caught here and fails that job only.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use super::{Finished, JobCommand, JobError, WorkerEvent};

/// Starts `count` worker threads taking commands from `rx`.
pub fn spawn_workers(
    count: usize,
    job_threads: usize,
    rx: Receiver<JobCommand>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let rx = Arc::new(Mutex::new(rx));
    (0..count)
        .map(|i| {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("modelpress-worker-{i}"))
                .spawn(move || worker_loop(i, job_threads, rx))
        })
        .collect()
}

fn worker_loop(index: usize, job_threads: usize, rx: Arc<Mutex<Receiver<JobCommand>>>) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(job_threads.max(1))
        .thread_name(move |t| format!("modelpress-worker-{index}-compute-{t}"))
        .build();
    let pool = match pool {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the worker's compute pool");
            return;
        }
    };
    loop {
        let cmd = {
            let guard = match rx.lock() {
                Ok(g) => g,
                // Another worker panicked while holding the lock: the receiver is still sound.
                Err(poisoned) => poisoned.into_inner(),
            };
            guard.recv()
        };
        let Ok(cmd) = cmd else {
            return; // dispatcher gone: shutting down
        };
        let JobCommand { ctx, permit, claimed_at } = cmd;
        let span = tracing::info_span!("job", job_id = %ctx.id, kind = ctx.params.kind().as_str());
        let result = span.in_scope(|| {
            tracing::info!("job started");
            crate::fault::point("reading");
            let r = pool.install(|| std::panic::catch_unwind(AssertUnwindSafe(|| ctx.params.run(&ctx))));
            match r {
                Ok(r) => r,
                Err(panic) => {
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    Err(JobError::Internal(format!("job panicked: {msg}")))
                }
            }
        });
        let finished = Finished {
            job_id: ctx.id.clone(),
            kind: ctx.params.kind(),
            parent_model_id: ctx.model.as_ref().map(|m| m.id.clone()),
            tenant: ctx.tenant.clone(),
            result,
            permit,
            duration: claimed_at.elapsed(),
        };
        // The outcome must reach the reporter; if it is gone the service is stopping and the
        // job will be requeued at the next start.
        if ctx.events.blocking_send(WorkerEvent::Finished(Box::new(finished))).is_err() {
            span.in_scope(|| tracing::warn!("reporter gone; job outcome dropped (requeued at next start)"));
        }
    }
}
