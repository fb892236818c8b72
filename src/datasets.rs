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
///
/// Parsing is the `csv` crate's (RFC 4180 quoting, `"1.0"` cells, a leading UTF-8 BOM, CRLF,
/// blank lines skipped), streamed from the file in two passes so memory stays flat whatever the
/// upload size: the first validates every cell and counts the rows (the safetensors header
/// needs the shape before any data), the second writes `x` row by row. Only the labels (8 bytes
/// a row) are kept in memory, because `y` follows `x` in the file.
pub fn csv_to_safetensors(csv: &Path, out: &Path, label: Option<&str>) -> Result<DatasetInfo, DatasetError> {
    let mut reader = csv_reader(csv)?;
    let cols: Vec<String> = reader.headers().map_err(csv_error)?.iter().map(str::to_string).collect();
    if cols.iter().all(|c| c.is_empty()) {
        return Err(invalid("CSV is empty"));
    }
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
    let mut row = CsvRow { cols: &cols, label_idx, xs: Vec::with_capacity(features), label: None };
    let mut record = csv::StringRecord::new();
    let mut n = 0usize;
    while reader.read_record(&mut record).map_err(csv_error)? {
        row.parse(&record)?;
        n += 1;
    }
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
    let mut reader = csv_reader(csv)?;
    reader.headers().map_err(csv_error)?;
    let mut ys: Vec<u8> = Vec::with_capacity(if label_idx.is_some() { n * 8 } else { 0 });
    let mut bytes = Vec::with_capacity(features * 4);
    let mut second = 0usize;
    while reader.read_record(&mut record).map_err(csv_error)? {
        row.parse(&record)?;
        bytes.clear();
        row.xs.iter().for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
        w.write(&bytes)?;
        if let Some(y) = row.label {
            ys.extend_from_slice(&y.to_le_bytes());
        }
        second += 1;
    }
    if second != n {
        return Err(invalid("the CSV changed while it was being read"));
    }
    w.write(&ys)?;
    w.finish()?;
    inspect(out, HeaderLimits::default())
}

fn csv_reader(path: &Path) -> Result<csv::Reader<std::fs::File>, DatasetError> {
    // csv buffers internally (64 KiB): no BufReader needed.
    Ok(csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(std::fs::File::open(path)?))
}

fn csv_error(e: csv::Error) -> DatasetError {
    let line = e.position().map(|p| format!("line {}: ", p.line())).unwrap_or_default();
    let msg = e.to_string();
    match e.into_kind() {
        csv::ErrorKind::Io(io) => DatasetError::Io(io),
        csv::ErrorKind::Utf8 { .. } => invalid(format!("{line}CSV must be UTF-8 text")),
        _ => invalid(format!("{line}malformed CSV: {msg}")),
    }
}

/// One parsed row, its buffers reused across rows.
struct CsvRow<'a> {
    cols: &'a [String],
    label_idx: Option<usize>,
    xs: Vec<f32>,
    label: Option<i64>,
}

impl CsvRow<'_> {
    fn parse(&mut self, record: &csv::StringRecord) -> Result<(), DatasetError> {
        let line = record.position().map_or(0, |p| p.line());
        if record.len() != self.cols.len() {
            return Err(invalid(format!("line {line}: {} cells, header has {}", record.len(), self.cols.len())));
        }
        self.xs.clear();
        self.label = None;
        for (i, c) in record.iter().enumerate() {
            if Some(i) == self.label_idx {
                let v: f64 = c.parse().map_err(|_| invalid(format!("line {line}: label '{c}' is not a number")))?;
                if v.fract() != 0.0 || v < 0.0 || v >= MAX_CLASSES as f64 {
                    return Err(invalid(format!("line {line}: label {c} must be an integer in 0..{MAX_CLASSES}")));
                }
                self.label = Some(v as i64);
            } else {
                let v: f32 = c
                    .parse()
                    .map_err(|_| invalid(format!("line {line}, column '{}': '{c}' is not a number", self.cols[i])))?;
                if !v.is_finite() {
                    return Err(invalid(format!("line {line}, column '{}': value must be finite", self.cols[i])));
                }
                self.xs.push(v);
            }
        }
        Ok(())
    }
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
    fn csv_quoting_bom_crlf_and_spaces() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("d.csv");
        let out = dir.path().join("d.safetensors");
        let body = "\u{feff}\"a\",\"b, with comma\",label\r\n\"1.0\", 2 ,\"0\"\r\n\r\n3,\"-4.5e1\",1\r\n";
        std::fs::write(&csv, body).unwrap();
        let info = csv_to_safetensors(&csv, &out, Some("label")).unwrap();
        assert_eq!(info.split("all").unwrap().samples, 2);
        let tf = Tensorfile::open_trusted(&out).unwrap();
        assert_eq!(tf.to_f32(tf.entry("x").unwrap()).unwrap(), vec![1., 2., 3., -45.]);
        let cols: Vec<String> = serde_json::from_str(&tf.header.metadata["modelpress.columns"]).unwrap();
        assert_eq!(cols, ["a", "b, with comma", "label"], "BOM stripped, quotes removed");
        // Unlabelled: every column is a feature.
        std::fs::write(&csv, "\u{feff}a,b\n1,2\n").unwrap();
        let info = csv_to_safetensors(&csv, &out, Some("")).unwrap();
        assert!(!info.split("all").unwrap().labelled);
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
            ("a,label\n\"1,0\n", "cells"),
        ] {
            std::fs::write(&csv, body).unwrap();
            let e = csv_to_safetensors(&csv, &out, None).unwrap_err().to_string();
            assert!(e.contains(want), "{body}: {e}");
        }
        std::fs::write(&csv, b"a,label\n\xff,0\n").unwrap();
        let e = csv_to_safetensors(&csv, &out, None).unwrap_err().to_string();
        assert!(e.contains("UTF-8"), "{e}");
    }
}
