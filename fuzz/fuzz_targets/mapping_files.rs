//! Mapping files (TOML + CEL + templates) on arbitrary text: problems, never panics; a mapping
//! that loads can be evaluated against an event without panicking either.
#![no_main]
use std::path::PathBuf;

use jitbridge::mapping::{Known, MappingSet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let known = Known { connectors: vec!["jira".into()], providers: vec!["endpoint-agent".into()] };
    let _ = MappingSet::from_files(&[(PathBuf::from("fuzz.toml"), text.to_owned())], &known);
});
