//! A whole safetensors file through the reader an upload and a job use: open (header + mmap),
//! every tensor converted to f32 where the dtype allows, non-finite counting, dataset inspection.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelpress::tensorfile::{HeaderLimits, Tensorfile};

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("modelpress-fuzz-file-{}.safetensors", std::process::id()));
    std::fs::write(&path, data).expect("temp file");
    let limits = HeaderLimits { max_header_bytes: 1 << 20, max_tensors: 1024 };
    if let Ok(tf) = Tensorfile::open(&path, limits) {
        for t in &tf.header.tensors {
            let _ = tf.to_f32(t);
            let _ = modelpress::nonfinite::count_bytes(t.dtype, tf.bytes(t));
        }
        let _ = modelpress::nonfinite::count_file(&path, limits);
        let _ = modelpress::datasets::inspect(&path, limits);
    }
});
