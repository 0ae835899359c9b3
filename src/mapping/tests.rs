//! Mapping tests: the DESIGN.md example end to end, every load-time problem, runtime errors,
//! the null-aware `default`, triggers, writebacks, and properties of the duration cap.

use std::path::PathBuf;

use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::config::Problem;
use crate::grants::Grant;
use crate::ticket::{Approval, Person, StatusChange, Ticket, TicketEvent};

/// `mappings/helpdesk-local-admin.toml` exactly as DESIGN.md shows it.
const DESIGN_EXAMPLE: &str = r#"[[mapping]]
name = "helpdesk-local-admin"
connector = "jira"
when = 'ticket.type == "Elevation Request" && fields.customfield_10050.value == "Local admin"'   # CEL

[mapping.grant]
subject  = "{{ requester.email }}"
target   = "{{ fields.customfield_10060 }}"
scope    = "local-admin"
duration = "{{ fields.customfield_10070 | default('60m') }}"
max_duration = "4h"
provider = "endpoint-agent"

[mapping.on]                              # ticket changes that drive the grant
approve = { status = ["Approved"] }
deny    = { status = ["Declined"] }
revoke  = { status = ["Done", "Cancelled"] }

[mapping.policy]
distinct_approver = true
requesters = ["*@example.com"]
targets = ["WS-*", "LT-*"]

[mapping.writeback]
active  = { comment = "Local admin granted to {{ grant.subject }} on {{ grant.target }} until {{ grant.expires_at }}.", status = "In Progress" }
expired = { comment = "Local admin on {{ grant.target }} expired and was revoked.", status = "Resolved" }
revoked = { comment = "Local admin on {{ grant.target }} revoked: {{ reason }}." }
denied  = { comment = "Elevation refused: {{ reason }}." }
failed  = { comment = "Elevation could not be applied: {{ reason }}." }
"#;

fn known() -> Known {
    Known {
        connectors: vec!["jira".into(), "servicenow".into()],
        providers: vec!["endpoint-agent".into(), "script".into()],
        ..Default::default()
    }
}

fn load(files: &[(&str, &str)]) -> Result<MappingSet, Vec<Problem>> {
    let files: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.to_string()))
        .collect();
    MappingSet::from_files(&files, &known())
}

fn design_set() -> MappingSet {
    load(&[("mappings/helpdesk-local-admin.toml", DESIGN_EXAMPLE)]).unwrap()
}

fn problems(text: &str) -> Vec<Problem> {
    load(&[("mappings/x.toml", text)]).unwrap_err()
}

/// A mapping file with one knob replaced, for the problem tests.
fn one_mapping(replace: &str, with: &str) -> String {
    let text = DESIGN_EXAMPLE.replacen(replace, with, 1);
    assert_ne!(text, DESIGN_EXAMPLE, "test setup: {replace:?} not found");
    text
}

/// A Jira Service Management approval of an "Elevation Request", as the Jira connector
/// normalizes it: status moved to Approved, approved by Bob, requested by Alice.
pub(super) fn jira_event() -> TicketEvent {
    let alice = Person {
        id: Some("5b10a2844c20165700ede21g".into()),
        email: Some("alice@example.com".into()),
        name: Some("Alice".into()),
    };
    let bob = Person {
        id: Some("5b10ac8d82e05b22cc7d4ef5".into()),
        email: Some("bob@example.com".into()),
        name: None,
    };
    TicketEvent {
        connector: "jira".into(),
        kind: EventKind::Approved,
        ticket: Ticket {
            id: "10002".into(),
            key: "ACCESS-87".into(),
            url: Some("https://example.atlassian.net/browse/ACCESS-87".into()),
            kind: Some("Elevation Request".into()),
            status: Some("Approved".into()),
            summary: Some("Install Wireshark".into()),
            project: Some("ACCESS".into()),
        },
        requester: Some(alice),
        actor: Some(bob.clone()),
        approval: Some(Approval {
            state: "approved".into(),
            approvers: vec![bob],
            decided_at: Some("2026-11-26T10:00:00Z".parse().unwrap()),
        }),
        status_change: Some(StatusChange {
            from: Some("Waiting for approval".into()),
            to: "Approved".into(),
        }),
        occurred_at: "2026-11-26T10:00:01Z".parse().unwrap(),
        fields: json!({
            "customfield_10050": { "value": "Local admin", "id": "10100" },
            "customfield_10060": "WS-0042",
            "customfield_10070": null,
            "summary": "Install Wireshark",
        }),
        payload: json!({ "webhookEvent": "jira:issue_updated", "issue": { "key": "ACCESS-87" } }),
    }
}

fn with_fields(mut event: TicketEvent, fields: serde_json::Value) -> TicketEvent {
    event.fields = fields;
    event
}

#[test]
fn design_example_loads_unchanged_and_renders_the_expected_grant() {
    let set = design_set();
    assert_eq!(set.len(), 1);
    let m = set.get("helpdesk-local-admin").unwrap();
    assert_eq!(m.connector(), "jira");
    assert_eq!(m.max_duration(), SignedDuration::from_hours(4));
    assert!(m.policy().distinct_approver());

    let event = jira_event();
    assert_eq!(m.matches(&event), Ok(true));
    assert_eq!(m.trigger(&event), Some(Trigger::Approve));
    assert_eq!(
        m.render_grant(&event).unwrap(),
        GrantSpec {
            subject: "alice@example.com".into(),
            target: "WS-0042".into(),
            scope: "local-admin".into(),
            duration: SignedDuration::from_mins(60),
            requested: SignedDuration::from_mins(60),
            capped: false,
            provider: "endpoint-agent".into(),
        }
    );
}

#[test]
fn design_example_grant_passes_its_policy() {
    let set = design_set();
    let m = set.get("helpdesk-local-admin").unwrap();
    let event = jira_event();
    let grant = m.render_grant(&event).unwrap();
    let approvers = event.approval.as_ref().unwrap().approvers.clone();
    let verdict = crate::policy::check(
        m.policy(),
        &crate::policy::PolicyInput {
            requester: event.requester.as_ref(),
            approvers: &approvers,
            subject: &grant.subject,
            target: &grant.target,
            scope: &grant.scope,
            duration: grant.duration,
        },
    );
    assert!(verdict.allowed(), "{verdict:?}");
}

#[test]
fn evaluate_reports_match_trigger_and_grant() {
    let set = design_set();
    let evals = set.evaluate(&jira_event());
    assert_eq!(evals.len(), 1);
    let e = &evals[0];
    assert_eq!(e.mapping, "helpdesk-local-admin");
    assert_eq!(e.matched, Ok(true));
    assert_eq!(e.trigger, Some(Trigger::Approve));
    assert_eq!(
        e.grant.as_ref().unwrap().as_ref().unwrap().target,
        "WS-0042"
    );
}

#[test]
fn evaluate_considers_only_the_events_connector() {
    let set = design_set();
    let mut event = jira_event();
    event.connector = "servicenow".into();
    assert!(set.evaluate(&event).is_empty());
    assert_eq!(set.for_connector("jira").count(), 1);
    assert_eq!(set.for_connector("servicenow").count(), 0);
}

#[test]
fn other_ticket_types_do_not_match() {
    let set = design_set();
    let mut event = jira_event();
    event.ticket.kind = Some("Incident".into());
    let e = &set.evaluate(&event)[0];
    assert_eq!(e.matched, Ok(false));
    assert_eq!((e.trigger, e.grant.clone()), (None, None));
}

#[test]
fn cel_runtime_error_is_no_match_with_the_reason() {
    let set = design_set();
    // customfield_10050 missing entirely, then present but null: both are errors in CEL
    for fields in [
        json!({ "customfield_10060": "WS-1" }),
        json!({ "customfield_10050": null }),
    ] {
        let event = with_fields(jira_event(), fields.clone());
        let e = &set.evaluate(&event)[0];
        let reason = e.matched.clone().unwrap_err();
        assert!(
            reason.contains("`when` could not be evaluated"),
            "{fields}: {reason}"
        );
        assert_eq!(e.grant, None);
        assert!(matches!(
            set.get("helpdesk-local-admin").unwrap().matches(&event),
            Err(MappingError::Condition { .. })
        ));
    }
}

#[test]
fn condition_that_is_not_boolean_is_no_match() {
    let text = one_mapping(
        r#"when = 'ticket.type == "Elevation Request" && fields.customfield_10050.value == "Local admin"'"#,
        "when = 'ticket.key'",
    );
    let set = load(&[("m.toml", &text)]).unwrap();
    let e = &set.evaluate(&jira_event())[0];
    assert_eq!(
        e.matched,
        Err(
            "mapping \"helpdesk-local-admin\": `when` must give true or false, but gave a string"
                .to_owned()
        )
    );
}

#[test]
fn cel_sees_every_documented_name_and_json_null() {
    let when = "ticket.key == 'ACCESS-87' && ticket.project == 'ACCESS' && requester.email == 'alice@example.com' \
        && actor.email == 'bob@example.com' && approval.state == 'approved' \
        && approval.approvers[0].email == 'bob@example.com' && event.kind == 'approved' \
        && payload.webhookEvent == 'jira:issue_updated' && fields.customfield_10070 == null \
        && has(fields.summary) && !has(fields.nothing_here)";
    let text = one_mapping(
        r#"when = 'ticket.type == "Elevation Request" && fields.customfield_10050.value == "Local admin"'"#,
        &format!("when = \"{when}\""),
    );
    let set = load(&[("m.toml", &text)]).unwrap();
    assert_eq!(set.evaluate(&jira_event())[0].matched, Ok(true));
}

#[test]
fn default_replaces_null_missing_and_empty_but_not_values() {
    let m_set = design_set();
    let m = m_set.get("helpdesk-local-admin").unwrap();
    let base = jira_event();
    let cases = [
        (json!(null), SignedDuration::from_mins(60)),
        (json!(""), SignedDuration::from_mins(60)),
        (json!("  "), SignedDuration::from_mins(60)),
        (json!("2h"), SignedDuration::from_hours(2)),
        (json!("90m"), SignedDuration::from_mins(90)),
    ];
    for (value, expected) in cases {
        let mut fields = base.fields.clone();
        fields["customfield_10070"] = value.clone();
        let grant = m.render_grant(&with_fields(base.clone(), fields)).unwrap();
        assert_eq!(grant.duration, expected, "{value}");
    }
    // missing altogether
    let mut fields = base.fields.clone();
    fields.as_object_mut().unwrap().remove("customfield_10070");
    assert_eq!(
        m.render_grant(&with_fields(base, fields)).unwrap().duration,
        SignedDuration::from_mins(60)
    );
}

#[test]
fn missing_or_null_grant_fields_are_errors_not_empty_strings() {
    let set = design_set();
    let m = set.get("helpdesk-local-admin").unwrap();
    let base = jira_event();

    let mut fields = base.fields.clone();
    fields.as_object_mut().unwrap().remove("customfield_10060");
    let err = m
        .render_grant(&with_fields(base.clone(), fields))
        .unwrap_err();
    assert!(
        matches!(&err, MappingError::Render { field, .. } if field == "grant.target"),
        "{err}"
    );

    let mut fields = base.fields.clone();
    fields["customfield_10060"] = json!(null);
    let err = m
        .render_grant(&with_fields(base.clone(), fields))
        .unwrap_err();
    assert!(
        matches!(&err, MappingError::Render { field, message, .. } if field == "grant.target" && message.contains("null")),
        "{err}"
    );

    let mut fields = base.fields.clone();
    fields["customfield_10060"] = json!("   ");
    let err = m
        .render_grant(&with_fields(base.clone(), fields))
        .unwrap_err();
    assert_eq!(
        err,
        MappingError::Empty {
            mapping: "helpdesk-local-admin".into(),
            field: "grant.target".into()
        }
    );

    let mut event = base.clone();
    event.requester = None;
    let err = m.render_grant(&event).unwrap_err();
    assert!(
        matches!(&err, MappingError::Render { field, .. } if field == "grant.subject"),
        "{err}"
    );

    let mut fields = base.fields.clone();
    fields["customfield_10060"] = json!("WS-1\nWS-2");
    let err = m.render_grant(&with_fields(base, fields)).unwrap_err();
    assert!(
        matches!(&err, MappingError::Invalid { field, .. } if field == "grant.target"),
        "{err}"
    );
}

#[test]
fn long_durations_are_capped_at_max_duration() {
    let set = design_set();
    let m = set.get("helpdesk-local-admin").unwrap();
    let mut fields = jira_event().fields;
    fields["customfield_10070"] = json!("8h");
    let grant = m.render_grant(&with_fields(jira_event(), fields)).unwrap();
    assert_eq!(grant.duration, SignedDuration::from_hours(4));
    assert_eq!(grant.requested, SignedDuration::from_hours(8));
    assert!(grant.capped);
}

#[test]
fn unusable_durations_are_errors() {
    let set = design_set();
    let m = set.get("helpdesk-local-admin").unwrap();
    for text in ["0s", "soon", "90", "-5m"] {
        let mut fields = jira_event().fields;
        fields["customfield_10070"] = json!(text);
        let err = m
            .render_grant(&with_fields(jira_event(), fields))
            .unwrap_err();
        assert!(
            matches!(err, MappingError::Duration { .. }),
            "{text}: {err}"
        );
    }
}

#[test]
fn triggers_follow_status_changes_and_event_kinds() {
    let set = design_set();
    let m = set.get("helpdesk-local-admin").unwrap();
    let moved = |to: &str| {
        let mut e = jira_event();
        e.kind = EventKind::Updated;
        e.status_change = Some(StatusChange {
            from: None,
            to: to.into(),
        });
        e
    };
    assert_eq!(m.trigger(&moved("approved")), Some(Trigger::Approve));
    assert_eq!(m.trigger(&moved("DECLINED")), Some(Trigger::Deny));
    assert_eq!(m.trigger(&moved("Done")), Some(Trigger::Revoke));
    assert_eq!(m.trigger(&moved(" cancelled ")), Some(Trigger::Revoke));
    assert_eq!(m.trigger(&moved("In Progress")), None);
    // the ticket merely *being* Approved, without a change into it, fires nothing
    let mut e = jira_event();
    e.kind = EventKind::Commented;
    e.status_change = None;
    assert_eq!(m.trigger(&e), None);

    assert!(m.approves_status("APPROVED"));
    assert!(!m.approves_status("Declined"));
    assert!(m.approves_by_status());
}

#[test]
fn event_rules_fire_on_event_kinds_and_revoke_wins_over_approve() {
    let text = one_mapping(
        r#"approve = { status = ["Approved"] }"#,
        r#"approve = { status = ["Approved"], event = ["approved"] }"#,
    )
    .replacen(
        r#"revoke  = { status = ["Done", "Cancelled"] }"#,
        r#"revoke = { status = ["Done"], event = ["cancelled", "resolved"] }"#,
        1,
    );
    let set = load(&[("m.toml", &text)]).unwrap();
    let m = set.get("helpdesk-local-admin").unwrap();
    let mut e = jira_event();
    e.status_change = None;
    assert_eq!(m.trigger(&e), Some(Trigger::Approve));
    e.kind = EventKind::Resolved;
    assert_eq!(m.trigger(&e), Some(Trigger::Revoke));
    // an approved-status change arriving on a resolve event: the conservative rule wins
    e.status_change = Some(StatusChange {
        from: None,
        to: "Approved".into(),
    });
    assert_eq!(m.trigger(&e), Some(Trigger::Revoke));
}

fn grant_for(event: &TicketEvent, spec: &GrantSpec, state: GrantState) -> Grant {
    Grant {
        id: uuid::Uuid::nil(),
        ticket: event.ticket_ref(),
        mapping: "helpdesk-local-admin".into(),
        state,
        subject: spec.subject.clone(),
        target: spec.target.clone(),
        scope: spec.scope.clone(),
        provider: spec.provider.clone(),
        duration: spec.duration,
        requester: event.requester.clone(),
        approvers: vec![],
        requested_at: event.occurred_at,
        approved_at: Some(event.occurred_at),
        starts_at: Some("2026-11-26T10:00:05Z".parse().unwrap()),
        expires_at: Some("2026-11-26T11:00:01Z".parse::<Timestamp>().unwrap()),
        ended_at: None,
        revoke_cause: None,
        reason: None,
        last_event_at: event.occurred_at,
        context: stored_context(event),
        version: 1,
    }
}

#[test]
fn writebacks_render_from_the_stored_context() {
    let set = design_set();
    let m = set.get("helpdesk-local-admin").unwrap();
    let event = jira_event();
    let spec = m.render_grant(&event).unwrap();
    let grant = grant_for(&event, &spec, GrantState::Active);

    let texts = m
        .render_writeback(GrantState::Active, &writeback_context(&grant, None))
        .unwrap()
        .unwrap();
    assert_eq!(
        texts.comment.as_deref(),
        Some("Local admin granted to alice@example.com on WS-0042 until 2026-11-26T11:00:01Z.")
    );
    assert_eq!(texts.status.as_deref(), Some("In Progress"));

    let texts = m
        .render_writeback(
            GrantState::Revoked,
            &writeback_context(&grant, Some("the ticket was resolved")),
        )
        .unwrap()
        .unwrap();
    assert_eq!(
        texts.comment.as_deref(),
        Some("Local admin on WS-0042 revoked: the ticket was resolved.")
    );
    assert_eq!(texts.status, None);

    assert_eq!(
        m.render_writeback(GrantState::Requested, &writeback_context(&grant, None))
            .unwrap(),
        None
    );
    // `reason` is a name the template uses: leaving it out is an error, not "revoked: ."
    let err = m
        .render_writeback(GrantState::Revoked, &writeback_context(&grant, None))
        .unwrap_err();
    assert!(
        matches!(&err, MappingError::Render { field, .. } if field == "writeback.revoked.comment"),
        "{err}"
    );
}

#[test]
fn stored_context_is_the_template_context_without_payload() {
    let event = jira_event();
    let full = template_context(&event);
    let stored = stored_context(&event);
    for name in [
        "ticket",
        "requester",
        "actor",
        "approval",
        "fields",
        "event",
    ] {
        assert_eq!(full[name], stored[name], "{name}");
    }
    assert!(full.get("payload").is_some());
    assert!(stored.get("payload").is_none());
    assert_eq!(full["ticket"]["type"], "Elevation Request");
    assert_eq!(
        full["event"],
        json!({ "kind": "approved", "occurred_at": "2026-11-26T10:00:01Z" })
    );
}

// ----- load-time problems -------------------------------------------------------------------

fn only(problems: &[Problem]) -> &Problem {
    assert_eq!(problems.len(), 1, "{problems:#?}");
    &problems[0]
}

#[test]
fn unknown_key_is_a_problem_with_its_line() {
    let text = one_mapping(
        "max_duration = \"4h\"",
        "max_duration = \"4h\"\nmax_durration = \"8h\"",
    );
    let p = problems(&text);
    let p = only(&p);
    assert_eq!(p.file, PathBuf::from("mappings/x.toml"));
    assert_eq!(p.line, Some(12), "{p}");
    assert_eq!(p.key, "mapping[0].grant.max_durration");
    assert!(p.why.contains("max_durration"), "{p}");
}

#[test]
fn toml_syntax_error_is_a_problem_with_its_line() {
    let p = problems("[[mapping]]\nname = \"x\"\nconnector = jira\n");
    let p = only(&p);
    assert_eq!(p.line, Some(3), "{p}");
}

#[test]
fn bad_cel_is_a_problem_naming_the_mapping_and_when() {
    let text = one_mapping(
        "fields.customfield_10050.value ==",
        "fields.customfield_10050.value === ",
    );
    let p = problems(&text);
    let p = only(&p);
    assert_eq!((p.key.as_str(), p.line), ("mapping[0].when", Some(4)));
    assert!(
        p.why
            .starts_with("mapping \"helpdesk-local-admin\": the CEL expression does not compile"),
        "{p}"
    );
}

#[test]
fn bad_template_is_a_problem_at_its_key() {
    let text = one_mapping(
        "{{ fields.customfield_10060 }}",
        "{{ fields.customfield_10060 }",
    );
    let p = problems(&text);
    let p = only(&p);
    assert_eq!(
        (p.key.as_str(), p.line),
        ("mapping[0].grant.target", Some(8))
    );
    assert!(p.why.contains("template does not compile"), "{p}");

    let text = one_mapping(
        "Elevation refused: {{ reason }}.",
        "Elevation refused: {% if %}",
    );
    let p = problems(&text);
    assert_eq!(only(&p).key, "mapping[0].writeback.denied.comment");
}

#[test]
fn unknown_provider_and_connector_are_problems_listing_known_names() {
    let text = one_mapping(
        "provider = \"endpoint-agent\"",
        "provider = \"endpoint-agnet\"",
    )
    .replacen("connector = \"jira\"", "connector = \"jria\"", 1);
    let p = problems(&text);
    assert_eq!(p.len(), 2, "{p:#?}");
    assert_eq!(p[0].key, "mapping[0].connector");
    assert!(
        p[0].why.contains("known connectors: jira, servicenow"),
        "{}",
        p[0]
    );
    assert_eq!(
        (p[1].key.as_str(), p[1].line),
        ("mapping[0].grant.provider", Some(12))
    );
    assert!(
        p[1].why.contains(
            "unknown provider \"endpoint-agnet\"; known providers: endpoint-agent, script"
        )
    );
}

#[test]
fn bad_durations_are_problems() {
    for (max, fragment) in [
        ("\"4 hours please\"", "is not a duration"),
        ("\"0s\"", "longer than zero"),
        ("\"25h\"", "longer than the 24h"),
    ] {
        let text = one_mapping("max_duration = \"4h\"", &format!("max_duration = {max}"));
        let p = problems(&text);
        let p = only(&p);
        assert_eq!(
            (p.key.as_str(), p.line),
            ("mapping[0].grant.max_duration", Some(11))
        );
        assert!(p.why.contains(fragment), "{max}: {p}");
    }
    let text = one_mapping(
        "duration = \"{{ fields.customfield_10070 | default('60m') }}\"",
        "duration = \"one hour\"",
    );
    let p = problems(&text);
    assert_eq!(only(&p).key, "mapping[0].grant.duration");
    // a max_duration of exactly the ceiling is fine
    load(&[(
        "m.toml",
        &one_mapping("max_duration = \"4h\"", "max_duration = \"24h\""),
    )])
    .unwrap();
}

#[test]
fn unknown_writeback_state_is_a_problem_listing_the_valid_ones() {
    let text = one_mapping("denied  = {", "deneid  = {");
    let p = problems(&text);
    let p = only(&p);
    assert_eq!(
        (p.key.as_str(), p.line),
        ("mapping[0].writeback.deneid", Some(28))
    );
    assert!(
        p.why.ends_with(
            "unknown grant state \"deneid\"; use one of requested, approved, active, expired, revoked, denied, failed, cancelled, revoke_failed, auto_approved, renewed"
        ),
        "{p}"
    );
    // transient states are not writeback states either
    let p = problems(&one_mapping("denied  = {", "expiring = {"));
    assert_eq!(only(&p).key, "mapping[0].writeback.expiring");
}

#[test]
fn duplicate_names_across_files_are_a_problem() {
    let p = load(&[
        ("mappings/a.toml", DESIGN_EXAMPLE),
        ("mappings/b.toml", DESIGN_EXAMPLE),
    ])
    .unwrap_err();
    let p = only(&p);
    assert_eq!(p.file, PathBuf::from("mappings/b.toml"));
    assert_eq!((p.key.as_str(), p.line), ("mapping[0].name", Some(2)));
    assert!(
        p.why
            .contains("already used by the mapping at mappings/a.toml:2"),
        "{p}"
    );
}

#[test]
fn on_rules_need_an_approve_and_no_overlaps() {
    let text = one_mapping("approve = { status = [\"Approved\"] }", "");
    assert_eq!(only(&problems(&text)).key, "mapping[0].on.approve");

    let text = one_mapping(
        "deny    = { status = [\"Declined\"] }",
        "deny    = { status = [\"APPROVED\"] }",
    );
    let p = problems(&text);
    let p = only(&p);
    assert_eq!(
        (p.key.as_str(), p.line),
        ("mapping[0].on.deny.status", Some(16))
    );
    assert!(p.why.contains("also listed under on.approve"), "{p}");

    let text = one_mapping(
        "deny    = { status = [\"Declined\"] }",
        "deny    = { event = [\"aproved\"] }",
    );
    let p = problems(&text);
    let p = only(&p);
    assert_eq!(p.line, Some(16), "{p}");
    assert!(p.why.contains("aproved"), "{p}");
}

#[test]
fn bad_policy_glob_is_a_problem() {
    let text = one_mapping(
        "targets = [\"WS-*\", \"LT-*\"]",
        "targets = [\"WS-*\", \"LT-[\"]",
    );
    let p = problems(&text);
    let p = only(&p);
    assert_eq!(p.key, "mapping[0].policy.targets[1]");
    // The line of the bad entry itself, not of the table.
    assert_eq!(p.line, Some(22));
}

#[test]
fn every_problem_in_every_file_is_reported() {
    let bad_one = one_mapping("provider = \"endpoint-agent\"", "provider = \"nope\"");
    let bad_two = one_mapping("name = \"helpdesk-local-admin\"", "name = \"second\"")
        .replacen("max_duration = \"4h\"", "max_duration = \"48h\"", 1)
        .replacen("active  = {", "activ = {", 1);
    let p = load(&[
        ("a.toml", &bad_one),
        ("b.toml", "[[mapping]]\nname = 1\n"),
        ("c.toml", &bad_two),
    ])
    .unwrap_err();
    let keys: Vec<(String, String)> = p
        .iter()
        .map(|p| (p.file.display().to_string(), p.key.clone()))
        .collect();
    assert_eq!(
        keys,
        [
            ("a.toml".to_owned(), "mapping[0].grant.provider".to_owned()),
            ("b.toml".to_owned(), "mapping[0].name".to_owned()),
            (
                "c.toml".to_owned(),
                "mapping[0].grant.max_duration".to_owned()
            ),
            ("c.toml".to_owned(), "mapping[0].writeback.activ".to_owned()),
        ]
    );
}

#[test]
fn several_mappings_per_file_load_in_order() {
    let second = DESIGN_EXAMPLE
        .replacen(
            "name = \"helpdesk-local-admin\"",
            "name = \"servicenow-admin\"",
            1,
        )
        .replacen("connector = \"jira\"", "connector = \"servicenow\"", 1);
    let text = format!("{DESIGN_EXAMPLE}\n{second}");
    let set = load(&[("m.toml", &text)]).unwrap();
    let names: Vec<&str> = set.iter().map(|m| m.name()).collect();
    assert_eq!(names, ["helpdesk-local-admin", "servicenow-admin"]);
    assert_eq!(
        set.get("servicenow-admin").unwrap().connector(),
        "servicenow"
    );
    assert!(set.get("nope").is_none());
}

#[test]
fn a_file_without_mappings_is_a_problem() {
    let p = problems("# nothing here\n");
    assert_eq!(only(&p).key, "mapping");
}

#[test]
fn mapping_set_can_be_shared_between_tasks() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<MappingSet>();
}

// ----- properties ---------------------------------------------------------------------------

fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            0u64..100_000,
            prop::sample::select(vec!["s", "m", "min", "h", "d", "w", "ms"])
        )
            .prop_map(|(n, u)| format!("{n}{u}")),
        ((0u64..48), (0u64..600)).prop_map(|(h, m)| format!("{h}h {m}m")),
        "[ -~]{0,12}",
    ]
}

proptest! {
    /// Whatever the ticket asks for and whatever the mapping allows, a rendered grant never
    /// lasts longer than `max_duration`, is never zero or negative, and `capped` tells the truth.
    #[test]
    fn no_input_makes_duration_exceed_max_duration(
        requested in duration_text(),
        max_mins in 1i64..=(24 * 60),
    ) {
        let text = one_mapping("max_duration = \"4h\"", &format!("max_duration = \"{max_mins}m\""));
        let set = load(&[("m.toml", &text)]).unwrap();
        let m = set.get("helpdesk-local-admin").unwrap();
        let mut fields = jira_event().fields;
        fields["customfield_10070"] = json!(requested);
        let max = SignedDuration::from_mins(max_mins);
        match m.render_grant(&with_fields(jira_event(), fields)) {
            Ok(grant) => {
                prop_assert!(grant.duration <= max);
                prop_assert!(grant.duration > SignedDuration::ZERO);
                prop_assert_eq!(grant.capped, grant.requested > max);
                prop_assert_eq!(grant.duration, grant.requested.min(max));
            }
            Err(e) => prop_assert!(matches!(e, MappingError::Duration { .. }), "{}", e),
        }
    }

    /// Arbitrary ticket fields never make evaluation panic; it either matches or says why not.
    #[test]
    fn arbitrary_fields_never_panic(fields in arbitrary_json(3)) {
        let set = design_set();
        let evals = set.evaluate(&with_fields(jira_event(), fields));
        prop_assert_eq!(evals.len(), 1);
        if evals[0].matched != Ok(true) {
            prop_assert!(evals[0].grant.is_none());
        }
    }
}

fn arbitrary_json(depth: u32) -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(json!(null)),
        any::<bool>().prop_map(|b| json!(b)),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[ -~]{0,10}".prop_map(|s| json!(s)),
        Just(json!("Local admin")),
        Just(json!({ "value": "Local admin" })),
    ];
    leaf.prop_recursive(depth, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "customfield_10050",
                    "customfield_10060",
                    "customfield_10070",
                    "value",
                    "x"
                ]),
                inner,
                0..4
            )
            .prop_map(|m| serde_json::Value::Object(
                m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
            )),
        ]
    })
}

#[test]
fn variables_used_only_inside_macros_are_bound() {
    for when in [
        "has(payload.issue)",
        "approval.approvers.exists(a, a.email == 'bob@example.com')",
    ] {
        let text = one_mapping(
            r#"when = 'ticket.type == "Elevation Request" && fields.customfield_10050.value == "Local admin"'"#,
            &format!("when = \"{when}\""),
        );
        let set = load(&[("m.toml", &text)]).unwrap();
        assert_eq!(set.evaluate(&jira_event())[0].matched, Ok(true), "{when}");
    }
}

proptest! {
    /// Whatever an administrator types as `when`, loading gives a mapping or a problem.
    #[test]
    fn any_when_text_compiles_or_is_a_problem(when in "[ -~]{0,40}") {
        let _ = condition::Condition::compile(&when);
    }

    /// Whatever a template looks like, loading gives a mapping or a problem.
    #[test]
    fn any_template_text_compiles_or_is_a_problem(source in "[ -~]{0,40}") {
        let mut env = template::environment();
        let _ = env.add_template_owned("t".to_owned(), source);
    }
}

#[test]
fn policy_condition_sees_the_ticket_through_check_policy() {
    let text = one_mapping(
        "targets = [\"WS-*\", \"LT-*\"]",
        "targets = [\"WS-*\", \"LT-*\"]\ncondition = 'ticket.project == \"ACCESS\" && approval.state == \"approved\"'",
    );
    let set = load(&[("m.toml", &text)]).unwrap();
    let m = set.get("helpdesk-local-admin").unwrap();
    let mut event = jira_event();
    let grant = m.render_grant(&event).unwrap();
    let approvers = event.approval.as_ref().unwrap().approvers.clone();
    let requester = event.requester.clone();
    let input = crate::policy::PolicyInput {
        requester: requester.as_ref(),
        approvers: &approvers,
        subject: &grant.subject,
        target: &grant.target,
        scope: &grant.scope,
        duration: grant.duration,
    };
    assert!(m.check_policy(&event, &input).allowed());
    event.ticket.project = Some("OTHER".into());
    let verdict = m.check_policy(&event, &input);
    assert_eq!(
        verdict.refusal().unwrap(),
        "the policy condition ticket.project == \"ACCESS\" && approval.state == \"approved\" is not met by this ticket"
    );

    let bad = one_mapping(
        "targets = [\"WS-*\", \"LT-*\"]",
        "targets = [\"WS-*\"]\ncondition = 'fields.('",
    );
    let p = problems(&bad);
    let p = only(&p);
    assert_eq!(
        (p.key.as_str(), p.line),
        ("mapping[0].policy.condition", Some(23))
    );
}

#[test]
fn new_policy_keys_load_and_their_problems_name_the_line() {
    let good = one_mapping(
        "targets = [\"WS-*\", \"LT-*\"]",
        "targets = [\"WS-*\", \"LT-*\"]\nhours = [\"Mon-Fri 07:00-19:00 Europe/Berlin\"]\nmin_duration = \"15m\"\nmax_active_per_subject = 1\nmax_active_per_target = 2\napprovers = [\"bob@example.com\", \"carol@example.com\"]\nmin_approvals = 2",
    );
    let set = load(&[("m.toml", &good)]).unwrap();
    let m = set.get("helpdesk-local-admin").unwrap();
    assert!(m.policy().needs_live_counts());
    assert_eq!(m.policy().hours().len(), 1);

    // (replacement for the targets line, key, line, fragment of why)
    let cases = [
        (
            "targets = [\"WS-*\"]\nhours = [\"Mon-Fri 07:00-19:00 UTC\",\n  \"Mon-Fri 07:00-19:00 Mars/Base\"]",
            "mapping[0].policy.hours[1]",
            24,
            "not a known time zone",
        ),
        (
            "targets = [\"WS-*\"]\nmin_duration = \"5h\"",
            "mapping[0].policy.min_duration",
            23,
            "longer than grant.max_duration (4h)",
        ),
        (
            "targets = [\"WS-*\"]\napprovers = [\"group:helpdesk-leads\"]",
            "mapping[0].policy.approvers[0]",
            23,
            "identity map",
        ),
        (
            "targets = [\"WS-*\"]\nmax_active_per_subject = 0",
            "mapping[0].policy.max_active_per_subject",
            23,
            "refuse every request",
        ),
        (
            "targets = [\"WS-*\"]\nmin_approval = 2",
            "mapping[0].policy.min_approval",
            23,
            "unknown field",
        ),
    ];
    for (with, key, line, why) in cases {
        let text = one_mapping("targets = [\"WS-*\", \"LT-*\"]", with);
        let p = problems(&text);
        let p = only(&p);
        assert_eq!((p.key.as_str(), p.line), (key, Some(line)), "{with}: {p}");
        assert!(p.why.contains(why), "{with}: {p}");
    }
}

#[test]
fn a_reopen_never_approves_even_into_an_approve_status() {
    // An administrator listed "Reopened" as an approval status: a reopen still grants nothing.
    let text = one_mapping(
        r#"approve = { status = ["Approved"] }"#,
        r#"approve = { status = ["Approved", "Reopened"], event = ["reopened"] }"#,
    );
    let set = load(&[("m.toml", &text)]).unwrap();
    let m = set.get("helpdesk-local-admin").unwrap();
    let moved = |kind: EventKind, from: Option<&str>, to: &str| {
        let mut e = jira_event();
        e.kind = kind;
        e.status_change = Some(StatusChange {
            from: from.map(str::to_owned),
            to: to.into(),
        });
        e
    };
    // (event, expected trigger, why)
    let cases = [
        (
            moved(EventKind::Updated, Some("Done"), "Reopened"),
            None,
            "out of a revoke status",
        ),
        (
            moved(EventKind::Updated, Some("declined"), "Approved"),
            None,
            "out of a deny status",
        ),
        (
            moved(EventKind::Reopened, None, "Approved"),
            None,
            "a reopened event",
        ),
        (
            moved(EventKind::Reopened, Some("Waiting"), "Reopened"),
            None,
            "reopened kind wins",
        ),
        (
            moved(EventKind::Updated, Some("Waiting"), "Reopened"),
            Some(Trigger::Approve),
            "a listed status reached from an open one",
        ),
        (
            moved(EventKind::Updated, Some("Waiting for approval"), "Approved"),
            Some(Trigger::Approve),
            "an ordinary approval",
        ),
        (
            moved(EventKind::Updated, Some("In Progress"), "Done"),
            Some(Trigger::Revoke),
            "ending still ends",
        ),
    ];
    for (event, want, why) in cases {
        assert_eq!(m.trigger(&event), want, "{why}");
    }
    assert!(m.is_reopen(&moved(EventKind::Updated, Some("CANCELLED"), "In Progress")));
}

#[test]
fn auto_approve_and_lifetime_keys_load_with_defaults() {
    let set = design_set();
    let m = set.get("helpdesk-local-admin").unwrap();
    assert!(m.auto_approve().is_none(), "off unless configured");
    assert!(m.revokes_on_withdrawn_approval(), "on by default");

    let text = one_mapping(
        "[mapping.policy]",
        "[mapping.auto_approve]\nenabled = true\ncondition = 'fields.customfield_10070 == \"30m\"'\nscopes = [\"local-admin\"]\nmax_duration = \"1h\"\n\n[mapping.policy]",
    )
    .replacen(
        r#"revoke  = { status = ["Done", "Cancelled"] }"#,
        "revoke  = { status = [\"Done\", \"Cancelled\"] }\nrevoke_on_withdrawn_approval = false",
        1,
    );
    let set = load(&[("m.toml", &text)]).unwrap();
    let m = set.get("helpdesk-local-admin").unwrap();
    let auto = m.auto_approve().expect("enabled");
    assert_eq!(auto.max_duration(), SignedDuration::from_hours(1));
    assert!(auto.allows_scope("local-admin"));
    assert!(!m.revokes_on_withdrawn_approval());
}

#[test]
fn bad_auto_approve_tables_are_problems_at_their_key() {
    let cases = [
        (
            "condition = '('\nscopes = [\"app:*\"]",
            "mapping[0].auto_approve.condition",
            "does not compile",
        ),
        (
            "condition = 'true'",
            "mapping[0].auto_approve.scopes",
            "list the scopes",
        ),
        (
            "condition = 'true'\nscopes = [\"app:*\"]\nmax_duration = \"8h\"",
            "mapping[0].auto_approve.max_duration",
            "longer than grant.max_duration",
        ),
        (
            "condition = 'true'\nscopes = [\"app:*\"]\nwhatever = 1",
            "mapping[0].auto_approve.whatever",
            "unknown field",
        ),
    ];
    for (table, key, needle) in cases {
        let text = one_mapping(
            "[mapping.policy]",
            &format!("[mapping.auto_approve]\nenabled = true\n{table}\n\n[mapping.policy]"),
        );
        let p = problems(&text);
        let p = only(&p);
        assert_eq!(p.key, key, "{p}");
        assert!(p.why.contains(needle), "{p}");
        assert!(p.line.is_some(), "{p}");
    }
}

#[test]
fn notes_have_default_comments_that_a_mapping_may_override_or_turn_off() {
    let set = design_set();
    let m = set.get("helpdesk-local-admin").unwrap();
    let event = jira_event();
    let spec = m.render_grant(&event).unwrap();
    let grant = grant_for(&event, &spec, GrantState::Approved);
    let mut ctx = writeback_context(&grant, None);
    ctx["auto_approve"] =
        json!({"mapping": "helpdesk-local-admin", "condition": "true", "max_duration": "1h"});
    ctx["renewal"] = json!({"approver": "bob@example.com", "capped": true, "max_duration": "4h"});
    let auto = m.render_note(Note::AutoApproved, &ctx).unwrap().unwrap();
    assert!(
        auto.starts_with("Auto-approved by jitbridge: mapping helpdesk-local-admin"),
        "{auto}"
    );
    assert!(auto.contains("no person approved it"), "{auto}");
    let renewed = m.render_note(Note::Renewed, &ctx).unwrap().unwrap();
    assert!(
        renewed.starts_with("Elevation renewed by bob@example.com"),
        "{renewed}"
    );
    assert!(
        renewed.contains("(capped: at most 4h from the first approval)"),
        "{renewed}"
    );

    let text = format!(
        "{DESIGN_EXAMPLE}auto_approved = {{ comment = \"\" }}\nrenewed = {{ comment = \"More time: {{{{ grant.expires_at }}}}\" }}\n"
    );
    let set = load(&[("m.toml", &text)]).unwrap();
    let m = set.get("helpdesk-local-admin").unwrap();
    assert_eq!(m.render_note(Note::AutoApproved, &ctx).unwrap(), None);
    assert_eq!(
        m.render_note(Note::Renewed, &ctx).unwrap().unwrap(),
        "More time: 2026-11-26T11:00:01Z"
    );

    let text = format!("{DESIGN_EXAMPLE}renewed = {{ status = \"Done\" }}\n");
    let p = problems(&text);
    assert!(
        p.iter()
            .any(|p| p.key == "mapping[0].writeback.renewed.status"),
        "{p:#?}"
    );
}
