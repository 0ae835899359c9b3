//! The webhook endpoint's contract: authentication before storage, dedupe, limits, JSON errors.

use jitbridge::store::GrantFilter;
use jitbridge_sim::jira::users::{ALICE, BOB};

use crate::harness::{Harness, WEBHOOK_SECRET};

pub(crate) fn approval_body(key: &str) -> Vec<u8> {
    serde_json::json!({
        "timestamp": 1741941697640u64,
        "webhookEvent": "jira:issue_updated",
        "user": {"accountId": BOB},
        "issue": {"id": "99999", "key": key, "fields": {"issuetype": {"name": "Elevation Request"}, "status": {"name": "Approved"},
            "reporter": {"accountId": ALICE}, "customfield_10050": {"value": "Local admin"}, "customfield_10060": "WS-1"}},
        "changelog": {"items": [{"field": "status", "fromString": "Waiting for approval", "toString": "Approved"}]}
    })
    .to_string()
    .into_bytes()
}

async fn post(h: &Harness, headers: &[(&str, String)], body: Vec<u8>) -> (u16, serde_json::Value) {
    let mut rb = h.http.post(h.webhook_url()).body(body);
    for (k, v) in headers {
        rb = rb.header(*k, v);
    }
    let resp = rb.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

pub(crate) async fn nothing_stored(h: &Harness) {
    h.settle().await;
    assert!(
        h.store()
            .list_grants(&GrantFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    let audit = h.store().audit_records(0, 100).await.unwrap();
    assert!(
        audit.is_empty(),
        "a rejected delivery left audit records: {audit:?}"
    );
}

#[tokio::test]
async fn forged_signature_is_rejected_with_401_before_anything_is_stored() {
    let h = Harness::start().await;
    let body = approval_body("ACCESS-900");
    let forged = jitbridge_sim::sign::jira_hub_signature("not-the-secret", &body);
    let (status, err) = post(
        &h,
        &[
            ("X-Hub-Signature", forged),
            ("X-Atlassian-Webhook-Identifier", "f1".into()),
        ],
        body.clone(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(err["error"], "unauthorized");
    assert!(err["detail"].is_string());
    let (status, _) = post(
        &h,
        &[("X-Atlassian-Webhook-Identifier", "f2".into())],
        body.clone(),
    )
    .await;
    assert_eq!(status, 401, "unsigned delivery");
    // One changed byte after signing.
    let good = jitbridge_sim::sign::jira_hub_signature(WEBHOOK_SECRET, &body);
    let mut tampered = body.clone();
    let last = tampered.len() - 2;
    tampered[last] ^= 1;
    let (status, _) = post(&h, &[("X-Hub-Signature", good)], tampered).await;
    assert_eq!(status, 401, "tampered body");
    nothing_stored(&h).await;
}

#[tokio::test]
async fn signed_delivery_is_accepted_then_its_repeat_is_a_duplicate() {
    let h = Harness::start().await;
    let body = approval_body("ACCESS-901");
    let sig = jitbridge_sim::sign::jira_hub_signature(WEBHOOK_SECRET, &body);
    let headers = [
        ("x-hub-signature", sig),
        ("x-atlassian-webhook-identifier", "abc-123".into()),
    ];
    let (status, first) = post(&h, &headers, body.clone()).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["status"], "accepted");
    assert!(first["delivery"].is_string());
    let (status, second) = post(&h, &headers, body).await;
    assert_eq!(status, 200);
    assert_eq!(second["status"], "duplicate");
}

#[tokio::test]
async fn errors_are_json_with_the_contract_status_codes() {
    let h = Harness::start().await;
    let resp = h
        .http
        .post(format!("http://{}/webhooks/nope", h.daemon().webhook_addr))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["error"],
        "unknown_connector"
    );

    let big = vec![b' '; 70_000];
    let (status, err) = post(&h, &[], big).await;
    assert_eq!(status, 413);
    assert_eq!(err["error"], "payload_too_large");

    let junk = b"this is not json".to_vec();
    let sig = jitbridge_sim::sign::jira_hub_signature(WEBHOOK_SECRET, &junk);
    let (status, err) = post(&h, &[("X-Hub-Signature", sig)], junk).await;
    assert_eq!(status, 400);
    assert_eq!(err["error"], "unparseable_body");
    nothing_stored(&h).await;
}

#[tokio::test]
async fn health_readiness_and_metrics_are_served() {
    let h = Harness::start().await;
    let r = h.http.get(h.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r: serde_json::Value = h
        .http
        .get(h.admin_url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["status"], "ready");
    let body = jitbridge_sim::sign::jira_hub_signature("wrong", b"{}");
    post(&h, &[("X-Hub-Signature", body)], b"{}".to_vec()).await;
    let m = h
        .http
        .get(h.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("jitbridge_deliveries_total{connector=\"jira\",outcome=\"unauthorized\"}"),
        "{m}"
    );
    assert!(m.contains("jitbridge_grants{state=\"active\"}"), "{m}");
    assert!(
        m.contains("jitbridge_outbox_pending{lane=\"writeback\"}"),
        "{m}"
    );
    let api = h
        .http
        .get(h.admin_url("/api/v1/grants"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
}
