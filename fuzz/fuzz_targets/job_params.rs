//! `POST /v1/jobs` params: the first byte picks the kind, the rest is the JSON params object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelpress::jobs::kinds::{JobKind, JobParams, ParamRules};

fuzz_target!(|data: &[u8]| {
    let Some((&k, json)) = data.split_first() else { return };
    let names: Vec<&str> = JobKind::ALL.iter().map(|k| k.as_str()).chain(["nope"]).collect();
    let name = names[k as usize % names.len()];
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(json) else { return };
    if let Ok(kind) = JobKind::parse(name, &ParamRules { enable_test_jobs: true }) {
        let _ = JobParams::parse(kind, &value);
    }
});
