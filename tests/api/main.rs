//! Integration tests: the real server over HTTP on port 0 with a fresh temp data dir per test.
//! One binary (fast links); one module per resource.

mod auth;
mod cli;
mod deploy;
mod distill;
mod distill_mnist;
mod engine;
mod faults;
mod hardening;
mod health;
mod helpers;
mod jobs;
mod models;
mod onnx;
mod openapi;
mod predict;
mod prune;
mod quantize;
mod restart;
mod submission;
mod webhooks;
