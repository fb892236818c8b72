//! The quantized-safetensors layout: turning a [`QuantizedTensor`] into named safetensors entries
//! plus the `quantization_config` metadata JSON, and back. Names follow compressed-tensors
//! (Neural Magic / vLLM); the exact layout is in `docs/formats.md`:
//!
//! | scheme | entries |
//! |---|---|
//! | int8 | `W` I8 (original shape), `W_scale` F32 `[rows, 1]` or `[1]`, `W_zero_point` I8 (asym) |
//! | int4 | `W_packed` U8 `[rows, cols/2]`, `W_scale` F32 `[rows, cols/g]`, `W_zero_point` U8 `[rows, cols/g]` (asym), `W_shape` I64 `[rank]` |
//! | GGML | `W_ggml` U8 `[elems/last_dim, bytes per row]` (raw blocks), `W_shape` I64 `[rank]` |
//! | f16/bf16 | `W` F16/BF16 (original shape) |
//!
//! The file writer (the lead's) stores the entries and `QuantizationConfig::to_json` under the
//! `__metadata__` key [`METADATA_KEY`]. Reading back works from borrowed views (an mmap) through a
//! lookup closure. Pure functions, any thread.

use std::collections::BTreeMap;

use half::{bf16, f16};
use serde::{Deserialize, Serialize};

use super::float::HalfData;
use super::ggml::{qtensor_bytes, qtensor_from_bytes};
use super::int4::Int4Data;
use super::int8::Int8Data;
use super::scheme::{Granularity, Scheme};
use super::tensor::{QuantData, QuantizedTensor};
use super::{rows_cols, QuantError, Result};

/// Key of the JSON config in the safetensors `__metadata__` map.
pub const METADATA_KEY: &str = "quantization_config";
/// Value of `format` in the config.
pub const FORMAT: &str = "modelpress.quantized";
/// Value of `version` in the config.
pub const FORMAT_VERSION: u32 = 1;

/// One safetensors entry to write.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    /// Entry name (`fc1.weight_scale`).
    pub name: String,
    /// safetensors dtype code: `"I8"`, `"U8"`, `"F32"`, `"F16"`, `"BF16"` or `"I64"`.
    pub dtype: &'static str,
    /// Entry shape.
    pub shape: Vec<usize>,
    /// Little-endian data.
    pub bytes: Vec<u8>,
}

/// A borrowed view of a stored entry (e.g. from an mmap), for decoding.
#[derive(Debug, Clone, Copy)]
pub struct EntryView<'a> {
    /// safetensors dtype code as stored.
    pub dtype: &'a str,
    /// Entry shape.
    pub shape: &'a [usize],
    /// Little-endian data (any alignment).
    pub bytes: &'a [u8],
}

/// Per-tensor record in the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorRecord {
    /// Scheme actually stored.
    pub scheme: Scheme,
    /// Scheme requested, when a fallback changed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<Scheme>,
    /// Original shape.
    pub shape: Vec<usize>,
}

/// The `quantization_config` metadata JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizationConfig {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`FORMAT_VERSION`] for files written by this code.
    pub version: u32,
    /// Scheme requested for the model.
    pub scheme: Scheme,
    /// int4 group size of the requested scheme.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_size: Option<usize>,
    /// Whether the requested int scheme is symmetric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric: Option<bool>,
    /// int8 scale granularity of the requested scheme.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granularity: Option<Granularity>,
    /// Quantized tensors by name.
    pub tensors: BTreeMap<String, TensorRecord>,
    /// Tensors stored unchanged in float (biases, norms, tensors the job chose to skip).
    pub float_tensors: Vec<String>,
}

impl QuantizationConfig {
    /// An empty config for a model quantized with `scheme`.
    pub fn new(scheme: Scheme) -> Self {
        let (group_size, symmetric, granularity) = match scheme {
            Scheme::Int8 { symmetric, granularity } => (None, Some(symmetric), Some(granularity)),
            Scheme::Int4 { group_size, symmetric } => (Some(group_size), Some(symmetric), None),
            _ => (None, None, None),
        };
        QuantizationConfig {
            format: FORMAT.to_string(),
            version: FORMAT_VERSION,
            scheme,
            group_size,
            symmetric,
            granularity,
            tensors: BTreeMap::new(),
            float_tensors: Vec::new(),
        }
    }

    /// Records a quantized tensor.
    pub fn record(&mut self, t: &QuantizedTensor) {
        let scheme = t.scheme();
        self.tensors.insert(
            t.name.clone(),
            TensorRecord {
                scheme,
                requested: (t.requested != scheme).then_some(t.requested),
                shape: t.shape().to_vec(),
            },
        );
    }

    /// Records a tensor kept in float.
    pub fn record_float(&mut self, name: &str) {
        self.float_tensors.push(name.to_string());
    }

    /// The JSON string to store under [`METADATA_KEY`].
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("the config holds only strings, numbers and maps")
    }

    /// Parses and checks the metadata JSON.
    pub fn from_json(s: &str) -> Result<Self> {
        let cfg: QuantizationConfig = serde_json::from_str(s).map_err(|e| QuantError::BadConfig(e.to_string()))?;
        if cfg.format != FORMAT {
            return Err(QuantError::BadConfig(format!("format is {:?}, expected {FORMAT:?}", cfg.format)));
        }
        if cfg.version != FORMAT_VERSION {
            return Err(QuantError::BadConfig(format!(
                "version {} is not supported (this build reads version {FORMAT_VERSION})",
                cfg.version
            )));
        }
        Ok(cfg)
    }
}

impl QuantizedTensor {
    /// The safetensors entries of this tensor (see the module doc for names, dtypes and shapes).
    pub fn to_entries(&self) -> Result<Vec<TensorEntry>> {
        let name = &self.name;
        let entry = |suffix: &str, dtype: &'static str, shape: Vec<usize>, bytes: Vec<u8>| TensorEntry {
            name: format!("{name}{suffix}"),
            dtype,
            shape,
            bytes,
        };
        let shape_entry = |shape: &[usize]| {
            entry("_shape", "I64", vec![shape.len()], shape.iter().flat_map(|d| (*d as i64).to_le_bytes()).collect())
        };
        Ok(match &self.data {
            QuantData::Int8(t) => {
                let scale_shape = match t.granularity {
                    Granularity::PerChannel => vec![t.scales.len(), 1],
                    Granularity::PerTensor => vec![1],
                };
                let mut v = vec![
                    entry("", "I8", t.shape.clone(), t.values.iter().map(|q| *q as u8).collect()),
                    entry("_scale", "F32", scale_shape.clone(), f32_bytes(&t.scales)),
                ];
                if let Some(z) = &t.zero_points {
                    v.push(entry("_zero_point", "I8", scale_shape, z.iter().map(|q| *q as u8).collect()));
                }
                v
            }
            QuantData::Int4(t) => {
                let (rows, cols) = rows_cols(name, &t.shape)?;
                let groups = vec![rows, cols / t.group_size];
                let mut v = vec![
                    entry("_packed", "U8", vec![rows, cols / 2], t.packed.clone()),
                    entry("_scale", "F32", groups.clone(), f32_bytes(&t.scales)),
                ];
                if let Some(z) = &t.zero_points {
                    v.push(entry("_zero_point", "U8", groups, z.clone()));
                }
                v.push(shape_entry(&t.shape));
                v
            }
            QuantData::Ggml { qtensor, .. } => {
                let bytes = qtensor_bytes(qtensor)?.into_owned();
                let shape = qtensor.shape().dims();
                let last = shape.last().copied().unwrap_or(0);
                let rows = shape.iter().product::<usize>().checked_div(last).unwrap_or(0);
                let per_row = bytes.len().checked_div(rows).unwrap_or(0);
                vec![entry("_ggml", "U8", vec![rows, per_row], bytes), shape_entry(shape)]
            }
            QuantData::Half(h) => {
                let dtype = match h {
                    HalfData::F16 { .. } => "F16",
                    HalfData::Bf16 { .. } => "BF16",
                };
                vec![entry("", dtype, h.shape().to_vec(), h.le_bytes())]
            }
        })
    }

    /// Rebuilds a tensor recorded as `record` under `name` from its stored entries; `get` looks an
    /// entry up by its full name. Checks dtypes, shapes and sizes.
    pub fn from_entries<'a>(
        name: &str,
        record: &TensorRecord,
        get: impl Fn(&str) -> Option<EntryView<'a>>,
    ) -> Result<QuantizedTensor> {
        let shape = record.shape.clone();
        let elems: usize = shape.iter().product();
        let (rows, cols) = rows_cols(name, &shape)?;
        let fetch = |suffix: &str, dtype: &str, want_shape: Option<&[usize]>, want_len: usize| -> Result<&'a [u8]> {
            let entry = format!("{name}{suffix}");
            let view = get(&entry)
                .ok_or_else(|| QuantError::MissingEntry { tensor: name.to_string(), entry: entry.clone() })?;
            let bad = |reason: String| QuantError::BadEntry { tensor: name.to_string(), entry: entry.clone(), reason };
            if view.dtype != dtype {
                return Err(bad(format!("dtype {}, expected {dtype}", view.dtype)));
            }
            if let Some(s) = want_shape {
                if view.shape != s {
                    return Err(bad(format!("shape {:?}, expected {s:?}", view.shape)));
                }
            }
            if view.bytes.len() != want_len {
                return Err(bad(format!("{} bytes, expected {want_len}", view.bytes.len())));
            }
            Ok(view.bytes)
        };
        let check_shape_entry = || -> Result<()> {
            let b = fetch("_shape", "I64", Some(&[shape.len()][..]), 8 * shape.len())?;
            let stored: Vec<usize> =
                b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("chunks of 8")) as usize).collect();
            if stored != shape {
                return Err(QuantError::BadEntry {
                    tensor: name.to_string(),
                    entry: format!("{name}_shape"),
                    reason: format!("holds {stored:?}, the config says {shape:?}"),
                });
            }
            Ok(())
        };
        let data = match record.scheme {
            Scheme::Int8 { symmetric, granularity } => {
                let n_scales = match granularity {
                    Granularity::PerChannel => rows,
                    Granularity::PerTensor => 1,
                };
                let scale_shape: Vec<usize> = match granularity {
                    Granularity::PerChannel => vec![rows, 1],
                    Granularity::PerTensor => vec![1],
                };
                let values = fetch("", "I8", Some(&shape[..]), elems)?;
                let scales = fetch("_scale", "F32", Some(&scale_shape[..]), 4 * n_scales)?;
                let zero_points = if symmetric {
                    None
                } else {
                    let z = fetch("_zero_point", "I8", Some(&scale_shape[..]), n_scales)?;
                    Some(z.iter().map(|b| *b as i8).collect())
                };
                QuantData::Int8(Int8Data {
                    shape: shape.clone(),
                    values: values.iter().map(|b| *b as i8).collect(),
                    scales: f32_from_bytes(scales),
                    zero_points,
                    granularity,
                })
            }
            Scheme::Int4 { group_size, symmetric } => {
                if cols % group_size != 0 {
                    return Err(QuantError::GroupNotDivisible { tensor: name.to_string(), cols, group_size });
                }
                check_shape_entry()?;
                let n_groups = elems / group_size;
                let groups = [rows, cols / group_size];
                let packed = fetch("_packed", "U8", Some(&[rows, cols / 2][..]), elems / 2)?;
                let scales = fetch("_scale", "F32", Some(&groups[..]), 4 * n_groups)?;
                let zero_points = if symmetric {
                    None
                } else {
                    Some(fetch("_zero_point", "U8", Some(&groups[..]), n_groups)?.to_vec())
                };
                QuantData::Int4(Int4Data {
                    shape: shape.clone(),
                    group_size,
                    packed: packed.to_vec(),
                    scales: f32_from_bytes(scales),
                    zero_points,
                })
            }
            Scheme::Ggml(kind) => {
                check_shape_entry()?;
                let want = elems / kind.block_size() * kind.block_bytes();
                let bytes = fetch("_ggml", "U8", None, want)?;
                QuantData::Ggml { kind, qtensor: qtensor_from_bytes(name, kind.dtype(), bytes, &shape)? }
            }
            Scheme::F16 => {
                let b = fetch("", "F16", Some(&shape[..]), 2 * elems)?;
                QuantData::Half(HalfData::F16 {
                    shape: shape.clone(),
                    values: b.chunks_exact(2).map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]]))).collect(),
                })
            }
            Scheme::Bf16 => {
                let b = fetch("", "BF16", Some(&shape[..]), 2 * elems)?;
                QuantData::Half(HalfData::Bf16 {
                    shape: shape.clone(),
                    values: b.chunks_exact(2).map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]]))).collect(),
                })
            }
        };
        Ok(QuantizedTensor { name: name.to_string(), requested: record.requested.unwrap_or(record.scheme), data })
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32_from_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::compress::quant::scheme::GgmlKind;
    use crate::compress::quant::tensor::quantize;
    use crate::compress::quant::testutil::gaussian;

    fn store(entries: &[TensorEntry]) -> HashMap<String, &TensorEntry> {
        entries.iter().map(|e| (e.name.clone(), e)).collect()
    }

    fn view<'a>(m: &'a HashMap<String, &'a TensorEntry>, n: &str) -> Option<EntryView<'a>> {
        m.get(n).map(|e| EntryView { dtype: e.dtype, shape: &e.shape, bytes: &e.bytes })
    }

    #[test]
    fn int8_entries_exact_layout() {
        let x = [127.0, -63.5, 0.0, 10.0, 127.0, -127.0];
        let t = quantize("fc1.weight", &x, &[2, 3], "int8".parse().unwrap()).unwrap();
        let e = t.to_entries().unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].name.as_str(), e[0].dtype, &e[0].shape[..]), ("fc1.weight", "I8", &[2, 3][..]));
        // −63.5 ties to even: −64.
        assert_eq!(e[0].bytes, vec![127, (-64i8) as u8, 0, 10, 127, (-127i8) as u8]);
        assert_eq!((e[1].name.as_str(), e[1].dtype, &e[1].shape[..]), ("fc1.weight_scale", "F32", &[2, 1][..]));
        assert_eq!(e[1].bytes[..4], 1.0f32.to_le_bytes());
        let t = quantize("b", &x, &[2, 3], "int8_asym_per_tensor".parse().unwrap()).unwrap();
        let e = t.to_entries().unwrap();
        let names: Vec<_> = e.iter().map(|e| (e.name.as_str(), e.dtype, e.shape.clone())).collect();
        assert_eq!(names, vec![("b", "I8", vec![2, 3]), ("b_scale", "F32", vec![1]), ("b_zero_point", "I8", vec![1])]);
    }

    #[test]
    fn int4_entries_exact_layout() {
        let mut x = vec![0f32; 2 * 64];
        x[0] = 12.0; // row 0, group 0: range [−3, 12] → scale 1, zp 3
        x[1] = -3.0;
        let t = quantize("fc2.weight", &x, &[2, 64], "int4_asym_g32".parse().unwrap()).unwrap();
        let e = t.to_entries().unwrap();
        let names: Vec<_> = e.iter().map(|e| (e.name.as_str(), e.dtype, e.shape.clone())).collect();
        assert_eq!(
            names,
            vec![
                ("fc2.weight_packed", "U8", vec![2, 32]),
                ("fc2.weight_scale", "F32", vec![2, 2]),
                ("fc2.weight_zero_point", "U8", vec![2, 2]),
                ("fc2.weight_shape", "I64", vec![2]),
            ]
        );
        // u0 = 12 + 3 = 15 (low nibble), u1 = −3 + 3 = 0 (high nibble), u2.. = 3
        assert_eq!(e[0].bytes[..2], [0x0F, 0x33]);
        assert_eq!(e[2].bytes, vec![3, 0, 0, 0]);
        assert_eq!(e[3].bytes, [2i64.to_le_bytes(), 64i64.to_le_bytes()].concat());
    }

    #[test]
    fn every_scheme_round_trips_through_entries_and_config() {
        let schemes = [
            "int8",
            "int8_asym",
            "int8_per_tensor",
            "int8_asym_per_tensor",
            "int4_g32",
            "int4_asym_g128",
            "q8_0",
            "q4_0",
            "q4_1",
            "q5_0",
            "q5_1",
            "q2_k",
            "q3_k",
            "q4_k",
            "q5_k",
            "q6_k",
            "f16",
            "bf16",
        ];
        for label in schemes {
            let scheme: Scheme = label.parse().unwrap();
            let mut cfg = QuantizationConfig::new(scheme);
            let x = gaussian(3 * 512, 0.1, 51);
            let t = quantize("layer.w", &x, &[3, 2, 256], scheme).unwrap();
            cfg.record(&t);
            cfg.record_float("layer.b");
            let entries = t.to_entries().unwrap();
            let m = store(&entries);
            let cfg = QuantizationConfig::from_json(&cfg.to_json()).unwrap();
            let back = QuantizedTensor::from_entries("layer.w", &cfg.tensors["layer.w"], |n| view(&m, n)).unwrap();
            assert_eq!(back.scheme(), scheme, "{label}");
            assert_eq!(back.shape(), &[3, 2, 256]);
            assert_eq!(back.dequantize().unwrap(), t.dequantize().unwrap(), "{label}");
            assert_eq!(cfg.float_tensors, vec!["layer.b".to_string()]);
        }
    }

    #[test]
    fn fallback_is_recorded() {
        let x = gaussian(2 * 800, 0.1, 52);
        let t = quantize("w", &x, &[2, 800], Scheme::Ggml(GgmlKind::Q4K)).unwrap();
        let mut cfg = QuantizationConfig::new(Scheme::Ggml(GgmlKind::Q4K));
        cfg.record(&t);
        let json = cfg.to_json();
        assert!(json.contains(r#""w":{"scheme":"q5_0","requested":"q4_k","shape":[2,800]}"#), "{json}");
        let cfg = QuantizationConfig::from_json(&json).unwrap();
        let entries = t.to_entries().unwrap();
        assert_eq!(entries[0].shape, vec![2, 25 * 22]);
        let m = store(&entries);
        let back = QuantizedTensor::from_entries("w", &cfg.tensors["w"], |n| view(&m, n)).unwrap();
        assert_eq!(back.requested, Scheme::Ggml(GgmlKind::Q4K));
        assert!(back.fell_back());
    }

    #[test]
    fn config_json_shape() {
        let cfg = QuantizationConfig::new("int4_g128".parse().unwrap());
        assert_eq!(
            cfg.to_json(),
            r#"{"format":"modelpress.quantized","version":1,"scheme":"int4_g128","group_size":128,"symmetric":true,"tensors":{},"float_tensors":[]}"#
        );
        assert!(QuantizationConfig::from_json("{}").is_err());
        let wrong = cfg.to_json().replace("\"version\":1", "\"version\":9");
        let e = QuantizationConfig::from_json(&wrong).unwrap_err();
        assert!(e.to_string().contains("version 9 is not supported"), "{e}");
    }

    #[test]
    fn decoding_errors_are_specific() {
        let x = gaussian(4 * 64, 0.1, 53);
        let t = quantize("w", &x, &[4, 64], "int4_g32".parse().unwrap()).unwrap();
        let mut cfg = QuantizationConfig::new(t.requested);
        cfg.record(&t);
        let rec = &cfg.tensors["w"];
        let entries = t.to_entries().unwrap();
        let mut m = store(&entries);
        m.remove("w_scale");
        let e = QuantizedTensor::from_entries("w", rec, |n| view(&m, n)).unwrap_err();
        assert_eq!(e.to_string(), "tensor w: entry w_scale is missing from the file");
        let mut short = entries[0].clone();
        short.bytes.pop();
        let mut m = store(&entries);
        m.insert("w_packed".into(), &short);
        let e = QuantizedTensor::from_entries("w", rec, |n| view(&m, n)).unwrap_err();
        assert!(e.to_string().contains("entry w_packed is malformed: 127 bytes, expected 128"), "{e}");
        let mut wrong = entries.last().unwrap().clone();
        wrong.bytes = [4i64.to_le_bytes(), 32i64.to_le_bytes()].concat();
        let mut m = store(&entries);
        m.insert("w_shape".into(), &wrong);
        let e = QuantizedTensor::from_entries("w", rec, |n| view(&m, n)).unwrap_err();
        assert!(e.to_string().contains("holds [4, 32]"), "{e}");
    }
}
