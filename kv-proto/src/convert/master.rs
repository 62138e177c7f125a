//! The shard master's messages to storage servers, and their answers:
//! [`kv_shard::messages`] ⇄ `kv.v1.Node` requests and responses.
//!
//! Requests from the wire are checked whole before anything acts on them: a configuration that
//! does not hold together, or a slot out of range, refuses the request (`INVALID_ARGUMENT`).
//! Answers (status, reports) are read leniently: a slot out of range in an answer is left out,
//! as the shard master always did.

use std::collections::BTreeMap;
use std::time::Duration;

use kv_shard::messages::{
    CatchUpStats, HandOffCopy, HeardPeer, Install, InstallReport, Pong, Resume, ServerStatus, UnheardPeer,
};
use kv_shard::{ServerId, Slot};
use tonic::Status;

use super::{config_from_wire, config_to_wire, slot_from_wire, slots_from_wire};
use crate::v1;

/// The slots of a wire list, refusing the request at the first that is not one.
pub fn checked_slots(wire: Vec<u32>) -> Result<Vec<Slot>, Status> {
    slots_from_wire(wire).map_err(|wire| Status::invalid_argument(format!("no slot {wire}")))
}

/// The slots of a wire list in an answer, leaving out any that is not one.
fn lenient_slots(wire: &[u32]) -> Vec<Slot> {
    wire.iter().filter_map(|&slot| slot_from_wire(slot)).collect()
}

pub(super) fn slots_to_wire(slots: &[Slot]) -> Vec<u32> {
    slots.iter().map(|&slot| u32::from(slot)).collect()
}

pub(super) fn server_slots_to_wire(by_server: &BTreeMap<String, Vec<Slot>>) -> Vec<v1::ServerSlots> {
    by_server
        .iter()
        .map(|(server, slots)| v1::ServerSlots { server: server.clone(), slots: slots_to_wire(slots) })
        .collect()
}

fn lenient_server_slots(wire: &[v1::ServerSlots]) -> BTreeMap<String, Vec<Slot>> {
    let mut by_server: BTreeMap<String, Vec<Slot>> = BTreeMap::new();
    for entry in wire {
        by_server.entry(entry.server.clone()).or_default().extend(lenient_slots(&entry.slots));
    }
    by_server
}

/// The wire form of an install.
pub fn install_to_wire(install: &Install) -> v1::InstallRequest {
    v1::InstallRequest {
        config: Some(config_to_wire(&install.next)),
        previous: Some(config_to_wire(&install.previous)),
        abandoned: slots_to_wire(&install.abandoned),
        promoted: slots_to_wire(&install.promoted),
        carried: server_slots_to_wire(&install.carried),
        incarnation: install.incarnation,
    }
}

/// An install from the wire, checked.
pub fn install_from_wire(wire: v1::InstallRequest) -> Result<Install, Status> {
    let config = |wire: Option<v1::ClusterConfig>, what: &str| {
        let wire = wire.ok_or_else(|| Status::invalid_argument(format!("no {what} configuration")))?;
        config_from_wire(&wire).map_err(|err| Status::invalid_argument(format!("{what}: {err}")))
    };
    let next = config(wire.config, "new")?;
    let previous = config(wire.previous, "previous")?;
    let abandoned = checked_slots(wire.abandoned)?;
    let promoted = checked_slots(wire.promoted)?;
    let mut carried: BTreeMap<String, Vec<Slot>> = BTreeMap::new();
    for source in wire.carried {
        carried.entry(source.server).or_default().extend(checked_slots(source.slots)?);
    }
    Ok(Install { next, previous, abandoned, promoted, carried, incarnation: wire.incarnation })
}

/// The wire form of an install's report.
pub fn install_report_to_wire(report: &InstallReport) -> v1::InstallResponse {
    v1::InstallResponse {
        slots_sent: report.slots_sent,
        keys_sent: report.keys_sent,
        never_arrived: slots_to_wire(&report.never_arrived),
    }
}

/// An install's report from the wire.
pub fn install_report_from_wire(wire: &v1::InstallResponse) -> InstallReport {
    InstallReport {
        slots_sent: wire.slots_sent,
        keys_sent: wire.keys_sent,
        never_arrived: lenient_slots(&wire.never_arrived),
    }
}

/// The wire form of a copy hand-off.
pub fn hand_off_copy_to_wire(request: &HandOffCopy) -> v1::HandOffCopyRequest {
    v1::HandOffCopyRequest {
        epoch: request.epoch,
        sender: request.sender.clone(),
        to: request.to.clone(),
        slots: slots_to_wire(&request.slots),
        as_snapshot: request.as_snapshot,
    }
}

/// A copy hand-off from the wire, checked.
pub fn hand_off_copy_from_wire(wire: v1::HandOffCopyRequest) -> Result<HandOffCopy, Status> {
    Ok(HandOffCopy {
        epoch: wire.epoch,
        sender: wire.sender,
        to: wire.to,
        slots: checked_slots(wire.slots)?,
        as_snapshot: wire.as_snapshot,
    })
}

/// The wire form of a server's status.
pub fn server_status_to_wire(status: &ServerStatus) -> v1::StatusResponse {
    v1::StatusResponse {
        address: status.address.clone(),
        epoch: status.epoch,
        serving_slots: status.serving_slots,
        incoming_slots: status.incoming_slots,
        keys: status.keys,
        standalone: status.standalone,
        outgoing_slots: status.outgoing_slots,
        replica_slots: status.replica_slots,
        syncing_slots: status.syncing_slots,
        incarnation: status.incarnation,
        owed: server_slots_to_wire(&status.owed),
        unready: slots_to_wire(&status.unready),
        retired: server_slots_to_wire(&status.retired),
        durable: status.engine.durable,
        engine_batches: status.engine.batches,
        engine_writes: status.engine.writes,
        engine_syncs: status.engine.syncs,
        resume: status.resume.map(resume_to_wire),
        catch_up: Some(v1::CatchUpStats {
            slots: status.catch_up.slots,
            slots_equal: status.catch_up.slots_equal,
            keys: status.catch_up.keys,
            bytes: status.catch_up.bytes,
            digest_bytes: status.catch_up.digest_bytes,
            handoff_keys: status.catch_up.handoff_keys,
            handoff_bytes: status.catch_up.handoff_bytes,
        }),
    }
}

fn resume_to_wire(resume: Resume) -> v1::Resume {
    v1::Resume { member: resume.member.0, epoch: resume.epoch, whole: resume.whole }
}

fn resume_from_wire(wire: &v1::Resume) -> Resume {
    Resume { member: ServerId(wire.member), epoch: wire.epoch, whole: wire.whole }
}

/// A server's status from the wire.
pub fn server_status_from_wire(wire: &v1::StatusResponse) -> ServerStatus {
    ServerStatus {
        address: wire.address.clone(),
        epoch: wire.epoch,
        standalone: wire.standalone,
        incarnation: wire.incarnation,
        keys: wire.keys,
        serving_slots: wire.serving_slots,
        incoming_slots: wire.incoming_slots,
        outgoing_slots: wire.outgoing_slots,
        replica_slots: wire.replica_slots,
        syncing_slots: wire.syncing_slots,
        owed: lenient_server_slots(&wire.owed),
        unready: lenient_slots(&wire.unready),
        retired: lenient_server_slots(&wire.retired),
        engine: engine_stats_from_wire(wire),
        resume: wire.resume.as_ref().map(resume_from_wire),
        catch_up: wire
            .catch_up
            .as_ref()
            .map(|c| CatchUpStats {
                slots: c.slots,
                slots_equal: c.slots_equal,
                keys: c.keys,
                bytes: c.bytes,
                digest_bytes: c.digest_bytes,
                handoff_keys: c.handoff_keys,
                handoff_bytes: c.handoff_bytes,
            })
            .unwrap_or_default(),
    }
}

/// What a server's engine has written, from its status on the wire.
pub fn engine_stats_from_wire(wire: &v1::StatusResponse) -> kv_core::EngineStats {
    kv_core::EngineStats {
        durable: wire.durable,
        batches: wire.engine_batches,
        writes: wire.engine_writes,
        syncs: wire.engine_syncs,
    }
}

/// The wire form of a ping's answer.
pub fn pong_to_wire(pong: Pong) -> v1::PingResponse {
    let unheard = pong
        .unheard
        .into_iter()
        .map(|report| v1::UnheardPeer {
            peer: report.peer,
            unheard_for_ms: u64::try_from(report.unheard_for.as_millis()).unwrap_or(u64::MAX),
        })
        .collect();
    let heard = pong
        .heard
        .into_iter()
        .map(|heard| v1::HeardPeer {
            peer: heard.peer,
            ago_ms: u64::try_from(heard.ago.as_millis()).unwrap_or(u64::MAX),
        })
        .collect();
    v1::PingResponse {
        epoch: pong.epoch,
        incarnation: pong.incarnation,
        unheard,
        heard,
        resume: pong.resume.map(resume_to_wire),
    }
}

/// A ping's answer from the wire.
pub fn pong_from_wire(wire: &v1::PingResponse) -> Pong {
    let unheard = wire
        .unheard
        .iter()
        .map(|report| UnheardPeer {
            peer: report.peer.clone(),
            unheard_for: Duration::from_millis(report.unheard_for_ms),
        })
        .collect();
    let heard = wire
        .heard
        .iter()
        .map(|heard| HeardPeer { peer: heard.peer.clone(), ago: Duration::from_millis(heard.ago_ms) })
        .collect();
    Pong {
        epoch: wire.epoch,
        incarnation: wire.incarnation,
        unheard,
        heard,
        resume: wire.resume.as_ref().map(resume_from_wire),
    }
}

#[cfg(test)]
mod tests {
    use kv_shard::Config;

    use super::*;

    #[test]
    fn installs_survive_the_round_trip_and_bad_ones_are_refused() {
        let previous = Config::new().join("a:1").unwrap();
        let next = previous.join("b:1").unwrap();
        let install = Install {
            next,
            previous,
            abandoned: vec![1, 4095],
            promoted: vec![7],
            carried: BTreeMap::from([("a:1".to_owned(), vec![3, 9]), ("c:1".to_owned(), vec![12])]),
            incarnation: 42,
        };
        assert_eq!(install_from_wire(install_to_wire(&install)).unwrap(), install);
        let mut bad = install_to_wire(&install);
        bad.promoted.push(4096);
        assert_eq!(install_from_wire(bad).unwrap_err().code(), tonic::Code::InvalidArgument);
        let mut bad = install_to_wire(&install);
        bad.carried[0].slots.push(5000);
        assert!(install_from_wire(bad).is_err());
        let mut bad = install_to_wire(&install);
        bad.previous = None;
        assert_eq!(install_from_wire(bad).unwrap_err().message(), "no previous configuration");
    }

    #[test]
    fn statuses_survive_the_round_trip_and_bad_slots_are_left_out() {
        let status = ServerStatus {
            address: "a:1".into(),
            epoch: 3,
            standalone: false,
            incarnation: 9,
            keys: 10,
            serving_slots: 2048,
            incoming_slots: 1,
            outgoing_slots: 2,
            replica_slots: 3,
            syncing_slots: 4,
            owed: BTreeMap::from([("b:1".to_owned(), vec![1, 2])]),
            unready: vec![5],
            retired: BTreeMap::from([("c:1".to_owned(), vec![6])]),
            engine: kv_core::EngineStats { durable: true, batches: 7, writes: 8, syncs: 9 },
            resume: Some(Resume { member: ServerId(4), epoch: 12, whole: true }),
            catch_up: CatchUpStats {
                slots: 5,
                slots_equal: 3,
                keys: 40,
                bytes: 900,
                digest_bytes: 120,
                handoff_keys: 7,
                handoff_bytes: 300,
            },
        };
        assert_eq!(server_status_from_wire(&server_status_to_wire(&status)), status);
        let mut wire = server_status_to_wire(&status);
        wire.unready.push(99_999);
        wire.owed.push(v1::ServerSlots { server: "b:1".into(), slots: vec![3, 70_000] });
        let read = server_status_from_wire(&wire);
        assert_eq!(read.unready, vec![5]);
        assert_eq!(read.owed["b:1"], vec![1, 2, 3]);
        let copy = HandOffCopy {
            epoch: 4,
            sender: "a:1".into(),
            to: "b:1".into(),
            slots: vec![8],
            as_snapshot: true,
        };
        assert_eq!(hand_off_copy_from_wire(hand_off_copy_to_wire(&copy)).unwrap(), copy);
        let report = InstallReport { slots_sent: 1, keys_sent: 2, never_arrived: vec![3] };
        assert_eq!(install_report_from_wire(&install_report_to_wire(&report)), report);
        let unheard = vec![UnheardPeer { peer: "c:1".into(), unheard_for: Duration::from_millis(900) }];
        let heard = vec![HeardPeer { peer: "b:1".into(), ago: Duration::from_millis(120) }];
        let resume = Some(Resume { member: ServerId(1), epoch: 2, whole: false });
        let pong = Pong { epoch: 1, incarnation: 2, unheard, heard, resume };
        assert_eq!(pong_from_wire(&pong_to_wire(pong.clone())), pong);
    }
}
