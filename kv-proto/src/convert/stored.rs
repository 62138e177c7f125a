//! Records kept on disk, both ways: a shard master's [`MasterState`]. What is read back is
//! checked as strictly as anything a peer sends, and against a checksum: a damaged record is an
//! error, never a panic, and never half-used or read as another record.

use std::collections::BTreeMap;
use std::sync::Arc;

use kv_shard::{Failover, MasterState, Slot};
use prost::Message;
use xxhash_rust::xxh3::xxh3_64;

use super::master::{server_slots_to_wire, slots_to_wire};
use super::node::slots_from_wire;
use super::shard::{config_from_wire, config_to_wire};
use crate::v1;

/// The format of the master state this build writes.
const MASTER_STATE_FORMAT: u32 = 1;

fn checked_slots(wire: Vec<u32>) -> kv_shard::Result<Vec<Slot>> {
    slots_from_wire(wire).map_err(|slot| kv_shard::Error::InvalidConfig(format!("no slot {slot}")))
}

/// The stored form of a shard master's state.
pub fn master_state_to_wire(state: &MasterState) -> v1::MasterState {
    v1::MasterState {
        format: MASTER_STATE_FORMAT,
        history: state.history.iter().map(|config| config_to_wire(config)).collect(),
        failovers: state
            .failovers
            .iter()
            .map(|(&epoch, failover)| v1::FailoverRecord {
                epoch,
                promoted: slots_to_wire(&failover.promoted),
                carried: server_slots_to_wire(&failover.carried),
            })
            .collect(),
        owing: state.owing.iter().cloned().collect(),
        incarnations: state
            .incarnations
            .iter()
            .map(|(server, &incarnation)| v1::MemberIncarnation { server: server.clone(), incarnation })
            .collect(),
        evicted: state
            .evicted
            .iter()
            .map(|(server, &epoch)| v1::EvictedMember { server: server.clone(), epoch })
            .collect(),
    }
}

/// A shard master's state from its stored form, checked whole ([`MasterState::check`]).
pub fn master_state_from_wire(wire: v1::MasterState) -> kv_shard::Result<MasterState> {
    if wire.format != MASTER_STATE_FORMAT {
        return Err(kv_shard::Error::InvalidConfig(format!(
            "a shard master state of format {}, this build reads format {MASTER_STATE_FORMAT}",
            wire.format
        )));
    }
    let history =
        wire.history.iter().map(|config| config_from_wire(config).map(Arc::new)).collect::<Result<_, _>>()?;
    let mut failovers = BTreeMap::new();
    for record in wire.failovers {
        let mut carried: BTreeMap<String, Vec<Slot>> = BTreeMap::new();
        for source in record.carried {
            carried.entry(source.server).or_default().extend(checked_slots(source.slots)?);
        }
        failovers.insert(record.epoch, Failover { promoted: checked_slots(record.promoted)?, carried });
    }
    let state = MasterState {
        history,
        failovers,
        owing: wire.owing.into_iter().collect(),
        incarnations: wire.incarnations.into_iter().map(|m| (m.server, m.incarnation)).collect(),
        evicted: wire.evicted.into_iter().map(|m| (m.server, m.epoch)).collect(),
    };
    state.check()?;
    Ok(state)
}

/// A shard master's state as the bytes kept on disk: its encoding, with a checksum of it.
pub fn encode_master_state(state: &MasterState) -> Vec<u8> {
    let state = master_state_to_wire(state).encode_to_vec();
    let checksum = xxh3_64(&state);
    v1::MasterStateFile { state, checksum }.encode_to_vec()
}

/// A shard master's state from the bytes kept on disk, checked: its checksum first (a damaged
/// file is refused, not read as another state that happens to hold together), then the state.
pub fn decode_master_state(bytes: &[u8]) -> kv_shard::Result<MasterState> {
    let unreadable =
        |what: String| kv_shard::Error::InvalidConfig(format!("an unreadable shard master state: {what}"));
    let file = v1::MasterStateFile::decode(bytes).map_err(|err| unreadable(err.to_string()))?;
    if xxh3_64(&file.state) != file.checksum {
        return Err(unreadable("its checksum does not match (the file is damaged)".to_owned()));
    }
    let wire = v1::MasterState::decode(file.state.as_slice()).map_err(|err| unreadable(err.to_string()))?;
    master_state_from_wire(wire)
}

#[cfg(test)]
mod tests {
    use kv_shard::Config;
    use proptest::prelude::*;

    use super::*;

    fn state() -> MasterState {
        let mut history = vec![Arc::new(Config::new())];
        for i in 0..4 {
            let next = history[i].join(&format!("10.0.0.{}:7000", i + 1)).expect("a join");
            history.push(Arc::new(next));
        }
        let failover = Failover {
            promoted: vec![1, 2, 4095],
            carried: BTreeMap::from([("10.0.0.2:7000".to_owned(), vec![7])]),
        };
        MasterState {
            history,
            failovers: BTreeMap::from([(3, failover)]),
            owing: ["10.0.0.9:7000".to_owned()].into(),
            incarnations: BTreeMap::from([("10.0.0.1:7000".to_owned(), 77)]),
            evicted: BTreeMap::from([("10.0.0.8:7000".to_owned(), 2)]),
        }
    }

    #[test]
    fn a_master_state_survives_the_round_trip() {
        let state = state();
        assert_eq!(decode_master_state(&encode_master_state(&state)), Ok(state));
    }

    #[test]
    fn a_damaged_master_state_is_refused() {
        let mut wire = master_state_to_wire(&state());
        wire.format = 2;
        assert!(master_state_from_wire(wire).unwrap_err().to_string().contains("format 2"));
        let mut wire = master_state_to_wire(&state());
        wire.history.remove(2);
        assert!(master_state_from_wire(wire).unwrap_err().to_string().contains("skips"));
        let mut wire = master_state_to_wire(&state());
        wire.failovers[0].promoted.push(4096);
        assert!(master_state_from_wire(wire).is_err());
        assert!(decode_master_state(b"\xff\xff\xff").is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_master_state(&bytes);
        }

        #[test]
        fn a_flipped_bit_is_refused(at in any::<prop::sample::Index>(), bit in 0..8u8) {
            let mut bytes = encode_master_state(&state());
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            prop_assert!(decode_master_state(&bytes).is_err());
        }
    }
}
