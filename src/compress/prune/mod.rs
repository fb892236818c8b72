//! Pruning kernels: pure, synchronous numeric code on `f32` slices with explicit shapes.
//!
//! Called by the pruning job (the lead's glue: mmap input, tensor selection by name globs,
//! output files) on a job worker thread. Nothing here touches I/O, async or the database.
//! Functions taking a [`Parallelism`] run on the *current* rayon pool when asked to go
//! parallel, so the caller decides the intra-op thread count with `ThreadPool::install`
//! (workers × intra-op threads ≈ cores).
//!
//! - [`magnitude`]: exact global / per-layer magnitude thresholds in O(n) (two 65,536-bin
//!   histograms on the bits of `|w|`, no sort, no copy), applied with exact tie handling.
//! - [`nm`]: N:M semi-structured pruning (2:4, 4:8, …).
//! - [`structured`]: scores per output unit, top-k selection and gather helpers for the
//!   structured (shape-changing) rewrite.
//! - [`sparse`]: the `format: "sparse"` artifact encoding (compressed-tensors sparse-bitmask).
//! - [`schedule`]: TFMOT-style polynomial-decay gradual pruning schedule.
//!
//! Shared here: the error enum, per-tensor statistics and the keep-[`Mask`] used to hold
//! pruned weights at zero during fine-tuning.

pub mod magnitude;
pub mod nm;
pub mod schedule;
pub mod sparse;
pub mod structured;

pub use magnitude::{
    apply_cut, global_cut, per_layer_cuts, prune_global, prune_per_layer, Cut, GlobalCut, TensorMut, TensorRef,
};
pub use nm::{check_n_m, nm_group_len, prune_n_m, NmPattern};
pub use schedule::PolynomialDecay;
pub use sparse::{
    decode, decode_f32, encode, encode_bf16, encode_f16, encode_raw, DenseTensor, PartView, SparsePart, SparseView,
    ValueDType,
};
pub use structured::{select_keep, take_along_dim, take_rows, unit_scores, Norm};

use serde::Serialize;

/// Errors of the pruning kernels. Messages name the tensor and say what to change; they
/// end up in HTTP 422 bodies.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PruneError {
    /// The weights contain a NaN, which has no magnitude to rank.
    #[error("tensor {tensor}: contains NaN at index {index}")]
    NaN { tensor: String, index: usize },
    /// A sparsity target outside `[0, 1)`; `target` is "tensor NAME" or "global pruning".
    #[error("{target}: sparsity {value} is out of range; use a number in [0, 1)")]
    InvalidSparsity { target: String, value: f64 },
    /// Per-tensor targets do not line up with the tensors.
    #[error("{targets} per-tensor sparsity targets were given for {tensors} tensors")]
    TargetCount { targets: usize, tensors: usize },
    /// Data length does not match the product of the shape.
    #[error("tensor {tensor}: shape {shape:?} holds {expected} elements but the data has {actual}")]
    ShapeMismatch { tensor: String, shape: Vec<usize>, expected: usize, actual: usize },
    /// A malformed N:M pattern string or values.
    #[error("invalid N:M pattern \"{pattern}\": {reason}")]
    InvalidPattern { pattern: String, reason: String },
    /// The N:M group dimension is not a multiple of M.
    #[error(
        "tensor {tensor}: pattern {pattern} groups {m} consecutive weights along {dim}, \
         whose size {size} is not divisible by {m}; choose an M that divides {size} or exclude this tensor"
    )]
    NotDivisible { tensor: String, pattern: String, dim: String, size: usize, m: usize },
    /// The operation needs a tensor of higher rank.
    #[error("tensor {tensor}: needs rank >= {min_rank}, got shape {shape:?}")]
    RankTooLow { tensor: String, shape: Vec<usize>, min_rank: usize },
    /// A dimension index beyond the rank.
    #[error("tensor {tensor}: dimension {dim} does not exist in shape {shape:?}")]
    DimOutOfRange { tensor: String, dim: usize, shape: Vec<usize> },
    /// A gather index beyond the dimension size.
    #[error("tensor {tensor}: index {index} is out of range for dimension {dim} of size {size}")]
    IndexOutOfRange { tensor: String, index: usize, dim: usize, size: usize },
    /// Asked to keep more units than exist.
    #[error("layer {layer}: cannot keep {keep} units out of {available}")]
    KeepTooMany { layer: String, keep: usize, available: usize },
    /// A structured-pruning score is NaN.
    #[error("layer {layer}: score of unit {index} is NaN")]
    NaNScore { layer: String, index: usize },
    /// A mask applied to data of another length.
    #[error("tensor {tensor}: mask covers {mask_len} elements but the data has {data_len}")]
    MaskLength { tensor: String, mask_len: usize, data_len: usize },
    /// A dtype the sparse format does not store.
    #[error("tensor {tensor}: dtype {dtype} is not supported by the sparse format (use F32, F16 or BF16)")]
    UnsupportedDtype { tensor: String, dtype: String },
    /// Sparse parts that are missing or inconsistent.
    #[error("tensor {tensor}: invalid sparse encoding: {detail}")]
    SparseFormat { tensor: String, detail: String },
    /// Invalid gradual-pruning schedule parameters.
    #[error("pruning schedule: {0}")]
    InvalidSchedule(String),
}

/// Whether a kernel runs on the calling thread only or splits its work on the current
/// rayon pool. Results are identical either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Parallelism {
    /// Everything on the calling thread.
    #[default]
    Serial,
    /// Work split into chunks on the current rayon pool (`ThreadPool::install` to size it).
    Rayon,
}

/// What pruning did to one tensor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PruneStats {
    /// Tensor name, as passed in.
    pub name: String,
    /// Number of elements.
    pub elements: u64,
    /// Elements selected for pruning (set to +0.0).
    pub pruned: u64,
    /// Elements not selected (`elements - pruned`); some may already have been zero.
    pub kept: u64,
    /// Elements equal to zero (±0.0) after pruning: `pruned` plus zeros among the kept.
    pub zeros: u64,
    /// `zeros / elements` (0 for an empty tensor).
    pub sparsity: f64,
    /// Magnitude threshold used: elements below it were pruned, plus some of those equal to
    /// it (see `magnitude::Cut`); 0 when the search pruned nothing; `None` for pruning that
    /// has no single threshold (N:M).
    pub threshold: Option<f32>,
}

impl PruneStats {
    fn new(name: &str, elements: u64, pruned: u64, zeros: u64, threshold: Option<f32>) -> Self {
        let sparsity = if elements == 0 { 0.0 } else { zeros as f64 / elements as f64 };
        Self { name: name.to_owned(), elements, pruned, kept: elements - pruned, zeros, sparsity, threshold }
    }
}

/// Outcome of pruning one tensor: statistics and the keep-mask.
#[derive(Debug, Clone, PartialEq)]
pub struct PruneResult {
    /// Counts, sparsity and threshold.
    pub stats: PruneStats,
    /// Bit set per element: 1 = kept, 0 = pruned.
    pub mask: Mask,
}

/// One bit per element, packed into `u64` words: bit `i % 64` of word `i / 64` is 1 when
/// element `i` was kept. Bits past `len` are always 0.
///
/// Fine-tuning keeps pruned weights at zero by calling [`Mask::apply`] on the weights after
/// each optimizer step (or multiplying by [`Mask::to_f32`] as a tensor of the weight's shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    len: usize,
    words: Vec<u64>,
}

impl Mask {
    /// A mask of `len` elements, all kept.
    pub fn all_kept(len: usize) -> Self {
        let mut words = vec![u64::MAX; len.div_ceil(64)];
        if len % 64 != 0 {
            if let Some(last) = words.last_mut() {
                *last = (1u64 << (len % 64)) - 1;
            }
        }
        Self { len, words }
    }

    /// A mask of `len` elements, all pruned.
    pub fn all_pruned(len: usize) -> Self {
        Self { len, words: vec![0; len.div_ceil(64)] }
    }

    /// Keeps exactly the elements that are not ±0.0 (e.g. for a model pruned elsewhere).
    pub fn from_nonzero(data: &[f32]) -> Self {
        let mut words = vec![0u64; data.len().div_ceil(64)];
        for (block, word) in data.chunks(64).zip(words.iter_mut()) {
            let mut bits = 0u64;
            for (i, w) in block.iter().enumerate() {
                bits |= u64::from(*w != 0.0) << i;
            }
            *word = bits;
        }
        Self { len: data.len(), words }
    }

    /// Number of elements covered.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the mask covers no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether element `i` is kept; `None` past the end.
    pub fn is_kept(&self, i: usize) -> Option<bool> {
        (i < self.len).then(|| self.words[i / 64] >> (i % 64) & 1 == 1)
    }

    /// Number of kept elements.
    pub fn kept_count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// The packed words (little-endian bit order inside each word).
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Sets pruned elements of `data` to +0.0 (kept ones untouched).
    pub fn apply(&self, tensor: &str, data: &mut [f32]) -> Result<(), PruneError> {
        if data.len() != self.len {
            return Err(PruneError::MaskLength { tensor: tensor.to_owned(), mask_len: self.len, data_len: data.len() });
        }
        for (block, word) in data.chunks_mut(64).zip(&self.words) {
            for (i, w) in block.iter_mut().enumerate() {
                *w = if word >> i & 1 == 1 { *w } else { 0.0 };
            }
        }
        Ok(())
    }

    /// Dense 1.0 (kept) / 0.0 (pruned) values, row-major like the weights.
    pub fn to_f32(&self) -> Vec<f32> {
        (0..self.len).map(|i| ((self.words[i / 64] >> (i % 64)) & 1) as f32).collect()
    }

    pub(crate) fn from_words(len: usize, words: Vec<u64>) -> Self {
        debug_assert_eq!(words.len(), len.div_ceil(64));
        Self { len, words }
    }
}

/// Number of elements a shape holds, or `ShapeMismatch` against `len`.
pub(crate) fn check_shape(tensor: &str, shape: &[usize], len: usize) -> Result<(), PruneError> {
    let expected = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).unwrap_or(usize::MAX);
    if expected != len {
        return Err(PruneError::ShapeMismatch {
            tensor: tensor.to_owned(),
            shape: shape.to_vec(),
            expected,
            actual: len,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_basics() {
        let m = Mask::all_kept(70);
        assert_eq!(m.kept_count(), 70);
        assert_eq!(m.words()[1], (1 << 6) - 1);
        assert_eq!(m.is_kept(69), Some(true));
        assert_eq!(m.is_kept(70), None);
        assert_eq!(Mask::all_pruned(70).kept_count(), 0);

        let data = [0.0, 1.0, -0.0, -2.0, 3.0];
        let m = Mask::from_nonzero(&data);
        assert_eq!(m.kept_count(), 3);
        assert_eq!(m.to_f32(), vec![0.0, 1.0, 0.0, 1.0, 1.0]);
        let mut other = [5.0f32, 6.0, 7.0, 8.0, 9.0];
        m.apply("t", &mut other).unwrap();
        assert_eq!(other, [0.0, 6.0, 0.0, 8.0, 9.0]);
        let err = m.apply("t", &mut [1.0; 4]).unwrap_err();
        assert!(err.to_string().contains("tensor t: mask covers 5"), "{err}");
    }

    #[test]
    fn shape_check() {
        assert!(check_shape("a", &[2, 3], 6).is_ok());
        assert!(check_shape("a", &[], 1).is_ok());
        let e = check_shape("a", &[2, 3], 5).unwrap_err();
        assert_eq!(e.to_string(), "tensor a: shape [2, 3] holds 6 elements but the data has 5");
    }
}
