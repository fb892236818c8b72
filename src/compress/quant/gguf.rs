//! GGUF export through candle's `gguf_file::write` (GGUF v2, 32-byte alignment, dims written in
//! ggml order, i.e. reversed: a PyTorch `[out, in]` weight appears as `[in, out]` in the file and
//! in Python's `gguf` reader; candle's reader reverses them back).
//!
//! What can be exported: GGML block types and f16/bf16/f32 directly; int8 and int4 are not GGUF
//! types and go through [`QuantizedTensor::to_qtensor`](super::QuantizedTensor::to_qtensor):
//! int8 symmetric → Q8_0 by re-blocking (only the f16 rounding of the scales is added), int8
//! asymmetric → re-quantized Q8_0 (+≈ 0.005 rel error), int4 → Q4_0 / Q4_1 by re-blocking; rows not
//! a multiple of 32 become F16. Tensors left in float go in as F32 ([`f32_qtensor`]).
//!
//! candle's writer takes every `QTensor` at once, so the caller holds the whole quantized model in
//! memory while writing (≈ the output file size). Runs on the calling thread.

use std::io::{Seek, Write};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{QStorage, QTensor};

use super::check_len;
use super::scheme::{GgmlKind, Scheme};
use super::Result;

/// File-level metadata written as GGUF key/values.
#[derive(Debug, Clone)]
pub struct GgufMetadata<'a> {
    /// `general.name`: a human name for the model.
    pub name: &'a str,
    /// `general.source_model`: where it came from (model id, sha256 of the source file).
    pub source_model: &'a str,
    /// `modelpress.scheme`: the scheme requested (its label); also sets `general.file_type`.
    pub scheme: Scheme,
}

/// llama.cpp's `general.file_type` (`llama_ftype`) for a file quantized with `scheme`. Uniform
/// k-quant files map to the `_S` variants, the closest llama.cpp type.
pub fn file_type(scheme: Scheme) -> u32 {
    match scheme {
        Scheme::F16 => 1,
        Scheme::Bf16 => 32,
        Scheme::Int8 { .. } | Scheme::Ggml(GgmlKind::Q8_0) => 7,
        Scheme::Int4 { symmetric: true, .. } | Scheme::Ggml(GgmlKind::Q4_0) => 2,
        Scheme::Int4 { symmetric: false, .. } | Scheme::Ggml(GgmlKind::Q4_1) => 3,
        Scheme::Ggml(GgmlKind::Q5_0) => 8,
        Scheme::Ggml(GgmlKind::Q5_1) => 9,
        Scheme::Ggml(GgmlKind::Q2K) => 10,
        Scheme::Ggml(GgmlKind::Q3K) => 11,
        Scheme::Ggml(GgmlKind::Q4K) => 14,
        Scheme::Ggml(GgmlKind::Q5K) => 16,
        Scheme::Ggml(GgmlKind::Q6K) => 18,
    }
}

/// An F32 `QTensor` (copy of `data`) for tensors kept in float.
pub fn f32_qtensor(name: &str, data: &[f32], shape: &[usize]) -> Result<QTensor> {
    check_len(name, shape, data.len())?;
    Ok(QTensor::new(QStorage::Cpu(Box::new(data.to_vec())), shape)?)
}

/// Writes a GGUF v2 file with the metadata `general.name`, `general.source_model`,
/// `general.file_type`, `general.quantization_version` (2), `modelpress.scheme` and
/// `modelpress.format_version` (1), and the given tensors in order.
pub fn write_gguf<W: Write + Seek>(w: &mut W, meta: &GgufMetadata<'_>, tensors: &[(&str, &QTensor)]) -> Result<()> {
    let kv: Vec<(&str, Value)> = vec![
        ("general.name", Value::String(meta.name.to_string())),
        ("general.source_model", Value::String(meta.source_model.to_string())),
        ("general.quantization_version", Value::U32(2)),
        ("modelpress.scheme", Value::String(meta.scheme.label())),
        ("modelpress.format_version", Value::U32(1)),
        ("general.file_type", Value::U32(file_type(meta.scheme))),
    ];
    let kv_refs: Vec<(&str, &Value)> = kv.iter().map(|(k, v)| (*k, v)).collect();
    gguf_file::write(w, &kv_refs, tensors)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use candle_core::quantized::GgmlDType;
    use candle_core::Device;

    use super::*;
    use crate::compress::quant::ggml::dequantize_qtensor;
    use crate::compress::quant::tensor::quantize;
    use crate::compress::quant::testutil::gaussian;

    #[test]
    fn write_and_read_back() {
        let specs: [(&str, &[usize], &str); 6] = [
            ("blk.0.ffn.weight", &[64, 512], "q4_k"),
            ("blk.0.attn.weight", &[32, 800], "q4_k"), // falls back to q5_0
            ("blk.1.ffn.weight", &[16, 784], "q6_k"),  // falls back to f16
            ("blk.1.int8.weight", &[8, 96], "int8"),   // re-blocked to q8_0
            ("blk.1.int4.weight", &[8, 128], "int4_asym_g64"), // re-blocked to q4_1
            ("conv.weight", &[4, 3, 3, 3], "int8"),    // 3-wide rows: f16
        ];
        let mut qtensors = Vec::new();
        for (i, (name, shape, scheme)) in specs.iter().enumerate() {
            let n: usize = shape.iter().product();
            let x = gaussian(n, 0.05, 60 + i as u64);
            let t = quantize(name, &x, shape, scheme.parse().unwrap()).unwrap();
            qtensors.push((name.to_string(), t.to_qtensor().unwrap()));
        }
        let bias = gaussian(64, 0.01, 70);
        qtensors.push(("blk.0.ffn.bias".into(), f32_qtensor("b", &bias, &[64]).unwrap()));
        let refs: Vec<(&str, &QTensor)> = qtensors.iter().map(|(n, q)| (n.as_str(), q)).collect();
        let meta = GgufMetadata { name: "tiny", source_model: "sha256:abc", scheme: "q4_k".parse().unwrap() };
        let mut buf = Cursor::new(Vec::new());
        write_gguf(&mut buf, &meta, &refs).unwrap();

        let mut r = Cursor::new(buf.into_inner());
        let content = gguf_file::Content::read(&mut r).unwrap();
        let s = |k: &str| content.metadata[k].to_string().unwrap().clone();
        assert_eq!(s("general.name"), "tiny");
        assert_eq!(s("general.source_model"), "sha256:abc");
        assert_eq!(s("modelpress.scheme"), "q4_k");
        assert_eq!(content.metadata["general.file_type"].to_u32().unwrap(), 14);
        let want_types = [
            GgmlDType::Q4K,
            GgmlDType::Q5_0,
            GgmlDType::F16,
            GgmlDType::Q8_0,
            GgmlDType::Q4_1,
            GgmlDType::F16,
            GgmlDType::F32,
        ];
        for ((name, q), want) in qtensors.iter().zip(want_types) {
            let info = &content.tensor_infos[name];
            assert_eq!(info.ggml_dtype, want, "{name}");
            assert_eq!(info.shape.dims(), q.shape().dims(), "{name}");
            let back = content.tensor(&mut r, name, &Device::Cpu).unwrap();
            assert_eq!(dequantize_qtensor(&back).unwrap(), dequantize_qtensor(q).unwrap(), "{name}");
        }
    }

    #[test]
    fn file_types() {
        assert_eq!(file_type("int8_asym".parse().unwrap()), 7);
        assert_eq!(file_type("int4_g128".parse().unwrap()), 2);
        assert_eq!(file_type("q6_k".parse().unwrap()), 18);
        assert_eq!(file_type("bf16".parse().unwrap()), 32);
    }
}
