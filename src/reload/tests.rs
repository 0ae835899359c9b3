use std::path::PathBuf;

use super::*;
use crate::grants::GrantState;

fn fixed() -> Fixed {
    Fixed {
        listen: "127.0.0.1:8080".parse().unwrap(),
        max_body_bytes: 1 << 20,
        request_timeout: Duration::from_secs(30),
        admin_listen: None,
        store: StoreLocation::Sqlite(PathBuf::from("/var/lib/jitbridge/jitbridge.db")),
        workers: WorkerSettings {
            apply_window: Duration::from_secs(900),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            revoke_retry_max: Duration::from_secs(60),
            revoke_alarm_after: 5,
            writeback_max_attempts: 20,
        },
    }
}

fn live_grant(key: &str, connector: &str, provider: &str, state: GrantState) -> Grant {
    let mut g = crate::providers::command::example_grant();
    g.ticket.key = key.into();
    g.ticket.connector = connector.into();
    g.provider = provider.into();
    g.state = state;
    g
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn unchanged_start_up_settings_need_no_restart() {
    assert!(restart_needed(&fixed(), &fixed()).is_empty());
}

#[test]
fn a_new_listener_address_or_store_needs_a_restart_and_names_each_key() {
    let mut new = fixed();
    new.listen = "0.0.0.0:8443".parse().unwrap();
    new.store = StoreLocation::Postgres("postgres://db/jitbridge".into());
    new.workers.retry_max = Duration::from_secs(10);
    assert_eq!(
        restart_needed(&fixed(), &new),
        vec!["server.listen", "store.url", "[workers]"]
    );
}

#[test]
fn removing_the_provider_of_an_active_grant_names_that_grant() {
    let live = [
        live_grant("IT-1", "jira", "endpoint-agent", GrantState::Active),
        live_grant("IT-2", "jira", "script", GrantState::Active),
    ];
    let found = still_used(&live, false, &names(&[]), &names(&["endpoint-agent"]));
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].what, "provider");
    assert_eq!(found[0].name, "endpoint-agent");
    assert_eq!(found[0].grants.len(), 1);
    assert!(
        found[0].grants[0].contains("(IT-1, active)"),
        "{:?}",
        found[0]
    );
    assert!(
        found[0]
            .to_string()
            .contains("provider \"endpoint-agent\" is used by live grant(s)")
    );
}

#[test]
fn removing_a_connector_no_live_grant_uses_is_allowed() {
    let live = [live_grant(
        "IT-1",
        "jira",
        "endpoint-agent",
        GrantState::Revoking,
    )];
    assert!(still_used(&live, false, &names(&["servicenow"]), &names(&["script"])).is_empty());
}

#[test]
fn removing_a_connector_used_by_a_revoke_in_progress_is_refused() {
    let live = [live_grant(
        "IT-9",
        "jira",
        "endpoint-agent",
        GrantState::RevokeFailed,
    )];
    let found = still_used(&live, false, &names(&["jira"]), &names(&[]));
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].what, "connector");
}

#[test]
fn when_not_every_live_grant_could_be_examined_a_removal_is_not_proven_safe() {
    let found = still_used(&[], true, &names(&[]), &names(&["script"]));
    assert_eq!(found.len(), 1);
    assert!(found[0].to_string().contains("more than could be examined"));
}
