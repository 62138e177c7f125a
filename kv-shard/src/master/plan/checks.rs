//! The checks a change must pass before the shard master makes it, as pure functions of what
//! the servers answered: a joiner must know itself by the address it joins under and bring no
//! data (unless it is the first member); the last member may leave only empty; and no change
//! starts while the last one is still settling.
//!
//! A refused change changes nothing: these run before the new configuration is committed.

use crate::messages::ServerStatus;
use crate::{Config, Error};

/// Whether the server answering `status` at `server` knows itself by that address.
pub(crate) fn joiner_address(server: &str, status: &ServerStatus) -> Result<(), Error> {
    if status.address != server {
        return Err(Error::FailedPrecondition(format!(
            "the server at {server} knows itself as {}: join it under that address, or start it with \
             --advertise {server}",
            status.address
        )));
    }
    Ok(())
}

/// Whether the joiner at `server` may bring the data it holds into `before`: only the first
/// member may (the cluster adopts it).
pub(crate) fn joiner_data(server: &str, status: &ServerStatus, before: &Config) -> Result<(), Error> {
    // A server that kept the data of an earlier membership drops it when it joins as a new
    // member (it was not taken back in place).
    if status.keys > 0 && !before.is_empty() && status.resume.is_none() {
        return Err(Error::FailedPrecondition(format!(
            "{server} holds {} keys of its own; only the first member of a cluster may bring data",
            status.keys
        )));
    }
    Ok(())
}

/// Whether `server`, the last member, may leave: only without keys, as nothing could take them.
pub(crate) fn last_leaver(server: &str, status: &ServerStatus) -> Result<(), Error> {
    if status.keys > 0 {
        return Err(Error::FailedPrecondition(format!(
            "{server} is the last member and holds {} keys: no server could take them (join another \
             server first, or delete them)",
            status.keys
        )));
    }
    Ok(())
}

/// Why the last change has not settled, from what the servers involved answered at `current`
/// (`None`: no answer; a server that does not answer is not waited for): a member behind the
/// current epoch, or any server still waiting for slots, owing them, or with copies catching up.
pub(crate) fn unsettled(current: &Config, answers: &[(String, Option<ServerStatus>)]) -> Option<String> {
    for (address, status) in answers {
        let Some(status) = status else { continue };
        if current.id_of(address).is_some() && status.epoch < current.epoch() {
            return Some(format!("{address} is at epoch {}, behind {}", status.epoch, current.epoch()));
        }
        if status.incoming_slots > 0 || status.outgoing_slots > 0 {
            return Some(format!(
                "{address} waits for {} slots and owes {}",
                status.incoming_slots, status.outgoing_slots
            ));
        }
        if status.syncing_slots > 0 {
            return Some(format!("{address} has {} copies still catching up", status.syncing_slots));
        }
    }
    None
}

/// A member that would hand slots off or receive them in the change from `before` to `next`
/// and did not answer (`answers`, as for [`unsettled`]), unless the cluster keeps its data in
/// memory (a member that answered says so): kept on disk, it may come back with that data, and
/// is taken back only if its slots stayed where they were (see [`super::readmit`]).
pub(crate) fn silent_mover(
    before: &Config,
    next: &Config,
    answers: &[(String, Option<ServerStatus>)],
) -> Option<String> {
    let in_memory = answers.iter().any(|(_, status)| status.as_ref().is_some_and(|s| !s.engine.durable));
    if in_memory {
        return None;
    }
    let silent = |address: &str| answers.iter().any(|(a, status)| a == address && status.is_none());
    before
        .moves_to(next)
        .into_iter()
        .flat_map(|m| [m.from.and_then(|id| before.address(id)), m.to.and_then(|id| next.address(id))])
        .flatten()
        .find(|mover| silent(mover))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(address: &str, epoch: u64) -> ServerStatus {
        ServerStatus { address: address.to_owned(), epoch, ..ServerStatus::default() }
    }

    #[test]
    fn a_joiner_must_know_its_address_and_bring_data_only_into_an_empty_cluster() {
        assert!(joiner_address("a:1", &status("a:1", 0)).is_ok());
        let err = joiner_address("a:1", &status("b:1", 0)).unwrap_err();
        assert!(err.to_string().contains("--advertise a:1"), "{err}");
        let full = ServerStatus { keys: 3, ..status("a:1", 0) };
        assert!(joiner_data("a:1", &full, &Config::new()).is_ok());
        let cluster = Config::new().join("b:1").unwrap();
        assert!(matches!(joiner_data("a:1", &full, &cluster), Err(Error::FailedPrecondition(_))));
        assert!(joiner_data("a:1", &status("a:1", 0), &cluster).is_ok());
    }

    #[test]
    fn a_durable_cluster_waits_for_a_silent_sender_or_receiver() {
        let before = Config::new().join("a:1").unwrap().join("b:1").unwrap();
        let next = before.join("c:1").unwrap();
        let durable = |address: &str| ServerStatus {
            engine: kv_core::EngineStats { durable: true, ..Default::default() },
            ..status(address, 2)
        };
        let answers = vec![("a:1".to_owned(), Some(durable("a:1"))), ("b:1".to_owned(), None)];
        assert_eq!(silent_mover(&before, &next, &answers).as_deref(), Some("b:1"));
        let leave = before.leave("a:1").unwrap();
        assert_eq!(silent_mover(&before, &leave, &answers).as_deref(), Some("b:1"), "b:1 would receive");
        let in_memory = vec![("a:1".to_owned(), Some(status("a:1", 2))), ("b:1".to_owned(), None)];
        assert_eq!(silent_mover(&before, &next, &in_memory), None, "in memory, it comes back empty");
        let all = vec![("a:1".to_owned(), Some(durable("a:1"))), ("b:1".to_owned(), Some(durable("b:1")))];
        assert_eq!(silent_mover(&before, &next, &all), None);
        let none = vec![("a:1".to_owned(), None), ("b:1".to_owned(), None)];
        assert_eq!(
            silent_mover(&before, &next, &none).as_deref(),
            Some("a:1"),
            "no one to say it is in memory"
        );
    }

    #[test]
    fn the_last_member_leaves_only_empty() {
        assert!(last_leaver("a:1", &status("a:1", 1)).is_ok());
        assert!(last_leaver("a:1", &ServerStatus { keys: 1, ..status("a:1", 1) }).is_err());
    }

    #[test]
    fn a_change_waits_for_the_last_one_to_settle_but_not_for_the_silent() {
        let current = Config::new().join("a:1").unwrap().join("b:1").unwrap();
        let settled = vec![("a:1".to_owned(), Some(status("a:1", 2))), ("b:1".to_owned(), None)];
        assert_eq!(unsettled(&current, &settled), None);
        let behind = vec![("a:1".to_owned(), Some(status("a:1", 1)))];
        assert_eq!(unsettled(&current, &behind).unwrap(), "a:1 is at epoch 1, behind 2");
        let leaver_behind = vec![("c:1".to_owned(), Some(status("c:1", 1)))];
        assert_eq!(unsettled(&current, &leaver_behind), None, "only members must be at the epoch");
        let owing = vec![("c:1".to_owned(), Some(ServerStatus { outgoing_slots: 3, ..status("c:1", 1) }))];
        assert_eq!(unsettled(&current, &owing).unwrap(), "c:1 waits for 0 slots and owes 3");
        let syncing = vec![("b:1".to_owned(), Some(ServerStatus { syncing_slots: 5, ..status("b:1", 2) }))];
        assert_eq!(unsettled(&current, &syncing).unwrap(), "b:1 has 5 copies still catching up");
    }
}
