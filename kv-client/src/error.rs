//! Client errors.

use tonic::Code;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint is not a usable address.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No connection could be made.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint dialled.
        endpoint: String,
        /// The transport's error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The server refused the operation; it changed nothing.
    #[error("refused by the server: {0}")]
    Rejected(#[source] kv_core::Error),
    /// The last attempt failed, but an earlier attempt of the same call ended with an unknown
    /// outcome (a timeout, a broken connection): a write may have been applied by it, even if the
    /// last attempt was refused (the earlier one may still arrive).
    #[error("{0} (after an earlier attempt whose outcome is unknown)")]
    AfterUnknown(#[source] Box<Error>),
    /// The call failed in transit or with a status the store does not describe (a deadline, a
    /// broken connection, ...). For a write, it may or may not have been applied.
    #[error("call failed: {}: {}", .0.code(), .0.message())]
    Rpc(#[source] tonic::Status),
}

impl Error {
    /// Whether the same call may succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::InvalidEndpoint { .. } | Error::AfterUnknown(_) => false,
            Error::Connect { .. } => true,
            Error::Rejected(err) => err.is_retryable(),
            // A broken connection: tonic reports it as UNKNOWN with the transport's error inside.
            Error::Rpc(status) if is_transport_failure(status) => true,
            // tonic reports its own client-side timeout as CANCELLED ("Timeout expired").
            Error::Rpc(status) => matches!(
                status.code(),
                Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::Cancelled
                    | Code::ResourceExhausted
                    | Code::Aborted
            ),
        }
    }

    /// Whether the operation is known not to have happened (the server refused it), as opposed
    /// to a failure after which a write may or may not have been applied.
    pub fn is_definite(&self) -> bool {
        match self {
            Error::InvalidEndpoint { .. } | Error::Connect { .. } => true,
            // The same write is being applied by an earlier attempt (in progress), or was applied
            // and its answer forgotten (stale retry): either way it may well have happened.
            Error::Rejected(kv_core::Error::InProgress { .. } | kv_core::Error::StaleRetry { .. }) => false,
            // The primary could not confirm the write at its secondaries: in eventual mode it
            // applied it first; in strong mode a secondary may hold it prepared, and a takeover
            // before the primary names it aborted commits it.
            Error::Rejected(kv_core::Error::Replication(_)) => false,
            Error::Rejected(_) => true,
            Error::Rpc(_) | Error::AfterUnknown(_) => false,
        }
    }
}

/// Whether `status` stands for a failure of the connection rather than an answer.
fn is_transport_failure(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some_and(|source| source.is::<tonic::transport::Error>())
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        match kv_proto::status::error_from_status(&status) {
            Some(err) => Error::Rejected(err),
            None => Error::Rpc(status),
        }
    }
}

/// Result of a client call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_that_settle_the_outcome_are_definite() {
        let too_large = Error::Rejected(kv_core::Error::KeyTooLarge { len: 2, max: 1 });
        assert!(too_large.is_definite() && !too_large.is_retryable());
        let in_progress = Error::Rejected(kv_core::Error::InProgress { client: 1, seq: 2 });
        assert!(!in_progress.is_definite(), "an earlier attempt is being applied");
        assert!(in_progress.is_retryable());
        let after = Error::AfterUnknown(Box::new(too_large));
        assert!(!after.is_definite() && !after.is_retryable());
        assert!(after.to_string().contains("earlier attempt"));
        assert!(!Error::Rejected(kv_core::Error::StaleRetry { client: 1, seq: 2 }).is_definite());
        let unconfirmed = Error::Rejected(kv_core::Error::Replication("no secondary answered".to_owned()));
        assert!(!unconfirmed.is_definite(), "a primary may have applied it, or a takeover commit it");
        let timeout = Error::Rpc(tonic::Status::cancelled("Timeout expired"));
        assert!(!timeout.is_definite() && timeout.is_retryable());
    }
}
