//! The safetensors format, read and written without loading whole files: header parsing with
//! precise validation ([`header`]), memory-mapped tensor access ([`reader`]) and a streaming
//! writer ([`writer`]). Pure and synchronous; called from upload validation (in
//! `spawn_blocking`) and from job workers.

pub mod header;
pub mod reader;
pub mod writer;

pub use header::{parse_header, Dtype, Header, HeaderLimits, TensorEntry, TensorfileError};
pub use reader::Tensorfile;
pub use writer::{TensorPlan, TensorWriter};
