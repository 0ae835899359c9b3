//! Every connector's body parser (Jira, ServiceNow, Freshservice, generic/Zendesk) on arbitrary
//! bytes: errors are fine, panics are not.
#![no_main]
use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

use jitbridge::connectors::{Connector, OutboundAuth, RawDelivery};
use libfuzzer_sys::fuzz_target;

fn auth() -> OutboundAuth {
    OutboundAuth::Bearer { token: "fuzz".to_owned().into() }
}

static CONNECTORS: LazyLock<Vec<Box<dyn Connector>>> = LazyLock::new(|| {
    let client = reqwest::Client::new();
    let url = |u: &str| reqwest::Url::parse(u).expect("static URL");
    let t = Duration::from_secs(1);
    let mut v: Vec<Box<dyn Connector>> = vec![
        Box::new(jitbridge::connectors::jira::JiraConnector::new("jira".into(), url("https://x.atlassian.net"), auth(), t, client.clone())),
    ];
    if let Ok(o) = jitbridge::connectors::servicenow::Options::from_table(&toml::Table::new(), Path::new("f")) {
        v.push(Box::new(jitbridge::connectors::servicenow::ServiceNowConnector::new("sn".into(), url("https://x.service-now.com"), auth(), t, client.clone(), o)));
    }
    if let Ok(o) = jitbridge::connectors::freshservice::Options::from_table(&toml::Table::new(), Path::new("f")) {
        v.push(Box::new(jitbridge::connectors::freshservice::FreshserviceConnector::new("fs".into(), url("https://x.freshservice.com"), auth(), t, client.clone(), o)));
    }
    // The shipped Zendesk example, minus the keys every kind shares.
    if let Ok(mut table) = include_str!("../../connectors/zendesk.toml.example").parse::<toml::Table>() {
        for k in ["id", "kind", "base_url", "inbound", "outbound", "confirm_approvals", "timeout"] {
            table.remove(k);
        }
        if let Ok(o) = jitbridge::connectors::generic::Options::from_table(&table, Path::new("f")) {
            v.push(Box::new(jitbridge::connectors::generic::GenericConnector::new("zd".into(), url("https://x.zendesk.com"), auth(), t, client, o)));
        }
    }
    v
});

fuzz_target!(|data: &[u8]| {
    let delivery = RawDelivery { headers: vec![("X-Atlassian-Webhook-Identifier".into(), "f".into())], body: data.to_vec() };
    for c in CONNECTORS.iter() {
        let _ = c.dedupe_key(&delivery);
        let _ = c.parse(&delivery);
    }
});
