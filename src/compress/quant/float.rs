//! f16 and bf16 casts, round to nearest even, bit-identical to the `half` crate's conversions
//! (tested): f16 through the F16C instruction when the CPU has it (else `half`), bf16 through a
//! vectorised port of `half`'s `bf16::from_f32`. Output buffers come zeroed from calloc, and each
//! 8192-value chunk is scanned right after conversion, while it is in cache.
//!
//! Validation is done on the *output*, which is half the size of the input: a half value with
//! all exponent bits set came from a NaN/±inf input (→ [`QuantError::NonFinite`]) or from a finite
//! input too large for the type (→ [`QuantError::F16Overflow`]; bf16 has f32's range, so only
//! values within half an ulp of `f32::MAX` overflow it, reported the same way). `*_par` variants
//! convert chunks on the current rayon pool.

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use half::vec::HalfBitsVecExt;
use half::{bf16, f16};
use rayon::prelude::*;

use super::simd::simd_dispatch;
use super::{non_finite_error, QuantError, Result, PAR_MIN_ELEMS};

/// A tensor cast to 16-bit floats.
#[derive(Debug, Clone, PartialEq)]
pub enum HalfData {
    /// IEEE binary16.
    F16 {
        /// Original shape.
        shape: Vec<usize>,
        /// Row-major values.
        values: Vec<f16>,
    },
    /// bfloat16.
    Bf16 {
        /// Original shape.
        shape: Vec<usize>,
        /// Row-major values.
        values: Vec<bf16>,
    },
}

impl HalfData {
    /// The tensor's shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            HalfData::F16 { shape, .. } | HalfData::Bf16 { shape, .. } => shape,
        }
    }

    /// Back to f32 (exact).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            HalfData::F16 { values, .. } => f16_to_f32(values),
            HalfData::Bf16 { values, .. } => bf16_to_f32(values),
        }
    }

    /// The raw 16-bit patterns, little-endian, as stored in safetensors.
    pub fn le_bytes(&self) -> Vec<u8> {
        let bits: &[u16] = match self {
            HalfData::F16 { values, .. } => values.reinterpret_cast(),
            HalfData::Bf16 { values, .. } => values.reinterpret_cast(),
        };
        bits.iter().flat_map(|b| b.to_le_bytes()).collect()
    }
}

/// Casts to f16 on the calling thread. Errors on NaN/±inf and on |w| > 65504.
pub fn to_f16(name: &str, data: &[f32]) -> Result<Vec<f16>> {
    Ok(convert(name, data, false, Kind::F16)?.reinterpret_into())
}

/// Like [`to_f16`], converting chunks on the current rayon pool.
pub fn to_f16_par(name: &str, data: &[f32]) -> Result<Vec<f16>> {
    Ok(convert(name, data, true, Kind::F16)?.reinterpret_into())
}

/// Casts to bf16 on the calling thread. Errors on NaN/±inf.
pub fn to_bf16(name: &str, data: &[f32]) -> Result<Vec<bf16>> {
    Ok(convert(name, data, false, Kind::Bf16)?.reinterpret_into())
}

/// Like [`to_bf16`], converting chunks on the current rayon pool.
pub fn to_bf16_par(name: &str, data: &[f32]) -> Result<Vec<bf16>> {
    Ok(convert(name, data, true, Kind::Bf16)?.reinterpret_into())
}

/// f16 → f32, exact.
pub fn f16_to_f32(values: &[f16]) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    values.convert_to_f32_slice(&mut out);
    out
}

/// bf16 → f32, exact.
pub fn bf16_to_f32(values: &[bf16]) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    values.convert_to_f32_slice(&mut out);
    out
}

#[derive(Clone, Copy)]
enum Kind {
    F16,
    Bf16,
}

impl Kind {
    /// Exponent bits of the 16-bit pattern: all set means ±inf or NaN.
    fn exp_mask(self) -> u16 {
        match self {
            Kind::F16 => 0x7C00,
            Kind::Bf16 => 0x7F80,
        }
    }
}

/// Work unit: converted and scanned while it is still in L1.
const CHUNK: usize = 8192;

/// `bf16::from_f32` of the `half` crate (round to nearest even, NaN kept quiet), written so that
/// the loop vectorises.
#[inline(always)]
fn bf16_bits_g(src: &[f32], dst: &mut [u16]) {
    for (d, s) in dst.iter_mut().zip(src) {
        let x = s.to_bits();
        let nan = x & 0x7FFF_FFFF > 0x7F80_0000;
        let round_up = (x & 0x8000) != 0 && (x & 0x17FFF) != 0;
        let hi = (x >> 16) as u16;
        *d = if nan { hi | 0x0040 } else { hi.wrapping_add(round_up as u16) };
    }
}

/// max over `bits & mask`: equals `mask` exactly when some value is ±inf or NaN.
#[inline(always)]
fn max_exp_g(bits: &[u16], mask: u16) -> u16 {
    bits.iter().fold(0, |m, b| m.max(b & mask))
}

simd_dispatch!(fn bf16_bits(src: &[f32], dst: &mut [u16]) -> () = bf16_bits_g;);
simd_dispatch!(fn max_exp(bits: &[u16], mask: u16) -> u16 = max_exp_g;);

/// f32 → f16 bits with the F16C instruction when the CPU has it (round to nearest even, like the
/// `half` crate, which handles the tail and other CPUs).
fn f16_bits(src: &[f32], dst: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("f16c") && std::is_x86_feature_detected!("avx") {
            // SAFETY: avx and f16c were detected on this CPU just above.
            unsafe { f16_bits_f16c(src, dst) };
            return;
        }
    }
    dst.reinterpret_cast_mut::<f16>().convert_from_f32_slice(src);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn f16_bits_f16c(src: &[f32], dst: &mut [u16]) {
    use std::arch::x86_64::{__m128i, _mm256_cvtps_ph, _mm256_loadu_ps, _mm_storeu_si128, _MM_FROUND_TO_NEAREST_INT};
    let n = src.len().min(dst.len());
    let body = n / 8 * 8;
    for (d, s) in dst[..body].chunks_exact_mut(8).zip(src[..body].chunks_exact(8)) {
        // SAFETY: `s` holds 8 f32 and `d` 8 u16 (16 bytes); both intrinsics accept unaligned
        // pointers.
        unsafe {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(s.as_ptr()));
            _mm_storeu_si128(d.as_mut_ptr().cast::<__m128i>(), h);
        }
    }
    dst[body..n].reinterpret_cast_mut::<f16>().convert_from_f32_slice(&src[body..n]);
}

/// Converts `src` chunk by chunk and checks each converted chunk for ±inf/NaN patterns.
fn convert_chunks(src: &[f32], dst: &mut [u16], kind: Kind) -> bool {
    let mask = kind.exp_mask();
    let mut special = false;
    for (d, s) in dst.chunks_mut(CHUNK).zip(src.chunks(CHUNK)) {
        match kind {
            Kind::F16 => f16_bits(s, d),
            Kind::Bf16 => bf16_bits(true, s, d),
        }
        special |= max_exp(true, d, mask) == mask;
    }
    special
}

fn convert(name: &str, data: &[f32], par: bool, kind: Kind) -> Result<Vec<u16>> {
    // Zeroed u16s come from calloc: no memset pass before the conversion overwrites them.
    let mut out = vec![0u16; data.len()];
    let any_special = if par {
        let chunk = PAR_MIN_ELEMS.max(data.len().div_ceil(4 * rayon::current_num_threads().max(1)));
        out.par_chunks_mut(chunk)
            .zip(data.par_chunks(chunk))
            .map(|(o, x)| convert_chunks(x, o, kind))
            .reduce(|| false, |a, b| a | b)
    } else {
        convert_chunks(data, &mut out, kind)
    };
    if any_special {
        let mask = kind.exp_mask();
        let index = out.iter().position(|b| b & mask == mask).expect("a special value was seen by the scan above");
        let value = data[index];
        return Err(if value.is_finite() {
            QuantError::F16Overflow { tensor: name.to_string(), index, value }
        } else {
            non_finite_error(name, &data[index..], index)
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::quant::testutil::{gaussian, rel_error};

    #[test]
    fn round_trip_errors() {
        let x = gaussian(5000, 0.05, 31);
        let h = to_f16("w", &x).unwrap();
        let b = to_bf16("w", &x).unwrap();
        let eh = rel_error(&x, &f16_to_f32(&h));
        let eb = rel_error(&x, &bf16_to_f32(&b));
        assert!(eh < 4e-4 && eh > 1e-6, "{eh}");
        assert!(eb < 3e-3 && eb > 1e-4, "{eb}");
        // Exactly representable values survive; rounding is to nearest even.
        let exact = [1.0, -2.5, 65504.0, 0.0];
        assert_eq!(f16_to_f32(&to_f16("w", &exact).unwrap()), exact);
        assert_eq!(to_bf16("w", &[1.0 + 1.0 / 256.0]).unwrap()[0].to_f32(), 1.0);
    }

    #[test]
    fn bit_identical_to_half() {
        let mut x = gaussian(10_000, 3.0, 33);
        x.extend([
            0.0,
            -0.0,
            65504.0,
            65520.0,
            -65520.0,
            1e-8,
            -1e-8,
            6e-5,
            1e30,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            1.0 + 1.0 / 2048.0,
            1.0 + 3.0 / 2048.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ]);
        for i in 0..2000u32 {
            x.push(f32::from_bits(0x3F80_0000 + i * 0x1001)); // tie patterns for both types
        }
        let mut h = vec![0u16; x.len()];
        let mut b = vec![0u16; x.len()];
        f16_bits(&x, &mut h);
        for simd in [true, false] {
            bf16_bits(simd, &x, &mut b);
            for (i, v) in x.iter().enumerate() {
                assert_eq!(b[i], bf16::from_f32(*v).to_bits(), "bf16 {v} simd={simd}");
            }
        }
        for (i, v) in x.iter().enumerate() {
            if !v.is_nan() {
                assert_eq!(h[i], f16::from_f32(*v).to_bits(), "f16 {v}");
            } else {
                assert_eq!(h[i] & 0x7C00, 0x7C00);
                assert_ne!(h[i] & 0x03FF, 0);
            }
        }
    }

    #[test]
    fn parallel_equals_serial() {
        let x = gaussian(300_000, 1.0, 32);
        crate::compress::quant::with_threads(2, || {
            assert_eq!(to_f16("w", &x).unwrap(), to_f16_par("w", &x).unwrap());
            assert_eq!(to_bf16("w", &x).unwrap(), to_bf16_par("w", &x).unwrap());
        })
        .unwrap();
    }

    #[test]
    fn overflow_and_non_finite_are_errors() {
        let x = [1.0, 70000.0, f32::NAN];
        let e = to_f16("ln.weight", &x).unwrap_err();
        assert!(matches!(e, QuantError::F16Overflow { index: 1, .. }), "{e:?}");
        assert!(e.to_string().starts_with("tensor ln.weight: value 70000 at index 1"));
        // bf16 holds 70000 but not NaN.
        let e = to_bf16("ln.weight", &x).unwrap_err();
        assert_eq!(e.to_string(), "tensor ln.weight: contains NaN at index 2");
        let e = to_f16_par("w", &[0.0, f32::INFINITY]).unwrap_err();
        assert_eq!(e.to_string(), "tensor w: contains +inf at index 1");
    }

    #[test]
    fn le_bytes_layout() {
        let h = HalfData::F16 { shape: vec![2], values: to_f16("w", &[1.0, -2.0]).unwrap() };
        assert_eq!(h.le_bytes(), vec![0x00, 0x3C, 0x00, 0xC0]);
        let b = HalfData::Bf16 { shape: vec![1], values: to_bf16("w", &[1.0]).unwrap() };
        assert_eq!(b.le_bytes(), vec![0x80, 0x3F]);
    }
}
