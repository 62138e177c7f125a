//! Exactly-once records and slot hand-off batches on the wire, for moving them between
//! servers.

use kv_core::{Answer, Output, SessionRecord};
use kv_shard::messages::TransferBatch;
use kv_shard::{SLOTS, Slot};
use tonic::Status;

use crate::v1::{self, answer};

/// The slot a wire `uint32` names, if it is one (`0..SLOTS`).
pub fn slot_from_wire(wire: u32) -> Option<Slot> {
    Slot::try_from(wire).ok().filter(|&slot| usize::from(slot) < SLOTS)
}

/// The slots of a wire list, or the first entry that is not one.
pub fn slots_from_wire(wire: Vec<u32>) -> Result<Vec<Slot>, u32> {
    wire.into_iter().map(|s| slot_from_wire(s).ok_or(s)).collect()
}

/// A session record as sent in a transfer batch.
pub fn session_to_wire(record: &SessionRecord) -> v1::SessionRecord {
    v1::SessionRecord {
        client: record.client,
        floor: record.floor,
        answers: record
            .answers
            .iter()
            .map(|a| v1::Answer {
                seq: a.seq,
                fingerprint: a.fingerprint,
                slot: u32::from(a.tag),
                output: Some(match &a.output {
                    Output::Unit => answer::Output::Unit(true),
                    Output::Popped(value) => answer::Output::Popped(v1::PopOutput { value: value.clone() }),
                    Output::Deleted(existed) => answer::Output::Deleted(*existed),
                }),
            })
            .collect(),
    }
}

/// A session record from a transfer batch; `None` if it is malformed (a slot out of range, an
/// answer without an output).
pub fn session_from_wire(wire: v1::SessionRecord) -> Option<SessionRecord> {
    let answers = wire
        .answers
        .into_iter()
        .map(|a| {
            let output = match a.output? {
                answer::Output::Unit(_) => Output::Unit,
                answer::Output::Popped(p) => Output::Popped(p.value),
                answer::Output::Deleted(existed) => Output::Deleted(existed),
            };
            let tag = slot_from_wire(a.slot)?;
            Some(Answer { seq: a.seq, fingerprint: a.fingerprint, output, tag })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(SessionRecord { client: wire.client, floor: wire.floor, answers })
}

/// Exactly-once records from the wire, refusing the request at the first malformed one.
pub fn checked_sessions(wire: Vec<v1::SessionRecord>) -> Result<Vec<SessionRecord>, Status> {
    wire.into_iter()
        .map(|record| session_from_wire(record).ok_or_else(|| Status::invalid_argument("malformed record")))
        .collect()
}

/// The wire form of a hand-off batch.
pub fn transfer_to_wire(batch: &TransferBatch) -> v1::TransferRequest {
    v1::TransferRequest {
        epoch: batch.epoch,
        from: batch.from.clone(),
        entries: batch
            .entries
            .iter()
            .map(|(key, value)| v1::Entry { key: key.clone(), value: value.clone() })
            .collect(),
        sessions: batch.sessions.iter().map(session_to_wire).collect(),
        complete: batch.complete.iter().map(|&slot| u32::from(slot)).collect(),
    }
}

/// A hand-off batch from the wire, checked: every slot in range, every record well formed.
pub fn transfer_from_wire(wire: v1::TransferRequest) -> Result<TransferBatch, Status> {
    let complete =
        slots_from_wire(wire.complete).map_err(|slot| Status::invalid_argument(format!("no slot {slot}")))?;
    let sessions = checked_sessions(wire.sessions)?;
    Ok(TransferBatch {
        epoch: wire.epoch,
        from: wire.from,
        entries: wire.entries.into_iter().map(|entry| (entry.key, entry.value)).collect(),
        sessions,
        complete,
    })
}

/// The wire form of a receiver's answer to a hand-off batch: the slots it took exactly as sent.
pub fn transfer_response_to_wire(verbatim: &[Slot]) -> v1::TransferResponse {
    v1::TransferResponse { verbatim: verbatim.iter().map(|&slot| u32::from(slot)).collect() }
}

/// A receiver's answer to a hand-off batch, from the wire (a slot out of range is left out).
pub fn transfer_response_from_wire(wire: &v1::TransferResponse) -> Vec<Slot> {
    wire.verbatim.iter().filter_map(|&slot| slot_from_wire(slot)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_the_round_trip_and_bad_ones_are_refused() {
        let record = SessionRecord {
            client: 9,
            floor: 3,
            answers: vec![
                Answer { seq: 3, fingerprint: 1, output: Output::Unit, tag: 0 },
                Answer { seq: 4, fingerprint: 2, output: Output::Popped(None), tag: 4095 },
                Answer { seq: 5, fingerprint: 3, output: Output::Popped(Some("é".into())), tag: 7 },
                Answer { seq: 6, fingerprint: 4, output: Output::Deleted(true), tag: 8 },
            ],
        };
        assert_eq!(session_from_wire(session_to_wire(&record)), Some(record.clone()));
        let mut bad = session_to_wire(&record);
        bad.answers[0].slot = 4096;
        assert_eq!(session_from_wire(bad), None);
        let mut bad = session_to_wire(&record);
        bad.answers[1].output = None;
        assert_eq!(session_from_wire(bad), None);
    }

    #[test]
    fn transfer_batches_survive_the_round_trip_and_bad_ones_are_refused() {
        let batch = TransferBatch {
            epoch: 3,
            from: "a:1".into(),
            entries: vec![("k".into(), "v".into())],
            sessions: vec![SessionRecord { client: 1, floor: 2, answers: Vec::new() }],
            complete: vec![0, 4095],
        };
        assert_eq!(transfer_from_wire(transfer_to_wire(&batch)).unwrap(), batch);
        let mut bad = transfer_to_wire(&batch);
        bad.complete.push(4096);
        assert_eq!(transfer_from_wire(bad).unwrap_err().message(), "no slot 4096");
        let mut bad = transfer_to_wire(&batch);
        bad.sessions.push(v1::SessionRecord {
            client: 1,
            floor: 0,
            answers: vec![v1::Answer { output: None, ..Default::default() }],
        });
        assert_eq!(transfer_from_wire(bad).unwrap_err().message(), "malformed record");
    }
}
