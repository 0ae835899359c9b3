//! Crash-test failpoints. A build with the `failpoints` cargo feature aborts the process (as a
//! power cut or `SIGKILL` would end it) when execution reaches a point named in the
//! `JITBRIDGE_FAILPOINTS` environment variable (comma-separated names), so tests can prove that
//! every persistence step survives a crash right after it. Without the feature, [`failpoint!`](crate::failpoint!)
//! expands to nothing: production builds contain no failpoints.

/// After a delivery's inbox insert committed, before it is answered.
pub const INBOX_INSERT: &str = "inbox.after_insert";
/// After a grant transition (with its audit and outbox jobs) committed.
pub const GRANT_COMMIT: &str = "grant.after_commit";
/// After an outbox worker claimed jobs, before it runs them.
pub const OUTBOX_CLAIM: &str = "outbox.after_claim";
/// After the provider confirmed an apply or revoke, before the job is acknowledged.
pub const PROVIDER_CALL: &str = "provider.after_call";
/// After a provider job's acknowledgement (the grant transition completing it) committed.
pub const OUTBOX_ACK: &str = "outbox.after_ack";
/// After the ITSM accepted a writeback, before the job is acknowledged.
pub const WRITEBACK_CALL: &str = "writeback.after_call";

/// Aborts the process if `name` is armed in `JITBRIDGE_FAILPOINTS`.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    static ARMED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let armed = ARMED.get_or_init(|| {
        std::env::var("JITBRIDGE_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    });
    if armed.iter().any(|a| a == name) {
        eprintln!("failpoint {name} reached: aborting the process");
        std::process::abort();
    }
}

/// Marks a crash point (see the module docs); compiles to nothing without `failpoints`.
#[macro_export]
macro_rules! failpoint {
    ($name:expr) => {
        #[cfg(feature = "failpoints")]
        $crate::failpoint::hit($name);
    };
}
