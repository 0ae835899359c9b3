//! Webhook elevation provider.
