//! `POST /v1/jobs` params: the first byte picks the kind, the rest is the JSON params object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelpress::jobs::params::{parse, ParamRules, KINDS};

fuzz_target!(|data: &[u8]| {
    let Some((&k, json)) = data.split_first() else { return };
    let kinds: Vec<&str> = KINDS.iter().copied().chain(["debug_sleep", "nope"]).collect();
    let kind = kinds[k as usize % kinds.len()];
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(json) else { return };
    let _ = parse(kind, &value, &ParamRules { enable_test_jobs: true });
});
