//! Planning the catch-up of a server that missed configurations: the installs that bring it to
//! the current epoch, one epoch at a time, from the history the shard master keeps.
//!
//! Invariants: a server installs only the epoch after its own (so no slot's history is
//! skipped), except one that holds no slot (it never installed anything, or was failed over),
//! which may start at the epoch it (last) joined at, or was taken back at after a restart; a
//! server behind the oldest configuration kept cannot be caught up this way.

use std::sync::Arc;

use crate::Config;

/// One install of a catch-up: the configuration before, and the one to install.
pub(crate) type Step = (Arc<Config>, Arc<Config>);

/// The installs that bring `address`, at `epoch`, up to the last of `history` (oldest first);
/// `None` if it is too far behind to be caught up step by step.
pub(crate) fn catch_up_steps(history: &[Arc<Config>], address: &str, epoch: u64) -> Option<Vec<Step>> {
    let mut steps: Vec<Step> = history
        .windows(2)
        .filter(|pair| pair[1].epoch() > epoch)
        .map(|pair| (Arc::clone(&pair[0]), Arc::clone(&pair[1])))
        .collect();
    // A server that never installed anything starts with the epoch it (last) joined at, or was
    // (last) taken back at after a restart with its data.
    let joined_or_taken_back = |(from, to): &Step| match to.id_of(address) {
        Some(id) => from.id_of(address).is_none() || to.restarted_at(id) == to.epoch(),
        None => false,
    };
    if epoch == 0
        && let Some(joined) = steps.iter().rposition(joined_or_taken_back)
    {
        steps.drain(..joined);
    }
    if steps.first().is_none_or(|(from, _)| from.epoch() > epoch && epoch > 0) {
        return None;
    }
    Some(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Epochs 0 to 4: a joins, b joins, a leaves, a joins again.
    fn history() -> Vec<Arc<Config>> {
        let mut configs = vec![Config::new()];
        for change in ["+a:1", "+b:1", "-a:1", "+a:1"] {
            let last = configs.last().unwrap();
            let (sign, address) = change.split_at(1);
            configs.push(if sign == "+" { last.join(address) } else { last.leave(address) }.unwrap());
        }
        configs.into_iter().map(Arc::new).collect()
    }

    fn epochs(steps: &[Step]) -> Vec<(u64, u64)> {
        steps.iter().map(|(from, to)| (from.epoch(), to.epoch())).collect()
    }

    #[test]
    fn a_member_taken_back_starts_at_the_epoch_that_took_it_back() {
        let mut history = history();
        let back = history.last().unwrap().readmit("b:1").unwrap();
        history.push(Arc::new(back.clone()));
        history.push(Arc::new(back.join("c:1").unwrap()));
        assert_eq!(epochs(&catch_up_steps(&history, "b:1", 0).unwrap()), [(4, 5), (5, 6)]);
        assert_eq!(epochs(&catch_up_steps(&history, "a:1", 0).unwrap()), [(3, 4), (4, 5), (5, 6)]);
    }

    #[test]
    fn a_server_behind_installs_every_epoch_after_its_own() {
        let history = history();
        assert_eq!(epochs(&catch_up_steps(&history, "b:1", 2).unwrap()), [(2, 3), (3, 4)]);
        assert_eq!(epochs(&catch_up_steps(&history, "b:1", 3).unwrap()), [(3, 4)]);
    }

    #[test]
    fn a_server_that_installed_nothing_starts_where_it_last_joined() {
        let history = history();
        assert_eq!(epochs(&catch_up_steps(&history, "a:1", 0).unwrap()), [(3, 4)]);
        assert_eq!(epochs(&catch_up_steps(&history, "b:1", 0).unwrap()), [(1, 2), (2, 3), (3, 4)]);
    }

    #[test]
    fn a_server_behind_the_history_kept_is_not_caught_up() {
        let history = history();
        assert!(catch_up_steps(&history[2..], "b:1", 1).is_none());
        assert!(catch_up_steps(&history[..1], "b:1", 0).is_none(), "nothing to install");
    }
}
