//! Policy tests: one table per rule, combinations, and properties of the approver rule.

use super::*;
use proptest::prelude::*;

fn person(id: Option<&str>, email: Option<&str>) -> Person {
    Person {
        id: id.map(str::to_owned),
        email: email.map(str::to_owned),
        name: None,
    }
}

fn alice() -> Person {
    Person {
        id: Some("acc-alice".into()),
        email: Some("alice@example.com".into()),
        name: Some("Alice".into()),
    }
}

fn bob() -> Person {
    Person {
        id: Some("acc-bob".into()),
        email: Some("bob@example.com".into()),
        name: Some("Bob".into()),
    }
}

fn policy(distinct: bool, requesters: &[&str], targets: &[&str]) -> Policy {
    Policy::compile(&PolicyConfig {
        distinct_approver: distinct,
        requesters: requesters.iter().map(|s| s.to_string()).collect(),
        targets: targets.iter().map(|s| s.to_string()).collect(),
        ..PolicyConfig::default()
    })
    .unwrap()
}

fn input<'a>(
    requester: Option<&'a Person>,
    approvers: &'a [Person],
    subject: &'a str,
    target: &'a str,
) -> PolicyInput<'a> {
    PolicyInput {
        requester,
        approvers,
        subject,
        target,
        scope: "local-admin",
        duration: SignedDuration::from_mins(60),
    }
}

fn rule<'v>(verdict: &'v Verdict, name: &str) -> &'v Check {
    verdict.checks.iter().find(|c| c.rule == name).unwrap()
}

#[test]
fn approval_by_someone_else_is_allowed() {
    let (a, b) = (alice(), bob());
    let approvers = [b];
    let v = check(
        &Policy::default(),
        &input(Some(&a), &approvers, "alice@example.com", "WS-1"),
    );
    assert!(v.allowed(), "{v:?}");
    assert_eq!(v.refusal(), None);
}

#[test]
fn approval_by_requester_is_denied() {
    let a = alice();
    let approvers = [alice()];
    let v = check(
        &Policy::default(),
        &input(Some(&a), &approvers, "alice@example.com", "WS-1"),
    );
    assert!(!v.allowed());
    assert_eq!(
        v.refusal().unwrap(),
        "approver alice@example.com is the requester; a request cannot be approved by the person who raised it"
    );
}

#[test]
fn distinct_approver_table() {
    let a = alice();
    let anonymous = Person {
        id: None,
        email: Some(String::new()),
        name: Some("Somebody".into()),
    };
    // (case, requester, approvers, subject, expected pass, expected text fragment)
    type Case<'a> = (&'a str, Option<Person>, Vec<Person>, &'a str, bool, &'a str);
    let cases: Vec<Case> = vec![
        (
            "other approver",
            Some(a.clone()),
            vec![bob()],
            "alice@example.com",
            true,
            "approved by bob@example.com",
        ),
        (
            "same id, other e-mail",
            Some(a.clone()),
            vec![person(Some("acc-alice"), Some("a2@x.org"))],
            "x",
            false,
            "is the requester",
        ),
        (
            "same e-mail other case",
            Some(a.clone()),
            vec![person(None, Some("ALICE@Example.COM"))],
            "x",
            false,
            "is the requester",
        ),
        (
            "approver is the subject by e-mail",
            Some(a.clone()),
            vec![bob()],
            "Bob@example.com",
            false,
            "would receive the privilege",
        ),
        (
            "approver is the subject by id",
            Some(a.clone()),
            vec![bob()],
            " acc-bob ",
            false,
            "would receive the privilege",
        ),
        (
            "no approvers",
            Some(a.clone()),
            vec![],
            "alice@example.com",
            false,
            "no identifiable approver",
        ),
        (
            "only anonymous approvers",
            Some(a.clone()),
            vec![anonymous.clone()],
            "alice@example.com",
            false,
            "no identifiable approver",
        ),
        (
            "anonymous plus identified",
            Some(a.clone()),
            vec![anonymous, bob()],
            "alice@example.com",
            true,
            "bob@example.com",
        ),
        (
            "unknown requester",
            None,
            vec![bob()],
            "alice@example.com",
            false,
            "requester is unknown",
        ),
        (
            "anonymous requester",
            Some(Person::default()),
            vec![bob()],
            "alice@example.com",
            false,
            "requester is unknown",
        ),
        (
            "second approver is requester",
            Some(a.clone()),
            vec![bob(), person(None, Some("alice@example.com"))],
            "x",
            false,
            "is the requester",
        ),
    ];
    for (case, requester, approvers, subject, pass, text) in cases {
        let v = check(
            &Policy::default(),
            &input(requester.as_ref(), &approvers, subject, "WS-1"),
        );
        let c = rule(&v, "distinct_approver");
        assert_eq!(c.passed, pass, "{case}: {c:?}");
        assert!(
            c.detail.contains(text),
            "{case}: {:?} lacks {text:?}",
            c.detail
        );
        assert_eq!(v.allowed(), pass, "{case}");
    }
}

#[test]
fn distinct_approver_can_be_switched_off_for_the_requester_only() {
    let a = alice();
    let approvers = [alice()];
    // The requester approves an elevation for someone else: allowed when switched off.
    let v = check(
        &policy(false, &[], &[]),
        &input(Some(&a), &approvers, "svc-install@example.com", "WS-1"),
    );
    assert!(v.allowed(), "{v:?}");
    assert!(
        rule(&v, "distinct_approver")
            .detail
            .contains("distinct_approver = false"),
        "{v:?}"
    );
    // Approving one's own elevation is never allowed, switch or not.
    let v = check(
        &policy(false, &[], &[]),
        &input(Some(&a), &approvers, "ALICE@example.com", "WS-1"),
    );
    assert!(!v.allowed());
    assert_eq!(
        v.refusal().unwrap(),
        "approver alice@example.com would receive the privilege; nobody can approve their own elevation"
    );
}

#[test]
fn requesters_table() {
    let p = policy(true, &["*@example.com", "contractor-*@partner.org"], &[]);
    let cases: Vec<(Option<Person>, bool, &str)> = vec![
        (Some(alice()), true, "matches"),
        (
            Some(person(Some("x"), Some("ALICE@EXAMPLE.COM"))),
            true,
            "matches",
        ),
        (
            Some(person(Some("x"), Some("contractor-7@partner.org"))),
            true,
            "matches",
        ),
        (
            Some(person(Some("x"), Some("eve@evil.com"))),
            false,
            "requester eve@evil.com may not request this elevation (allowed requesters: *@example.com, contractor-*@partner.org)",
        ),
        (
            Some(person(Some("x"), Some("alice@example.com.evil.com"))),
            false,
            "may not request",
        ),
        (
            Some(person(Some("x"), None)),
            false,
            "e-mail address is unknown",
        ),
        (None, false, "e-mail address is unknown"),
    ];
    for (requester, pass, text) in cases {
        let v = check(&p, &input(requester.as_ref(), &[], "s", "WS-1"));
        let c = rule(&v, "requesters");
        assert_eq!(c.passed, pass, "{requester:?}: {c:?}");
        assert!(c.detail.contains(text), "{:?} lacks {text:?}", c.detail);
    }
}

#[test]
fn targets_table() {
    let p = policy(true, &[], &["WS-*", "LT-*"]);
    let cases = [
        ("WS-0042", true),
        ("ws-0042", true),
        (" LT-7 ", true),
        ("SRV-DC01", false),
        ("XWS-1", false),
        ("", false),
        ("   ", false),
    ];
    for (target, pass) in cases {
        let v = check(&p, &input(None, &[], "s", target));
        assert_eq!(rule(&v, "targets").passed, pass, "{target:?}");
    }
    let v = check(&p, &input(None, &[], "s", "SRV-DC01"));
    assert_eq!(
        rule(&v, "targets").detail,
        "target SRV-DC01 is not allowed for this elevation (allowed targets: WS-*, LT-*)"
    );
}

#[test]
fn empty_lists_mean_any() {
    let v = check(
        &Policy::default(),
        &input(None, &[], "s", "anything-at-all"),
    );
    assert!(rule(&v, "requesters").passed);
    assert!(rule(&v, "targets").passed);
}

#[test]
fn duration_table() {
    let a = alice();
    let approvers = [bob()];
    for (mins, pass) in [
        (0, false),
        (-5, false),
        (1, true),
        (24 * 60, true),
        (24 * 60 + 1, false),
    ] {
        let mut i = input(Some(&a), &approvers, "alice@example.com", "WS-1");
        i.duration = SignedDuration::from_mins(mins);
        let v = check(&Policy::default(), &i);
        assert_eq!(rule(&v, "duration").passed, pass, "{mins} minutes");
    }
}

#[test]
fn combinations_report_the_first_failure_and_keep_all_checks() {
    let p = policy(true, &["*@example.com"], &["WS-*"]);
    let eve = person(Some("eve"), Some("eve@evil.com"));
    // self-approved, wrong requester domain and wrong target: every rule fails, first one wins
    let approvers = [eve.clone()];
    let v = check(&p, &input(Some(&eve), &approvers, "eve@evil.com", "SRV-1"));
    assert!(!v.allowed());
    let failed: Vec<&str> = v
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.rule)
        .collect();
    assert_eq!(failed, ["distinct_approver", "requesters", "targets"]);
    assert!(
        v.refusal()
            .unwrap()
            .starts_with("approver eve@evil.com is the requester")
    );

    // good approver, wrong target only
    let a = alice();
    let approvers = [bob()];
    let v = check(
        &p,
        &input(Some(&a), &approvers, "alice@example.com", "SRV-1"),
    );
    assert_eq!(
        v.refusal().unwrap(),
        "target SRV-1 is not allowed for this elevation (allowed targets: WS-*)"
    );

    // everything right
    let v = check(
        &p,
        &input(Some(&a), &approvers, "alice@example.com", "WS-77"),
    );
    assert!(v.allowed(), "{v:?}");
    assert_eq!(v.checks.len(), 5);
}

#[test]
fn bad_glob_is_reported_with_its_position() {
    let err = Policy::compile(&PolicyConfig {
        distinct_approver: true,
        requesters: vec![],
        targets: vec!["WS-*".into(), "LT-[".into()],
        ..PolicyConfig::default()
    })
    .unwrap_err();
    assert!(
        matches!(&err, PolicyError::Glob { list: "targets", index: 1, pattern, .. } if pattern == "LT-["),
        "{err}"
    );
    assert_eq!(err.key(), "targets[1]");
}

#[test]
fn bad_condition_is_reported() {
    let err = Policy::compile(&PolicyConfig {
        condition: Some("fields.x ==".into()),
        ..PolicyConfig::default()
    })
    .unwrap_err();
    assert_eq!(err.key(), "condition");
}

fn conditional(condition: &str) -> Policy {
    Policy::compile(&PolicyConfig {
        condition: Some(condition.into()),
        ..PolicyConfig::default()
    })
    .unwrap()
}

#[test]
fn condition_table() {
    let a = alice();
    let approvers = [bob()];
    let context =
        serde_json::json!({ "fields": { "justified": "Yes", "n": 3 }, "ticket": { "key": "A-1" } });
    let cases = [
        ("fields.justified == 'Yes'", true, "holds"),
        (
            "fields.justified == 'No'",
            false,
            "is not met by this ticket",
        ),
        (
            "fields.missing == 'Yes'",
            false,
            "could not be evaluated for this ticket",
        ),
        ("fields.n", false, "gave a int instead of true or false"),
    ];
    for (condition, pass, text) in cases {
        let p = conditional(condition);
        assert!(p.has_condition());
        let v = check_in_context(
            &p,
            &input(Some(&a), &approvers, "alice@example.com", "WS-1"),
            Some(&context),
        );
        let c = rule(&v, "condition");
        assert_eq!((c.passed, v.allowed()), (pass, pass), "{condition}: {c:?}");
        assert!(c.detail.contains(text), "{condition}: {:?}", c.detail);
    }
}

#[test]
fn condition_without_context_refuses_rather_than_skips() {
    let a = alice();
    let approvers = [bob()];
    let v = check(
        &conditional("true"),
        &input(Some(&a), &approvers, "alice@example.com", "WS-1"),
    );
    assert!(!v.allowed());
    assert!(v.refusal().unwrap().contains("could not be evaluated"));
}

#[test]
fn smuggled_lists_do_not_satisfy_globs() {
    let p = policy(true, &["*@example.com"], &["WS-*"]);
    let cases: [(&str, &str, &str); 4] = [
        ("eve@evil.test,x@example.com", "WS-1", "requesters"),
        ("eve@evil.test@example.com", "WS-1", "requesters"),
        ("alice@example.com", "WS-1,DC01", "targets"),
        ("alice@example.com", "WS-1 DC01", "targets"),
    ];
    for (email, target, failing) in cases {
        let requester = person(Some("r"), Some(email));
        let v = check(&p, &input(Some(&requester), &[], "s", target));
        assert!(!rule(&v, failing).passed, "{email} / {target}");
    }
}

#[test]
fn config_defaults_to_distinct_approver() {
    let c: PolicyConfig = toml::from_str("requesters = [\"*@example.com\"]").unwrap();
    assert!(c.distinct_approver);
    assert!(toml::from_str::<PolicyConfig>("distinct_aprover = false").is_err());
}

fn case_variant(s: &str, flips: &[bool]) -> String {
    s.chars()
        .zip(flips.iter().cycle())
        .map(|(c, up)| {
            if *up {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

proptest! {
    /// An approver who is the requester, by id or by e-mail in any letter case, never passes.
    #[test]
    fn requester_as_approver_never_passes(
        id in "[a-zA-Z0-9-]{1,16}",
        local in "[a-zA-Z0-9.]{1,12}",
        domain in "[a-zA-Z]{1,10}\\.(com|org)",
        flips in proptest::collection::vec(any::<bool>(), 1..8),
        by_id in any::<bool>(),
        extra_approvers in proptest::collection::vec(("[a-z]{1,8}", "[a-z]{1,8}@other\\.net"), 0..3),
        distinct_position in any::<prop::sample::Index>(),
        subject in "[a-z@.]{0,20}",
        target in "[A-Z0-9-]{0,12}",
    ) {
        let email = format!("{local}@{domain}");
        let requester = person(Some(&id), Some(&email));
        let same = if by_id {
            person(Some(&id), Some("someone-else@elsewhere.example"))
        } else {
            person(None, Some(&case_variant(&email, &flips)))
        };
        let mut approvers: Vec<Person> =
            extra_approvers.iter().map(|(i, e)| person(Some(&format!("other-{i}")), Some(e))).collect();
        let at = distinct_position.index(approvers.len() + 1);
        approvers.insert(at, same);
        let v = check(&Policy::default(), &input(Some(&requester), &approvers, &subject, &target));
        prop_assert!(!rule(&v, "distinct_approver").passed);
        prop_assert!(!v.allowed());
    }

    /// The verdict is allowed exactly when no check failed, and then there is no refusal.
    #[test]
    fn allowed_iff_no_refusal(mins in -100i64..3000, target in "[A-Za-z0-9-]{0,10}") {
        let a = alice();
        let approvers = [bob()];
        let mut i = input(Some(&a), &approvers, "alice@example.com", &target);
        i.duration = SignedDuration::from_mins(mins);
        let v = check(&policy(true, &[], &["WS-*"]), &i);
        prop_assert_eq!(v.allowed(), v.refusal().is_none());
    }
}

// ---- hours, min_duration, live-grant limits, approvers, min_approvals ----

fn carol() -> Person {
    Person {
        id: Some("acc-carol".into()),
        email: Some("carol@example.com".into()),
        name: Some("Carol".into()),
    }
}

fn dave() -> Person {
    Person {
        id: Some("acc-dave".into()),
        email: Some("dave@example.com".into()),
        name: Some("Dave".into()),
    }
}

/// A policy from `[mapping.policy]` text, as an administrator writes it.
fn from_toml(text: &str) -> Policy {
    let config: PolicyConfig = toml::from_str(text).unwrap();
    Policy::compile(&config).unwrap()
}

fn compile_error(text: &str) -> PolicyError {
    let config: PolicyConfig = toml::from_str(text).unwrap();
    Policy::compile(&config).unwrap_err()
}

fn ts(text: &str) -> Timestamp {
    text.parse().unwrap()
}

/// Monday 2026-01-05, 10:00 in Berlin.
const MONDAY_MORNING: &str = "2026-01-05T09:00:00Z";
/// Saturday 2026-01-10, 10:15 in Berlin.
const SATURDAY_MORNING: &str = "2026-01-10T09:15:00Z";

fn facts_at(now: &str) -> Facts {
    Facts::at(ts(now))
}

#[test]
fn approval_outside_the_hours_is_denied_with_the_window_and_local_time() {
    let p = from_toml(r#"hours = ["Mon-Fri 07:00-19:00 Europe/Berlin"]"#);
    let (a, approvers) = (alice(), [bob()]);
    let i = input(Some(&a), &approvers, "alice@example.com", "WS-1");
    let cases = [
        (
            MONDAY_MORNING,
            true,
            "approved at Mon 10:00 Europe/Berlin, within Mon-Fri 07:00-19:00 Europe/Berlin",
        ),
        (
            SATURDAY_MORNING,
            false,
            "approved at Sat 10:15 Europe/Berlin, outside the hours this elevation may be granted \
             (Mon-Fri 07:00-19:00 Europe/Berlin); approve it again within those hours",
        ),
        ("2026-01-05T18:00:00Z", false, "Mon 19:00 Europe/Berlin"),
        ("2026-07-06T05:00:00Z", true, "Mon 07:00 Europe/Berlin"),
    ];
    for (now, pass, text) in cases {
        let v = check_at(&p, &i, &facts_at(now), None);
        let c = rule(&v, "hours");
        assert_eq!((c.passed, v.allowed()), (pass, pass), "{now}: {c:?}");
        assert!(c.detail.contains(text), "{now}: {:?}", c.detail);
    }
}

#[test]
fn several_windows_any_of_them_allows() {
    let p = from_toml(
        r#"hours = ["Mon-Fri 07:00-19:00 Europe/Berlin", "Sat 09:00-12:00 America/New_York"]"#,
    );
    let (a, approvers) = (alice(), [bob()]);
    let i = input(Some(&a), &approvers, "alice@example.com", "WS-1");
    // Saturday 10:15 Berlin is 04:15 in New York: outside both.
    let v = check_at(&p, &i, &facts_at(SATURDAY_MORNING), None);
    assert_eq!(
        v.refusal().unwrap(),
        "approved at Sat 10:15 Europe/Berlin, Sat 04:15 America/New_York, outside the hours this \
         elevation may be granted (Mon-Fri 07:00-19:00 Europe/Berlin, Sat 09:00-12:00 \
         America/New_York); approve it again within those hours"
    );
    // Saturday 15:00 UTC is 10:00 in New York.
    assert!(check_at(&p, &i, &facts_at("2026-01-10T15:00:00Z"), None).allowed());
}

#[test]
fn hours_without_a_clock_refuse_rather_than_skip() {
    let p = from_toml(r#"hours = ["Mon-Sun 00:00-24:00 UTC"]"#);
    let (a, approvers) = (alice(), [bob()]);
    let v = check(
        &p,
        &input(Some(&a), &approvers, "alice@example.com", "WS-1"),
    );
    assert!(!v.allowed());
    assert!(v.refusal().unwrap().contains("could not be checked"));
}

#[test]
fn min_duration_table() {
    let p = from_toml(r#"min_duration = "15m""#);
    let (a, approvers) = (alice(), [bob()]);
    for (mins, pass) in [(1, false), (14, false), (15, true), (240, true)] {
        let mut i = input(Some(&a), &approvers, "alice@example.com", "WS-1");
        i.duration = SignedDuration::from_mins(mins);
        let v = check_at(&p, &i, &facts_at(MONDAY_MORNING), None);
        assert_eq!(rule(&v, "min_duration").passed, pass, "{mins}m");
        assert_eq!(v.allowed(), pass, "{mins}m");
    }
    let mut i = input(Some(&a), &approvers, "alice@example.com", "WS-1");
    i.duration = SignedDuration::from_mins(5);
    assert_eq!(
        check(&p, &i).refusal().unwrap(),
        "a grant of 5m is shorter than the 15m this elevation needs at least; ask for 15m or more"
    );
}

#[test]
fn live_grant_limits_table() {
    let p = from_toml("max_active_per_subject = 1\nmax_active_per_target = 2");
    let (a, approvers) = (alice(), [bob()]);
    let i = input(Some(&a), &approvers, "alice@example.com", "WS-1");
    // (subject count, target count, subject rule passes, target rule passes)
    let cases = [
        (Some(0), Some(0), true, true),
        (Some(1), Some(0), false, true),
        (Some(0), Some(1), true, true),
        (Some(0), Some(2), true, false),
        (Some(3), Some(5), false, false),
        (None, Some(0), false, true),
        (Some(0), None, true, false),
    ];
    for (subject, target, subject_ok, target_ok) in cases {
        let facts = Facts {
            live_for_subject: subject,
            live_for_target: target,
            ..facts_at(MONDAY_MORNING)
        };
        let v = check_at(&p, &i, &facts, None);
        let case = format!("{subject:?}/{target:?}");
        assert_eq!(
            rule(&v, "max_active_per_subject").passed,
            subject_ok,
            "{case}"
        );
        assert_eq!(
            rule(&v, "max_active_per_target").passed,
            target_ok,
            "{case}"
        );
        assert_eq!(v.allowed(), subject_ok && target_ok, "{case}");
    }
    let facts = Facts {
        live_for_subject: Some(1),
        live_for_target: Some(0),
        ..facts_at(MONDAY_MORNING)
    };
    assert_eq!(
        check_at(&p, &i, &facts, None).refusal().unwrap(),
        "alice@example.com already holds 1 live grant, and this elevation allows at most 1 live \
         grant for one subject at a time; ask again when one has ended"
    );
}

#[test]
fn approvers_table() {
    let p = from_toml(r#"approvers = ["Bob@Example.com", "ACC-CAROL"]"#);
    let a = alice();
    let anonymous = Person {
        name: Some("Bob".into()),
        ..Person::default()
    };
    // (case, approvers, where they came from, passes, text)
    type Case<'a> = (&'a str, Vec<Person>, ApproverSource, bool, &'a str);
    let cases: Vec<Case> = vec![
        (
            "listed by e-mail, any case",
            vec![bob()],
            ApproverSource::Confirmed,
            true,
            "approved by bob@example.com, who may approve",
        ),
        (
            "listed by id, any case",
            vec![person(Some("acc-carol"), None)],
            ApproverSource::Confirmed,
            true,
            "acc-carol",
        ),
        (
            "not listed",
            vec![dave()],
            ApproverSource::Confirmed,
            false,
            "approved by dave@example.com, who may not approve this elevation (allowed approvers: bob@example.com, acc-carol)",
        ),
        (
            "one listed among others",
            vec![dave(), bob()],
            ApproverSource::Confirmed,
            true,
            "bob@example.com",
        ),
        (
            "display name only",
            vec![anonymous],
            ApproverSource::Confirmed,
            false,
            "names no identifiable approver",
        ),
        (
            "nobody",
            vec![],
            ApproverSource::Confirmed,
            false,
            "names no identifiable approver",
        ),
        (
            "trusted delivery",
            vec![bob()],
            ApproverSource::Delivery,
            true,
            "who may approve",
        ),
        (
            "actor of an unconfirmed delivery",
            vec![bob()],
            ApproverSource::Unconfirmed,
            false,
            "not who gave it",
        ),
    ];
    for (case, approvers, from, pass, text) in cases {
        let facts = Facts {
            approvers_from: from,
            ..facts_at(MONDAY_MORNING)
        };
        let v = check_at(
            &p,
            &input(Some(&a), &approvers, "alice@example.com", "WS-1"),
            &facts,
            None,
        );
        let c = rule(&v, "approvers");
        assert_eq!(c.passed, pass, "{case}: {c:?}");
        assert!(c.detail.contains(text), "{case}: {:?}", c.detail);
        assert_eq!(v.allowed(), pass, "{case}");
    }
}

#[test]
fn malformed_approver_groups_and_patterns_are_refused_at_load() {
    for (entries, want) in [
        (r#"["group:Help Desk"]"#, "group is written"),
        (r#"["group:"]"#, "group is written"),
        (r#"["bob@example.com", "*@example.com"]"#, "pattern"),
        (r#"["  "]"#, "empty"),
        (r#"["bob @example.com"]"#, "space"),
    ] {
        let err = compile_error(&format!("approvers = {entries}"));
        assert!(
            matches!(err, PolicyError::Approver { .. }),
            "{entries}: {err}"
        );
        assert!(err.to_string().contains(want), "{entries}: {err}");
    }
    let err = compile_error(r#"approvers = ["a@x.org", "group:Leads!"]"#);
    assert_eq!(err.key(), "approvers[1]");
    // A well-formed group compiles; whether the identity map has it is checked at load.
    let p = from_toml(r#"approvers = ["group:helpdesk-leads", "BOB@example.com"]"#);
    assert_eq!(
        p.approver_groups().collect::<Vec<_>>(),
        vec![(0, "helpdesk-leads")]
    );
}

#[test]
fn min_approvals_table() {
    let p = from_toml("min_approvals = 2");
    let a = alice();
    let bob_other_account = person(Some("acc-bob-2"), Some("BOB@example.com"));
    // Linked through a chain: x shares bob's id, y shares x's e-mail.
    let x = person(Some("acc-bob"), Some("x@example.com"));
    let y = person(Some("acc-y"), Some("x@example.com"));
    type Case<'a> = (&'a str, Vec<Person>, bool, &'a str);
    let cases: Vec<Case> = vec![
        (
            "two people",
            vec![bob(), carol()],
            true,
            "approved by 2 distinct approvers other than the requester and the subject (bob@example.com, carol@example.com); 2 required",
        ),
        (
            "one person",
            vec![bob()],
            false,
            "this elevation needs 2 distinct approvers, but only 1 approver other than the requester and the subject approved (bob@example.com)",
        ),
        (
            "same person twice, by e-mail",
            vec![bob(), bob_other_account],
            false,
            "only 1",
        ),
        (
            "same person through a chain",
            vec![bob(), x, y],
            false,
            "only 1",
        ),
        (
            "anonymous does not count",
            vec![
                bob(),
                Person {
                    name: Some("C".into()),
                    ..Person::default()
                },
            ],
            false,
            "only 1",
        ),
        (
            "nobody",
            vec![],
            false,
            "no approver other than the requester and the subject approved",
        ),
        (
            "three people",
            vec![bob(), carol(), dave()],
            true,
            "approved by 3",
        ),
    ];
    for (case, approvers, pass, text) in cases {
        let v = check_at(
            &p,
            &input(Some(&a), &approvers, "alice@example.com", "WS-1"),
            &facts_at(MONDAY_MORNING),
            None,
        );
        let c = rule(&v, "min_approvals");
        assert_eq!(c.passed, pass, "{case}: {c:?}");
        assert!(c.detail.contains(text), "{case}: {:?}", c.detail);
    }
}

#[test]
fn min_approvals_counts_only_allowed_approvers_who_are_not_requester_or_subject() {
    let a = alice();
    let p = from_toml(
        "approvers = [\"bob@example.com\", \"carol@example.com\", \"alice@example.com\"]\nmin_approvals = 2",
    );
    let facts = facts_at(MONDAY_MORNING);
    // Dave is not allowed: only Bob counts.
    let approvers = [bob(), dave()];
    let v = check_at(
        &p,
        &input(Some(&a), &approvers, "alice@example.com", "WS-1"),
        &facts,
        None,
    );
    assert!(
        rule(&v, "min_approvals")
            .detail
            .contains("only 1 allowed approver approved (bob@example.com)"),
        "{v:?}"
    );
    // The requester is listed but never counts (and distinct_approver refuses anyway).
    let approvers = [bob(), alice()];
    let v = check_at(
        &p,
        &input(Some(&a), &approvers, "alice@example.com", "WS-1"),
        &facts,
        None,
    );
    assert!(!rule(&v, "min_approvals").passed);
    assert!(!rule(&v, "distinct_approver").passed);
    // Carol as the subject does not count either.
    let approvers = [bob(), carol()];
    let v = check_at(
        &p,
        &input(Some(&a), &approvers, "carol@example.com", "WS-1"),
        &facts,
        None,
    );
    assert!(!rule(&v, "min_approvals").passed);
    // Bob and Carol for Alice: allowed.
    let v = check_at(
        &p,
        &input(Some(&a), &approvers, "alice@example.com", "WS-1"),
        &facts,
        None,
    );
    assert!(v.allowed(), "{v:?}");
    // An unconfirmed actor never counts.
    let facts = Facts {
        approvers_from: ApproverSource::Unconfirmed,
        ..facts
    };
    let v = check_at(
        &from_toml("min_approvals = 1"),
        &input(Some(&a), &[bob()], "alice@example.com", "WS-1"),
        &facts,
        None,
    );
    assert!(
        rule(&v, "min_approvals")
            .detail
            .contains("without saying who gave it"),
        "{v:?}"
    );
}

#[test]
fn limits_out_of_range_are_refused_at_load() {
    for (text, key, want) in [
        (
            "max_active_per_subject = 0",
            "max_active_per_subject",
            "refuse every request",
        ),
        (
            "max_active_per_target = -3",
            "max_active_per_target",
            "refuse every request",
        ),
        (
            "max_active_per_target = 10001",
            "max_active_per_target",
            "more than the 10000 allowed",
        ),
        ("min_approvals = 0", "min_approvals", "refuse every request"),
        (
            "min_approvals = 51",
            "min_approvals",
            "more than the 50 allowed",
        ),
        (
            "approvers = [\"a@x.org\", \"A@X.org\"]\nmin_approvals = 2",
            "min_approvals",
            "lists only 1",
        ),
        ("min_duration = \"0s\"", "min_duration", "longer than zero"),
        (
            "min_duration = \"25h\"",
            "min_duration",
            "no request could ever pass",
        ),
        ("min_duration = \"soon\"", "min_duration", "not a duration"),
        (
            "hours = [\"Mon-Fri 07:00-19:00 UTC\", \"weekdays 9-5\"]",
            "hours[1]",
            "not a window",
        ),
    ] {
        let err = compile_error(text);
        assert_eq!(err.key(), key, "{text}: {err}");
        assert!(err.why().contains(want), "{text}: {err}");
    }
}

#[test]
fn absent_keys_add_no_checks() {
    let (a, approvers) = (alice(), [bob()]);
    let v = check_at(
        &Policy::default(),
        &input(Some(&a), &approvers, "alice@example.com", "WS-1"),
        &facts_at(SATURDAY_MORNING),
        None,
    );
    let rules: Vec<&str> = v.checks.iter().map(|c| c.rule).collect();
    assert_eq!(
        rules,
        [
            "distinct_approver",
            "requesters",
            "targets",
            "scopes",
            "duration",
            "unresolved_revoke"
        ]
    );
    assert!(!Policy::default().needs_live_counts());
}

#[test]
fn every_rule_reports_in_order_and_the_first_failure_is_the_reason() {
    let p = from_toml(
        r#"
approvers = ["carol@example.com"]
min_approvals = 1
targets = ["WS-*"]
min_duration = "30m"
hours = ["Mon-Fri 07:00-19:00 Europe/Berlin"]
max_active_per_subject = 1
max_active_per_target = 1
"#,
    );
    assert!(p.needs_live_counts());
    let a = alice();
    let facts = Facts {
        live_for_subject: Some(1),
        live_for_target: Some(1),
        unresolved_revoke: Some(stuck_revoke("alice@example.com", "SRV-1")),
        ..facts_at(SATURDAY_MORNING)
    };
    let approvers = [bob()];
    let mut i = input(Some(&a), &approvers, "alice@example.com", "SRV-1");
    i.duration = SignedDuration::from_mins(10);
    let v = check_at(&p, &i, &facts, None);
    let failed: Vec<&str> = v
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.rule)
        .collect();
    assert_eq!(
        failed,
        [
            "approvers",
            "min_approvals",
            "targets",
            "min_duration",
            "hours",
            "max_active_per_subject",
            "max_active_per_target",
            "unresolved_revoke"
        ]
    );
    assert!(
        v.refusal()
            .unwrap()
            .starts_with("approved by bob@example.com, who may not approve")
    );

    // Fix each in turn until it is allowed.
    let approvers = [carol()];
    let mut i = input(Some(&a), &approvers, "alice@example.com", "WS-1");
    i.duration = SignedDuration::from_mins(30);
    let facts = Facts {
        live_for_subject: Some(0),
        live_for_target: Some(0),
        ..facts_at(MONDAY_MORNING)
    };
    let v = check_at(&p, &i, &facts, None);
    assert!(v.allowed(), "{v:?}");
    assert_eq!(v.checks.len(), 12);
}

/// A grant of `subject` on `target` whose revoke kept failing.
fn stuck_revoke(subject: &str, target: &str) -> UnresolvedRevoke {
    UnresolvedRevoke {
        grant: uuid::Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0042),
        ticket_key: "ACCESS-7".into(),
        subject: subject.into(),
        target: target.into(),
    }
}

#[test]
fn an_unresolved_revoke_refuses_every_grant_of_its_subject_or_on_its_target() {
    let (a, approvers) = (alice(), [bob()]);
    let refusal = "grant 01930000-0000-7000-8000-000000000042 (ticket ACCESS-7) for \
                   alice@example.com on WS-0042 could not be revoked yet (revoke_failed); no new \
                   grant for this subject or target until it is revoked";
    // (what the store found, what policy says)
    let cases: [(Option<UnresolvedRevoke>, Option<&str>); 4] = [
        (None, None),
        // Another grant of the same subject, elsewhere.
        (
            Some(stuck_revoke("alice@example.com", "WS-0042")),
            Some(refusal),
        ),
        // Someone else's grant on the same target.
        (
            Some(stuck_revoke("carol@example.com", "WS-1")),
            Some("for carol@example.com on WS-1 could not be revoked yet"),
        ),
        // The mapping's own policy has no say: even the laxest one refuses.
        (
            Some(stuck_revoke("alice@example.com", "WS-1")),
            Some("no new grant for this subject or target until it is revoked"),
        ),
    ];
    let lax = from_toml("distinct_approver = false");
    for (blocking, want) in cases {
        let facts = Facts {
            unresolved_revoke: blocking.clone(),
            ..facts_at(MONDAY_MORNING)
        };
        for p in [&Policy::default(), &lax] {
            let v = check_at(
                p,
                &input(Some(&a), &approvers, "alice@example.com", "WS-1"),
                &facts,
                None,
            );
            let check = v.checks.iter().find(|c| c.rule == "unresolved_revoke");
            let check = check.expect("the rule is always reported");
            match want {
                None => {
                    assert!(v.allowed(), "{blocking:?}: {v:?}");
                    assert_eq!(
                        check.detail,
                        "no grant for alice@example.com or on WS-1 is waiting for a failed revoke"
                    );
                }
                Some(want) => {
                    assert!(!v.allowed(), "{blocking:?}");
                    let reason = v.refusal().unwrap();
                    assert!(reason.contains(want), "{reason}");
                }
            }
        }
    }
    // Before an approval it is reported too, so the request summary lists it as a blocker.
    let facts = Facts {
        unresolved_revoke: Some(stuck_revoke("alice@example.com", "WS-0042")),
        ..facts_at(MONDAY_MORNING)
    };
    let v = check_before_approval(
        &Policy::default(),
        &input(Some(&a), &[], "alice@example.com", "WS-1"),
        &facts,
        None,
    );
    assert_eq!(v.refusal().as_deref(), Some(refusal));
    // A dry run without facts reads no store and so has nothing to report.
    let v = check(
        &Policy::default(),
        &input(Some(&a), &approvers, "alice@example.com", "WS-1"),
    );
    assert!(v.checks.iter().all(|c| c.rule != "unresolved_revoke"));
}

fn window_text(days: &[bool; 7], start: u16, end: u16, zone: &str) -> String {
    const NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let days: Vec<&str> = NAMES
        .iter()
        .zip(days)
        .filter(|(_, on)| **on)
        .map(|(n, _)| *n)
        .collect();
    format!(
        "{} {:02}:{:02}-{:02}:{:02} {zone}",
        days.join(","),
        start / 60,
        start % 60,
        end / 60,
        end % 60
    )
}

proptest! {
    /// Whatever the policy and the request, an allowed grant is never longer than the ceiling
    /// and never shorter than the policy's minimum.
    #[test]
    fn no_allowed_grant_is_longer_than_the_cap(
        secs in -100_000i64..200_000,
        min_mins in proptest::option::of(1i64..600),
    ) {
        let config = PolicyConfig {
            min_duration: min_mins.map(|m| format!("{m}m")),
            ..PolicyConfig::default()
        };
        let p = Policy::compile(&config).unwrap();
        let (a, approvers) = (alice(), [bob()]);
        let mut i = input(Some(&a), &approvers, "alice@example.com", "WS-1");
        i.duration = SignedDuration::from_secs(secs);
        let v = check_at(&p, &i, &facts_at(MONDAY_MORNING), None);
        if v.allowed() {
            prop_assert!(i.duration > SignedDuration::ZERO);
            prop_assert!(i.duration <= DURATION_CEILING);
            if let Some(m) = min_mins {
                prop_assert!(i.duration >= SignedDuration::from_mins(m));
            }
        }
    }

    /// An approver who is the requester never passes, whatever else the policy allows or
    /// requires and however many other people approved.
    #[test]
    fn requester_among_approvers_never_passes_any_policy(
        others in proptest::collection::vec("[a-z]{1,8}", 0..4),
        min_approvals in proptest::option::of(1i64..3),
        list_requester in any::<bool>(),
        upper in any::<bool>(),
        at in any::<prop::sample::Index>(),
    ) {
        let a = alice();
        let mut approvers: Vec<Person> = others
            .iter()
            .map(|o| person(Some(&format!("acc-{o}")), Some(&format!("{o}@other.example"))))
            .collect();
        let me = if upper {
            person(None, Some("ALICE@EXAMPLE.COM"))
        } else {
            person(Some("acc-alice"), None)
        };
        approvers.insert(at.index(approvers.len() + 1), me);
        let mut listed: Vec<String> = others.iter().map(|o| format!("{o}@other.example")).collect();
        if list_requester || listed.is_empty() {
            listed.push("alice@example.com".into());
        }
        let config = PolicyConfig {
            approvers: listed,
            min_approvals: min_approvals.filter(|n| *n == 1),
            ..PolicyConfig::default()
        };
        let p = Policy::compile(&config).unwrap();
        let v = check_at(&p, &input(Some(&a), &approvers, "svc@example.com", "WS-1"), &facts_at(MONDAY_MORNING), None);
        prop_assert!(!v.allowed());
        prop_assert!(!rule(&v, "distinct_approver").passed);
    }

    /// Outside every window, an approval never passes; inside one it passes the hours rule.
    /// "Inside" is computed independently from the zoned date-time.
    #[test]
    fn outside_hours_never_passes(
        days in proptest::array::uniform7(any::<bool>()),
        start in 0u16..1440,
        len in 1u16..1440,
        secs in 1_600_000_000i64..1_900_000_000,
        berlin in any::<bool>(),
    ) {
        prop_assume!(days.iter().any(|d| *d));
        let end = (start + len) % 1440;
        let end = if end == 0 { 1440 } else { end };
        prop_assume!(end != start);
        let zone = if berlin { "Europe/Berlin" } else { "UTC" };
        let text = window_text(&days, start, end, zone);
        let p = from_toml(&format!("hours = [{text:?}]"));
        let now = Timestamp::from_second(secs).unwrap();
        let local = now.to_zoned_datetime(jiff::tz::TimeZone::get(zone).unwrap());
        let minute = u16::try_from(i32::from(local.hour()) * 60 + i32::from(local.minute())).unwrap();
        let day = usize::try_from(local.weekday().to_monday_zero_offset()).unwrap();
        let yesterday = (day + 6) % 7;
        let inside = if start < end {
            days[day] && (start..end).contains(&minute)
        } else {
            (days[day] && minute >= start) || (days[yesterday] && minute < end)
        };
        let (a, approvers) = (alice(), [bob()]);
        let v = check_at(&p, &input(Some(&a), &approvers, "alice@example.com", "WS-1"), &facts_at(&now.to_string()), None);
        prop_assert_eq!(rule(&v, "hours").passed, inside, "{} at {}", text, local);
        if !inside {
            prop_assert!(!v.allowed());
        }
    }
}
