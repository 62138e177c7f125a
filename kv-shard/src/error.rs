//! Errors of the placement logic.

/// Why a membership change was refused. A refused change leaves the configuration as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The server is a member already.
    #[error("{0} is already a member")]
    AlreadyMember(String),
    /// The server is not a member.
    #[error("{0} is not a member")]
    NotMember(String),
    /// A configuration's parts do not fit together.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The server address is not `host:port`.
    #[error("invalid server address {0:?}: expected host:port")]
    InvalidAddress(String),
}

/// Result of a placement operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;
