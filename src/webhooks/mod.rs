//! Webhooks: when a job ends (succeeded, failed, cancelled), POST a signed JSON event to the
//! job's own `webhook` and to every default webhook of its tenant.
//!
//! Who does what:
//! - **Queueing** is done by the database: a trigger of migration 0005 inserts one
//!   `webhook_deliveries` row per target in the same transaction that makes a job terminal, so
//!   an event is never lost by a crash after that commit and no job code path has to call us.
//! - **Sending** is the [`sender`] task on the tokio runtime (HTTP is I/O, not compute). It
//!   claims due deliveries with a lease (`next_attempt_at` pushed forward), sends, records each
//!   attempt, and reschedules failures with exponential backoff and jitter until
//!   `--webhook-max-age-secs` (a day) after the job ended. It is woken by terminal job updates
//!   and also polls, so deliveries left by a previous run go out after a restart (attempts that
//!   were in flight when it stopped or died are released at start-up, not after their lease).
//!   It never blocks a job: jobs have committed before it runs.
//! - **Policy** ([`policy`]): only http/https, only hosts the operator allows
//!   (`--webhook-allow`); every resolved address must be public unless an allowed IP/CIDR
//!   covers it, and the request goes to exactly the address that was checked (no DNS rebinding,
//!   no redirects, no proxy).
//! - **Signing** ([`sign`]): `Modelpress-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
//!   "<t>.<body>">` (the Stripe convention).

pub mod event;
pub mod policy;
pub mod sender;
pub mod sign;

use clap::Args;

pub use policy::AllowList;
pub use sender::WebhookSender;

/// Webhook settings (flattened into [`crate::config::Config`]).
#[derive(Debug, Clone, Args)]
pub struct WebhookConfig {
    /// Hosts webhooks may be sent to, comma-separated: host names (`hooks.example.com`,
    /// `*.example.com`), IP addresses or CIDR ranges (`10.1.0.0/16`), or `*` for any public
    /// host. Loopback, private and link-local addresses are refused unless an IP/CIDR entry
    /// covers them. Empty (the default): webhooks are off.
    #[arg(long, env = "MODELPRESS_WEBHOOK_ALLOW", value_delimiter = ',')]
    pub webhook_allow: Vec<String>,

    /// First retry delay of a failed delivery in milliseconds; doubles per attempt (capped at
    /// one hour), with up to 50 % random jitter.
    #[arg(long, env = "MODELPRESS_WEBHOOK_RETRY_BASE_MS", default_value_t = 10_000)]
    pub webhook_retry_base_ms: u64,

    /// Seconds after the job ended during which failed deliveries are retried.
    #[arg(long, env = "MODELPRESS_WEBHOOK_MAX_AGE_SECS", default_value_t = 86_400)]
    pub webhook_max_age_secs: u64,

    /// Timeout of one delivery attempt in seconds.
    #[arg(long, env = "MODELPRESS_WEBHOOK_TIMEOUT_SECS", default_value_t = 10)]
    pub webhook_timeout_secs: u64,

    /// Most deliveries sent at the same time.
    #[arg(long, env = "MODELPRESS_WEBHOOK_CONCURRENCY", default_value_t = 8)]
    pub webhook_concurrency: usize,

    /// Public base URL of this service (e.g. `https://modelpress.example.com`), used for the
    /// links in webhook events; without it the links are paths.
    #[arg(long, env = "MODELPRESS_PUBLIC_URL")]
    pub public_url: Option<String>,
}
