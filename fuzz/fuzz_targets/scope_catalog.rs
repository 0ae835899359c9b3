//! The scope allow-list (`[scopes.app|script|service.<name>]` of `jitbridge.toml`,
//! src/policy/scope.rs) on arbitrary text: problems with lines, never panics; every scope string
//! resolves or is refused without panicking, and every policy entry check answers.
#![no_main]
use std::path::Path;

use jitbridge::policy::scope::{ScopeCatalog, check_policy_entry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The text is also a list of scope strings / policy entries, one a line.
    for line in text.lines().take(16) {
        let _ = check_policy_entry(line);
    }
    let catalog = match ScopeCatalog::from_config_text(Path::new("jitbridge.toml"), text) {
        Ok(c) => c,
        Err(problems) => {
            for p in &problems {
                let _ = p.to_string();
            }
            return;
        }
    };
    let mut names = catalog.names();
    names.extend(text.lines().take(16).map(str::to_owned));
    for scope in names {
        if let Ok(def) = catalog.resolve(&scope) {
            let _ = def.describe();
            let _ = def.scope();
        }
    }
});
