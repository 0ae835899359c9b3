//! Tests of the Freshservice simulator over real HTTP: API v2 envelopes and types, validation
//! errors, auth, the per-minute budget headers and 429s, outages, and Workflow Automator
//! webhooks (secret header, renderings, retries, resend/forgery helpers).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::*;
use crate::server::ServerTask;

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_retries: 2,
        initial_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        attempt_timeout: Duration::from_secs(2),
    }
}

async fn sim() -> FreshserviceSim {
    FreshserviceSim::start(FreshserviceSimConfig {
        retry: fast_retry(),
        emit_webhooks_for_api: false,
        ..FreshserviceSimConfig::default()
    })
    .await
    .unwrap()
}

async fn elevation_request(fs: &FreshserviceSim) -> u64 {
    fs.create_request(
        NewServiceRequest::new(users::ALICE, "Local admin on WS-0042")
            .elevation("Local admin", "WS-0042", "2h")
            .approvers(&[users::BOB]),
    )
    .await
    .unwrap()
    .ticket_id
}

fn authed(fs: &FreshserviceSim, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .request(method, format!("{}{path}", fs.base_url()))
        .basic_auth(users::API_KEY, Some("X"))
}

async fn get_json(fs: &FreshserviceSim, path: &str) -> (u16, Value) {
    let res = authed(fs, reqwest::Method::GET, path).send().await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

struct Target {
    url: String,
    got: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    _server: ServerTask,
}

async fn target(script: Vec<u16>) -> Target {
    #[derive(Clone)]
    struct S {
        got: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
        script: Arc<Mutex<Vec<u16>>>,
    }
    async fn hook(State(s): State<S>, headers: HeaderMap, body: Bytes) -> StatusCode {
        s.got.lock().await.push((headers, body));
        let mut script = s.script.lock().await;
        let code = if script.is_empty() {
            200
        } else {
            script.remove(0)
        };
        StatusCode::from_u16(code).unwrap()
    }
    let got = Arc::new(Mutex::new(Vec::new()));
    let state = S {
        got: got.clone(),
        script: Arc::new(Mutex::new(script)),
    };
    let server = ServerTask::spawn("127.0.0.1:0".parse().unwrap(), |_| {
        Router::new().route("/hook", post(hook)).with_state(state)
    })
    .await
    .unwrap();
    Target {
        url: format!("http://{}/hook", server.addr()),
        got,
        _server: server,
    }
}

#[tokio::test]
async fn ticket_has_numeric_codes_names_and_custom_fields_in_an_envelope() {
    let fs = sim().await;
    let id = elevation_request(&fs).await;
    let (status, doc) = get_json(&fs, &format!("/api/v2/tickets/{id}")).await;
    assert_eq!(status, 200);
    let t = &doc["ticket"];
    assert_eq!(t["id"], id);
    assert_eq!(t["type"], "Service Request");
    assert_eq!(t["status"], 2);
    assert_eq!(t["approval_status"], 0);
    assert_eq!(t["approval_status_name"], "Requested");
    assert_eq!(t["requester_id"], users::ALICE);
    assert!(t["responder_id"].is_null());
    assert_eq!(t["custom_fields"]["target_device"], "WS-0042");
    assert_eq!(t["custom_fields"]["elevation_type"], "Local admin");
    let updated = t["updated_at"].as_str().unwrap();
    assert!(updated.parse::<Timestamp>().is_ok() && updated.ends_with('Z'));

    let plain = fs
        .create_request(NewServiceRequest::new(users::ALICE, "No approval"))
        .await
        .unwrap();
    let (_, doc) = get_json(&fs, &format!("/api/v2/tickets/{}", plain.ticket_id)).await;
    assert_eq!(doc["ticket"]["approval_status"], 4);
    assert_eq!(doc["ticket"]["approval_status_name"], "Not Requested");
}

#[tokio::test]
async fn people_resolve_to_emails() {
    let fs = sim().await;
    let (s, r) = get_json(&fs, &format!("/api/v2/requesters/{}", users::ALICE)).await;
    assert_eq!(s, 200);
    assert_eq!(r["requester"]["primary_email"], "alice@example.com");
    assert_eq!(r["requester"]["id"], users::ALICE);
    let (s, a) = get_json(&fs, &format!("/api/v2/agents/{}", users::BOB)).await;
    assert_eq!(s, 200);
    assert_eq!(a["agent"]["email"], "bob@example.com");
    let (s, _) = get_json(&fs, &format!("/api/v2/requesters/{}", users::BOB)).await;
    assert_eq!(s, 404, "an agent is not a requester");
    let (s, _) = get_json(&fs, "/api/v2/agents/not-a-number").await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn approval_changes_the_approvals_list_and_the_ticket() {
    let fs = sim().await;
    let id = fs
        .create_request(
            NewServiceRequest::new(users::ALICE, "Local admin")
                .approvers(&[users::BOB, users::CAROL]),
        )
        .await
        .unwrap()
        .ticket_id;
    let (_, before) = get_json(&fs, &format!("/api/v2/tickets/{id}/approvals")).await;
    assert_eq!(before["approvals"].as_array().unwrap().len(), 2);
    assert_eq!(
        before["approvals"][0]["approval_status"],
        json!({"id": 0, "name": "requested"})
    );
    fs.approve(id, users::BOB).await.unwrap();
    let (_, after) = get_json(&fs, &format!("/api/v2/tickets/{id}/approvals")).await;
    assert_eq!(after["approvals"][0]["approver_id"], users::BOB);
    assert_eq!(
        after["approvals"][0]["approval_status"],
        json!({"id": 1, "name": "approved"})
    );
    assert_eq!(
        after["approvals"][1]["approval_status"]["name"],
        "cancelled"
    );
    let (_, t) = get_json(&fs, &format!("/api/v2/tickets/{id}")).await;
    assert_eq!(t["ticket"]["approval_status_name"], "Approved");
    assert_eq!(t["ticket"]["status"], 2, "approval leaves the ticket open");
    let err = fs.approve(id, users::CAROL).await.unwrap_err();
    assert!(matches!(err, SimError::NoPendingApproval { .. }));
}

#[tokio::test]
async fn rejection_closes_the_ticket() {
    let fs = sim().await;
    let id = elevation_request(&fs).await;
    fs.reject(id, users::BOB).await.unwrap();
    let t = fs.ticket(id).await.unwrap();
    assert_eq!(t.approval_status, ApprovalStatus::Rejected);
    assert_eq!(t.status, status::CLOSED);
}

#[tokio::test]
async fn notes_are_created_with_201_conversation_and_recorded() {
    let fs = sim().await;
    let id = elevation_request(&fs).await;
    let res = authed(
        &fs,
        reqwest::Method::POST,
        &format!("/api/v2/tickets/{id}/notes"),
    )
    .json(&json!({"body": "<p>Local admin <b>granted</b> until 10:00</p>", "private": true}))
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 201);
    let doc: Value = res.json().await.unwrap();
    let c = &doc["conversation"];
    assert_eq!(c["ticket_id"], id);
    assert_eq!(c["user_id"], users::JITBRIDGE);
    assert_eq!(c["private"], true);
    assert_eq!(c["incoming"], false);
    assert_eq!(c["body_text"], "Local admin granted until 10:00");
    let notes = fs.notes(id).await.unwrap();
    assert_eq!(notes.len(), 1);
    assert_eq!(
        notes[0].body,
        "<p>Local admin <b>granted</b> until 10:00</p>"
    );

    let bad = authed(
        &fs,
        reqwest::Method::POST,
        &format!("/api/v2/tickets/{id}/notes"),
    )
    .json(&json!({"body": "", "colour": "red"}))
    .send()
    .await
    .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["description"], "Validation failed");
    let codes: Vec<_> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["field"].as_str().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert!(codes.contains(&("colour", "invalid_field")), "{codes:?}");
    assert!(codes.contains(&("body", "invalid_value")), "{codes:?}");
    assert_eq!(fs.notes(id).await.unwrap().len(), 1);
}

#[tokio::test]
async fn conversations_list_the_notes_in_pages() {
    let fs = sim().await;
    let id = elevation_request(&fs).await;
    for i in 0..3 {
        authed(
            &fs,
            reqwest::Method::POST,
            &format!("/api/v2/tickets/{id}/notes"),
        )
        .json(&json!({"body": format!("<p>note {i}</p>"), "private": true}))
        .send()
        .await
        .unwrap();
    }
    let (status, page1) = get_json(
        &fs,
        &format!("/api/v2/tickets/{id}/conversations?per_page=2&page=1"),
    )
    .await;
    assert_eq!(status, 200);
    let texts = |v: &Value| -> Vec<String> {
        v["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["body_text"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(texts(&page1), ["note 0", "note 1"]);
    let (_, page2) = get_json(
        &fs,
        &format!("/api/v2/tickets/{id}/conversations?per_page=2&page=2"),
    )
    .await;
    assert_eq!(texts(&page2), ["note 2"]);
    let (missing, _) = get_json(&fs, "/api/v2/tickets/999999/conversations").await;
    assert_eq!(missing, 404);
}

#[tokio::test]
async fn put_status_updates_and_bad_values_get_validation_errors() {
    let fs = sim().await;
    let id = elevation_request(&fs).await;
    let path = format!("/api/v2/tickets/{id}");
    let ok = authed(&fs, reqwest::Method::PUT, &path)
        .json(&json!({"status": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.json::<Value>().await.unwrap()["ticket"]["status"], 4);

    for (body, field, code) in [
        (json!({"status": 9}), "status", "invalid_value"),
        (json!({"status": "4"}), "status", "datatype_mismatch"),
        (json!({"state": 4}), "state", "invalid_field"),
        (
            json!({"custom_fields": {"nope": 1}}),
            "nope",
            "invalid_field",
        ),
    ] {
        let res = authed(&fs, reqwest::Method::PUT, &path)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{body}");
        let doc: Value = res.json().await.unwrap();
        assert_eq!(doc["description"], "Validation failed");
        assert_eq!(doc["errors"][0]["field"], field, "{doc}");
        assert_eq!(doc["errors"][0]["code"], code, "{doc}");
    }
    let res = authed(&fs, reqwest::Method::PUT, &path)
        .json(&json!({"status": 9}))
        .send()
        .await
        .unwrap();
    let doc: Value = res.json().await.unwrap();
    assert_eq!(
        doc["errors"][0]["message"],
        "It should be one of these values: '2,3,4,5'"
    );
    assert_eq!(
        fs.ticket(id).await.unwrap().status,
        4,
        "refused PUTs change nothing"
    );
    let missing = authed(&fs, reqwest::Method::PUT, "/api/v2/tickets/99999")
        .json(&json!({"status": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn wrong_or_missing_api_key_gets_invalid_credentials() {
    let fs = sim().await;
    let url = format!("{}/api/v2/agents/{}", fs.base_url(), users::BOB);
    let c = reqwest::Client::new();
    for req in [
        c.get(&url),
        c.get(&url).basic_auth("wrong-key", Some("X")),
        c.get(&url).bearer_auth(users::API_KEY),
    ] {
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 401);
        assert!(res.headers().contains_key("x-ratelimit-remaining"));
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], "invalid_credentials");
    }
    // Any password works with the right key: the key is the credential.
    let ok = c
        .get(&url)
        .basic_auth(users::API_KEY, Some("anything"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn every_response_counts_down_the_minute_budget_then_429() {
    let fs = sim().await;
    fs.set_rate_limit(3, Duration::from_secs(60)).await;
    let path = format!("/api/v2/agents/{}", users::BOB);
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let res = authed(&fs, reqwest::Method::GET, &path)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-ratelimit-total"], "3");
        assert_eq!(res.headers()["x-ratelimit-used-currentrequest"], "1");
        remaining.push(
            res.headers()["x-ratelimit-remaining"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(remaining, ["2", "1", "0"]);
    let res = authed(&fs, reqwest::Method::GET, &path)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(res.headers()["x-ratelimit-remaining"], "0");
    let limited = fs.rate_limited().await;
    assert_eq!(
        limited.len(),
        1,
        "only the refused call is logged as rate limited"
    );
    assert_eq!(limited[0].path, path);
    assert_eq!(limited[0].method, "GET");
    assert_eq!(limited[0].retry_after, Duration::from_secs(retry));
    let requests = fs.requests().await;
    assert_eq!(requests.last().map(|r| r.instant), Some(limited[0].instant));
}

#[tokio::test]
async fn budget_refills_after_the_window() {
    let fs = sim().await;
    // A window long enough that a loaded machine cannot let it pass between the first two calls.
    fs.set_rate_limit(1, Duration::from_millis(2000)).await;
    let path = format!("/api/v2/agents/{}", users::BOB);
    assert_eq!(
        authed(&fs, reqwest::Method::GET, &path)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        authed(&fs, reqwest::Method::GET, &path)
            .send()
            .await
            .unwrap()
            .status(),
        429
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        authed(&fs, reqwest::Method::GET, &path)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn outage_gives_503_with_optional_retry_after() {
    let fs = sim().await;
    fs.outage(Outage {
        window: FaultWindow::Requests(2),
        retry_after_secs: Some(11),
    })
    .await;
    let path = format!("/api/v2/agents/{}", users::BOB);
    for _ in 0..2 {
        let res = authed(&fs, reqwest::Method::GET, &path)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()["retry-after"], "11");
    }
    assert_eq!(
        authed(&fs, reqwest::Method::GET, &path)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        fs.requests()
            .await
            .iter()
            .map(|r| r.status)
            .collect::<Vec<_>>(),
        [503, 503, 200]
    );
}

#[tokio::test]
async fn workflow_webhook_carries_the_secret_header_and_quoted_values() {
    let fs = sim().await;
    let hook = target(vec![]).await;
    fs.add_webhook(&hook.url, Some("shared-secret")).await;
    let id = elevation_request(&fs).await;
    let approved = fs.approve(id, users::BOB).await.unwrap();
    assert_eq!(approved.deliveries.len(), 1);
    let d = &approved.deliveries[0];
    assert_eq!(d.event, "approval_updated");
    assert_eq!(d.header("X-Api-Key"), Some("shared-secret"));
    let body = d.json();
    assert_eq!(body["ticket_id"], id.to_string());
    assert_eq!(body["event"], "approval_updated");
    assert_eq!(body["status"], "2");
    assert_eq!(body["approval_status"], "1");
    assert_eq!(body["requester_email"], "alice@example.com");
    assert!(body["updated_at"].as_str().unwrap().ends_with('Z'));
    let got = hook.got.lock().await;
    assert_eq!(got.len(), 2, "ticket_created then approval_updated");
    assert_eq!(got[1].0["x-api-key"], "shared-secret");
}

#[tokio::test]
async fn renderings_cover_bare_numbers_and_a_badly_rendered_template() {
    let fs = sim().await;
    let hook = target(vec![]).await;
    fs.add_webhook(&hook.url, None).await;
    let id = elevation_request(&fs).await;
    let bare = fs
        .emit(id, "ticket_updated", Rendering::Bare)
        .await
        .unwrap();
    assert_eq!(bare[0].json()["ticket_id"], id);
    assert_eq!(bare[0].json()["status"], 2);
    assert!(bare[0].header("X-Api-Key").is_none());
    let broken = fs
        .emit(id, "approval_updated", Rendering::Broken)
        .await
        .unwrap();
    let body = broken[0].json();
    assert_eq!(body["ticket_id"], "");
    assert_eq!(body["status"], "2");
    assert_eq!(body["requester_email"], "");
    assert!(
        fs.emit(424242, "ticket_updated", Rendering::Quoted)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn status_changes_emit_and_api_puts_emit_when_enabled() {
    let fs = FreshserviceSim::start(FreshserviceSimConfig {
        retry: fast_retry(),
        ..FreshserviceSimConfig::default()
    })
    .await
    .unwrap();
    let hook = target(vec![]).await;
    let id = elevation_request(&fs).await;
    fs.add_webhook(&hook.url, Some("s")).await;
    let resolved = fs
        .set_status(id, status::RESOLVED, users::CAROL)
        .await
        .unwrap();
    assert_eq!(resolved.deliveries[0].event, "status_changed");
    assert_eq!(resolved.deliveries[0].json()["status"], "4");
    assert!(fs.set_status(id, 9, users::CAROL).await.is_err());
    authed(&fs, reqwest::Method::PUT, &format!("/api/v2/tickets/{id}"))
        .json(&json!({"status": 5}))
        .send()
        .await
        .unwrap();
    for _ in 0..1000 {
        if hook.got.lock().await.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = hook.got.lock().await;
    assert_eq!(got.len(), 2);
    let body: Value = serde_json::from_slice(&got[1].1).unwrap();
    assert_eq!(body["event"], "status_changed");
    assert_eq!(body["status"], "5");
}

#[tokio::test]
async fn deliveries_retry_on_5xx_within_the_bound() {
    let fs = sim().await;
    let hook = target(vec![502, 502, 502, 502]).await;
    fs.add_webhook(&hook.url, Some("s")).await;
    let created = fs
        .create_request(NewServiceRequest::new(users::ALICE, "x"))
        .await
        .unwrap();
    let d = &created.deliveries[0];
    assert_eq!(d.responses.len(), 3, "first attempt + 2 retries");
    assert!(!d.delivered());
}

#[tokio::test]
async fn resend_and_forgery_helpers_send_what_tests_need() {
    let fs = sim().await;
    let hook = target(vec![]).await;
    fs.add_webhook(&hook.url, Some("right")).await;
    let created = fs
        .create_request(NewServiceRequest::new(users::ALICE, "x"))
        .await
        .unwrap();
    let original = &created.deliveries[0];
    assert!(fs.resend(original).await.is_success());
    let forged = fs
        .send_signed(&hook.url, Some("wrong"), &original.body)
        .await;
    assert_eq!(forged.header("X-Api-Key"), Some("wrong"));
    assert_eq!(forged.event, "ticket_created");
    let unauthenticated = fs.send_signed(&hook.url, None, &original.body).await;
    assert!(unauthenticated.header("X-Api-Key").is_none());
    fs.send_raw(&hook.url, &[], b"{\"ticket_id\": \"\"}").await;
    let got = hook.got.lock().await;
    assert_eq!(got.len(), 5);
    assert_eq!(got[1].1, got[0].1);
}

#[tokio::test]
async fn custom_fields_added_to_the_template_render_as_text() {
    let fs = sim().await;
    let hook = target(vec![]).await;
    fs.add_webhook(&hook.url, Some("s")).await;
    let plain = fs
        .create_request(NewServiceRequest::new(users::ALICE, "x").elevation(
            "Local admin",
            "WS-0042",
            "2h",
        ))
        .await
        .unwrap();
    assert!(
        plain.deliveries[0].json().get("custom_fields").is_none(),
        "the shipped template carries no custom fields"
    );
    fs.set_body_custom_fields(&["target_device", "duration", "elevation_type"])
        .await;
    let id = fs
        .create_request(
            NewServiceRequest::new(users::ALICE, "y")
                .custom_field("target_device", json!("LT-0007"))
                .custom_field("duration", json!(90)),
        )
        .await
        .unwrap();
    let body = id.deliveries[0].json();
    assert_eq!(body["custom_fields"]["target_device"], "LT-0007");
    assert_eq!(
        body["custom_fields"]["duration"], "90",
        "numbers render as text"
    );
    assert_eq!(
        body["custom_fields"]["elevation_type"], "",
        "an empty field renders as an empty string"
    );
}

#[tokio::test]
async fn tickets_are_listed_newest_first_in_pages() {
    let fs = sim().await;
    let first = elevation_request(&fs).await;
    let second = elevation_request(&fs).await;
    let (status, body) = get_json(&fs, "/api/v2/tickets?per_page=1").await;
    assert_eq!(status, 200);
    assert_eq!(body["tickets"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["tickets"][0]["id"], second);
    let (_, page2) = get_json(&fs, "/api/v2/tickets?per_page=1&page=2").await;
    assert_eq!(page2["tickets"][0]["id"], first);
    let (status, err) = get_json(&fs, "/api/v2/tickets?per_page=500").await;
    assert_eq!(status, 400);
    assert_eq!(err["errors"][0]["field"], "per_page");
    let unauthenticated = reqwest::get(format!("{}/api/v2/tickets", fs.base_url()))
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
}
