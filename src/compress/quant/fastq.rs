//! Faster, bit-exact ports of candle 0.11's Q8_0 and Q4_K block quantizers (`GgmlType::from_float`
//! in `candle-core/src/quantized/k_quants.rs` and `make_qkx1_quants` in `utils.rs`, MIT/Apache-2.0).
//!
//! Why: candle's versions call `f32::round` (a libm call on baseline x86-64), allocate a vector
//! per 32-weight sub-block and run single-threaded, so Q4_K quantizes at ≈ 0.1 GB/s. These ports
//! keep every floating-point operation and its order (each serial sum stays serial, divisions
//! stay divisions), replace `round` by an exact integer formulation, keep scratch on the stack,
//! run the eight independent sub-block searches of a Q4_K block side by side in SIMD lanes, and
//! are compiled for AVX2 when available (see `simd`). The output bytes are identical to candle's;
//! `ggml.rs` tests that against `QTensor::quantize` on Gaussian and adversarial data.
//!
//! Block layouts written (little-endian, `repr(C)`, as in ggml):
//! Q8_0 = `d: f16, qs: [i8; 32]` (34 bytes); Q4_K = `d: f16, dmin: f16, scales: [u8; 12],
//! qs: [u8; 128]` (144 bytes). Runs on the calling thread.

use half::f16;

use super::simd::{simd_dispatch, ROUND_MAGIC};

/// Bytes of a Q8_0 block.
pub(crate) const Q8_0_BYTES: usize = 34;
/// Bytes of a Q4_K block.
pub(crate) const Q4K_BYTES: usize = 144;

/// `v.round() as i32` (half away from zero, saturating, NaN → 0) without the libm call:
/// truncate, then step away from zero when the exact fractional part is ≥ 0.5. For |v| < 2²³
/// `v − trunc(v)` is exact; above, `v` is an integer and the fraction is 0 (or the cast saturates,
/// as the original does).
#[inline(always)]
fn nearest_int(v: f32) -> i32 {
    let t = v as i32;
    let frac = v - t as f32;
    if frac >= 0.5 {
        t.saturating_add(1)
    } else if frac <= -0.5 {
        t.saturating_sub(1)
    } else {
        t
    }
}

#[inline(always)]
fn q8_0_blocks_g(xs: &[f32], out: &mut [u8]) {
    for (x, o) in xs.chunks_exact(32).zip(out.chunks_exact_mut(Q8_0_BYTES)) {
        // max is order-independent for non-NaN inputs (callers reject NaN) and |x| ≥ +0.
        let mut m = [0f32; 8];
        for c in x.chunks_exact(8) {
            for i in 0..8 {
                m[i] = m[i].max(c[i].abs());
            }
        }
        let amax = m.iter().fold(0f32, |a, &b| a.max(b));
        let d = amax / ((1 << 7) - 1) as f32;
        let id = if d != 0f32 { 1. / d } else { 0. };
        o[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        for (q, &v) in o[2..].iter_mut().zip(x) {
            // candle's `f32::round(x) as i8` saturates and maps NaN to 0: a tiny `d` makes `id`
            // infinite (and 0 · inf = NaN).
            let r = round_away_small((v * id).clamp(-129.0, 128.0));
            let r = if r >= -128.0 {
                if r < 127.0 {
                    r
                } else {
                    127.0
                }
            } else if r < -128.0 {
                -128.0
            } else {
                0.0
            };
            *q = low_byte(r);
        }
    }
}

/// `f32::round` (half away from zero) for |c| < 2²²: round to nearest even with the magic
/// constant (exact), then move the ties that went toward zero one step away.
#[inline(always)]
fn round_away_small(c: f32) -> f32 {
    let r = (c + ROUND_MAGIC) - ROUND_MAGIC;
    let d = c - r;
    // |d| = 0.5 only at ties; d > 0 means rounded down, which is toward zero for positive c.
    r + ((d >= 0.5 && c > 0.0) as i32 - (d <= -0.5 && c < 0.0) as i32) as f32
}

/// `nearest_int(v).clamp(0, hi) as f32` for every `v` (±inf and NaN → as the original), in
/// float lanes only: clamping the input to [−1, hi + 1] first cannot change the clamped result.
#[inline(always)]
fn nearest_clamped(v: f32, hi: f32) -> f32 {
    let r = round_away_small(v.clamp(-1.0, hi + 1.0));
    // NaN fails both comparisons and becomes 0, as `NaN.round() as i32` does.
    if r > 0.0 {
        if r < hi {
            r
        } else {
            hi
        }
    } else {
        0.0
    }
}

/// Low byte of an integral float in [−128, 255].
#[inline(always)]
fn low_byte(r: f32) -> u8 {
    (r + ROUND_MAGIC).to_bits() as u8
}

/// Order-preserving integer key of `f32::total_cmp` (the same transform std uses); it is its own
/// inverse.
#[inline(always)]
fn total_key(bits: i32) -> i32 {
    bits ^ (((bits >> 31) as u32) >> 1) as i32
}

/// candle's `make_qkx1_quants(15, 5, sub_block)` for the eight 32-weight sub-blocks of a Q4_K
/// block at once: lane `j` runs exactly the serial arithmetic of sub-block `j` (same operations,
/// same order, sums seeded like `Iterator::sum` with −0.0), so the eight dependency chains run
/// side by side in SIMD registers instead of one after the other. A lane stops updating after
/// the pass in which its quants did not change, as the original breaks out of its loop.
/// Returns (scales, mins) with `mins[j] = −min_j`.
#[inline(always)]
fn make_qkx1_quants_x8(x: &[f32]) -> ([f32; 8], [f32; 8]) {
    const NMAX: f32 = 15.0;
    let mut xt = [[0f32; 8]; 32];
    for (j, sub) in x.chunks_exact(32).enumerate() {
        for (i, v) in sub.iter().enumerate() {
            xt[i][j] = *v;
        }
    }
    let mut kmin = [i32::MAX; 8];
    let mut kmax = [i32::MIN; 8];
    for row in &xt {
        for j in 0..8 {
            let k = total_key(row[j].to_bits() as i32);
            kmin[j] = kmin[j].min(k);
            kmax[j] = kmax[j].max(k);
        }
    }
    let mut active = [false; 8];
    let mut min = [0f32; 8];
    let mut iscale = [0f32; 8];
    let mut scale = [0f32; 8];
    for j in 0..8 {
        let lo = f32::from_bits(total_key(kmin[j]) as u32);
        let hi = f32::from_bits(total_key(kmax[j]) as u32);
        if hi == lo {
            // The original returns (0.0, 0.0) right away.
            min[j] = -0.0;
            continue;
        }
        active[j] = true;
        // `lo.min(0.)`; the sign of a zero here cannot reach the output.
        min[j] = if lo < 0.0 { lo } else { 0.0 };
        iscale[j] = NMAX / (hi - min[j]);
        scale[j] = 1.0 / iscale[j];
    }
    // Quants as floats: they are small integers, so `li as f32` and the integer sum of squares
    // (< 2²⁴) are exact in f32 and the whole pass stays in float lanes.
    let mut l = [[0f32; 8]; 32];
    for _ in 0..5 {
        if !active.iter().any(|a| *a) {
            break;
        }
        let mut sumlx = [0f32; 8];
        let mut suml2 = [0f32; 8];
        let mut changed = [false; 8];
        for (row, lrow) in xt.iter().zip(l.iter_mut()) {
            for j in 0..8 {
                let d = row[j] - min[j];
                let li = nearest_clamped(iscale[j] * d, NMAX);
                changed[j] |= li != lrow[j];
                lrow[j] = li;
                sumlx[j] += d * li;
                suml2[j] += li * li;
            }
        }
        let mut new_scale = [0f32; 8];
        for j in 0..8 {
            new_scale[j] = sumlx[j] / suml2[j];
        }
        let mut sum = [-0.0f32; 8];
        for (row, lrow) in xt.iter().zip(l.iter()) {
            for j in 0..8 {
                sum[j] += row[j] - new_scale[j] * lrow[j];
            }
        }
        for j in 0..8 {
            if active[j] {
                scale[j] = new_scale[j];
                let m = sum[j] / 32.0;
                min[j] = if m > 0.0 { 0.0 } else { m };
                iscale[j] = 1.0 / new_scale[j];
                active[j] = changed[j];
            }
        }
    }
    (scale, min.map(|m| -m))
}

#[inline(always)]
fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

#[inline(always)]
fn q4k_blocks_g(xs: &[f32], out: &mut [u8]) {
    for (x, o) in xs.chunks_exact(256).zip(out.chunks_exact_mut(Q4K_BYTES)) {
        let (scales, mins) = make_qkx1_quants_x8(x);
        let max_scale = scales.iter().fold(0.0, |max, &val| val.max(max));
        let max_min = mins.iter().fold(0.0, |max, &val| val.max(max));
        let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        let mut sc = [0u8; 12];
        for j in 0..8 {
            let ls = nearest_int(inv_scale * scales[j]).min(63) as u8;
            let lm = nearest_int(inv_min * mins[j]).min(63) as u8;
            if j < 4 {
                sc[j] = ls;
                sc[j + 4] = lm;
            } else {
                sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
                sc[j - 4] |= (ls >> 4) << 6;
                sc[j] |= (lm >> 4) << 6;
            }
        }
        let d = f16::from_f32(max_scale / 63.0);
        let dmin = f16::from_f32(max_min / 63.0);
        let mut l = [0u8; 256];
        for j in 0..8 {
            let (s, m) = get_scale_min_k4(j, &sc);
            let dj = d.to_f32() * s as f32;
            if dj != 0.0 {
                let dm = dmin.to_f32() * m as f32;
                for ii in 0..32 {
                    l[32 * j + ii] = low_byte(nearest_clamped((x[32 * j + ii] + dm) / dj, 15.0));
                }
            }
        }
        o[0..2].copy_from_slice(&d.to_le_bytes());
        o[2..4].copy_from_slice(&dmin.to_le_bytes());
        o[4..16].copy_from_slice(&sc);
        let qs = &mut o[16..];
        for j in (0..256).step_by(64) {
            for i in 0..32 {
                qs[(j / 64) * 32 + i] = l[j + i] | (l[j + i + 32] << 4);
            }
        }
    }
}

simd_dispatch!(pub(crate) fn q8_0_blocks(xs: &[f32], out: &mut [u8]) -> () = q8_0_blocks_g;);
simd_dispatch!(pub(crate) fn q4k_blocks(xs: &[f32], out: &mut [u8]) -> () = q4k_blocks_g;);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_matches_round() {
        let mut vals = vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.5,
            2.5,
            -2.5,
            0.49999997,
            -0.49999997,
            8388607.5,
            8388608.0,
            16777217.0,
            2147483520.0,
            2147483648.0,
            -2147483648.0,
            1e10,
            -1e10,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MIN_POSITIVE,
        ];
        for i in -2000..2000 {
            vals.push(i as f32 * 0.0625 + 0.001 * (i % 7) as f32);
            vals.push(f32::from_bits((0x3f00_0000 + i) as u32)); // around 0.5
        }
        for v in vals {
            assert_eq!(nearest_int(v), v.round() as i32, "{v}");
            for hi in [15, 63] {
                let want = (v.round() as i32).clamp(0, hi);
                assert_eq!(nearest_clamped(v, hi as f32), want as f32, "{v}");
            }
            if v.is_finite() && v.abs() < 4e6 {
                assert_eq!(round_away_small(v), v.round(), "{v}");
            }
        }
    }
}
