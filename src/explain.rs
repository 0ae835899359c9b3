//! `jitbridge explain`: a dry run of one delivery through the same parser, mappings and policy
//! the daemon uses. It shows the normalized events, every mapping considered (its `when`
//! expression and value, and why it did or did not match), for a match the trigger, the rendered
//! grant with its scope definition, each policy check, the decision and the writebacks that would
//! be made. A new request also shows the summary comment and how `[mapping.auto_approve]` judges
//! it; a reopen says it never approves; an approval says what it would do to an active grant
//! (a renewal), which a dry run, reading no store, cannot see.
//! Pure: nothing is read from an ITSM, written to the store, or sent to a provider; the instant
//! policy `hours` are evaluated at is given by the caller.

use jiff::Timestamp;
use serde::Serialize;
use serde_json::json;

use crate::connectors::{RawDelivery, Registered};
use crate::grants::GrantState;
use crate::mapping::{GrantSpec, Mapping, MappingSet, Note, Trigger, template_context};
use crate::policy::auto::without_approver_rules;
use crate::policy::{ApproverSource, Facts, PolicyInput, Verdict};
use crate::ticket::{Person, TicketEvent};

/// What a dry run assumes and cannot check; printed once with every explanation.
pub const ASSUMPTIONS: &str = "dry run: assumes the ITSM confirms the approvers named in the delivery (the daemon checks that first) and that no other grant is live for the subject or target";

/// The whole explanation of one delivery. Serialized as the `--json` output: field names and
/// order are a stable interface for tooling.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The connector the delivery was parsed by.
    pub connector: String,
    /// The instant policy checks (`hours`) were evaluated at.
    pub at: Timestamp,
    /// What the dry run assumes.
    pub assumptions: &'static str,
    /// One entry per normalized event of the delivery.
    pub events: Vec<EventExplanation>,
}

/// One normalized event and what each mapping would do with it.
#[derive(Debug, Clone, Serialize)]
pub struct EventExplanation {
    /// The event exactly as the engine would see it.
    pub event: TicketEvent,
    /// Every mapping of the connector, in file order.
    pub mappings: Vec<MappingExplanation>,
}

/// One mapping's view of one event.
#[derive(Debug, Clone, Serialize)]
pub struct MappingExplanation {
    /// The mapping's name.
    pub mapping: String,
    /// The `when` expression as written.
    pub when: String,
    /// Its value: `true`, `false` or `error`.
    pub when_value: &'static str,
    /// True when `when` is true for this event.
    pub matched: bool,
    /// Why it did not match (the `when` value or its error).
    pub why_not: Option<String>,
    /// The `[mapping.on]` rule the event fires (`approve`, `deny`, `revoke`), if any.
    pub trigger: Option<Trigger>,
    /// The grant the mapping renders, duration already capped.
    pub grant: Option<GrantView>,
    /// Each policy check, in evaluation order (only for an approval).
    pub policy: Vec<PolicyCheck>,
    /// What the daemon would do, in words.
    pub decision: String,
    /// The ITSM call the daemon makes before granting, which a dry run does not make.
    pub confirmation: Option<String>,
    /// For a new request: how the mapping's `[mapping.auto_approve]` judges it.
    pub auto_approve: Option<AutoApproveView>,
    /// For an approval: what it would do to a grant that is already active (a renewal), which a
    /// dry run cannot know about.
    pub renewal: Option<String>,
    /// The ticket writebacks the decision would queue.
    pub writebacks: Vec<serde_json::Value>,
}

/// How `[mapping.auto_approve]` judges a new request, step by step.
#[derive(Debug, Clone, Serialize)]
pub struct AutoApproveView {
    /// False when the mapping has no `[mapping.auto_approve]` or it is not `enabled`.
    pub enabled: bool,
    /// The condition as written.
    pub condition: Option<String>,
    /// Its value for this ticket: `true`, `false` or `error`.
    pub condition_value: Option<&'static str>,
    /// Whether `auto_approve.scopes` allow the rendered scope.
    pub scope_allowed: Option<bool>,
    /// The longest auto-approved grant.
    pub max_duration: Option<String>,
    /// The policy checks an auto-approval runs (every rule but the approver rules).
    pub policy: Vec<PolicyCheck>,
}

/// The rendered grant, as `explain` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct GrantView {
    pub subject: String,
    pub target: String,
    pub scope: String,
    pub provider: String,
    /// The duration that would be granted (`requested`, capped at `max_duration`).
    pub duration: String,
    /// What the ticket asked for.
    pub requested_duration: String,
    /// The mapping's cap.
    pub max_duration: String,
    /// True when the request was longer than the cap and was cut.
    pub capped_at_max_duration: bool,
    /// The scope's definition from the allow-list (path, hash, arguments), or why it has none.
    pub scope_definition: String,
}

/// One policy rule's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyCheck {
    pub rule: &'static str,
    pub passed: bool,
    /// The value compared and why it passed or failed.
    pub detail: String,
}

/// Explains `body` arriving on `connector`, evaluating time-dependent policy at `at`.
pub fn explain(
    connector: &Registered,
    mappings: &MappingSet,
    body: &[u8],
    at: Timestamp,
) -> Result<Explanation, String> {
    let events = connector
        .connector
        .parse(&RawDelivery {
            headers: Vec::new(),
            body: body.to_vec(),
        })
        .map_err(|e| e.to_string())?;
    let events = events
        .into_iter()
        .map(|event| explain_event(connector, mappings, event, at))
        .collect();
    Ok(Explanation {
        connector: connector.connector.id().to_owned(),
        at,
        assumptions: ASSUMPTIONS,
        events,
    })
}

fn explain_event(
    connector: &Registered,
    mappings: &MappingSet,
    event: TicketEvent,
    at: Timestamp,
) -> EventExplanation {
    let mut out = Vec::new();
    for ev in mappings.evaluate(&event) {
        let Some(mapping) = mappings.get(&ev.mapping) else {
            continue;
        };
        let (when_value, why_not) = match &ev.matched {
            Ok(true) => ("true", None),
            Ok(false) => ("false", Some("`when` is false for this ticket".to_owned())),
            // The error already names the mapping and says `when` could not be evaluated.
            Err(e) => ("error", Some(e.clone())),
        };
        let mut m = MappingExplanation {
            mapping: ev.mapping.clone(),
            when: mapping.when_source().to_owned(),
            when_value,
            matched: ev.matched == Ok(true),
            why_not,
            trigger: ev.trigger,
            grant: None,
            policy: Vec::new(),
            decision: "no match: nothing happens".into(),
            confirmation: None,
            auto_approve: None,
            renewal: None,
            writebacks: Vec::new(),
        };
        if m.matched {
            explain_match(connector, mapping, &event, ev.trigger, at, &mut m);
        }
        out.push(m);
    }
    EventExplanation {
        event,
        mappings: out,
    }
}

/// Fills in what a matching mapping would do: grant, policy, decision, writebacks.
fn explain_match(
    connector: &Registered,
    mapping: &Mapping,
    event: &TicketEvent,
    trigger: Option<Trigger>,
    at: Timestamp,
    m: &mut MappingExplanation,
) {
    let spec = match mapping.render_grant(event) {
        Ok(s) => s,
        Err(e) => {
            m.decision = format!("the grant cannot be described: {e}");
            return;
        }
    };
    m.grant = Some(grant_view(&spec, mapping));
    let (decision, state, reason) = match trigger {
        None if mapping.is_reopen(event) => {
            let status = event.ticket.status.clone().unwrap_or_default();
            m.decision = if mapping.approves_status(&status) {
                format!(
                    "reopen never approves: status {status} is an approve status, but this event \
                     reopens the ticket; a live grant is left as it is"
                )
            } else {
                "reopen: no rule fires; a live grant is left as it is".to_owned()
            };
            return;
        }
        None => return explain_request(mapping, event, spec, at, m),
        Some(Trigger::Approve) => {
            if connector.confirm_approvals {
                m.confirmation = Some(format!(
                    "would confirm the approval with the {} API before deciding (not performed in a dry run)",
                    connector.connector.id()
                ));
            }
            let verdict = policy_at(mapping, event, &spec, &approvers_of(event), at);
            m.policy = policy_checks(&verdict);
            if verdict.allowed() {
                m.renewal = Some(format!(
                    "if this ticket's grant is already active (a dry run reads no store), this \
                     approval renews it: the deadline becomes now + {:#}, never later than its \
                     first approval + max_duration {:#}",
                    spec.duration,
                    mapping.max_duration()
                ));
                (
                    format!(
                        "approve: the grant would be applied through provider {}",
                        spec.provider
                    ),
                    GrantState::Approved,
                    String::new(),
                )
            } else {
                let r = verdict
                    .refusal()
                    .unwrap_or_else(|| "refused by policy".into());
                (format!("deny: {r}"), GrantState::Denied, r)
            }
        }
        Some(Trigger::Deny) => (
            "deny: the approver declined".to_owned(),
            GrantState::Denied,
            "declined in the ticket".to_owned(),
        ),
        Some(Trigger::Revoke) => (
            "end: a live grant would be revoked now (or cancelled if not yet approved)".to_owned(),
            GrantState::Revoking,
            format!(
                "the ticket reached status {}",
                event.ticket.status.clone().unwrap_or_default()
            ),
        ),
    };
    m.decision = decision;
    push_writeback(
        m,
        mapping,
        state,
        &writeback_ctx(event, &spec, state, &reason),
        None,
    );
}

/// A new request (no rule fires, the ticket is not reopened): the summary comment the daemon
/// writes on `requested`, then the auto-approval's judgement and, when it approves, the
/// `approved` writebacks and the `auto_approved` note.
fn explain_request(
    mapping: &Mapping,
    event: &TicketEvent,
    mut spec: GrantSpec,
    at: Timestamp,
    m: &mut MappingExplanation,
) {
    let blockers = mapping.check_before_approval(event, &input(event, &spec, &[]), &facts(at));
    let summary = mapping.request_summary(&spec, &blockers);
    let ctx = writeback_ctx(event, &spec, GrantState::Requested, "");
    push_writeback(m, mapping, GrantState::Requested, &ctx, Some(&summary));
    let waiting = "request: a grant would be recorded as requested, waiting for approval";
    let Some(auto) = mapping.auto_approve() else {
        m.auto_approve = Some(AutoApproveView {
            enabled: false,
            condition: None,
            condition_value: None,
            scope_allowed: None,
            max_duration: None,
            policy: Vec::new(),
        });
        m.decision = waiting.to_owned();
        return;
    };
    let context = template_context(event);
    // As the engine does: the auto-approval's cap first, then policy on the capped grant.
    let decided = auto.decide(&context, &spec.scope, spec.duration);
    if let Ok(g) = &decided {
        spec.duration = g.duration;
    }
    let verdict = without_approver_rules(policy_at(mapping, event, &spec, &[], at));
    m.auto_approve = Some(AutoApproveView {
        enabled: true,
        condition: Some(auto.condition_source().to_owned()),
        condition_value: Some(match auto.evaluate_condition(&context) {
            Ok(true) => "true",
            Ok(false) => "false",
            Err(_) => "error",
        }),
        scope_allowed: Some(auto.allows_scope(&spec.scope)),
        max_duration: Some(format!("{:#}", auto.max_duration())),
        policy: policy_checks(&verdict),
    });
    let granted = match decided {
        Err(why) => Err(why),
        Ok(_) if !verdict.allowed() => Err(verdict
            .refusal()
            .unwrap_or_else(|| "refused by policy".into())),
        Ok(g) => Ok(g),
    };
    let g = match granted {
        Ok(g) => g,
        Err(why) => {
            m.decision = format!("request: waits for a person because {why}");
            return;
        }
    };
    m.decision = format!(
        "auto-approve: mapping {} approves it at once, without a person, for {:#}{}; applied \
         through provider {}",
        mapping.name(),
        g.duration,
        if g.capped {
            format!(
                " (capped at auto_approve.max_duration {:#})",
                auto.max_duration()
            )
        } else {
            String::new()
        },
        spec.provider
    );
    let mut ctx = writeback_ctx(event, &spec, GrantState::Approved, "");
    push_writeback(m, mapping, GrantState::Approved, &ctx, None);
    if let Some(obj) = ctx.as_object_mut() {
        obj.insert(
            "auto_approve".into(),
            json!({"mapping": mapping.name(), "condition": auto.condition_source(),
                   "max_duration": format!("{:#}", auto.max_duration())}),
        );
    }
    match mapping.render_note(Note::AutoApproved, &ctx) {
        Ok(Some(c)) => m
            .writebacks
            .push(json!({"comment": c, "note": Note::AutoApproved.as_str()})),
        Ok(None) => {}
        Err(e) => m.writebacks.push(json!({"error": e.to_string()})),
    }
}

/// The names writeback templates see for a grant of `spec` entering `state`.
fn writeback_ctx(
    event: &TicketEvent,
    spec: &GrantSpec,
    state: GrantState,
    reason: &str,
) -> serde_json::Value {
    let mut ctx = template_context(event);
    if let Some(obj) = ctx.as_object_mut() {
        obj.insert(
            "grant".into(),
            json!({
                "id": "(assigned when stored)", "subject": spec.subject, "target": spec.target,
                "scope": spec.scope, "provider": spec.provider,
                "duration": format!("{:#}", spec.duration), "state": state.as_str(),
                "starts_at": "(when applied)", "expires_at": "(start + duration)",
            }),
        );
        obj.insert("reason".into(), json!(reason));
    }
    ctx
}

/// Adds the writebacks `mapping` makes when a grant enters `state` (with the request's summary).
fn push_writeback(
    m: &mut MappingExplanation,
    mapping: &Mapping,
    state: GrantState,
    ctx: &serde_json::Value,
    summary: Option<&str>,
) {
    match mapping.render_writeback_with_summary(state, ctx, summary) {
        Ok(Some(t)) => {
            if let Some(c) = t.comment {
                m.writebacks.push(json!({"comment": c}));
            }
            if let Some(s) = t.status {
                m.writebacks.push(json!({"status": s}));
            }
        }
        Ok(None) => {}
        Err(e) => m.writebacks.push(json!({"error": e.to_string()})),
    }
}

fn policy_checks(verdict: &Verdict) -> Vec<PolicyCheck> {
    verdict
        .checks
        .iter()
        .map(|c| PolicyCheck {
            rule: c.rule,
            passed: c.passed,
            detail: c.detail.clone(),
        })
        .collect()
}

fn grant_view(spec: &GrantSpec, mapping: &Mapping) -> GrantView {
    GrantView {
        subject: spec.subject.clone(),
        target: spec.target.clone(),
        scope: spec.scope.clone(),
        provider: spec.provider.clone(),
        duration: format!("{:#}", spec.duration),
        requested_duration: format!("{:#}", spec.requested),
        max_duration: format!("{:#}", mapping.max_duration()),
        capped_at_max_duration: spec.capped,
        scope_definition: match mapping.policy().resolve_scope(&spec.scope) {
            Ok(def) => def.describe(),
            Err(why) => format!("not defined: {why}"),
        },
    }
}

/// The delivery's actor, taken as the approver (the daemon asks the ITSM; see [`ASSUMPTIONS`]).
fn approvers_of(event: &TicketEvent) -> Vec<Person> {
    event.actor.iter().cloned().collect()
}

fn input<'a>(
    event: &'a TicketEvent,
    spec: &'a GrantSpec,
    approvers: &'a [Person],
) -> PolicyInput<'a> {
    PolicyInput {
        requester: event.requester.as_ref(),
        approvers,
        subject: &spec.subject,
        target: &spec.target,
        scope: &spec.scope,
        duration: spec.duration,
    }
}

fn facts(at: Timestamp) -> Facts {
    Facts {
        now: at,
        // A dry run reads no store: limits are shown as if no other grant were live.
        live_for_subject: Some(0),
        live_for_target: Some(0),
        approvers_from: ApproverSource::Confirmed,
        // Nor can it see a failed revoke: the rule is shown as passing.
        unresolved_revoke: None,
    }
}

/// The policy verdict the engine would reach at `at` with these approvers.
fn policy_at(
    mapping: &Mapping,
    event: &TicketEvent,
    spec: &GrantSpec,
    approvers: &[Person],
    at: Timestamp,
) -> Verdict {
    mapping.check_policy_at(event, &input(event, spec, approvers), &facts(at))
}

/// A human-readable rendering of an explanation.
pub fn render_text(x: &Explanation) -> String {
    let mut s = format!(
        "connector {} at {}\n({})\n",
        x.connector, x.at, x.assumptions
    );
    if x.events.is_empty() {
        s.push_str("the payload holds no ticket event this connector acts on\n");
    }
    for e in &x.events {
        let ev = &e.event;
        s.push_str(&format!(
            "\nevent: {} {} (status {:?}, type {:?}) by {} at {}\n",
            ev.kind.as_str(),
            ev.ticket.key,
            ev.ticket.status.clone().unwrap_or_default(),
            ev.ticket.kind.clone().unwrap_or_default(),
            ev.actor
                .as_ref()
                .and_then(|a| a.email.clone().or_else(|| a.id.clone()))
                .unwrap_or_else(|| "(nobody)".into()),
            ev.occurred_at
        ));
        if e.mappings.is_empty() {
            s.push_str("  no mapping is configured for this connector\n");
        }
        for m in &e.mappings {
            render_mapping(&mut s, m);
        }
    }
    s
}

fn render_mapping(s: &mut String, m: &MappingExplanation) {
    s.push_str(&format!(
        "  mapping {}: {}\n    when: {} => {}\n",
        m.mapping,
        if m.matched {
            "matches"
        } else {
            "does not match"
        },
        m.when,
        m.when_value
    ));
    if let Some(w) = &m.why_not {
        s.push_str(&format!("    why: {w}\n"));
    }
    if m.matched {
        let trigger = match m.trigger {
            Some(Trigger::Approve) => "approve",
            Some(Trigger::Deny) => "deny",
            Some(Trigger::Revoke) => "revoke",
            None => "none (no [mapping.on] rule fires)",
        };
        s.push_str(&format!("    trigger: {trigger}\n"));
    }
    if let Some(g) = &m.grant {
        s.push_str(&format!(
            "    grant: subject {} | target {} | scope {} | provider {} | duration {}{}\n",
            g.subject,
            g.target,
            g.scope,
            g.provider,
            g.duration,
            if g.capped_at_max_duration {
                format!(
                    " (asked {}, capped at max_duration {})",
                    g.requested_duration, g.max_duration
                )
            } else {
                String::new()
            }
        ));
    }
    if let Some(g) = &m.grant {
        s.push_str(&format!("    scope definition: {}\n", g.scope_definition));
    }
    if let Some(c) = &m.confirmation {
        s.push_str(&format!("    confirmation: {c}\n"));
    }
    for p in &m.policy {
        s.push_str(&format!(
            "    policy {} {}: {}\n",
            if p.passed { "PASS" } else { "FAIL" },
            p.rule,
            p.detail
        ));
    }
    if let Some(a) = &m.auto_approve {
        render_auto(s, a);
    }
    s.push_str(&format!("    decision: {}\n", m.decision));
    if let Some(r) = &m.renewal {
        s.push_str(&format!("    renewal: {r}\n"));
    }
    for w in &m.writebacks {
        s.push_str(&format!("    writeback: {w}\n"));
    }
}

fn render_auto(s: &mut String, a: &AutoApproveView) {
    if !a.enabled {
        s.push_str("    auto-approve: not enabled for this mapping\n");
        return;
    }
    s.push_str(&format!(
        "    auto-approve: enabled | condition {} => {} | scope allowed by auto_approve.scopes: {} | max_duration {}\n",
        a.condition.as_deref().unwrap_or_default(),
        a.condition_value.unwrap_or_default(),
        if a.scope_allowed == Some(true) { "yes" } else { "no" },
        a.max_duration.as_deref().unwrap_or_default()
    ));
    for p in &a.policy {
        s.push_str(&format!(
            "    auto-approve policy {} {}: {}\n",
            if p.passed { "PASS" } else { "FAIL" },
            p.rule,
            p.detail
        ));
    }
}
