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
    assert_eq!(v.checks.len(), 4);
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
