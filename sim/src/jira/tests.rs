//! Tests of the Jira simulator over real HTTP: the REST contract jitbridge's connector relies on,
//! fault injection, and webhook emission against a tiny local receiver.

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
use crate::sign::jira_hub_signature;

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_retries: 3,
        initial_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        attempt_timeout: Duration::from_secs(2),
    }
}

async fn sim() -> JiraSim {
    JiraSim::start(JiraSimConfig {
        retry: fast_retry(),
        ..JiraSimConfig::default()
    })
    .await
    .unwrap()
}

async fn elevation_issue(jira: &JiraSim) -> String {
    jira.create_issue(
        NewIssue::new(users::ALICE, "Local admin on WS-042")
            .description("Need to install a driver")
            .field("customfield_10060", json!("WS-042"))
            .approval(ApprovalSpec::any_of(&[users::BOB])),
    )
    .await
    .unwrap()
    .key
}

fn api(jira: &JiraSim) -> (reqwest::Client, String) {
    (reqwest::Client::new(), jira.base_url().to_owned())
}

fn authed(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    req.basic_auth(users::API_EMAIL, Some(users::API_TOKEN))
}

/// A webhook receiver that answers with scripted statuses (then 200) and records what it got.
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
async fn get_issue_returns_jira_shape_with_null_custom_fields() {
    let jira = sim().await;
    let key = elevation_issue(&jira).await;
    let (c, base) = api(&jira);
    let res = authed(c.get(format!("{base}/rest/api/3/issue/{key}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["key"], key);
    assert!(doc["id"].is_string());
    assert_eq!(doc["fields"]["status"]["name"], "Waiting for approval");
    assert_eq!(doc["fields"]["status"]["statusCategory"]["key"], "new");
    assert_eq!(doc["fields"]["reporter"]["accountId"], users::ALICE);
    assert_eq!(doc["fields"]["customfield_10060"], "WS-042");
    assert!(doc["fields"]["customfield_10100"].is_null());
    assert!(
        doc["fields"]
            .as_object()
            .unwrap()
            .contains_key("customfield_10139")
    );
    assert_eq!(doc["fields"]["description"]["type"], "doc");
    assert_eq!(
        doc["fields"]["customfield_10027"][0]["finalDecision"],
        "pending"
    );
}

#[tokio::test]
async fn fields_parameter_limits_the_fields_returned() {
    let jira = sim().await;
    let key = elevation_issue(&jira).await;
    let (c, base) = api(&jira);
    let doc: Value = authed(c.get(format!(
        "{base}/rest/api/3/issue/{key}?fields=status,customfield_10060"
    )))
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let fields = doc["fields"].as_object().unwrap();
    assert_eq!(fields.len(), 2, "{fields:?}");
    assert!(fields.contains_key("status") && fields.contains_key("customfield_10060"));
}

#[tokio::test]
async fn unknown_issue_is_a_jira_404() {
    let jira = sim().await;
    let (c, base) = api(&jira);
    let res = authed(c.get(format!("{base}/rest/api/3/issue/ACCESS-999")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body,
        json!({"errorMessages":["Issue does not exist or you do not have permission to see it."],"errors":{}})
    );
}

#[tokio::test]
async fn wrong_or_missing_credentials_are_401() {
    let jira = sim().await;
    let key = elevation_issue(&jira).await;
    let (c, base) = api(&jira);
    let url = format!("{base}/rest/api/3/issue/{key}");
    let wrong = c
        .get(&url)
        .basic_auth(users::API_EMAIL, Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let body: Value = wrong.json().await.unwrap();
    assert!(body["errorMessages"].is_array());
    assert_eq!(c.get(&url).send().await.unwrap().status(), 401);
}

#[tokio::test]
async fn transition_answers_204_with_empty_body_and_changes_status() {
    let jira = sim().await;
    let key = elevation_issue(&jira).await;
    jira.approve(&key, users::BOB).await.unwrap();
    let (c, base) = api(&jira);
    let listed: Value = authed(c.get(format!("{base}/rest/api/3/issue/{key}/transitions")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let start = listed["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["to"]["name"] == "In Progress")
        .unwrap();
    let res = authed(c.post(format!("{base}/rest/api/3/issue/{key}/transitions")))
        .json(&json!({"transition": {"id": start["id"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert!(res.bytes().await.unwrap().is_empty());
    let issue = jira.issue(&key).await.unwrap();
    assert_eq!(issue.status, "In Progress");
    let last = issue.history.last().unwrap();
    assert_eq!(last.author.as_deref(), Some(users::JITBRIDGE));
}

#[tokio::test]
async fn unavailable_transition_is_a_400_error_collection() {
    let jira = sim().await;
    let key = elevation_issue(&jira).await;
    let (c, base) = api(&jira);
    // "Resolve" (41) only leaves In Progress; the issue is Waiting for approval.
    let res = authed(c.post(format!("{base}/rest/api/3/issue/{key}/transitions")))
        .json(&json!({"transition": {"id": "41"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert!(body["errorMessages"][0].as_str().unwrap().contains("41"));
    assert_eq!(
        jira.issue(&key).await.unwrap().status,
        "Waiting for approval"
    );
}

#[tokio::test]
async fn v3_comment_requires_adf_and_v2_takes_a_string() {
    let jira = sim().await;
    let key = elevation_issue(&jira).await;
    let (c, base) = api(&jira);
    let v3 = format!("{base}/rest/api/3/issue/{key}/comment");

    let plain = authed(c.post(&v3))
        .json(&json!({"body": "Granted"}))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 400);
    let invalid = authed(c.post(&v3))
        .json(&json!({"body": {"type": "doc", "version": 1, "content": [{"type": "text", "text": "x"}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 400);
    let body: Value = invalid.json().await.unwrap();
    assert!(body["errors"]["comment"].is_string());

    let adf = json!({"body": {"type":"doc","version":1,"content":[
        {"type":"paragraph","content":[{"type":"text","text":"Local admin granted until 11:00."}]}]}});
    let created = authed(c.post(&v3)).json(&adf).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let comment: Value = created.json().await.unwrap();
    assert_eq!(comment["author"]["accountId"], users::JITBRIDGE);
    assert_eq!(comment["body"]["type"], "doc");

    let v2 = authed(c.post(format!("{base}/rest/api/2/issue/{key}/comment")))
        .json(&json!({"body": "Revoked."}))
        .send()
        .await
        .unwrap();
    assert_eq!(v2.status(), 201);

    let comments = jira.comments(&key).await.unwrap();
    let texts: Vec<_> = comments.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(texts, ["Local admin granted until 11:00.", "Revoked."]);
    assert_eq!(comments[0].author_name, "jitbridge");

    let page: Value = authed(c.get(format!("{v3}?startAt=1&maxResults=1")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"], 2);
    assert_eq!(page["comments"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn approvals_api_lists_and_answers_and_runs_the_transition() {
    let jira = sim().await;
    let key = elevation_issue(&jira).await;
    let plain = jira
        .create_issue(NewIssue::new(users::ALICE, "No approvals"))
        .await
        .unwrap()
        .key;
    let (c, base) = api(&jira);
    let none = authed(c.get(format!(
        "{base}/rest/servicedeskapi/request/{plain}/approval"
    )))
    .send()
    .await
    .unwrap();
    assert_eq!(none.status(), 404);

    let list: Value = authed(c.get(format!("{base}/rest/servicedeskapi/request/{key}/approval")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["isLastPage"], true);
    let approval = &list["values"][0];
    assert_eq!(approval["finalDecision"], "pending");
    assert_eq!(
        approval["approvers"][0]["approver"]["accountId"],
        users::BOB
    );
    assert_eq!(approval["approvers"][0]["approverDecision"], "pending");
    // The API user is not an approver.
    assert_eq!(approval["canAnswerApproval"], false);
    let id = approval["id"].as_str().unwrap().to_owned();
    let answer = authed(c.post(format!(
        "{base}/rest/servicedeskapi/request/{key}/approval/{id}"
    )))
    .json(&json!({"decision": "approve"}))
    .send()
    .await
    .unwrap();
    assert_eq!(answer.status(), 403);

    jira.approve(&key, users::BOB).await.unwrap();
    let one: Value = authed(c.get(format!(
        "{base}/rest/servicedeskapi/request/{key}/approval/{id}"
    )))
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(one["finalDecision"], "approved");
    assert!(one["completedDate"]["epochMillis"].is_number());
    assert_eq!(jira.issue(&key).await.unwrap().status, "Approved");
    assert!(matches!(
        jira.approve(&key, users::BOB).await,
        Err(SimError::NoPendingApproval { .. })
    ));
}

#[tokio::test]
async fn myself_identifies_the_api_user() {
    let jira = sim().await;
    let (c, base) = api(&jira);
    let me: Value = authed(c.get(format!("{base}/rest/api/3/myself")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["accountId"], users::JITBRIDGE);
    assert_eq!(me["emailAddress"], users::API_EMAIL);
}

#[tokio::test]
async fn rate_limit_answers_429_with_jira_headers_then_recovers() {
    let jira = sim().await;
    let key = elevation_issue(&jira).await;
    jira.rate_limit(RateLimit::next(2, 7)).await;
    let (c, base) = api(&jira);
    let url = format!("{base}/rest/api/3/issue/{key}");
    for _ in 0..2 {
        let res = authed(c.get(&url)).send().await.unwrap();
        assert_eq!(res.status(), 429);
        let h = res.headers();
        assert_eq!(h["retry-after"], "7");
        assert_eq!(h["x-ratelimit-remaining"], "0");
        assert_eq!(h["x-ratelimit-limit"], "100");
        assert_eq!(h["ratelimit-reason"], "jira-cost-based");
        let reset = h["x-ratelimit-reset"].to_str().unwrap();
        assert_eq!(reset.len(), "2026-01-01T10:00Z".len(), "{reset}");
        assert!(reset.ends_with('Z'));
    }
    assert_eq!(authed(c.get(&url)).send().await.unwrap().status(), 200);
    let statuses: Vec<u16> = jira.requests().await.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 429, 200]);
}

#[tokio::test]
async fn timed_rate_limit_counts_down_retry_after() {
    let jira = sim().await;
    jira.rate_limit(RateLimit::for_duration(Duration::from_secs(30)))
        .await;
    let (c, base) = api(&jira);
    let res = authed(c.get(format!("{base}/rest/api/3/myself")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    let secs: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((29..=30).contains(&secs), "{secs}");
    jira.clear_faults().await;
    let ok = authed(c.get(format!("{base}/rest/api/3/myself")))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn outage_answers_503_with_optional_retry_after() {
    let jira = sim().await;
    jira.outage(Outage {
        window: FaultWindow::UntilCleared,
        retry_after_secs: Some(3),
    })
    .await;
    let (c, base) = api(&jira);
    let url = format!("{base}/rest/api/3/myself");
    for _ in 0..3 {
        let res = authed(c.get(&url)).send().await.unwrap();
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()["retry-after"], "3");
    }
    jira.clear_faults().await;
    assert_eq!(authed(c.get(&url)).send().await.unwrap().status(), 200);
    let log = jira.requests().await;
    assert_eq!(log.len(), 4);
    assert!(log.windows(2).all(|w| w[0].instant <= w[1].instant));
}

#[tokio::test]
async fn approval_emits_signed_issue_updated_with_status_changelog() {
    let jira = sim().await;
    let hook = target(vec![]).await;
    jira.add_webhook(&hook.url, Some("s3cret")).await;
    let key = elevation_issue(&jira).await;
    let outcome = jira.approve(&key, users::BOB).await.unwrap();
    assert_eq!(outcome.deliveries.len(), 1);
    let delivery = &outcome.deliveries[0];
    assert!(delivery.delivered());

    let got = hook.got.lock().await;
    assert_eq!(got.len(), 2, "created + updated");
    let (headers, body) = &got[1];
    assert_eq!(
        headers["x-hub-signature"].to_str().unwrap(),
        jira_hub_signature("s3cret", body)
    );
    assert_eq!(headers["x-atlassian-webhook-flow"], "Primary");
    assert!(headers.get("x-atlassian-webhook-retry").is_none());
    assert_eq!(
        headers["x-atlassian-webhook-identifier"].to_str().unwrap(),
        delivery.id
    );

    let doc: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(doc["webhookEvent"], "jira:issue_updated");
    assert!(doc["timestamp"].is_i64());
    assert_eq!(doc["user"]["accountId"], users::BOB);
    assert_eq!(doc["issue"]["key"], key);
    assert!(
        doc["issue"]["self"]
            .as_str()
            .unwrap()
            .contains("/rest/api/2/")
    );
    assert_eq!(
        doc["issue"]["fields"]["description"],
        "Need to install a driver"
    );
    let item = &doc["changelog"]["items"][0];
    assert_eq!(item["field"], "status");
    assert_eq!(item["from"], ids::WAITING_FOR_APPROVAL);
    assert_eq!(item["fromString"], "Waiting for approval");
    assert_eq!(item["to"], ids::APPROVED);
    assert_eq!(item["toString"], "Approved");
}

#[tokio::test]
async fn unsigned_target_gets_no_signature_and_comment_event_carries_comment() {
    let jira = sim().await;
    let hook = target(vec![]).await;
    jira.add_webhook(&hook.url, None).await;
    let key = elevation_issue(&jira).await;
    let outcome = jira
        .comment(&key, users::CAROL, "Looking into it")
        .await
        .unwrap();
    let doc = outcome.deliveries[0].json();
    assert_eq!(doc["issue_event_type_name"], "issue_commented");
    assert_eq!(doc["comment"]["body"], "Looking into it");
    assert!(doc.get("changelog").is_none());
    let got = hook.got.lock().await;
    assert!(got.iter().all(|(h, _)| h.get("x-hub-signature").is_none()));
}

#[tokio::test]
async fn retryable_answers_are_retried_with_the_same_identifier() {
    let jira = sim().await;
    let hook = target(vec![503, 429, 200]).await;
    jira.add_webhook(&hook.url, Some("k")).await;
    let outcome = jira
        .create_issue(NewIssue::new(users::ALICE, "Retry me"))
        .await
        .unwrap();
    let d = &outcome.deliveries[0];
    let statuses: Vec<_> = d.responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Some(503), Some(429), Some(200)]);
    let got = hook.got.lock().await;
    let ids: Vec<_> = got
        .iter()
        .map(|(h, _)| {
            h["x-atlassian-webhook-identifier"]
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(ids.iter().all(|id| *id == d.id));
    let retries: Vec<_> = got
        .iter()
        .map(|(h, _)| {
            h.get("x-atlassian-webhook-retry")
                .map(|v| v.to_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(retries, [None, Some("1".into()), Some("2".into())]);
    assert!(got.windows(2).all(|w| w[0].1 == w[1].1), "same body bytes");
}

#[tokio::test]
async fn client_errors_are_not_retried_and_retries_are_bounded() {
    let jira = sim().await;
    let refusing = target(vec![401]).await;
    let failing = target(vec![500; 10]).await;
    jira.add_webhook(&refusing.url, Some("k")).await;
    jira.add_webhook(&failing.url, Some("k")).await;
    let outcome = jira
        .create_issue(NewIssue::new(users::ALICE, "x"))
        .await
        .unwrap();
    assert_eq!(outcome.deliveries[0].responses.len(), 1);
    assert_eq!(outcome.deliveries[1].responses.len(), 4, "1 + max_retries");
    assert!(!outcome.deliveries[1].delivered());
}

#[tokio::test]
async fn connection_failure_is_recorded_and_retried() {
    let jira = sim().await;
    // Bind and drop to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    jira.add_webhook(&format!("http://127.0.0.1:{port}/hook"), None)
        .await;
    let outcome = jira
        .create_issue(NewIssue::new(users::ALICE, "x"))
        .await
        .unwrap();
    let d = &outcome.deliveries[0];
    assert_eq!(d.responses.len(), 4);
    assert!(
        d.responses
            .iter()
            .all(|r| r.status.is_none() && r.error.is_some())
    );
}

#[tokio::test]
async fn recorded_delivery_can_be_resent_tampered_or_forged() {
    let jira = sim().await;
    let hook = target(vec![]).await;
    jira.add_webhook(&hook.url, Some("s3cret")).await;
    let key = elevation_issue(&jira).await;
    let d = jira.approve(&key, users::BOB).await.unwrap().deliveries[0].clone();

    assert!(jira.resend(&d).await.is_success());
    let tampered = String::from_utf8(d.body.clone())
        .unwrap()
        .replace(users::BOB, users::ALICE);
    jira.send_raw(&d.url, &d.headers, tampered.as_bytes()).await;
    let forged = jira.send_signed(&hook.url, Some("wrong"), &d.body).await;
    assert_ne!(forged.id, d.id);

    let got = hook.got.lock().await;
    let n = got.len();
    assert_eq!(got[n - 3].1, got[n - 4].1, "resend is byte-identical");
    assert_eq!(
        got[n - 3].0["x-atlassian-webhook-identifier"],
        got[n - 4].0["x-atlassian-webhook-identifier"]
    );
    assert_ne!(
        jira_hub_signature("s3cret", &got[n - 2].1),
        got[n - 2].0["x-hub-signature"].to_str().unwrap(),
        "tampered body no longer matches its signature"
    );
    assert_ne!(
        jira_hub_signature("s3cret", &got[n - 1].1),
        got[n - 1].0["x-hub-signature"].to_str().unwrap()
    );
}

#[tokio::test]
async fn api_changes_emit_webhooks_unless_switched_off() {
    let jira = sim().await;
    let hook = target(vec![]).await;
    jira.add_webhook(&hook.url, Some("k")).await;
    let key = elevation_issue(&jira).await;
    let (c, base) = api(&jira);
    let adf = json!({"body": adf::from_plain_text("hello")});
    authed(c.post(format!("{base}/rest/api/3/issue/{key}/comment")))
        .json(&adf)
        .send()
        .await
        .unwrap();
    let mut waited = 0;
    while jira.deliveries().await.len() < 2 && waited < 100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
    }
    let all = jira.deliveries().await;
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].json()["user"]["accountId"], users::JITBRIDGE);

    jira.set_api_webhooks(false).await;
    authed(c.post(format!("{base}/rest/api/3/issue/{key}/comment")))
        .json(&adf)
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(jira.deliveries().await.len(), 2);
}

#[tokio::test]
async fn decline_runs_the_decline_transition() {
    let jira = sim().await;
    let key = elevation_issue(&jira).await;
    jira.decline(&key, users::BOB).await.unwrap();
    let issue = jira.issue(&key).await.unwrap();
    assert_eq!(issue.status, "Declined");
    assert_eq!(issue.approvals[0].final_decision, Decision::Declined);
    assert!(matches!(
        jira.transition_to(&key, "In Progress", users::CAROL).await,
        Err(SimError::TransitionNotAvailable { .. })
    ));
}

#[tokio::test]
async fn custom_workflow_is_honoured() {
    let wf = Workflow::new(
        vec![
            Status::new("1", "Open", StatusCategory::ToDo),
            Status::new("2", "Closed", StatusCategory::Done),
        ],
        vec![Transition::new("5", "Close", &["1"], "2")],
        "1",
    )
    .unwrap();
    let jira = JiraSim::start(JiraSimConfig {
        workflow: wf,
        ..JiraSimConfig::default()
    })
    .await
    .unwrap();
    let key = jira
        .create_issue(NewIssue::new(users::ALICE, "x"))
        .await
        .unwrap()
        .key;
    jira.transition(&key, "Close", users::CAROL).await.unwrap();
    let issue = jira.issue(&key).await.unwrap();
    assert_eq!(
        (issue.status.as_str(), issue.status_category.as_str()),
        ("Closed", "done")
    );
}
