use super::*;

/// One mapping file with the given `when`, grant lines and extra tables.
fn mapping(name: &str, when: &str, grant_extra: &str, tables: &str) -> String {
    format!(
        r#"
[[mapping]]
name = "{name}"
connector = "jira"
when = '{when}'

[mapping.grant]
subject  = "{{{{ requester.email }}}}"
target   = "{{{{ fields.host }}}}"
scope    = "local-admin"
max_duration = "4h"
provider = "agent"
{grant_extra}

[mapping.on]
approve = {{ status = ["Approved"] }}
{tables}
"#
    )
}

fn lint_one(text: &str) -> Lints {
    lint(&[(PathBuf::from("mappings/m.toml"), text.to_owned())])
}

const DURATION: &str = "duration = \"1h\"";

#[test]
fn a_mapping_using_only_documented_names_has_no_findings() {
    let text = mapping(
        "ok",
        r#"ticket.type == "Elevation Request" && approval.approvers.exists(a, a.email == actor.email)"#,
        "duration = \"{{ fields.minutes | default('60') }}m\"",
        "[mapping.writeback]\nactive = { comment = \"{{ grant.subject }} until {{ grant.expires_at }} ({{ ticket.key }}): {{ reason | default('') }}\" }",
    );
    assert_eq!(lint_one(&text), Lints::default());
}

#[test]
fn a_misspelt_member_in_a_grant_template_is_an_error_with_the_members_as_hint() {
    let text = mapping("typo", "true", DURATION, "")
        .replace("{{ requester.email }}", "{{ requester.mail }}");
    let found = lint_one(&text);
    assert_eq!(found.errors.len(), 1, "{found:?}");
    let p = &found.errors[0];
    assert_eq!(p.key, "mapping[0].grant.subject");
    assert_eq!(p.line, Some(8));
    assert!(p.why.contains("`requester` has no `mail`"), "{p}");
    assert_eq!(
        p.hint.as_deref(),
        Some("`requester` has id, email, name, subject")
    );
}

#[test]
fn payload_in_a_writeback_is_an_error_because_it_is_not_stored_with_the_grant() {
    let text = mapping(
        "wb",
        "true",
        DURATION,
        "[mapping.writeback]\nexpired = { comment = \"{{ payload.issue.key }} expired\" }",
    );
    let found = lint_one(&text);
    assert_eq!(found.errors.len(), 1, "{found:?}");
    assert_eq!(found.errors[0].key, "mapping[0].writeback.expired.comment");
    assert!(
        found.errors[0]
            .hint
            .as_deref()
            .unwrap()
            .contains("stored context"),
        "{}",
        found.errors[0]
    );
}

#[test]
fn grant_in_a_grant_template_is_unknown_there() {
    let text =
        mapping("g", "true", DURATION, "").replace("\"local-admin\"", "\"{{ grant.scope }}\"");
    let found = lint_one(&text);
    assert_eq!(found.errors.len(), 1, "{found:?}");
    assert!(found.errors[0].why.contains("`grant` is not a name"));
}

#[test]
fn an_unknown_name_in_when_or_policy_condition_is_an_error_but_comprehension_variables_are_not() {
    let text = mapping(
        "cel",
        r#"tickt.type == "X" && fields.items.all(i, i.ok)"#,
        DURATION,
        "[mapping.policy]\ncondition = 'event.knd == \"approved\"'",
    );
    let found = lint_one(&text);
    let keys: Vec<_> = found.errors.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["mapping[0].when", "mapping[0].policy.condition"],
        "{found:?}"
    );
    assert!(found.errors[0].why.contains("`tickt`"));
    assert!(found.errors[1].why.contains("`event` has no `knd`"));
}

#[test]
fn a_fixed_duration_above_max_duration_is_a_warning() {
    let found = lint_one(&mapping("long", "true", "duration = \"8h\"", ""));
    assert!(found.errors.is_empty());
    assert_eq!(found.warnings.len(), 1);
    assert!(
        found.warnings[0].why.contains("cut to 4h"),
        "{}",
        found.warnings[0]
    );
    assert_eq!(
        found.warnings[0].hint.as_deref(),
        Some("write duration = \"4h\" (or less), or raise max_duration")
    );
}

#[test]
fn two_mappings_testing_one_field_for_different_values_do_not_overlap() {
    let a = mapping(
        "a",
        r#"ticket.type == "Elevation" && fields.kind.value == "Local admin""#,
        DURATION,
        "",
    );
    let b = mapping(
        "b",
        r#"fields.kind.value == "Driver install""#,
        DURATION,
        "",
    );
    let found = lint(&[(PathBuf::from("a.toml"), a), (PathBuf::from("b.toml"), b)]);
    assert_eq!(found, Lints::default());
}

#[test]
fn two_mappings_whose_conditions_could_both_hold_are_warned_about_naming_both() {
    let a = mapping("a", r#"ticket.type == "Elevation""#, DURATION, "");
    let b = mapping(
        "b",
        r#"fields.kind.value == "Driver install""#,
        DURATION,
        "",
    );
    let found = lint(&[(PathBuf::from("a.toml"), a), (PathBuf::from("b.toml"), b)]);
    assert!(found.errors.is_empty());
    assert_eq!(found.warnings.len(), 1, "{found:?}");
    let w = &found.warnings[0];
    assert_eq!(w.file, PathBuf::from("b.toml"));
    assert!(w.why.contains("mapping \"a\" (a.toml:5)"), "{w}");
    assert!(w.hint.as_deref().unwrap().contains("exclusive"));
}

#[test]
fn mappings_of_different_connectors_never_overlap() {
    let a = mapping("a", "true", DURATION, "");
    let b =
        mapping("b", "true", DURATION, "").replace("connector = \"jira\"", "connector = \"snow\"");
    let found = lint(&[(PathBuf::from("a.toml"), a), (PathBuf::from("b.toml"), b)]);
    assert!(found.warnings.is_empty(), "{found:?}");
}

#[test]
fn names_added_by_scopes_identities_and_notes_are_known() {
    let text = mapping(
        "newer",
        r#"requester.subject != actor.subject"#,
        DURATION,
        "[mapping.writeback]\nrequested = { comment = \"{{ summary }} ({{ grant.scope_definition.path | default('') }})\" }\nauto_approved = { comment = \"{{ auto_approve.mapping }}: {{ auto_approve.condition }}\" }\nrenewed = { comment = \"{{ renewal.approver }} {{ renewal.max_duration }}\" }",
    );
    assert_eq!(lint_one(&text), Lints::default());
}
