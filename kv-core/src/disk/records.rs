//! How the durable engine keeps the exactly-once records, in its `sessions` keyspace.
//!
//! `a` + client (8 bytes, big-endian) + seq (8 bytes, big-endian): one answer, as the
//! fingerprint (8 bytes), the tag (2 bytes), the client's floor when it was written (8 bytes),
//! and the output (one byte saying which, then the popped character's UTF-8 bytes for a pop that
//! found one).
//!
//! Invariants:
//! - a client's floor is the largest its answers carry: an answer's own number is at or above
//!   the floor it carries, so the newest answer, which is never below the floor, keeps it,
//!   whichever order concurrent writes commit in;
//! - a write forgets the answers its client has (below its floor) by their numbers, which the
//!   sessions in memory know; an expired client's answers up to its highest number are one
//!   range, as big-endian numbers order a client's answers by number; an answer left below a
//!   floor (its write was in flight when the floor passed it) is dropped when read back;
//! - nothing a disk holds panics the decoder (a record this layout does not write is an
//!   [`Error::Storage`] naming it).

use std::collections::BTreeMap;

use crate::session::{Answer, SessionRecord};
use crate::{Error, Output, Result};

/// The first byte of an answer's key.
const ANSWER: u8 = b'a';

/// The key of `client`'s answer to `seq`.
pub(super) fn answer_key(client: u64, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(17);
    key.push(ANSWER);
    key.extend_from_slice(&client.to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The stored form of an answer.
pub(super) fn encode_answer(fingerprint: u64, tag: u16, floor: u64, output: &Output) -> Vec<u8> {
    let mut value = Vec::with_capacity(20);
    value.extend_from_slice(&fingerprint.to_be_bytes());
    value.extend_from_slice(&tag.to_be_bytes());
    value.extend_from_slice(&floor.to_be_bytes());
    match output {
        Output::Unit => value.push(0),
        Output::Popped(None) => value.push(1),
        Output::Popped(Some(popped)) => {
            value.push(2);
            value.extend_from_slice(popped.as_bytes());
        }
        Output::Deleted(false) => value.push(3),
        Output::Deleted(true) => value.push(4),
    }
    value
}

fn corrupt(what: &str, key: &[u8]) -> Error {
    Error::Storage(format!(
        "a stored exactly-once record is not one this engine writes ({what}, key {key:02x?})"
    ))
}

fn number(bytes: &[u8], at: usize, key: &[u8]) -> Result<u64> {
    let slice = bytes.get(at..at + 8).ok_or_else(|| corrupt("too short", key))?;
    let array: [u8; 8] = slice.try_into().map_err(|_| corrupt("too short", key))?;
    Ok(u64::from_be_bytes(array))
}

/// An answer, and the floor it carries.
fn decode_answer(key: &[u8], value: &[u8]) -> Result<(Answer, u64)> {
    if key.len() != 17 || key[0] != ANSWER || value.len() < 19 {
        return Err(corrupt("wrong length or kind", key));
    }
    let fingerprint = number(value, 0, key)?;
    let tag = u16::from_be_bytes([value[8], value[9]]);
    let floor = number(value, 10, key)?;
    let rest = &value[19..];
    let output = match (value[18], rest.is_empty()) {
        (0, true) => Output::Unit,
        (1, true) => Output::Popped(None),
        (2, false) => {
            let popped = std::str::from_utf8(rest).map_err(|_| corrupt("a popped value not UTF-8", key))?;
            Output::Popped(Some(popped.to_owned()))
        }
        (3, true) => Output::Deleted(false),
        (4, true) => Output::Deleted(true),
        _ => return Err(corrupt("an unknown output", key)),
    };
    Ok((Answer { seq: number(key, 9, key)?, fingerprint, output, tag }, floor))
}

/// Gathers stored records, read in key order, into one [`SessionRecord`] per client.
#[derive(Debug, Default)]
pub(super) struct Gather {
    clients: BTreeMap<u64, SessionRecord>,
}

impl Gather {
    /// Takes one stored record.
    pub(super) fn take(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let (answer, floor) = decode_answer(key, value)?;
        let client = number(key, 1, key)?;
        let record = self.clients.entry(client).or_insert_with(|| SessionRecord {
            client,
            floor: 0,
            answers: Vec::new(),
        });
        record.floor = record.floor.max(floor);
        record.answers.push(answer);
        Ok(())
    }

    /// The records, per client in client order, each without the answers below its floor.
    pub(super) fn records(self) -> Vec<SessionRecord> {
        self.clients
            .into_values()
            .map(|mut record| {
                let floor = record.floor;
                record.answers.retain(|answer| answer.seq >= floor);
                record
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_floors_read_back_as_written() {
        let outputs = [
            Output::Unit,
            Output::Popped(None),
            Output::Popped(Some("é".into())),
            Output::Deleted(false),
            Output::Deleted(true),
        ];
        let mut gather = Gather::default();
        for (seq, output) in outputs.iter().enumerate() {
            let seq = seq as u64 + 3;
            let floor = if seq == 4 { 3 } else { 2 };
            gather.take(&answer_key(7, seq), &encode_answer(seq * 11, 42, floor, output)).expect("an answer");
        }
        gather.take(&answer_key(7, 1), &encode_answer(1, 42, 1, &Output::Unit)).expect("an answer");
        let records = gather.records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].client, 7);
        assert_eq!(records[0].floor, 3, "the largest floor");
        let kept: Vec<Output> = records[0].answers.iter().map(|answer| answer.output.clone()).collect();
        assert_eq!(kept, outputs, "the answer below the floor is dropped");
        assert_eq!(records[0].answers[0].fingerprint, 33);
        assert_eq!(records[0].answers[0].tag, 42);
    }

    #[test]
    fn records_this_layout_does_not_write_are_errors() {
        let good = answer_key(1, 1);
        let unit = encode_answer(1, 1, 1, &Output::Unit);
        let mut unknown = unit.clone();
        unknown[18] = 9;
        let mut not_utf8 = encode_answer(1, 1, 1, &Output::Popped(Some("x".into())));
        *not_utf8.last_mut().unwrap() = 0xff;
        let mut trailing = unit.clone();
        trailing.push(b'?');
        let cases: [(&[u8], &[u8]); 6] = [
            (b"a", &unit),
            (&good, b"short"),
            (&good, &unknown),
            (&good, &not_utf8),
            (&good, &trailing),
            (&[b'x'; 17], &unit),
        ];
        for (key, value) in cases {
            let mut gather = Gather::default();
            assert!(
                matches!(gather.take(key, value), Err(Error::Storage(_))),
                "{key:02x?} = {value:02x?} must be refused"
            );
        }
    }
}
