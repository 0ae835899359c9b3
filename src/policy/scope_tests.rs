//! Scopes and identities in policy decisions: which scopes a mapping may grant, and how the
//! identity map makes separation of duties, `approvers` and `min_approvals` compare people.

use std::path::Path;
use std::sync::Arc;

use jiff::SignedDuration;
use proptest::prelude::*;

use super::scope::ScopeCatalog;
use super::*;
use crate::identity::IdentityMap;
use crate::ticket::Person;

const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn catalog() -> ScopeCatalog {
    ScopeCatalog::from_config_text(
        Path::new("jitbridge.toml"),
        &format!(
            "[scopes.app.7zip]\npath = 'C:\\Program Files\\7-Zip\\7z.exe'\nsha256 = \"{HASH}\"\n\
             [scopes.service.spooler]\nname = \"Spooler\"\n"
        ),
    )
    .unwrap()
}

const MAP: &str = r#"
[[person]]
subject = 'CORP\alice'
match = ["alice@example.com", "jira:acc-alice-admin"]

[[person]]
subject = 'CORP\bob'
match = ["bob@example.com", "jira:acc-bob"]
groups = ["helpdesk-leads"]

[[person]]
subject = 'CORP\carol'
match = ["carol@example.com"]
"#;

fn identities() -> IdentityMap {
    IdentityMap::parse(Path::new("identities.toml"), MAP, &["jira".into()]).unwrap()
}

fn policy(toml_text: &str) -> Policy {
    let config: PolicyConfig = toml::from_str(toml_text).unwrap();
    Policy::compile(&config)
        .unwrap()
        .bind(Arc::new(catalog()), Arc::new(identities()), "jira")
}

fn person(id: Option<&str>, email: Option<&str>) -> Person {
    Person {
        id: id.map(str::to_owned),
        email: email.map(str::to_owned),
        name: Some("Same Display Name".into()),
    }
}

fn alice() -> Person {
    person(Some("acc-alice"), Some("alice@example.com"))
}

fn decide(
    p: &Policy,
    requester: &Person,
    approvers: &[Person],
    subject: &str,
    scope: &str,
) -> Verdict {
    check(
        p,
        &PolicyInput {
            requester: Some(requester),
            approvers,
            subject,
            target: "WS-1",
            scope,
            duration: SignedDuration::from_mins(60),
        },
    )
}

fn scope_check(v: &Verdict) -> &Check {
    v.checks.iter().find(|c| c.rule == "scopes").unwrap()
}

#[test]
fn without_a_scopes_key_only_local_admin_is_granted() {
    let p = policy("");
    let bob = [person(Some("acc-bob"), None)];
    assert!(decide(&p, &alice(), &bob, "alice@example.com", "local-admin").allowed());
    let v = decide(&p, &alice(), &bob, "alice@example.com", "app:7zip");
    assert_eq!(
        v.refusal().unwrap(),
        "scope app:7zip may not be granted by this elevation (allowed scopes: local-admin)"
    );
}

#[test]
fn scopes_table() {
    let bob = [person(Some("acc-bob"), None)];
    let cases: &[(&str, &str, bool, &str)] = &[
        (
            r#"scopes = ["app:*"]"#,
            "app:7zip",
            true,
            r"C:\Program Files\7-Zip\7z.exe",
        ),
        (
            r#"scopes = ["app:*"]"#,
            "app:foo",
            false,
            "app:foo is not in the allow-list [scopes.app] of jitbridge.toml",
        ),
        (
            r#"scopes = ["app:*"]"#,
            "local-admin",
            false,
            "scope local-admin may not be granted by this elevation (allowed scopes: app:*)",
        ),
        (
            r#"scopes = ["service:spooler", "local-admin"]"#,
            "service:spooler",
            true,
            "Spooler",
        ),
        (
            r#"scopes = ["*"]"#,
            "driver-install",
            true,
            "installing device drivers",
        ),
        (
            r#"scopes = ["*"]"#,
            "script:nope",
            false,
            "script:nope is not in the allow-list [scopes.script] of jitbridge.toml",
        ),
        (
            r#"scopes = ["*"]"#,
            "registry:hklm",
            false,
            "is not a scope jitbridge knows",
        ),
    ];
    for (config, scope, allowed, detail) in cases {
        let v = decide(&policy(config), &alice(), &bob, "alice@example.com", scope);
        let c = scope_check(&v);
        assert_eq!(c.passed, *allowed, "{config} / {scope}: {c:?}");
        assert!(
            c.detail.contains(detail),
            "{config} / {scope}: {}",
            c.detail
        );
    }
}

#[test]
fn malformed_scopes_lists_are_refused_at_load() {
    for (text, key) in [
        ("scopes = []", "scopes[0]"),
        (r#"scopes = ["local-admin", "admin"]"#, "scopes[1]"),
        (r#"scopes = ["app:"]"#, "scopes[0]"),
    ] {
        let config: PolicyConfig = toml::from_str(text).unwrap();
        let err = Policy::compile(&config).unwrap_err();
        assert_eq!(err.key(), key, "{text}: {err}");
    }
}

#[test]
fn a_second_account_of_the_requester_cannot_approve() {
    let p = policy("");
    // Alice's admin account: another id, no e-mail, same directory subject.
    let admin_account = [person(Some("acc-alice-admin"), None)];
    let v = decide(
        &p,
        &alice(),
        &admin_account,
        "alice@example.com",
        "local-admin",
    );
    assert_eq!(
        v.refusal().unwrap(),
        "approver acc-alice-admin and the requester alice@example.com are the same person \
         (CORP\\alice in the identity map); a request cannot be approved by the person who raised it"
    );
}

#[test]
fn an_approver_mapped_to_the_grant_subject_cannot_approve() {
    let p = policy("distinct_approver = false");
    let carol = person(None, Some("carol@example.com"));
    let admin_account = [person(Some("acc-alice-admin"), None)];
    for subject in [r"CORP\alice", r"corp\ALICE", "alice@example.com"] {
        let v = decide(&p, &carol, &admin_account, subject, "local-admin");
        assert!(
            v.refusal()
                .unwrap()
                .contains("would receive the privilege; nobody can approve their own elevation"),
            "{subject}: {v:?}"
        );
    }
}

#[test]
fn group_approvers_come_from_the_identity_map() {
    let p = policy(r#"approvers = ["group:helpdesk-leads"]"#);
    let bob = [person(Some("acc-bob"), None)];
    assert!(decide(&p, &alice(), &bob, "alice@example.com", "local-admin").allowed());
    let carol = [person(None, Some("carol@example.com"))];
    let v = decide(&p, &alice(), &carol, "alice@example.com", "local-admin");
    assert_eq!(
        v.refusal().unwrap(),
        "approved by carol@example.com, who may not approve this elevation (allowed approvers: \
         group:helpdesk-leads)"
    );
    assert_eq!(
        p.who_may_approve(),
        "group helpdesk-leads (CORP\\bob) (never the requester or the person receiving the privilege)"
    );
}

#[test]
fn approvers_may_be_named_by_subject_or_any_mapped_account() {
    let bob_by_id = [person(Some("acc-bob"), None)];
    for entry in [r"CORP\bob", "bob@example.com", "acc-bob"] {
        let p = policy(&format!("approvers = [{entry:?}]"));
        assert!(
            decide(&p, &alice(), &bob_by_id, "alice@example.com", "local-admin").allowed(),
            "{entry}"
        );
    }
}

#[test]
fn two_accounts_of_one_person_count_as_one_approval() {
    let p = policy("min_approvals = 2");
    let bob_twice = [
        person(Some("acc-bob"), None),
        person(None, Some("BOB@example.com")),
    ];
    let v = decide(&p, &alice(), &bob_twice, "alice@example.com", "local-admin");
    assert!(
        v.refusal()
            .unwrap()
            .starts_with("this elevation needs 2 distinct approvers, but only 1 approver"),
        "{v:?}"
    );
    let two_people = [
        person(Some("acc-bob"), None),
        person(None, Some("carol@example.com")),
    ];
    assert!(
        decide(
            &p,
            &alice(),
            &two_people,
            "alice@example.com",
            "local-admin"
        )
        .allowed()
    );
}

#[test]
fn display_names_never_make_two_people_one() {
    let p = policy("");
    // Same display name as Alice, different accounts, unmapped: a different person.
    let stranger = [person(Some("acc-zed"), Some("zed@example.com"))];
    assert!(decide(&p, &alice(), &stranger, "alice@example.com", "local-admin").allowed());
}

#[test]
fn before_approval_only_the_rules_that_need_no_approver_are_judged() {
    let p = policy(
        r#"approvers = ["group:helpdesk-leads"]
min_approvals = 1
targets = ["LT-*"]"#,
    );
    let v = check_before_approval(
        &p,
        &PolicyInput {
            requester: Some(&alice()),
            approvers: &[],
            subject: "alice@example.com",
            target: "WS-1",
            scope: "app:foo",
            duration: SignedDuration::from_mins(60),
        },
        &Facts::at(jiff::Timestamp::UNIX_EPOCH),
        None,
    );
    let failed: Vec<&str> = v
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.rule)
        .collect();
    assert_eq!(failed, ["targets", "scopes"]);
}

proptest! {
    /// Whatever the identity map says, an approval by an account mapped to the requester's
    /// directory subject never grants, and neither does one mapped to the grant's subject.
    #[test]
    fn an_approver_equal_to_the_requester_under_any_identity_mapping_never_grants(
        owners in prop::collection::vec(prop::option::of(0usize..3), 2..8),
        requester_pick in any::<prop::sample::Index>(),
        approver_pick in any::<prop::sample::Index>(),
        shout in any::<bool>(),
        distinct in any::<bool>(),
    ) {
        // Account i: id "acc-i", e-mail "ui@example.com"; owners[i] = the subject it maps to.
        let mut text = String::new();
        for s in 0..3 {
            let accounts: Vec<String> = owners.iter().enumerate()
                .filter(|(_, o)| **o == Some(s))
                .flat_map(|(i, _)| [format!("\"jira:acc-{i}\""), format!("\"u{i}@example.com\"")])
                .collect();
            if !accounts.is_empty() {
                text.push_str(&format!("[[person]]\nsubject = 'CORP\\p{s}'\nmatch = [{}]\n", accounts.join(", ")));
            }
        }
        let map = IdentityMap::parse(Path::new("i.toml"), &text, &["jira".into()]).unwrap();
        let config: PolicyConfig = toml::from_str(&format!("distinct_approver = {distinct}")).unwrap();
        let p = Policy::compile(&config).unwrap().bind(Arc::new(catalog()), Arc::new(map), "jira");
        // The approver by e-mail only (in any case), as some approval records name them.
        let account = |i: usize| {
            let email = format!("u{i}@example.com");
            person(None, Some(&if shout { email.to_uppercase() } else { email }))
        };
        let r = requester_pick.index(owners.len());
        // An approver sharing the requester's subject (or the requester's own account).
        let same: Vec<usize> = (0..owners.len())
            .filter(|&i| i == r || (owners[i].is_some() && owners[i] == owners[r]))
            .collect();
        let a = same[approver_pick.index(same.len())];
        let approvers = [account(a)];
        if distinct {
            // The requester as the ITSM reports them: id and e-mail.
            let requester = person(Some(&format!("acc-{r}")), Some(&format!("u{r}@example.com")));
            let v = decide(&p, &requester, &approvers, "someone@example.com", "local-admin");
            prop_assert!(!v.allowed(), "requester {r}, approver {a}, map:\n{text}");
        }
        // The approver never approves a grant to themself, by subject or by e-mail.
        let subject = match owners[a] {
            Some(s) => format!("CORP\\p{s}"),
            None => format!("u{a}@example.com"),
        };
        let v = decide(&p, &person(Some("acc-zzz"), None), &approvers, &subject, "local-admin");
        prop_assert!(!v.allowed(), "approver {a} for subject {subject}, map:\n{text}");
    }
}
