//! The mapping file format exactly as administrators write it (DESIGN.md,
//! `mappings/helpdesk-local-admin.toml`). Unknown keys are rejected everywhere, and the values
//! that are validated after parsing keep their source spans so problems can name a line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::policy::PolicyConfig;
use crate::ticket::EventKind;

/// One mapping file: one or more `[[mapping]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default)]
    pub mapping: Vec<Spanned<RawMapping>>,
}

/// One `[[mapping]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMapping {
    pub name: Spanned<String>,
    pub connector: Spanned<String>,
    pub when: Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub grant: RawGrant,
    pub on: Spanned<RawOn>,
    #[serde(default)]
    pub policy: Option<Spanned<PolicyConfig>>,
    #[serde(default)]
    pub writeback: BTreeMap<Spanned<String>, Spanned<RawWriteback>>,
}

/// `[mapping.grant]`: templates for the grant's parts, its cap and its provider.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGrant {
    pub subject: Spanned<String>,
    pub target: Spanned<String>,
    pub scope: Spanned<String>,
    pub duration: Spanned<String>,
    pub max_duration: Spanned<String>,
    pub provider: Spanned<String>,
}

/// `[mapping.on]`: the ticket changes that approve, deny or end the grant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOn {
    #[serde(default)]
    pub approve: Option<RawRule>,
    #[serde(default)]
    pub deny: Option<RawRule>,
    #[serde(default)]
    pub revoke: Option<RawRule>,
}

/// `{ status = [...], event = [...] }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    #[serde(default)]
    pub status: Vec<Spanned<String>>,
    #[serde(default)]
    pub event: Vec<Spanned<EventKind>>,
}

/// `[mapping.writeback]` entry: `{ comment = "template", status = "template" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWriteback {
    #[serde(default)]
    pub comment: Option<Spanned<String>>,
    #[serde(default)]
    pub status: Option<Spanned<String>>,
}
