//! Replication batches and leases: [`kv_replica::messages`] ⇄ `kv.v1.Node` requests and
//! responses.
//!
//! A batch from the wire is checked whole before anything applies it: a slot out of range, a key
//! outside its slot, an unknown write kind or a malformed exactly-once record refuses the batch
//! (`INVALID_ARGUMENT`).
//! Answers are read leniently: a refused slot out of range is left out.

use std::time::Duration;

use kv_replica::ReplicatedWrite;
use kv_replica::messages::{
    Committed, LeaseGrant, LeaseRequest, Replicate, ReplicateAck, SlotWrite, WriteKind,
};
use kv_shard::slot_of;
use tonic::Status;

use super::node::checked_sessions;
use super::{session_from_wire, session_to_wire, slot_from_wire, slots_from_wire};
use crate::v1;

fn kind_to_wire(kind: WriteKind) -> v1::WriteKind {
    match kind {
        WriteKind::Apply => v1::WriteKind::Apply,
        WriteKind::Prepare => v1::WriteKind::Prepare,
        WriteKind::Snapshot => v1::WriteKind::Snapshot,
    }
}

fn write_to_wire(write: &SlotWrite) -> v1::ReplicatedWrite {
    v1::ReplicatedWrite {
        slot: u32::from(write.slot),
        seq: write.write.seq,
        key: write.write.key.clone(),
        value: write.write.value.clone(),
        session: write.write.session.as_ref().map(session_to_wire),
        aborted: write.aborted.clone(),
    }
}

fn write_from_wire(wire: v1::ReplicatedWrite) -> Result<SlotWrite, Status> {
    let slot = slot_from_wire(wire.slot).ok_or_else(|| Status::invalid_argument("no such slot"))?;
    if slot_of(&wire.key) != slot {
        return Err(Status::invalid_argument(format!("key {:?} is not in slot {slot}", wire.key)));
    }
    let session = match wire.session {
        Some(record) => {
            Some(session_from_wire(record).ok_or_else(|| Status::invalid_argument("malformed record"))?)
        }
        None => None,
    };
    Ok(SlotWrite {
        slot,
        write: ReplicatedWrite { seq: wire.seq, key: wire.key, value: wire.value, session },
        aborted: wire.aborted,
    })
}

/// The wire form of a replication batch.
pub fn replicate_to_wire(batch: &Replicate) -> v1::ReplicateRequest {
    v1::ReplicateRequest {
        epoch: batch.epoch,
        from: batch.from.clone(),
        writes: batch.writes.iter().map(write_to_wire).collect(),
        kind: kind_to_wire(batch.kind) as i32,
        commits: batch
            .commits
            .iter()
            .map(|c| v1::Committed { slot: u32::from(c.slot), seq: c.seq })
            .collect(),
        synced: batch.synced.iter().map(|&slot| u32::from(slot)).collect(),
        sessions: batch.sessions.iter().map(session_to_wire).collect(),
    }
}

/// A replication batch from the wire, checked.
pub fn replicate_from_wire(wire: v1::ReplicateRequest) -> Result<Replicate, Status> {
    let kind = match v1::WriteKind::try_from(wire.kind) {
        Ok(v1::WriteKind::Apply) => WriteKind::Apply,
        Ok(v1::WriteKind::Prepare) => WriteKind::Prepare,
        Ok(v1::WriteKind::Snapshot) => WriteKind::Snapshot,
        Err(_) => return Err(Status::invalid_argument(format!("unknown write kind {}", wire.kind))),
    };
    let synced =
        slots_from_wire(wire.synced).map_err(|slot| Status::invalid_argument(format!("no slot {slot}")))?;
    let writes = wire.writes.into_iter().map(write_from_wire).collect::<Result<_, _>>()?;
    let commits = wire
        .commits
        .into_iter()
        .map(|c| {
            let slot = slot_from_wire(c.slot).ok_or_else(|| Status::invalid_argument("no such slot"))?;
            Ok(Committed { slot, seq: c.seq })
        })
        .collect::<Result<_, Status>>()?;
    Ok(Replicate {
        epoch: wire.epoch,
        from: wire.from,
        writes,
        kind,
        commits,
        synced,
        // Only a snapshot's records are taken; other batches carry none.
        sessions: if kind == WriteKind::Snapshot { checked_sessions(wire.sessions)? } else { Vec::new() },
    })
}

/// The wire form of a secondary's answer to a batch.
pub fn replicate_ack_to_wire(ack: &ReplicateAck) -> v1::ReplicateResponse {
    v1::ReplicateResponse { refused: ack.refused.iter().map(|&slot| u32::from(slot)).collect() }
}

/// A secondary's answer to a batch, from the wire.
pub fn replicate_ack_from_wire(wire: &v1::ReplicateResponse) -> ReplicateAck {
    ReplicateAck { refused: wire.refused.iter().filter_map(|&slot| slot_from_wire(slot)).collect() }
}

/// The wire form of a lease request.
pub fn lease_request_to_wire(request: &LeaseRequest) -> v1::LeaseRequest {
    v1::LeaseRequest { from: request.from.clone(), epoch: request.epoch }
}

/// A lease request from the wire.
pub fn lease_request_from_wire(wire: v1::LeaseRequest) -> LeaseRequest {
    LeaseRequest { from: wire.from, epoch: wire.epoch }
}

/// The wire form of a lease granted (in whole milliseconds).
pub fn lease_grant_to_wire(grant: LeaseGrant) -> v1::LeaseResponse {
    v1::LeaseResponse {
        epoch: grant.epoch,
        lease_ms: u32::try_from(grant.lease.as_millis()).unwrap_or(u32::MAX),
    }
}

/// A lease granted, from the wire.
pub fn lease_grant_from_wire(wire: &v1::LeaseResponse) -> LeaseGrant {
    LeaseGrant { epoch: wire.epoch, lease: Duration::from_millis(u64::from(wire.lease_ms)) }
}

#[cfg(test)]
mod tests {
    use kv_core::SessionRecord;

    use super::*;

    fn batch() -> Replicate {
        Replicate {
            epoch: 5,
            from: "a:1".into(),
            writes: vec![SlotWrite {
                slot: slot_of("k"),
                write: ReplicatedWrite {
                    seq: 3,
                    key: "k".into(),
                    value: None,
                    session: Some(SessionRecord { client: 4, floor: 1, answers: Vec::new() }),
                },
                aborted: vec![1, 2],
            }],
            kind: WriteKind::Prepare,
            commits: vec![Committed { slot: 4095, seq: 9 }],
            synced: vec![0],
            sessions: Vec::new(),
        }
    }

    #[test]
    fn batches_and_leases_survive_the_round_trip() {
        assert_eq!(replicate_from_wire(replicate_to_wire(&batch())).unwrap(), batch());
        let ack = ReplicateAck { refused: vec![1, 2] };
        assert_eq!(replicate_ack_from_wire(&replicate_ack_to_wire(&ack)), ack);
        let request = LeaseRequest { from: "a:1".into(), epoch: 2 };
        assert_eq!(lease_request_from_wire(lease_request_to_wire(&request)), request);
        let grant = LeaseGrant { epoch: 2, lease: Duration::from_millis(500) };
        assert_eq!(lease_grant_from_wire(&lease_grant_to_wire(grant)), grant);
    }

    #[test]
    fn malformed_batches_are_refused_whole() {
        let mut wire = replicate_to_wire(&batch());
        wire.kind = 9;
        assert_eq!(replicate_from_wire(wire).unwrap_err().message(), "unknown write kind 9");
        let mut wire = replicate_to_wire(&batch());
        wire.writes[0].slot = 4096;
        assert_eq!(replicate_from_wire(wire).unwrap_err().message(), "no such slot");
        let mut wire = replicate_to_wire(&batch());
        wire.commits[0].slot = 70_000;
        assert!(replicate_from_wire(wire).is_err());
        let mut wire = replicate_to_wire(&batch());
        wire.synced.push(4096);
        assert_eq!(replicate_from_wire(wire).unwrap_err().message(), "no slot 4096");
        let mut wire = replicate_to_wire(&batch());
        wire.writes[0].session.as_mut().unwrap().answers.push(v1::Answer::default());
        assert_eq!(replicate_from_wire(wire).unwrap_err().message(), "malformed record");
        let mut wire = replicate_to_wire(&batch());
        wire.writes[0].slot = (wire.writes[0].slot + 1) % 4096;
        assert!(replicate_from_wire(wire).unwrap_err().message().contains("is not in slot"));
    }
}
