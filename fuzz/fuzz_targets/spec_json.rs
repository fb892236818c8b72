//! Architecture spec JSON (multipart `spec` part, `PUT /v1/models/{id}/spec`): parsing and
//! validation never panic, and an accepted spec survives its own round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelpress::nn::spec::ModelSpec;

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = ModelSpec::from_json(data) {
        let _ = spec.output_shape();
        let _ = spec.params();
        let again = ModelSpec::from_json(spec.to_json().as_bytes()).expect("a valid spec re-parses");
        assert_eq!(again.to_json(), spec.to_json());
    }
});
