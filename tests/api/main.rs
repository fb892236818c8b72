//! Integration tests: the real server over HTTP on port 0 with a fresh temp data dir per test.
//! One binary (fast links); one module per resource.

mod auth;
mod engine;
mod health;
mod helpers;
mod jobs;
mod models;
mod openapi;
mod quantize;
mod restart;
