//! Errors of the replication protocol and of the calls between storage servers.
//!
//! The variants are the distinctions the protocol branches on: whether trying again may help
//! ([`Error::is_retryable`]), whether the target gave the request up on purpose
//! ([`Error::Aborted`]: a secondary still handing the slot off, say, which a primary does not
//! retry), and whether the request was refused for the target's state or for being malformed.
//! Every variant carries the message of whoever refused, shown as it is.

/// Why an operation of the replication protocol failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The target could not be reached, or is not ready for this yet (it is behind the
    /// sender's epoch, say): the request did not take effect; retry.
    #[error("{0}")]
    Unavailable(String),
    /// The call timed out or was cut off: it may or may not have taken effect; retry.
    #[error("{0}")]
    Interrupted(String),
    /// The target gave the request up on purpose (it still hands the slot off, or a newer
    /// configuration arrived): not retried as is.
    #[error("{0}")]
    Aborted(String),
    /// Refused because of the state of the target (not a secondary of the slot under this
    /// primary, at another epoch, ...); nothing changed.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The caller may not do this (it is not a member of the cluster).
    #[error("{0}")]
    PermissionDenied(String),
    /// The target failed in a way that is not the caller's doing (its engine failed, say).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// Whether the same request may succeed if sent again: the target was unreachable, not
    /// ready, or the call was cut off.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::Interrupted(_))
    }

    /// An engine failure, as the target reports it.
    pub fn storage(err: kv_core::Error) -> Self {
        Error::Internal(err.to_string())
    }
}

/// Result of a replication operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl kv_shard::retry::Retryable for Error {
    fn is_retryable(&self) -> bool {
        Error::is_retryable(self)
    }
}
