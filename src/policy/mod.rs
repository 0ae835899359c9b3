//! Policy: the checks every grant must pass after an approval and before any privilege is
//! applied — the approver is someone other than the requester and the subject, and one the
//! mapping allows; enough distinct people approved; the requester and the target are ones this
//! mapping serves; the duration is sane; it is within the allowed hours; the subject and the
//! target do not already hold too many live grants. Pure: no I/O, no clock; the engine gathers
//! the [`Facts`] (the clock's "now", live-grant counts from the store, where the approvers came
//! from), calls [`check_at`] and writes a refusal's [`Verdict::refusal`] back to the ticket.
//!
//! The rules come from a mapping's `[mapping.policy]` table ([`PolicyConfig`]), compiled once at
//! load into a [`Policy`] so that a bad glob or condition is a configuration problem, never a
//! runtime surprise. A policy `condition` (CEL) needs the ticket's names: [`check_in_context`]
//! (or [`crate::mapping::Mapping::check_policy`]) evaluates it; [`check`] without a context
//! fails such a policy rather than skip a rule. In the same spirit, rules that need [`Facts`]
//! (`hours`, `max_active_per_*`) fail when checked without them.

pub mod auto;
mod hours;
pub mod scope;
pub mod summary;

use std::sync::Arc;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;

pub use hours::Window;

use crate::identity::IdentityMap;
use crate::mapping::condition::{CelVariables, Condition, ConditionFailure};
use crate::ticket::Person;
use scope::ScopeCatalog;

/// The longest grant any mapping may ever produce. Mapping files are checked against it at load
/// (`max_duration`), and [`check`] re-checks the final duration as defence in depth.
pub const DURATION_CEILING: SignedDuration = SignedDuration::from_hours(24);

/// The `[mapping.policy]` table as an administrator writes it.
///
/// Every field has a safe default: approvals must come from someone other than the requester,
/// and empty glob lists mean "any".
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Refuse approvals by the requester or by the grant's subject, and approvals that name no
    /// identifiable approver. Defaults to `true`; turning it off is a deliberate choice.
    #[serde(default = "default_true")]
    pub distinct_approver: bool,
    /// Globs on the requester's e-mail (case-insensitive), e.g. `"*@example.com"`.
    #[serde(default)]
    pub requesters: Vec<String>,
    /// Globs on the rendered grant target (case-insensitive, as host names are), e.g. `"WS-*"`.
    #[serde(default)]
    pub targets: Vec<String>,
    /// A CEL expression over the ticket's names (as in `when`) that must be true for a grant,
    /// e.g. `'fields.customfield_10080 == "Yes"'`. An error or a non-boolean result refuses.
    #[serde(default)]
    pub condition: Option<String>,
    /// Windows in which an approval may be granted, e.g. `"Mon-Fri 07:00-19:00 Europe/Berlin"`;
    /// empty means any time. Outside every window the approval is refused.
    #[serde(default)]
    pub hours: Vec<String>,
    /// The shortest grant worth issuing (`"15m"`): a shorter request is refused, whereas
    /// `grant.max_duration` silently caps a longer one.
    #[serde(default)]
    pub min_duration: Option<String>,
    /// How many live grants (approved, active, expiring, revoking, revoke_failed) one subject
    /// may hold at once, across all tickets and mappings.
    #[serde(default)]
    pub max_active_per_subject: Option<i64>,
    /// How many live grants one target may carry at once, across all tickets and mappings.
    #[serde(default)]
    pub max_active_per_target: Option<i64>,
    /// Who may approve: e-mail addresses, ITSM user ids, directory subjects of the identity map
    /// (case-insensitive) or `group:<name>` (a group of the identity map). Empty means anyone
    /// but the requester and the subject.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// How many distinct people (by id or e-mail) must have approved, counting only allowed
    /// approvers who are neither the requester nor the subject.
    #[serde(default)]
    pub min_approvals: Option<i64>,
    /// Globs on the grant's scope string (`"local-admin"`, `"app:*"`, `"service:spooler"`).
    /// Absent means only `local-admin`, so a mapping never grants more without saying so.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
}

fn default_true() -> bool {
    true
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            distinct_approver: true,
            requesters: Vec::new(),
            targets: Vec::new(),
            condition: None,
            hours: Vec::new(),
            min_duration: None,
            max_active_per_subject: None,
            max_active_per_target: None,
            approvers: Vec::new(),
            min_approvals: None,
            scopes: None,
        }
    }
}

/// The largest `max_active_per_*` accepted: beyond it the limit means nothing.
pub const MAX_ACTIVE_LIMIT: i64 = 10_000;

/// The largest `min_approvals` accepted; no approval process asks more people than this.
pub const MAX_MIN_APPROVALS: i64 = 50;

/// The most entries `hours` or `approvers` may list: policy lists are short by nature, and
/// every refusal reason names them.
pub const MAX_LIST_ENTRIES: usize = 1_000;

/// At most this many approvers of one approval are considered (distinctness is quadratic).
const MAX_APPROVERS_CONSIDERED: usize = 256;

/// A policy table that cannot be compiled; names the key so loading can report a precise problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A glob in `requesters` or `targets` is malformed.
    #[error("{list}[{index}]: {pattern:?} is not a valid glob ({why})")]
    Glob {
        /// Which list: `requesters` or `targets`.
        list: &'static str,
        /// Position of the glob in that list, for the configuration key.
        index: usize,
        /// The glob as written.
        pattern: String,
        /// What the glob compiler said.
        why: String,
    },
    /// `condition` is not a valid CEL expression.
    #[error("condition: the CEL expression does not compile: {why}")]
    Condition {
        /// CEL's message.
        why: String,
    },
    /// An entry of `hours` is not a window.
    #[error("hours[{index}]: {why}")]
    Hours {
        /// Position in the list.
        index: usize,
        /// What is wrong and how to write it.
        why: String,
    },
    /// `min_duration` is not a usable duration.
    #[error("min_duration: {why}")]
    MinDuration {
        /// What is wrong and how to write it.
        why: String,
    },
    /// A numeric limit (`max_active_per_subject`, `max_active_per_target`, `min_approvals`)
    /// is out of range or contradicts another key.
    #[error("{key}: {why}")]
    Limit {
        /// The key.
        key: &'static str,
        /// What is wrong and how to fix it.
        why: String,
    },
    /// An entry of `approvers` is not an identity this version can compare.
    #[error("approvers[{index}]: {why}")]
    Approver {
        /// Position in the list.
        index: usize,
        /// What is wrong and how to fix it.
        why: String,
    },
    /// An entry of `scopes` is not a scope or scope glob.
    #[error("scopes[{index}]: {why}")]
    Scope {
        /// Position in the list (0 for an empty list).
        index: usize,
        /// What is wrong and how to fix it.
        why: String,
    },
    /// A list is longer than [`MAX_LIST_ENTRIES`].
    #[error("{list}: {len} entries, more than the {MAX_LIST_ENTRIES} allowed")]
    TooLong {
        /// Which list.
        list: &'static str,
        /// How many entries it has.
        len: usize,
    },
}

impl PolicyError {
    /// The key inside `[mapping.policy]` the error is about (`targets[1]`, `condition`).
    pub fn key(&self) -> String {
        match self {
            PolicyError::Glob { list, index, .. } => format!("{list}[{index}]"),
            PolicyError::Condition { .. } => "condition".to_owned(),
            PolicyError::Hours { index, .. } => format!("hours[{index}]"),
            PolicyError::MinDuration { .. } => "min_duration".to_owned(),
            PolicyError::Limit { key, .. } => (*key).to_owned(),
            PolicyError::Approver { index, .. } => format!("approvers[{index}]"),
            PolicyError::Scope { index, .. } => format!("scopes[{index}]"),
            PolicyError::TooLong { list, .. } => (*list).to_owned(),
        }
    }

    /// The key's root (`hours` for `hours[1]`) and position in its list, if it is a list entry:
    /// what the loader needs to find the entry's line.
    pub fn position(&self) -> (&'static str, Option<usize>) {
        match self {
            PolicyError::Glob { list, index, .. } => (list, Some(*index)),
            PolicyError::Condition { .. } => ("condition", None),
            PolicyError::Hours { index, .. } => ("hours", Some(*index)),
            PolicyError::MinDuration { .. } => ("min_duration", None),
            PolicyError::Limit { key, .. } => (key, None),
            PolicyError::Approver { index, .. } => ("approvers", Some(*index)),
            PolicyError::Scope { index, .. } => ("scopes", Some(*index)),
            PolicyError::TooLong { list, .. } => (list, None),
        }
    }

    /// What is wrong, without the key (the loader reports the key separately).
    pub fn why(&self) -> String {
        match self {
            PolicyError::Glob { pattern, why, .. } => {
                format!("{pattern:?} is not a valid glob ({why}); write e.g. \"WS-*\"")
            }
            PolicyError::Condition { why } => format!("the CEL expression does not compile: {why}"),
            PolicyError::Hours { why, .. }
            | PolicyError::MinDuration { why }
            | PolicyError::Limit { why, .. }
            | PolicyError::Approver { why, .. }
            | PolicyError::Scope { why, .. } => why.clone(),
            PolicyError::TooLong { len, .. } => {
                format!("{len} entries, more than the {MAX_LIST_ENTRIES} allowed")
            }
        }
    }
}

/// A compiled glob list. Empty means "any", so that an omitted list never blocks everything.
#[derive(Debug, Clone)]
struct GlobList {
    patterns: Vec<String>,
    set: GlobSet,
}

impl GlobList {
    fn compile(list: &'static str, patterns: &[String]) -> Result<Self, PolicyError> {
        let mut builder = GlobSetBuilder::new();
        for (index, pattern) in patterns.iter().enumerate() {
            let glob = GlobBuilder::new(pattern.trim())
                .case_insensitive(true)
                .build()
                .map_err(|e| PolicyError::Glob {
                    list,
                    index,
                    pattern: pattern.clone(),
                    why: e.kind().to_string(),
                })?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|e| PolicyError::Glob {
            list,
            index: 0,
            pattern: patterns.join(", "),
            why: e.to_string(),
        })?;
        Ok(Self {
            patterns: patterns.iter().map(|p| p.trim().to_owned()).collect(),
            set,
        })
    }

    fn is_any(&self) -> bool {
        self.patterns.is_empty()
    }

    fn matches(&self, candidate: &str) -> bool {
        self.is_any() || self.set.is_match(candidate.trim())
    }

    fn describe(&self) -> String {
        self.patterns.join(", ")
    }
}

/// A mapping's policy, compiled: what [`check`] evaluates.
#[derive(Debug, Clone)]
pub struct Policy {
    distinct_approver: bool,
    requesters: GlobList,
    targets: GlobList,
    condition: Option<Arc<Condition>>,
    hours: Vec<Window>,
    min_duration: Option<SignedDuration>,
    max_active_per_subject: Option<u32>,
    max_active_per_target: Option<u32>,
    approvers: Vec<String>,
    min_approvals: Option<u32>,
    scopes: GlobList,
    world: World,
}

/// What a policy compares against besides its own keys: the scope allow-list, the identity map
/// and the connector whose user ids its tickets carry. Set by [`Policy::bind`] at load.
#[derive(Debug, Clone, Default)]
struct World {
    catalog: Arc<ScopeCatalog>,
    identities: Arc<IdentityMap>,
    connector: String,
}

impl Policy {
    /// Compiles the globs, the condition, the windows and the limits of `config`; a bad entry
    /// is reported with its key and position, so loading can point at the line to fix.
    pub fn compile(config: &PolicyConfig) -> Result<Policy, PolicyError> {
        let condition = match &config.condition {
            None => None,
            Some(source) => Some(Arc::new(
                Condition::compile(source).map_err(|why| PolicyError::Condition { why })?,
            )),
        };
        for (list, len) in [
            ("requesters", config.requesters.len()),
            ("targets", config.targets.len()),
            ("hours", config.hours.len()),
            ("approvers", config.approvers.len()),
            ("scopes", config.scopes.as_ref().map_or(0, Vec::len)),
        ] {
            if len > MAX_LIST_ENTRIES {
                return Err(PolicyError::TooLong { list, len });
            }
        }
        let hours = config
            .hours
            .iter()
            .enumerate()
            .map(|(index, text)| {
                Window::parse(text).map_err(|why| PolicyError::Hours { index, why })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let min_duration = match &config.min_duration {
            None => None,
            Some(text) => {
                let d = crate::config::parse_duration(text)
                    .map_err(|why| PolicyError::MinDuration { why })?;
                if d.is_zero() || d.is_negative() {
                    return Err(PolicyError::MinDuration {
                        why: "must be longer than zero; remove the key for no minimum".to_owned(),
                    });
                }
                if d > DURATION_CEILING {
                    return Err(PolicyError::MinDuration {
                        why: format!(
                            "{d:#} is longer than the {DURATION_CEILING:#} no grant may exceed, so \
                             no request could ever pass"
                        ),
                    });
                }
                Some(d)
            }
        };
        let approvers = config
            .approvers
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                approver_entry(entry).map_err(|why| PolicyError::Approver { index, why })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let min_approvals = limit("min_approvals", config.min_approvals, MAX_MIN_APPROVALS)?;
        let has_group = approvers.iter().any(|a| a.starts_with(GROUP_PREFIX));
        if let Some(n) = min_approvals
            && !has_group
        {
            let listed = distinct_entries(&approvers);
            if !approvers.is_empty() && usize::try_from(n).unwrap_or(usize::MAX) > listed {
                return Err(PolicyError::Limit {
                    key: "min_approvals",
                    why: format!(
                        "{n} distinct approvers are required but `approvers` lists only {listed}, \
                         so no request could ever pass; list more approvers or lower min_approvals"
                    ),
                });
            }
        }
        Ok(Policy {
            distinct_approver: config.distinct_approver,
            requesters: GlobList::compile("requesters", &config.requesters)?,
            targets: GlobList::compile("targets", &config.targets)?,
            condition,
            hours,
            min_duration,
            max_active_per_subject: limit(
                "max_active_per_subject",
                config.max_active_per_subject,
                MAX_ACTIVE_LIMIT,
            )?,
            max_active_per_target: limit(
                "max_active_per_target",
                config.max_active_per_target,
                MAX_ACTIVE_LIMIT,
            )?,
            approvers,
            min_approvals,
            scopes: compile_scopes(config.scopes.as_deref())?,
            world: World::default(),
        })
    }

    /// This policy compared against the scope allow-list, the identity map and the user ids of
    /// `connector` (the mapping's connector). Without it only built-in scopes resolve and
    /// people are compared by their ITSM ids and e-mails alone.
    pub fn bind(
        mut self,
        catalog: Arc<ScopeCatalog>,
        identities: Arc<IdentityMap>,
        connector: &str,
    ) -> Policy {
        self.world = World {
            catalog,
            identities,
            connector: connector.to_owned(),
        };
        self
    }

    /// Whether the policy's `scopes` allow the scope string (globs, case-insensitive).
    pub fn allows_scope(&self, scope: &str) -> bool {
        self.scopes.matches(scope)
    }

    /// The `scopes` entries as written (`local-admin` when the key is absent).
    pub fn scope_patterns(&self) -> &[String] {
        &self.scopes.patterns
    }

    /// The scope's full definition from the allow-list, or why there is none.
    pub fn resolve_scope(&self, scope: &str) -> Result<scope::ScopeDefinition, scope::Unresolved> {
        self.world.catalog.resolve(scope)
    }

    /// The `group:` names among `approvers` (the loader checks them against the identity map).
    pub fn approver_groups(&self) -> impl Iterator<Item = (usize, &str)> {
        self.approvers
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.strip_prefix(GROUP_PREFIX).map(|g| (i, g)))
    }

    /// `min_approvals` as configured (`None` when the key is absent).
    pub fn min_approvals(&self) -> Option<u32> {
        self.min_approvals
    }

    /// At most how many distinct people could approve: the listed identities plus the members
    /// of the listed `group:` groups in `identities` (an upper bound: a listed address may also
    /// name a group member). `None` when `approvers` is empty: then anyone may approve. The
    /// loader compares it with `min_approvals`, which [`Policy::compile`] cannot for groups.
    pub fn most_possible_approvers(
        &self,
        identities: &crate::identity::IdentityMap,
    ) -> Option<usize> {
        if self.approvers.is_empty() {
            return None;
        }
        let mut people: Vec<String> = Vec::new();
        for entry in &self.approvers {
            match entry.strip_prefix(GROUP_PREFIX) {
                Some(group) => people.extend(
                    identities
                        .members(group)
                        .into_iter()
                        .map(|m| format!("{GROUP_PREFIX}member {}", m.to_lowercase())),
                ),
                None => people.push(entry.to_lowercase()),
            }
        }
        people.sort();
        people.dedup();
        Some(people.len())
    }

    /// Who may approve, in words for the summary comment: the listed people and groups (with
    /// their members from the identity map), or "anyone but the requester and the subject".
    pub fn who_may_approve(&self) -> String {
        if self.approvers.is_empty() {
            return "anyone but the requester and the person receiving the privilege".to_owned();
        }
        let entries: Vec<String> = self
            .approvers
            .iter()
            .map(|a| match a.strip_prefix(GROUP_PREFIX) {
                Some(g) => {
                    let members = self.world.identities.members(g);
                    format!(
                        "group {g} ({})",
                        short_list(&members.iter().map(|m| (*m).to_owned()).collect::<Vec<_>>())
                    )
                }
                None => a.clone(),
            })
            .collect();
        format!(
            "{} (never the requester or the person receiving the privilege)",
            short_list(&entries)
        )
    }

    /// How many distinct approvers are needed (1 unless `min_approvals` says more).
    pub fn approvals_needed(&self) -> u32 {
        self.min_approvals.unwrap_or(1)
    }

    /// True when the policy has a `condition`, which needs the ticket's names to evaluate.
    pub fn has_condition(&self) -> bool {
        self.condition.is_some()
    }

    /// Whether approvals must come from an identified person other than requester and subject.
    pub fn distinct_approver(&self) -> bool {
        self.distinct_approver
    }

    /// The shortest grant this policy accepts, if it sets one (the loader compares it with
    /// `grant.max_duration`).
    pub fn min_duration(&self) -> Option<SignedDuration> {
        self.min_duration
    }

    /// The allowed-hours windows (empty: any time).
    pub fn hours(&self) -> &[Window] {
        &self.hours
    }

    /// Whether [`Facts::live_for_subject`] / [`Facts::live_for_target`] are needed, so the
    /// engine asks the store only when a limit is set.
    pub fn needs_live_counts(&self) -> bool {
        self.max_active_per_subject.is_some() || self.max_active_per_target.is_some()
    }
}

impl Default for Policy {
    /// The policy of a mapping without a `[mapping.policy]` table: distinct approver, any
    /// requester, any target, any time, no limits.
    fn default() -> Self {
        Policy {
            distinct_approver: true,
            requesters: GlobList {
                patterns: Vec::new(),
                set: GlobSet::empty(),
            },
            targets: GlobList {
                patterns: Vec::new(),
                set: GlobSet::empty(),
            },
            condition: None,
            hours: Vec::new(),
            min_duration: None,
            max_active_per_subject: None,
            max_active_per_target: None,
            approvers: Vec::new(),
            min_approvals: None,
            scopes: default_scopes(),
            world: World::default(),
        }
    }
}

/// The scope list of a policy that names none: only `local-admin`.
fn default_scopes() -> GlobList {
    let patterns = vec![scope::LOCAL_ADMIN.to_owned()];
    let mut builder = GlobSetBuilder::new();
    if let Ok(glob) = GlobBuilder::new(scope::LOCAL_ADMIN).build() {
        builder.add(glob);
    }
    GlobList {
        patterns,
        set: builder.build().unwrap_or_else(|_| GlobSet::empty()),
    }
}

/// Compiles `scopes`: absent means only `local-admin`; present must be non-empty and name
/// kinds jitbridge knows.
fn compile_scopes(entries: Option<&[String]>) -> Result<GlobList, PolicyError> {
    let Some(entries) = entries else {
        return Ok(default_scopes());
    };
    if entries.is_empty() {
        return Err(PolicyError::Scope {
            index: 0,
            why: "the list is empty, so no grant could ever pass; list the scopes this mapping                   may grant (e.g. [\"local-admin\"]) or remove the key for local-admin only"
                .to_owned(),
        });
    }
    for (index, entry) in entries.iter().enumerate() {
        scope::check_policy_entry(entry).map_err(|why| PolicyError::Scope { index, why })?;
    }
    GlobList::compile("scopes", entries)
}

/// How `approvers` entries name a group of the identity map.
const GROUP_PREFIX: &str = "group:";

/// A positive count no larger than `max`, or a problem naming `key`.
fn limit(key: &'static str, value: Option<i64>, max: i64) -> Result<Option<u32>, PolicyError> {
    let Some(n) = value else {
        return Ok(None);
    };
    if n < 1 {
        return Err(PolicyError::Limit {
            key,
            why: format!(
                "{n} would refuse every request; use 1 or more, or remove the key for no limit"
            ),
        });
    }
    if n > max {
        return Err(PolicyError::Limit {
            key,
            why: format!("{n} is more than the {max} allowed"),
        });
    }
    u32::try_from(n).map(Some).map_err(|_| PolicyError::Limit {
        key,
        why: format!("{n} is out of range"),
    })
}

/// One `approvers` entry, lower-cased for case-insensitive comparison.
fn approver_entry(entry: &str) -> Result<String, String> {
    let trimmed = entry.trim();
    if trimmed.is_empty() {
        return Err("the entry is empty; write an e-mail address or an ITSM user id".to_owned());
    }
    if trimmed.len() > 256 {
        return Err(
            "longer than 256 characters; write an e-mail address or an ITSM user id".to_owned(),
        );
    }
    if let Some(group) = trimmed
        .get(..6)
        .filter(|p| p.eq_ignore_ascii_case(GROUP_PREFIX))
        .and_then(|_| trimmed.get(6..))
    {
        let group = group.trim();
        if group.is_empty()
            || !group.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
            })
        {
            return Err(format!(
                "{trimmed:?}: a group is written \"group:<name>\" with a name of a-z, 0-9, '.', \
                 '_', '-' as listed in the identity map"
            ));
        }
        return Ok(format!("{GROUP_PREFIX}{group}"));
    }
    if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{trimmed:?} contains a space or control character; write one e-mail address or user id per entry"
        ));
    }
    if trimmed.contains(['*', '?', '[']) {
        return Err(format!(
            "{trimmed:?} looks like a pattern; approvers are exact identities (e-mail or user id)"
        ));
    }
    Ok(trimmed.to_lowercase())
}

/// How many distinct entries a lower-cased `approvers` list holds.
fn distinct_entries(entries: &[String]) -> usize {
    let mut seen: Vec<&String> = entries.iter().collect();
    seen.sort();
    seen.dedup();
    seen.len()
}

/// Where the approvers in a [`PolicyInput`] came from: `approvers` and `min_approvals` trust
/// only identities the ITSM vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApproverSource {
    /// Read from the ITSM's own approval records through its API (JSM approvals, ServiceNow
    /// approval rows, ...).
    Confirmed,
    /// Taken from the authenticated delivery because the connector does not confirm approvals
    /// (`confirm_approvals = false`): the administrator chose to trust the delivery.
    Delivery,
    /// The ITSM confirmed that the ticket is approved but not by whom, so the delivery's actor
    /// is the only name there is. Good enough to refuse a self-approval, not to prove that an
    /// allowed person approved.
    Unconfirmed,
}

/// A grant whose revoke keeps failing (`revoke_failed`): the privilege may still be in place,
/// so no new grant for its subject or on its target is issued until the revoke completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnresolvedRevoke {
    /// The grant that could not be revoked.
    pub grant: uuid::Uuid,
    /// Its ticket, so a person can find it.
    pub ticket_key: String,
    /// Who holds it.
    pub subject: String,
    /// Where.
    pub target: String,
}

/// What the engine knows about the world at decision time, besides the request: policy stays
/// pure, and tests can set any "now" or count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The clock's "now", for `hours`.
    pub now: Timestamp,
    /// Live grants the subject already holds (across all tickets); `None` when not counted.
    pub live_for_subject: Option<u64>,
    /// Live grants on the target (across all tickets); `None` when not counted.
    pub live_for_target: Option<u64>,
    /// Where [`PolicyInput::approvers`] came from.
    pub approvers_from: ApproverSource,
    /// A grant of the same subject or on the same target whose revoke has not succeeded yet
    /// (the oldest, if several); `None` when there is none, or nothing was looked up (dry runs).
    pub unresolved_revoke: Option<UnresolvedRevoke>,
}

impl Facts {
    /// Facts at `now` with approvers read from the ITSM and nothing counted.
    pub fn at(now: Timestamp) -> Facts {
        Facts {
            now,
            live_for_subject: None,
            live_for_target: None,
            approvers_from: ApproverSource::Confirmed,
            unresolved_revoke: None,
        }
    }
}

/// Everything policy looks at for one grant decision. Borrowed, so the engine builds it from
/// the event, the API confirmation and the rendered grant without copying.
#[derive(Debug, Clone, Copy)]
pub struct PolicyInput<'a> {
    /// Who raised the ticket; `None` when the ITSM did not say.
    pub requester: Option<&'a Person>,
    /// Who approved (as confirmed through the ITSM's API where possible).
    pub approvers: &'a [Person],
    /// Who would receive the privilege.
    pub subject: &'a str,
    /// Where the privilege would be granted.
    pub target: &'a str,
    /// What privilege (`local-admin`, `app:7zip`, ...).
    pub scope: &'a str,
    /// For how long (already capped by the mapping).
    pub duration: SignedDuration,
}

/// The outcome of one rule, kept even when it passes so `jitbridge explain` and the audit trail
/// show every rule that was considered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The rule's name as written in the mapping file (`distinct_approver`, `requesters`, ...).
    pub rule: &'static str,
    /// Whether the rule allows the grant.
    pub passed: bool,
    /// Why, in words fit for a ticket comment.
    pub detail: String,
}

/// All rule outcomes for one grant decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Every rule, in evaluation order.
    pub checks: Vec<Check>,
}

impl Verdict {
    /// True only when every rule passed.
    pub fn allowed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// The first failed check's detail, phrased for a person reading a ticket comment.
    pub fn refusal(&self) -> Option<String> {
        self.checks
            .iter()
            .find(|c| !c.passed)
            .map(|c| c.detail.clone())
    }
}

/// Evaluates every rule of `policy` against `input`. Never short-circuits, so the verdict lists
/// all failures; [`Verdict::refusal`] picks the first for the ticket comment. A policy with a
/// `condition` fails here: use [`check_in_context`] to give it the ticket's names; one with
/// `hours` or `max_active_per_*` fails too: use [`check_at`] to give it the [`Facts`].
pub fn check(policy: &Policy, input: &PolicyInput) -> Verdict {
    evaluate(policy, input, None, None)
}

/// [`check`], with the ticket's template context (see [`crate::mapping::template_context`]) for
/// the policy's `condition`, but without [`Facts`] (for dry runs).
pub fn check_in_context(
    policy: &Policy,
    input: &PolicyInput,
    context: Option<&serde_json::Value>,
) -> Verdict {
    evaluate(policy, input, None, context)
}

/// The engine's check: every rule, with the [`Facts`] of the moment and the ticket's context.
pub fn check_at(
    policy: &Policy,
    input: &PolicyInput,
    facts: &Facts,
    context: Option<&serde_json::Value>,
) -> Verdict {
    evaluate(policy, input, Some(facts), context)
}

fn evaluate(
    policy: &Policy,
    input: &PolicyInput,
    facts: Option<&Facts>,
    context: Option<&serde_json::Value>,
) -> Verdict {
    let mut checks = vec![check_distinct_approver(policy, input)];
    if !policy.approvers.is_empty() {
        checks.push(check_approvers(policy, input, facts));
    }
    if let Some(n) = policy.min_approvals {
        checks.push(check_min_approvals(policy, input, facts, n));
    }
    checks.push(check_requester(policy, input));
    checks.push(check_target(policy, input));
    checks.push(check_scope(policy, input));
    checks.push(check_duration(input));
    if let Some(min) = policy.min_duration {
        checks.push(check_min_duration(input, min));
    }
    if !policy.hours.is_empty() {
        checks.push(check_hours(&policy.hours, facts));
    }
    if let Some(max) = policy.max_active_per_subject {
        checks.push(check_live(
            "max_active_per_subject",
            Holder::Subject(input.subject.trim()),
            facts.and_then(|f| f.live_for_subject),
            max,
        ));
    }
    if let Some(max) = policy.max_active_per_target {
        checks.push(check_live(
            "max_active_per_target",
            Holder::Target(input.target.trim()),
            facts.and_then(|f| f.live_for_target),
            max,
        ));
    }
    // Always applies, but needs the store's answer: a dry run without facts has none.
    if let Some(facts) = facts {
        checks.push(check_unresolved_revoke(
            facts.unresolved_revoke.as_ref(),
            input,
        ));
    }
    if let Some(condition) = &policy.condition {
        checks.push(check_condition(condition, context));
    }
    Verdict { checks }
}

fn check_condition(condition: &Condition, context: Option<&serde_json::Value>) -> Check {
    const RULE: &str = "condition";
    let fail = |detail: String| Check {
        rule: RULE,
        passed: false,
        detail,
    };
    let Some(context) = context else {
        return fail(
            "the policy condition of this mapping could not be evaluated (no ticket context)"
                .to_owned(),
        );
    };
    match condition.evaluate(&CelVariables::new(context)) {
        Ok(true) => Check {
            rule: RULE,
            passed: true,
            detail: format!("the policy condition {} holds", condition.source()),
        },
        Ok(false) => fail(format!(
            "the policy condition {} is not met by this ticket",
            condition.source()
        )),
        Err(ConditionFailure::Runtime(message)) => fail(format!(
            "the policy condition {} could not be evaluated for this ticket ({message})",
            condition.source()
        )),
        Err(ConditionFailure::NotBool(got)) => fail(format!(
            "the policy condition {} gave a {got} instead of true or false",
            condition.source()
        )),
    }
}

/// How a person is named in a refusal: the identity we compared, never just the display name.
fn label(person: &Person) -> String {
    let nonempty = |s: &Option<String>| {
        s.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    nonempty(&person.email)
        .or_else(|| nonempty(&person.id))
        .or_else(|| nonempty(&person.name).map(|n| format!("\"{n}\"")))
        .unwrap_or_else(|| "(unidentified)".to_owned())
}

fn is_subject(person: &Person, subject: &str) -> bool {
    let subject = subject.trim();
    if subject.is_empty() {
        return false;
    }
    [&person.email, &person.id]
        .into_iter()
        .flatten()
        .any(|v| !v.trim().is_empty() && v.trim().eq_ignore_ascii_case(subject))
}

fn check_distinct_approver(policy: &Policy, input: &PolicyInput) -> Check {
    const RULE: &str = "distinct_approver";
    let fail = |detail: String| Check {
        rule: RULE,
        passed: false,
        detail,
    };
    let identified: Vec<&Person> = input
        .approvers
        .iter()
        .filter(|a| !a.is_anonymous())
        .collect();
    if policy.distinct_approver {
        if identified.is_empty() {
            return fail(
                "the approval names no identifiable approver, so it cannot be shown to come from someone \
                 other than the requester"
                    .to_owned(),
            );
        }
        let requester = match input.requester {
            Some(r) if !r.is_anonymous() => r,
            _ => {
                return fail(
                    "the ticket's requester is unknown, so the approval cannot be shown to come from someone \
                     other than the requester"
                        .to_owned(),
                );
            }
        };
        for approver in &identified {
            if same_person(approver, requester) {
                return fail(format!(
                    "approver {} is the requester; a request cannot be approved by the person who raised it",
                    label(approver)
                ));
            }
            if let Some(subject) = policy.world.shared_subject(approver, requester) {
                return fail(format!(
                    "approver {} and the requester {} are the same person ({subject} in the \
                     identity map); a request cannot be approved by the person who raised it",
                    label(approver),
                    label(requester)
                ));
            }
        }
    }
    // Nobody approves their own elevation, whatever the mapping says: this part is not optional.
    if let Some(approver) = identified
        .iter()
        .find(|a| policy.world.is_subject(a, input.subject))
    {
        return fail(format!(
            "approver {} would receive the privilege; nobody can approve their own elevation",
            label(approver)
        ));
    }
    if !policy.distinct_approver {
        return Check {
            rule: RULE,
            passed: true,
            detail: "the requester may approve (distinct_approver = false); no approver is the \
                     grant's subject"
                .to_owned(),
        };
    }
    let names: Vec<String> = identified.iter().map(|a| label(a)).collect();
    Check {
        rule: RULE,
        passed: true,
        detail: format!(
            "approved by {}, who is neither the requester nor the subject",
            names.join(", ")
        ),
    }
}

/// The same identity by id or e-mail, ignoring ASCII case on both (case-insensitive ids can
/// only merge people, never tell one person apart from themself).
fn same_person(a: &Person, b: &Person) -> bool {
    let same = |x: &Option<String>, y: &Option<String>| match (x, y) {
        (Some(x), Some(y)) => {
            let (x, y) = (x.trim(), y.trim());
            !x.is_empty() && x.eq_ignore_ascii_case(y)
        }
        _ => false,
    };
    same(&a.id, &b.id) || same(&a.email, &b.email)
}

/// Whether `person` is named by a lower-cased `approvers` entry (by e-mail or by id).
fn is_listed(entries: &[String], person: &Person) -> bool {
    [&person.email, &person.id]
        .into_iter()
        .flatten()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .any(|v| {
            entries
                .iter()
                .filter(|e| !e.starts_with(GROUP_PREFIX))
                .any(|e| e.eq_ignore_ascii_case(v))
        })
}

/// Comparisons through the identity map: two ITSM accounts mapped to one directory subject
/// are one person; `approvers` may name subjects, mapped e-mails and groups.
impl World {
    fn lookup(&self, person: &Person) -> Vec<crate::identity::PersonRef> {
        self.identities.lookup(&self.connector, person)
    }

    /// The subject both accounts are mapped to, when they are one person only by the map.
    fn shared_subject(&self, a: &Person, b: &Person) -> Option<String> {
        let la = self.lookup(a);
        self.lookup(b)
            .into_iter()
            .find(|r| la.contains(r))
            .and_then(|r| self.identities.subject(r).map(str::to_owned))
    }

    fn same_person(&self, a: &Person, b: &Person) -> bool {
        same_person(a, b) || self.shared_subject(a, b).is_some()
    }

    fn is_subject(&self, person: &Person, subject: &str) -> bool {
        is_subject(person, subject)
            || self
                .identities
                .named(subject)
                .is_some_and(|s| self.lookup(person).contains(&s))
    }

    fn is_listed(&self, entries: &[String], person: &Person) -> bool {
        if is_listed(entries, person) {
            return true;
        }
        let found = self.lookup(person);
        entries.iter().any(|e| match e.strip_prefix(GROUP_PREFIX) {
            Some(group) => self.identities.in_group(&self.connector, person, group),
            None => matches!(found.as_slice(), [one] if self.identities.names_entry(e, *one)),
        })
    }
}

/// `a, b, c and 4 more`: lists in ticket comments stay readable.
fn short_list(items: &[String]) -> String {
    const SHOWN: usize = 5;
    match items.len() {
        0 => "nobody".to_owned(),
        n if n <= SHOWN => items.join(", "),
        n => format!("{} and {} more", items[..SHOWN].join(", "), n - SHOWN),
    }
}

fn trusted_source(facts: Option<&Facts>) -> bool {
    facts.is_none_or(|f| f.approvers_from != ApproverSource::Unconfirmed)
}

const UNCONFIRMED_APPROVERS: &str = "the ticketing system confirmed the approval but not who gave it, \
     so it cannot be shown that an allowed person approved";

fn check_approvers(policy: &Policy, input: &PolicyInput, facts: Option<&Facts>) -> Check {
    const RULE: &str = "approvers";
    let allowed = short_list(&policy.approvers);
    if !trusted_source(facts) {
        return Check {
            rule: RULE,
            passed: false,
            detail: format!("{UNCONFIRMED_APPROVERS} (allowed approvers: {allowed})"),
        };
    }
    let identified: Vec<&Person> = input
        .approvers
        .iter()
        .take(MAX_APPROVERS_CONSIDERED)
        .filter(|a| !a.is_anonymous())
        .collect();
    let (listed, unlisted): (Vec<&Person>, Vec<&Person>) = identified
        .iter()
        .partition(|a| policy.world.is_listed(&policy.approvers, a));
    if listed.is_empty() {
        let detail = if unlisted.is_empty() {
            format!(
                "the approval names no identifiable approver, and only {allowed} may approve this elevation"
            )
        } else {
            let names: Vec<String> = unlisted.iter().map(|a| label(a)).collect();
            format!(
                "approved by {}, who may not approve this elevation (allowed approvers: {allowed})",
                short_list(&names)
            )
        };
        return Check {
            rule: RULE,
            passed: false,
            detail,
        };
    }
    let names: Vec<String> = listed.iter().map(|a| label(a)).collect();
    Check {
        rule: RULE,
        passed: true,
        detail: format!(
            "approved by {}, who may approve this elevation",
            short_list(&names)
        ),
    }
}

/// Distinct people among `people`: approvers linked by a shared id or e-mail count once, even
/// through a chain (a by id = b, b by e-mail = c), so a count is never too high.
fn distinct_people<'a>(world: &World, people: &[&'a Person]) -> Vec<&'a Person> {
    let mut group: Vec<usize> = (0..people.len()).collect();
    fn root(group: &mut [usize], mut i: usize) -> usize {
        while let Some(&parent) = group.get(i) {
            if parent == i {
                break;
            }
            i = parent;
        }
        i
    }
    for i in 0..people.len() {
        for j in (i + 1)..people.len() {
            if let (Some(a), Some(b)) = (people.get(i), people.get(j))
                && world.same_person(a, b)
            {
                let (ri, rj) = (root(&mut group, i), root(&mut group, j));
                if let Some(slot) = group.get_mut(rj) {
                    *slot = ri;
                }
            }
        }
    }
    people
        .iter()
        .enumerate()
        .filter(|(i, _)| root(&mut group, *i) == *i)
        .map(|(_, p)| *p)
        .collect()
}

fn check_min_approvals(
    policy: &Policy,
    input: &PolicyInput,
    facts: Option<&Facts>,
    n: u32,
) -> Check {
    const RULE: &str = "min_approvals";
    let needed = |n: u32| {
        if n == 1 {
            "1 approver".to_owned()
        } else {
            format!("{n} distinct approvers")
        }
    };
    if !trusted_source(facts) {
        return Check {
            rule: RULE,
            passed: false,
            detail: format!(
                "this elevation needs {}, but the ticketing system confirmed the approval without \
                 saying who gave it",
                needed(n)
            ),
        };
    }
    let requester = input.requester.filter(|r| !r.is_anonymous());
    let eligible: Vec<&Person> = input
        .approvers
        .iter()
        .take(MAX_APPROVERS_CONSIDERED)
        .filter(|a| !a.is_anonymous())
        .filter(|a| !policy.world.is_subject(a, input.subject))
        .filter(|a| requester.is_none_or(|r| !policy.world.same_person(a, r)))
        .filter(|a| policy.approvers.is_empty() || policy.world.is_listed(&policy.approvers, a))
        .collect();
    let distinct = distinct_people(&policy.world, &eligible);
    let names: Vec<String> = distinct.iter().map(|a| label(a)).collect();
    let count = u32::try_from(distinct.len()).unwrap_or(u32::MAX);
    // "1 approver other than ...", "2 allowed approvers": who counted, in words.
    let who = |n: u32| {
        let noun = if policy.approvers.is_empty() {
            "approver"
        } else {
            "allowed approver"
        };
        let plural = if n == 1 { "" } else { "s" };
        let besides = if policy.approvers.is_empty() {
            " other than the requester and the subject"
        } else {
            ""
        };
        format!("{noun}{plural}{besides}")
    };
    if count >= n {
        return Check {
            rule: RULE,
            passed: true,
            detail: format!(
                "approved by {count} distinct {} ({}); {n} required",
                who(count),
                short_list(&names),
            ),
        };
    }
    let got = match count {
        0 => format!("no {} approved", who(1)),
        c => format!("only {c} {} approved ({})", who(c), short_list(&names)),
    };
    Check {
        rule: RULE,
        passed: false,
        detail: format!(
            "this elevation needs {}, but {got}; raise a new request and have it approved by {}",
            needed(n),
            needed(n)
        ),
    }
}

/// The rules that depend on who approved: they cannot be judged before an approval.
const APPROVAL_RULES: [&str; 3] = ["distinct_approver", "approvers", "min_approvals"];

/// The rules that can be judged when a ticket is raised, before anyone approved: what would
/// block the request now (requester, target, scope, duration, hours, live grants, condition).
/// `requesters` is left out while the requester's e-mail is unknown. For the summary comment;
/// the approval runs [`check_at`] again with the approvers.
pub fn check_before_approval(
    policy: &Policy,
    input: &PolicyInput,
    facts: &Facts,
    context: Option<&serde_json::Value>,
) -> Verdict {
    let mut verdict = evaluate(policy, input, Some(facts), context);
    verdict.checks.retain(|c| !APPROVAL_RULES.contains(&c.rule));
    // Some deliveries name the requester by id only; the ITSM's API supplies the e-mail when
    // the approval is confirmed, so `requesters` is judged then rather than reported early.
    let email_known = input
        .requester
        .and_then(|r| r.email.as_deref())
        .is_some_and(|e| !e.trim().is_empty());
    if !email_known {
        verdict.checks.retain(|c| c.rule != "requesters");
    }
    verdict
}

fn check_scope(policy: &Policy, input: &PolicyInput) -> Check {
    const RULE: &str = "scopes";
    let scope = input.scope.trim();
    if !policy.scopes.matches(scope) {
        return Check {
            rule: RULE,
            passed: false,
            detail: format!(
                "scope {scope} may not be granted by this elevation (allowed scopes: {})",
                policy.scopes.describe()
            ),
        };
    }
    match policy.world.catalog.resolve(scope) {
        Ok(def) => Check {
            rule: RULE,
            passed: true,
            detail: format!("scope {} is allowed", def.describe()),
        },
        Err(why) => Check {
            rule: RULE,
            passed: false,
            detail: why.0,
        },
    }
}

fn check_requester(policy: &Policy, input: &PolicyInput) -> Check {
    const RULE: &str = "requesters";
    let list = &policy.requesters;
    if list.is_any() {
        return Check {
            rule: RULE,
            passed: true,
            detail: "any requester may ask".to_owned(),
        };
    }
    let email = input
        .requester
        .and_then(|r| r.email.as_deref())
        .map(str::trim)
        .filter(|e| !e.is_empty());
    match email {
        None => Check {
            rule: RULE,
            passed: false,
            detail: format!(
                "the requester's e-mail address is unknown, and this elevation is only available to \
                 requesters matching {}",
                list.describe()
            ),
        },
        Some(email) if !is_plain_address(email) => Check {
            rule: RULE,
            passed: false,
            detail: format!(
                "requester e-mail {email:?} is not a single plain address, so it cannot be matched \
                 against the allowed requesters"
            ),
        },
        Some(email) if list.matches(email) => Check {
            rule: RULE,
            passed: true,
            detail: format!("requester {email} matches {}", list.describe()),
        },
        Some(email) => Check {
            rule: RULE,
            passed: false,
            detail: format!(
                "requester {email} may not request this elevation (allowed requesters: {})",
                list.describe()
            ),
        },
    }
}

fn check_target(policy: &Policy, input: &PolicyInput) -> Check {
    const RULE: &str = "targets";
    let list = &policy.targets;
    let target = input.target.trim();
    if target.is_empty() {
        return Check {
            rule: RULE,
            passed: false,
            detail: "the request names no target machine".to_owned(),
        };
    }
    if list.is_any() {
        return Check {
            rule: RULE,
            passed: true,
            detail: "any target allowed".to_owned(),
        };
    }
    if let Some(bad) = target.chars().find(|c| !is_machine_name_char(*c)) {
        return Check {
            rule: RULE,
            passed: false,
            detail: format!(
                "target {target:?} contains {bad:?}, which no machine name has (only letters, digits, \
                 '.', '-' and '_' are accepted)"
            ),
        };
    }
    if list.matches(target) {
        Check {
            rule: RULE,
            passed: true,
            detail: format!("target {target} matches {}", list.describe()),
        }
    } else {
        Check {
            rule: RULE,
            passed: false,
            detail: format!(
                "target {target} is not allowed for this elevation (allowed targets: {})",
                list.describe()
            ),
        }
    }
}

/// One address, nothing around it: a glob like `*@example.com` must not be satisfied by
/// `eve@evil.test,x@example.com` or `eve@evil.test@example.com`.
fn is_plain_address(email: &str) -> bool {
    email.matches('@').count() == 1
        && !email.chars().any(|c| {
            c.is_whitespace()
                || c.is_control()
                || matches!(c, ',' | ';' | '<' | '>' | '"' | '\'' | '/' | '\\')
        })
}

/// Characters of host and device names. A target glob such as `WS-*` must not be satisfied by
/// `WS-1,DC01` or `WS-1 DC01`, which a provider might read as two machines.
fn is_machine_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

fn check_duration(input: &PolicyInput) -> Check {
    const RULE: &str = "duration";
    let d = input.duration;
    if d.is_zero() || d.is_negative() {
        return Check {
            rule: RULE,
            passed: false,
            detail: "the requested duration is not positive".to_owned(),
        };
    }
    if d > DURATION_CEILING {
        return Check {
            rule: RULE,
            passed: false,
            detail: format!(
                "a grant of {d:#} is longer than the {DURATION_CEILING:#} every grant is limited to"
            ),
        };
    }
    Check {
        rule: RULE,
        passed: true,
        detail: format!("{d:#} is within the {DURATION_CEILING:#} limit"),
    }
}

fn check_min_duration(input: &PolicyInput, min: SignedDuration) -> Check {
    const RULE: &str = "min_duration";
    let d = input.duration;
    if d < min {
        Check {
            rule: RULE,
            passed: false,
            detail: format!(
                "a grant of {d:#} is shorter than the {min:#} this elevation needs at least; ask \
                 for {min:#} or more"
            ),
        }
    } else {
        Check {
            rule: RULE,
            passed: true,
            detail: format!("{d:#} is at least the {min:#} minimum"),
        }
    }
}

fn check_hours(windows: &[Window], facts: Option<&Facts>) -> Check {
    const RULE: &str = "hours";
    let allowed: Vec<&str> = windows.iter().map(Window::text).collect();
    let allowed = allowed.join(", ");
    let Some(facts) = facts else {
        return Check {
            rule: RULE,
            passed: false,
            detail: format!(
                "the time of the approval is unknown, so the allowed hours ({allowed}) could not be checked"
            ),
        };
    };
    if let Some(window) = windows.iter().find(|w| w.contains(facts.now)) {
        return Check {
            rule: RULE,
            passed: true,
            detail: format!(
                "approved at {}, within {}",
                window.local_now(facts.now),
                window.text()
            ),
        };
    }
    // The local time once per zone, so a person can see why it is outside.
    let mut seen: Vec<&str> = Vec::new();
    let mut local: Vec<String> = Vec::new();
    for w in windows {
        if !seen.contains(&w.zone_name()) {
            seen.push(w.zone_name());
            local.push(w.local_now(facts.now));
        }
    }
    Check {
        rule: RULE,
        passed: false,
        detail: format!(
            "approved at {}, outside the hours this elevation may be granted ({allowed}); approve \
             it again within those hours",
            short_list(&local)
        ),
    }
}

/// What a live-grant limit counts for.
enum Holder<'a> {
    Subject(&'a str),
    Target(&'a str),
}

fn check_live(rule: &'static str, holder: Holder<'_>, count: Option<u64>, max: u32) -> Check {
    let grants = |n: u64| {
        if n == 1 {
            "1 live grant".to_owned()
        } else {
            format!("{n} live grants")
        }
    };
    let (who, holds, what) = match holder {
        Holder::Subject(s) => (s, "holds", "one subject"),
        Holder::Target(t) => (t, "has", "one target"),
    };
    let Some(count) = count else {
        return Check {
            rule,
            passed: false,
            detail: format!(
                "the live grants of {who} could not be counted, so the limit of {} for {what} could not be checked",
                grants(u64::from(max))
            ),
        };
    };
    if count >= u64::from(max) {
        Check {
            rule,
            passed: false,
            detail: format!(
                "{who} already {holds} {}, and this elevation allows at most {} for {what} at a \
                 time; ask again when one has ended",
                grants(count),
                grants(u64::from(max))
            ),
        }
    } else {
        Check {
            rule,
            passed: true,
            detail: format!(
                "{who} {holds} {} (at most {} at a time)",
                grants(count),
                grants(u64::from(max))
            ),
        }
    }
}

/// Refuses while a grant of the same subject or on the same target could not be revoked: not
/// configurable, because handing out a privilege again while the last one may still be in
/// place is never what an administrator wants.
fn check_unresolved_revoke(blocking: Option<&UnresolvedRevoke>, input: &PolicyInput) -> Check {
    const RULE: &str = "unresolved_revoke";
    match blocking {
        Some(b) => Check {
            rule: RULE,
            passed: false,
            detail: format!(
                "grant {} (ticket {}) for {} on {} could not be revoked yet (revoke_failed); no \
                 new grant for this subject or target until it is revoked",
                b.grant, b.ticket_key, b.subject, b.target
            ),
        },
        None => Check {
            rule: RULE,
            passed: true,
            detail: format!(
                "no grant for {} or on {} is waiting for a failed revoke",
                input.subject.trim(),
                input.target.trim()
            ),
        },
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod scope_tests;
