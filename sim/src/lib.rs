//! # jitbridge-sim
//!
//! Simulators of the systems on the other side of jitbridge's wires, written independently of the
//! `jitbridge` crate (which this crate must never depend on) so that tests prove interoperability
//! with the documented wire formats rather than agreement of one implementation with itself.
//!
//! - [`jira`]: a stateful Jira Cloud / Jira Service Management simulator — REST API v2/v3 and the
//!   servicedesk approval API, a configurable workflow, signed webhook emission with Jira's retry
//!   policy, and fault injection (429 rate limits, 503 outages) with a request log.
//! - [`receiver`]: the endpoint-agent side of the `webhook` elevation provider — verifies Standard
//!   Webhooks signatures, records calls, deduplicates, and tracks who holds what right now.
//! - [`servicenow`]: a ServiceNow instance simulator — Table API (v1/v2, display values, journal
//!   fields, encoded queries), RITM approval workflow, signed Business Rule deliveries with
//!   retries, per-hour rate-limit rules and 503 outages.
//! - [`freshservice`]: a Freshservice simulator — API v2 tickets, requesters, agents, approvals,
//!   notes, per-minute rate limits on every response, and Workflow Automator webhooks.
//! - [`sign`]: the signing schemes as plain functions, with known-answer tests.
//!
//! Every server binds `127.0.0.1:0` by default and stops when its handle is dropped.

pub mod error;
pub mod freshservice;
pub mod jira;
pub mod receiver;
mod server;
pub mod servicenow;
pub mod sign;
pub mod zendesk;

pub use error::SimError;
