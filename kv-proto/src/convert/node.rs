//! Exactly-once records on the wire, for moving them between servers.

use kv_core::{Answer, Output, SessionRecord};
use kv_shard::{SLOTS, Slot};

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
}
