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
//!
//! The protocols' errors ([`kv_shard::Error`], [`kv_replica::Error`]) cross the wire as a code
//! and their message ([`status_from_shard_error`], [`status_from_replica_error`]) and come back
//! by code ([`shard_error_from_status`], [`replica_error_from_status`]): a call that never
//! reached its target is *unavailable*, one that timed out or was cut off *interrupted*, and
//! those two are the retryable ones, as they always were.

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

/// The status for an error of the sharding protocol (a shard master's answer to a change, a
/// storage server's to an install).
pub fn status_from_shard_error(err: &kv_shard::Error) -> Status {
    use kv_shard::Error as E;
    let code = match err {
        E::AlreadyMember(_) => Code::AlreadyExists,
        E::NotMember(_) => Code::NotFound,
        E::InvalidAddress(_) | E::InvalidArgument(_) => Code::InvalidArgument,
        E::InvalidConfig(_) | E::Internal(_) => Code::Internal,
        E::Incomplete { lost: true, .. } => Code::DataLoss,
        E::Incomplete { lost: false, .. } | E::Aborted(_) => Code::Aborted,
        E::Unavailable(_) => Code::Unavailable,
        E::Interrupted(_) => Code::DeadlineExceeded,
        E::FailedPrecondition(_) => Code::FailedPrecondition,
        E::PermissionDenied(_) => Code::PermissionDenied,
    };
    Status::new(code, err.to_string())
}

/// The sharding error a status stands for, as a shard master or storage server answered it
/// (or as the transport failed). Its code decides the variant: `ALREADY_EXISTS` and `NOT_FOUND`
/// are the membership refusals (which come back as they were sent), a call that never reached
/// its target is `Unavailable`, one cut off or timed out `Interrupted`; every status keeps its
/// message.
pub fn shard_error_from_status(status: &Status) -> kv_shard::Error {
    use kv_shard::Error as E;
    let message = status.message().to_owned();
    match status.code() {
        // By code, as the servers always branched: the message names the server, when it is ours.
        Code::AlreadyExists => {
            E::AlreadyMember(message.strip_suffix(" is already a member").unwrap_or(&message).to_owned())
        }
        Code::NotFound => {
            E::NotMember(message.strip_suffix(" is not a member").unwrap_or(&message).to_owned())
        }
        // A change made whose moves did not all finish comes back as such: its epoch is in place.
        Code::Aborted | Code::DataLoss if let Some((epoch, reason)) = incomplete_change(&message) => {
            E::Incomplete { epoch, reason, lost: status.code() == Code::DataLoss }
        }
        Code::Unavailable => E::Unavailable(message),
        Code::Cancelled | Code::DeadlineExceeded | Code::Unknown => E::Interrupted(message),
        Code::Aborted => E::Aborted(message),
        Code::InvalidArgument | Code::OutOfRange => E::InvalidArgument(message),
        Code::PermissionDenied | Code::Unauthenticated => E::PermissionDenied(message),
        Code::Internal | Code::DataLoss => E::Internal(message),
        Code::Ok | Code::FailedPrecondition | Code::ResourceExhausted | Code::Unimplemented => {
            E::FailedPrecondition(message)
        }
    }
}

/// The epoch and reason of an [`kv_shard::Error::Incomplete`]'s message ("epoch N is in place,
/// but REASON"), if it is one.
fn incomplete_change(message: &str) -> Option<(u64, String)> {
    let (epoch, reason) = message.strip_prefix("epoch ")?.split_once(" is in place, but ")?;
    Some((epoch.parse().ok()?, reason.to_owned()))
}

/// The status for an error of the replication protocol (a storage server's answer to another).
pub fn status_from_replica_error(err: &kv_replica::Error) -> Status {
    use kv_replica::Error as E;
    let code = match err {
        E::Unavailable(_) => Code::Unavailable,
        E::Interrupted(_) => Code::DeadlineExceeded,
        E::Aborted(_) => Code::Aborted,
        E::FailedPrecondition(_) => Code::FailedPrecondition,
        E::InvalidArgument(_) => Code::InvalidArgument,
        E::PermissionDenied(_) => Code::PermissionDenied,
        E::Internal(_) => Code::Internal,
    };
    Status::new(code, err.to_string())
}

/// The replication error a status stands for, as a storage server answered it (or as the
/// transport failed): its message kept, its code deciding the variant, as
/// [`shard_error_from_status`] does.
pub fn replica_error_from_status(status: &Status) -> kv_replica::Error {
    use kv_replica::Error as E;
    let message = status.message().to_owned();
    match status.code() {
        Code::Unavailable => E::Unavailable(message),
        Code::Cancelled | Code::DeadlineExceeded | Code::Unknown => E::Interrupted(message),
        Code::Aborted => E::Aborted(message),
        Code::InvalidArgument | Code::OutOfRange => E::InvalidArgument(message),
        Code::PermissionDenied | Code::Unauthenticated => E::PermissionDenied(message),
        Code::Internal | Code::DataLoss => E::Internal(message),
        Code::Ok
        | Code::FailedPrecondition
        | Code::NotFound
        | Code::AlreadyExists
        | Code::ResourceExhausted
        | Code::Unimplemented => E::FailedPrecondition(message),
    }
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

    #[test]
    fn protocol_errors_keep_their_kind_and_message_across_the_wire() {
        use kv_shard::Error as S;
        for err in [
            S::AlreadyMember("a:1".into()),
            S::NotMember("a:1".into()),
            S::Unavailable("an earlier change is still settling".into()),
            S::Aborted("gave way".into()),
            S::FailedPrecondition("holds keys".into()),
            S::InvalidArgument("no slot 9999".into()),
            S::PermissionDenied("no token".into()),
            S::Internal("the change failed".into()),
        ] {
            assert_eq!(shard_error_from_status(&status_from_shard_error(&err)), err);
        }
        let incomplete = S::Incomplete { epoch: 4, reason: "a:1 is gone".into(), lost: true };
        let status = status_from_shard_error(&incomplete);
        assert_eq!(
            (status.code(), status.message()),
            (Code::DataLoss, "epoch 4 is in place, but a:1 is gone")
        );
        assert_eq!(shard_error_from_status(&status), incomplete);
        let moved = S::Incomplete { epoch: 9, reason: "b:1 did not install it".into(), lost: false };
        assert_eq!(shard_error_from_status(&status_from_shard_error(&moved)), moved);
        assert!(shard_error_from_status(&Status::deadline_exceeded("slow")).is_retryable());
        assert!(shard_error_from_status(&Status::unknown("connection reset")).is_retryable());
        assert!(!shard_error_from_status(&Status::failed_precondition("no")).is_retryable());

        use kv_replica::Error as R;
        for err in [
            R::Unavailable("behind".into()),
            R::Interrupted("timed out".into()),
            R::Aborted("still handing the slot off".into()),
            R::FailedPrecondition("not a secondary".into()),
            R::InvalidArgument("no such slot".into()),
            R::PermissionDenied("no token".into()),
            R::Internal("disk".into()),
        ] {
            let status = status_from_replica_error(&err);
            assert_eq!(status.message(), err.to_string());
            assert_eq!(replica_error_from_status(&status), err);
        }
        assert!(replica_error_from_status(&Status::cancelled("gone")).is_retryable());
        assert!(!replica_error_from_status(&Status::aborted("handing off")).is_retryable());
    }
}
