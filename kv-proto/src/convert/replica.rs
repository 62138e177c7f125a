//! Replication batches and leases: [`kv_replica::messages`] ⇄ `kv.v1.Node` requests and
//! responses.
//!
//! A batch from the wire is checked whole before anything applies it: a slot out of range, a key
//! outside its slot, an unknown write kind or a malformed exactly-once record refuses the batch
//! (`INVALID_ARGUMENT`).
//! Answers are read leniently: a refused slot out of range is left out.

use std::time::Duration;

use kv_replica::ReplicatedWrite;
use kv_replica::digest::{SUM_BYTES, SlotDigest, SnapshotScope, Sum};
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
        digest: batch.digest.iter().map(|&slot| u32::from(slot)).collect(),
        scopes: batch
            .scopes
            .iter()
            .map(|s| v1::SnapshotScope { slot: u32::from(s.slot), buckets: s.buckets, sent: s.sent.clone() })
            .collect(),
    }
}

fn scope_from_wire(wire: v1::SnapshotScope) -> Result<SnapshotScope, Status> {
    let slot = slot_from_wire(wire.slot).ok_or_else(|| Status::invalid_argument("no such slot"))?;
    let mut sent = wire.sent;
    sent.sort_unstable();
    sent.dedup();
    let scope = SnapshotScope { slot, buckets: wire.buckets, sent };
    if !scope.is_well_formed() {
        return Err(Status::invalid_argument(format!(
            "the snapshot scope of slot {slot} is malformed: {} buckets",
            wire.buckets
        )));
    }
    Ok(scope)
}

fn digest_to_wire(digest: &SlotDigest) -> v1::SlotDigest {
    v1::SlotDigest { slot: u32::from(digest.slot), buckets: digest.buckets, sums: digest.sums.concat() }
}

/// A digest from the wire, if well formed.
fn digest_from_wire(wire: &v1::SlotDigest) -> Option<SlotDigest> {
    let slot = slot_from_wire(wire.slot)?;
    if !wire.sums.len().is_multiple_of(SUM_BYTES) {
        return None;
    }
    let sums =
        wire.sums.chunks_exact(SUM_BYTES).map(|c| Sum::try_from(c).ok()).collect::<Option<Vec<_>>>()?;
    let digest = SlotDigest { slot, buckets: wire.buckets, sums };
    digest.is_well_formed().then_some(digest)
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
    let digest =
        slots_from_wire(wire.digest).map_err(|slot| Status::invalid_argument(format!("no slot {slot}")))?;
    let scopes = wire.scopes.into_iter().map(scope_from_wire).collect::<Result<_, _>>()?;
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
        digest,
        scopes,
    })
}

/// The wire form of a secondary's answer to a batch.
pub fn replicate_ack_to_wire(ack: &ReplicateAck) -> v1::ReplicateResponse {
    v1::ReplicateResponse {
        refused: ack.refused.iter().map(|&slot| u32::from(slot)).collect(),
        digests: ack.digests.iter().map(digest_to_wire).collect(),
    }
}

/// A secondary's answer to a batch, from the wire.
pub fn replicate_ack_from_wire(wire: &v1::ReplicateResponse) -> ReplicateAck {
    ReplicateAck {
        refused: wire.refused.iter().filter_map(|&slot| slot_from_wire(slot)).collect(),
        // A malformed digest is left out: its slot is sent whole.
        digests: wire.digests.iter().filter_map(digest_from_wire).collect(),
    }
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
            digest: vec![7, 4095],
            scopes: vec![SnapshotScope { slot: 0, buckets: 8, sent: vec![1, 5] }],
        }
    }

    #[test]
    fn batches_and_leases_survive_the_round_trip() {
        assert_eq!(replicate_from_wire(replicate_to_wire(&batch())).unwrap(), batch());
        let digest = SlotDigest { slot: 3, buckets: 2, sums: vec![[1; SUM_BYTES], [2; SUM_BYTES]] };
        let ack = ReplicateAck { refused: vec![1, 2], digests: vec![digest] };
        assert_eq!(replicate_ack_from_wire(&replicate_ack_to_wire(&ack)), ack);
        // A malformed digest is left out (its slot is sent whole); the rest of the answer holds.
        let mut wire = replicate_ack_to_wire(&ack);
        wire.digests[0].sums.pop();
        assert_eq!(replicate_ack_from_wire(&wire), ReplicateAck { refused: vec![1, 2], digests: Vec::new() });
        let mut wire = replicate_ack_to_wire(&ack);
        wire.digests[0].buckets = 3;
        assert!(replicate_ack_from_wire(&wire).digests.is_empty());
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
        let mut wire = replicate_to_wire(&batch());
        wire.scopes[0].sent.push(8);
        assert!(replicate_from_wire(wire).unwrap_err().message().contains("scope of slot 0 is malformed"));
        let mut wire = replicate_to_wire(&batch());
        wire.scopes[0].buckets = 2048;
        assert!(replicate_from_wire(wire).is_err());
        let mut wire = replicate_to_wire(&batch());
        wire.digest.push(4096);
        assert_eq!(replicate_from_wire(wire).unwrap_err().message(), "no slot 4096");
    }
}
