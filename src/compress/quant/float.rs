//! f16 and bf16 casts (round to nearest even, via the `half` crate's bulk converters, which use
//! F16C when the CPU has it).
//!
//! Validation is done on the *output*, which is half the size of the input: a half value with
//! all exponent bits set came from a NaN/±inf input (→ [`QuantError::NonFinite`]) or from a finite
//! input too large for the type (→ [`QuantError::F16Overflow`]; bf16 has f32's range, so only
//! values within half an ulp of `f32::MAX` overflow it, reported the same way). `*_par` variants
//! convert chunks on the current rayon pool.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

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
    convert::<f16>(name, data, false, 0x7C00)
}

/// Like [`to_f16`], converting chunks on the current rayon pool.
pub fn to_f16_par(name: &str, data: &[f32]) -> Result<Vec<f16>> {
    convert::<f16>(name, data, true, 0x7C00)
}

/// Casts to bf16 on the calling thread. Errors on NaN/±inf.
pub fn to_bf16(name: &str, data: &[f32]) -> Result<Vec<bf16>> {
    convert::<bf16>(name, data, false, 0x7F80)
}

/// Like [`to_bf16`], converting chunks on the current rayon pool.
pub fn to_bf16_par(name: &str, data: &[f32]) -> Result<Vec<bf16>> {
    convert::<bf16>(name, data, true, 0x7F80)
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

/// Half types with a bulk converter and a bit view (the two `half` types).
trait Half: Copy + Default + Send + Sync {
    fn bulk_from(dst: &mut [Self], src: &[f32]);
    fn bits(values: &[Self]) -> &[u16];
}

impl Half for f16 {
    fn bulk_from(dst: &mut [Self], src: &[f32]) {
        dst.convert_from_f32_slice(src);
    }
    fn bits(values: &[Self]) -> &[u16] {
        values.reinterpret_cast()
    }
}

impl Half for bf16 {
    fn bulk_from(dst: &mut [Self], src: &[f32]) {
        dst.convert_from_f32_slice(src);
    }
    fn bits(values: &[Self]) -> &[u16] {
        values.reinterpret_cast()
    }
}

fn convert<H: Half>(name: &str, data: &[f32], par: bool, exp_mask: u16) -> Result<Vec<H>> {
    let mut out = vec![H::default(); data.len()];
    let special = |b: &u16| b & exp_mask == exp_mask;
    let any_special = if par {
        let chunk = PAR_MIN_ELEMS
            .max(data.len().div_ceil(4 * rayon::current_num_threads().max(1)));
        out.par_chunks_mut(chunk)
            .zip(data.par_chunks(chunk))
            .map(|(o, x)| {
                H::bulk_from(o, x);
                H::bits(o).iter().fold(false, |acc, b| acc | special(b))
            })
            .reduce(|| false, |a, b| a | b)
    } else {
        H::bulk_from(&mut out, data);
        H::bits(&out).iter().fold(false, |acc, b| acc | special(b))
    };
    if any_special {
        let index = H::bits(&out)
            .iter()
            .position(special)
            .expect("a special value was seen in the fold above");
        let value = data[index];
        return Err(if value.is_finite() {
            QuantError::F16Overflow {
                tensor: name.to_string(),
                index,
                value,
            }
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
        let h = HalfData::F16 {
            shape: vec![2],
            values: to_f16("w", &[1.0, -2.0]).unwrap(),
        };
        assert_eq!(h.le_bytes(), vec![0x00, 0x3C, 0x00, 0xC0]);
        let b = HalfData::Bf16 {
            shape: vec![1],
            values: to_bf16("w", &[1.0]).unwrap(),
        };
        assert_eq!(b.le_bytes(), vec![0x80, 0x3F]);
    }
}
