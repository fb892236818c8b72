//! The per-tensor entry points: [`quantize`] / [`quantize_par`] dispatch a [`Scheme`] to its
//! kernel (applying the GGML shape fallback), and [`QuantizedTensor`] dequantizes itself or turns
//! itself into a candle `QTensor` for inference and GGUF export.
//!
//! `to_qtensor` re-blocks instead of re-quantizing where the layouts allow it, so the only added
//! error is rounding the scales to f16 (relative ≤ 2⁻¹¹ per scale, i.e. ≤ 0.05 % of each weight):
//! int8 symmetric → Q8_0 (`qs = q`, `d = f16(scale)`), int4 symmetric → Q4_0 (`d = f16(scale)`,
//! nibbles copied), int4 asymmetric → Q4_1 (`d = f16(scale)`, `m = f16(−zp · scale)`; together
//! at most 30 · scale · 2⁻¹¹ per weight, ≈ 1.5 % of a quantization step). int8 asymmetric
//! (q − zp spans 255 levels, more than Q8_0's ±127) is re-quantized from its dequantized values
//! with Q8_0 (adds ≈ Q8_0's own error, rel ≈ 0.005). Scales that f16 cannot hold to 2⁻¹⁰
//! relative (below ≈ 6e-5, i.e. rows with max |w| < ≈ 8e-3 for int8) also take the re-quantize
//! path. Shapes whose last dim is not a multiple of 32 become an F16 QTensor of the dequantized
//! values (F32 if a value exceeds the f16 range). All of this runs on the calling thread (the
//! `*_par` quantizers use the rayon pool).

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use half::f16;
use rayon::prelude::*;

use super::float::{self, HalfData};
use super::ggml::{self, dequantize_qtensor, qtensor_from_bytes, resolve};
use super::int4::{self, dequantize_int4, Int4Data};
use super::int8::{self, dequantize_int8, Int8Data};
use super::scheme::{GgmlKind, Scheme};
use super::{check_len, non_finite_error, Result, PAR_MIN_ELEMS};

/// The stored form of one quantized tensor.
#[derive(Debug)]
pub enum QuantData {
    /// int8 values, scales, optional zero points.
    Int8(Int8Data),
    /// Packed int4 nibbles, group scales, optional zero points.
    Int4(Int4Data),
    /// A GGML block type, as a CPU candle `QTensor` (its `data()` are the raw block bytes).
    Ggml {
        /// The block type.
        kind: GgmlKind,
        /// Shape and blocks.
        qtensor: QTensor,
    },
    /// f16 or bf16 values.
    Half(HalfData),
}

/// One quantized tensor with the scheme that was asked for.
#[derive(Debug)]
pub struct QuantizedTensor {
    /// Tensor name (`fc1.weight`).
    pub name: String,
    /// The scheme requested; [`QuantizedTensor::scheme`] is the one actually used.
    pub requested: Scheme,
    /// The quantized data.
    pub data: QuantData,
}

/// Quantizes one tensor on the calling thread. GGML requests whose shape does not fit fall back
/// (see [`resolve`]); compare [`QuantizedTensor::scheme`] with `requested` to report it.
/// int4 requests whose rows are not a multiple of the group size fail with
/// `QuantError::GroupNotDivisible`: the caller decides the fallback.
pub fn quantize(name: &str, data: &[f32], shape: &[usize], scheme: Scheme) -> Result<QuantizedTensor> {
    quantize_with(name, data, shape, scheme, false)
}

/// Like [`quantize`], splitting the work across the current rayon pool (run it inside
/// `pool.install`, or via [`with_threads`](super::with_threads)). Output is identical.
pub fn quantize_par(name: &str, data: &[f32], shape: &[usize], scheme: Scheme) -> Result<QuantizedTensor> {
    quantize_with(name, data, shape, scheme, true)
}

fn quantize_with(name: &str, data: &[f32], shape: &[usize], requested: Scheme, par: bool) -> Result<QuantizedTensor> {
    check_len(name, shape, data.len())?;
    let half = |bf16: bool| -> Result<QuantData> {
        let shape = shape.to_vec();
        Ok(QuantData::Half(match (bf16, par) {
            (false, false) => HalfData::F16 { shape, values: float::to_f16(name, data)? },
            (false, true) => HalfData::F16 { shape, values: float::to_f16_par(name, data)? },
            (true, false) => HalfData::Bf16 { shape, values: float::to_bf16(name, data)? },
            (true, true) => HalfData::Bf16 { shape, values: float::to_bf16_par(name, data)? },
        }))
    };
    let qdata = match requested {
        Scheme::Int8 { symmetric, granularity } => {
            QuantData::Int8(int8::quantize_impl(name, data, shape, symmetric, granularity, par, true)?)
        }
        Scheme::Int4 { group_size, symmetric } => {
            QuantData::Int4(int4::quantize_impl(name, data, shape, group_size, symmetric, par, true)?)
        }
        Scheme::Ggml(kind) => match resolve(kind, shape) {
            Scheme::Ggml(kind) => {
                QuantData::Ggml { kind, qtensor: ggml::quantize_impl(name, data, shape, kind.dtype(), par)? }
            }
            _ => half(false)?,
        },
        Scheme::F16 => half(false)?,
        Scheme::Bf16 => half(true)?,
    };
    Ok(QuantizedTensor { name: name.to_string(), requested, data: qdata })
}

/// Errors with the tensor name and index of the first NaN/±inf, if any.
pub fn check_finite(name: &str, data: &[f32]) -> Result<()> {
    check_finite_impl(name, data, false)
}

pub(crate) fn check_finite_impl(name: &str, data: &[f32], par: bool) -> Result<()> {
    let ok = if par {
        let chunk = PAR_MIN_ELEMS.max(data.len().div_ceil(4 * rayon::current_num_threads().max(1)));
        data.par_chunks(chunk).all(|c| int8::absmax(true, c).1)
    } else {
        int8::absmax(true, data).1
    };
    if ok {
        Ok(())
    } else {
        Err(non_finite_error(name, data, 0))
    }
}

impl QuantizedTensor {
    /// The scheme actually used (differs from `requested` after a GGML shape fallback, or for
    /// per-channel int8 on a rank-1 tensor, which is per-tensor).
    pub fn scheme(&self) -> Scheme {
        match &self.data {
            QuantData::Int8(t) => Scheme::Int8 { symmetric: t.zero_points.is_none(), granularity: t.granularity },
            QuantData::Int4(t) => Scheme::Int4 { group_size: t.group_size, symmetric: t.symmetric() },
            QuantData::Ggml { kind, .. } => Scheme::Ggml(*kind),
            QuantData::Half(HalfData::F16 { .. }) => Scheme::F16,
            QuantData::Half(HalfData::Bf16 { .. }) => Scheme::Bf16,
        }
    }

    /// Whether a GGML request fell back to another type.
    pub fn fell_back(&self) -> bool {
        match (self.requested, self.scheme()) {
            (Scheme::Ggml(a), Scheme::Ggml(b)) => a != b,
            (Scheme::Ggml(_), _) => true,
            _ => false,
        }
    }

    /// The original shape.
    pub fn shape(&self) -> &[usize] {
        match &self.data {
            QuantData::Int8(t) => &t.shape,
            QuantData::Int4(t) => &t.shape,
            QuantData::Ggml { qtensor, .. } => qtensor.shape().dims(),
            QuantData::Half(h) => h.shape(),
        }
    }

    /// Number of weights.
    pub fn len(&self) -> usize {
        self.shape().iter().product()
    }

    /// Whether the tensor has no weights.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the stored form (values + scales + zero points, or GGML blocks).
    pub fn stored_bytes(&self) -> usize {
        match &self.data {
            QuantData::Int8(t) => t.stored_bytes(),
            QuantData::Int4(t) => t.stored_bytes(),
            QuantData::Ggml { qtensor, .. } => qtensor.storage_size_in_bytes(),
            QuantData::Half(h) => 2 * h.shape().iter().product::<usize>(),
        }
    }

    /// Dequantized f32 values, row-major in the original shape.
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        Ok(match &self.data {
            QuantData::Int8(t) => dequantize_int8(t),
            QuantData::Int4(t) => dequantize_int4(t),
            QuantData::Ggml { qtensor, .. } => dequantize_qtensor(qtensor)?,
            QuantData::Half(h) => h.to_f32(),
        })
    }

    /// A CPU candle `QTensor` of the same shape, for `QMatMul` or GGUF export; see the module doc
    /// for the mapping and the error it adds. Check `dtype()` of the result: shapes whose last dim
    /// is not a multiple of 32 come back as F16 (or F32).
    pub fn to_qtensor(&self) -> Result<QTensor> {
        let shape = self.shape().to_vec();
        let fits32 = shape.last().is_some_and(|d| d % 32 == 0);
        match &self.data {
            QuantData::Ggml { qtensor, .. } => {
                qtensor_from_bytes(&self.name, qtensor.dtype(), &qtensor.data()?, &shape)
            }
            QuantData::Half(HalfData::F16 { values, .. }) => {
                Ok(QTensor::new(QStorage::Cpu(Box::new(values.clone())), shape)?)
            }
            QuantData::Half(HalfData::Bf16 { values, .. }) => {
                Ok(QTensor::new(QStorage::Cpu(Box::new(values.clone())), shape)?)
            }
            QuantData::Int8(t) if fits32 && t.zero_points.is_none() && scales_f16_safe(&t.scales) => {
                let bytes = int8_to_q8_0_bytes(t);
                qtensor_from_bytes(&self.name, GgmlDType::Q8_0, &bytes, &shape)
            }
            QuantData::Int4(t) if fits32 && scales_f16_safe(&t.scales) => {
                let (dtype, bytes) = int4_to_q4_bytes(t);
                qtensor_from_bytes(&self.name, dtype, &bytes, &shape)
            }
            QuantData::Int8(_) | QuantData::Int4(_) => {
                let values = self.dequantize()?;
                let dtype = match &self.data {
                    QuantData::Int4(t) if t.symmetric() => GgmlDType::Q4_0,
                    QuantData::Int4(_) => GgmlDType::Q4_1,
                    _ => GgmlDType::Q8_0,
                };
                if fits32 {
                    ggml::quantize_impl(&self.name, &values, &shape, dtype, false)
                } else {
                    float_qtensor(&self.name, &values, &shape)
                }
            }
        }
    }
}

/// F16 QTensor of `values`, or F32 when some value exceeds the f16 range.
pub(crate) fn float_qtensor(name: &str, values: &[f32], shape: &[usize]) -> Result<QTensor> {
    match float::to_f16(name, values) {
        Ok(h) => Ok(QTensor::new(QStorage::Cpu(Box::new(h)), shape)?),
        Err(super::QuantError::F16Overflow { .. }) => {
            Ok(QTensor::new(QStorage::Cpu(Box::new(values.to_vec())), shape)?)
        }
        Err(e) => Err(e),
    }
}

/// Whether every scale survives the f16 round trip to 2⁻¹⁰ relative.
fn scales_f16_safe(scales: &[f32]) -> bool {
    scales.iter().all(|&s| {
        let h = f16::from_f32(s).to_f32();
        h.is_finite() && (h - s).abs() <= s.abs() * (1.0 / 1024.0)
    })
}

/// Q8_0 blocks (`d: f16`, `qs: [i8; 32]`, 34 bytes) holding the int8 values unchanged.
fn int8_to_q8_0_bytes(t: &Int8Data) -> Vec<u8> {
    let rows = t.scales.len().max(1);
    let cols = t.values.len() / rows;
    let mut out = Vec::with_capacity(t.values.len() / 32 * 34);
    for (bi, block) in t.values.chunks_exact(32).enumerate() {
        let row = if t.scales.len() == 1 { 0 } else { bi * 32 / cols };
        out.extend_from_slice(&f16::from_f32(t.scales[row]).to_le_bytes());
        out.extend(block.iter().map(|q| *q as u8));
    }
    out
}

/// Q4_0 (`d`, 16 bytes of nibbles) or Q4_1 (`d`, `m`, nibbles) blocks holding the int4 nibbles.
/// GGML's nibble order within a 32-block: byte j = element j (low) | element j + 16 (high).
fn int4_to_q4_bytes(t: &Int4Data) -> (GgmlDType, Vec<u8>) {
    let per_group = t.group_size / 32;
    let (dtype, block_bytes) = if t.symmetric() { (GgmlDType::Q4_0, 18) } else { (GgmlDType::Q4_1, 20) };
    let mut out = Vec::with_capacity(t.packed.len() / 16 * block_bytes);
    for (bi, packed) in t.packed.chunks_exact(16).enumerate() {
        let g = bi / per_group;
        let scale = t.scales[g];
        out.extend_from_slice(&f16::from_f32(scale).to_le_bytes());
        if let Some(z) = &t.zero_points {
            let m = -(z[g] as f32) * scale;
            out.extend_from_slice(&f16::from_f32(m).to_le_bytes());
        }
        let mut u = [0u8; 32];
        for (j, b) in packed.iter().enumerate() {
            u[2 * j] = b & 0x0F;
            u[2 * j + 1] = b >> 4;
        }
        out.extend((0..16).map(|j| u[j] | (u[j + 16] << 4)));
    }
    (dtype, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::quant::scheme::Granularity;
    use crate::compress::quant::testutil::{gaussian, rel_error};
    use crate::compress::quant::QuantError;

    fn all_schemes() -> Vec<Scheme> {
        let mut v = vec![Scheme::F16, Scheme::Bf16];
        for symmetric in [true, false] {
            for granularity in [Granularity::PerChannel, Granularity::PerTensor] {
                v.push(Scheme::Int8 { symmetric, granularity });
            }
            for group_size in [32, 64, 128] {
                v.push(Scheme::Int4 { group_size, symmetric });
            }
        }
        v.extend(GgmlKind::ALL.map(Scheme::Ggml));
        v
    }

    #[test]
    fn every_scheme_round_trips_and_par_matches() {
        let shape = [8, 512];
        let x = gaussian(8 * 512, 0.05, 41);
        crate::compress::quant::with_threads(2, || {
            for s in all_schemes() {
                let a = quantize("w", &x, &shape, s).unwrap();
                let b = quantize_par("w", &x, &shape, s).unwrap();
                assert_eq!(a.scheme(), s);
                assert!(!a.fell_back());
                assert_eq!(a.shape(), &shape);
                let da = a.dequantize().unwrap();
                assert_eq!(da, b.dequantize().unwrap(), "{s}");
                let e = rel_error(&x, &da);
                assert!(e < 0.35, "{s}: {e}");
                let bits = a.stored_bytes() as f64 * 8.0 / x.len() as f64;
                assert!((bits - s.bits_per_weight()).abs() < 0.2, "{s}: {bits} bits/weight vs {}", s.bits_per_weight());
            }
        })
        .unwrap();
    }

    #[test]
    fn ggml_fallback_is_reported() {
        let x = gaussian(4 * 800, 1.0, 42);
        let t = quantize("fc.weight", &x, &[4, 800], Scheme::Ggml(GgmlKind::Q4K)).unwrap();
        assert_eq!(t.scheme(), Scheme::Ggml(GgmlKind::Q5_0));
        assert!(t.fell_back());
        let x = gaussian(2 * 784, 1.0, 42);
        let t = quantize("fc1.weight", &x, &[2, 784], Scheme::Ggml(GgmlKind::Q8_0)).unwrap();
        assert_eq!(t.scheme(), Scheme::F16);
        assert!(t.fell_back());
        assert!(rel_error(&x, &t.dequantize().unwrap()) < 4e-4);
    }

    #[test]
    fn check_finite_names_first_bad_index() {
        let mut x = vec![0.5f32; 100_000];
        assert!(check_finite("w", &x).is_ok());
        x[77_777] = f32::NAN;
        x[99_000] = f32::INFINITY;
        let e = check_finite("layer.0.w", &x).unwrap_err();
        assert_eq!(e.to_string(), "tensor layer.0.w: contains NaN at index 77777");
        let e = crate::compress::quant::with_threads(2, || check_finite_impl("w", &x, true)).unwrap().unwrap_err();
        assert!(matches!(e, QuantError::NonFinite { index: 77_777, .. }));
    }

    #[test]
    fn int8_to_q8_0_is_a_reblock() {
        let (rows, cols) = (6, 96);
        let x = gaussian(rows * cols, 0.05, 43);
        let t = quantize("w", &x, &[rows, cols], "int8".parse().unwrap()).unwrap();
        let q = t.to_qtensor().unwrap();
        assert_eq!(q.dtype(), GgmlDType::Q8_0);
        let from_int8 = t.dequantize().unwrap();
        let from_q8 = dequantize_qtensor(&q).unwrap();
        // Only the f16 rounding of each row's scale differs.
        for (a, b) in from_int8.iter().zip(&from_q8) {
            assert!((a - b).abs() <= a.abs() * 4.9e-4 + 1e-12, "{a} {b}");
        }
        let extra = rel_error(&x, &from_q8) - rel_error(&x, &from_int8);
        assert!(extra.abs() < 5e-4, "{extra}");
    }

    #[test]
    fn int4_to_q4_is_a_reblock() {
        let (rows, cols) = (4, 256);
        let x = gaussian(rows * cols, 0.05, 44);
        for (label, dtype) in [("int4_g64", GgmlDType::Q4_0), ("int4_asym_g128", GgmlDType::Q4_1)] {
            let t = quantize("w", &x, &[rows, cols], label.parse().unwrap()).unwrap();
            let q = t.to_qtensor().unwrap();
            assert_eq!(q.dtype(), dtype, "{label}");
            let a = t.dequantize().unwrap();
            let b = dequantize_qtensor(&q).unwrap();
            let max_scale = t_scales(&t).iter().fold(0f32, |m, s| m.max(*s));
            for (u, v) in a.iter().zip(&b) {
                // d rounding (≤ 15 · scale · 2⁻¹¹) + m rounding (≤ 15 · scale · 2⁻¹¹).
                assert!((u - v).abs() <= 30.5 * max_scale / 2048.0, "{label}: {u} {v}");
            }
        }
    }

    type Layer = Box<dyn Fn(&candle_core::Tensor) -> candle_core::Tensor>;

    /// The fixture teacher MLP (64 → 256 → 256 → 10, 97.5 % on the digits test split) keeps its
    /// accuracy after quantization, through dequantized f32 weights and through `QMatMul`.
    #[test]
    fn quantized_teacher_keeps_its_accuracy() {
        use candle_core::quantized::QMatMul;
        use candle_core::{Device, Module, Tensor};
        let dev = Device::Cpu;
        let fx = |f: &str| format!("{}/tests/fixtures/{f}", env!("CARGO_MANIFEST_DIR"));
        let w = candle_core::safetensors::load(fx("teacher_digits.safetensors"), &dev).unwrap();
        let d = candle_core::safetensors::load(fx("digits.safetensors"), &dev).unwrap();
        let labels: Vec<i64> = d["test_y"].to_vec1().unwrap();
        let names = ["fc1", "fc2", "fc3"];
        let bias = |n: &str| w[&format!("{n}.bias")].clone();
        let accuracy = |layers: &[Layer]| -> f64 {
            let mut h = d["test_x"].clone();
            for (i, layer) in layers.iter().enumerate() {
                h = layer(&h).broadcast_add(&bias(names[i])).unwrap();
                if i < 2 {
                    h = h.relu().unwrap();
                }
            }
            let pred: Vec<u32> = h.argmax(1).unwrap().to_vec1().unwrap();
            let hits = pred.iter().zip(&labels).filter(|(p, y)| **p as i64 == **y).count();
            hits as f64 / labels.len() as f64
        };
        let dense = |t: Tensor| -> Layer { Box::new(move |x: &Tensor| x.matmul(&t.t().unwrap()).unwrap()) };
        let float: Vec<_> = names.iter().map(|n| dense(w[&format!("{n}.weight")].clone())).collect();
        let base = accuracy(&float);
        assert!((base - 0.975).abs() < 1e-9, "float accuracy {base}");
        for (label, tolerance) in [
            ("int8", 0.006),
            ("int8_asym_per_tensor", 0.006),
            ("q8_0", 0.006),
            ("q6_k", 0.006),
            ("int4_g32", 0.02),
            ("q4_k", 0.02),
        ] {
            let scheme: Scheme = label.parse().unwrap();
            let mut deq = Vec::new();
            let mut qmm = Vec::new();
            for n in names {
                let wt = &w[&format!("{n}.weight")];
                let data: Vec<f32> = wt.flatten_all().unwrap().to_vec1().unwrap();
                let q = quantize(n, &data, wt.dims(), scheme).unwrap();
                let values = Tensor::from_vec(q.dequantize().unwrap(), wt.dims(), &dev).unwrap();
                deq.push(dense(values));
                let mm = QMatMul::from_qtensor(q.to_qtensor().unwrap()).unwrap();
                qmm.push(Box::new(move |x: &Tensor| mm.forward(x).unwrap()) as Layer);
            }
            let a = accuracy(&deq);
            let b = accuracy(&qmm);
            assert!(a >= base - tolerance, "{label}: {a} vs float {base}");
            assert!(b >= base - tolerance - 0.003, "{label} QMatMul: {b} vs float {base}");
        }
    }

    fn t_scales(t: &QuantizedTensor) -> &[f32] {
        match &t.data {
            QuantData::Int4(d) => &d.scales,
            QuantData::Int8(d) => &d.scales,
            _ => &[],
        }
    }

    #[test]
    fn to_qtensor_other_paths() {
        let x = gaussian(3 * 64, 0.05, 45);
        // asymmetric int8 → re-quantized Q8_0.
        let t = quantize("w", &x, &[3, 64], "int8_asym".parse().unwrap()).unwrap();
        let q = t.to_qtensor().unwrap();
        assert_eq!(q.dtype(), GgmlDType::Q8_0);
        assert!(rel_error(&x, &dequantize_qtensor(&q).unwrap()) < 0.012);
        // 784-wide int8 → F16 of the dequantized values.
        let x = gaussian(2 * 784, 0.05, 46);
        let t = quantize("w", &x, &[2, 784], "int8".parse().unwrap()).unwrap();
        let q = t.to_qtensor().unwrap();
        assert_eq!(q.dtype(), GgmlDType::F16);
        assert!(rel_error(&t.dequantize().unwrap(), &dequantize_qtensor(&q).unwrap()) < 4e-4);
        // ggml and half pass through.
        for s in ["q4_k", "f16", "bf16"] {
            let x = gaussian(2 * 256, 0.05, 47);
            let t = quantize("w", &x, &[2, 256], s.parse().unwrap()).unwrap();
            let q = t.to_qtensor().unwrap();
            assert_eq!(dequantize_qtensor(&q).unwrap(), t.dequantize().unwrap(), "{s}");
        }
    }
}
