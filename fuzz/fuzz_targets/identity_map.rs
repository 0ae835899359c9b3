//! The identity map file (`[identity] map`, src/identity.rs) on arbitrary text: problems, never
//! panics; a map that loads answers lookups, group and name queries without panicking either.
#![no_main]
use std::path::Path;

use jitbridge::identity::IdentityMap;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let connectors = vec!["jira".to_owned(), "servicenow".to_owned()];
    let map = match IdentityMap::parse(Path::new("identities.toml"), text, &connectors) {
        Ok(map) => map,
        Err(problems) => {
            for p in &problems {
                let _ = p.to_string();
            }
            return;
        }
    };
    // Query the loaded map with pieces of its own text, so lookups can hit.
    for word in text.split(|c: char| c == '"' || c == '\'' || c.is_whitespace()).take(16) {
        if let Some(who) = map.named(word) {
            let _ = map.subject(who);
            let _ = map.names_entry(word, who);
        }
        let _ = map.has_group(word);
        let _ = map.members(word);
    }
});
