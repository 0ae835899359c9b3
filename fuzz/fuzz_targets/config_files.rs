//! `jitbridge.toml` and connector files on arbitrary text: parse errors with positions, never panics.
#![no_main]
use std::path::Path;

use jitbridge::config::raw::{RawConfig, RawConnector};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = toml::from_str::<RawConfig>(text) {
        let _ = jitbridge::config::load::toml_problem(Path::new("jitbridge.toml"), text, &e).to_string();
    }
    if let Ok(c) = toml::from_str::<RawConnector>(text) {
        let _ = jitbridge::connectors::validate_kind(&c.kind, &c.options, Path::new("c.toml"));
    }
});
