//! The one error type of the simulator crate. Tests get a precise reason when they drive a
//! simulator into a state the simulated system would refuse (unknown issue, unavailable
//! transition, approval answered twice), instead of a panic deep inside a handler.

use std::net::SocketAddr;

use crate::sign::SignError;

/// Everything that can go wrong when starting or driving a simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A signing secret is malformed.
    #[error(transparent)]
    Secret(#[from] SignError),
    /// The workflow given to the Jira simulator is inconsistent.
    #[error("invalid workflow: {0}")]
    InvalidWorkflow(String),
    /// No issue with this key or id.
    #[error("issue {0} does not exist")]
    UnknownIssue(String),
    /// No user with this account id.
    #[error("user {0} does not exist")]
    UnknownUser(String),
    /// The requested transition is not available from the issue's current status.
    #[error("transition {transition:?} is not available on {key} from status {status:?}")]
    TransitionNotAvailable {
        key: String,
        transition: String,
        status: String,
    },
    /// The user has no pending approval to answer on this issue.
    #[error("{account_id} has no pending approval on {key}")]
    NoPendingApproval { key: String, account_id: String },
    /// A comment or field value was refused (same rules as the REST API).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// An HTTP client could not be built or a request could not be sent.
    #[error("http client error: {0}")]
    Http(String),
}
