//! Hours windows (`[mapping.policy] hours`, "Mon-Fri 07:00-19:00 Europe/Berlin",
//! src/policy/hours.rs) on arbitrary text: an error or a window, never a panic; a window that
//! parses answers `contains` and `local_now` for any instant without panicking.
#![no_main]
use jitbridge::policy::Window;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first 8 bytes choose the instant to test the window against; the rest is the window.
    let (instant, text) = if data.len() >= 8 {
        let (head, tail) = data.split_at(8);
        let mut raw = [0u8; 8];
        raw.copy_from_slice(head);
        (i64::from_le_bytes(raw), tail)
    } else {
        (0, data)
    };
    let Ok(text) = std::str::from_utf8(text) else { return };
    let Ok(window) = Window::parse(text) else { return };
    let lo = jiff::Timestamp::MIN.as_second();
    let hi = jiff::Timestamp::MAX.as_second();
    let now = jiff::Timestamp::from_second(instant.rem_euclid(hi - lo) + lo).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let _ = window.contains(now);
    let _ = window.local_now(now);
    let _ = window.text();
    let _ = window.zone_name();
});
