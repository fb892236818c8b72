//! Memory-mapped access to a validated safetensors file: tensors are read in place, one at a
//! time, so peak memory stays near the largest tensor being converted (CANDLE.md: candle's own
//! `safetensors::load` copies the whole file).

use std::fs::File;
use std::path::Path;

use half::{bf16, f16};
use memmap2::Mmap;

use super::header::{parse_header, Dtype, Header, HeaderLimits, TensorEntry, TensorfileError};

/// An open safetensors file.
pub struct Tensorfile {
    mmap: Mmap,
    pub header: Header,
}

impl Tensorfile {
    /// Opens and validates `path`.
    pub fn open(path: &Path, limits: HeaderLimits) -> Result<Tensorfile, TensorfileError> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let header = parse_header(std::io::BufReader::new(&file), len, limits)?;
        // SAFETY: artifacts are written once (temp file, then rename) and never modified in
        // place, so the mapping cannot change under us.
        let mmap = unsafe { Mmap::map(&file)? };
        Ok(Tensorfile { mmap, header })
    }

    /// Opens a file this service wrote or already validated (no tensor-count limit).
    pub fn open_trusted(path: &Path) -> Result<Tensorfile, TensorfileError> {
        Tensorfile::open(path, HeaderLimits { max_header_bytes: u64::MAX / 2, max_tensors: usize::MAX })
    }

    pub fn entry(&self, name: &str) -> Result<&TensorEntry, TensorfileError> {
        self.header.get(name).ok_or_else(|| TensorfileError::Missing(name.to_string()))
    }

    /// The raw little-endian bytes of a tensor.
    pub fn bytes(&self, t: &TensorEntry) -> &[u8] {
        let start = (self.header.data_start + t.begin) as usize;
        let end = (self.header.data_start + t.end) as usize;
        &self.mmap[start..end]
    }

    /// A float tensor widened/narrowed to f32 (F16, BF16, F32, F64; integer types as values).
    pub fn to_f32(&self, t: &TensorEntry) -> Result<Vec<f32>, TensorfileError> {
        let b = self.bytes(t);
        Ok(match t.dtype {
            Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::F16 => b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::Bf16 => b.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::F64 => {
                b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("chunks of 8")) as f32).collect()
            }
            Dtype::U8 => b.iter().map(|&v| v as f32).collect(),
            Dtype::I8 => b.iter().map(|&v| v as i8 as f32).collect(),
            Dtype::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32).collect(),
            Dtype::I64 => {
                b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("chunks of 8")) as f32).collect()
            }
            other => {
                return Err(TensorfileError::Tensor {
                    name: t.name.clone(),
                    msg: format!("cannot convert {other} to f32"),
                })
            }
        })
    }
}
