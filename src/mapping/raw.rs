//! The mapping file format exactly as administrators write it (DESIGN.md,
//! `mappings/helpdesk-local-admin.toml`). Unknown keys are rejected everywhere, and the values
//! that are validated after parsing keep their source spans so problems can name a line.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::policy::PolicyConfig;
use crate::policy::auto::AutoApproveConfig;
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
    pub policy: Option<Spanned<RawPolicy>>,
    #[serde(default)]
    pub writeback: BTreeMap<Spanned<String>, Spanned<RawWriteback>>,
    #[serde(default)]
    pub auto_approve: Option<Spanned<AutoApproveConfig>>,
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
    /// End a live grant when the ITSM reports its approval is no longer approved (default true).
    #[serde(default)]
    pub revoke_on_withdrawn_approval: Option<bool>,
    /// End a live grant when the ticket now renders a different subject (default false).
    #[serde(default)]
    pub revoke_on_reassign: Option<bool>,
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

/// `[mapping.policy]` with the span of every value, so a problem can name the line of the exact
/// entry (`hours[1]`). [`RawPolicy::config`] turns it into the public [`PolicyConfig`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    #[serde(default)]
    pub distinct_approver: Option<Spanned<bool>>,
    #[serde(default)]
    pub requesters: Vec<Spanned<String>>,
    #[serde(default)]
    pub targets: Vec<Spanned<String>>,
    #[serde(default)]
    pub condition: Option<Spanned<String>>,
    #[serde(default)]
    pub hours: Vec<Spanned<String>>,
    #[serde(default)]
    pub min_duration: Option<Spanned<String>>,
    #[serde(default)]
    pub max_active_per_subject: Option<Spanned<i64>>,
    #[serde(default)]
    pub max_active_per_target: Option<Spanned<i64>>,
    #[serde(default)]
    pub approvers: Vec<Spanned<String>>,
    #[serde(default)]
    pub min_approvals: Option<Spanned<i64>>,
    #[serde(default)]
    pub scopes: Option<Vec<Spanned<String>>>,
}

impl RawPolicy {
    /// The values without their spans.
    pub fn config(&self) -> PolicyConfig {
        let list = |l: &[Spanned<String>]| l.iter().map(|s| s.get_ref().clone()).collect();
        PolicyConfig {
            distinct_approver: self.distinct_approver.as_ref().is_none_or(|d| *d.get_ref()),
            requesters: list(&self.requesters),
            targets: list(&self.targets),
            condition: self.condition.as_ref().map(|c| c.get_ref().clone()),
            hours: list(&self.hours),
            min_duration: self.min_duration.as_ref().map(|d| d.get_ref().clone()),
            max_active_per_subject: self.max_active_per_subject.as_ref().map(|n| *n.get_ref()),
            max_active_per_target: self.max_active_per_target.as_ref().map(|n| *n.get_ref()),
            approvers: list(&self.approvers),
            min_approvals: self.min_approvals.as_ref().map(|n| *n.get_ref()),
            scopes: self.scopes.as_deref().map(list),
        }
    }

    /// The span of the value at `key` (and `index`, for a list entry), where there is one.
    pub fn span(&self, key: &str, index: Option<usize>) -> Option<Range<usize>> {
        let entry = |l: &[Spanned<String>]| index.and_then(|i| l.get(i)).map(Spanned::span);
        match key {
            "requesters" => entry(&self.requesters),
            "targets" => entry(&self.targets),
            "hours" => entry(&self.hours),
            "approvers" => entry(&self.approvers),
            "scopes" => self.scopes.as_deref().and_then(entry),
            "condition" => self.condition.as_ref().map(Spanned::span),
            "min_duration" => self.min_duration.as_ref().map(Spanned::span),
            "max_active_per_subject" => self.max_active_per_subject.as_ref().map(Spanned::span),
            "max_active_per_target" => self.max_active_per_target.as_ref().map(Spanned::span),
            "min_approvals" => self.min_approvals.as_ref().map(Spanned::span),
            _ => None,
        }
    }
}
