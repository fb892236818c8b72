//! safetensors header: `u64` little-endian length N, N bytes of JSON, then the data section.
//! [`parse_header`] checks everything the format requires and names the first offending
//! tensor, so a user learns exactly what is wrong with their file.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io::Read;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// Why a file is not acceptable safetensors.
#[derive(Debug, thiserror::Error)]
pub enum TensorfileError {
    #[error("file is {0} bytes; a safetensors file starts with an 8-byte header length")]
    TooShort(u64),
    #[error("header length {len} goes beyond the file ({file} bytes)")]
    HeaderBeyondFile { len: u64, file: u64 },
    #[error("header length {len} exceeds the limit of {limit} bytes")]
    HeaderTooLarge { len: u64, limit: u64 },
    #[error("header is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("tensor '{name}': unknown dtype '{dtype}'")]
    UnknownDtype { name: String, dtype: String },
    #[error("tensor '{name}': shape {shape:?} × {dtype} ({size} bytes each) needs {expected} bytes but data_offsets span {actual}")]
    SizeMismatch { name: String, shape: Vec<usize>, dtype: Dtype, size: usize, expected: u128, actual: u64 },
    #[error("tensor '{name}': data_offsets [{begin}, {end}] are reversed")]
    ReversedRange { name: String, begin: u64, end: u64 },
    #[error("tensor '{name}': data_offsets [{begin}, {end}] go beyond the data section ({data_len} bytes)")]
    OutOfBounds { name: String, begin: u64, end: u64, data_len: u64 },
    #[error("tensors '{a}' and '{b}' overlap in the data section")]
    Overlap { a: String, b: String },
    #[error("gap of {len} bytes in the data section before tensor '{name}' (offset {at})")]
    Gap { name: String, at: u64, len: u64 },
    #[error("{0} trailing bytes after the last tensor")]
    TrailingBytes(u64),
    #[error("duplicate tensor name '{0}'")]
    Duplicate(String),
    #[error("{count} tensors exceed the limit of {limit}")]
    TooManyTensors { count: usize, limit: usize },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("tensor '{0}' not found")]
    Missing(String),
    #[error("tensor '{name}': {msg}")]
    Tensor { name: String, msg: String },
}

/// Element types of the safetensors format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Dtype {
    Bool,
    U8,
    I8,
    #[serde(rename = "F8_E5M2")]
    F8E5M2,
    #[serde(rename = "F8_E4M3")]
    F8E4M3,
    I16,
    U16,
    F16,
    Bf16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

impl Dtype {
    pub fn parse(s: &str) -> Option<Dtype> {
        Some(match s {
            "BOOL" => Dtype::Bool,
            "U8" => Dtype::U8,
            "I8" => Dtype::I8,
            "F8_E5M2" => Dtype::F8E5M2,
            "F8_E4M3" => Dtype::F8E4M3,
            "I16" => Dtype::I16,
            "U16" => Dtype::U16,
            "F16" => Dtype::F16,
            "BF16" => Dtype::Bf16,
            "I32" => Dtype::I32,
            "U32" => Dtype::U32,
            "F32" => Dtype::F32,
            "F64" => Dtype::F64,
            "I64" => Dtype::I64,
            "U64" => Dtype::U64,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::Bf16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
        }
    }
    pub fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E5M2 | Dtype::F8E4M3 => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::Bf16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F16 | Dtype::Bf16 | Dtype::F32 | Dtype::F64)
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One tensor's header entry; `begin`/`end` are relative to the data section.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub begin: u64,
    pub end: u64,
}

impl TensorEntry {
    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
    pub fn nbytes(&self) -> u64 {
        self.end - self.begin
    }
}

/// A parsed, validated header.
#[derive(Debug, Clone)]
pub struct Header {
    /// Tensors in file order (by data offset).
    pub tensors: Vec<TensorEntry>,
    pub metadata: BTreeMap<String, String>,
    /// Absolute offset of the data section (8 + header length).
    pub data_start: u64,
    pub data_len: u64,
}

impl Header {
    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.iter().find(|t| t.name == name)
    }
    pub fn parameter_count(&self) -> u64 {
        self.tensors.iter().map(TensorEntry::numel).sum()
    }
    /// Bytes per dtype, e.g. `{"F32": 337448}`.
    pub fn bytes_by_dtype(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for t in &self.tensors {
            *m.entry(t.dtype.as_str().to_string()).or_insert(0) += t.nbytes();
        }
        m
    }
}

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct HeaderLimits {
    pub max_header_bytes: u64,
    pub max_tensors: usize,
}

impl Default for HeaderLimits {
    fn default() -> Self {
        HeaderLimits { max_header_bytes: 100 * 1024 * 1024, max_tensors: 65_536 }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// Collects the top-level JSON object as an ordered list, so duplicate keys are seen (a plain
/// map would keep only the last one silently).
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object mapping tensor names to entries")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = map.next_entry::<String, serde_json::Value>()? {
                    v.push((k, val));
                }
                Ok(Entries(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// Reads and validates the header of a safetensors file of `file_len` bytes.
pub fn parse_header<R: Read>(mut r: R, file_len: u64, limits: HeaderLimits) -> Result<Header, TensorfileError> {
    if file_len < 8 {
        return Err(TensorfileError::TooShort(file_len));
    }
    let mut len_buf = [0u8; 8];
    r.read_exact(&mut len_buf)?;
    let len = u64::from_le_bytes(len_buf);
    if len > file_len - 8 {
        return Err(TensorfileError::HeaderBeyondFile { len, file: file_len });
    }
    if len > limits.max_header_bytes {
        return Err(TensorfileError::HeaderTooLarge { len, limit: limits.max_header_bytes });
    }
    let mut json = vec![0u8; len as usize];
    r.read_exact(&mut json)?;
    parse_header_json(&json, 8 + len, file_len, limits)
}

fn parse_header_json(
    json: &[u8],
    data_start: u64,
    file_len: u64,
    limits: HeaderLimits,
) -> Result<Header, TensorfileError> {
    let entries: Entries = serde_json::from_slice(json).map_err(|e| TensorfileError::InvalidJson(e.to_string()))?;
    let data_len = file_len - data_start;
    let mut seen = HashSet::new();
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::new();
    for (name, value) in entries.0 {
        if !seen.insert(name.clone()) {
            return Err(TensorfileError::Duplicate(name));
        }
        if name == "__metadata__" {
            metadata = serde_json::from_value(value)
                .map_err(|e| TensorfileError::InvalidJson(format!("__metadata__ must map strings to strings: {e}")))?;
            continue;
        }
        if tensors.len() >= limits.max_tensors {
            return Err(TensorfileError::TooManyTensors { count: tensors.len() + 1, limit: limits.max_tensors });
        }
        let raw: RawEntry =
            serde_json::from_value(value).map_err(|e| TensorfileError::InvalidJson(format!("tensor '{name}': {e}")))?;
        let dtype = Dtype::parse(&raw.dtype)
            .ok_or_else(|| TensorfileError::UnknownDtype { name: name.clone(), dtype: raw.dtype.clone() })?;
        let (begin, end) = raw.data_offsets;
        if end < begin {
            return Err(TensorfileError::ReversedRange { name, begin, end });
        }
        let expected: u128 =
            raw.shape.iter().try_fold(dtype.size() as u128, |acc, &d| acc.checked_mul(d as u128)).unwrap_or(u128::MAX);
        let shape: Vec<usize> = raw.shape.iter().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect();
        if expected != (end - begin) as u128 {
            return Err(TensorfileError::SizeMismatch {
                name,
                shape,
                dtype,
                size: dtype.size(),
                expected,
                actual: end - begin,
            });
        }
        if end > data_len {
            return Err(TensorfileError::OutOfBounds { name, begin, end, data_len });
        }
        tensors.push(TensorEntry { name, dtype, shape, begin, end });
    }
    let count = tensors.len();
    if count > limits.max_tensors {
        return Err(TensorfileError::TooManyTensors { count, limit: limits.max_tensors });
    }
    // Ranges must tile [0, data_len) exactly: sort by start, then walk. A zero-sized tensor
    // must sit on a boundary between tensors, not inside another tensor's range: that is what
    // the `safetensors` crate (and so candle's loader, and Hugging Face tooling) accepts, and a
    // file we store must load everywhere (fuzz/ differential target, docs/reliability.md).
    tensors.sort_by(|a, b| (a.begin, a.end).cmp(&(b.begin, b.end)).then(a.name.cmp(&b.name)));
    let mut pos = 0u64;
    let mut last: Option<&str> = None;
    for t in &tensors {
        if t.begin < pos {
            return Err(TensorfileError::Overlap { a: last.unwrap_or("?").to_string(), b: t.name.clone() });
        }
        if t.begin > pos {
            return Err(TensorfileError::Gap { name: t.name.clone(), at: pos, len: t.begin - pos });
        }
        if t.end > pos {
            pos = t.end;
            last = Some(&t.name);
        }
    }
    if pos < data_len {
        return Err(TensorfileError::TrailingBytes(data_len - pos));
    }
    Ok(Header { tensors, metadata, data_start, data_len })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data_len: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend(std::iter::repeat_n(0u8, data_len));
        v
    }

    #[test]
    fn zero_sized_tensors_sit_on_boundaries_only() {
        let ok = file(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"z":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            8,
        );
        assert!(parse(&ok).is_ok());
        let inside = file(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"z":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}}"#,
            8,
        );
        assert!(matches!(parse(&inside), Err(TensorfileError::Overlap { .. })), "{:?}", parse(&inside));
        // The safetensors crate agrees on both.
        assert!(safetensors::SafeTensors::deserialize(&ok).is_ok());
        assert!(safetensors::SafeTensors::deserialize(&inside).is_err());
    }

    fn parse(bytes: &[u8]) -> Result<Header, TensorfileError> {
        parse_header(bytes, bytes.len() as u64, HeaderLimits { max_header_bytes: 1 << 20, max_tensors: 3 })
    }

    #[test]
    fn accepts_valid_file() {
        let h = r#"{"__metadata__":{"a":"b"},"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"F16","shape":[2],"data_offsets":[16,20]},"e":{"dtype":"F32","shape":[0],"data_offsets":[20,20]}}"#;
        let hd = parse(&file(h, 20)).unwrap();
        assert_eq!(hd.tensors.len(), 3);
        assert_eq!(hd.parameter_count(), 6);
        assert_eq!(hd.bytes_by_dtype()["F32"], 16);
        assert_eq!(hd.metadata["a"], "b");
    }

    #[test]
    fn rejects_each_defect() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![1, 2, 3], "8-byte header length"),
            (
                {
                    let mut v = file("{}", 0);
                    v[0] = 200;
                    v
                },
                "goes beyond the file",
            ),
            (file("{not json", 0), "not valid JSON"),
            (file(r#"{"w":{"dtype":"Q9","shape":[1],"data_offsets":[0,4]}}"#, 4), "unknown dtype 'Q9'"),
            (
                file(r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, 8),
                "needs 12 bytes but data_offsets span 8",
            ),
            (file(r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, 4), "beyond the data section"),
            (
                file(
                    r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"v":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                    12,
                ),
                "overlap",
            ),
            (file(r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, 8), "gap of 4 bytes"),
            (file(r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, 9), "5 trailing bytes"),
            (
                file(
                    r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                    8,
                ),
                "duplicate tensor name 'w'",
            ),
            (
                file(
                    r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"b":{"dtype":"U8","shape":[1],"data_offsets":[1,2]},"c":{"dtype":"U8","shape":[1],"data_offsets":[2,3]},"d":{"dtype":"U8","shape":[1],"data_offsets":[3,4]}}"#,
                    4,
                ),
                "exceed the limit of 3",
            ),
            (file(r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#, 4), "reversed"),
        ];
        for (bytes, want) in cases {
            let err = parse(&bytes).unwrap_err().to_string();
            assert!(err.contains(want), "expected '{want}' in '{err}'");
        }
    }

    #[test]
    fn huge_shapes_do_not_overflow() {
        let h = r#"{"w":{"dtype":"F64","shape":[18446744073709551615,18446744073709551615],"data_offsets":[0,8]}}"#;
        let err = parse(&file(h, 8)).unwrap_err().to_string();
        assert!(err.contains("data_offsets span 8"), "{err}");
    }
}
