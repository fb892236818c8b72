//! The execution engine: architecture specs, building candle networks from weights, inference,
//! training and evaluation.
//!
//! Everything here is pure and synchronous (no tokio, no I/O except reading dataset files in
//! [`data`]). Callers are the job worker threads (training, distillation, pruning fine-tuning,
//! quantization reports) and the inference threads, which share a [`Network`] (`Send + Sync`).
//! candle runs its kernels on its own rayon pool, sized by `RAYON_NUM_THREADS` (default: all
//! physical cores). Callers decide thread counts: on the shared 2-core dev box, with other
//! processes busy, one thread per computation was 4–20× faster than two (spin-waiting pool);
//! see `benches/nn.rs`.
//!
//! - [`spec`]: the JSON architecture format (`modelpress.spec` v1), validation, shape inference,
//!   the parameter list and weight checking.
//! - [`model`]: [`Network`], the eval-mode network built from a spec and its weights.
//! - [`train`]: the training loop with hooks, own optimizers, schedules and checkpoints.
//! - [`eval`]: accuracy/loss/confusion reports and network-vs-network comparison.
//! - [`data`]: dataset splits loaded from safetensors.

mod conv;
pub mod data;
mod dense;
mod depthwise;
pub mod distill;
pub mod eval;
pub mod model;
mod ops;
pub mod spec;
pub mod structured;
pub mod train;

pub use data::{Dataset, Split};
pub use eval::{compare, evaluate, Agreement, EvalReport};
pub use model::{Network, Param};
pub use spec::{Layer, ModelSpec, ParamInfo, ParamKind, SpecCheck, SpecError, SpecMismatch, TensorMeta};
pub use train::{
    cross_entropy, init_params, train, Batch, EpochStats, Init, LrSchedule, NoHooks, OptimizerConfig, ParamStore,
    TrainConfig, TrainHooks, TrainOutcome, TrainState,
};

/// Errors of the execution engine. Messages are meant for API users (they end up in 422 bodies).
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    /// The architecture spec itself is invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The weights do not fit the spec (every problem is listed).
    #[error(transparent)]
    Mismatch(#[from] SpecMismatch),
    /// One parameter tensor cannot be used.
    #[error("parameter {name}: {reason}")]
    Param {
        /// state_dict name of the tensor.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The input batch does not fit the network.
    #[error("input: {0}")]
    Input(String),
    /// A dataset cannot be used.
    #[error("data: {0}")]
    Data(String),
    /// Training settings or training state are invalid.
    #[error("training: {0}")]
    Train(String),
    /// A checkpoint cannot be restored.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A tensor operation failed inside candle.
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}
