//! Ingest when the store cannot commit. The fault is real: another connection holds SQLite's
//! write lock, so the daemon's commits end in `SQLITE_BUSY` after its busy timeout. The webhook
//! must then answer `503` (never 2xx, so the sender keeps the delivery and retries), leave no
//! row behind, and accept the sender's retry once the store can commit again.

use std::path::Path;
use std::time::Duration;

use jitbridge::grants::GrantState;
use jitbridge_sim::jira::users::{ALICE, BOB};
use jitbridge_sim::receiver::CallKind;
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

use crate::harness::{Harness, Options, Tuning};

/// A connection of the test's own to the daemon's database file.
async fn open(db: &Path) -> SqliteConnection {
    SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(db))
        .await
        .expect("connects to the database")
}

/// Inbox rows holding exactly this body, read through a connection of its own (WAL readers
/// never wait for the writer).
async fn rows_with_body(db: &Path, body: &[u8]) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE body = $1")
        .bind(body)
        .fetch_one(&mut open(db).await)
        .await
        .expect("count deliveries")
}

/// A connection holding SQLite's write lock until [`release`]d.
async fn hold_write_lock(db: &Path) -> SqliteConnection {
    let mut conn = open(db).await;
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut conn)
        .await
        .expect("write lock taken");
    conn
}

async fn release(mut blocker: SqliteConnection) {
    sqlx::query("ROLLBACK")
        .execute(&mut blocker)
        .await
        .expect("write lock released");
    blocker.close().await.expect("blocker closes");
}

#[tokio::test]
async fn approval_refused_with_503_while_the_store_cannot_commit_is_applied_once_on_the_senders_retry()
 {
    let h = Harness::start_tuned(
        Options::default(),
        Tuning {
            busy_timeout: Some(Duration::from_millis(200)),
            ..Tuning::default()
        },
    )
    .await;
    let key = h.raise(ALICE, "WS-0070", "2h", &[BOB]).await;
    h.wait_state(&key, GrantState::Requested).await;
    let db = h.dir.path().join("data/jitbridge.db");

    let blocker = hold_write_lock(&db).await;
    let approval = h.jira.approve(&key, BOB).await.expect("approve");
    let delivery = approval
        .deliveries
        .first()
        .expect("approval webhook")
        .clone();
    // Jira's first attempt and every retry were refused, retryably, with the JSON error.
    assert!(!delivery.responses.is_empty());
    for attempt in &delivery.responses {
        assert_eq!(attempt.status, Some(503), "{attempt:?}");
        let body: serde_json::Value = serde_json::from_str(&attempt.body).expect("JSON error");
        assert_eq!(body["error"], "store_unavailable", "{body}");
    }
    release(blocker).await;

    // Nothing of the refused delivery was written, and nothing happened because of it.
    assert_eq!(
        rows_with_body(&db, &delivery.body).await,
        0,
        "a refused delivery left a row"
    );
    h.settle().await;
    assert_eq!(h.grants(&key).await[0].state, GrantState::Requested);
    assert!(
        h.receiver.calls().await.is_empty(),
        "applied without a stored delivery"
    );

    // The store commits again: Jira's next retry (the same bytes) is accepted and applied once.
    let retry = h.jira.resend(&delivery).await;
    assert_eq!(retry.status, Some(202), "{retry:?}");
    h.wait_state(&key, GrantState::Active).await;
    let again = h.jira.resend(&delivery).await;
    assert_eq!(again.status, Some(200), "a further retry is a duplicate");
    assert_eq!(rows_with_body(&db, &delivery.body).await, 1);
    h.settle().await;
    assert_eq!(h.provider_calls(CallKind::Apply).await, 1);
    assert_eq!(h.grants(&key).await.len(), 1);
}
