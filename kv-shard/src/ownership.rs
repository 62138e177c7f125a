//! A storage server's view of the slots it serves, and how it changes with each configuration:
//! steps 1 and 3 of the protocol in the crate docs, as a pure state machine.

use std::collections::BTreeMap;

use crate::{Config, Error, Result, SLOTS, Slot};

/// What a server holds of one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Held {
    /// Not this server's.
    Nothing,
    /// Served here; at this epoch, its data came from `from` (if it came from anywhere).
    Serving { from: Option<String> },
    /// This server's in its configuration, but the data is still coming from `from`.
    Incoming { from: String },
}

/// Why a request for a slot is not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Another server serves it (`owner`, if any) at `epoch`.
    WrongShard {
        /// The server's epoch.
        epoch: u64,
        /// The owner's address in that configuration.
        owner: Option<String>,
    },
    /// It is this server's, but its data has not all arrived.
    Moving {
        /// The server's epoch.
        epoch: u64,
    },
}

/// What a server must do after installing a configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Handoff {
    /// The slots to send, per new owner.
    pub outgoing: BTreeMap<String, Vec<Slot>>,
    /// The slots to wait for, per sender.
    pub incoming: BTreeMap<String, Vec<Slot>>,
    /// Slots this server stopped owning before their data had arrived: it never had them, so it
    /// cannot send them on (only a failed earlier move leaves such slots).
    pub never_arrived: Vec<Slot>,
    /// Slots this server served and that no server owns any more (the last member left).
    pub orphaned: Vec<Slot>,
}

/// What a receiver makes of a batch for a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accept {
    /// Expected: install it.
    Take,
    /// Already installed (a late resend): skip it, but acknowledge.
    Done,
    /// The sender is ahead of this server: retry once this server has caught up.
    Later,
    /// Not expected from this sender at this epoch; the reason says why.
    Refuse(String),
}

/// The slots one server serves, at the epoch of the last configuration it installed.
#[derive(Debug, Clone)]
pub struct Ownership {
    me: String,
    config: Config,
    held: Vec<Held>,
}

impl Ownership {
    /// A server at `me` (its address as members know it) that has installed nothing: epoch 0,
    /// serving nothing.
    pub fn new(me: impl Into<String>) -> Self {
        Ownership { me: me.into(), config: Config::new(), held: vec![Held::Nothing; SLOTS] }
    }

    /// This server's address.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The epoch of the installed configuration.
    pub fn epoch(&self) -> u64 {
        self.config.epoch()
    }

    /// The installed configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether requests for `slot` are served here.
    pub fn check(&self, slot: Slot) -> std::result::Result<(), Refused> {
        match &self.held[usize::from(slot)] {
            Held::Serving { .. } => Ok(()),
            Held::Incoming { .. } => Err(Refused::Moving { epoch: self.epoch() }),
            Held::Nothing => {
                let owner = self.config.owner_of_slot(slot).and_then(|id| self.config.address(id));
                Err(Refused::WrongShard { epoch: self.epoch(), owner: owner.map(str::to_owned) })
            }
        }
    }

    /// Installs `next`, whose predecessor at the shard master was `previous` (that says where
    /// the slots this server gains come from; this server may have missed it). Slots this server
    /// served and no longer owns are to be sent to their new owner; slots it gains are served at
    /// once if nobody owned them, and are otherwise incoming from their previous owner — or from
    /// the server `sources` names for them (a failed owner's slots whose move to it was not over
    /// come from the server still holding their data; from this server itself, they are served
    /// at once).
    pub fn install(
        &mut self,
        previous: &Config,
        next: Config,
        sources: &BTreeMap<Slot, String>,
    ) -> Result<Handoff> {
        // Only a server that holds no slot may skip epochs (one that has installed nothing, or a
        // failed-over one that joins again): the skipped changes could have moved nothing it
        // serves or waits for. What it still owes carries over whatever the epochs.
        let holds_nothing = self.held.iter().all(|held| matches!(held, Held::Nothing));
        let skips = previous.epoch() != self.epoch() && (!holds_nothing || previous.epoch() < self.epoch());
        if next.epoch() <= self.epoch() || previous.epoch() >= next.epoch() || skips {
            return Err(Error::InvalidConfig(format!(
                "cannot install epoch {} (after {}) over epoch {}",
                next.epoch(),
                previous.epoch(),
                self.epoch()
            )));
        }
        let me_next = next.id_of(&self.me);
        let mut handoff = Handoff::default();
        for (index, held) in self.held.iter_mut().enumerate() {
            let slot = Slot::try_from(index).map_err(|_| Error::InvalidConfig("slot out of range".into()))?;
            let owner = next.owner_of_slot(slot);
            let mine = me_next.is_some() && owner == me_next;
            *held = match (std::mem::replace(held, Held::Nothing), mine) {
                (Held::Nothing, true) => {
                    let source = match sources.get(&slot) {
                        Some(from) => Some(from.as_str()),
                        None => previous.owner_of_slot(slot).and_then(|id| previous.address(id)),
                    };
                    match source {
                        Some(from) if from != self.me => {
                            handoff.incoming.entry(from.to_owned()).or_default().push(slot);
                            Held::Incoming { from: from.to_owned() }
                        }
                        _ => Held::Serving { from: None },
                    }
                }
                // Kept, with where its data came from: a sender that carried an unfinished
                // hand-off over to this epoch may resend it, and is told it is done.
                (kept, true) => kept,
                (Held::Serving { .. }, false) => {
                    match owner.and_then(|id| next.address(id)) {
                        Some(to) => handoff.outgoing.entry(to.to_owned()).or_default().push(slot),
                        None => handoff.orphaned.push(slot),
                    }
                    Held::Nothing
                }
                (Held::Incoming { .. }, false) => {
                    handoff.never_arrived.push(slot);
                    Held::Nothing
                }
                (Held::Nothing, false) => Held::Nothing,
            };
        }
        self.config = next;
        Ok(handoff)
    }

    /// What to do with a batch for `slot` that `from` sent for `epoch`.
    pub fn accept(&self, epoch: u64, from: &str, slot: Slot) -> Accept {
        if epoch > self.epoch() {
            return Accept::Later;
        }
        if epoch < self.epoch() {
            return Accept::Refuse(format!(
                "epoch {epoch} is over: this server is at epoch {}",
                self.epoch()
            ));
        }
        match &self.held[usize::from(slot)] {
            Held::Incoming { from: expected } if expected == from => Accept::Take,
            Held::Serving { from: Some(sender) } if sender == from => Accept::Done,
            _ => Accept::Refuse(format!("slot {slot} is not expected from {from} at epoch {epoch}")),
        }
    }

    /// Starts serving `slot` without its data, which was lost with its sender: no batch for it
    /// is accepted afterwards (a sender presumed dead that comes back keeps its copy).
    pub fn abandon(&mut self, slot: Slot) {
        let held = &mut self.held[usize::from(slot)];
        if matches!(held, Held::Incoming { .. }) {
            *held = Held::Serving { from: None };
        }
    }

    /// Whether `slot` is still waiting for its data.
    pub fn is_incoming(&self, slot: Slot) -> bool {
        matches!(self.held[usize::from(slot)], Held::Incoming { .. })
    }

    /// Starts serving `slot`, whose data has all arrived.
    pub fn complete(&mut self, slot: Slot) {
        let held = &mut self.held[usize::from(slot)];
        if let Held::Incoming { from } = held {
            *held = Held::Serving { from: Some(std::mem::take(from)) };
        }
    }

    /// The slots still incoming, per sender.
    pub fn incoming(&self) -> BTreeMap<&str, Vec<Slot>> {
        let mut incoming: BTreeMap<&str, Vec<Slot>> = BTreeMap::new();
        for (slot, held) in (0..).zip(&self.held) {
            if let Held::Incoming { from } = held {
                incoming.entry(from.as_str()).or_default().push(slot);
            }
        }
        incoming
    }

    /// How many slots are served here.
    pub fn serving(&self) -> usize {
        self.held.iter().filter(|held| matches!(held, Held::Serving { .. })).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "127.0.0.1:1";
    const B: &str = "127.0.0.1:2";

    fn none() -> BTreeMap<Slot, String> {
        BTreeMap::new()
    }

    fn owned_by(config: &Config, addr: &str) -> Vec<Slot> {
        let id = config.id_of(addr);
        (0..).zip(config.slots()).filter(|(_, owner)| **owner == id && id.is_some()).map(|(s, _)| s).collect()
    }

    #[test]
    fn a_first_member_serves_everything_at_once() {
        let (c0, c1) = (Config::new(), Config::new().join(A).unwrap());
        let mut a = Ownership::new(A);
        assert_eq!(a.check(0), Err(Refused::WrongShard { epoch: 0, owner: None }));
        let handoff = a.install(&c0, c1.clone(), &none()).unwrap();
        assert_eq!(handoff, Handoff::default());
        assert_eq!(a.serving(), SLOTS);
        assert_eq!(a.check(7), Ok(()));
    }

    #[test]
    fn a_join_sends_the_moved_slots_and_the_joiner_waits_for_them() {
        let c0 = Config::new();
        let c1 = c0.join(A).unwrap();
        let c2 = c1.join(B).unwrap();
        let moved = owned_by(&c2, B);
        let (mut a, mut b) = (Ownership::new(A), Ownership::new(B));
        a.install(&c0, c1.clone(), &none()).unwrap();

        let at_b = b.install(&c1, c2.clone(), &none()).unwrap();
        assert_eq!(at_b.incoming, BTreeMap::from([(A.to_owned(), moved.clone())]));
        assert_eq!(b.check(moved[0]), Err(Refused::Moving { epoch: 2 }));
        // A has not switched yet: it still serves under epoch 1, and refuses nothing.
        assert_eq!(a.check(moved[0]), Ok(()));
        assert_eq!(b.accept(2, A, moved[0]), Accept::Take);
        assert!(matches!(b.accept(2, B, moved[0]), Accept::Refuse(_)), "only from the previous owner");
        assert!(matches!(b.accept(1, A, moved[0]), Accept::Refuse(_)), "an old epoch");
        assert_eq!(b.accept(3, A, moved[0]), Accept::Later);

        let at_a = a.install(&c1, c2.clone(), &none()).unwrap();
        assert_eq!(at_a.outgoing, BTreeMap::from([(B.to_owned(), moved.clone())]));
        assert_eq!(
            a.check(moved[0]),
            Err(Refused::WrongShard { epoch: 2, owner: Some(B.to_owned()) }),
            "the old owner points at the new one"
        );
        for &slot in &moved {
            b.complete(slot);
        }
        assert_eq!(b.check(moved[0]), Ok(()));
        assert_eq!(b.accept(2, A, moved[0]), Accept::Done, "a late resend is acknowledged, not applied");
        assert!(matches!(b.accept(2, "127.0.0.1:9", moved[0]), Accept::Refuse(_)), "from its sender only");
        assert_eq!(a.serving() + b.serving(), SLOTS);
        assert!(b.incoming().is_empty());
    }

    #[test]
    fn a_batch_of_an_older_move_of_the_same_slot_is_refused() {
        // The slot goes from A to B, back to A (B leaves), and to B again (B joins again): a
        // batch of the first move that arrives late carries A's data as it was then, before the
        // writes A took while it served the slot again. Only its epoch tells it apart.
        let c1 = Config::new().join(A).unwrap();
        let c2 = c1.join(B).unwrap();
        let (c3, c4) = (c2.leave(B).unwrap(), c2.leave(B).unwrap().join(B).unwrap());
        let slot = owned_by(&c2, B)[0];
        assert!(owned_by(&c4, B).contains(&slot), "the slot goes to B again");
        let mut b = Ownership::new(B);
        b.install(&c1, c2.clone(), &none()).unwrap();
        assert_eq!(b.accept(2, A, slot), Accept::Take);
        b.complete(slot);
        b.install(&c2, c3.clone(), &none()).unwrap();
        b.install(&c3, c4.clone(), &none()).unwrap();
        assert!(b.is_incoming(slot));
        assert_eq!(b.accept(c4.epoch(), A, slot), Accept::Take);
        assert!(matches!(b.accept(2, A, slot), Accept::Refuse(_)), "a batch of epoch 2 is stale");
    }

    #[test]
    fn installs_go_forward_only() {
        let c1 = Config::new().join(A).unwrap();
        let mut a = Ownership::new(A);
        a.install(&Config::new(), c1.clone(), &none()).unwrap();
        assert!(a.install(&Config::new(), c1.clone(), &none()).is_err());
        assert!(a.install(&c1, c1.clone(), &none()).is_err());
        // Skipping an epoch is refused: the slots moved in it would be misjudged.
        let c2 = c1.join(B).unwrap();
        let c3 = c2.join("127.0.0.1:3").unwrap();
        assert!(a.install(&c2, c3.clone(), &none()).is_err());
        // A server that has installed nothing may start anywhere.
        let mut fresh = Ownership::new("127.0.0.1:3");
        fresh.install(&c2, c3.clone(), &none()).unwrap();
        // So may one that holds nothing any more (failed over while cut off, it joins again).
        let c4 = c3.leave(A).unwrap();
        let mut out = Ownership::new(A);
        out.install(&Config::new(), c1.clone(), &none()).unwrap();
        out.install(&c1, c2.clone(), &none()).unwrap();
        assert!(out.serving() > 0);
        assert!(out.install(&c3, c4.clone(), &none()).is_err(), "it still serves slots");
        let c5 = c4.join("127.0.0.1:4").unwrap();
        let c6 = c5.join(A).unwrap();
        let mut evicted = Ownership::new(A);
        evicted.install(&c3, c4.clone(), &none()).unwrap();
        assert_eq!(evicted.serving(), 0);
        let handoff = evicted.install(&c5, c6.clone(), &none()).unwrap();
        assert_eq!(handoff.incoming.values().map(Vec::len).sum::<usize>(), owned_by(&c6, A).len());
    }

    #[test]
    fn the_last_leave_orphans_and_a_lost_move_is_reported() {
        let c0 = Config::new();
        let c1 = c0.join(A).unwrap();
        let c2 = c1.join(B).unwrap();
        let c3 = c2.leave(B).unwrap();
        let mut b = Ownership::new(B);
        b.install(&c1, c2.clone(), &none()).unwrap();
        // B leaves before A's data arrived: it has nothing to send on.
        let handoff = b.install(&c2, c3.clone(), &none()).unwrap();
        assert_eq!(handoff.never_arrived, owned_by(&c2, B));
        assert!(handoff.outgoing.is_empty());

        let mut a = Ownership::new(A);
        a.install(&c0, c1.clone(), &none()).unwrap();
        let empty = c1.leave(A).unwrap();
        let handoff = a.install(&c1, empty, &none()).unwrap();
        assert_eq!(handoff.orphaned.len(), SLOTS);
    }

    #[test]
    fn a_failed_receiver_s_slots_come_from_the_server_still_holding_them() {
        const C: &str = "127.0.0.1:3";
        let c1 = Config::new().join(A).unwrap();
        let c2 = c1.join(C).unwrap();
        let c3 = c2.join(B).unwrap();
        let (from_a, from_c): (Vec<Slot>, Vec<Slot>) =
            owned_by(&c3, B).into_iter().partition(|&s| c2.owner_of_slot(s) == c2.id_of(A));
        assert!(!from_a.is_empty() && !from_c.is_empty());
        // B fails before anything arrived; its heir, A, gets every slot of B's.
        let (c4, _) = c3.fail(B).unwrap();
        let mut a = Ownership::new(A);
        a.install(&c1, c2.clone(), &none()).unwrap();
        let at_a = a.install(&c2, c3.clone(), &none()).unwrap();
        assert_eq!(at_a.outgoing[B], from_a);
        let sources: BTreeMap<Slot, String> = from_a
            .iter()
            .map(|&s| (s, A.to_owned()))
            .chain(from_c.iter().map(|&s| (s, C.to_owned())))
            .collect();
        let at_a = a.install(&c3, c4.clone(), &sources).unwrap();
        assert_eq!(a.check(from_a[0]), Ok(()), "its own data, never sent: served at once");
        assert_eq!(at_a.incoming, BTreeMap::from([(C.to_owned(), from_c.clone())]));
        assert_eq!(a.accept(c4.epoch(), C, from_c[0]), Accept::Take, "from the sender, not the failed B");
        assert!(matches!(a.accept(c4.epoch(), B, from_c[0]), Accept::Refuse(_)));

        // Another member fails while C's hand-off to B is half done: a slot that arrived stays
        // done at the next epoch (C's carried-over resend is acknowledged, not applied over newer
        // writes), and the others are still expected from C.
        let mut b = Ownership::new(B);
        b.install(&c2, c3.clone(), &none()).unwrap();
        b.complete(from_c[0]);
        let (c4, _) = c3.fail(A).unwrap();
        b.install(&c3, c4.clone(), &none()).unwrap();
        assert_eq!(b.accept(c4.epoch(), C, from_c[0]), Accept::Done);
        assert_eq!(b.accept(c4.epoch(), C, from_c[1]), Accept::Take, "still waiting for the rest");
    }
}
