//! Non-finite weights (NaN, ±inf): counted per tensor when a model is uploaded, shown in the
//! model JSON (`non_finite`), and checked when a job is submitted: a job whose selected tensors
//! hold any is refused with 422 naming them, unless the submission opts in with
//! `"allow_non_finite": true`. Without the check an `f16` job failed at run time while `int8`
//! and `q4_k` jobs silently carried the NaN into their artifact.
//!
//! [`count_file`] is blocking (it reads every float tensor once through the mmap): the upload
//! handler runs it on `spawn_blocking`. [`refuse_selected`] is pure.

use std::collections::BTreeMap;
use std::path::Path;

use half::{bf16, f16};
use serde_json::Value;

use crate::error::DomainError;
use crate::tensorfile::{Dtype, HeaderLimits, Tensorfile, TensorfileError};

/// Non-finite values per tensor name; tensors without any are left out.
pub type Counts = BTreeMap<String, u64>;

/// How many values of a float tensor's little-endian bytes are NaN or infinite (0 for
/// integer and quantized dtypes, which cannot hold either).
pub fn count_bytes(dtype: Dtype, b: &[u8]) -> u64 {
    let n = match dtype {
        Dtype::F32 => b.chunks_exact(4).filter(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite()).count(),
        Dtype::F16 => b.chunks_exact(2).filter(|c| !f16::from_le_bytes([c[0], c[1]]).is_finite()).count(),
        Dtype::Bf16 => b.chunks_exact(2).filter(|c| !bf16::from_le_bytes([c[0], c[1]]).is_finite()).count(),
        Dtype::F64 => {
            b.chunks_exact(8).filter(|c| !f64::from_le_bytes((*c).try_into().expect("chunks of 8")).is_finite()).count()
        }
        _ => 0,
    };
    n as u64
}

/// Counts every tensor of a (validated) safetensors file.
pub fn count_file(path: &Path, limits: HeaderLimits) -> Result<Counts, TensorfileError> {
    let tf = Tensorfile::open(path, limits)?;
    let mut out = Counts::new();
    for t in &tf.header.tensors {
        let n = count_bytes(t.dtype, tf.bytes(t));
        if n > 0 {
            out.insert(t.name.clone(), n);
        }
    }
    Ok(out)
}

/// The tensors a job reads from its model, as far as its `params` narrow them: `include` and
/// `exclude` globs where the kind has them; every tensor otherwise.
fn selected(name: &str, params: &Value) -> bool {
    let globs = |key: &str| -> Vec<String> {
        params
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let include = globs("include");
    let exclude = globs("exclude");
    (include.is_empty() || include.iter().any(|g| crate::glob::matches(g, name)))
        && !exclude.iter().any(|g| crate::glob::matches(g, name))
}

/// Refuses (422 on `model_id`) a submission whose selected tensors hold non-finite values.
pub fn refuse_selected(counts: &Counts, params: &Value, allow: bool) -> Result<(), DomainError> {
    if allow {
        return Ok(());
    }
    let hit: Vec<String> =
        counts.iter().filter(|(name, _)| selected(name, params)).map(|(name, n)| format!("{name} ({n})")).collect();
    if hit.is_empty() {
        return Ok(());
    }
    Err(DomainError::validation(
        "model_id",
        format!(
            "the model has non-finite values (NaN or infinity) in tensors this job would read: {}; exclude them \
             (params.exclude) or send \"allow_non_finite\": true to run anyway",
            hit.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_each_float_dtype() {
        let f32s: Vec<u8> = [1.0f32, f32::NAN, f32::INFINITY, -0.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(count_bytes(Dtype::F32, &f32s), 2);
        let f16s: Vec<u8> = [f16::NAN, f16::ONE, f16::NEG_INFINITY].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(count_bytes(Dtype::F16, &f16s), 2);
        let bf16s: Vec<u8> = [bf16::NAN, bf16::ONE].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(count_bytes(Dtype::Bf16, &bf16s), 1);
        let f64s: Vec<u8> = [f64::NAN, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(count_bytes(Dtype::F64, &f64s), 1);
        assert_eq!(count_bytes(Dtype::U8, &[0xff; 8]), 0, "integers are always finite");
    }

    #[test]
    fn refuses_only_selected_tensors_unless_allowed() {
        let counts: Counts = [("fc1.bias".to_string(), 1)].into();
        let e = refuse_selected(&counts, &json!({"scheme": "int8"}), false).unwrap_err();
        assert!(e.detail.contains("fc1.bias (1)") && e.detail.contains("allow_non_finite"), "{}", e.detail);
        assert!(refuse_selected(&counts, &json!({"scheme": "int8"}), true).is_ok());
        assert!(refuse_selected(&counts, &json!({"exclude": ["fc1.*"]}), false).is_ok());
        assert!(refuse_selected(&counts, &json!({"include": ["fc2.*"]}), false).is_ok());
        assert!(refuse_selected(&counts, &json!({"include": ["fc1.bias"]}), false).is_err());
        assert!(refuse_selected(&Counts::new(), &json!({}), false).is_ok());
    }
}
