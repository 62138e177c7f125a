//! Errors of placement, of the shard master, and of the calls between the shard master and the
//! storage servers.
//!
//! The variants are the distinctions the protocol branches on: a refused change (nothing
//! changed), a change in place whose moves did not finish, and, for calls to another process,
//! whether trying again may help ([`Error::is_retryable`]) and whether the call may have reached
//! its target at all ([`Error::Unavailable`] never did). The messages of the variants that carry
//! one are shown as they are: they come from whoever refused.

/// Why an operation of the sharding protocol failed.
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
    /// The new configuration is in place, but some of its moves did not finish; the reason says
    /// which, and where the data is.
    #[error("epoch {epoch} is in place, but {reason}")]
    Incomplete {
        /// The epoch now in place.
        epoch: u64,
        /// What did not finish.
        reason: String,
        /// Whether data was lost (a server that had to hand off slots is gone).
        lost: bool,
    },
    /// The target could not be reached, or is not ready for this yet (it is behind, or settling
    /// an earlier change): the request did not take effect; retry.
    #[error("{0}")]
    Unavailable(String),
    /// The call timed out or was cut off: it may or may not have taken effect; retry.
    #[error("{0}")]
    Interrupted(String),
    /// The target gave the request up (a newer configuration arrived, say): do not retry as is.
    #[error("{0}")]
    Aborted(String),
    /// Refused because of the state of the target or of the cluster; nothing changed.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The caller may not do this (it is not a member of the cluster).
    #[error("{0}")]
    PermissionDenied(String),
    /// The target failed in a way that is not the caller's doing.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// Whether the same request may succeed if sent again: the target was unreachable, not
    /// ready, or the call was cut off.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::Interrupted(_))
    }
}

/// Result of a sharding operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;
