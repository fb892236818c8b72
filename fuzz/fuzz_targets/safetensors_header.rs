//! safetensors header parsing, differentially against the `safetensors` crate (what candle and
//! Hugging Face tooling load): every file we accept, the crate accepts with the same tensors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelpress::tensorfile::{parse_header, HeaderLimits};

fuzz_target!(|data: &[u8]| {
    let limits = HeaderLimits { max_header_bytes: 1 << 20, max_tensors: 1024 };
    let ours = parse_header(data, data.len() as u64, limits);
    let Ok(header) = ours else { return };
    let theirs = safetensors::SafeTensors::deserialize(data)
        .unwrap_or_else(|e| panic!("we accept a file the safetensors crate rejects: {e}"));
    assert_eq!(header.tensors.len(), theirs.len(), "tensor count");
    for t in &header.tensors {
        let v = theirs.tensor(&t.name).expect("same names");
        assert_eq!(v.shape(), t.shape.as_slice(), "{}: shape", t.name);
        assert_eq!(v.data().len() as u64, t.end - t.begin, "{}: byte length", t.name);
        assert_eq!(format!("{:?}", v.dtype()), t.dtype.as_str(), "{}: dtype", t.name);
    }
});
