//! Quantization kernels and format encoders: int8 (per-channel / per-tensor, symmetric /
//! asymmetric), group-wise int4, GGUF block types through candle, f16 / bf16 casts, error metrics,
//! the quantized-safetensors layout and the GGUF writer.
//!
//! Who calls it: the quantize job (owned by the lead, in `jobs/`) reads each tensor from a
//! memory-mapped safetensors file as `&[f32]` plus its shape, calls [`quantize`] (or
//! [`quantize_par`]), measures the damage with [`ErrorStats`], turns the result into safetensors
//! entries ([`QuantizedTensor::to_entries`]) or a GGUF tensor ([`QuantizedTensor::to_qtensor`] +
//! [`write_gguf`]), and writes the file. The inverse ([`QuantizedTensor::from_entries`]) serves
//! downloads as f32, evaluation of the stored artifact, and building candle `QTensor`s for
//! inference.
//!
//! Threads: everything here is synchronous and pure. The `*_par` variants split rows (or GGML
//! blocks) across the *current* rayon pool: run them inside `pool.install(..)` of a pool sized by
//! the caller (see [`with_threads`]), so that workers × intra-op threads stays ≈ cores. The plain
//! variants run on the calling thread only, for callers that parallelise across tensors.
//!
//! Layout: `int8`, `int4` hold the hand-written kernels (runtime AVX2 dispatch, see `simd`);
//! `ggml` wraps candle's block quantizers with row-parallelism and the fallback rule, using the
//! bit-exact faster ports of Q8_0 / Q4_K in `fastq`; `float` casts to f16/bf16; `metrics`
//! computes error statistics; `layout` is the quantized-safetensors encoding; `gguf` the GGUF
//! export. `docs/formats.md` describes the file formats.

mod fastq;
mod float;
mod ggml;
mod gguf;
mod int4;
mod int8;
mod layout;
mod metrics;
mod scheme;
mod simd;
mod tensor;

#[cfg(test)]
mod testutil;

pub use float::{bf16_to_f32, f16_to_f32, to_bf16, to_bf16_par, to_f16, to_f16_par, HalfData};
pub use ggml::{dequantize_qtensor, fits, qtensor_from_bytes, quantize_ggml, quantize_ggml_par, resolve};
pub use gguf::{f32_qtensor, file_type, write_gguf, GgufMetadata};
pub use int4::{dequantize_int4, pack_nibbles, quantize_int4, quantize_int4_par, unpack_nibbles, Int4Data};
pub use int8::{dequantize_int8, quantize_int8, quantize_int8_par, Int8Data};
pub use layout::{EntryView, QuantizationConfig, TensorEntry, TensorRecord, METADATA_KEY};
pub use metrics::{ErrorAccumulator, ErrorStats};
pub use scheme::{GgmlKind, Granularity, Scheme, INT4_GROUP_SIZES};
pub use tensor::{check_finite, quantize, quantize_par, QuantData, QuantizedTensor};

/// Errors of the quantization module. Messages name the tensor and are meant for users
/// (they end up in HTTP 422 bodies or job error objects).
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// A weight is NaN or ±inf.
    #[error("tensor {tensor}: contains {what} at index {index}")]
    NonFinite {
        /// Tensor name as passed by the caller.
        tensor: String,
        /// Flat (row-major) index of the first offending value.
        index: usize,
        /// `"NaN"`, `"+inf"` or `"-inf"`.
        what: &'static str,
    },
    /// The slice length does not match the product of the shape.
    #[error("tensor {tensor}: {len} values do not match shape {shape:?} ({expected} elements)")]
    ShapeMismatch {
        /// Tensor name.
        tensor: String,
        /// Shape given by the caller.
        shape: Vec<usize>,
        /// Length of the data slice.
        len: usize,
        /// Product of the shape.
        expected: usize,
    },
    /// Rank-0 tensors have no rows to quantize.
    #[error("tensor {tensor}: a scalar (rank-0) tensor cannot be quantized, keep it in float")]
    Scalar {
        /// Tensor name.
        tensor: String,
    },
    /// int4 needs the row length to be a multiple of the group size.
    #[error(
        "tensor {tensor}: row length {cols} is not divisible by the int4 group size {group_size}; \
         use a smaller group or keep this tensor in float"
    )]
    GroupNotDivisible {
        /// Tensor name.
        tensor: String,
        /// Row length (product of all dims after the first).
        cols: usize,
        /// Requested group size.
        group_size: usize,
    },
    /// An int4 group size outside [`INT4_GROUP_SIZES`].
    #[error("invalid int4 group size {0}: use one of 32, 64, 128, 256")]
    InvalidGroupSize(usize),
    /// A GGML block type was requested directly for a shape it cannot hold
    /// (use [`resolve`] to pick a fallback).
    #[error("tensor {tensor}: last dimension {last_dim} is not a multiple of the {kind} block size {block}")]
    BlockNotDivisible {
        /// Tensor name.
        tensor: String,
        /// Requested type.
        kind: &'static str,
        /// Last dimension of the tensor.
        last_dim: usize,
        /// Block size of the type.
        block: usize,
    },
    /// A finite f32 weight does not fit in f16.
    #[error(
        "tensor {tensor}: value {value} at index {index} is outside the f16 range (±65504); \
         keep this tensor in f32 or use bf16"
    )]
    F16Overflow {
        /// Tensor name.
        tensor: String,
        /// Flat index of the value.
        index: usize,
        /// The value itself.
        value: f32,
    },
    /// A scheme label that does not parse.
    #[error(
        "unknown quantization scheme {0:?}: expected int8[_asym][_per_tensor], int4[_asym]_g<32|64|128|256>, \
         q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, f16 or bf16"
    )]
    UnknownScheme(String),
    /// A tensor entry needed to decode a quantized tensor is absent.
    #[error("tensor {tensor}: entry {entry} is missing from the file")]
    MissingEntry {
        /// Tensor name.
        tensor: String,
        /// Name of the missing safetensors entry.
        entry: String,
    },
    /// A tensor entry has the wrong dtype, shape or size.
    #[error("tensor {tensor}: entry {entry} is malformed: {reason}")]
    BadEntry {
        /// Tensor name.
        tensor: String,
        /// Name of the offending safetensors entry.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The `quantization_config` metadata is not valid.
    #[error("invalid quantization_config metadata: {0}")]
    BadConfig(String),
    /// Two slices that must have the same length do not.
    #[error("{what}: lengths differ ({left} vs {right})")]
    LengthMismatch {
        /// Which operation.
        what: &'static str,
        /// First length.
        left: usize,
        /// Second length.
        right: usize,
    },
    /// A rayon pool could not be built.
    #[error("could not start {threads} quantization threads: {reason}")]
    ThreadPool {
        /// Requested thread count.
        threads: usize,
        /// rayon's message.
        reason: String,
    },
    /// An error from candle (QTensor construction, GGUF writing).
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, QuantError>;

/// Runs `f` inside a fresh rayon pool of `threads` threads, so that the `*_par` functions called
/// from `f` use exactly that many threads. Building a pool costs ~0.1 ms; callers that quantize
/// many tensors should keep their own pool and call `pool.install` instead.
pub fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> Result<R> {
    let threads = threads.max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("quant-{i}"))
        .build()
        .map_err(|e| QuantError::ThreadPool { threads, reason: e.to_string() })?;
    Ok(pool.install(f))
}

/// Splits a shape into (rows, cols) the way every row-wise scheme here sees it: rows = first dim,
/// cols = product of the remaining dims (a conv weight `[out, in, kh, kw]` is `out` rows of
/// `in·kh·kw`); a rank-1 tensor is one row.
pub(crate) fn rows_cols(name: &str, shape: &[usize]) -> Result<(usize, usize)> {
    match shape {
        [] => Err(QuantError::Scalar { tensor: name.to_string() }),
        [n] => Ok((1, *n)),
        [rows, rest @ ..] => Ok((*rows, rest.iter().product())),
    }
}

/// Checks `len == product(shape)`.
pub(crate) fn check_len(name: &str, shape: &[usize], len: usize) -> Result<()> {
    let expected: usize = shape.iter().product();
    if shape.is_empty() {
        return Err(QuantError::Scalar { tensor: name.to_string() });
    }
    if expected != len {
        return Err(QuantError::ShapeMismatch { tensor: name.to_string(), shape: shape.to_vec(), len, expected });
    }
    Ok(())
}

/// Finds the first non-finite value of `data` and builds the error for it; `offset` is added to
/// the index so chunked callers report flat indices. Cold path: only called once a kernel has
/// seen a bad value.
#[cold]
pub(crate) fn non_finite_error(name: &str, data: &[f32], offset: usize) -> QuantError {
    let (index, what) = data
        .iter()
        .enumerate()
        .find_map(|(i, x)| {
            if x.is_nan() {
                Some((i, "NaN"))
            } else if *x == f32::INFINITY {
                Some((i, "+inf"))
            } else if *x == f32::NEG_INFINITY {
                Some((i, "-inf"))
            } else {
                None
            }
        })
        .unwrap_or((0, "a non-finite value"));
    QuantError::NonFinite { tensor: name.to_string(), index: offset + index, what }
}

/// Number of elements a parallel task should handle at least: below this the rayon overhead
/// dominates the kernel time.
pub(crate) const PAR_MIN_ELEMS: usize = 1 << 16;

/// Rows per parallel task for `rows` rows of `cols` values in the current rayon pool: about four
/// tasks per thread for load balance, but never fewer than [`PAR_MIN_ELEMS`] elements per task.
pub(crate) fn rows_per_task(rows: usize, cols: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let by_balance = rows.div_ceil(threads * 4).max(1);
    let by_size = PAR_MIN_ELEMS.div_ceil(cols.max(1)).max(1);
    by_balance.max(by_size).min(rows.max(1))
}
