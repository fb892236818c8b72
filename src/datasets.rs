//! Datasets at upload time (pure, blocking; called from `spawn_blocking`): inspects a
//! safetensors dataset's splits, and converts CSV to the same safetensors layout so every
//! stored dataset is read one way by jobs.
//!
//! Layout: splits `train_x`/`train_y`, `test_x`/`test_y`, or `x`/`y`; `*_x` of any numeric
//! dtype with the sample dimension first; `*_y` optional (unlabelled data), 1-D integer class
//! ids.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::tensorfile::{Dtype, HeaderLimits, TensorPlan, TensorWriter, Tensorfile, TensorfileError};

/// Most classes a label tensor may use.
pub const MAX_CLASSES: i64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    File(#[from] TensorfileError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

fn invalid(msg: impl Into<String>) -> DatasetError {
    DatasetError::Invalid(msg.into())
}

/// One split of a dataset.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct SplitInfo {
    /// `train`, `test` or `all` (for `x`/`y`).
    pub name: String,
    pub samples: u64,
    /// Shape of one sample (without the sample dimension).
    pub sample_shape: Vec<usize>,
    /// dtype of the inputs (safetensors code, e.g. `F32`, `U8`).
    pub x_dtype: String,
    pub labelled: bool,
    /// 1 + the largest label (labelled splits only).
    pub classes: Option<u64>,
    /// Samples per class id (labelled splits only).
    pub class_counts: Option<Vec<u64>>,
}

/// What an uploaded dataset holds.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct DatasetInfo {
    pub splits: Vec<SplitInfo>,
}

impl DatasetInfo {
    pub fn split(&self, name: &str) -> Option<&SplitInfo> {
        self.splits.iter().find(|s| s.name == name)
    }
}

const SPLITS: [(&str, &str, &str); 3] =
    [("train", "train_x", "train_y"), ("test", "test_x", "test_y"), ("all", "x", "y")];

fn read_labels(tf: &Tensorfile, name: &str) -> Result<Vec<i64>, DatasetError> {
    let t = tf.entry(name)?;
    if t.shape.len() != 1 {
        return Err(invalid(format!("'{name}' must be 1-D class ids, got shape {:?}", t.shape)));
    }
    let b = tf.bytes(t);
    Ok(match t.dtype {
        Dtype::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
        Dtype::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64).collect(),
        Dtype::U32 => b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")) as i64).collect(),
        Dtype::I16 => b.chunks_exact(2).map(|c| i16::from_le_bytes(c.try_into().expect("2 bytes")) as i64).collect(),
        Dtype::U8 => b.iter().map(|&v| v as i64).collect(),
        other => {
            return Err(invalid(format!(
                "'{name}' must hold integer class ids (I64, I32, U32, I16 or U8), got {other}"
            )))
        }
    })
}

/// Inspects a stored safetensors dataset.
pub fn inspect(path: &Path, limits: HeaderLimits) -> Result<DatasetInfo, DatasetError> {
    let tf = Tensorfile::open(path, limits)?;
    let mut splits = Vec::new();
    for (split, xn, yn) in SPLITS {
        let Some(x) = tf.header.get(xn) else {
            if tf.header.get(yn).is_some() {
                return Err(invalid(format!("'{yn}' has no matching '{xn}'")));
            }
            continue;
        };
        if x.shape.is_empty() || x.shape[0] == 0 {
            return Err(invalid(format!(
                "'{xn}' must have a sample dimension with at least one sample, got shape {:?}",
                x.shape
            )));
        }
        // The dtypes the execution engine (candle) can load.
        if !matches!(
            x.dtype,
            Dtype::U8
                | Dtype::U32
                | Dtype::I16
                | Dtype::I32
                | Dtype::I64
                | Dtype::F16
                | Dtype::Bf16
                | Dtype::F32
                | Dtype::F64
        ) {
            return Err(invalid(format!(
                "'{xn}' has unsupported dtype {}; use U8, U32, I16, I32, I64, F16, BF16, F32 or F64",
                x.dtype
            )));
        }
        let n = x.shape[0] as u64;
        let mut info = SplitInfo {
            name: split.into(),
            samples: n,
            sample_shape: x.shape[1..].to_vec(),
            x_dtype: x.dtype.as_str().into(),
            labelled: false,
            classes: None,
            class_counts: None,
        };
        if tf.header.get(yn).is_some() {
            let y = read_labels(&tf, yn)?;
            if y.len() as u64 != n {
                return Err(invalid(format!("'{xn}' has {n} samples but '{yn}' has {} labels", y.len())));
            }
            if let Some((i, v)) = y.iter().enumerate().find(|(_, v)| **v < 0 || **v >= MAX_CLASSES) {
                return Err(invalid(format!("'{yn}'[{i}] = {v}: class ids must be in 0..{MAX_CLASSES}")));
            }
            let classes = y.iter().copied().max().unwrap_or(0) as usize + 1;
            let mut counts = vec![0u64; classes];
            y.iter().for_each(|&v| counts[v as usize] += 1);
            info.labelled = true;
            info.classes = Some(classes as u64);
            info.class_counts = Some(counts);
        }
        splits.push(info);
    }
    if splits.is_empty() {
        return Err(invalid("no split found: name tensors train_x/train_y, test_x/test_y, or x/y"));
    }
    if splits.iter().any(|s| s.name == "all") && splits.len() > 1 {
        return Err(invalid("use either x/y or train_*/test_* splits, not both"));
    }
    let shapes: Vec<_> = splits.iter().map(|s| &s.sample_shape).collect();
    if shapes.windows(2).any(|w| w[0] != w[1]) {
        return Err(invalid(format!("splits disagree on the sample shape: {shapes:?}")));
    }
    Ok(DatasetInfo { splits })
}

/// Converts a CSV (header row, numeric columns, one label column) into a safetensors dataset
/// with `x` (F32 [N, features]) and `y` (I64 [N]). `label` names the label column (default:
/// `label` if present, else the last column); `label = ""` means unlabelled.
pub fn csv_to_safetensors(csv: &Path, out: &Path, label: Option<&str>) -> Result<DatasetInfo, DatasetError> {
    let text = std::fs::read_to_string(csv).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => invalid("CSV must be UTF-8 text"),
        _ => DatasetError::Io(e),
    })?;
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or_else(|| invalid("CSV is empty"))?;
    let cols: Vec<String> = header.split(',').map(|c| c.trim().trim_matches('"').to_string()).collect();
    let label_idx = match label {
        Some("") => None,
        Some(name) => Some(
            cols.iter()
                .position(|c| c == name)
                .ok_or_else(|| invalid(format!("label column '{name}' not in the header {cols:?}")))?,
        ),
        None => Some(cols.iter().position(|c| c == "label").unwrap_or(cols.len() - 1)),
    };
    let features = cols.len() - usize::from(label_idx.is_some());
    if features == 0 {
        return Err(invalid("CSV has no feature columns"));
    }
    let mut xs: Vec<f32> = Vec::new();
    let mut ys: Vec<i64> = Vec::new();
    for (lineno, line) in lines {
        let cells: Vec<&str> = line.split(',').collect();
        if cells.len() != cols.len() {
            return Err(invalid(format!("line {}: {} cells, header has {}", lineno + 1, cells.len(), cols.len())));
        }
        for (i, c) in cells.iter().enumerate() {
            let c = c.trim();
            if Some(i) == label_idx {
                let v: f64 =
                    c.parse().map_err(|_| invalid(format!("line {}: label '{c}' is not a number", lineno + 1)))?;
                if v.fract() != 0.0 || v < 0.0 || v >= MAX_CLASSES as f64 {
                    return Err(invalid(format!(
                        "line {}: label {c} must be an integer in 0..{MAX_CLASSES}",
                        lineno + 1
                    )));
                }
                ys.push(v as i64);
            } else {
                let v: f32 = c.parse().map_err(|_| {
                    invalid(format!("line {}, column '{}': '{c}' is not a number", lineno + 1, cols[i]))
                })?;
                if !v.is_finite() {
                    return Err(invalid(format!("line {}, column '{}': value must be finite", lineno + 1, cols[i])));
                }
                xs.push(v);
            }
        }
    }
    let n = xs.len() / features;
    if n == 0 {
        return Err(invalid("CSV has a header but no rows"));
    }
    let mut plans = vec![TensorPlan::new("x", Dtype::F32, vec![n, features])];
    if label_idx.is_some() {
        plans.push(TensorPlan::new("y", Dtype::I64, vec![n]));
    }
    let mut meta = BTreeMap::new();
    meta.insert("modelpress.source_format".to_string(), "csv".to_string());
    meta.insert("modelpress.columns".to_string(), serde_json::to_string(&cols).unwrap_or_default());
    let mut w = TensorWriter::create(out, plans, &meta)?;
    w.write_f32_as(&xs)?;
    if label_idx.is_some() {
        let yb: Vec<u8> = ys.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write(&yb)?;
    }
    w.finish()?;
    inspect(out, HeaderLimits::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspects_the_digits_fixture() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/digits.safetensors");
        let info = inspect(&p, HeaderLimits::default()).unwrap();
        let train = info.split("train").unwrap();
        assert_eq!((train.samples, train.sample_shape.clone(), train.classes), (1437, vec![64], Some(10)));
        assert_eq!(train.class_counts.as_ref().unwrap().iter().sum::<u64>(), 1437);
        assert_eq!(info.split("test").unwrap().samples, 360);
    }

    #[test]
    fn csv_round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("d.csv");
        let out = dir.path().join("d.safetensors");
        std::fs::write(&csv, "a,b,label\n1,2,0\n3,4.5,2\n\n5,6,1\n").unwrap();
        let info = csv_to_safetensors(&csv, &out, None).unwrap();
        let s = info.split("all").unwrap();
        assert_eq!((s.samples, s.sample_shape.clone(), s.classes), (3, vec![2], Some(3)));
        let tf = Tensorfile::open_trusted(&out).unwrap();
        assert_eq!(tf.to_f32(tf.entry("x").unwrap()).unwrap(), vec![1., 2., 3., 4.5, 5., 6.]);
        for (body, want) in [
            ("a,label\n1,x\n", "not a number"),
            ("a,label\n1,0\n2\n", "1 cells"),
            ("a,label\n1,-1\n", "must be an integer"),
            ("a,label\n", "no rows"),
            ("a,b,label\n1,nan,0\n", "finite"),
        ] {
            std::fs::write(&csv, body).unwrap();
            let e = csv_to_safetensors(&csv, &out, None).unwrap_err().to_string();
            assert!(e.contains(want), "{body}: {e}");
        }
    }
}
