//! End-to-end tests: the real daemon on 127.0.0.1:0, over real HTTP, against the in-repo Jira
//! simulator and elevation receiver (`jitbridge-sim`, an independent implementation of the other
//! side of each wire). One test binary, one module per area.

mod harness;

mod cli;
mod crash_ingest;
mod crash_points;
mod explain;
mod freshservice_flow;
mod hostile_http;
mod ingress;
mod jira_flow;
mod lifetime_flow;
mod policy_flow;
mod postgres_instances;
mod process;
mod reload;
mod resilience;
mod scopes_flow;
mod secrets;
mod servicenow_flow;
mod store_faults;
mod zendesk_flow;
