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
                return Err(NnError::Data(format!("x has {} samples but y has {} labels", x.dim(0)?, y.len())));
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
        Ok(Split { x: self.x.narrow(0, 0, n)?, y: self.y.as_ref().map(|y| y[..n].to_vec()) })
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
                return Err(NnError::Data(format!("label {v} at index {i} is out of range for {classes} classes")));
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
        DType::U8
            | DType::U32
            | DType::I16
            | DType::I32
            | DType::I64
            | DType::BF16
            | DType::F16
            | DType::F32
            | DType::F64
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
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| NnError::Data(format!("cannot read {} as safetensors: {e}", path.display())))?;
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
                    Split::new(x, y).map(Some).map_err(|e| NnError::Data(format!("split {prefix}: {e}")))
                }
            }
        };
        let ds = Dataset { train: take("train_")?, test: take("test_")?, all: take("")? };
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
            v.iter().enumerate().map(|(i, &l)| u32::try_from(l).map_err(|_| bad(i, l))).collect()
        }
        other => Err(NnError::Data(format!("{name} must have an integer dtype, got {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::model::tests::FIXTURES;

    #[test]
    fn loads_fixture_splits() {
        let digits = Dataset::load(Path::new(&format!("{FIXTURES}/digits.safetensors"))).unwrap();
        let train = digits.train.unwrap();
        assert_eq!(train.x.dims(), &[1437, 64]);
        assert_eq!(train.y.as_ref().unwrap().len(), 1437);
        assert!(train.y.as_ref().unwrap().iter().all(|&c| c < 10));
        assert!(digits.all.is_none());

        let mnist = Dataset::load(Path::new(&format!("{FIXTURES}/mnist5k.safetensors"))).unwrap();
        let test = mnist.test.unwrap();
        assert_eq!(test.x.dtype(), DType::U8);
        assert_eq!(test.sample_shape(), &[1, 28, 28]);
        let mut counts = [0usize; 10];
        for &c in test.y.as_ref().unwrap() {
            counts[c as usize] += 1;
        }
        assert_eq!(counts.iter().sum::<usize>(), 1000);
        assert!(counts.iter().all(|&c| c > 50), "{counts:?}");
    }

    #[test]
    fn preprocessing_matches_the_formula() {
        let spec = ModelSpec::from_json(
            br#"{"format": "modelpress.spec", "version": 1,
                "input": {"shape": [2, 1, 2], "dtype": "u8", "preprocess": {"scale": 0.1, "mean": [1, 2], "std": [2, 4]}},
                "output": {"classes": 4}, "layers": [{"type": "flatten"}]}"#,
        )
        .unwrap();
        let x = Tensor::new(&[[[[10u8, 20]], [[30, 40]]]], &Device::Cpu).unwrap();
        let split = Split::new(x, Some(vec![3])).unwrap();
        split.check_for(&spec).unwrap();
        let got = split.preprocessed(&spec.input).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = [(1.0 - 1.0) / 2.0, (2.0 - 1.0) / 2.0, (3.0 - 2.0) / 4.0, (4.0 - 2.0) / 4.0];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
        let bad = Split::new(Tensor::zeros((1, 2, 1, 2), DType::U8, &Device::Cpu).unwrap(), Some(vec![4])).unwrap();
        assert!(bad.check_for(&spec).unwrap_err().to_string().contains("label 4 at index 0"));
    }

    #[test]
    fn label_and_split_errors() {
        let dev = Device::Cpu;
        let mut t = HashMap::new();
        t.insert("x".to_string(), Tensor::zeros((3, 2), DType::F32, &dev).unwrap());
        t.insert("y".to_string(), Tensor::new(&[0i64, -1, 2], &dev).unwrap());
        let e = Dataset::from_tensors(t).unwrap_err().to_string();
        assert!(e.contains("label -1 at index 1"), "{e}");

        let mut t = HashMap::new();
        t.insert("train_x".to_string(), Tensor::zeros((3, 2), DType::F32, &dev).unwrap());
        t.insert("train_y".to_string(), Tensor::new(&[0u8, 1], &dev).unwrap());
        assert!(Dataset::from_tensors(t).unwrap_err().to_string().contains("3 samples but y has 2"));

        let mut t = HashMap::new();
        t.insert("x".to_string(), Tensor::zeros((3, 2), DType::F32, &dev).unwrap());
        t.insert("y".to_string(), Tensor::new(&[0i32, 1, 2], &dev).unwrap());
        let ds = Dataset::from_tensors(t).unwrap();
        assert_eq!(ds.all.unwrap().y.unwrap(), vec![0, 1, 2]);

        assert!(Dataset::from_tensors(HashMap::new()).is_err());
        assert!(Dataset::from_bytes(b"garbage").unwrap_err().to_string().contains("safetensors"));
    }
}
