//! The delivery task: one tokio task that claims due deliveries and sends each on its own
//! short-lived task (at most `--webhook-concurrency` at once). Everything here is network I/O
//! with a timeout; nothing blocks a job, which committed its terminal state before any of this.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tokio::sync::{Notify, Semaphore};

use super::policy::{AllowList, PolicyError};
use super::{event, sign, WebhookConfig};
use crate::db::webhooks::{self as wdb, Attempt, AttemptOutcome, DeliveryRow};
use crate::db::{self, Db};
use crate::jobs::JobsHandle;
use crate::telemetry::Metrics;

/// Longest retry delay.
const MAX_DELAY: Duration = Duration::from_secs(3600);
/// Longest sleep between looks at the queue (deliveries from a previous run, expired leases).
const POLL: Duration = Duration::from_secs(5);

struct Inner {
    db: Db,
    allow: AllowList,
    config: WebhookConfig,
    /// Woken by terminal job updates (from the jobs event bus) and by finished attempts.
    wake: Notify,
    /// One permit per attempt in flight.
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

/// Cloneable front to the sender task.
#[derive(Clone)]
pub struct WebhookSender {
    inner: Arc<Inner>,
}

/// Why an attempt did not get a 2xx.
enum SendError {
    /// Policy refusal that will not change by waiting (address not allowed, bad scheme).
    Refused(String),
    /// Network error, timeout, unresolvable name: retried.
    Transient(String),
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl WebhookSender {
    /// Starts the sender and the task that wakes it when a job ends. Runs until `jobs` begins
    /// shutting down; attempts cut short by the exit are retried at the next start.
    pub fn start(db: Db, config: &WebhookConfig, jobs: &JobsHandle, metrics: Arc<Metrics>) -> Result<Self, String> {
        let allow = AllowList::parse(&config.webhook_allow)?;
        let inner = Arc::new(Inner {
            db,
            allow,
            config: config.clone(),
            wake: Notify::new(),
            slots: Arc::new(Semaphore::new(config.webhook_concurrency.max(1))),
            metrics,
        });
        let sender = WebhookSender { inner };
        let mut updates = jobs.subscribe();
        let mut stop = jobs.stopping();
        let waker = sender.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    u = updates.recv() => match u {
                        Ok(u) if u.terminal => waker.inner.wake.notify_one(),
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => waker.inner.wake.notify_one(),
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    },
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        });
        tokio::spawn(sender.clone().run(jobs.stopping()));
        Ok(sender)
    }

    /// The allow-list (the API checks submitted URLs against it).
    pub fn allow_list(&self) -> &AllowList {
        &self.inner.allow
    }

    async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        match wdb::release_leases(&self.inner.db, now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(deliveries = n, "webhook attempts interrupted by the previous run are due again"),
            Err(e) => tracing::warn!(error = %e, "releasing webhook leases failed"),
        }
        let lease = Duration::from_secs(self.inner.config.webhook_timeout_secs.max(1) + 30);
        loop {
            if *stop.borrow() {
                break;
            }
            let free = self.inner.slots.available_permits();
            if free > 0 {
                let now = now_ms();
                match wdb::claim_due(&self.inner.db, now, now + lease.as_millis() as i64, free as i64).await {
                    Ok(claimed) => {
                        let full = claimed.len() == free;
                        for d in claimed {
                            let Ok(permit) = self.inner.slots.clone().acquire_owned().await else { return };
                            let me = self.clone();
                            tokio::spawn(async move {
                                me.attempt(d).await;
                                drop(permit);
                                me.inner.wake.notify_one();
                            });
                        }
                        if full {
                            continue;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "claiming webhook deliveries failed"),
                }
            }
            let pause = match wdb::next_due_ms(&self.inner.db).await {
                Ok(Some(at)) => Duration::from_millis((at - now_ms()).clamp(5, POLL.as_millis() as i64) as u64),
                _ => POLL,
            };
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
        }
        tracing::info!("webhook sender stopped");
    }

    /// One attempt of one delivery, recorded whatever happens.
    #[tracing::instrument(skip_all, fields(delivery_id = %d.id, job_id = %d.job_id, attempt = d.attempts + 1))]
    async fn attempt(&self, d: DeliveryRow) {
        let started = Instant::now();
        let n = d.attempts + 1;
        let result = self.send(&d).await;
        let duration_ms = started.elapsed().as_millis() as i64;
        let (code, error, outcome) = match result {
            Ok(code) if (200..300).contains(&code) => (Some(code), None, AttemptOutcome::Delivered),
            Ok(code) => (Some(code), Some(format!("the receiver answered HTTP {code}")), self.retry_or_give_up(&d, n)),
            Err(SendError::Transient(e)) => (None, Some(e), self.retry_or_give_up(&d, n)),
            Err(SendError::Refused(e)) => (None, Some(e), AttemptOutcome::GiveUp),
        };
        let label = match outcome {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Retry(_) => "retry",
            AttemptOutcome::GiveUp => "failed",
        };
        match &error {
            None => tracing::info!(url = %d.url, "webhook delivered"),
            Some(e) => tracing::warn!(url = %d.url, error = %e, outcome = label, "webhook attempt failed"),
        }
        self.inner.metrics.inc("modelpress_webhook_attempts_total", vec![("outcome", label.to_string())], 1.0);
        let a = Attempt { attempt: n, status_code: code, error: error.as_deref(), duration_ms };
        if let Err(e) = wdb::record_attempt(&self.inner.db, &d.id, &a, outcome).await {
            // The lease expires and the attempt is repeated: at-least-once delivery.
            tracing::error!(error = %e, "recording a webhook attempt failed");
        }
    }

    /// Exponential backoff with jitter, until the delivery is `--webhook-max-age-secs` old.
    fn retry_or_give_up(&self, d: &DeliveryRow, attempt: i64) -> AttemptOutcome {
        let c = &self.inner.config;
        let next = now_ms() + backoff_ms(c.webhook_retry_base_ms, attempt, rand::rng().random::<f64>());
        if next > d.created_ms + (c.webhook_max_age_secs as i64) * 1000 {
            AttemptOutcome::GiveUp
        } else {
            AttemptOutcome::Retry(next)
        }
    }

    async fn send(&self, d: &DeliveryRow) -> Result<u16, SendError> {
        let allow = &self.inner.allow;
        let policy = |e: PolicyError| match e {
            PolicyError::Unresolvable(_) => SendError::Transient(e.to_string()),
            _ => SendError::Refused(e.to_string()),
        };
        // Checked again: the allow-list may have shrunk since the webhook was registered.
        let url = allow.check_url(&d.url).map_err(policy)?;
        let addr = allow.resolve(&url).await.map_err(policy)?;
        let job = db::get_job(&self.inner.db, &d.job_id)
            .await
            .map_err(|e| SendError::Transient(format!("reading the job: {e}")))?
            .ok_or_else(|| SendError::Refused("the job no longer exists".into()))?;
        let body = serde_json::to_vec(&event::build(d, &job, self.inner.config.public_url.as_deref()))
            .map_err(|e| SendError::Refused(format!("encoding the event: {e}")))?;
        let t = now_ms() / 1000;
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(Duration::from_secs(self.inner.config.webhook_timeout_secs.max(1)))
            .user_agent(concat!("modelpress/", env!("CARGO_PKG_VERSION")));
        if let Some(url::Host::Domain(host)) = url.host() {
            // Connect to exactly the address that was checked.
            builder = builder.resolve(host, addr);
        }
        let client = builder.build().map_err(|e| SendError::Transient(format!("HTTP client: {e}")))?;
        let resp = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(sign::SIGNATURE_HEADER, sign::header_value(&d.secret, t, &body))
            .header("Modelpress-Event", &d.event)
            .header("Modelpress-Delivery", &d.id)
            .body(body)
            .send()
            .await
            .map_err(|e| SendError::Transient(describe(&e)))?;
        Ok(resp.status().as_u16())
    }
}

/// Delay before attempt `attempt + 1`: `base · 2^(attempt-1)`, capped at an hour, times a
/// jitter factor in [0.5, 1) from `unit` ∈ [0, 1) so retries of many deliveries spread out.
pub fn backoff_ms(base_ms: u64, attempt: i64, unit: f64) -> i64 {
    let exp = (attempt - 1).clamp(0, 30) as u32;
    let raw = (base_ms as u128).saturating_mul(1u128 << exp).min(MAX_DELAY.as_millis()) as f64;
    (raw * (0.5 + 0.5 * unit.clamp(0.0, 1.0))) as i64
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "could not connect".into()
    } else {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(c) = src {
            s.push_str(": ");
            s.push_str(&c.to_string());
            src = c.source();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        assert_eq!(backoff_ms(1000, 1, 0.0), 500);
        assert_eq!(backoff_ms(1000, 1, 1.0), 1000);
        assert_eq!(backoff_ms(1000, 3, 1.0), 4000);
        assert!((2000..4000).contains(&backoff_ms(1000, 3, 0.3)));
        assert_eq!(backoff_ms(10_000, 40, 1.0), 3_600_000);
        // A day of retries at the defaults is a few dozen attempts, not thousands.
        let mut t = 0i64;
        let mut n = 0;
        while t < 86_400_000 {
            n += 1;
            t += backoff_ms(10_000, n, 1.0);
        }
        assert!((20..40).contains(&n), "{n}");
    }
}
