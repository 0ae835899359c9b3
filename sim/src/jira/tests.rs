//! Tests of the Jira simulator over real HTTP.
