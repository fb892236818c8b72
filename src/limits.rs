//! Request limits that keep one client from taking the service: a token bucket per API key,
//! a cap on concurrent SSE streams, a timeout for non-streaming routes, and JSON body limits.
//! Per-tenant job quotas are enforced by [`crate::db::insert_job`] in the same statement as the
//! global queue bound.
//!
//! Everything here runs on the tokio runtime and only does O(1) work under a mutex.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use clap::Args;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{DomainError, ErrorCode};

/// Limit settings (flattened into [`crate::config::Config`]).
#[derive(Debug, Clone, Args)]
pub struct LimitsConfig {
    /// Sustained requests per second allowed per API key on `/v1` (token bucket; 0 = no limit).
    /// Beyond it 429 with `Retry-After`. Open (keyless) mode is not rate limited.
    #[arg(long, env = "MODELPRESS_RATE_LIMIT_RPS", default_value_t = 50.0)]
    pub rate_limit_rps: f64,

    /// Requests a key may send in a burst above the sustained rate (the bucket size).
    #[arg(long, env = "MODELPRESS_RATE_LIMIT_BURST", default_value_t = 100)]
    pub rate_limit_burst: u32,

    /// Most queued + running jobs per tenant key (0 = no limit); beyond it 429. The admin and
    /// open mode are bounded by --max-queued-jobs only.
    #[arg(long, env = "MODELPRESS_MAX_JOBS_PER_TENANT", default_value_t = 10)]
    pub max_jobs_per_tenant: usize,

    /// Seconds a non-streaming request may take before it is answered 503 (0 = no timeout).
    /// Uploads, downloads and SSE event streams are exempt.
    #[arg(long, env = "MODELPRESS_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,

    /// Most concurrent SSE streams (`/v1/jobs/{id}/events`); beyond it 429.
    #[arg(long, env = "MODELPRESS_MAX_SSE_CONNECTIONS", default_value_t = 64)]
    pub max_sse_connections: usize,

    /// Largest JSON request body in bytes (job submissions, specs, keys); larger bodies get 413.
    #[arg(long, env = "MODELPRESS_MAX_JSON_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_json_bytes: usize,

    /// Deepest nesting of arrays/objects accepted in a JSON request body; deeper gets 400.
    #[arg(long, env = "MODELPRESS_MAX_JSON_DEPTH", default_value_t = 64)]
    pub max_json_depth: usize,
}

/// A token bucket: holds up to `burst` tokens, refilled at `rate` per second; each request
/// takes one.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: u32, now: Instant) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket { rate, burst, tokens: burst, last: now }
    }

    /// Takes a token, or says how long until one is available.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }

    /// Whether the bucket has refilled completely (so forgetting it changes nothing).
    fn is_full(&self, now: Instant) -> bool {
        self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * self.rate >= self.burst
    }
}

/// One token bucket per key.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: u32,
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: u32) -> RateLimiter {
        RateLimiter { rate, burst, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes a token for `key`; `Err(seconds)` is the `Retry-After` to answer.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), u64> {
        if !self.rate.is_finite() || self.rate <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().expect("rate limiter lock is never poisoned (no panics inside)");
        if buckets.len() > 10_000 {
            // Only authenticated keys get buckets, so this is rare: forget the idle ones.
            buckets.retain(|_, b| !b.is_full(now));
        }
        let bucket = buckets.entry(key.to_string()).or_insert_with(|| TokenBucket::new(self.rate, self.burst, now));
        bucket.try_take(now).map_err(|wait| wait.as_secs_f64().ceil().max(1.0) as u64)
    }
}

/// Limits shared by all handlers (part of [`crate::api::AppState`]).
#[derive(Debug)]
pub struct Limits {
    pub config: LimitsConfig,
    pub rate: RateLimiter,
    /// One permit per open SSE stream; the stream holds it until it ends.
    sse: Arc<Semaphore>,
}

impl Limits {
    pub fn new(config: &LimitsConfig) -> Limits {
        Limits {
            rate: RateLimiter::new(config.rate_limit_rps, config.rate_limit_burst),
            sse: Arc::new(Semaphore::new(config.max_sse_connections)),
            config: config.clone(),
        }
    }

    /// A slot for one SSE stream, or 429.
    pub fn sse_permit(&self) -> Result<OwnedSemaphorePermit, DomainError> {
        self.sse.clone().try_acquire_owned().map_err(|_| {
            DomainError::new(
                ErrorCode::RateLimited,
                format!(
                    "{} event streams are already open (--max-sse-connections); retry later or poll the job",
                    self.config.max_sse_connections
                ),
            )
            .with_retry_after(5)
        })
    }

    pub fn json(&self) -> JsonLimits {
        JsonLimits { max_depth: self.config.max_json_depth }
    }
}

/// JSON limits read by [`crate::api::extract::ApiJson`] (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct JsonLimits {
    pub max_depth: usize,
}

impl Default for JsonLimits {
    fn default() -> Self {
        JsonLimits { max_depth: 64 }
    }
}

/// Checks that no array/object in `bytes` nests deeper than `max`. A byte scan, so it is
/// linear and never recurses; string contents (including escaped quotes) are skipped.
pub fn json_depth_ok(bytes: &[u8], max: usize) -> bool {
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for &b in bytes {
        if in_str {
            if esc {
                esc = false;
            } else if b == b'\\' {
                esc = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// Routes whose handlers stream a body (uploads) or may legitimately run long (download
/// conversions, SSE) and so are exempt from the request timeout. Matched paths, so a route
/// added under another path is timed out by default.
pub fn is_streaming_route(method: &Method, path: &str) -> bool {
    matches!(
        (method.as_str(), path),
        ("POST", "/v1/models") | ("POST", "/v1/datasets") | ("GET", "/v1/models/{id}/download")
    ) || path.ends_with("/events")
}

/// Middleware: answers 503 problem+json when a non-streaming handler takes longer than
/// `--request-timeout-secs`. The handler's future is dropped (work already handed to a job
/// worker or `spawn_blocking` is not interrupted).
pub async fn timeout(State(limits): State<Arc<Limits>>, req: Request, next: Next) -> Response {
    let secs = limits.config.request_timeout_secs;
    let path = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_default();
    if secs == 0 || is_streaming_route(req.method(), &path) {
        return next.run(req).await;
    }
    match tokio::time::timeout(Duration::from_secs(secs), next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            tracing::warn!(route = %path, secs, "request timed out");
            DomainError::new(
                ErrorCode::Timeout,
                format!("the request took longer than {secs} s (--request-timeout-secs)"),
            )
            .with_retry_after(1)
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refills_at_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, 3, t0);
        for _ in 0..3 {
            assert!(b.try_take(t0).is_ok());
        }
        let wait = b.try_take(t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        // Half a second later exactly one token is back.
        let t1 = t0 + Duration::from_millis(500);
        assert!(b.try_take(t1).is_ok());
        assert!(b.try_take(t1).is_err());
        // Never more than the burst, however long it waits.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(b.try_take(t2).is_ok());
        }
        assert!(b.try_take(t2).is_err());
    }

    #[test]
    fn limiter_is_per_key_and_reports_retry_after() {
        let l = RateLimiter::new(0.5, 2);
        let t = Instant::now();
        assert!(l.check("a", t).is_ok());
        assert!(l.check("a", t).is_ok());
        assert_eq!(l.check("a", t), Err(2));
        assert!(l.check("b", t).is_ok());
        assert!(RateLimiter::new(0.0, 1).check("a", t).is_ok());
    }

    #[test]
    fn json_depth() {
        assert!(json_depth_ok(br#"{"a": [1, {"b": 2}]}"#, 3));
        assert!(!json_depth_ok(br#"{"a": [1, {"b": 2}]}"#, 2));
        assert!(json_depth_ok(br#"{"a": "[[[[[[\"[[[["}"#, 1));
        let deep = "[".repeat(10_000);
        assert!(!json_depth_ok(deep.as_bytes(), 32));
    }

    #[tokio::test]
    async fn slow_requests_time_out_except_streaming_routes() {
        use axum::body::Body;
        use axum::routing::{get, post};
        use tower::ServiceExt;

        let mut config = crate::config::Config::for_tests(std::env::temp_dir()).limits;
        config.request_timeout_secs = 1;
        let limits = Arc::new(Limits::new(&config));
        let slow = || async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            "done"
        };
        let app = axum::Router::new()
            .route("/v1/jobs", get(slow))
            .route("/v1/models", post(slow))
            .layer(axum::middleware::from_fn_with_state(limits, timeout));
        let req = |m: &str, uri: &str| Request::builder().method(m).uri(uri).body(Body::empty()).unwrap();
        let resp = app.clone().oneshot(req("GET", "/v1/jobs")).await.unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        let p: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(p["code"], "timeout");
        // An upload route is exempt: it may stream for as long as the body takes.
        let resp = app.oneshot(req("POST", "/v1/models")).await.unwrap();
        assert_eq!(resp.status(), 200);
    }

    #[test]
    fn streaming_routes() {
        assert!(is_streaming_route(&Method::POST, "/v1/models"));
        assert!(!is_streaming_route(&Method::GET, "/v1/models"));
        assert!(is_streaming_route(&Method::GET, "/v1/jobs/{id}/events"));
        assert!(is_streaming_route(&Method::GET, "/v1/models/{id}/download"));
        assert!(!is_streaming_route(&Method::POST, "/v1/jobs"));
    }
}
