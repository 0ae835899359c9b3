//! Mappings: the administrator's files in `mappings/` that decide which tickets are elevation
//! requests (`when`, a CEL condition), how ticket fields become a grant (`grant`, minijinja
//! templates capped by `max_duration`), which ticket changes approve, deny or end it (`on`),
//! what policy applies (`policy`) and what is written back (`writeback`).
//!
//! Pure: no I/O, no environment, no clock. Files arrive as text ([`MappingSet::from_files`]);
//! every expression and template is compiled at load, so a running daemon never meets a syntax
//! error. At runtime a bad ticket gives a [`MappingError`] naming the field, never a panic and
//! never a grant built from an empty or missing value.

pub(crate) mod condition;
mod context;
mod lint;
mod load;
mod raw;
mod template;

use std::collections::HashMap;
use std::sync::Arc;

use jiff::SignedDuration;
use serde::Serialize;

use crate::grants::GrantState;
use crate::policy::auto::AutoApprove;
use crate::policy::{Facts, Policy, PolicyInput, Verdict};
use crate::ticket::{EventKind, TicketEvent};

use context::condition_context;
pub use context::{stored_context, template_context, writeback_context};
pub use lint::{Lints, lint};

use condition::{CelVariables, Condition, ConditionFailure};

/// The names of the things mapping files may refer to, so that a typo in `connector` or
/// `provider` is a load-time problem instead of a grant that can never be applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    /// Connector ids (`id` of each connector file).
    pub connectors: Vec<String>,
    /// Provider names (`[providers.<name>]`).
    pub providers: Vec<String>,
    /// The scope allow-list (`[scopes]` of `jitbridge.toml`); empty: only built-in scopes.
    pub scopes: Arc<crate::policy::scope::ScopeCatalog>,
    /// The identity map (`[identity] map`); empty: people compared by ITSM ids and e-mails.
    pub identities: Arc<crate::identity::IdentityMap>,
}

/// Grant states a `[mapping.writeback]` table may name: the states a person reading the ticket
/// cares about (the transient `expiring` / `revoking` are not written back).
pub const WRITEBACK_STATES: [GrantState; 9] = [
    GrantState::Requested,
    GrantState::Approved,
    GrantState::Active,
    GrantState::Expired,
    GrantState::Revoked,
    GrantState::Denied,
    GrantState::Failed,
    GrantState::Cancelled,
    GrantState::RevokeFailed,
];

/// Writebacks for moments that are not a state change: each is a comment, with a default text
/// that `[mapping.writeback] <note> = { comment = "..." }` overrides (an empty text turns it off).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Note {
    /// The grant was approved by the mapping's `[mapping.auto_approve]`, not by a person.
    AutoApproved,
    /// A second approval moved an active grant's deadline.
    Renewed,
}

/// Every [`Note`], for loading and tests.
pub const NOTES: [Note; 2] = [Note::AutoApproved, Note::Renewed];

impl Note {
    /// The key under `[mapping.writeback]`.
    pub fn as_str(self) -> &'static str {
        match self {
            Note::AutoApproved => "auto_approved",
            Note::Renewed => "renewed",
        }
    }

    /// The comment written when the mapping does not set one. Sees the writeback names plus
    /// `auto_approve` {mapping, condition, max_duration} or `renewal` {approver, capped}.
    pub fn default_comment(self) -> &'static str {
        match self {
            Note::AutoApproved => {
                "Auto-approved by jitbridge: mapping {{ auto_approve.mapping }} marks this request \
                 low-risk (condition: {{ auto_approve.condition }}). {{ grant.scope }} for \
                 {{ grant.subject }} on {{ grant.target }} until {{ grant.expires_at }}; no \
                 person approved it."
            }
            Note::Renewed => {
                "Elevation renewed by {{ renewal.approver }}: {{ grant.scope }} for \
                 {{ grant.subject }} on {{ grant.target }} now ends at {{ grant.expires_at }}\
                 {% if renewal.capped %} (capped: at most {{ renewal.max_duration }} from the \
                 first approval){% endif %}."
            }
        }
    }
}

/// Longest rendered subject, target, scope or status name: these are identifiers, and anything
/// longer is a template rendering the wrong thing.
pub const MAX_IDENTIFIER_CHARS: usize = 256;

/// Longest writeback comment; longer texts are cut (ITSM comment fields have limits too).
pub const MAX_COMMENT_CHARS: usize = 30_000;

/// What went wrong applying a mapping to one ticket. Carries the mapping's name and the field,
/// so `jitbridge explain` and ticket comments can say exactly what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// The `when` expression raised an error (e.g. a field the ticket does not have).
    #[error("mapping {mapping:?}: `when` could not be evaluated: {message}")]
    Condition {
        /// Mapping name.
        mapping: String,
        /// CEL's message.
        message: String,
    },
    /// The `when` expression produced something other than true or false.
    #[error("mapping {mapping:?}: `when` must give true or false, but gave a {got}")]
    NotBool {
        /// Mapping name.
        mapping: String,
        /// The CEL type it produced.
        got: String,
    },
    /// A template failed to render (undefined name, null value, ...).
    #[error("mapping {mapping:?}: {field} could not be rendered: {message}")]
    Render {
        /// Mapping name.
        mapping: String,
        /// Which template (`grant.target`, `writeback.active.comment`).
        field: String,
        /// minijinja's message.
        message: String,
    },
    /// A grant field rendered to nothing but whitespace.
    #[error("mapping {mapping:?}: {field} is empty for this ticket")]
    Empty {
        /// Mapping name.
        mapping: String,
        /// Which grant field.
        field: String,
    },
    /// A rendered identifier is suspiciously long or contains control characters.
    #[error("mapping {mapping:?}: {field} is not a usable value: {why}")]
    Invalid {
        /// Mapping name.
        mapping: String,
        /// Which field.
        field: String,
        /// What is wrong with it.
        why: String,
    },
    /// The rendered duration is not a positive duration.
    #[error("mapping {mapping:?}: grant.duration rendered {text:?}, which is not usable: {why}")]
    Duration {
        /// Mapping name.
        mapping: String,
        /// The rendered text (cut to a sensible length).
        text: String,
        /// Why it was rejected.
        why: String,
    },
}

/// Which `[mapping.on]` rule an event fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The ticket was approved: check policy, then grant.
    Approve,
    /// The ticket was declined: deny the pending grant.
    Deny,
    /// The ticket ended (done, cancelled): end the grant.
    Revoke,
}

/// The grant a mapping renders from one ticket: what the engine records and, after policy,
/// applies. `duration` is never longer than the mapping's `max_duration`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantSpec {
    /// Who receives the privilege (trimmed, non-empty).
    pub subject: String,
    /// Where (trimmed, non-empty).
    pub target: String,
    /// What (trimmed, non-empty).
    pub scope: String,
    /// The duration to grant: `requested`, capped at `max_duration`.
    pub duration: SignedDuration,
    /// The duration the ticket asked for.
    pub requested: SignedDuration,
    /// True when `requested` was longer than `max_duration` and was cut.
    pub capped: bool,
    /// The elevation provider's name.
    pub provider: String,
}

/// The texts of one writeback. Either may be absent; both absent is never returned (the
/// mapping then has no writeback for that state and [`Mapping::render_writeback`] gives `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WritebackTexts {
    /// A comment to add to the ticket.
    pub comment: Option<String>,
    /// The status to move the ticket to.
    pub status: Option<String>,
}

/// What one mapping made of one event: for `jitbridge explain` (why a mapping did or did not
/// match) and for the engine (which mapping fires which rule with which grant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evaluation {
    /// Mapping name.
    pub mapping: String,
    /// The value of `when`, or why it could not be evaluated (which counts as no match).
    pub matched: Result<bool, String>,
    /// The `on` rule the event fires; only computed when `matched` is `Ok(true)`.
    pub trigger: Option<Trigger>,
    /// The rendered grant; only computed when `matched` is `Ok(true)`.
    pub grant: Option<Result<GrantSpec, String>>,
}

/// One `{ status = [...], event = [...] }` rule. Statuses are kept lower-cased: ITSM status
/// names are compared case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Rule {
    statuses: Vec<String>,
    events: Vec<EventKind>,
}

impl Rule {
    fn fires(&self, event: &TicketEvent) -> bool {
        let by_status = event
            .status_change
            .as_ref()
            .is_some_and(|c| self.has_status(&c.to));
        by_status || self.events.contains(&event.kind)
    }

    fn has_status(&self, status: &str) -> bool {
        let status = status.trim().to_lowercase();
        self.statuses.contains(&status)
    }
}

/// The `on` rules of a mapping.
#[derive(Debug, Clone, Default)]
struct OnRules {
    approve: Rule,
    deny: Rule,
    revoke: Rule,
}

/// Which writeback templates exist for a state.
#[derive(Debug, Clone, Copy, Default)]
struct WritebackRule {
    comment: bool,
    status: bool,
}

/// One loaded, compiled mapping.
pub struct Mapping {
    name: String,
    connector: String,
    description: Option<String>,
    condition: Condition,
    templates: minijinja::Environment<'static>,
    max_duration: SignedDuration,
    provider: String,
    on: OnRules,
    policy: Policy,
    writeback: HashMap<GrantState, WritebackRule>,
    auto_approve: Option<AutoApprove>,
    revoke_on_withdrawn_approval: bool,
    revoke_on_reassign: bool,
    identities: Arc<crate::identity::IdentityMap>,
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("name", &self.name)
            .field("connector", &self.connector)
            .field("condition", &self.condition)
            .field("max_duration", &self.max_duration)
            .field("provider", &self.provider)
            .field("on", &self.on)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

const T_SUBJECT: &str = "grant.subject";
const T_TARGET: &str = "grant.target";
const T_SCOPE: &str = "grant.scope";
const T_DURATION: &str = "grant.duration";

fn note_template(note: Note) -> String {
    format!("writeback.{}.comment", note.as_str())
}

fn writeback_template(state: GrantState, part: &str) -> String {
    format!("writeback.{}.{part}", state.as_str())
}

/// Cuts `text` to at most `max` characters, on a character boundary.
fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

impl Mapping {
    /// The unique name: stored on every grant it produces.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The connector whose events this mapping considers.
    pub fn connector(&self) -> &str {
        &self.connector
    }

    /// The administrator's description, if any (shown by `jitbridge explain`).
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The compiled policy the engine checks before granting.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The longest grant this mapping produces.
    pub fn max_duration(&self) -> SignedDuration {
        self.max_duration
    }

    /// The elevation provider's name.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The `when` expression as written, so `jitbridge explain` can show what it evaluated.
    pub fn when_source(&self) -> &str {
        self.condition.source()
    }

    /// Evaluates `when` against the event. A CEL error or a non-boolean result is an error the
    /// caller treats as "no match".
    pub fn matches(&self, event: &TicketEvent) -> Result<bool, MappingError> {
        let context = self.context(event);
        self.matches_with(&CelVariables::new(&context))
    }

    fn matches_with(&self, vars: &CelVariables<'_>) -> Result<bool, MappingError> {
        self.condition.evaluate(vars).map_err(|f| match f {
            ConditionFailure::Runtime(message) => MappingError::Condition {
                mapping: self.name.clone(),
                message,
            },
            ConditionFailure::NotBool(got) => MappingError::NotBool {
                mapping: self.name.clone(),
                got,
            },
        })
    }

    /// Which `on` rule this event fires: a status rule fires when the event carries a status
    /// change (`status_change.to`) into a listed status; an event rule when `event.kind` is
    /// listed. Should an event fire several rules, the most conservative wins: revoke, then
    /// deny, then approve.
    ///
    /// A reopen never approves: an event of kind `reopened`, or a status change out of a status
    /// that ends or refuses a grant, fires no approve rule even when its new status is listed.
    pub fn trigger(&self, event: &TicketEvent) -> Option<Trigger> {
        if self.on.revoke.fires(event) {
            Some(Trigger::Revoke)
        } else if self.on.deny.fires(event) {
            Some(Trigger::Deny)
        } else if self.is_reopen(event) {
            None
        } else if self.on.approve.fires(event) {
            Some(Trigger::Approve)
        } else {
            None
        }
    }

    /// True when `event` reopens the ticket: its kind is `reopened`, or it moves the ticket out
    /// of a status that ends (`on.revoke`) or refuses (`on.deny`) a grant.
    pub fn is_reopen(&self, event: &TicketEvent) -> bool {
        event.kind == EventKind::Reopened
            || event
                .status_change
                .as_ref()
                .and_then(|c| c.from.as_deref())
                .is_some_and(|from| self.ends_or_denies_status(from))
    }

    /// `[mapping.auto_approve]`, when enabled.
    pub fn auto_approve(&self) -> Option<&AutoApprove> {
        self.auto_approve.as_ref()
    }

    /// Whether a live grant ends when the ITSM reports its approval is no longer approved
    /// (`[mapping.on] revoke_on_withdrawn_approval`, default true).
    pub fn revokes_on_withdrawn_approval(&self) -> bool {
        self.revoke_on_withdrawn_approval
    }

    /// Whether a live grant ends when the ticket, re-rendered, names a different subject (the
    /// ticket was reassigned): `[mapping.on] revoke_on_reassign`, default false.
    pub fn revokes_on_reassign(&self) -> bool {
        self.revoke_on_reassign
    }

    /// The comment for `note` (the mapping's text or the default), rendered with `ctx`;
    /// `Ok(None)` when it renders empty (the administrator turned it off).
    pub fn render_note(
        &self,
        note: Note,
        ctx: &serde_json::Value,
    ) -> Result<Option<String>, MappingError> {
        let text = self.render(&note_template(note), &minijinja::Value::from_serialize(ctx))?;
        Ok(Some(cut(text.trim(), MAX_COMMENT_CHARS)).filter(|t| !t.is_empty()))
    }

    /// Is `status` one of the approve statuses (case-insensitive)? The engine re-checks the
    /// status the ITSM's API confirmed. False for every status when the approve rule lists
    /// only events; [`Mapping::approves_by_status`] tells these cases apart.
    pub fn approves_status(&self, status: &str) -> bool {
        self.on.approve.has_status(status)
    }

    /// True when the approve rule lists at least one status.
    pub fn approves_by_status(&self) -> bool {
        !self.on.approve.statuses.is_empty()
    }

    /// Is `status` one that ends a grant (`on.revoke`) or refuses it (`on.deny`)? An approval
    /// confirmed while the ticket is already in such a status must never grant.
    pub fn ends_or_denies_status(&self, status: &str) -> bool {
        self.on.revoke.has_status(status) || self.on.deny.has_status(status)
    }

    /// Runs this mapping's policy for an approval of `event`, including its `condition`, which
    /// sees the same names as `when`, but without [`Facts`]: a dry run, in which `hours` and
    /// `max_active_per_*` cannot pass. The engine uses [`Mapping::check_policy_at`].
    pub fn check_policy(&self, event: &TicketEvent, input: &PolicyInput<'_>) -> Verdict {
        crate::policy::check_in_context(&self.policy, input, Some(&self.context(event)))
    }

    /// Runs this mapping's whole policy for an approval of `event` with the [`Facts`] of the
    /// moment (the clock's "now", live-grant counts, where the approvers came from). This is
    /// the call the engine makes before any grant.
    pub fn check_policy_at(
        &self,
        event: &TicketEvent,
        input: &PolicyInput<'_>,
        facts: &Facts,
    ) -> Verdict {
        crate::policy::check_at(&self.policy, input, facts, Some(&self.context(event)))
    }

    /// The rules that can already be judged when the ticket is raised (see
    /// [`crate::policy::check_before_approval`]): what would block this request now.
    pub fn check_before_approval(
        &self,
        event: &TicketEvent,
        input: &PolicyInput<'_>,
        facts: &Facts,
    ) -> Verdict {
        crate::policy::check_before_approval(&self.policy, input, facts, Some(&self.context(event)))
    }

    /// The event's template context with each person's directory `subject` from the identity
    /// map (`null` when unmapped).
    pub fn context(&self, event: &TicketEvent) -> serde_json::Value {
        let mut context = template_context(event);
        self.identities.annotate(&self.connector, &mut context);
        context
    }

    /// Adds the identity map's `subject` to each person of a context built elsewhere (the
    /// context stored with a grant).
    pub fn annotate(&self, context: &mut serde_json::Value) {
        self.identities.annotate(&self.connector, context);
    }

    /// True when the mapping writes something back when a grant enters `state`.
    pub fn writes_back(&self, state: GrantState) -> bool {
        self.writeback.contains_key(&state)
    }

    /// Renders the grant for this event. Subject, target and scope must be non-empty after
    /// trimming; the duration must parse and be positive, and is capped at `max_duration`.
    pub fn render_grant(&self, event: &TicketEvent) -> Result<GrantSpec, MappingError> {
        self.render_grant_with(&self.context(event))
    }

    fn render_grant_with(&self, context: &serde_json::Value) -> Result<GrantSpec, MappingError> {
        let ctx = minijinja::Value::from_serialize(context);
        let subject = self.render_identifier(T_SUBJECT, &ctx)?;
        let target = self.render_identifier(T_TARGET, &ctx)?;
        let scope = self.render_identifier(T_SCOPE, &ctx)?;
        let text = self.render(T_DURATION, &ctx)?;
        let duration_error = |why: String| MappingError::Duration {
            mapping: self.name.clone(),
            text: cut(text.trim(), 64),
            why,
        };
        let requested = crate::config::parse_duration(&text).map_err(&duration_error)?;
        if requested.is_zero() || requested.is_negative() {
            return Err(duration_error(
                "a grant must last longer than zero".to_owned(),
            ));
        }
        let capped = requested > self.max_duration;
        Ok(GrantSpec {
            subject,
            target,
            scope,
            duration: if capped { self.max_duration } else { requested },
            requested,
            capped,
            provider: self.provider.clone(),
        })
    }

    /// Renders the writeback texts for a grant that reached `state`. `ctx` is what
    /// [`writeback_context`] builds: the stored template context plus `grant` and `reason`.
    /// `Ok(None)` when this mapping writes nothing back for `state`.
    pub fn render_writeback(
        &self,
        state: GrantState,
        ctx: &serde_json::Value,
    ) -> Result<Option<WritebackTexts>, MappingError> {
        let Some(rule) = self.writeback.get(&state).copied() else {
            return Ok(None);
        };
        let ctx = minijinja::Value::from_serialize(ctx);
        let comment = if rule.comment {
            let text = self.render(&writeback_template(state, "comment"), &ctx)?;
            Some(cut(text.trim(), MAX_COMMENT_CHARS)).filter(|t| !t.is_empty())
        } else {
            None
        };
        let status = if rule.status {
            let name = writeback_template(state, "status");
            let text = self.render(&name, &ctx)?;
            let text = text.trim();
            if text.is_empty() {
                None
            } else {
                self.check_identifier(&name, text)?;
                Some(text.to_owned())
            }
        } else {
            None
        };
        if comment.is_none() && status.is_none() {
            return Ok(None);
        }
        Ok(Some(WritebackTexts { comment, status }))
    }

    /// [`Mapping::render_writeback`] for a request that has a summary comment: the summary is
    /// offered to templates as `{{ summary }}`, and is itself the comment when the mapping sets
    /// no writeback for `state` (an explicit empty one stays silent). The engine and `explain`
    /// both call this, so a dry run shows the comment the daemon would write.
    pub fn render_writeback_with_summary(
        &self,
        state: GrantState,
        ctx: &serde_json::Value,
        summary: Option<&str>,
    ) -> Result<Option<WritebackTexts>, MappingError> {
        let mut ctx = ctx.clone();
        if let (Some(obj), Some(s)) = (ctx.as_object_mut(), summary) {
            obj.insert("summary".into(), serde_json::json!(s));
        }
        Ok(match self.render_writeback(state, &ctx)? {
            Some(t) => Some(t),
            None => summary
                .filter(|_| !self.writes_back(state))
                .map(|s| WritebackTexts {
                    comment: Some(s.to_owned()),
                    status: None,
                }),
        })
    }

    /// The summary comment for a new request of `spec` (see [`crate::policy::summary`]):
    /// `before_approval` is [`Mapping::check_before_approval`]'s verdict, whose failing checks
    /// are what would block the request now.
    pub fn request_summary(&self, spec: &GrantSpec, before_approval: &Verdict) -> String {
        let scope = self.policy.resolve_scope(&spec.scope).ok();
        crate::policy::summary::summary_text(&crate::policy::summary::Summary {
            subject: &spec.subject,
            target: &spec.target,
            scope: scope.as_ref().ok_or(spec.scope.as_str()),
            duration: spec.duration,
            asked: spec.capped.then_some(spec.requested),
            approvers: self.policy.who_may_approve(),
            approvals_needed: self.policy.approvals_needed(),
            blockers: before_approval
                .checks
                .iter()
                .filter(|c| !c.passed)
                .collect(),
        })
    }

    fn render(&self, template: &str, ctx: &minijinja::Value) -> Result<String, MappingError> {
        let render_error = |e: minijinja::Error| MappingError::Render {
            mapping: self.name.clone(),
            field: template.to_owned(),
            message: template::describe(&e),
        };
        self.templates
            .get_template(template)
            .and_then(|t| t.render(ctx))
            .map_err(render_error)
    }

    fn render_identifier(
        &self,
        field: &str,
        ctx: &minijinja::Value,
    ) -> Result<String, MappingError> {
        let text = self.render(field, ctx)?;
        let text = text.trim();
        if text.is_empty() {
            return Err(MappingError::Empty {
                mapping: self.name.clone(),
                field: field.to_owned(),
            });
        }
        self.check_identifier(field, text)?;
        Ok(text.to_owned())
    }

    fn check_identifier(&self, field: &str, text: &str) -> Result<(), MappingError> {
        let invalid = |why: String| MappingError::Invalid {
            mapping: self.name.clone(),
            field: field.to_owned(),
            why,
        };
        let len = text.chars().count();
        if len > MAX_IDENTIFIER_CHARS {
            return Err(invalid(format!(
                "{len} characters, more than the {MAX_IDENTIFIER_CHARS} allowed"
            )));
        }
        if text.chars().any(char::is_control) {
            return Err(invalid(
                "it contains a control character (a line break or similar)".to_owned(),
            ));
        }
        Ok(())
    }
}

/// All loaded mappings, in file order. Cheap to clone: the mappings are shared.
#[derive(Debug, Clone, Default)]
pub struct MappingSet {
    mappings: Arc<Vec<Mapping>>,
}

impl MappingSet {
    /// Loads and validates mapping files given as (path, text). Reports every problem in every
    /// file — file, line (from TOML spans where available), key, and why with a hint — so
    /// `jitbridge check` can list them all at once.
    pub fn from_files(
        files: &[(std::path::PathBuf, String)],
        known: &Known,
    ) -> Result<MappingSet, Vec<crate::config::Problem>> {
        load::load(files, known).map(|mappings| MappingSet {
            mappings: Arc::new(mappings),
        })
    }

    /// The mappings of one connector, in file order.
    pub fn for_connector<'a>(&'a self, connector: &str) -> impl Iterator<Item = &'a Mapping> {
        self.mappings
            .iter()
            .filter(move |m| m.connector == connector)
    }

    /// The mapping called `name` (grants store it, writebacks and revokes look it up).
    pub fn get(&self, name: &str) -> Option<&Mapping> {
        self.mappings.iter().find(|m| m.name == name)
    }

    /// Every mapping, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Mapping> {
        self.mappings.iter()
    }

    /// Number of mappings loaded.
    pub fn len(&self) -> usize {
        self.mappings.len()
    }

    /// True when no mapping is loaded (no ticket can ever produce a grant).
    pub fn is_empty(&self) -> bool {
        self.mappings.is_empty()
    }

    /// Every mapping of the event's connector considered, for `jitbridge explain` and for the
    /// engine. For each: whether `when` matched (or why it could not tell), and for a match the
    /// `on` rule fired and the rendered grant. The event's context is built once for all.
    pub fn evaluate(&self, event: &TicketEvent) -> Vec<Evaluation> {
        let first = self.for_connector(&event.connector).next();
        // Conditions read `fields` and `payload` straight from the event; the full context
        // (copies of both) is built only if a mapping matches and renders a grant.
        let mut names = condition_context(event);
        if let Some(m) = first {
            m.annotate(&mut names);
        }
        let vars = CelVariables::with_event_data(&names, &event.fields, &event.payload);
        let context = std::cell::OnceCell::new();
        let context = || {
            context.get_or_init(|| {
                let mut context = template_context(event);
                if let Some(m) = first {
                    m.annotate(&mut context);
                }
                context
            })
        };
        self.for_connector(&event.connector)
            .map(|m| {
                let matched = m.matches_with(&vars).map_err(|e| e.to_string());
                let (trigger, grant) = if matched == Ok(true) {
                    (
                        m.trigger(event),
                        Some(m.render_grant_with(context()).map_err(|e| e.to_string())),
                    )
                } else {
                    (None, None)
                };
                Evaluation {
                    mapping: m.name.clone(),
                    matched,
                    trigger,
                    grant,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod scope_tests;
