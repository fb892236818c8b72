//! CSV dataset conversion (`POST /v1/datasets?format=csv`): the first byte picks the label
//! option (default, none, a named column), the rest is the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&opt, body)) = data.split_first() else { return };
    let dir = std::env::temp_dir();
    let src = dir.join(format!("modelpress-fuzz-csv-{}.csv", std::process::id()));
    let dst = dir.join(format!("modelpress-fuzz-csv-{}.safetensors", std::process::id()));
    std::fs::write(&src, body).expect("temp file");
    let label = match opt % 3 {
        0 => None,
        1 => Some(""),
        _ => Some("label"),
    };
    if let Ok(info) = modelpress::datasets::csv_to_safetensors(&src, &dst, label) {
        // What we wrote must read back as a dataset with the rows we reported.
        let again = modelpress::datasets::inspect(&dst, Default::default()).expect("our output is valid");
        assert_eq!(again, info);
    }
});
