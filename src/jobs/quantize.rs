//! `quantize` job glue (runs on a worker thread): streams tensors from the memory-mapped input
//! into a new safetensors file, converting as the scheme says, and measures the error of every
//! converted tensor against the original.

use std::collections::BTreeMap;
use std::time::Instant;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use serde_json::json;

use super::params::{QuantizeParams, Scheme};
use super::{JobContext, JobError, JobOutput, OutputModel};
use crate::tensorfile::{Dtype, TensorPlan, TensorWriter, Tensorfile};

/// Elements converted per step: bounds memory and the time between check points.
const CHUNK: usize = 1 << 20;

/// Running error statistics of one tensor, accumulated in f64.
#[derive(Default)]
struct ErrAcc {
    sq_err: f64,
    sq_ref: f64,
    max_abs: f64,
}

impl ErrAcc {
    fn update(&mut self, orig: &[f32], deq: impl Iterator<Item = f32>) {
        for (&o, d) in orig.iter().zip(deq) {
            let e = (o as f64 - d as f64).abs();
            self.sq_err += e * e;
            self.sq_ref += (o as f64) * (o as f64);
            if e > self.max_abs {
                self.max_abs = e;
            }
        }
    }
    fn rel(&self) -> f64 {
        if self.sq_ref == 0.0 {
            if self.sq_err == 0.0 {
                0.0
            } else {
                f64::MAX
            }
        } else {
            (self.sq_err / self.sq_ref).sqrt()
        }
    }
}

fn f32_chunk(bytes: &[u8], dtype: Dtype, out: &mut Vec<f32>) {
    out.clear();
    match dtype {
        Dtype::F32 => out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        Dtype::F64 => {
            out.extend(bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("chunks of 8")) as f32))
        }
        _ => unreachable!("only f32/f64 are cast"),
    }
}

/// Casts every f32/f64 tensor to f16 or bf16.
pub fn run(ctx: &JobContext, p: &QuantizeParams) -> Result<JobOutput, JobError> {
    let scheme = p.scheme().map_err(|e| JobError::invalid("params.scheme", e.detail))?;
    let started = Instant::now();
    let input = ctx.input_model()?;
    let tf = Tensorfile::open_trusted(&input.path)?;
    let target = match scheme {
        Scheme::F16 => Dtype::F16,
        Scheme::Bf16 => Dtype::Bf16,
    };
    let cast = |d: Dtype| matches!(d, Dtype::F32 | Dtype::F64);
    let plans: Vec<TensorPlan> = tf
        .header
        .tensors
        .iter()
        .map(|t| TensorPlan::new(&t.name, if cast(t.dtype) { target } else { t.dtype }, t.shape.clone()))
        .collect();
    let mut meta: BTreeMap<String, String> = tf.header.metadata.clone();
    meta.insert("modelpress.source_model".into(), input.id.clone());
    meta.insert("modelpress.job_id".into(), ctx.id.clone());
    meta.insert("modelpress.scheme".into(), p.scheme.clone());

    let temp = ctx.store.temp_file("safetensors");
    let mut w = TensorWriter::create(temp.path(), plans, &meta)?;
    let total_bytes: u64 = tf.header.data_len.max(1);
    let mut done_bytes = 0u64;
    let mut per_tensor = Vec::with_capacity(tf.header.tensors.len());
    let mut vals = Vec::with_capacity(CHUNK);
    let mut out16 = vec![0u16; 0];
    let mut bytes_out = Vec::with_capacity(CHUNK * 2);
    for t in &tf.header.tensors {
        ctx.checkpoint()?;
        let data = tf.bytes(t);
        if !cast(t.dtype) {
            w.write(data)?;
            per_tensor.push(json!({"name": t.name, "dtype_before": t.dtype, "dtype_after": t.dtype, "action": "kept"}));
        } else {
            let es = t.dtype.size();
            let mut acc = ErrAcc::default();
            for chunk in data.chunks(CHUNK * es) {
                f32_chunk(chunk, t.dtype, &mut vals);
                if let Some(i) = vals.iter().position(|v| !v.is_finite()) {
                    return Err(JobError::input(format!(
                        "tensor '{}' contains a non-finite value ({}) at element {}",
                        t.name,
                        vals[i],
                        (done_in(chunk, data) / es) + i
                    )));
                }
                out16.resize(vals.len(), 0);
                bytes_out.clear();
                match target {
                    Dtype::F16 => {
                        let h: &mut [f16] = bytemuck_f16(&mut out16);
                        h.convert_from_f32_slice(&vals);
                        acc.update(&vals, h.iter().map(|x| x.to_f32()));
                        h.iter().for_each(|x| bytes_out.extend_from_slice(&x.to_le_bytes()));
                    }
                    _ => {
                        let h: &mut [bf16] = bytemuck_bf16(&mut out16);
                        h.convert_from_f32_slice(&vals);
                        acc.update(&vals, h.iter().map(|x| x.to_f32()));
                        h.iter().for_each(|x| bytes_out.extend_from_slice(&x.to_le_bytes()));
                    }
                }
                w.write(&bytes_out)?;
                done_bytes += chunk.len() as u64;
                ctx.progress(0.95 * done_bytes as f64 / total_bytes as f64, "converting");
            }
            per_tensor.push(json!({
                "name": t.name,
                "dtype_before": t.dtype,
                "dtype_after": target,
                "action": "cast",
                "max_abs_error": acc.max_abs,
                "rel_error": acc.rel(),
            }));
            continue;
        }
        done_bytes += data.len() as u64;
    }
    w.finish()?;
    ctx.progress(0.97, "hashing output");
    let bytes_before = std::fs::metadata(&input.path)?.len();
    let name = format!("{}-{}", input.name, p.scheme);
    let model = OutputModel::from_file(temp, name, input.spec.clone())?;
    let bytes_after = model.size_bytes;
    let report = json!({
        "kind": "quantize",
        "scheme": p.scheme,
        "bytes_before": bytes_before,
        "bytes_after": bytes_after,
        "size_ratio": bytes_after as f64 / bytes_before.max(1) as f64,
        "tensors_cast": per_tensor.iter().filter(|t| t["action"] == "cast").count(),
        "tensors_kept": per_tensor.iter().filter(|t| t["action"] == "kept").count(),
        "tensors": per_tensor,
        "duration_s": started.elapsed().as_secs_f64(),
    });
    Ok(JobOutput { report, model: Some(model) })
}

/// Offset of `chunk` inside `data` (both slices of the same mapping).
fn done_in(chunk: &[u8], data: &[u8]) -> usize {
    chunk.as_ptr() as usize - data.as_ptr() as usize
}

fn bytemuck_f16(v: &mut [u16]) -> &mut [f16] {
    // SAFETY: f16 is repr(transparent) over u16.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut f16, v.len()) }
}

fn bytemuck_bf16(v: &mut [u16]) -> &mut [bf16] {
    // SAFETY: bf16 is repr(transparent) over u16.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut bf16, v.len()) }
}
