//! Jira Cloud / Jira Service Management connector.
