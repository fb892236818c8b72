//! Scheme names: what a caller asks for ([`Scheme`]) and the GGML block types ([`GgmlKind`]).
//! Schemes serialise as short labels (`"int8"`, `"int4_g128"`, `"q4_k"`, …) so they fit in job
//! parameters, reports and the `quantization_config` metadata alike. Pure data, any thread.

use std::fmt;
use std::str::FromStr;

use candle_core::quantized::GgmlDType;
use serde::{Deserialize, Serialize};

use super::QuantError;

/// Group sizes accepted by the int4 scheme.
pub const INT4_GROUP_SIZES: [usize; 4] = [32, 64, 128, 256];

/// Scale granularity of the int8 scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// One scale per output row (first dim). Rank-1 tensors are one row, hence per-tensor.
    PerChannel,
    /// One scale for the whole tensor.
    PerTensor,
}

/// GGML block types that candle can quantize to (the storage types of GGUF files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GgmlKind {
    /// 8-bit, blocks of 32, one f16 scale: 8.5 bits/weight.
    #[serde(rename = "q8_0")]
    Q8_0,
    /// 4-bit symmetric, blocks of 32: 4.5 bits/weight.
    #[serde(rename = "q4_0")]
    Q4_0,
    /// 4-bit with min, blocks of 32: 5 bits/weight.
    #[serde(rename = "q4_1")]
    Q4_1,
    /// 5-bit symmetric, blocks of 32: 5.5 bits/weight.
    #[serde(rename = "q5_0")]
    Q5_0,
    /// 5-bit with min, blocks of 32: 6 bits/weight.
    #[serde(rename = "q5_1")]
    Q5_1,
    /// k-quant 2-bit, super-blocks of 256: 2.625 bits/weight.
    #[serde(rename = "q2_k")]
    Q2K,
    /// k-quant 3-bit, super-blocks of 256: 3.4375 bits/weight.
    #[serde(rename = "q3_k")]
    Q3K,
    /// k-quant 4-bit, super-blocks of 256: 4.5 bits/weight.
    #[serde(rename = "q4_k")]
    Q4K,
    /// k-quant 5-bit, super-blocks of 256: 5.5 bits/weight.
    #[serde(rename = "q5_k")]
    Q5K,
    /// k-quant 6-bit, super-blocks of 256: 6.5625 bits/weight.
    #[serde(rename = "q6_k")]
    Q6K,
}

impl GgmlKind {
    /// Every kind, in the order of the docs.
    pub const ALL: [GgmlKind; 10] = [
        GgmlKind::Q8_0,
        GgmlKind::Q4_0,
        GgmlKind::Q4_1,
        GgmlKind::Q5_0,
        GgmlKind::Q5_1,
        GgmlKind::Q2K,
        GgmlKind::Q3K,
        GgmlKind::Q4K,
        GgmlKind::Q5K,
        GgmlKind::Q6K,
    ];

    /// Lower-case name as used by llama.cpp (`q4_k`).
    pub fn name(self) -> &'static str {
        match self {
            GgmlKind::Q8_0 => "q8_0",
            GgmlKind::Q4_0 => "q4_0",
            GgmlKind::Q4_1 => "q4_1",
            GgmlKind::Q5_0 => "q5_0",
            GgmlKind::Q5_1 => "q5_1",
            GgmlKind::Q2K => "q2_k",
            GgmlKind::Q3K => "q3_k",
            GgmlKind::Q4K => "q4_k",
            GgmlKind::Q5K => "q5_k",
            GgmlKind::Q6K => "q6_k",
        }
    }

    /// The candle dtype.
    pub fn dtype(self) -> GgmlDType {
        match self {
            GgmlKind::Q8_0 => GgmlDType::Q8_0,
            GgmlKind::Q4_0 => GgmlDType::Q4_0,
            GgmlKind::Q4_1 => GgmlDType::Q4_1,
            GgmlKind::Q5_0 => GgmlDType::Q5_0,
            GgmlKind::Q5_1 => GgmlDType::Q5_1,
            GgmlKind::Q2K => GgmlDType::Q2K,
            GgmlKind::Q3K => GgmlDType::Q3K,
            GgmlKind::Q4K => GgmlDType::Q4K,
            GgmlKind::Q5K => GgmlDType::Q5K,
            GgmlKind::Q6K => GgmlDType::Q6K,
        }
    }

    /// The kind of a candle dtype, `None` for float and activation-only types.
    pub fn from_dtype(dtype: GgmlDType) -> Option<Self> {
        GgmlKind::ALL.into_iter().find(|k| k.dtype() == dtype)
    }

    /// Number of weights per block (32, or 256 for the k-quants).
    pub fn block_size(self) -> usize {
        self.dtype().block_size()
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        self.dtype().type_size()
    }

    /// The llama.cpp-style replacement when the last dim is not a multiple of the block size:
    /// a 32-block type of at least the same bit width, `None` for types that are already 32-blocks
    /// (their only fallback is f16).
    pub fn fallback(self) -> Option<GgmlKind> {
        match self {
            // llama.cpp uses IQ4_NL here, which candle lacks; Q4_0 is the nearest 32-block type.
            GgmlKind::Q2K | GgmlKind::Q3K => Some(GgmlKind::Q4_0),
            GgmlKind::Q4K => Some(GgmlKind::Q5_0),
            GgmlKind::Q5K => Some(GgmlKind::Q5_1),
            GgmlKind::Q6K => Some(GgmlKind::Q8_0),
            GgmlKind::Q8_0 | GgmlKind::Q4_0 | GgmlKind::Q4_1 | GgmlKind::Q5_0 | GgmlKind::Q5_1 => None,
        }
    }
}

impl fmt::Display for GgmlKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A quantization scheme, requested by a job or recorded per tensor.
///
/// Serialises as its label (see [`Scheme::label`] and `FromStr`):
/// `int8`, `int8_asym`, `int8_per_tensor`, `int8_asym_per_tensor`, `int4_g128`, `int4_asym_g32`,
/// `q8_0` … `q6_k`, `f16`, `bf16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Scheme {
    /// Weight-only int8 (see `docs/formats.md`).
    Int8 {
        /// Symmetric (no zero point) or asymmetric.
        symmetric: bool,
        /// One scale per row or per tensor.
        granularity: Granularity,
    },
    /// Weight-only int4, groups along the row, two values per byte.
    Int4 {
        /// Weights per scale, one of [`INT4_GROUP_SIZES`].
        group_size: usize,
        /// Symmetric (q in [-8, 7]) or asymmetric (q in [0, 15] with a zero point).
        symmetric: bool,
    },
    /// A GGML block type through candle.
    Ggml(GgmlKind),
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl Scheme {
    /// The canonical label, inverse of `FromStr`.
    pub fn label(&self) -> String {
        match *self {
            Scheme::Int8 { symmetric, granularity } => {
                let mut s = String::from("int8");
                if !symmetric {
                    s.push_str("_asym");
                }
                if granularity == Granularity::PerTensor {
                    s.push_str("_per_tensor");
                }
                s
            }
            Scheme::Int4 { group_size, symmetric } => {
                if symmetric {
                    format!("int4_g{group_size}")
                } else {
                    format!("int4_asym_g{group_size}")
                }
            }
            Scheme::Ggml(kind) => kind.name().to_string(),
            Scheme::F16 => "f16".to_string(),
            Scheme::Bf16 => "bf16".to_string(),
        }
    }

    /// Nominal storage cost in bits per weight, scales included (for reports and sanity checks).
    pub fn bits_per_weight(&self) -> f64 {
        match *self {
            Scheme::Int8 { .. } => 8.0,
            Scheme::Int4 { group_size, symmetric } => {
                let zp = if symmetric { 0.0 } else { 8.0 };
                4.0 + (32.0 + zp) / group_size as f64
            }
            Scheme::Ggml(kind) => (kind.block_bytes() * 8) as f64 / kind.block_size() as f64,
            Scheme::F16 | Scheme::Bf16 => 16.0,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

impl From<Scheme> for String {
    fn from(s: Scheme) -> String {
        s.label()
    }
}

impl TryFrom<String> for Scheme {
    type Error = QuantError;
    fn try_from(s: String) -> Result<Self, QuantError> {
        s.parse()
    }
}

impl FromStr for Scheme {
    type Err = QuantError;

    /// Parses a label, case-insensitively. `int8_sym`, `int8_per_channel` and `int4_sym_g128`
    /// are accepted as synonyms of the canonical forms.
    fn from_str(s: &str) -> Result<Self, QuantError> {
        let lower = s.trim().to_ascii_lowercase();
        let unknown = || QuantError::UnknownScheme(s.to_string());
        if let Some(kind) = GgmlKind::ALL.into_iter().find(|k| k.name() == lower) {
            return Ok(Scheme::Ggml(kind));
        }
        match lower.as_str() {
            "f16" | "fp16" | "float16" => return Ok(Scheme::F16),
            "bf16" | "bfloat16" => return Ok(Scheme::Bf16),
            _ => {}
        }
        let mut parts = lower.split('_');
        match parts.next() {
            Some("int8") => {
                let mut symmetric = true;
                let mut granularity = Granularity::PerChannel;
                let rest: Vec<&str> = parts.collect();
                let mut i = 0;
                while i < rest.len() {
                    match (rest[i], rest.get(i + 1)) {
                        ("sym", _) => symmetric = true,
                        ("asym", _) => symmetric = false,
                        ("per", Some(&"tensor")) => {
                            granularity = Granularity::PerTensor;
                            i += 1;
                        }
                        ("per", Some(&"channel")) => {
                            granularity = Granularity::PerChannel;
                            i += 1;
                        }
                        _ => return Err(unknown()),
                    }
                    i += 1;
                }
                Ok(Scheme::Int8 { symmetric, granularity })
            }
            Some("int4") => {
                let mut symmetric = true;
                let mut group_size = None;
                for p in parts {
                    match p {
                        "sym" => symmetric = true,
                        "asym" => symmetric = false,
                        g if g.starts_with('g') => {
                            let n: usize = g[1..].parse().map_err(|_| unknown())?;
                            if !INT4_GROUP_SIZES.contains(&n) {
                                return Err(QuantError::InvalidGroupSize(n));
                            }
                            group_size = Some(n);
                        }
                        _ => return Err(unknown()),
                    }
                }
                Ok(Scheme::Int4 { group_size: group_size.ok_or_else(unknown)?, symmetric })
            }
            _ => Err(unknown()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip() {
        let mut all = vec![
            Scheme::F16,
            Scheme::Bf16,
            Scheme::Int4 { group_size: 64, symmetric: false },
            Scheme::Int4 { group_size: 128, symmetric: true },
        ];
        for symmetric in [true, false] {
            for granularity in [Granularity::PerChannel, Granularity::PerTensor] {
                all.push(Scheme::Int8 { symmetric, granularity });
            }
        }
        all.extend(GgmlKind::ALL.map(Scheme::Ggml));
        for s in all {
            assert_eq!(s.label().parse::<Scheme>().unwrap(), s, "{s}");
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.label()));
            assert_eq!(serde_json::from_str::<Scheme>(&json).unwrap(), s);
        }
        assert_eq!("int8".parse::<Scheme>().unwrap().label(), "int8");
        assert_eq!("INT8_sym_per_channel".parse::<Scheme>().unwrap().label(), "int8");
        assert_eq!("q4_k".parse::<Scheme>().unwrap(), Scheme::Ggml(GgmlKind::Q4K));
    }

    #[test]
    fn bad_labels_are_rejected() {
        for bad in ["int4", "int4_g48", "int8_foo", "q7_k", "", "int8_per"] {
            assert!(bad.parse::<Scheme>().is_err(), "{bad}");
        }
        assert!(matches!("int4_g48".parse::<Scheme>(), Err(QuantError::InvalidGroupSize(48))));
    }

    #[test]
    fn bits_per_weight_match_block_sizes() {
        assert_eq!(Scheme::Ggml(GgmlKind::Q8_0).bits_per_weight(), 8.5);
        assert_eq!(Scheme::Ggml(GgmlKind::Q4K).bits_per_weight(), 4.5);
        assert_eq!(Scheme::Ggml(GgmlKind::Q6K).bits_per_weight(), 6.5625);
        assert_eq!(Scheme::Int4 { group_size: 128, symmetric: true }.bits_per_weight(), 4.25);
    }
}
