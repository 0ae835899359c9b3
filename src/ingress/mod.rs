//! Ingress: `POST /webhooks/{connector_id}`. Authenticates the raw delivery, enforces the body
//! limit, and commits it to the inbox before answering `202`.

pub mod auth;
