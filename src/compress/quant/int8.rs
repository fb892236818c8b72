//! Weight-only int8: symmetric or asymmetric, one scale per output row or per tensor.
//!
//! Definitions (also in `docs/formats.md`), with rows = first dim and a row = all later dims:
//! - symmetric: `scale = max|w| / 127`, `q = clamp(round(w · (1/scale)), −127, 127)`,
//!   `ŵ = q · scale`, no zero point.
//! - asymmetric: `lo = min(min w, 0)`, `hi = max(max w, 0)`, `scale = (hi − lo) / 255`,
//!   `zp = clamp(round(−128 − lo/scale), −128, 127)` (an i8), `q = clamp(round(w/scale + zp),
//!   −128, 127)`, `ŵ = (q − zp) · scale`. This is uint8-style affine quantization shifted by −128
//!   into i8 (as compressed-tensors stores it); 0.0 is exactly representable (q = zp).
//! - `round` is round-half-to-even (numpy / torch `round`); `1/scale` is computed once per row.
//! - An all-zero row gets `scale = 1`, `zp = 0`, all `q = 0`, so it dequantizes to exact zeros.
//!   A row whose max |w| is below ~1.5e-36 (scale not a normal f32) is treated the same way.
//!
//! Each row is scanned once for its range and NaN/±inf (fused, so validation costs no extra
//! memory pass), then quantized while it is still in cache. Kernels are dispatched to AVX2 at run
//! time (see `simd`). The plain functions run on the calling thread; `*_par` split rows over the
//! current rayon pool.

use rayon::prelude::*;

use super::scheme::Granularity;
use super::simd::{round_i8, simd_dispatch};
use super::{check_len, non_finite_error, rows_cols, rows_per_task, Result, PAR_MIN_ELEMS};

/// An int8-quantized tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Data {
    /// Original shape.
    pub shape: Vec<usize>,
    /// Quantized values, row-major, same element count as the shape.
    pub values: Vec<i8>,
    /// One scale per row (per-channel) or one (per-tensor).
    pub scales: Vec<f32>,
    /// Zero points, same length as `scales`; `None` when symmetric.
    pub zero_points: Option<Vec<i8>>,
    /// Granularity actually used (per-channel on a rank-1 tensor is per-tensor).
    pub granularity: Granularity,
}

impl Int8Data {
    /// Number of rows the scales refer to.
    pub fn rows(&self) -> usize {
        self.scales.len()
    }

    /// Bytes taken by values, scales and zero points.
    pub fn stored_bytes(&self) -> usize {
        self.values.len() + 4 * self.scales.len() + self.zero_points.as_ref().map_or(0, Vec::len)
    }
}

const LANES: usize = 8;

/// max |x| and whether every value is finite (x − x is NaN exactly for NaN and ±inf).
// `x - x` is 0 for finite x and NaN for NaN/±inf: the finiteness check rides along.
#[allow(clippy::eq_op)]
#[inline(always)]
fn absmax_g(x: &[f32]) -> (f32, bool) {
    let mut m = [0f32; LANES];
    let mut z = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            let a = c[i].abs();
            m[i] = if a > m[i] { a } else { m[i] };
            z[i] += c[i] - c[i];
        }
    }
    let mut mm = 0f32;
    let mut zz = 0f32;
    for &v in chunks.remainder() {
        let a = v.abs();
        mm = if a > mm { a } else { mm };
        zz += v - v;
    }
    for i in 0..LANES {
        mm = if m[i] > mm { m[i] } else { mm };
        zz += z[i];
    }
    (mm, zz == 0.0)
}

/// (min(min x, 0), max(max x, 0)) and whether every value is finite.
// `x - x` is 0 for finite x and NaN for NaN/±inf: the finiteness check rides along.
#[allow(clippy::eq_op)]
#[inline(always)]
fn minmax_g(x: &[f32]) -> (f32, f32, bool) {
    let mut lo = [0f32; LANES];
    let mut hi = [0f32; LANES];
    let mut z = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            let v = c[i];
            lo[i] = if v < lo[i] { v } else { lo[i] };
            hi[i] = if v > hi[i] { v } else { hi[i] };
            z[i] += v - v;
        }
    }
    let (mut l, mut h, mut zz) = (0f32, 0f32, 0f32);
    for &v in chunks.remainder() {
        l = if v < l { v } else { l };
        h = if v > h { v } else { h };
        zz += v - v;
    }
    for i in 0..LANES {
        l = if lo[i] < l { lo[i] } else { l };
        h = if hi[i] > h { hi[i] } else { h };
        zz += z[i];
    }
    (l, h, zz == 0.0)
}

#[inline(always)]
fn apply_sym_g(x: &[f32], inv: f32, q: &mut [i8]) {
    for (o, &v) in q.iter_mut().zip(x) {
        *o = round_i8((v * inv).clamp(-127.0, 127.0));
    }
}

#[inline(always)]
fn apply_asym_g(x: &[f32], inv: f32, zp: f32, q: &mut [i8]) {
    for (o, &v) in q.iter_mut().zip(x) {
        *o = round_i8((v * inv + zp).clamp(-128.0, 127.0));
    }
}

/// (scale, 1/scale) of a symmetric row with max |w| = `m`.
#[inline(always)]
pub(crate) fn sym_params(m: f32, qmax: f32) -> (f32, f32) {
    let scale = m / qmax;
    if scale >= f32::MIN_POSITIVE {
        (scale, 1.0 / scale)
    } else {
        (1.0, 0.0)
    }
}

/// (scale, 1/scale, zero point) of an asymmetric int8 row with range [lo, hi] ∋ 0.
#[inline(always)]
fn asym_params(lo: f32, hi: f32) -> (f32, f32, f32) {
    let scale = (hi - lo) / 255.0;
    if scale >= f32::MIN_POSITIVE && scale.is_finite() {
        let inv = 1.0 / scale;
        let zp = (-128.0 - lo * inv).round_ties_even().clamp(-128.0, 127.0);
        (scale, inv, zp)
    } else {
        (1.0, 0.0, 0.0)
    }
}

#[inline(always)]
fn rows_sym_g(x: &[f32], cols: usize, q: &mut [i8], scales: &mut [f32]) -> bool {
    for ((row, qrow), s) in x.chunks_exact(cols).zip(q.chunks_exact_mut(cols)).zip(scales) {
        let (m, ok) = absmax_g(row);
        if !ok {
            return false;
        }
        let (scale, inv) = sym_params(m, 127.0);
        *s = scale;
        apply_sym_g(row, inv, qrow);
    }
    true
}

#[inline(always)]
fn rows_asym_g(x: &[f32], cols: usize, q: &mut [i8], scales: &mut [f32], zps: &mut [i8]) -> bool {
    for (((row, qrow), s), z) in x.chunks_exact(cols).zip(q.chunks_exact_mut(cols)).zip(scales).zip(zps) {
        let (lo, hi, ok) = minmax_g(row);
        if !ok {
            return false;
        }
        let (scale, inv, zp) = asym_params(lo, hi);
        *s = scale;
        *z = zp as i8;
        apply_asym_g(row, inv, zp, qrow);
    }
    true
}

simd_dispatch!(pub(crate) fn absmax(x: &[f32]) -> (f32, bool) = absmax_g;);
simd_dispatch!(fn minmax(x: &[f32]) -> (f32, f32, bool) = minmax_g;);
simd_dispatch!(fn apply_sym(x: &[f32], inv: f32, q: &mut [i8]) -> () = apply_sym_g;);
simd_dispatch!(fn apply_asym(x: &[f32], inv: f32, zp: f32, q: &mut [i8]) -> () = apply_asym_g;);
simd_dispatch!(
    fn rows_sym(x: &[f32], cols: usize, q: &mut [i8], scales: &mut [f32]) -> bool = rows_sym_g;
);
simd_dispatch!(
    fn rows_asym(x: &[f32], cols: usize, q: &mut [i8], scales: &mut [f32], zps: &mut [i8]) -> bool
        = rows_asym_g;
);

/// Quantizes `data` (row-major, `shape`) to int8 on the calling thread. Errors name `name` for
/// NaN/±inf values and shape mismatches.
pub fn quantize_int8(
    name: &str,
    data: &[f32],
    shape: &[usize],
    symmetric: bool,
    granularity: Granularity,
) -> Result<Int8Data> {
    quantize_impl(name, data, shape, symmetric, granularity, false, true)
}

/// Like [`quantize_int8`], with rows split across the current rayon pool. Output is identical.
pub fn quantize_int8_par(
    name: &str,
    data: &[f32],
    shape: &[usize],
    symmetric: bool,
    granularity: Granularity,
) -> Result<Int8Data> {
    quantize_impl(name, data, shape, symmetric, granularity, true, true)
}

/// The kernel driver; `simd = false` forces the baseline instance (for the equality test).
pub(crate) fn quantize_impl(
    name: &str,
    data: &[f32],
    shape: &[usize],
    symmetric: bool,
    granularity: Granularity,
    par: bool,
    simd: bool,
) -> Result<Int8Data> {
    check_len(name, shape, data.len())?;
    let (rows, cols) = rows_cols(name, shape)?;
    let granularity = if shape.len() < 2 { Granularity::PerTensor } else { granularity };
    let mut values = vec![0i8; data.len()];
    let ok = match granularity {
        Granularity::PerChannel => {
            let mut scales = vec![1f32; rows];
            let mut zps = (!symmetric).then(|| vec![0i8; rows]);
            let ok = if cols == 0 {
                true
            } else if par {
                let rpt = rows_per_task(rows, cols);
                let xs = data.par_chunks(rpt * cols);
                let qs = values.par_chunks_mut(rpt * cols);
                let ss = scales.par_chunks_mut(rpt);
                match zps.as_mut() {
                    None => xs.zip(qs).zip(ss).all(|((x, q), s)| rows_sym(simd, x, cols, q, s)),
                    Some(z) => xs
                        .zip(qs)
                        .zip(ss)
                        .zip(z.par_chunks_mut(rpt))
                        .all(|(((x, q), s), z)| rows_asym(simd, x, cols, q, s, z)),
                }
            } else {
                match zps.as_mut() {
                    None => rows_sym(simd, data, cols, &mut values, &mut scales),
                    Some(z) => rows_asym(simd, data, cols, &mut values, &mut scales, z),
                }
            };
            ok.then_some((scales, zps))
        }
        Granularity::PerTensor => per_tensor(data, &mut values, symmetric, par, simd),
    };
    let Some((scales, zero_points)) = ok else {
        return Err(non_finite_error(name, data, 0));
    };
    Ok(Int8Data { shape: shape.to_vec(), values, scales, zero_points, granularity })
}

type ScalesZps = (Vec<f32>, Option<Vec<i8>>);

/// One range pass over the whole tensor, then one quantize pass; `None` on NaN/±inf.
fn per_tensor(data: &[f32], q: &mut [i8], symmetric: bool, par: bool, simd: bool) -> Option<ScalesZps> {
    let chunk = PAR_MIN_ELEMS.max(data.len().div_ceil(4 * rayon::current_num_threads().max(1)));
    if symmetric {
        let (m, ok) = if par {
            data.par_chunks(chunk).map(|c| absmax(simd, c)).reduce(|| (0.0, true), |a, b| (a.0.max(b.0), a.1 && b.1))
        } else {
            absmax(simd, data)
        };
        if !ok {
            return None;
        }
        let (scale, inv) = sym_params(m, 127.0);
        if par {
            data.par_chunks(chunk).zip(q.par_chunks_mut(chunk)).for_each(|(x, q)| apply_sym(simd, x, inv, q));
        } else {
            apply_sym(simd, data, inv, q);
        }
        Some((vec![scale], None))
    } else {
        let (lo, hi, ok) = if par {
            data.par_chunks(chunk)
                .map(|c| minmax(simd, c))
                .reduce(|| (0.0, 0.0, true), |a, b| (a.0.min(b.0), a.1.max(b.1), a.2 && b.2))
        } else {
            minmax(simd, data)
        };
        if !ok {
            return None;
        }
        let (scale, inv, zp) = asym_params(lo, hi);
        if par {
            data.par_chunks(chunk).zip(q.par_chunks_mut(chunk)).for_each(|(x, q)| apply_asym(simd, x, inv, zp, q));
        } else {
            apply_asym(simd, data, inv, zp, q);
        }
        Some((vec![scale], Some(vec![zp as i8])))
    }
}

/// Dequantizes to f32: `ŵ = (q − zp) · scale` with the row's scale and zero point.
pub fn dequantize_int8(t: &Int8Data) -> Vec<f32> {
    let mut out = vec![0f32; t.values.len()];
    let rows = t.scales.len().max(1);
    let cols = t.values.len() / rows;
    if cols == 0 {
        return out;
    }
    for (r, (o, q)) in out.chunks_exact_mut(cols).zip(t.values.chunks_exact(cols)).enumerate() {
        let s = t.scales[r];
        match &t.zero_points {
            None => o.iter_mut().zip(q).for_each(|(o, &q)| *o = q as f32 * s),
            Some(z) => {
                let z = z[r] as i32;
                o.iter_mut().zip(q).for_each(|(o, &q)| *o = (q as i32 - z) as f32 * s)
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::quant::testutil::{gaussian, rel_error};
    use crate::compress::quant::QuantError;

    const PC: Granularity = Granularity::PerChannel;
    const PT: Granularity = Granularity::PerTensor;

    #[test]
    fn hand_computed_symmetric_row() {
        // max 127 → scale 1 exactly, so the .5 ties are exact: 0.5 → 0, 1.5 → 2, −2.5 → −2.
        let x = [127.0, 0.5, 1.5, -2.5, -127.0, 0.0, 50.4, -33.6];
        let t = quantize_int8("w", &x, &[1, 8], true, PC).unwrap();
        assert_eq!(t.scales, vec![1.0]);
        assert_eq!(t.values, vec![127, 0, 2, -2, -127, 0, 50, -34]);
        assert!(t.zero_points.is_none());
    }

    #[test]
    fn hand_computed_asymmetric_row() {
        // range [−102, 153] → scale 1, zp = −128 + 102 = −26; 0.5 − 26 = −25.5 ties to −26.
        let x = [-102.0, 153.0, 0.0, 0.5, 2.5, 7.2];
        let t = quantize_int8("w", &x, &[1, 6], false, PC).unwrap();
        assert_eq!(t.scales, vec![1.0]);
        assert_eq!(t.zero_points, Some(vec![-26]));
        assert_eq!(t.values, vec![-128, 127, -26, -26, -24, -19]);
        let d = dequantize_int8(&t);
        assert_eq!(d, vec![-102.0, 153.0, 0.0, 0.0, 2.0, 7.0]);
    }

    #[test]
    fn gaussian_error_bounds() {
        let (rows, cols) = (48, 320);
        let mut x = gaussian(rows * cols, 0.05, 1);
        // Give rows different magnitudes so per-channel beats per-tensor.
        for (r, row) in x.chunks_mut(cols).enumerate() {
            let f = 1.0 + (r % 7) as f32;
            row.iter_mut().for_each(|v| *v *= f);
        }
        let shape = [rows, cols];
        let err = |sym, g| {
            let t = quantize_int8("w", &x, &shape, sym, g).unwrap();
            rel_error(&x, &dequantize_int8(&t))
        };
        let pc_sym = err(true, PC);
        let pc_asym = err(false, PC);
        let pt_sym = err(true, PT);
        let pt_asym = err(false, PT);
        assert!(pc_sym < 0.01, "{pc_sym}");
        assert!(pc_asym < 0.01, "{pc_asym}");
        assert!(pt_sym < 0.03, "{pt_sym}");
        assert!(pt_asym < 0.03, "{pt_asym}");
        assert!(pc_sym < pt_sym && pc_asym < pt_asym);
        // Sanity that it quantized at all: the error is not zero either.
        assert!(pc_sym > 1e-4);
    }

    #[test]
    fn conv_weight_rows_are_out_channels() {
        let shape = [4, 3, 3, 3];
        let mut x = gaussian(4 * 27, 1.0, 2);
        x[27..54].iter_mut().for_each(|v| *v *= 100.0);
        let t = quantize_int8("conv.weight", &x, &shape, true, PC).unwrap();
        assert_eq!(t.scales.len(), 4);
        assert!(t.scales[1] > 50.0 * t.scales[0]);
        assert!(rel_error(&x, &dequantize_int8(&t)) < 0.01);
    }

    #[test]
    fn all_zero_rows_dequantize_exactly() {
        let mut x = gaussian(3 * 40, 1.0, 3);
        x[40..80].iter_mut().for_each(|v| *v = 0.0);
        for sym in [true, false] {
            for g in [PC, PT] {
                let zeros = vec![0f32; 120];
                for data in [&x[..], &zeros[..]] {
                    let t = quantize_int8("w", data, &[3, 40], sym, g).unwrap();
                    let d = dequantize_int8(&t);
                    assert!(t.scales.iter().all(|s| *s > 0.0 && s.is_finite()));
                    if g == PC || data.iter().all(|v| *v == 0.0) {
                        let r = if data[0] == 0.0 { 0..120 } else { 40..80 };
                        assert!(t.values[r.clone()].iter().all(|q| *q == 0), "{sym} {g:?}");
                        assert!(d[r].iter().all(|v| *v == 0.0));
                    }
                }
            }
        }
    }

    #[test]
    fn non_finite_values_are_rejected_with_name_and_index() {
        for (bad, what) in [(f32::NAN, "NaN"), (f32::INFINITY, "+inf"), (f32::NEG_INFINITY, "-inf")] {
            let mut x = gaussian(6 * 33, 1.0, 4);
            x[2 * 33 + 5] = bad;
            x[5 * 33] = bad;
            for sym in [true, false] {
                for g in [PC, PT] {
                    for par in [false, true] {
                        let e = quantize_impl("fc1.weight", &x, &[6, 33], sym, g, par, true).unwrap_err();
                        match &e {
                            QuantError::NonFinite { tensor, index, what: w } => {
                                assert_eq!(tensor, "fc1.weight");
                                assert_eq!(*index, 71);
                                assert_eq!(*w, what);
                            }
                            other => panic!("{other:?}"),
                        }
                        assert_eq!(e.to_string(), format!("tensor fc1.weight: contains {what} at index 71"));
                    }
                }
            }
        }
    }

    #[test]
    fn simd_and_scalar_agree_bit_for_bit() {
        // Odd widths exercise the remainders; the ramp row produces exact .5 ties.
        let (rows, cols) = (9, 203);
        let mut x = gaussian(rows * cols, 0.3, 5);
        for (i, v) in x[..cols].iter_mut().enumerate() {
            *v = (i as f32 - 101.0) * 0.5;
        }
        for sym in [true, false] {
            for g in [PC, PT] {
                let a = quantize_impl("w", &x, &[rows, cols], sym, g, false, true).unwrap();
                let b = quantize_impl("w", &x, &[rows, cols], sym, g, false, false).unwrap();
                assert_eq!(a, b, "sym={sym} {g:?}");
                let c = quantize_impl("w", &x, &[rows, cols], sym, g, true, true).unwrap();
                assert_eq!(a, c, "parallel sym={sym} {g:?}");
            }
        }
    }

    #[test]
    fn parallel_equals_serial_on_many_rows() {
        let (rows, cols) = (300, 256);
        let x = gaussian(rows * cols, 1.0, 6);
        crate::compress::quant::with_threads(2, || {
            for sym in [true, false] {
                for g in [PC, PT] {
                    let a = quantize_int8("w", &x, &[rows, cols], sym, g).unwrap();
                    let b = quantize_int8_par("w", &x, &[rows, cols], sym, g).unwrap();
                    assert_eq!(a, b);
                }
            }
        })
        .unwrap();
    }

    #[test]
    fn shapes_edge_cases() {
        let t = quantize_int8("b", &[0.5, -1.0], &[2], true, PC).unwrap();
        assert_eq!(t.granularity, PT);
        assert_eq!(t.values, vec![64, -127]);
        let t = quantize_int8("e", &[], &[0, 16], true, PC).unwrap();
        assert!(t.values.is_empty() && t.scales.is_empty());
        let t = quantize_int8("e", &[], &[3, 0], false, PC).unwrap();
        assert_eq!(t.scales, vec![1.0; 3]);
        assert!(matches!(quantize_int8("s", &[1.0], &[], true, PC), Err(QuantError::Scalar { .. })));
        let e = quantize_int8("m", &[1.0; 5], &[2, 3], true, PC).unwrap_err();
        assert!(e.to_string().contains("5 values do not match shape [2, 3]"), "{e}");
    }
}
