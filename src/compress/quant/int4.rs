//! Weight-only int4, group-wise along the row, two values per byte.
//!
//! Rows are the first dim and a row is all later dims flattened (the input dim of a linear
//! weight); the row length must be a multiple of the group size (32, 64, 128 or 256), otherwise
//! [`QuantError::GroupNotDivisible`] tells the caller to fall back. Since groups never straddle
//! rows, the kernels see the tensor as a flat run of groups.
//!
//! Per group of `g` consecutive weights (also in `docs/formats.md`):
//! - symmetric: `scale = max|w| / 7`, `q = clamp(round(w/scale), −8, 7)` (in practice −7…7, the
//!   scale is chosen so that nothing clips), stored as the unsigned nibble `u = q + 8`;
//!   `ŵ = (u − 8) · scale`.
//! - asymmetric: `lo = min(min w, 0)`, `hi = max(max w, 0)`, `scale = (hi − lo) / 15`,
//!   `zp = clamp(round(−lo/scale), 0, 15)`, `u = clamp(round(w/scale + zp), 0, 15)`;
//!   `ŵ = (u − zp) · scale`. 0.0 is exact.
//! - `round` is half-to-even; an all-zero group gets scale 1, zp 0 (sym: u = 8), exact zeros.
//! - Packing: byte `j` of a row holds element `2j` in its low nibble and `2j + 1` in its high
//!   nibble. Scales are f32 `[rows, cols/g]`; zero points are one u8 per group `[rows, cols/g]`
//!   (not nibble-packed: at g ≥ 32 they cost ≤ 0.25 bit/weight and stay trivially addressable).
//!
//! Kernels are dispatched to AVX2 at run time (see `simd`); `quantize_int4_par` splits groups
//! over the current rayon pool.

use rayon::prelude::*;

use super::int8::sym_params;
use super::scheme::INT4_GROUP_SIZES;
use super::simd::{round_u8, simd_dispatch};
use super::{check_len, non_finite_error, rows_cols, QuantError, Result, PAR_MIN_ELEMS};

/// An int4-quantized tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Int4Data {
    /// Original shape.
    pub shape: Vec<usize>,
    /// Weights per scale.
    pub group_size: usize,
    /// Nibbles, row-major, `[rows, cols/2]`, low nibble = even index.
    pub packed: Vec<u8>,
    /// One scale per group, `[rows, cols/group_size]`.
    pub scales: Vec<f32>,
    /// One zero point (0…15) per group when asymmetric.
    pub zero_points: Option<Vec<u8>>,
}

impl Int4Data {
    /// Whether there are no zero points.
    pub fn symmetric(&self) -> bool {
        self.zero_points.is_none()
    }

    /// Bytes taken by nibbles, scales and zero points.
    pub fn stored_bytes(&self) -> usize {
        self.packed.len() + 4 * self.scales.len() + self.zero_points.as_ref().map_or(0, Vec::len)
    }

    /// Element count.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

const MAX_GROUP: usize = 256;
const LANES: usize = 8;

/// Fills `u` with the nibble values of one group and returns (scale, zp); `None` on NaN/±inf.
// `x - x` is 0 for finite x and NaN for NaN/±inf: the finiteness check rides along.
#[allow(clippy::eq_op)]
#[inline(always)]
fn group_sym(x: &[f32], u: &mut [u8]) -> Option<f32> {
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
    let (mut mm, mut zz) = (0f32, 0f32);
    for &v in chunks.remainder() {
        let a = v.abs();
        mm = if a > mm { a } else { mm };
        zz += v - v;
    }
    for i in 0..LANES {
        mm = if m[i] > mm { m[i] } else { mm };
        zz += z[i];
    }
    if zz != 0.0 {
        return None;
    }
    let (scale, inv) = sym_params(mm, 7.0);
    for (o, &v) in u.iter_mut().zip(x) {
        *o = round_u8((v * inv).clamp(-8.0, 7.0) + 8.0);
    }
    Some(scale)
}

// `x - x` is 0 for finite x and NaN for NaN/±inf: the finiteness check rides along.
#[allow(clippy::eq_op)]
#[inline(always)]
fn group_asym(x: &[f32], u: &mut [u8]) -> Option<(f32, u8)> {
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
    if zz != 0.0 {
        return None;
    }
    let scale = (h - l) / 15.0;
    let (scale, inv, zp) = if scale >= f32::MIN_POSITIVE && scale.is_finite() {
        let inv = 1.0 / scale;
        (scale, inv, (-l * inv).round_ties_even().clamp(0.0, 15.0))
    } else {
        (1.0, 0.0, 0.0)
    };
    for (o, &v) in u.iter_mut().zip(x) {
        *o = round_u8((v * inv + zp).clamp(0.0, 15.0));
    }
    Some((scale, zp as u8))
}

#[inline(always)]
fn pack_into(u: &[u8], packed: &mut [u8]) {
    for (p, pair) in packed.iter_mut().zip(u.chunks_exact(2)) {
        *p = pair[0] | (pair[1] << 4);
    }
}

#[inline(always)]
fn groups_sym_g(x: &[f32], group: usize, packed: &mut [u8], scales: &mut [f32]) -> bool {
    let mut u = [0u8; MAX_GROUP];
    for ((g, p), s) in x.chunks_exact(group).zip(packed.chunks_exact_mut(group / 2)).zip(scales) {
        match group_sym(g, &mut u[..group]) {
            Some(scale) => *s = scale,
            None => return false,
        }
        pack_into(&u[..group], p);
    }
    true
}

#[inline(always)]
fn groups_asym_g(x: &[f32], group: usize, packed: &mut [u8], scales: &mut [f32], zps: &mut [u8]) -> bool {
    let mut u = [0u8; MAX_GROUP];
    for (((g, p), s), z) in x.chunks_exact(group).zip(packed.chunks_exact_mut(group / 2)).zip(scales).zip(zps) {
        match group_asym(g, &mut u[..group]) {
            Some((scale, zp)) => (*s, *z) = (scale, zp),
            None => return false,
        }
        pack_into(&u[..group], p);
    }
    true
}

simd_dispatch!(
    fn groups_sym(x: &[f32], group: usize, packed: &mut [u8], scales: &mut [f32]) -> bool
        = groups_sym_g;
);
simd_dispatch!(
    fn groups_asym(x: &[f32], group: usize, packed: &mut [u8], scales: &mut [f32], zps: &mut [u8])
        -> bool = groups_asym_g;
);

/// Quantizes `data` (row-major, `shape`) to group-wise int4 on the calling thread.
pub fn quantize_int4(
    name: &str,
    data: &[f32],
    shape: &[usize],
    group_size: usize,
    symmetric: bool,
) -> Result<Int4Data> {
    quantize_impl(name, data, shape, group_size, symmetric, false, true)
}

/// Like [`quantize_int4`], with groups split across the current rayon pool. Output is identical.
pub fn quantize_int4_par(
    name: &str,
    data: &[f32],
    shape: &[usize],
    group_size: usize,
    symmetric: bool,
) -> Result<Int4Data> {
    quantize_impl(name, data, shape, group_size, symmetric, true, true)
}

pub(crate) fn quantize_impl(
    name: &str,
    data: &[f32],
    shape: &[usize],
    group: usize,
    symmetric: bool,
    par: bool,
    simd: bool,
) -> Result<Int4Data> {
    if !INT4_GROUP_SIZES.contains(&group) {
        return Err(QuantError::InvalidGroupSize(group));
    }
    check_len(name, shape, data.len())?;
    let (_, cols) = rows_cols(name, shape)?;
    if cols % group != 0 {
        return Err(QuantError::GroupNotDivisible { tensor: name.to_string(), cols, group_size: group });
    }
    let n_groups = data.len() / group;
    let mut packed = vec![0u8; data.len() / 2];
    let mut scales = vec![1f32; n_groups];
    let mut zps = (!symmetric).then(|| vec![0u8; n_groups]);
    let ok = if par {
        let threads = rayon::current_num_threads().max(1);
        let gpt = n_groups.div_ceil(4 * threads).max(PAR_MIN_ELEMS / group).max(1);
        let xs = data.par_chunks(gpt * group);
        let ps = packed.par_chunks_mut(gpt * group / 2);
        let ss = scales.par_chunks_mut(gpt);
        match zps.as_mut() {
            None => xs.zip(ps).zip(ss).all(|((x, p), s)| groups_sym(simd, x, group, p, s)),
            Some(z) => xs
                .zip(ps)
                .zip(ss)
                .zip(z.par_chunks_mut(gpt))
                .all(|(((x, p), s), z)| groups_asym(simd, x, group, p, s, z)),
        }
    } else {
        match zps.as_mut() {
            None => groups_sym(simd, data, group, &mut packed, &mut scales),
            Some(z) => groups_asym(simd, data, group, &mut packed, &mut scales, z),
        }
    };
    if !ok {
        return Err(non_finite_error(name, data, 0));
    }
    Ok(Int4Data { shape: shape.to_vec(), group_size: group, packed, scales, zero_points: zps })
}

/// Dequantizes to f32: `ŵ = (u − 8) · scale` (symmetric) or `(u − zp) · scale`.
pub fn dequantize_int4(t: &Int4Data) -> Vec<f32> {
    let mut out = vec![0f32; t.packed.len() * 2];
    let half = t.group_size / 2;
    for (gi, (o, p)) in out.chunks_exact_mut(t.group_size).zip(t.packed.chunks_exact(half)).enumerate() {
        let s = t.scales[gi];
        let zp = t.zero_points.as_ref().map_or(8, |z| z[gi] as i32);
        for (o, &b) in o.chunks_exact_mut(2).zip(p) {
            o[0] = ((b & 0x0F) as i32 - zp) as f32 * s;
            o[1] = ((b >> 4) as i32 - zp) as f32 * s;
        }
    }
    out
}

/// Packs 4-bit values (0…15, higher bits ignored) two per byte, low nibble = even index. An odd
/// count leaves the last high nibble zero.
pub fn pack_nibbles(values: &[u8]) -> Vec<u8> {
    values.chunks(2).map(|p| (p[0] & 0x0F) | (p.get(1).copied().unwrap_or(0) << 4)).collect()
}

/// Inverse of [`pack_nibbles`]: the first `n` 4-bit values of `packed`.
pub fn unpack_nibbles(packed: &[u8], n: usize) -> Vec<u8> {
    packed.iter().flat_map(|b| [b & 0x0F, b >> 4]).take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::quant::testutil::{gaussian, rel_error};

    #[test]
    fn nibble_packing_hand_computed() {
        assert_eq!(pack_nibbles(&[0x1, 0x2, 0xF, 0x0, 0x7]), vec![0x21, 0x0F, 0x07]);
        assert_eq!(unpack_nibbles(&[0x21, 0x0F, 0x07], 5), vec![1, 2, 15, 0, 7]);
        let all: Vec<u8> = (0..16).collect();
        assert_eq!(unpack_nibbles(&pack_nibbles(&all), 16), all);
    }

    #[test]
    fn hand_computed_symmetric_group() {
        // max 7 → scale 1: q = round(w) (ties to even), u = q + 8.
        let mut x = vec![0f32; 32];
        x[..6].copy_from_slice(&[7.0, -7.0, 0.5, 1.5, -2.5, 3.2]);
        let t = quantize_int4("w", &x, &[1, 32], 32, true).unwrap();
        assert_eq!(t.scales, vec![1.0]);
        // u = [15, 1, 8, 10, 6, 11, 8, 8, …]
        assert_eq!(&t.packed[..4], &[0x1F, 0xA8, 0xB6, 0x88]);
        assert!(t.packed[4..].iter().all(|b| *b == 0x88));
        let d = dequantize_int4(&t);
        assert_eq!(&d[..6], &[7.0, -7.0, 0.0, 2.0, -2.0, 3.0]);
    }

    #[test]
    fn hand_computed_asymmetric_group() {
        // range [−5, 10] → scale 1, zp 5; u = round(w) + 5.
        let mut x = vec![1f32; 32];
        x[..4].copy_from_slice(&[-5.0, 10.0, 0.0, 2.5]);
        let t = quantize_int4("w", &x, &[1, 32], 32, false).unwrap();
        assert_eq!(t.scales, vec![1.0]);
        assert_eq!(t.zero_points, Some(vec![5]));
        // u = [0, 15, 5, round(7.5) = 8, 6, 6, …]
        assert_eq!(&t.packed[..3], &[0xF0, 0x85, 0x66]);
        let d = dequantize_int4(&t);
        assert_eq!(&d[..4], &[-5.0, 10.0, 0.0, 3.0]);
    }

    #[test]
    fn gaussian_error_bounds_per_group_size() {
        let (rows, cols) = (16, 512);
        let x = gaussian(rows * cols, 0.02, 11);
        let mut prev = 0.0;
        for g in [32, 64, 128] {
            let sym = rel_error(&x, &dequantize_int4(&quantize_int4("w", &x, &[rows, cols], g, true).unwrap()));
            let asym = rel_error(&x, &dequantize_int4(&quantize_int4("w", &x, &[rows, cols], g, false).unwrap()));
            // Gaussian: step ≈ 2·max/15 with max ≈ 2.5–3.2σ → ≈ 0.10–0.13 rel error.
            let bound = match g {
                32 => 0.12,
                64 => 0.13,
                _ => 0.145,
            };
            assert!(sym < bound, "g{g} sym {sym}");
            assert!(asym < bound, "g{g} asym {asym}");
            assert!(sym > 0.05, "g{g} sym {sym} suspiciously small");
            assert!(sym >= prev, "larger groups should not be more accurate");
            prev = sym;
        }
    }

    #[test]
    fn all_zero_groups_are_exact() {
        let mut x = gaussian(2 * 64, 1.0, 12);
        x[64..].iter_mut().for_each(|v| *v = 0.0);
        for sym in [true, false] {
            let t = quantize_int4("w", &x, &[2, 64], 32, sym).unwrap();
            let d = dequantize_int4(&t);
            assert!(d[64..].iter().all(|v| *v == 0.0));
            assert_eq!(&t.scales[2..], &[1.0, 1.0]);
        }
    }

    #[test]
    fn errors_for_bad_input() {
        let x = gaussian(2 * 48, 1.0, 13);
        let e = quantize_int4("fc.weight", &x, &[2, 48], 32, true).unwrap_err();
        assert!(matches!(e, QuantError::GroupNotDivisible { cols: 48, group_size: 32, .. }));
        assert!(e.to_string().starts_with("tensor fc.weight: row length 48"), "{e}");
        assert!(matches!(quantize_int4("w", &x, &[2, 48], 48, true), Err(QuantError::InvalidGroupSize(48))));
        let mut x = gaussian(64, 1.0, 13);
        x[40] = f32::NAN;
        for sym in [true, false] {
            let e = quantize_int4("w", &x, &[1, 64], 32, sym).unwrap_err();
            assert_eq!(e.to_string(), "tensor w: contains NaN at index 40");
        }
    }

    #[test]
    fn simd_scalar_and_parallel_agree() {
        let (rows, cols) = (40, 256);
        let mut x = gaussian(rows * cols, 0.1, 14);
        for (i, v) in x[..64].iter_mut().enumerate() {
            *v = (i as f32 - 32.0) * 0.25; // scale 1.0 for sym: exact ties
        }
        for sym in [true, false] {
            for g in [32, 128] {
                let a = quantize_impl("w", &x, &[rows, cols], g, sym, false, true).unwrap();
                let b = quantize_impl("w", &x, &[rows, cols], g, sym, false, false).unwrap();
                let c = quantize_impl("w", &x, &[rows, cols], g, sym, true, true).unwrap();
                assert_eq!(a, b, "simd vs scalar g{g} sym={sym}");
                assert_eq!(a, c, "parallel g{g} sym={sym}");
            }
        }
    }
}
