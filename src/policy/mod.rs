//! Policy: the checks every grant must pass after an approval and before any privilege is
//! applied — the approver is someone other than the requester and the subject, the requester
//! and the target are ones this mapping serves, the duration is sane. Pure: no I/O, no clock;
//! the engine calls [`check`] and writes a refusal's [`Verdict::refusal`] back to the ticket.
//!
//! The rules come from a mapping's `[mapping.policy]` table ([`PolicyConfig`]), compiled once at
//! load into a [`Policy`] so that a bad glob or condition is a configuration problem, never a
//! runtime surprise. A policy `condition` (CEL) needs the ticket's names: [`check_in_context`]
//! (or [`crate::mapping::Mapping::check_policy`]) evaluates it; [`check`] without a context
//! fails such a policy rather than skip a rule.

use std::sync::Arc;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use jiff::SignedDuration;
use serde::Deserialize;

use crate::mapping::condition::{CelVariables, Condition, ConditionFailure};
use crate::ticket::Person;

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
        }
    }
}

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
}

impl PolicyError {
    /// The key inside `[mapping.policy]` the error is about (`targets[1]`, `condition`).
    pub fn key(&self) -> String {
        match self {
            PolicyError::Glob { list, index, .. } => format!("{list}[{index}]"),
            PolicyError::Condition { .. } => "condition".to_owned(),
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
}

impl Policy {
    /// Compiles the globs and the condition of `config`; a bad glob is reported with its list
    /// and position.
    pub fn compile(config: &PolicyConfig) -> Result<Policy, PolicyError> {
        let condition = match &config.condition {
            None => None,
            Some(source) => Some(Arc::new(
                Condition::compile(source).map_err(|why| PolicyError::Condition { why })?,
            )),
        };
        Ok(Policy {
            distinct_approver: config.distinct_approver,
            requesters: GlobList::compile("requesters", &config.requesters)?,
            targets: GlobList::compile("targets", &config.targets)?,
            condition,
        })
    }

    /// True when the policy has a `condition`, which needs the ticket's names to evaluate.
    pub fn has_condition(&self) -> bool {
        self.condition.is_some()
    }

    /// Whether approvals must come from an identified person other than requester and subject.
    pub fn distinct_approver(&self) -> bool {
        self.distinct_approver
    }
}

impl Default for Policy {
    /// The policy of a mapping without a `[mapping.policy]` table: distinct approver, any
    /// requester, any target.
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
/// `condition` fails here: use [`check_in_context`] to give it the ticket's names.
pub fn check(policy: &Policy, input: &PolicyInput) -> Verdict {
    check_in_context(policy, input, None)
}

/// [`check`], with the ticket's template context (see [`crate::mapping::template_context`]) for
/// the policy's `condition`.
pub fn check_in_context(
    policy: &Policy,
    input: &PolicyInput,
    context: Option<&serde_json::Value>,
) -> Verdict {
    let mut checks = vec![
        check_distinct_approver(policy, input),
        check_requester(policy, input),
        check_target(policy, input),
        check_duration(input),
    ];
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
    if !policy.distinct_approver {
        return Check {
            rule: RULE,
            passed: true,
            detail: "not required by this mapping".to_owned(),
        };
    }
    let identified: Vec<&Person> = input
        .approvers
        .iter()
        .filter(|a| !a.is_anonymous())
        .collect();
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
        if approver.same_identity(requester) {
            return fail(format!(
                "approver {} is the requester; a request cannot be approved by the person who raised it",
                label(approver)
            ));
        }
        if is_subject(approver, input.subject) {
            return fail(format!(
                "approver {} would receive the privilege; nobody can approve their own elevation",
                label(approver)
            ));
        }
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

#[cfg(test)]
mod tests;
