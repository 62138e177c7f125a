//! Hash slots and numbered configurations that assign them to servers.

use std::collections::BTreeMap;

use xxhash_rust::xxh3::xxh3_64;

use crate::replication::Replication;
use crate::{Error, Result};

/// Number of hash slots. Each member holds `⌊SLOTS / N⌋` or `⌈SLOTS / N⌉` of them.
pub const SLOTS: usize = 4096;

/// A hash slot, `0..SLOTS`.
pub type Slot = u16;

/// The slot of `key`: `xxh3_64(key) mod SLOTS`. Stable: it depends on the key's bytes only.
pub fn slot_of(key: &str) -> Slot {
    // SLOTS fits in a u16, so the remainder does too.
    (xxh3_64(key.as_bytes()) % SLOTS as u64) as Slot
}

/// Whether `addr` is `host:port` written one way only, so that one server cannot join twice
/// under two spellings: a port of decimal digits without a sign or leading zero, in 1..=65535; a
/// host without spaces, in lower case, with an IPv6 address in brackets.
fn is_canonical_address(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else { return false };
    let port_ok = !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && !port.starts_with('0')
        && port.parse::<u16>().is_ok();
    let host_ok = !host.is_empty()
        && !host.chars().any(|c| c.is_whitespace() || c.is_uppercase())
        && (host.contains(':') == (host.starts_with('[') && host.ends_with(']')));
    port_ok && host_ok
}

/// A member's identity within a configuration history: assigned in join order, never reused,
/// so a server that leaves and joins again is a new member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerId(pub u64);

/// One slot changing owner between two configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotMove {
    /// The slot.
    pub slot: Slot,
    /// Its owner before (none if there was no member).
    pub from: Option<ServerId>,
    /// Its owner after (none if no member is left).
    pub to: Option<ServerId>,
}

/// A numbered assignment of every slot to a member (or to none, when there are no members), and
/// of its replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    epoch: u64,
    /// Members by id; ids grow with join order, so iteration is oldest first.
    members: BTreeMap<ServerId, String>,
    slots: Vec<Option<ServerId>>,
    next_id: u64,
    replication: Replication,
    /// The members that came back with their data after a restart ([`Config::readmit`]), by the
    /// epoch that took them back (the last time, if more than once).
    restarts: BTreeMap<ServerId, u64>,
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

impl Config {
    /// Epoch 0: no members, no slot assigned.
    pub fn new() -> Self {
        Config {
            epoch: 0,
            members: BTreeMap::new(),
            slots: vec![None; SLOTS],
            next_id: 0,
            replication: Replication::default(),
            restarts: BTreeMap::new(),
        }
    }

    /// This configuration with other replication settings (checked).
    pub fn with_replication(mut self, replication: Replication) -> Result<Config> {
        replication.validate()?;
        self.replication = replication;
        Ok(self)
    }

    /// The replication settings.
    pub fn replication(&self) -> &Replication {
        &self.replication
    }

    /// The replicas of `slot`, primary first: its owner, then the next members in id order,
    /// wrapping around, `min(factor, members)` in all. Empty when there is no member.
    ///
    /// So every member is primary for about `1/N` of the slots and secondary for about
    /// `(factor − 1)/N`, and a join or leave changes the replicas of few slots.
    pub fn replicas_of_slot(&self, slot: Slot) -> Vec<ServerId> {
        let Some(primary) = self.owner_of_slot(slot) else { return Vec::new() };
        let count = self.replication.factor.min(self.members.len());
        let after = self.members.range(primary..).map(|(id, _)| *id);
        let before = self.members.range(..primary).map(|(id, _)| *id);
        after.chain(before).take(count).collect()
    }

    /// The replicas of `key`'s slot, primary first, with their addresses.
    pub fn replicas(&self, key: &str) -> Vec<(ServerId, &str)> {
        self.replicas_of_slot(slot_of(key))
            .into_iter()
            .filter_map(|id| Some((id, self.address(id)?)))
            .collect()
    }

    /// The configuration's number; it grows by one at every change.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The members, oldest first, with their addresses.
    pub fn members(&self) -> impl Iterator<Item = (ServerId, &str)> {
        self.members.iter().map(|(id, addr)| (*id, addr.as_str()))
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there is no member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The member with address `addr`.
    pub fn id_of(&self, addr: &str) -> Option<ServerId> {
        self.members.iter().find(|(_, a)| a.as_str() == addr).map(|(id, _)| *id)
    }

    /// The address of member `id`.
    pub fn address(&self, id: ServerId) -> Option<&str> {
        self.members.get(&id).map(String::as_str)
    }

    /// The owner of every slot, indexed by slot.
    pub fn slots(&self) -> &[Option<ServerId>] {
        &self.slots
    }

    /// The owner of `slot`.
    pub fn owner_of_slot(&self, slot: Slot) -> Option<ServerId> {
        self.slots.get(usize::from(slot)).copied().flatten()
    }

    /// The owner of `key`, with its address.
    pub fn owner(&self, key: &str) -> Option<(ServerId, &str)> {
        let id = self.owner_of_slot(slot_of(key))?;
        Some((id, self.address(id)?))
    }

    /// How many slots each member holds.
    pub fn slot_counts(&self) -> BTreeMap<ServerId, usize> {
        let mut counts: BTreeMap<ServerId, usize> = self.members.keys().map(|id| (*id, 0)).collect();
        for owner in self.slots.iter().flatten() {
            *counts.entry(*owner).or_default() += 1;
        }
        counts
    }

    /// A configuration from its parts (as received over the wire), checked: `slots` has
    /// [`SLOTS`] entries, every owner is a member, and every slot has an owner iff there is a
    /// member. `next_id`, the id the next member will get ([`Config::next_id`]), must be above
    /// every member's.
    pub fn from_parts(
        epoch: u64,
        members: impl IntoIterator<Item = (ServerId, String)>,
        slots: Vec<Option<ServerId>>,
        next_id: u64,
    ) -> Result<Config> {
        let members: BTreeMap<ServerId, String> = members.into_iter().collect();
        let invalid = |reason: String| Err(Error::InvalidConfig(reason));
        if slots.len() != SLOTS {
            return invalid(format!("{} slots, expected {SLOTS}", slots.len()));
        }
        if let Some(owner) = slots.iter().flatten().find(|owner| !members.contains_key(owner)) {
            return invalid(format!("slot owner {} is not a member", owner.0));
        }
        if slots.iter().any(Option::is_none) != members.is_empty() {
            return invalid("slots must be owned exactly when there are members".to_owned());
        }
        if epoch == 0 && !members.is_empty() {
            return invalid("epoch 0 has no member".to_owned());
        }
        if members.keys().next_back().is_some_and(|id| id.0 >= next_id) {
            return invalid(format!("next member id {next_id} is taken"));
        }
        Ok(Config {
            epoch,
            members,
            slots,
            next_id,
            replication: Replication::default(),
            restarts: BTreeMap::new(),
        })
    }

    /// This configuration with the members' readmissions ([`Config::restarted_at`]) as given
    /// (received over the wire, say), checked: each is of a member, at an epoch from 1 to this
    /// one.
    pub fn with_restarts(mut self, restarts: BTreeMap<ServerId, u64>) -> Result<Config> {
        if let Some((id, epoch)) = restarts
            .iter()
            .find(|(id, epoch)| !self.members.contains_key(id) || **epoch == 0 || **epoch > self.epoch)
        {
            return Err(Error::InvalidConfig(format!(
                "member {} cannot have been taken back at epoch {epoch} of {}",
                id.0, self.epoch
            )));
        }
        self.restarts = restarts;
        Ok(self)
    }

    /// The epoch that last took member `id` back after a restart with its data (0: none did).
    /// A copy of a slot whose primary, or whose holder, was taken back since is rebuilt from the
    /// primary's data ([`crate::roles::keeps_copy`]): the process that fed it, or held it, is
    /// gone, and with it what it had in flight.
    pub fn restarted_at(&self, id: ServerId) -> u64 {
        self.restarts.get(&id).copied().unwrap_or(0)
    }

    /// Every readmission of a member, by member.
    pub fn restarts(&self) -> &BTreeMap<ServerId, u64> {
        &self.restarts
    }

    /// The configuration after member `addr` restarted and came back with its data: the next
    /// epoch, the same members and slots, and `addr` marked as taken back at it
    /// ([`Config::restarted_at`]).
    pub fn readmit(&self, addr: &str) -> Result<Config> {
        let Some(id) = self.id_of(addr) else {
            return Err(Error::NotMember(addr.to_owned()));
        };
        let mut next = self.clone();
        next.epoch += 1;
        next.restarts.insert(id, next.epoch);
        Ok(next)
    }

    /// The id the next member to join will get.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// The configuration after `addr` joins: the next epoch, with the new member holding
    /// `⌊SLOTS / (N+1)⌋` slots taken from the members holding the most.
    pub fn join(&self, addr: &str) -> Result<Config> {
        if !is_canonical_address(addr) {
            return Err(Error::InvalidAddress(addr.to_owned()));
        }
        if self.id_of(addr).is_some() {
            return Err(Error::AlreadyMember(addr.to_owned()));
        }
        let mut next = self.clone();
        next.epoch += 1;
        let id = ServerId(next.next_id);
        next.next_id += 1;
        next.members.insert(id, addr.to_owned());
        if self.members.is_empty() {
            next.slots = vec![Some(id); SLOTS];
            return Ok(next);
        }
        let mut owned = self.owned_slots();
        let target = SLOTS / next.members.len();
        for _ in 0..target {
            // The member holding the most slots; ties to the oldest.
            let Some((_, donor_slots)) =
                owned.iter_mut().max_by(|(a_id, a), (b_id, b)| a.len().cmp(&b.len()).then(b_id.cmp(a_id)))
            else {
                break;
            };
            let Some(slot) = donor_slots.pop() else { break };
            next.slots[usize::from(slot)] = Some(id);
        }
        Ok(next)
    }

    /// The configuration after member `addr` *failed* (it is gone, and did not hand its slots
    /// off): the next epoch without it, each of its slots given to the slot's first secondary —
    /// the next member in id order, wrapping — which holds a copy of it when the replication
    /// factor is 2 or more. Returns the slots given, with the configuration. The last member
    /// cannot fail over to anyone.
    pub fn fail(&self, addr: &str) -> Result<(Config, Vec<Slot>)> {
        self.fail_to(addr, &BTreeMap::new())
    }

    /// [`Config::fail`], with the slots `heirs` names given to the member it names for them
    /// (another member: one of their secondaries whose copy is up to date, say), and the others
    /// to their first secondary.
    pub fn fail_to(&self, addr: &str, heirs: &BTreeMap<Slot, ServerId>) -> Result<(Config, Vec<Slot>)> {
        let Some(id) = self.id_of(addr) else {
            return Err(Error::NotMember(addr.to_owned()));
        };
        let first = self.members.range(id..).nth(1).or_else(|| self.members.iter().next()).map(|(m, _)| *m);
        let Some(first) = first.filter(|&heir| heir != id) else {
            return Err(Error::InvalidConfig(format!(
                "{addr} is the last member: no one can take its slots"
            )));
        };
        if let Some((slot, heir)) =
            heirs.iter().find(|(_, heir)| **heir == id || !self.members.contains_key(heir))
        {
            return Err(Error::InvalidConfig(format!(
                "slot {slot} cannot go to member {}: it is not a member that stays",
                heir.0
            )));
        }
        let mut next = self.clone();
        next.epoch += 1;
        next.members.remove(&id);
        next.restarts.remove(&id);
        let mut promoted = Vec::new();
        for (slot, owner) in next.slots.iter_mut().enumerate() {
            if *owner == Some(id) {
                let slot = slot as Slot;
                *owner = Some(heirs.get(&slot).copied().unwrap_or(first));
                promoted.push(slot);
            }
        }
        Ok((next, promoted))
    }

    /// The configuration after `addr` leaves: the next epoch, with each of its slots given to a
    /// member holding the fewest. When the last member leaves, no slot has an owner.
    pub fn leave(&self, addr: &str) -> Result<Config> {
        let Some(id) = self.id_of(addr) else {
            return Err(Error::NotMember(addr.to_owned()));
        };
        let mut next = self.clone();
        next.epoch += 1;
        next.members.remove(&id);
        next.restarts.remove(&id);
        let mut owned = self.owned_slots();
        let leaving = owned.remove(&id).unwrap_or_default();
        let mut counts: BTreeMap<ServerId, usize> = owned.iter().map(|(m, s)| (*m, s.len())).collect();
        for slot in leaving {
            // The member holding the fewest slots; ties to the oldest.
            let heir =
                counts.iter().min_by(|(a_id, a), (b_id, b)| a.cmp(b).then(a_id.cmp(b_id))).map(|(m, _)| *m);
            if let Some(heir) = heir {
                *counts.entry(heir).or_default() += 1;
            }
            next.slots[usize::from(slot)] = heir;
        }
        Ok(next)
    }

    /// The slots whose owner differs between `self` and `next`, in slot order.
    pub fn moves_to(&self, next: &Config) -> Vec<SlotMove> {
        self.slots
            .iter()
            .zip(&next.slots)
            .enumerate()
            .filter(|(_, (from, to))| from != to)
            .map(|(slot, (from, to))| SlotMove { slot: slot as Slot, from: *from, to: *to })
            .collect()
    }

    /// Each member's slots, ascending.
    fn owned_slots(&self) -> BTreeMap<ServerId, Vec<Slot>> {
        let mut owned: BTreeMap<ServerId, Vec<Slot>> =
            self.members.keys().map(|id| (*id, Vec::new())).collect();
        for (slot, owner) in self.slots.iter().enumerate() {
            if let Some(owner) = owner {
                owned.entry(*owner).or_default().push(slot as Slot);
            }
        }
        owned
    }
}

#[cfg(test)]
mod tests;
