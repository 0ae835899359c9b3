//! Mappings against the scope allow-list and the identity map: what only the whole
//! configuration can tell is checked at load, with the line to fix.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::tests::jira_event;
use super::*;
use crate::config::Problem;
use crate::identity::IdentityMap;
use crate::policy::scope::ScopeCatalog;

const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn known() -> Known {
    let scopes = ScopeCatalog::from_config_text(
        Path::new("jitbridge.toml"),
        &format!("[scopes.app.7zip]\npath = '/usr/bin/7z'\nsha256 = \"{HASH}\"\n"),
    )
    .unwrap();
    let identities = IdentityMap::parse(
        Path::new("identities.toml"),
        "[[person]]\nsubject = 'CORP\\alice'\nmatch = [\"alice@example.com\"]\n\
         [[person]]\nsubject = 'CORP\\bob'\nmatch = [\"jira:5b10ac8d82e05b22cc7d4ef5\"]\ngroups = [\"leads\"]\n",
        &["jira".into()],
    )
    .unwrap();
    Known {
        connectors: vec!["jira".into()],
        providers: vec!["endpoint-agent".into()],
        scopes: Arc::new(scopes),
        identities: Arc::new(identities),
    }
}

/// A mapping with `scope` as its grant scope and `policy` as its `[mapping.policy]` body.
fn mapping(scope: &str, policy: &str) -> String {
    format!(
        r#"[[mapping]]
name = "m"
connector = "jira"
when = 'true'

[mapping.grant]
subject  = "{{{{ requester.subject | default(requester.email) }}}}"
target   = "WS-1"
scope    = "{scope}"
duration = "1h"
max_duration = "4h"
provider = "endpoint-agent"

[mapping.on]
approve = {{ status = ["Approved"] }}

[mapping.policy]
{policy}
"#
    )
}

fn load(text: &str) -> Result<MappingSet, Vec<Problem>> {
    MappingSet::from_files(&[(PathBuf::from("m.toml"), text.to_owned())], &known())
}

fn only_problem(text: &str) -> Problem {
    let problems = load(text).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    problems.into_iter().next().unwrap()
}

#[test]
fn a_literal_scope_outside_the_allow_list_is_a_load_error() {
    let p = only_problem(&mapping("app:foo", r#"scopes = ["app:*"]"#));
    assert_eq!(
        (p.key.as_str(), p.line),
        ("mapping[0].grant.scope", Some(9))
    );
    assert!(
        p.why.contains(
            "app:foo is not in the allow-list [scopes.app] of jitbridge.toml; defined: app:7zip"
        ),
        "{}",
        p.why
    );
}

#[test]
fn a_literal_scope_the_policy_does_not_allow_is_a_load_error() {
    let p = only_problem(&mapping("app:7zip", ""));
    assert_eq!(p.key, "mapping[0].grant.scope");
    assert!(
        p.why.contains(
            "app:7zip is not among the scopes this mapping's policy allows (local-admin)"
        ),
        "{}",
        p.why
    );
    assert!(load(&mapping("app:7zip", r#"scopes = ["app:7zip"]"#)).is_ok());
}

#[test]
fn policy_scopes_must_name_defined_entries() {
    let p = only_problem(&mapping(
        "local-admin",
        r#"scopes = ["local-admin", "service:spooler"]"#,
    ));
    assert_eq!(
        (p.key.as_str(), p.line),
        ("mapping[0].policy.scopes[1]", Some(18))
    );
    assert!(
        p.why.contains("service:spooler is not in the allow-list"),
        "{}",
        p.why
    );
    // Globs need not match anything yet.
    assert!(
        load(&mapping(
            "local-admin",
            r#"scopes = ["local-admin", "service:*"]"#
        ))
        .is_ok()
    );
}

#[test]
fn group_approvers_must_exist_in_the_identity_map() {
    let p = only_problem(&mapping(
        "local-admin",
        r#"approvers = ["group:leads", "group:admins"]"#,
    ));
    assert_eq!(
        (p.key.as_str(), p.line),
        ("mapping[0].policy.approvers[1]", Some(18))
    );
    assert!(
        p.why
            .contains("group \"admins\" is not listed in the identity map"),
        "{}",
        p.why
    );
}

#[test]
fn min_approvals_above_the_people_approvers_and_their_groups_name_is_an_error_at_its_line() {
    // `leads` has one member (Bob); with Carol listed, two people could approve at most.
    let p = only_problem(&mapping(
        "local-admin",
        "approvers = [\"group:leads\", \"carol@example.com\"]\nmin_approvals = 3",
    ));
    assert_eq!(
        (p.key.as_str(), p.line),
        ("mapping[0].policy.min_approvals", Some(19))
    );
    assert!(
        p.why
            .contains("3 distinct approvers are required but `approvers` names at most 2 people"),
        "{}",
        p.why
    );
    assert!(p.why.contains("lower min_approvals"), "{}", p.why);
    // As many as could approve is fine.
    assert!(
        load(&mapping(
            "local-admin",
            "approvers = [\"group:leads\", \"carol@example.com\"]\nmin_approvals = 2",
        ))
        .is_ok()
    );
}

#[test]
fn templates_see_the_directory_subject_of_each_person() {
    let set = load(&mapping("local-admin", "")).unwrap();
    let m = set.get("m").unwrap();
    let event = jira_event();
    assert_eq!(m.render_grant(&event).unwrap().subject, r"CORP\alice");
    let ctx = m.context(&event);
    assert_eq!(
        ctx["actor"]["subject"], r"CORP\bob",
        "mapped by Jira account id"
    );
    assert_eq!(ctx["approval"]["approvers"][0]["subject"], r"CORP\bob");
    // Unmapped: null, so `default` falls back.
    let mut event = jira_event();
    event.requester.as_mut().unwrap().email = Some("zed@example.com".into());
    assert_eq!(m.render_grant(&event).unwrap().subject, "zed@example.com");
}
