//! Whether a member that restarted with its data kept can be taken back in place
//! ([`crate::Config::readmit`]), as a pure function of the configurations kept and what it says
//! of itself ([`Resume`]).
//!
//! Invariants (the argument is in `kv_replica`'s docs, "Restarts"):
//! - a member is taken back only as the member it was (the same id), while it is one;
//! - only if its data is that of its slots, whole: every slot it owned at the epoch it last
//!   installed had arrived, and it owed no hand-off then;
//! - only if it owns exactly those slots in every configuration since, all of them kept: then
//!   no write of its slots was committed anywhere without it, and its disk holds every write it
//!   acknowledged (a strong or synchronous write is applied at the primary before it is
//!   acknowledged).

use std::sync::Arc;

use crate::messages::Resume;
use crate::{Config, Slot};

/// Why member `server` of `current` cannot be taken back with the data it kept, if it cannot,
/// from what it says of itself and the configurations kept (`history`, oldest first, `current`
/// last).
pub(crate) fn refusal(
    history: &[Arc<Config>],
    current: &Config,
    server: &str,
    resume: &Resume,
) -> Option<String> {
    let Some(id) = current.id_of(server) else {
        return Some(format!("{server} is no longer a member"));
    };
    if id != resume.member {
        return Some(format!(
            "{server} kept the data of member {}, and is member {} now",
            resume.member.0, id.0
        ));
    }
    if !resume.whole {
        return Some(format!("{server} stopped in the middle of a hand-off at epoch {}", resume.epoch));
    }
    if resume.epoch > current.epoch() {
        return Some(format!(
            "{server} was at epoch {}, past this cluster's {}",
            resume.epoch,
            current.epoch()
        ));
    }
    let since: Vec<&Arc<Config>> = history.iter().filter(|config| config.epoch() >= resume.epoch).collect();
    if since.first().is_none_or(|first| first.epoch() != resume.epoch) {
        return Some(format!("{server} was at epoch {}, older than the configurations kept", resume.epoch));
    }
    let owned = |config: &Config| -> Vec<Slot> {
        (0..).zip(config.slots()).filter(|(_, owner)| **owner == Some(id)).map(|(slot, _)| slot).collect()
    };
    let then = owned(since[0]);
    for config in &since[1..] {
        if config.id_of(server) != Some(id) || owned(config) != then {
            return Some(format!(
                "{server}'s slots changed at epoch {} since it stopped, at epoch {}",
                config.epoch(),
                resume.epoch
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Replication, ServerId};

    fn member(config: &Config, server: &str) -> ServerId {
        config.id_of(server).unwrap_or(ServerId(u64::MAX))
    }

    fn history() -> Vec<Arc<Config>> {
        let replication = Replication { factor: 3, ..Replication::default() };
        let mut config = Config::new().with_replication(replication).unwrap();
        let mut history = vec![Arc::new(config.clone())];
        for address in ["a:1", "b:1", "c:1"] {
            config = config.join(address).unwrap();
            history.push(Arc::new(config.clone()));
        }
        history
    }

    fn resume(config: &Config, server: &str, epoch: u64) -> Resume {
        Resume { member: member(config, server), epoch, whole: true }
    }

    #[test]
    fn a_member_whose_slots_stayed_put_is_taken_back() {
        let history = history();
        let current = history.last().unwrap();
        assert_eq!(refusal(&history, current, "b:1", &resume(current, "b:1", 3)), None);
        // A readmission of another member since changes none of its slots.
        let mut history = history.clone();
        let next = Arc::new(current.readmit("a:1").unwrap());
        history.push(Arc::clone(&next));
        assert_eq!(refusal(&history, &next, "b:1", &resume(&next, "b:1", 3)), None);
        assert_eq!(next.restarted_at(member(&next, "a:1")), 4);
    }

    #[test]
    fn a_member_whose_data_is_not_its_slots_whole_is_not() {
        let history = history();
        let current = history.last().unwrap();
        let why = |resume: Resume| refusal(&history, current, "b:1", &resume).unwrap();
        let mut torn = resume(current, "b:1", 3);
        torn.whole = false;
        assert!(why(torn).contains("middle of a hand-off"));
        // It stopped at epoch 2, before c:1 joined and took some of its slots.
        assert!(why(resume(current, "b:1", 2)).contains("changed at epoch 3"));
        assert!(why(resume(current, "b:1", 9)).contains("past"));
        let mut other = resume(current, "b:1", 3);
        other.member = ServerId(7);
        assert!(why(other).contains("member 7"));
        assert!(refusal(&history, current, "d:1", &resume(current, "b:1", 3)).unwrap().contains("no longer"));
        // Epoch 0 is no longer kept.
        assert!(
            refusal(&history[1..], current, "b:1", &resume(current, "b:1", 0)).unwrap().contains("older")
        );
        let left = current.leave("a:1").unwrap();
        let mut history = history.clone();
        history.push(Arc::new(left.clone()));
        assert!(
            refusal(&history, &left, "b:1", &resume(&left, "b:1", 3)).unwrap().contains("changed at epoch 4")
        );
    }
}
