//! Dataset splits for training and evaluation, loaded from safetensors files.
//!
//! A dataset file holds `train_x`/`train_y`, `test_x`/`test_y` and/or `x`/`y`. `x` may have any
//! float or integer dtype (kept raw; the network's preprocessing converts it), `y` any integer
//! dtype (converted to class indices `u32`). Called by job workers before training/evaluation;
//! pure, runs on the caller's thread.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::ops::Preprocessor;
use super::spec::{InputSpec, ModelSpec};
use super::NnError;

/// Samples (raw dtype, `[N, ...]`) with optional class labels.
#[derive(Debug, Clone)]
pub struct Split {
    /// Inputs, raw dtype, batch dim first.
    pub x: Tensor,
    /// Class indices, one per sample (absent for unlabelled data).
    pub y: Option<Vec<u32>>,
}

impl Split {
    /// Builds a split, checking that labels match the sample count.
    pub fn new(x: Tensor, y: Option<Vec<u32>>) -> Result<Split, NnError> {
        if x.rank() < 2 {
            return Err(NnError::Data(format!(
                "x must have a batch dimension and at least one feature dimension, got shape {:?}",
                x.dims()
            )));
        }
        if let Some(y) = &y {
            if y.len() != x.dim(0)? {
                return Err(NnError::Data(format!(
                    "x has {} samples but y has {} labels",
                    x.dim(0)?,
                    y.len()
                )));
            }
        }
        Ok(Split { x, y })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.x.dims()[0]
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The per-sample shape (`x` without its batch dim).
    pub fn sample_shape(&self) -> &[usize] {
        &self.x.dims()[1..]
    }

    /// The first `n` samples (or all of them).
    pub fn head(&self, n: usize) -> Result<Split, NnError> {
        let n = n.min(self.len());
        Ok(Split {
            x: self.x.narrow(0, 0, n)?,
            y: self.y.as_ref().map(|y| y[..n].to_vec()),
        })
    }

    /// Checks that the samples fit `spec` (shape, labels below `classes`).
    pub fn check_for(&self, spec: &ModelSpec) -> Result<(), NnError> {
        if self.sample_shape() != spec.input.shape.as_slice() {
            return Err(NnError::Data(format!(
                "samples have shape {:?} but the model expects {:?}",
                self.sample_shape(),
                spec.input.shape
            )));
        }
        if !is_numeric(self.x.dtype()) {
            return Err(NnError::Data(format!("x has unsupported dtype {:?}", self.x.dtype())));
        }
        if let Some(y) = &self.y {
            let classes = spec.output.classes;
            if let Some((i, v)) = y.iter().enumerate().find(|(_, v)| **v as usize >= classes) {
                return Err(NnError::Data(format!(
                    "label {v} at index {i} is out of range for {classes} classes"
                )));
            }
        }
        Ok(())
    }

    /// `x` converted to f32 and preprocessed as `input` declares (what the layers see).
    pub fn preprocessed(&self, input: &InputSpec) -> Result<Tensor, NnError> {
        Ok(Preprocessor::new(input)?.apply(&self.x)?)
    }

    /// Labels as a `U32` tensor, if present.
    pub fn labels_tensor(&self) -> Result<Option<Tensor>, NnError> {
        match &self.y {
            Some(y) => Ok(Some(Tensor::new(y.as_slice(), &Device::Cpu)?)),
            None => Ok(None),
        }
    }
}

fn is_numeric(d: DType) -> bool {
    matches!(
        d,
        DType::U8 | DType::U32 | DType::I16 | DType::I32 | DType::I64 | DType::BF16 | DType::F16 | DType::F32 | DType::F64
    )
}

/// The splits found in a dataset file.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    /// `train_x` / `train_y`.
    pub train: Option<Split>,
    /// `test_x` / `test_y`.
    pub test: Option<Split>,
    /// `x` / `y` (a dataset without a split).
    pub all: Option<Split>,
}

impl Dataset {
    /// Loads a dataset from a safetensors file (tensors are copied into memory).
    pub fn load(path: &Path) -> Result<Dataset, NnError> {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
            NnError::Data(format!("cannot read {} as safetensors: {e}", path.display()))
        })?;
        Self::from_tensors(tensors)
    }

    /// Loads a dataset from safetensors bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Dataset, NnError> {
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| NnError::Data(format!("not a valid safetensors file: {e}")))?;
        Self::from_tensors(tensors)
    }

    /// Picks the splits out of named tensors. At least one `*x` tensor must be present; a `*y`
    /// without its `*x` is an error.
    pub fn from_tensors(mut tensors: HashMap<String, Tensor>) -> Result<Dataset, NnError> {
        let mut take = |prefix: &str| -> Result<Option<Split>, NnError> {
            let x = tensors.remove(&format!("{prefix}x"));
            let y = tensors.remove(&format!("{prefix}y"));
            match (x, y) {
                (None, None) => Ok(None),
                (None, Some(_)) => Err(NnError::Data(format!("{prefix}y is present without {prefix}x"))),
                (Some(x), y) => {
                    if !is_numeric(x.dtype()) {
                        return Err(NnError::Data(format!("{prefix}x has unsupported dtype {:?}", x.dtype())));
                    }
                    let y = y.map(|y| labels_to_u32(&format!("{prefix}y"), &y)).transpose()?;
                    Split::new(x, y)
                        .map(Some)
                        .map_err(|e| NnError::Data(format!("split {prefix}: {e}")))
                }
            }
        };
        let ds = Dataset {
            train: take("train_")?,
            test: take("test_")?,
            all: take("")?,
        };
        if ds.train.is_none() && ds.test.is_none() && ds.all.is_none() {
            return Err(NnError::Data(
                "no samples found: expected tensors train_x/train_y, test_x/test_y or x/y".into(),
            ));
        }
        Ok(ds)
    }
}

/// Converts integer labels (I64/I32/I16/U8/U32, rank 1) to class indices.
pub fn labels_to_u32(name: &str, y: &Tensor) -> Result<Vec<u32>, NnError> {
    if y.rank() != 1 {
        return Err(NnError::Data(format!("{name} must be one label per sample (rank 1), got shape {:?}", y.dims())));
    }
    let bad = |i: usize, v: i64| NnError::Data(format!("{name}: label {v} at index {i} is not a valid class index"));
    match y.dtype() {
        DType::U8 | DType::U32 => Ok(y.to_dtype(DType::U32)?.to_vec1::<u32>()?),
        DType::I16 | DType::I32 | DType::I64 => {
            let v = y.to_dtype(DType::I64)?.to_vec1::<i64>()?;
            v.iter()
                .enumerate()
                .map(|(i, &l)| u32::try_from(l).map_err(|_| bad(i, l)))
                .collect()
        }
        other => Err(NnError::Data(format!("{name} must have an integer dtype, got {other:?}"))),
    }
}
