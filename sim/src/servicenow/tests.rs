//! Tests of the ServiceNow simulator over real HTTP: the Table API contract (envelopes, string
//! typing, references, display values, journal append, v1/v2 lists), auth, rate-limit rules,
//! outages, and Business Rule deliveries (signature, payload contract, retries).

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
use crate::sign::hmac_base64;

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_retries: 3,
        initial_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        attempt_timeout: Duration::from_secs(2),
    }
}

async fn sim() -> ServiceNowSim {
    ServiceNowSim::start(ServiceNowSimConfig {
        retry: fast_retry(),
        emit_webhooks_for_api: false,
        ..ServiceNowSimConfig::default()
    })
    .await
    .unwrap()
}

async fn elevation_ritm(snow: &ServiceNowSim) -> Outcome {
    snow.create_request(
        NewRequest::new(users::ALICE, "Local admin on WS-0042")
            .elevation("Local admin", "WS-0042", "2h")
            .approvers(&[users::BOB]),
    )
    .await
    .unwrap()
}

fn get(snow: &ServiceNowSim, path: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .get(format!("{}{path}", snow.base_url()))
        .basic_auth(users::JITBRIDGE, Some(users::API_PASSWORD))
}

fn patch(snow: &ServiceNowSim, path: &str, body: Value) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .patch(format!("{}{path}", snow.base_url()))
        .basic_auth(users::JITBRIDGE, Some(users::API_PASSWORD))
        .json(&body)
}

/// `RequestBuilder::query` needs reqwest's `query` feature, which this crate does not enable.
trait WithQuery {
    fn query(self, pairs: &[(&str, &str)]) -> Self;
}

impl WithQuery for reqwest::RequestBuilder {
    fn query(self, pairs: &[(&str, &str)]) -> Self {
        let (client, request) = self.build_split();
        let mut request = request.unwrap();
        request.url_mut().query_pairs_mut().extend_pairs(pairs);
        reqwest::RequestBuilder::from_parts(client, request)
    }
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
async fn ritm_reads_back_with_every_value_a_string_and_references_as_link_value() {
    let snow = sim().await;
    let ritm = elevation_ritm(&snow).await;
    assert_eq!(ritm.number, "RITM0010001");
    let res = get(
        &snow,
        &format!("/api/now/table/sc_req_item/{}", ritm.sys_id),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let doc: Value = res.json().await.unwrap();
    let r = &doc["result"];
    assert_eq!(r["number"], "RITM0010001");
    assert_eq!(r["state"], "1");
    assert_eq!(r["approval"], "requested");
    assert_eq!(r["sys_mod_count"], "0");
    assert_eq!(r["u_target"], "WS-0042");
    assert_eq!(r["requested_for"]["value"], users::ALICE_SYS_ID);
    assert_eq!(
        r["requested_for"]["link"],
        format!(
            "{}/api/now/table/sys_user/{}",
            snow.base_url(),
            users::ALICE_SYS_ID
        )
    );
    for (field, value) in r.as_object().unwrap() {
        assert!(
            value.is_string() || value.get("link").is_some(),
            "{field} = {value}"
        );
    }
    let updated = r["sys_updated_on"].as_str().unwrap();
    assert!(
        jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M:%S", updated).is_ok(),
        "{updated}"
    );
}

#[tokio::test]
async fn display_values_follow_sysparm_display_value_and_exclude_reference_link() {
    let snow = sim().await;
    let ritm = elevation_ritm(&snow).await;
    let path = format!("/api/now/table/sc_req_item/{}", ritm.sys_id);
    let all: Value = get(&snow, &path)
        .query(&[("sysparm_display_value", "all")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        all["result"]["state"],
        json!({"display_value": "Open", "value": "1"})
    );
    assert_eq!(
        all["result"]["requested_for"]["display_value"],
        "Alice Requester"
    );
    assert_eq!(all["result"]["requested_for"]["value"], users::ALICE_SYS_ID);
    let shown: Value = get(&snow, &path)
        .query(&[
            ("sysparm_display_value", "true"),
            ("sysparm_exclude_reference_link", "true"),
            ("sysparm_fields", "state,requested_for,approval"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        shown["result"],
        json!({"state": "Open", "requested_for": "Alice Requester", "approval": "Requested"})
    );
    let bare: Value = get(&snow, &path)
        .query(&[
            ("sysparm_exclude_reference_link", "true"),
            ("sysparm_fields", "requested_for"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bare["result"]["requested_for"], users::ALICE_SYS_ID);
    // The handle gives parser tests the same renderings.
    let via_handle = snow
        .api_record(
            "sc_req_item",
            &ritm.number,
            &RenderOptions {
                display: DisplayValue::All,
                ..RenderOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(via_handle, all["result"]);
}

#[tokio::test]
async fn list_filters_by_encoded_query_and_v1_404s_where_v2_returns_empty() {
    let snow = sim().await;
    let ritm = elevation_ritm(&snow).await;
    let query = format!("sysapproval={}^state=requested", ritm.sys_id);
    let res = get(&snow, "/api/now/table/sysapproval_approver")
        .query(&[("sysparm_query", query.as_str()), ("sysparm_limit", "5")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-total-count"], "1");
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["result"][0]["approver"]["value"], users::BOB_SYS_ID);
    assert_eq!(doc["result"][0]["source_table"], "sc_req_item");

    let none = "state=approved";
    let v1 = get(&snow, "/api/now/table/sysapproval_approver")
        .query(&[("sysparm_query", none)])
        .send()
        .await
        .unwrap();
    assert_eq!(v1.status(), 404);
    let body: Value = v1.json().await.unwrap();
    assert_eq!(body["status"], "failure");
    assert_eq!(body["error"]["message"], "No Record found");
    let v2 = get(&snow, "/api/now/v2/table/sysapproval_approver")
        .query(&[("sysparm_query", none)])
        .send()
        .await
        .unwrap();
    assert_eq!(v2.status(), 200);
    assert_eq!(v2.json::<Value>().await.unwrap(), json!({"result": []}));

    let users_found: Value = get(&snow, "/api/now/v2/table/sys_user")
        .query(&[
            ("sysparm_query", "user_name=bob.approver"),
            ("sysparm_fields", "sys_id,email,name,user_name"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        users_found["result"],
        json!([{"sys_id": users::BOB_SYS_ID, "email": "bob@example.com",
                "name": "Bob Approver", "user_name": "bob.approver"}])
    );
}

#[tokio::test]
async fn work_notes_append_journal_entries_and_read_back_empty() {
    let snow = sim().await;
    let ritm = elevation_ritm(&snow).await;
    let path = format!("/api/now/table/sc_req_item/{}", ritm.sys_id);
    for note in ["JIT grant issued", "JIT grant revoked"] {
        let res = patch(&snow, &path, json!({"work_notes": note}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let doc: Value = res.json().await.unwrap();
        assert_eq!(doc["result"]["work_notes"], "");
    }
    let journal = snow.journal("sc_req_item", &ritm.number).await.unwrap();
    let texts: Vec<_> = journal.iter().map(|j| j.value.as_str()).collect();
    assert_eq!(texts, ["JIT grant issued", "JIT grant revoked"]);
    assert!(journal.iter().all(|j| j.element == "work_notes"));
    assert!(journal.iter().all(|j| j.sys_created_by == users::JITBRIDGE));
    let record = snow.record("sc_req_item", &ritm.number).await.unwrap();
    assert_eq!(record.get("sys_mod_count"), "2");
    assert_eq!(record.get("sys_updated_by"), users::JITBRIDGE);
}

#[tokio::test]
async fn journal_entries_are_queryable_through_sys_journal_field() {
    let snow = sim().await;
    let ritm = elevation_ritm(&snow).await;
    let path = format!("/api/now/table/sc_req_item/{}", ritm.sys_id);
    for note in ["granted\n\njitbridge:g1:active:comment", "other note"] {
        patch(&snow, &path, json!({"work_notes": note}))
            .send()
            .await
            .unwrap();
    }
    let query = |q: String, ver: &str| {
        get(&snow, &format!("/api/now/{ver}table/sys_journal_field"))
            .query(&[("sysparm_query", q.as_str())])
            .send()
    };
    let found: Value = query(
        format!(
            "element_id={}^element=work_notes^valueLIKEjitbridge:g1:active:comment",
            ritm.sys_id
        ),
        "",
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let rows = found["result"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{found}");
    assert_eq!(rows[0]["element_id"], ritm.sys_id.as_str());
    let none = query(
        format!("element_id={}^valueLIKEjitbridge:g2", ritm.sys_id),
        "",
    )
    .await
    .unwrap();
    assert_eq!(none.status(), 404, "v1 answers no match with 404");
    let none = query(
        format!("element_id={}^valueLIKEjitbridge:g2", ritm.sys_id),
        "v2/",
    )
    .await
    .unwrap();
    assert_eq!(none.status(), 200);
    assert_eq!(none.json::<Value>().await.unwrap()["result"], json!([]));
}

#[tokio::test]
async fn state_accepts_codes_and_labels_only_with_input_display_value() {
    let snow = sim().await;
    let ritm = elevation_ritm(&snow).await;
    let path = format!("/api/now/table/sc_req_item/{}", ritm.sys_id);
    let label = patch(&snow, &path, json!({"state": "Closed Complete"}))
        .send()
        .await
        .unwrap();
    assert_eq!(label.status(), 400);
    let body: Value = label.json().await.unwrap();
    assert_eq!(body["status"], "failure");
    assert_eq!(body["error"]["message"], "Invalid choice");

    let ok = patch(&snow, &path, json!({"state": "Closed Complete"}))
        .query(&[("sysparm_input_display_value", "true")])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let doc: Value = ok.json().await.unwrap();
    assert_eq!(doc["result"]["state"], "3");
    assert_eq!(doc["result"]["active"], "false");

    let code = patch(&snow, &path, json!({"state": "7"}))
        .send()
        .await
        .unwrap();
    assert_eq!(code.status(), 200);
    assert_eq!(
        snow.record("sc_req_item", &ritm.sys_id)
            .await
            .unwrap()
            .get("sys_mod_count"),
        "2"
    );
}

#[tokio::test]
async fn unknown_field_bad_json_and_missing_record_get_envelopes() {
    let snow = sim().await;
    let ritm = elevation_ritm(&snow).await;
    let path = format!("/api/now/table/sc_req_item/{}", ritm.sys_id);
    let unknown = patch(&snow, &path, json!({"u_nope": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(body["error"]["message"], "Invalid field");
    assert!(
        body["error"]["detail"].as_str().unwrap().contains("u_nope"),
        "{body}"
    );
    // Nothing was written by the refused update.
    assert_eq!(
        snow.record("sc_req_item", &ritm.sys_id)
            .await
            .unwrap()
            .get("sys_mod_count"),
        "0"
    );
    let garbage = reqwest::Client::new()
        .patch(format!("{}{path}", snow.base_url()))
        .basic_auth(users::JITBRIDGE, Some(users::API_PASSWORD))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 400);
    let missing = get(
        &snow,
        &format!("/api/now/table/sc_req_item/{}", "0".repeat(32)),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<Value>().await.unwrap()["error"]["message"],
        "No Record found"
    );
    let table = get(&snow, "/api/now/table/cmdb_ci/abc")
        .send()
        .await
        .unwrap();
    assert_eq!(table.status(), 400);
}

#[tokio::test]
async fn basic_and_bearer_authenticate_and_anything_else_gets_401_envelope() {
    let snow = sim().await;
    let url = format!("{}/api/now/v2/table/sys_user", snow.base_url());
    let c = reqwest::Client::new();
    let bearer = c
        .get(&url)
        .bearer_auth(users::API_BEARER)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    for req in [
        c.get(&url),
        c.get(&url).basic_auth(users::JITBRIDGE, Some("wrong")),
        c.get(&url).bearer_auth("wrong"),
    ] {
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 401);
        let body: Value = res.json().await.unwrap();
        assert_eq!(
            body,
            json!({"error": {"message": "User Not Authenticated",
                             "detail": "Required to provide Auth information"},
                   "status": "failure"})
        );
    }
}

#[tokio::test]
async fn rate_limit_rule_sends_headers_then_429_with_retry_after() {
    let snow = sim().await;
    snow.set_rate_limit(Some(RateLimitRule::per_hour(2))).await;
    let path = "/api/now/v2/table/sys_user";
    for _ in 0..2 {
        let res = get(&snow, path).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-ratelimit-limit"], "2");
        assert_eq!(
            res.headers()["x-ratelimit-rule"],
            "0f3e7f2a1b8c40d5a6e7f8091a2b3c4d"
        );
        let reset: i64 = res.headers()["x-ratelimit-reset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let now = Timestamp::now().as_second();
        assert!(reset > now + 3500 && reset <= now + 3601, "{reset}");
    }
    let res = get(&snow, path).send().await.unwrap();
    assert_eq!(res.status(), 429);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((3500..=3600).contains(&retry), "{retry}");
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"error": {"message": "Rate limit exceeded",
                         "detail": "Rate limit of 2 requests per hour for Table API exceeded"},
               "status": "failure"})
    );
    // Only the refused request is logged as a pause, with the Retry-After it carried.
    let pauses = snow.pauses().await;
    assert_eq!(pauses.len(), 1, "{pauses:?}");
    assert_eq!(pauses[0].status, 429);
    assert_eq!(pauses[0].retry_after, Duration::from_secs(retry));
    assert_eq!(
        (pauses[0].method.as_str(), pauses[0].path.as_str()),
        ("GET", path)
    );
    let last = snow.requests().await.pop().expect("logged");
    assert_eq!((last.status, last.instant), (429, pauses[0].instant));
    snow.clear_requests().await;
    assert!(snow.pauses().await.is_empty());
    // A rule for another user does not count the integration user.
    let mut other = RateLimitRule::per_hour(0);
    other.user = Some(users::CAROL.into());
    snow.set_rate_limit(Some(other)).await;
    let res = get(&snow, path).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("x-ratelimit-limit").is_none());
}

#[tokio::test]
async fn short_rate_window_resets() {
    let snow = sim().await;
    snow.set_rate_limit(Some(
        // Long enough that a loaded machine cannot let it pass between the first two calls.
        RateLimitRule::per_hour(1).with_window(Duration::from_millis(2000)),
    ))
    .await;
    let path = "/api/now/v2/table/sys_user";
    assert_eq!(get(&snow, path).send().await.unwrap().status(), 200);
    let limited = get(&snow, path).send().await.unwrap();
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(get(&snow, path).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn outage_answers_503_with_optional_retry_after_then_recovers() {
    let snow = sim().await;
    snow.outage(Outage {
        window: FaultWindow::Requests(1),
        retry_after_secs: Some(7),
    })
    .await;
    let res = get(&snow, "/api/now/table/sys_user").send().await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "7");
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "failure");
    snow.outage(Outage {
        window: FaultWindow::Requests(1),
        retry_after_secs: None,
    })
    .await;
    let res = get(&snow, "/api/now/table/sys_user").send().await.unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().get("retry-after").is_none());
    let res = get(&snow, "/api/now/table/sys_user").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let log = snow.requests().await;
    assert_eq!(
        log.iter().map(|r| r.status).collect::<Vec<_>>(),
        [503, 503, 200]
    );
}

#[tokio::test]
async fn approval_emits_signed_approver_then_ritm_deliveries_in_the_contract_shape() {
    let snow = sim().await;
    let hook = target(vec![]).await;
    snow.add_webhook(&hook.url, Some("snow-secret")).await;
    let ritm = elevation_ritm(&snow).await;
    assert_eq!(ritm.deliveries.len(), 1, "the insert is delivered");
    let approved = snow.approve(&ritm.number, users::BOB).await.unwrap();
    assert_eq!(approved.deliveries.len(), 2);
    let row = approved.deliveries[0].json();
    assert_eq!(row["table"], "sysapproval_approver");
    assert_eq!(row["operation"], "update");
    assert_eq!(row["sys_updated_by"], users::BOB);
    assert_eq!(row["record"]["state"], "approved");
    assert_eq!(row["record"]["approver"]["value"], users::BOB_SYS_ID);
    assert_eq!(row["record"]["sysapproval"]["value"], ritm.sys_id);
    assert_eq!(row["record"]["source_table"], "sc_req_item");
    assert_eq!(
        row["changes"]["state"],
        json!({"previous": "requested", "current": "approved"})
    );
    let item = approved.deliveries[1].json();
    assert_eq!(item["table"], "sc_req_item");
    assert_eq!(item["sys_id"], ritm.sys_id);
    assert_eq!(item["sys_mod_count"], "1");
    assert_eq!(item["event_id"], format!("{}:1", ritm.sys_id));
    assert_eq!(item["record"]["approval"], "approved");
    assert_eq!(item["record"]["state"], "2");
    assert_eq!(item["record"]["u_elevation_type"], "Local admin");
    assert_eq!(item["record"]["sys_class_name"], "sc_req_item");
    assert_eq!(
        item["changes"]["approval"],
        json!({"previous": "requested", "current": "approved"})
    );
    assert_eq!(
        item["changes"]["state"],
        json!({"previous": "1", "current": "2"})
    );
    assert!(item["changes"].get("sys_mod_count").is_none());
    let got = hook.got.lock().await;
    assert_eq!(got.len(), 3);
    for (headers, body) in got.iter() {
        assert_eq!(
            headers["x-signature"].to_str().unwrap(),
            hmac_base64("snow-secret", body)
        );
        assert_eq!(headers["content-type"], "application/json");
    }
}

#[tokio::test]
async fn rejection_closes_the_ritm_incomplete_and_moots_other_approvers() {
    let snow = sim().await;
    let ritm = snow
        .create_request(
            NewRequest::new(users::ALICE, "Local admin").approvers(&[users::BOB, users::CAROL]),
        )
        .await
        .unwrap();
    snow.reject(&ritm.number, users::CAROL).await.unwrap();
    let r = snow.record("sc_req_item", &ritm.number).await.unwrap();
    assert_eq!(r.get("approval"), "rejected");
    assert_eq!(r.get("state"), "4");
    assert_eq!(r.get("active"), "false");
    let rows = snow.approvals(&ritm.number).await.unwrap();
    let states: Vec<_> = rows.iter().map(|r| r.get("state")).collect();
    assert_eq!(states, ["not_required", "rejected"]);
    let err = snow.approve(&ritm.number, users::BOB).await.unwrap_err();
    assert!(matches!(err, SimError::NoPendingApproval { .. }), "{err}");
}

#[tokio::test]
async fn all_must_approve_waits_for_every_approver() {
    let snow = sim().await;
    let ritm = snow
        .create_request(
            NewRequest::new(users::ALICE, "Local admin")
                .approvers(&[users::BOB, users::CAROL])
                .all_must_approve(),
        )
        .await
        .unwrap();
    snow.approve(&ritm.number, users::BOB).await.unwrap();
    let r = snow.record("sc_req_item", &ritm.number).await.unwrap();
    assert_eq!(r.get("approval"), "requested");
    snow.approve(&ritm.number, users::CAROL).await.unwrap();
    let r = snow.record("sc_req_item", &ritm.number).await.unwrap();
    assert_eq!(r.get("approval"), "approved");
    assert_eq!(r.get("state"), "2");
}

#[tokio::test]
async fn approving_through_the_table_api_runs_the_workflow_and_the_business_rule() {
    let snow = ServiceNowSim::start(ServiceNowSimConfig {
        retry: fast_retry(),
        ..ServiceNowSimConfig::default()
    })
    .await
    .unwrap();
    let hook = target(vec![]).await;
    snow.add_webhook(&hook.url, Some("k")).await;
    let ritm = elevation_ritm(&snow).await;
    let row = ritm.approvals[0].clone();
    let res = patch(
        &snow,
        &format!("/api/now/table/sysapproval_approver/{row}"),
        json!({"state": "approved"}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let r = snow.record("sc_req_item", &ritm.number).await.unwrap();
    assert_eq!(r.get("approval"), "approved");
    // Deliveries run in the background after the API answered.
    for _ in 0..1000 {
        if hook.got.lock().await.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(hook.got.lock().await.len(), 3);
    // A journal-only update does not fire the Business Rule (no loop with jitbridge's notes).
    let before = snow.deliveries().await.len();
    patch(
        &snow,
        &format!("/api/now/table/sc_req_item/{}", ritm.sys_id),
        json!({"work_notes": "granted"}),
    )
    .send()
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(snow.deliveries().await.len(), before);
}

#[tokio::test]
async fn closing_states_emit_state_changes() {
    let snow = sim().await;
    let hook = target(vec![]).await;
    let ritm = elevation_ritm(&snow).await;
    snow.approve(&ritm.number, users::BOB).await.unwrap();
    snow.add_webhook(&hook.url, None).await;
    let closed = snow
        .set_state(&ritm.number, "3", users::CAROL)
        .await
        .unwrap();
    let body = closed.deliveries[0].json();
    assert_eq!(
        body["changes"]["state"],
        json!({"previous": "2", "current": "3"})
    );
    assert_eq!(body["record"]["active"], "false");
    assert!(closed.deliveries[0].header("X-Signature").is_none());
    let skipped = snow
        .set_state(&ritm.number, "Closed Skipped", users::CAROL)
        .await;
    assert_eq!(
        skipped.unwrap().deliveries[0].json()["record"]["state"],
        "7"
    );
    assert!(
        snow.set_state(&ritm.number, "42", users::CAROL)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn deliveries_retry_on_5xx_and_stop_on_success() {
    let snow = sim().await;
    let hook = target(vec![503, 500]).await;
    snow.add_webhook(&hook.url, Some("k")).await;
    let ritm = elevation_ritm(&snow).await;
    let d = &ritm.deliveries[0];
    assert_eq!(
        d.responses.iter().map(|r| r.status).collect::<Vec<_>>(),
        [Some(503), Some(500), Some(200)]
    );
    assert!(d.delivered());
    let got = hook.got.lock().await;
    assert_eq!(got.len(), 3);
    assert!(
        got.iter().all(|(_, b)| b == &got[0].1),
        "same bytes on retry"
    );
}

#[tokio::test]
async fn deliveries_give_up_after_the_bounded_retries_and_not_on_4xx() {
    let snow = sim().await;
    let hook = target(vec![500; 10]).await;
    snow.add_webhook(&hook.url, None).await;
    let ritm = elevation_ritm(&snow).await;
    assert_eq!(ritm.deliveries[0].responses.len(), 4);
    assert!(!ritm.deliveries[0].delivered());
    let rejecting = target(vec![401]).await;
    snow.clear_webhooks().await;
    snow.add_webhook(&rejecting.url, None).await;
    let again = elevation_ritm(&snow).await;
    assert_eq!(again.deliveries[0].responses.len(), 1);
}

#[tokio::test]
async fn resend_send_signed_and_send_raw_support_duplicate_and_forgery_tests() {
    let snow = sim().await;
    let hook = target(vec![]).await;
    snow.add_webhook(&hook.url, Some("right")).await;
    let ritm = elevation_ritm(&snow).await;
    let original = &ritm.deliveries[0];
    assert!(snow.resend(original).await.is_success());
    let forged = snow
        .send_signed(&hook.url, Some("wrong"), &original.body)
        .await;
    assert_ne!(forged.header("X-Signature"), original.header("X-Signature"));
    assert_eq!(forged.event, "sc_req_item.insert");
    let mut tampered = original.body.clone();
    tampered.extend_from_slice(b" ");
    snow.send_raw(&hook.url, &original.headers, &tampered).await;
    let got = hook.got.lock().await;
    assert_eq!(got.len(), 4);
    assert_eq!(got[1].1, got[0].1);
    assert_eq!(got[1].0["x-signature"], got[0].0["x-signature"]);
}

#[tokio::test]
async fn flat_shape_matches_the_wire_format_example() {
    let snow = sim().await;
    snow.set_payload_shape(PayloadShape::Flat).await;
    let hook = target(vec![]).await;
    let ritm = elevation_ritm(&snow).await;
    snow.add_webhook(&hook.url, Some("k")).await;
    let approved = snow.approve(&ritm.number, users::BOB).await.unwrap();
    let body = approved.deliveries[0].json();
    assert_eq!(body["table"], "sysapproval_approver");
    assert_eq!(body["state"], "approved");
    assert_eq!(body["previous_state"], "requested");
    assert_eq!(body["document_id"], ritm.sys_id);
    assert!(body.get("record").is_none());
}

#[tokio::test]
async fn incidents_can_be_inserted_and_follow_their_own_states() {
    let snow = sim().await;
    let mut values = Map::new();
    values.insert("caller_id".into(), users::ALICE.into());
    values.insert("short_description".into(), "Need admin".into());
    let inc = snow.insert("incident", values, users::CAROL).await.unwrap();
    assert_eq!(inc.number, "INC0010001");
    let r = snow.record("incident", &inc.number).await.unwrap();
    assert_eq!(
        r.get("caller_id"),
        users::ALICE_SYS_ID,
        "display input resolved"
    );
    assert_eq!(r.get("approval"), "not requested");
    assert!(
        snow.set_state(&inc.number, "Resolved", users::CAROL)
            .await
            .is_ok()
    );
    assert!(snow.set_state(&inc.number, "3", users::CAROL).await.is_ok());
    assert!(
        snow.set_state(&inc.number, "Closed Complete", users::CAROL)
            .await
            .is_err()
    );
    // The task view reaches incidents too, as reference links to `task` do.
    let res = get(&snow, &format!("/api/now/table/task/{}", inc.sys_id))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn post_inserts_with_201_and_location() {
    let snow = sim().await;
    let res = reqwest::Client::new()
        .post(format!("{}/api/now/table/incident", snow.base_url()))
        .basic_auth(users::JITBRIDGE, Some(users::API_PASSWORD))
        .json(&json!({"short_description": "x", "caller_id": users::ALICE_SYS_ID}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let doc: Value = res.json().await.unwrap();
    let sys_id = doc["result"]["sys_id"].as_str().unwrap();
    assert!(location.ends_with(&format!("/api/now/table/incident/{sys_id}")));
}
