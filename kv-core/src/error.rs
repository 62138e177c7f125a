//! Errors of the data model.

/// Why an operation was refused. A refused operation changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The key is longer than [`crate::Limits::max_key_len`].
    #[error("key is {len} bytes, over the limit of {max} bytes")]
    KeyTooLarge {
        /// Length of the key, in bytes.
        len: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// The value (for `append`, the value it would produce) is longer than
    /// [`crate::Limits::max_value_len`].
    #[error("value would be {len} bytes, over the limit of {max} bytes")]
    ValueTooLarge {
        /// Length the value would have had, in bytes.
        len: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// A request that is malformed in some other way.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A retry of a write whose answer was already forgotten: the client said it had it.
    #[error("write {seq} of client {client} was answered and forgotten; it cannot be retried")]
    StaleRetry {
        /// The client.
        client: u64,
        /// The write's number.
        seq: u64,
    },
    /// The same write is being applied right now; retry once it is done.
    #[error("write {seq} of client {client} is in progress; retry")]
    InProgress {
        /// The client.
        client: u64,
        /// The write's number.
        seq: u64,
    },
    /// The engine could not do the operation (for example an I/O failure of a durable engine).
    #[error("storage failure: {0}")]
    Storage(String),
    /// In a sharded cluster: the key's slot is not served by this server at its epoch. `owner`
    /// is the server that serves it, where known; a client should refresh its map and go there.
    #[error("wrong shard: slot {slot} is not served here at epoch {epoch}{}", owner_hint(owner))]
    WrongShard {
        /// The key's hash slot.
        slot: u16,
        /// The epoch of the configuration the server holds.
        epoch: u64,
        /// The address of the slot's owner in that configuration, if it has one.
        owner: Option<String>,
    },
    /// In a sharded cluster: the key's slot is moving to this server and its data has not all
    /// arrived yet; retry shortly.
    #[error("slot {slot} is moving to this server at epoch {epoch}; retry shortly")]
    Moving {
        /// The key's hash slot.
        slot: u16,
        /// The epoch of the configuration the server holds.
        epoch: u64,
    },
    /// The write's replicas did not all confirm it in time (or a read could not reach the
    /// primary it had to ask). The write may or may not have taken effect; retry it (with its
    /// request id, it applies at most once).
    #[error("replication did not complete: {0}; retry")]
    Replication(String),
}

fn owner_hint(owner: &Option<String>) -> String {
    match owner {
        Some(owner) => format!(" (its owner is {owner})"),
        None => " (no server owns it)".to_owned(),
    }
}

impl Error {
    /// Whether trying the same request again may succeed. Bad input never will; an engine
    /// failure might, and a request sent to the wrong shard will once sent to the right one.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::KeyTooLarge { .. }
            | Error::ValueTooLarge { .. }
            | Error::InvalidArgument(_)
            | Error::StaleRetry { .. } => false,
            Error::Storage(_)
            | Error::InProgress { .. }
            | Error::WrongShard { .. }
            | Error::Moving { .. }
            | Error::Replication(_) => true,
        }
    }
}

/// Result of a data-model operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;
