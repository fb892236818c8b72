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
//! # Layers
//! `api → jobs / storage / db → compress / nn / tensorfile`. The compute modules (`compress`,
//! `nn`, `tensorfile`) know nothing of HTTP, tokio or SQL.

pub mod api;
pub mod artifact;
pub mod auth;
pub mod compress;
pub mod config;
pub mod datasets;
pub mod db;
pub mod error;
pub mod glob;
pub mod inference;
pub mod jobs;
pub mod limits;
pub mod nn;
pub mod onnx;
pub mod startup;
pub mod storage;
pub mod telemetry;
pub mod tensorfile;
pub mod time;
