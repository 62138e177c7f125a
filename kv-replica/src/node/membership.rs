//! What a storage server keeps on disk of its membership, and how it comes back with its data
//! after a restart (the protocol is in the crate docs, "Restarts").
//!
//! Invariants:
//! - the record (`member`, one of the engine's own records) names the server's address, its
//!   member id, the epoch of the last configuration it installed, and whether its data was
//!   *whole* at that epoch (no slot of its still arriving, no hand-off owed); it is written after
//!   each install's switch, and again once the data the hand-offs moved is in the engine and
//!   none is owed; a server that stopped being a member (it left, or was failed over) keeps a
//!   record without a member id, and restarted over it drops what it kept at once: its slots are
//!   served elsewhere, and what it still owed was sent from copies;
//! - a server started over the record of another address refuses to start: the data is another
//!   member's;
//! - until the shard master takes it back, a server restarted over a record serves nothing, and
//!   says what it kept in its pings and status ([`Resume`]);
//! - the first configuration it installs decides: taken back as the member it was, it keeps
//!   the data of the slots it is the primary of and drops the rest (the copies it held are
//!   rebuilt from their primaries); made a new member, or none, it drops everything it kept,
//!   exactly-once records included.

use std::sync::{Arc, Mutex};

use kv_core::{Error, Sessions, Storage};
use kv_shard::messages::Resume;
use kv_shard::{Config, ServerId, slot_of};
use tracing::{info, warn};

use super::view::lock;
use crate::{Role, role};

/// The name of the record in the engine.
const RECORD: &str = "member";

/// The first line of a record: its layout's version.
const LAYOUT: &str = "kv-member 1";

/// What a server keeps of its membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberRecord {
    pub(crate) address: String,
    /// None once it is no longer a member.
    pub(crate) member: Option<u64>,
    pub(crate) epoch: u64,
    pub(crate) whole: bool,
}

impl MemberRecord {
    fn encode(&self) -> Vec<u8> {
        let member = self.member.map_or_else(|| "-".to_owned(), |id| id.to_string());
        format!("{LAYOUT}\n{}\n{member}\n{}\n{}", self.address, self.epoch, self.whole).into_bytes()
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "it is not text".to_owned())?;
        let lines: Vec<&str> = text.split('\n').collect();
        let [layout, address, member, epoch, whole] = lines.as_slice() else {
            return Err(format!("{} lines, expected 5", lines.len()));
        };
        if *layout != LAYOUT {
            return Err(format!("layout {layout:?}, this server reads {LAYOUT:?}"));
        }
        let number = |what: &str, text: &str| text.parse::<u64>().map_err(|_| format!("{what} {text:?}"));
        Ok(MemberRecord {
            address: (*address).to_owned(),
            member: if *member == "-" { None } else { Some(number("member id", member)?) },
            epoch: number("epoch", epoch)?,
            whole: whole.parse::<bool>().map_err(|_| format!("whole {whole:?}"))?,
        })
    }
}

/// A server's membership as kept on disk, and what it came back with.
pub(crate) struct Membership {
    storage: Arc<dyn Storage>,
    me: String,
    /// What it kept, until the first install decides what becomes of it.
    resume: Mutex<Option<Resume>>,
    /// The record last written (or read), so that an unchanged one is not written again.
    written: tokio::sync::Mutex<Option<MemberRecord>>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("me", &self.me)
            .field("resume", &self.resume())
            .finish_non_exhaustive()
    }
}

impl Membership {
    pub(crate) fn new(storage: Arc<dyn Storage>, me: String) -> Self {
        Membership { storage, me, resume: Mutex::new(None), written: tokio::sync::Mutex::new(None) }
    }

    /// Reads the record the engine kept, if any: the server waits to be taken back as that
    /// member. A record of a server that was no longer a member has what it kept dropped at once
    /// (from `sessions` too). A record of another address, or one that cannot be read, is an
    /// error.
    pub(crate) async fn restore(&self, sessions: &Sessions) -> Result<Option<Resume>, Error> {
        let Some(bytes) = self.storage.state(RECORD).await? else { return Ok(None) };
        let record = MemberRecord::decode(&bytes).map_err(|why| {
            Error::Storage(format!("the membership record kept with the data is damaged: {why}"))
        })?;
        if record.address != self.me {
            return Err(Error::InvalidArgument(format!(
                "the data kept here is that of the member at {}, not {}: start it as {} (--listen or \
                 --advertise), or give this server another data directory",
                record.address, self.me, record.address
            )));
        }
        let Some(member) = record.member else {
            let dropped = self.drop_everything(sessions).await?;
            self.storage.set_state(RECORD, None).await?;
            info!(dropped_keys = dropped, "this server had stopped being a member: dropped the data it kept");
            return Ok(None);
        };
        let resume = Resume { member: ServerId(member), epoch: record.epoch, whole: record.whole };
        *lock(&self.resume) = Some(resume);
        *self.written.lock().await = Some(record);
        Ok(Some(resume))
    }

    /// Drops every key and exactly-once record kept; returns how many keys there were.
    async fn drop_everything(&self, sessions: &Sessions) -> Result<usize, Error> {
        self.drop_everything_but(sessions, |_| false).await
    }

    /// Drops every key but those `keep` picks, and every exactly-once record; returns how many
    /// keys were dropped.
    async fn drop_everything_but(
        &self,
        sessions: &Sessions,
        keep: impl Fn(&str) -> bool + Sync,
    ) -> Result<usize, Error> {
        let dropped = self.storage.remove_where(&|key| !keep(key)).await?;
        let clients: Vec<(u64, u64)> =
            self.storage.sessions().await?.iter().map(|record| (record.client, u64::MAX)).collect();
        self.storage.forget_sessions(clients).await?;
        sessions.forget(|_| true);
        Ok(dropped)
    }

    /// What it kept, while it waits to be taken back.
    pub(crate) fn resume(&self) -> Option<Resume> {
        *lock(&self.resume)
    }

    /// Before the first install after a restart over a record: if `next` takes it back as the
    /// member it was (it marks it taken back since the record's epoch), keeps the data of the
    /// slots it is a replica of there (its copies catch up from theirs); otherwise (it joined as a
    /// new member, or is none) keeps only the data of the slots it is a secondary of there, as
    /// their copies' base, and no exactly-once record. Drops everything else. Another
    /// configuration of the member it was is refused, and changes nothing.
    pub(crate) async fn settle(&self, next: &Config, sessions: &Sessions) -> Result<(), Error> {
        let Some(resume) = self.resume() else { return Ok(()) };
        let me = self.me.as_str();
        let member = next.id_of(me);
        if member == Some(resume.member) && next.restarted_at(resume.member) <= resume.epoch {
            // The member it was, but not taken back (an older configuration, say): nothing is
            // decided, nothing dropped.
            return Err(Error::InvalidArgument(format!(
                "this server waits to be taken back as member {} with its data; epoch {} does not \
                 take it back",
                resume.member.0,
                next.epoch()
            )));
        }
        if member == Some(resume.member) {
            // Its copies keep their data as the base they catch up from: only what their
            // primaries changed meanwhile is sent.
            let dropped =
                self.storage.remove_where(&|key| role(next, me, slot_of(key)) == Role::None).await?;
            sessions.forget(|slot| role(next, me, slot) != Role::Primary);
            info!(
                epoch = next.epoch(),
                dropped_keys = dropped,
                "taken back as the member this server was: serving its slots from the data it kept"
            );
        } else {
            // Nothing it kept is its own any more, but what it kept of the slots it is a
            // secondary of now is the base those copies catch up from (only what differs is
            // sent); the rest goes, and every exactly-once record.
            let dropped = self
                .drop_everything_but(sessions, |key| role(next, me, slot_of(key)) == Role::Secondary)
                .await?;
            warn!(
                epoch = next.epoch(),
                dropped_keys = dropped,
                "not taken back as the member this server was: dropped the data it kept but its new copies' base"
            );
        }
        *lock(&self.resume) = None;
        Ok(())
    }

    /// Keeps where this server stands after installing `config`: its member id there, the
    /// epoch, and whether its data is whole. Not written again if unchanged.
    pub(crate) async fn record(&self, config: &Config, whole: bool) -> Result<(), Error> {
        let record = Some(MemberRecord {
            address: self.me.clone(),
            member: config.id_of(&self.me).map(|id| id.0),
            epoch: config.epoch(),
            whole,
        });
        let mut written = self.written.lock().await;
        if *written == record {
            return Ok(());
        }
        self.storage.set_state(RECORD, record.as_ref().map(MemberRecord::encode)).await?;
        *written = record;
        Ok(())
    }

    /// Whether the record last written says the data is whole (or this server is no member).
    pub(crate) async fn recorded_whole(&self) -> bool {
        self.written.lock().await.as_ref().is_some_and(|record| record.whole || record.member.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_and_damaged_ones_are_errors() {
        let record = MemberRecord { address: "127.0.0.1:5".into(), member: Some(3), epoch: 17, whole: true };
        assert_eq!(MemberRecord::decode(&record.encode()), Ok(record));
        let left = MemberRecord { address: "127.0.0.1:5".into(), member: None, epoch: 18, whole: false };
        assert_eq!(MemberRecord::decode(&left.encode()), Ok(left));
        for bad in [
            &b"\xff"[..],
            b"",
            b"kv-member 2\na\n1\n2\ntrue",
            b"kv-member 1\na\nx\n2\ntrue",
            b"kv-member 1\na\n1\n2\nyes",
        ] {
            assert!(MemberRecord::decode(bad).is_err(), "{bad:?}");
        }
    }
}
