//! Streaming safetensors writer. The caller declares every output tensor (name, dtype, shape)
//! up front — quantized sizes are known from shapes — so the header is written first and the
//! data follows tensor by tensor without holding the model in memory.
//!
//! Files are written under a temporary name by the caller (see `storage`), fsynced by
//! [`TensorWriter::finish`], and only then renamed into place.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::header::{Dtype, TensorfileError};

/// One declared output tensor.
#[derive(Debug, Clone)]
pub struct TensorPlan {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl TensorPlan {
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: Vec<usize>) -> Self {
        TensorPlan { name: name.into(), dtype, shape }
    }
    pub fn nbytes(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product::<u64>() * self.dtype.size() as u64
    }
}

/// Writes tensors in the declared order.
pub struct TensorWriter {
    out: BufWriter<File>,
    plans: Vec<TensorPlan>,
    next: usize,
    written_in_current: u64,
    total: u64,
}

impl TensorWriter {
    /// Creates `path` and writes the header for `plans` (in that order) and `metadata`.
    pub fn create(
        path: &Path,
        plans: Vec<TensorPlan>,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Self, TensorfileError> {
        let mut header = serde_json::Map::new();
        if !metadata.is_empty() {
            header.insert("__metadata__".into(), serde_json::to_value(metadata).expect("string map serializes"));
        }
        let mut offset = 0u64;
        let mut names = std::collections::HashSet::new();
        for p in &plans {
            if !names.insert(p.name.as_str()) || p.name == "__metadata__" {
                return Err(TensorfileError::Duplicate(p.name.clone()));
            }
            let n = p.nbytes();
            header.insert(
                p.name.clone(),
                serde_json::json!({"dtype": p.dtype.as_str(), "shape": p.shape, "data_offsets": [offset, offset + n]}),
            );
            offset += n;
        }
        let mut json = serde_json::to_vec(&header).expect("json value serializes");
        // Pad with spaces to 8-byte alignment, as the reference implementation does, so that
        // readers can map the data section aligned.
        while (json.len() + 8) % 8 != 0 {
            json.push(b' ');
        }
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
        out.write_all(&(json.len() as u64).to_le_bytes())?;
        out.write_all(&json)?;
        Ok(TensorWriter { out, plans, next: 0, written_in_current: 0, total: offset })
    }

    /// Total bytes of the data section.
    pub fn data_len(&self) -> u64 {
        self.total
    }

    /// Name of the tensor the next bytes belong to.
    pub fn current(&self) -> Option<&TensorPlan> {
        self.plans.get(self.next)
    }

    /// Appends bytes of the current tensor (may be called several times per tensor).
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), TensorfileError> {
        crate::fault::write_check()?;
        let mut rest = bytes;
        while !rest.is_empty() {
            let plan = self.plans.get(self.next).ok_or_else(|| TensorfileError::Tensor {
                name: "<end>".into(),
                msg: "more data than declared".into(),
            })?;
            let need = plan.nbytes() - self.written_in_current;
            let take = need.min(rest.len() as u64) as usize;
            self.out.write_all(&rest[..take])?;
            self.written_in_current += take as u64;
            rest = &rest[take..];
            self.skip_completed();
        }
        Ok(())
    }

    fn skip_completed(&mut self) {
        while let Some(p) = self.plans.get(self.next) {
            if self.written_in_current == p.nbytes() {
                self.next += 1;
                self.written_in_current = 0;
            } else {
                break;
            }
        }
    }

    /// Writes a whole tensor of f32 values, converting to the planned dtype (F32/F16/BF16).
    pub fn write_f32_as(&mut self, values: &[f32]) -> Result<(), TensorfileError> {
        let plan = self.current().cloned().ok_or_else(|| TensorfileError::Tensor {
            name: "<end>".into(),
            msg: "more tensors than declared".into(),
        })?;
        let mut buf = Vec::with_capacity(values.len() * plan.dtype.size());
        match plan.dtype {
            Dtype::F32 => values.iter().for_each(|v| buf.extend_from_slice(&v.to_le_bytes())),
            Dtype::F16 => values.iter().for_each(|v| buf.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
            Dtype::Bf16 => values.iter().for_each(|v| buf.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
            other => {
                return Err(TensorfileError::Tensor {
                    name: plan.name,
                    msg: format!("cannot write f32 values as {other}"),
                })
            }
        }
        self.write(&buf)
    }

    /// Flushes and fsyncs; fails if a declared tensor is incomplete.
    pub fn finish(mut self) -> Result<u64, TensorfileError> {
        self.skip_completed();
        if let Some(p) = self.plans.get(self.next) {
            return Err(TensorfileError::Tensor {
                name: p.name.clone(),
                msg: "fewer bytes written than declared".into(),
            });
        }
        self.out.flush()?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(file.metadata()?.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensorfile::{HeaderLimits, Tensorfile};

    #[test]
    fn round_trip_through_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let plans = vec![
            TensorPlan::new("a", Dtype::F32, vec![2, 3]),
            TensorPlan::new("b", Dtype::F16, vec![3]),
            TensorPlan::new("empty", Dtype::F32, vec![0]),
            TensorPlan::new("c", Dtype::I8, vec![4]),
        ];
        let mut meta = BTreeMap::new();
        meta.insert("k".to_string(), "v".to_string());
        let mut w = TensorWriter::create(&path, plans, &meta).unwrap();
        w.write_f32_as(&[1., 2., 3., 4., 5., 6.]).unwrap();
        w.write_f32_as(&[0.5, -1.0, 2.0]).unwrap();
        w.write(&[1u8, 2]).unwrap();
        w.write(&[255u8, 4]).unwrap();
        w.finish().unwrap();
        let f = Tensorfile::open(&path, HeaderLimits::default()).unwrap();
        assert_eq!(f.header.metadata["k"], "v");
        assert_eq!(f.to_f32(f.entry("a").unwrap()).unwrap(), vec![1., 2., 3., 4., 5., 6.]);
        assert_eq!(f.to_f32(f.entry("b").unwrap()).unwrap(), vec![0.5, -1.0, 2.0]);
        assert_eq!(f.to_f32(f.entry("c").unwrap()).unwrap(), vec![1., 2., -1., 4.]);
    }

    #[test]
    fn incomplete_write_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let mut w =
            TensorWriter::create(&path, vec![TensorPlan::new("a", Dtype::F32, vec![2])], &BTreeMap::new()).unwrap();
        w.write(&[0u8; 4]).unwrap();
        assert!(w.finish().is_err());
    }
}
