//! `jitbridge.toml` and connector files on arbitrary text: parse errors with positions, never
//! panics. Text that parses also goes through the real validation (`config::load::validate`:
//! `[server]` limits, providers, `[scopes]`, durations, and every connector kind's options such as
//! the generic connector's `[writeback.exists]`), which must answer with problems, not panics.
#![no_main]
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use jitbridge::config::MapSecrets;
use jitbridge::config::load::{PolicyFiles, validate};
use jitbridge::config::raw::{RawConfig, RawConnector};
use jitbridge::policy::scope::ScopeCatalog;
use libfuzzer_sys::fuzz_target;

static SECRETS: LazyLock<MapSecrets> = LazyLock::new(|| MapSecrets::from_pairs([("S", "fuzz-secret"), ("T", "fuzz-token")]));
/// The main file a fuzzed connector file is validated with: all defaults.
static DEFAULT_MAIN: LazyLock<Option<RawConfig>> = LazyLock::new(|| toml::from_str::<RawConfig>("").ok());

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let file = Path::new("jitbridge.toml");
    let base = Path::new(".");
    match toml::from_str::<RawConfig>(text) {
        Err(e) => {
            let _ = jitbridge::config::load::toml_problem(file, text, &e).to_string();
        }
        Ok(raw) => {
            let scopes = ScopeCatalog::from_config_text(file, text).unwrap_or_default();
            let policy = PolicyFiles { scopes: scopes.into(), identities: Default::default() };
            let _ = validate(file, base, &raw, &[], &[], &*SECRETS, &policy);
        }
    }
    if let Ok(c) = toml::from_str::<RawConnector>(text) {
        let _ = jitbridge::connectors::validate_kind(&c.kind, &c.options, Path::new("c.toml"));
        if let Some(main) = DEFAULT_MAIN.as_ref() {
            let _ = validate(file, base, main, &[(PathBuf::from("c.toml"), c)], &[], &*SECRETS, &PolicyFiles::default());
        }
    }
});
