//! Duration parsing (config and mapping values): never panics, never yields a negative duration.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(d) = jitbridge::config::parse_duration(text) {
        assert!(!d.is_negative(), "{text:?} parsed to {d:?}");
    }
});
