//! modelpress: a self-hostable model-compression service.
//!
//! # Thread model
//! - The tokio runtime (`modelpress-http` threads) runs HTTP handlers, the job dispatcher and the
//!   job reporter. It never runs candle or any long loop: uploads are streamed, hashing is
//!   incremental, header validation is bounded and runs in `spawn_blocking`.
//! - Job workers (`modelpress-worker-N`, see [`jobs::worker`]) are plain OS threads that own the
//!   compute of one job at a time. They never touch the database: they receive a fully resolved
//!   [`jobs::JobCommand`] and send progress and the outcome back over bounded channels.
//!
//! - Webhook deliveries run on the runtime too ([`webhooks::sender`]): network I/O with a
//!   timeout, queued durably by a database trigger when a job ends.
//!
//! # Layers
//! `api → jobs / storage / db → compress / nn / tensorfile → kernels`. The compute modules
//! (`compress`, `nn`, `tensorfile`, `kernels`) know nothing of HTTP, tokio or SQL.

// The MSRV is 1.89 for the AVX-512 intrinsics of `kernels`; this style lint only fires since
// `is_multiple_of` became available then, on `x % m == 0` written across modules other branches
// edit. Converting them is a separate, mechanical change.
#![allow(clippy::manual_is_multiple_of)]

pub mod api;
pub mod artifact;
pub mod auth;
pub mod checks;
pub mod cli;
pub mod compress;
pub mod config;
pub mod datasets;
pub mod db;
pub mod error;
pub mod fault;
pub mod glob;
pub mod inference;
pub mod job_status;
pub mod jobs;
pub mod kernels;
pub mod limits;
pub mod nn;
pub mod nonfinite;
pub mod onnx;
pub mod report;
pub mod startup;
pub mod storage;
pub mod telemetry;
pub mod tenant;
pub mod tensorfile;
pub mod time;
pub mod webhooks;
