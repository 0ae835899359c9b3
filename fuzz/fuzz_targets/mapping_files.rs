//! Mapping files (TOML + CEL + templates, `[mapping.policy]` with hours windows and approver
//! groups, `[mapping.auto_approve]`) on arbitrary text: problems, never panics.
#![no_main]
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use jitbridge::identity::IdentityMap;
use jitbridge::mapping::{Known, MappingSet};
use jitbridge::policy::scope::ScopeCatalog;
use libfuzzer_sys::fuzz_target;

/// A small allow-list and identity map, so scope and `group:` references can resolve.
static KNOWN: LazyLock<Known> = LazyLock::new(|| {
    let scopes = ScopeCatalog::from_config_text(
        Path::new("jitbridge.toml"),
        "[scopes.app.7zip]\npath = '/opt/7z'\nsha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\n\n[scopes.service.spooler]\nname = \"Spooler\"\n",
    )
    .unwrap_or_default();
    let identities = IdentityMap::parse(
        Path::new("identities.toml"),
        "[[person]]\nsubject = 'CORP\\bob'\nmatch = [\"bob@corp.example\"]\ngroups = [\"helpdesk-leads\"]\n",
        &["jira".to_owned()],
    )
    .unwrap_or_default();
    Known {
        connectors: vec!["jira".into()],
        providers: vec!["endpoint-agent".into()],
        scopes: Arc::new(scopes),
        identities: Arc::new(identities),
    }
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = MappingSet::from_files(&[(PathBuf::from("fuzz.toml"), text.to_owned())], &KNOWN);
});
