//! GGML block types through candle: row-parallel quantization, the shape-fallback rule, and
//! conversion between candle `QTensor`s and raw block bytes.
//!
//! Why not `QTensor::quantize`: it runs single-threaded (Q4_K ≈ 0.1 GB/s). GGML blocks are
//! independent, so this module cuts the flat data into runs of whole blocks, has candle's own
//! `GgmlType::from_float` quantize each run on the current rayon pool, and wraps the block vector
//! in a `QTensor` without copying; the bytes are identical to `QTensor::quantize` (tested).
//! Q8_0 and Q4_K use the faster bit-exact ports in `fastq` instead of candle's code.
//!
//! Fallback (like llama.cpp) when the last dim is not a multiple of the block size (32, or 256 for
//! k-quants): Q2_K / Q3_K → Q4_0 (llama.cpp uses IQ4_NL, which candle lacks), Q4_K → Q5_0,
//! Q5_K → Q5_1, Q6_K → Q8_0, and f16 when even 32 does not divide. [`resolve`] returns the scheme
//! actually used so reports can say so per tensor.

use std::borrow::Cow;

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8K, BlockQ8_0,
    BlockQ8_1, GgmlType,
};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::Device;
use rayon::prelude::*;

use super::fastq;
use super::scheme::{GgmlKind, Scheme};
use super::tensor::check_finite_impl;
use super::{check_len, QuantError, Result, PAR_MIN_ELEMS};

/// Runs `$body` with `$T` bound to the block type of the candle dtype `$dtype`.
macro_rules! with_block_type {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            GgmlDType::F32 => {
                type $T = f32;
                $body
            }
            GgmlDType::F16 => {
                type $T = half::f16;
                $body
            }
            GgmlDType::BF16 => {
                type $T = half::bf16;
                $body
            }
            GgmlDType::Q4_0 => {
                type $T = BlockQ4_0;
                $body
            }
            GgmlDType::Q4_1 => {
                type $T = BlockQ4_1;
                $body
            }
            GgmlDType::Q5_0 => {
                type $T = BlockQ5_0;
                $body
            }
            GgmlDType::Q5_1 => {
                type $T = BlockQ5_1;
                $body
            }
            GgmlDType::Q8_0 => {
                type $T = BlockQ8_0;
                $body
            }
            GgmlDType::Q8_1 => {
                type $T = BlockQ8_1;
                $body
            }
            GgmlDType::Q2K => {
                type $T = BlockQ2K;
                $body
            }
            GgmlDType::Q3K => {
                type $T = BlockQ3K;
                $body
            }
            GgmlDType::Q4K => {
                type $T = BlockQ4K;
                $body
            }
            GgmlDType::Q5K => {
                type $T = BlockQ5K;
                $body
            }
            GgmlDType::Q6K => {
                type $T = BlockQ6K;
                $body
            }
            GgmlDType::Q8K => {
                type $T = BlockQ8K;
                $body
            }
        }
    };
}

/// Whether `kind` can hold a tensor of `shape` (last dim a multiple of the block size).
pub fn fits(kind: GgmlKind, shape: &[usize]) -> bool {
    shape.last().is_some_and(|d| d % kind.block_size() == 0)
}

/// The scheme actually used when `kind` is requested for `shape`: `kind` itself when it fits,
/// else its fallback type when that fits, else [`Scheme::F16`].
pub fn resolve(kind: GgmlKind, shape: &[usize]) -> Scheme {
    if fits(kind, shape) {
        return Scheme::Ggml(kind);
    }
    match kind.fallback() {
        Some(fb) if fits(fb, shape) => Scheme::Ggml(fb),
        _ => Scheme::F16,
    }
}

/// Quantizes to a GGML block type on the calling thread; bytes identical to candle's
/// `QTensor::quantize`. Errors if `kind` does not fit `shape` (see [`resolve`]) or on NaN/±inf.
pub fn quantize_ggml(name: &str, data: &[f32], shape: &[usize], kind: GgmlKind) -> Result<QTensor> {
    quantize_impl(name, data, shape, kind.dtype(), false)
}

/// Like [`quantize_ggml`], with runs of blocks quantized across the current rayon pool.
pub fn quantize_ggml_par(name: &str, data: &[f32], shape: &[usize], kind: GgmlKind) -> Result<QTensor> {
    quantize_impl(name, data, shape, kind.dtype(), true)
}

pub(crate) fn quantize_impl(name: &str, data: &[f32], shape: &[usize], dtype: GgmlDType, par: bool) -> Result<QTensor> {
    check_len(name, shape, data.len())?;
    let block = dtype.block_size();
    let last_dim = *shape.last().expect("check_len rejects rank 0");
    if last_dim % block != 0 {
        return Err(QuantError::BlockNotDivisible {
            tensor: name.to_string(),
            kind: GgmlKind::from_dtype(dtype).map_or("float", GgmlKind::name),
            last_dim,
            block,
        });
    }
    // candle's block quantizers do not look for NaN/inf; they would silently poison a block.
    check_finite_impl(name, data, par)?;
    let storage = match dtype {
        GgmlDType::Q8_0 => QStorage::Cpu(Box::new(quantize_blocks_fast::<BlockQ8_0>(data, par, fastq::q8_0_blocks))),
        GgmlDType::Q4K => QStorage::Cpu(Box::new(quantize_blocks_fast::<BlockQ4K>(data, par, fastq::q4k_blocks))),
        _ => with_block_type!(dtype, T => {
            QStorage::Cpu(Box::new(quantize_blocks::<T>(data, par)))
        }),
    };
    Ok(QTensor::new(storage, shape)?)
}

const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == fastq::Q8_0_BYTES);
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == fastq::Q4K_BYTES);

/// Blocks per parallel task: about four tasks per thread, at least [`PAR_MIN_ELEMS`] weights.
fn blocks_per_task(n_blocks: usize, block_size: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    n_blocks.div_ceil(4 * threads).max(PAR_MIN_ELEMS / block_size).max(1)
}

/// Quantizes with one of the `fastq` ports, writing straight into the block vector's bytes.
fn quantize_blocks_fast<T: GgmlType>(data: &[f32], par: bool, kernel: fn(bool, &[f32], &mut [u8])) -> Vec<T> {
    let n_blocks = data.len() / T::BLCK_SIZE;
    let size = std::mem::size_of::<T>();
    let mut blocks = vec![T::zeros(); n_blocks];
    // SAFETY: the block types are `repr(C)` aggregates of integers and f16 without padding (sizes
    // asserted above), so any bytes the kernel writes form valid values; the view covers exactly
    // the vector's initialised elements and `blocks` is not touched while it lives.
    let bytes = unsafe { std::slice::from_raw_parts_mut(blocks.as_mut_ptr().cast::<u8>(), n_blocks * size) };
    if par && n_blocks > 1 {
        let bpt = blocks_per_task(n_blocks, T::BLCK_SIZE);
        bytes.par_chunks_mut(bpt * size).zip(data.par_chunks(bpt * T::BLCK_SIZE)).for_each(|(o, x)| kernel(true, x, o));
    } else {
        kernel(true, data, bytes);
    }
    blocks
}

fn quantize_blocks<T: GgmlType + 'static>(data: &[f32], par: bool) -> Vec<T> {
    let n_blocks = data.len() / T::BLCK_SIZE;
    let mut blocks = vec![T::zeros(); n_blocks];
    if par && n_blocks > 1 {
        let bpt = blocks_per_task(n_blocks, T::BLCK_SIZE);
        blocks.par_chunks_mut(bpt).zip(data.par_chunks(bpt * T::BLCK_SIZE)).for_each(|(ys, xs)| T::from_float(xs, ys));
    } else {
        T::from_float(data, &mut blocks);
    }
    blocks
}

/// Dequantizes any CPU `QTensor` to a flat f32 vector (row-major, the tensor's shape).
pub fn dequantize_qtensor(q: &QTensor) -> Result<Vec<f32>> {
    Ok(q.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?)
}

/// Builds a CPU `QTensor` from raw GGML block bytes (as stored in a `*_ggml` safetensors entry or
/// a GGUF file). The bytes are copied, so they may be unaligned (e.g. a view into an mmap).
pub fn qtensor_from_bytes(name: &str, dtype: GgmlDType, bytes: &[u8], shape: &[usize]) -> Result<QTensor> {
    let elems: usize = shape.iter().product();
    let block = dtype.block_size();
    let bad = |reason: String| QuantError::BadEntry {
        tensor: name.to_string(),
        entry: format!("{name} ({dtype:?} data)"),
        reason,
    };
    if shape.is_empty() || shape[shape.len() - 1] % block != 0 {
        return Err(bad(format!("shape {shape:?} does not have a last dim divisible by the block size {block}")));
    }
    let want = elems / block * dtype.type_size();
    if bytes.len() != want {
        return Err(bad(format!("{} bytes, expected {want} for shape {shape:?}", bytes.len())));
    }
    let storage = with_block_type!(dtype, T => {
        QStorage::Cpu(Box::new(blocks_from_bytes::<T>(bytes)))
    });
    Ok(QTensor::new(storage, shape)?)
}

/// Copies raw bytes into a properly aligned block vector.
fn blocks_from_bytes<T: GgmlType>(bytes: &[u8]) -> Vec<T> {
    let size = std::mem::size_of::<T>();
    let n = bytes.len() / size;
    let mut out = vec![T::zeros(); n];
    // SAFETY: GGML block types are `repr(C)` aggregates of integers and f16/bf16/f32, so every bit
    // pattern is a valid value; the destination holds exactly `n * size` bytes and the source at
    // least that many; the regions cannot overlap (fresh allocation).
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.as_mut_ptr().cast::<u8>(), n * size);
    }
    out
}

/// The raw block bytes of a `QTensor` (borrowed for CPU tensors).
pub(crate) fn qtensor_bytes(q: &QTensor) -> Result<Cow<'_, [u8]>> {
    Ok(q.data()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::quant::testutil::{gaussian, rel_error};
    use candle_core::Tensor;

    fn candle_reference(data: &[f32], shape: &[usize], kind: GgmlKind) -> QTensor {
        let t = Tensor::from_slice(data, shape, &Device::Cpu).unwrap();
        QTensor::quantize(&t, kind.dtype()).unwrap()
    }

    #[test]
    fn bytes_identical_to_candle_single_thread_for_every_type() {
        let shape = [12, 512];
        let x = gaussian(12 * 512, 0.02, 21);
        crate::compress::quant::with_threads(2, || {
            for kind in GgmlKind::ALL {
                let reference = candle_reference(&x, &shape, kind);
                let want = reference.data().unwrap();
                let serial = quantize_ggml("w", &x, &shape, kind).unwrap();
                let par = quantize_ggml_par("w", &x, &shape, kind).unwrap();
                assert_eq!(serial.data().unwrap(), want, "{kind} serial");
                assert_eq!(par.data().unwrap(), want, "{kind} parallel");
                assert_eq!(par.shape().dims(), &shape);
                assert_eq!(par.dtype(), kind.dtype());
            }
        })
        .unwrap();
    }

    /// The `fastq` ports against candle on data built to hit every branch: constant and all-zero
    /// sub-blocks, ±0.0, exact .5 ties, one-sided blocks, tiny and huge magnitudes.
    #[test]
    fn fast_ports_match_candle_on_adversarial_data() {
        let mut x = gaussian(64 * 256, 1.0, 25);
        for (b, blk) in x.chunks_mut(256).enumerate() {
            match b % 16 {
                0 => blk.iter_mut().for_each(|v| *v = 0.0),
                1 => blk.iter_mut().for_each(|v| *v = -0.0),
                2 => blk.iter_mut().for_each(|v| *v = 0.75),
                3 => blk[..32].iter_mut().for_each(|v| *v = -1.5),
                4 => blk.iter_mut().enumerate().for_each(|(i, v)| *v = (i % 32) as f32 * 0.5),
                5 => blk.iter_mut().for_each(|v| *v = v.abs()),
                6 => blk.iter_mut().for_each(|v| *v = -v.abs() * 1e-30),
                7 => blk.iter_mut().for_each(|v| *v *= 1e30),
                8 => blk.iter_mut().for_each(|v| *v *= 1e-38),
                9 => blk.iter_mut().enumerate().for_each(|(i, v)| *v = i as f32 - 127.0),
                10 => blk[7] = 1000.0,
                11 => blk.iter_mut().step_by(2).for_each(|v| *v = -0.0),
                12 => blk.iter_mut().for_each(|v| *v = (*v * 4.0).round() / 4.0),
                _ => {}
            }
        }
        for (kind, kernel) in
            [(GgmlKind::Q8_0, fastq::q8_0_blocks as fn(bool, &[f32], &mut [u8])), (GgmlKind::Q4K, fastq::q4k_blocks)]
        {
            let mut inputs = vec![x.clone()];
            for (seed, std) in [(26, 1e-4), (27, 0.02), (28, 3.0), (29, 300.0)] {
                inputs.push(gaussian(16 * 256, std, seed));
            }
            for (n, input) in inputs.iter().enumerate() {
                let want = candle_reference(input, &[input.len() / 256, 256], kind);
                let want = want.data().unwrap();
                for simd in [true, false] {
                    let mut got = vec![0u8; want.len()];
                    kernel(simd, input, &mut got);
                    for (b, (g, w)) in got.chunks(kind.block_bytes()).zip(want.chunks(kind.block_bytes())).enumerate() {
                        assert_eq!(g, w, "{kind} simd={simd} input {n} block {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn round_trip_error_bounds() {
        // Bounds ≈ 1.2× the Gaussian figures of shared/CANDLE.md.
        let shape = [16, 1024];
        let x = gaussian(16 * 1024, 0.02, 22);
        let bound = |k: GgmlKind| match k {
            GgmlKind::Q8_0 => 0.007,
            GgmlKind::Q6K => 0.025,
            GgmlKind::Q5K => 0.045,
            GgmlKind::Q5_0 | GgmlKind::Q5_1 => 0.05,
            GgmlKind::Q4K => 0.09,
            GgmlKind::Q4_0 | GgmlKind::Q4_1 => 0.105,
            GgmlKind::Q3K => 0.18,
            GgmlKind::Q2K => 0.35,
        };
        let mut errs = Vec::new();
        for kind in GgmlKind::ALL {
            let q = quantize_ggml("w", &x, &shape, kind).unwrap();
            let d = dequantize_qtensor(&q).unwrap();
            let e = rel_error(&x, &d);
            assert!(e < bound(kind), "{kind}: {e}");
            assert!(e > bound(kind) / 10.0, "{kind}: {e} suspiciously small");
            errs.push((kind, e));
        }
        let e = |k| errs.iter().find(|(kk, _)| *kk == k).unwrap().1;
        assert!(e(GgmlKind::Q2K) > e(GgmlKind::Q3K));
        assert!(e(GgmlKind::Q3K) > e(GgmlKind::Q4K));
        assert!(e(GgmlKind::Q4K) > e(GgmlKind::Q5K));
        assert!(e(GgmlKind::Q5K) > e(GgmlKind::Q6K));
        assert!(e(GgmlKind::Q6K) > e(GgmlKind::Q8_0));
    }

    #[test]
    fn fallback_choices() {
        // 784 = 32 · 24.5: no block type fits → f16 for every kind.
        for kind in GgmlKind::ALL {
            assert!(!fits(kind, &[10, 784]));
            assert_eq!(resolve(kind, &[10, 784]), Scheme::F16, "{kind}");
        }
        // 800 = 32 · 25: k-quants fall back to their 32-block replacements.
        let w = [64, 800];
        assert_eq!(resolve(GgmlKind::Q4K, &w), Scheme::Ggml(GgmlKind::Q5_0));
        assert_eq!(resolve(GgmlKind::Q5K, &w), Scheme::Ggml(GgmlKind::Q5_1));
        assert_eq!(resolve(GgmlKind::Q6K, &w), Scheme::Ggml(GgmlKind::Q8_0));
        assert_eq!(resolve(GgmlKind::Q2K, &w), Scheme::Ggml(GgmlKind::Q4_0));
        assert_eq!(resolve(GgmlKind::Q3K, &w), Scheme::Ggml(GgmlKind::Q4_0));
        assert_eq!(resolve(GgmlKind::Q8_0, &w), Scheme::Ggml(GgmlKind::Q8_0));
        // 384 (MiniLM): 32 divides, 256 does not.
        assert_eq!(resolve(GgmlKind::Q4K, &[384, 384]), Scheme::Ggml(GgmlKind::Q5_0));
        assert_eq!(resolve(GgmlKind::Q4K, &[8, 4096]), Scheme::Ggml(GgmlKind::Q4K));
        // Only the last dim matters: [256, 3] conv-like tail does not fit.
        assert!(!fits(GgmlKind::Q8_0, &[256, 3]));
        assert!(!fits(GgmlKind::Q8_0, &[]));
        let e = quantize_ggml("fc.weight", &[0.0; 784], &[1, 784], GgmlKind::Q4K).unwrap_err();
        assert_eq!(e.to_string(), "tensor fc.weight: last dimension 784 is not a multiple of the q4_k block size 256");
    }

    #[test]
    fn non_finite_rejected() {
        let mut x = gaussian(256, 1.0, 23);
        x[200] = f32::NEG_INFINITY;
        let e = quantize_ggml_par("emb", &x, &[1, 256], GgmlKind::Q4K).unwrap_err();
        assert_eq!(e.to_string(), "tensor emb: contains -inf at index 200");
    }

    #[test]
    fn bytes_round_trip_unaligned() {
        let x = gaussian(4 * 256, 1.0, 24);
        for kind in [GgmlKind::Q4K, GgmlKind::Q8_0, GgmlKind::Q5_1] {
            let q = quantize_ggml("w", &x, &[4, 256], kind).unwrap();
            let bytes = q.data().unwrap().to_vec();
            // Force an odd address, as a view into an mmap could have.
            let mut shifted = vec![0u8; bytes.len() + 1];
            shifted[1..].copy_from_slice(&bytes);
            let back = qtensor_from_bytes("w", kind.dtype(), &shifted[1..], &[4, 256]).unwrap();
            assert_eq!(back.data().unwrap(), bytes);
            assert_eq!(dequantize_qtensor(&back).unwrap(), dequantize_qtensor(&q).unwrap());
            let e = qtensor_from_bytes("w", kind.dtype(), &bytes[1..], &[4, 256]).unwrap_err();
            assert!(e.to_string().contains("expected"), "{e}");
        }
    }
}
