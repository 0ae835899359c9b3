//! The simulator against Zendesk's documented behaviour, driven over plain HTTP.

use serde_json::{Value, json};

use super::*;

async fn sim() -> ZendeskSim {
    ZendeskSim::start(ZendeskSimConfig::default())
        .await
        .expect("starts")
}

fn api() -> reqwest::Client {
    reqwest::Client::new()
}

async fn get(zd: &ZendeskSim, path: &str, token: &str) -> (u16, Value) {
    let r = api()
        .get(format!("{}{path}", zd.base_url()))
        .basic_auth(format!("{}/token", users::API_EMAIL), Some(token))
        .send()
        .await
        .expect("sent");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn put(zd: &ZendeskSim, path: &str, body: &Value) -> (u16, Value) {
    let r = api()
        .put(format!("{}{path}", zd.base_url()))
        .basic_auth(
            format!("{}/token", users::API_EMAIL),
            Some(users::API_TOKEN),
        )
        .json(body)
        .send()
        .await
        .expect("sent");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn tickets_audits_and_users_have_zendesks_shapes() {
    let zd = sim().await;
    let id = zd
        .create_ticket(
            NewTicket::new(users::ALICE, "Local admin").field(TARGET_FIELD, json!("WS-1")),
        )
        .await
        .expect("ticket")
        .ticket_id;
    zd.set_approval(id, "jit_approved", users::BOB)
        .await
        .expect("approve");
    let (status, t) = get(&zd, &format!("/api/v2/tickets/{id}.json"), users::API_TOKEN).await;
    assert_eq!(status, 200);
    assert_eq!(t["ticket"]["id"], id);
    assert_eq!(
        t["ticket"]["status"], "open",
        "an agent's update opens a new ticket"
    );
    assert_eq!(t["ticket"]["requester_id"], users::ALICE);
    let approval = t["ticket"]["custom_fields"]
        .as_array()
        .expect("array")
        .iter()
        .find(|f| f["id"] == APPROVAL_FIELD)
        .cloned();
    assert_eq!(
        approval.map(|f| f["value"].clone()),
        Some(json!("jit_approved"))
    );
    assert!(
        t["ticket"]["tags"]
            .as_array()
            .expect("tags")
            .contains(&json!("jit_approved"))
    );
    let (_, a) = get(
        &zd,
        &format!("/api/v2/tickets/{id}/audits.json"),
        users::API_TOKEN,
    )
    .await;
    let last = a["audits"]
        .as_array()
        .and_then(|v| v.last())
        .cloned()
        .expect("audit");
    assert_eq!(last["author_id"], users::BOB);
    assert_eq!(last["events"][0]["type"], "Change");
    assert_eq!(last["events"][0]["field_name"], APPROVAL_FIELD.to_string());
    assert_eq!(last["events"][0]["previous_value"], "jit_pending");
    let (_, u) = get(&zd, "/api/v2/users/1002.json", users::API_TOKEN).await;
    assert_eq!(u["user"]["email"], "bob@example.com");
    let (_, me) = get(&zd, "/api/v2/users/me.json", users::API_TOKEN).await;
    assert_eq!(me["user"]["id"], users::JITBRIDGE);
}

#[tokio::test]
async fn errors_use_zendesks_envelope() {
    let zd = sim().await;
    assert_eq!(
        get(&zd, "/api/v2/tickets/42.json", users::API_TOKEN).await,
        (
            404,
            json!({"error": "RecordNotFound", "description": "Not found"})
        )
    );
    assert_eq!(
        get(&zd, "/api/v2/users/me.json", "wrong").await,
        (401, json!({"error": "Couldn't authenticate you"}))
    );
    let id = zd
        .create_ticket(NewTicket::new(users::ALICE, "x"))
        .await
        .expect("t")
        .ticket_id;
    let (status, body) = put(
        &zd,
        &format!("/api/v2/tickets/{id}.json"),
        &json!({"ticket": {"status": "done"}}),
    )
    .await;
    assert_eq!(
        (status, body["error"].clone()),
        (422, json!("RecordInvalid"))
    );
    zd.set_status(id, "closed", users::CAROL)
        .await
        .expect("close");
    let (status, body) = put(
        &zd,
        &format!("/api/v2/tickets/{id}.json"),
        &json!({"ticket": {"status": "open"}}),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(
        body["details"]["status"][0]["description"],
        "Status: closed prevents ticket update"
    );
}

#[tokio::test]
async fn api_updates_add_private_notes_and_change_status_with_an_audit() {
    let zd = sim().await;
    let id = zd
        .create_ticket(NewTicket::new(users::ALICE, "x"))
        .await
        .expect("t")
        .ticket_id;
    let (status, body) = put(
        &zd,
        &format!("/api/v2/tickets/{id}.json"),
        &json!({"ticket": {"comment": {"body": "granted \"now\"", "public": false}, "status": "solved"}}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["ticket"]["status"], "solved");
    assert_eq!(body["audit"]["author_id"], users::JITBRIDGE);
    let t = zd.ticket(id).await.expect("ticket");
    let note = t.comments.last().expect("note");
    assert_eq!(
        (note.body.as_str(), note.public),
        ("granted \"now\"", false)
    );
    assert_eq!(t.status, "solved");
}

#[tokio::test]
async fn injected_rate_limits_and_outages_answer_before_auth() {
    let zd = sim().await;
    zd.rate_limit(1, 30).await;
    let r = api()
        .get(format!("{}/api/v2/users/me.json", zd.base_url()))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("30")
    );
    assert_eq!(
        r.headers()
            .get("x-rate-limit-remaining")
            .and_then(|v| v.to_str().ok()),
        Some("0")
    );
    assert!(r.headers().contains_key("x-rate-limit"));
    zd.outage(1).await;
    assert_eq!(
        get(&zd, "/api/v2/users/me.json", users::API_TOKEN).await.0,
        503
    );
    assert_eq!(
        get(&zd, "/api/v2/users/me.json", users::API_TOKEN).await.0,
        200
    );
    let log = zd.requests().await;
    assert_eq!(
        log.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![429, 503, 200]
    );
    assert!(
        log.windows(2)
            .all(|w| w[0].instant <= w[1].instant && w[0].at <= w[1].at),
        "arrival times are recorded in order"
    );
}

#[tokio::test]
async fn triggers_render_the_example_body_with_a_bearer_token() {
    let zd = sim().await;
    zd.set_webhook("http://127.0.0.1:9/hook", "tok").await;
    let created = zd
        .create_ticket(NewTicket::new(users::ALICE, "x").field(TARGET_FIELD, json!("WS-0042")))
        .await
        .expect("t");
    let approved = zd
        .set_approval(created.ticket_id, "jit_approved", users::BOB)
        .await
        .expect("a");
    let [c] = created.deliveries.as_slice() else {
        panic!("one delivery")
    };
    let [a] = approved.deliveries.as_slice() else {
        panic!("one delivery")
    };
    assert!(
        c.headers
            .contains(&("Authorization".to_owned(), "Bearer tok".to_owned()))
    );
    assert_eq!(c.json()["event"], "ticket_created");
    assert_eq!(c.json()["ticket"]["target"], "WS-0042");
    assert_eq!(c.json()["requester"]["email"], "alice@example.com");
    assert_eq!(a.json()["event"], "approval:jit_approved");
    assert_eq!(a.json()["current_user"]["email"], "bob@example.com");
    assert_eq!(a.json()["ticket"]["status"], "Open");
    assert_ne!(c.invocation_id, a.invocation_id);
    assert!(
        zd.set_status(created.ticket_id, "pending", users::CAROL)
            .await
            .expect("s")
            .deliveries
            .is_empty()
    );
    assert_eq!(
        zd.set_status(created.ticket_id, "solved", users::CAROL)
            .await
            .expect("s")
            .deliveries
            .len(),
        1
    );
}

#[test]
fn placeholders_are_substituted_as_plain_text() {
    let ticket = Ticket {
        id: 7,
        subject: "say \"hi\"".into(),
        description: String::new(),
        status: "open".into(),
        kind: None,
        requester_id: users::ALICE,
        submitter_id: users::ALICE,
        assignee_id: None,
        fields: BTreeMap::new(),
        tags: vec![],
        created_at: Timestamp::UNIX_EPOCH,
        updated_at: Timestamp::UNIX_EPOCH,
        comments: vec![],
        audits: vec![],
    };
    let cfg = ZendeskSimConfig::default();
    let scope = webhook::Scope {
        base: "http://zd",
        ticket: &ticket,
        fields: &cfg.fields,
        users: &cfg.users,
        current_user: users::BOB,
    };
    assert_eq!(
        webhook::render(
            "{{ticket.id}}|{{ ticket.title }}|{{current_user.email}}|{{nope}}|{{ticket.updated_at_with_timestamp}}|{{ unclosed",
            &scope
        ),
        "7|say \"hi\"|bob@example.com||1970-01-01T00:00:00Z|{{ unclosed"
    );
}
