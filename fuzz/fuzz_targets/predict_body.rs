//! The binary (safetensors) body of `POST /v1/models/{id}/predict`, for the reference MLP spec.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use modelpress::nn::spec::ModelSpec;

fn spec() -> &'static ModelSpec {
    static SPEC: OnceLock<ModelSpec> = OnceLock::new();
    SPEC.get_or_init(|| {
        ModelSpec::from_json(include_bytes!("../../tests/fixtures/reference/mlp.spec.json")).expect("fixture spec")
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = modelpress::api::predict::fuzz_binary_body(data, spec(), 64);
});
