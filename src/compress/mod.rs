//! Compression kernels: pure, synchronous, no HTTP, database or async. Called from job worker
//! threads (and benches); see each submodule for its thread use.

pub mod prune;
pub mod quant;
