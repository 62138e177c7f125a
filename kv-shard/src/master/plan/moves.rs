//! Planning the installs of a join or leave: who gets the new configuration first.
//!
//! Invariant: every server that sends nothing (each receiver among them) installs before any
//! sender does, so a receiver expects its slots before the first batch for them can arrive, and
//! a slot is refused by its sender only once its receiver owns it.

use std::collections::BTreeSet;

use crate::Config;

/// The servers of a change from `before` to `next`, in install order: the members of `next`
/// that send nothing, then those that lose slots (a leaver among them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InstallOrder {
    /// The members of `next` that send nothing, in member order.
    pub(crate) receivers: Vec<String>,
    /// The servers that lose slots, by address.
    pub(crate) senders: Vec<String>,
}

/// The install order of the change from `before` to `next`.
pub(crate) fn install_order(before: &Config, next: &Config) -> InstallOrder {
    let senders: BTreeSet<&str> =
        before.moves_to(next).iter().filter_map(|m| m.from.and_then(|id| before.address(id))).collect();
    let receivers =
        next.members().map(|(_, a)| a).filter(|a| !senders.contains(a)).map(str::to_owned).collect();
    InstallOrder { receivers, senders: senders.into_iter().map(str::to_owned).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_that_send_nothing_install_first() {
        let two = Config::new().join("a:1").unwrap().join("b:1").unwrap();
        let join = install_order(&two, &two.join("c:1").unwrap());
        assert_eq!(join.receivers, ["c:1"]);
        assert_eq!(join.senders, ["a:1", "b:1"]);
        let leave = install_order(&two, &two.leave("a:1").unwrap());
        assert_eq!(leave.receivers, ["b:1"]);
        assert_eq!(leave.senders, ["a:1"]);
        let first = install_order(&Config::new(), &Config::new().join("a:1").unwrap());
        assert_eq!(first.receivers, ["a:1"]);
        assert!(first.senders.is_empty());
    }
}
