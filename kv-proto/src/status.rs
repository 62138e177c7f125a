//! The mapping between data-model errors and gRPC statuses, both ways, in one place.
//!
//! | [`Error`]            | gRPC code          | detail ([`v1::ErrorDetail`]) |
//! |----------------------|--------------------|------------------------------|
//! | `KeyTooLarge`        | `INVALID_ARGUMENT` | `key_too_large`              |
//! | `ValueTooLarge`      | `INVALID_ARGUMENT` | `value_too_large`            |
//! | `InvalidArgument`    | `INVALID_ARGUMENT` | `invalid_argument`           |
//! | `Storage`            | `UNAVAILABLE`      | `storage_failure`            |
//! | `StaleRetry`         | `FAILED_PRECONDITION` | `stale_retry`             |
//! | `InProgress`         | `ABORTED`          | `in_progress`                |
//! | `WrongShard`         | `FAILED_PRECONDITION` | `wrong_shard`             |
//! | `Moving`             | `UNAVAILABLE`      | `moving`                     |
//! | `Replication`        | `UNAVAILABLE`      | `replication`                |
//!
//! The detail travels encoded in the status details, so a client gets the typed error back
//! with [`error_from_status`]; a client that knows nothing of it still gets a fitting code and a
//! readable message.

use kv_core::Error;
use prost::Message;
use tonic::{Code, Status};

use crate::convert::slot_from_wire;
use crate::v1::{self, error_detail::Kind};

/// The status a server returns for `err`.
pub fn status_from_error(err: &Error) -> Status {
    let (code, kind) = match err {
        Error::KeyTooLarge { len, max } => (Code::InvalidArgument, Kind::KeyTooLarge(limit(*len, *max))),
        Error::ValueTooLarge { len, max } => (Code::InvalidArgument, Kind::ValueTooLarge(limit(*len, *max))),
        Error::InvalidArgument(reason) => {
            (Code::InvalidArgument, Kind::InvalidArgument(v1::InvalidArgument { reason: reason.clone() }))
        }
        Error::Storage(reason) => {
            (Code::Unavailable, Kind::StorageFailure(v1::StorageFailure { reason: reason.clone() }))
        }
        Error::StaleRetry { client, seq } => {
            (Code::FailedPrecondition, Kind::StaleRetry(v1::StaleRetry { client: *client, seq: *seq }))
        }
        Error::InProgress { client, seq } => {
            (Code::Aborted, Kind::InProgress(v1::InProgress { client: *client, seq: *seq }))
        }
        Error::WrongShard { slot, epoch, owner } => (
            Code::FailedPrecondition,
            Kind::WrongShard(v1::WrongShard { slot: u32::from(*slot), epoch: *epoch, owner: owner.clone() }),
        ),
        Error::Moving { slot, epoch } => {
            (Code::Unavailable, Kind::Moving(v1::Moving { slot: u32::from(*slot), epoch: *epoch }))
        }
        Error::Replication(reason) => {
            (Code::Unavailable, Kind::Replication(v1::ReplicationFailure { reason: reason.clone() }))
        }
    };
    let detail = v1::ErrorDetail { kind: Some(kind) };
    Status::with_details(code, err.to_string(), detail.encode_to_vec().into())
}

/// The status a shard master returns for a refused membership change.
pub fn status_from_shard_error(err: &kv_shard::Error) -> Status {
    let code = match err {
        kv_shard::Error::AlreadyMember(_) => Code::AlreadyExists,
        kv_shard::Error::NotMember(_) => Code::NotFound,
        kv_shard::Error::InvalidAddress(_) => Code::InvalidArgument,
        kv_shard::Error::InvalidConfig(_) => Code::Internal,
    };
    Status::new(code, err.to_string())
}

/// The data-model error a status stands for, if it carries one of ours; `None` for statuses
/// that did not come from the store's logic (transport failures, deadlines, ...).
pub fn error_from_status(status: &Status) -> Option<Error> {
    let detail = v1::ErrorDetail::decode(status.details()).ok()?;
    let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    Some(match detail.kind? {
        Kind::KeyTooLarge(l) => Error::KeyTooLarge { len: to_usize(l.len), max: to_usize(l.max) },
        Kind::ValueTooLarge(l) => Error::ValueTooLarge { len: to_usize(l.len), max: to_usize(l.max) },
        Kind::InvalidArgument(a) => Error::InvalidArgument(a.reason),
        Kind::StorageFailure(f) => Error::Storage(f.reason),
        Kind::StaleRetry(r) => Error::StaleRetry { client: r.client, seq: r.seq },
        Kind::InProgress(r) => Error::InProgress { client: r.client, seq: r.seq },
        Kind::WrongShard(w) => {
            Error::WrongShard { slot: slot_from_wire(w.slot)?, epoch: w.epoch, owner: w.owner }
        }
        Kind::Moving(m) => Error::Moving { slot: slot_from_wire(m.slot)?, epoch: m.epoch },
        Kind::Replication(r) => Error::Replication(r.reason),
    })
}

fn limit(len: usize, max: usize) -> v1::LimitExceeded {
    v1::LimitExceeded { len: len as u64, max: max as u64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_survives_the_round_trip() {
        for err in [
            Error::KeyTooLarge { len: 2000, max: 1024 },
            Error::ValueTooLarge { len: 5, max: 4 },
            Error::InvalidArgument("empty".into()),
            Error::Storage("disk full".into()),
            Error::StaleRetry { client: 3, seq: 9 },
            Error::InProgress { client: 3, seq: 10 },
            Error::WrongShard { slot: 4095, epoch: 7, owner: Some("127.0.0.1:5".into()) },
            Error::WrongShard { slot: 0, epoch: 0, owner: None },
            Error::Moving { slot: 12, epoch: 3 },
            Error::Replication("a secondary did not answer".into()),
        ] {
            let status = status_from_error(&err);
            assert_eq!(error_from_status(&status), Some(err.clone()));
            let expected = match err {
                Error::Storage(_) => Code::Unavailable,
                Error::StaleRetry { .. } | Error::WrongShard { .. } => Code::FailedPrecondition,
                Error::Moving { .. } | Error::Replication(_) => Code::Unavailable,
                Error::InProgress { .. } => Code::Aborted,
                _ => Code::InvalidArgument,
            };
            assert_eq!(status.code(), expected);
            assert_eq!(status.message(), err.to_string());
        }
    }

    #[test]
    fn foreign_statuses_are_not_ours() {
        assert_eq!(error_from_status(&Status::unavailable("connection reset")), None);
        assert_eq!(
            error_from_status(&Status::with_details(Code::Internal, "x", vec![0xff, 0x01].into())),
            None
        );
    }
}
