//! Exactly-once writes: the answers of recent writes, remembered per client.
//!
//! A client that retries a write it got no answer for cannot tell whether the first attempt was
//! applied. So every write may carry a [`RequestId`]: a client id, the write's number within that
//! client, and the lowest number the client still awaits an answer for. [`Sessions`] remembers
//! the output of every identified write until the client says it has the answer, and a retry is
//! answered from that memory instead of being applied again.
//!
//! Invariants:
//! - **At most once.** Between [`Sessions::begin`] and the end of its [`Ticket`], a write is *in
//!   progress*: a concurrent retry of it is told to try again later ([`Error::InProgress`]),
//!   never applied alongside it. Once finished, a retry gets the recorded output.
//! - **A refused write is forgotten.** If the engine refuses the write (or the ticket is dropped
//!   before it is finished, say because the request was cancelled before it reached the engine),
//!   nothing changed, so nothing is recorded and a retry is applied afresh.
//! - **Bounded memory.** Answers below a client's `first_unanswered` are dropped. A retry of one
//!   of those is refused ([`Error::StaleRetry`]): a well-behaved client never sends it. A client
//!   idle for longer than the expiry loses its session, and at most
//!   [`Sessions::MAX_ANSWERS_PER_CLIENT`] answers are kept per client.
//!
//! The caller must make the write and [`Ticket::finish`] happen together: nothing may cancel it
//! between the engine applying the write and the ticket recording its output (the in-memory
//! engine applies without yielding, so a handler calling `finish` right after `apply` is safe).
//!
//! A durable engine keeps each answer with its write ([`crate::Storage::apply_recorded`]), and
//! gives them back at start-up ([`crate::Storage::sessions`], for [`Sessions::import`]); the
//! clients whose sessions expire are handed over by [`Sessions::take_expired`], for the engine
//! to forget too.
//!
//! Sessions are plain data with an explicit clock, so that tests can drive time, and they can move
//! with the keys they cover: every answer is tagged with the partition (the hash slot, in a
//! sharded cluster) of the key it wrote, and [`Sessions::export`], [`Sessions::import`] and
//! [`Sessions::forget`] hand the answers of some partitions to another server. A client's floor
//! (what it has answers for) holds for all of its writes, wherever they went, so an import merges
//! floors by taking the larger.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use dashmap::DashMap;
use std::time::{Duration, Instant};

use crate::{Error, Output, Result};

/// Identifies a write for exactly-once retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId {
    /// The client, a random nonzero number it picked.
    pub client: u64,
    /// The write's number within the client.
    pub seq: u64,
    /// The lowest number the client still awaits an answer for: the answers below it may be
    /// forgotten.
    pub first_unanswered: u64,
}

/// A remembered write: its fingerprint ([`crate::Mutation::fingerprint`]), and its answer once
/// it has one.
#[derive(Debug, Clone)]
enum Entry {
    InProgress(u64),
    Answered { fingerprint: u64, output: Output, tag: u16 },
}

impl Entry {
    fn fingerprint(&self) -> u64 {
        match self {
            Entry::InProgress(f) | Entry::Answered { fingerprint: f, .. } => *f,
        }
    }
}

/// One client's remembered answers for some partitions, as [`Sessions::export`] hands them over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The client.
    pub client: u64,
    /// Every write of the client numbered below this has been answered and forgotten.
    pub floor: u64,
    /// The remembered answers.
    pub answers: Vec<Answer>,
}

/// The answer of one applied write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The write's number.
    pub seq: u64,
    /// What the write did ([`crate::Mutation::fingerprint`]).
    pub fingerprint: u64,
    /// Its output.
    pub output: Output,
    /// The partition of the key it wrote.
    pub tag: u16,
}

#[derive(Debug)]
struct Session {
    /// Every number below this has been forgotten.
    floor: u64,
    entries: BTreeMap<u64, Entry>,
    last_seen: Instant,
}

impl Session {
    /// Forgets every answer below `floor`, if it is above the current one; returns the numbers
    /// of the answers it forgot.
    fn raise_floor(&mut self, floor: u64) -> Vec<u64> {
        let mut forgotten = Vec::new();
        if floor > self.floor {
            self.floor = floor;
            // One by one, not `split_off`: the floor usually moves by one.
            while let Some(oldest) = self.entries.first_entry() {
                if *oldest.key() >= floor {
                    break;
                }
                forgotten.push(*oldest.key());
                oldest.remove();
            }
        }
        forgotten
    }

    /// The highest write number this session knows of: every answer kept for it is at or below.
    fn highest(&self) -> u64 {
        self.entries.last_key_value().map_or(0, |(&seq, _)| seq).max(self.floor)
    }
}

/// What [`Sessions::begin`] says about a write.
#[derive(Debug)]
pub enum Begin<'s> {
    /// Not seen before (or refused before): apply it, then [`Ticket::finish`] it.
    Apply(Ticket<'s>),
    /// Applied before: this is its output.
    Answered(Output),
}

/// The right to apply one write. Dropping it unfinished forgets the write.
#[derive(Debug)]
#[must_use = "an unfinished ticket forgets its write"]
pub struct Ticket<'s> {
    sessions: &'s Sessions,
    id: RequestId,
    fingerprint: u64,
    tag: u16,
    finished: bool,
    /// The client's answers `begin` forgot (below its new floor, or past the cap).
    forgotten: Vec<u64>,
}

impl Ticket<'_> {
    /// The numbers of the client's answers this write's `begin` forgot: an engine that keeps the
    /// answers on disk forgets them with the write ([`crate::Recording::forget`]).
    pub fn forgotten(&self) -> &[u64] {
        &self.forgotten
    }

    /// Records the write's output, for its retries.
    pub fn finish(mut self, output: &Output) {
        self.finished = true;
        self.sessions.with_session(self.id.client, |session| {
            if let Some(entry) = session.entries.get_mut(&self.id.seq) {
                *entry =
                    Entry::Answered { fingerprint: self.fingerprint, output: output.clone(), tag: self.tag };
            }
        });
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.sessions.with_session(self.id.client, |session| {
                if matches!(session.entries.get(&self.id.seq), Some(Entry::InProgress(_))) {
                    session.entries.remove(&self.id.seq);
                }
            });
        }
    }
}

/// The answers of recent identified writes, per client. Clients are spread over the shards of a
/// [`DashMap`], so writes of different clients do not wait on one lock.
#[derive(Debug)]
pub struct Sessions {
    clients: DashMap<u64, Session>,
    expiry: Duration,
    last_sweep: Mutex<Option<Instant>>,
    /// The clients whose sessions expired, each with the highest write number it had, until
    /// [`Sessions::take_expired`] takes them.
    expired: Mutex<Vec<(u64, u64)>>,
    /// Whether `expired` holds any.
    any_expired: AtomicBool,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new(Self::DEFAULT_EXPIRY)
    }
}

impl Sessions {
    /// How long an idle client's session is kept by default.
    pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(600);

    /// The most answers kept per client; past it the oldest are forgotten.
    pub const MAX_ANSWERS_PER_CLIENT: usize = 100_000;

    /// Sessions that expire after `expiry` without a write.
    pub fn new(expiry: Duration) -> Self {
        Sessions {
            clients: DashMap::new(),
            expiry,
            last_sweep: Mutex::new(None),
            expired: Mutex::new(Vec::new()),
            any_expired: AtomicBool::new(false),
        }
    }

    /// Number of clients with a session.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// Starts the write `id` at `now`: either it must be applied (with the returned ticket), or
    /// it was already and this is its output. `fingerprint` identifies what the write does
    /// ([`crate::Mutation::fingerprint`]): a retry must be the same write, and an id reused for
    /// another write is refused rather than answered with the first one's output. `tag` is the
    /// partition of the key written (0 where nothing is partitioned).
    pub fn begin(&self, id: RequestId, fingerprint: u64, tag: u16, now: Instant) -> Result<Begin<'_>> {
        self.sweep(now);
        let mut session = self.touch(id.client, now);
        // Forget what the client has its answers for.
        let mut forgotten = session.raise_floor(id.first_unanswered);
        if id.seq < session.floor {
            return Err(Error::StaleRetry { client: id.client, seq: id.seq });
        }
        match session.entries.get(&id.seq) {
            Some(entry) if entry.fingerprint() != fingerprint => {
                return Err(Error::InvalidArgument(format!(
                    "write {} of client {} was another write: a retry must repeat it exactly",
                    id.seq, id.client
                )));
            }
            Some(Entry::Answered { output, .. }) => return Ok(Begin::Answered(output.clone())),
            Some(Entry::InProgress(_)) => return Err(Error::InProgress { client: id.client, seq: id.seq }),
            None => {}
        }
        session.entries.insert(id.seq, Entry::InProgress(fingerprint));
        while session.entries.len() > Self::MAX_ANSWERS_PER_CLIENT {
            let Some((&oldest, _)) = session.entries.first_key_value() else { break };
            session.entries.remove(&oldest);
            session.floor = oldest + 1;
            forgotten.push(oldest);
        }
        Ok(Begin::Apply(Ticket { sessions: self, id, fingerprint, tag, finished: false, forgotten }))
    }

    /// The answers of the partitions `select` picks, per client (in client order), with the
    /// client's floor. Writes
    /// in progress are not exported: the caller exports partitions it has stopped writing to, once
    /// the writes in flight have finished.
    pub fn export(&self, select: impl Fn(u16) -> bool) -> Vec<SessionRecord> {
        let mut records = Vec::new();
        for session in &self.clients {
            let answers: Vec<Answer> = session
                .entries
                .iter()
                .filter_map(|(&seq, entry)| match entry {
                    Entry::Answered { fingerprint, output, tag } if select(*tag) => {
                        Some(Answer { seq, fingerprint: *fingerprint, output: output.clone(), tag: *tag })
                    }
                    _ => None,
                })
                .collect();
            if !answers.is_empty() {
                records.push(SessionRecord { client: *session.key(), floor: session.floor, answers });
            }
        }
        // In client order, whatever the map's hashing: a run is then the same every time.
        records.sort_unstable_by_key(|record| record.client);
        records
    }

    /// Merges records exported by another server: floors by the larger, answers by union (an
    /// answer already here is kept).
    pub fn import(&self, records: Vec<SessionRecord>, now: Instant) {
        for record in records {
            let mut session = self.touch(record.client, now);
            let _ = session.raise_floor(record.floor);
            for answer in record.answers {
                if answer.seq < session.floor {
                    continue;
                }
                session.entries.entry(answer.seq).or_insert(Entry::Answered {
                    fingerprint: answer.fingerprint,
                    output: answer.output,
                    tag: answer.tag,
                });
            }
        }
    }

    /// Drops the answers of the partitions `select` picks (once they are safe elsewhere).
    pub fn forget(&self, select: impl Fn(u16) -> bool) {
        for mut session in self.clients.iter_mut() {
            session.entries.retain(|_, entry| !matches!(entry, Entry::Answered { tag, .. } if select(*tag)));
        }
    }

    /// The session of `client`, created if new, seen at `now`.
    fn touch(&self, client: u64, now: Instant) -> dashmap::mapref::one::RefMut<'_, u64, Session> {
        let mut session = self.clients.entry(client).or_insert_with(|| Session {
            floor: 0,
            entries: BTreeMap::new(),
            last_seen: now,
        });
        session.last_seen = now;
        session
    }

    /// Drops the sessions idle for longer than the expiry, at most once per expiry period.
    fn sweep(&self, now: Instant) {
        {
            let mut last = self.last_sweep.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match *last {
                Some(at) if now.saturating_duration_since(at) < self.expiry => return,
                _ => *last = Some(now),
            }
        }
        let mut expired = Vec::new();
        self.clients.retain(|&client, s| {
            let keep = now.saturating_duration_since(s.last_seen) <= self.expiry;
            if !keep {
                expired.push((client, s.highest()));
            }
            keep
        });
        if !expired.is_empty() {
            self.expired.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(expired);
            self.any_expired.store(true, Ordering::Release);
        }
    }

    /// The clients whose sessions expired since the last call, each with the highest write
    /// number its session had: an engine that keeps their records on disk forgets those up to
    /// it ([`crate::Storage::forget_sessions`]). A client that comes back writes above it, so
    /// its new records are kept.
    pub fn take_expired(&self) -> Vec<(u64, u64)> {
        if !self.any_expired.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        let mut expired =
            std::mem::take(&mut *self.expired.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        expired.sort_unstable();
        expired
    }

    fn with_session(&self, client: u64, f: impl FnOnce(&mut Session)) {
        if let Some(mut session) = self.clients.get_mut(&client) {
            f(&mut session);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64, first_unanswered: u64) -> RequestId {
        RequestId { client: 7, seq, first_unanswered }
    }

    fn apply<'s>(begin: Result<Begin<'s>>) -> Ticket<'s> {
        match begin {
            Ok(Begin::Apply(ticket)) => ticket,
            other => panic!("expected to apply, got {other:?}"),
        }
    }

    #[test]
    fn a_retry_of_a_finished_write_gets_its_answer() {
        let s = Sessions::default();
        let now = Instant::now();
        apply(s.begin(id(1, 1), 0, 0, now)).finish(&Output::Popped(Some("a".into())));
        match s.begin(id(1, 1), 0, 0, now) {
            Ok(Begin::Answered(out)) => assert_eq!(out, Output::Popped(Some("a".into()))),
            other => panic!("{other:?}"),
        }
        // Another number is another write.
        drop(apply(s.begin(id(2, 1), 0, 0, now)));
    }

    #[test]
    fn a_retry_during_the_write_is_told_to_wait_and_a_dropped_ticket_forgets() {
        let s = Sessions::default();
        let now = Instant::now();
        let ticket = apply(s.begin(id(1, 1), 0, 0, now));
        assert_eq!(s.begin(id(1, 1), 0, 0, now).unwrap_err(), Error::InProgress { client: 7, seq: 1 });
        drop(ticket);
        let again = apply(s.begin(id(1, 1), 0, 0, now));
        again.finish(&Output::Unit);
        assert!(matches!(s.begin(id(1, 1), 0, 0, now), Ok(Begin::Answered(Output::Unit))));
    }

    #[test]
    fn answers_the_client_has_are_forgotten_and_their_retries_refused() {
        let s = Sessions::default();
        let now = Instant::now();
        for seq in 1..=3 {
            apply(s.begin(id(seq, 1), 0, 0, now)).finish(&Output::Unit);
        }
        apply(s.begin(id(4, 3), 0, 0, now)).finish(&Output::Unit);
        assert_eq!(s.begin(id(2, 3), 0, 0, now).unwrap_err(), Error::StaleRetry { client: 7, seq: 2 });
        assert!(matches!(s.begin(id(3, 3), 0, 0, now), Ok(Begin::Answered(_))));
        // A client id is its own session.
        let other = RequestId { client: 8, seq: 2, first_unanswered: 1 };
        drop(apply(s.begin(other, 0, 0, now)));
    }

    #[test]
    fn an_id_reused_for_another_write_is_refused() {
        let s = Sessions::default();
        let now = Instant::now();
        apply(s.begin(id(1, 1), 11, 0, now)).finish(&Output::Unit);
        assert!(matches!(s.begin(id(1, 1), 22, 0, now), Err(Error::InvalidArgument(_))));
        assert!(matches!(s.begin(id(1, 1), 11, 0, now), Ok(Begin::Answered(Output::Unit))));
    }

    #[test]
    fn a_write_that_raises_the_floor_says_which_answers_it_forgot() {
        let s = Sessions::default();
        let now = Instant::now();
        for seq in 1..=3 {
            apply(s.begin(RequestId { client: 1, seq, first_unanswered: 1 }, seq, 0, now))
                .finish(&Output::Unit);
        }
        let Begin::Apply(ticket) =
            s.begin(RequestId { client: 1, seq: 4, first_unanswered: 3 }, 4, 0, now).unwrap()
        else {
            panic!("a new write");
        };
        assert_eq!(ticket.forgotten(), &[1, 2]);
        ticket.finish(&Output::Unit);
    }

    #[test]
    fn idle_sessions_expire() {
        let s = Sessions::new(Duration::from_secs(10));
        let t0 = Instant::now();
        apply(s.begin(id(1, 1), 0, 0, t0)).finish(&Output::Unit);
        let other = RequestId { client: 9, seq: 1, first_unanswered: 1 };
        apply(s.begin(other, 0, 0, t0 + Duration::from_secs(5))).finish(&Output::Unit);
        assert_eq!(s.clients(), 2);
        apply(s.begin(
            RequestId { client: 9, seq: 2, first_unanswered: 2 },
            0,
            0,
            t0 + Duration::from_secs(12),
        ))
        .finish(&Output::Unit);
        assert_eq!(s.clients(), 1, "client 7 was idle for 12 s");
        assert_eq!(s.take_expired(), vec![(7, 1)], "the expired client is told, for the engine to forget");
        assert_eq!(s.take_expired(), Vec::<(u64, u64)>::new(), "once");
    }

    #[test]
    fn answers_move_with_their_partition_and_floors_merge_by_the_larger() {
        let (a, b) = (Sessions::default(), Sessions::default());
        let now = Instant::now();
        apply(a.begin(id(1, 1), 10, 5, now)).finish(&Output::Popped(Some("x".into())));
        apply(a.begin(id(2, 1), 20, 6, now)).finish(&Output::Unit);
        apply(a.begin(id(3, 1), 30, 5, now)).finish(&Output::Deleted(true));
        let in_progress = apply(a.begin(id(4, 1), 40, 5, now));
        let records = a.export(|tag| tag == 5);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].floor, 1);
        let seqs: Vec<u64> = records[0].answers.iter().map(|answer| answer.seq).collect();
        assert_eq!(seqs, [1, 3], "only partition 5's answers, and no write in progress");
        drop(in_progress);

        // b already knows the client has its answers below 2.
        apply(b.begin(id(9, 2), 90, 1, now)).finish(&Output::Unit);
        b.import(records.clone(), now);
        assert_eq!(b.begin(id(1, 2), 10, 5, now).unwrap_err(), Error::StaleRetry { client: 7, seq: 1 });
        assert!(matches!(b.begin(id(3, 2), 30, 5, now), Ok(Begin::Answered(Output::Deleted(true)))));
        assert!(matches!(b.begin(id(9, 2), 90, 1, now), Ok(Begin::Answered(Output::Unit))));
        // Importing twice changes nothing.
        b.import(records, now);
        assert!(matches!(b.begin(id(3, 2), 30, 5, now), Ok(Begin::Answered(Output::Deleted(true)))));

        a.forget(|tag| tag == 5);
        assert!(a.export(|tag| tag == 5).is_empty());
        assert!(matches!(a.begin(id(2, 1), 20, 6, now), Ok(Begin::Answered(Output::Unit))));
        drop(apply(a.begin(id(3, 1), 30, 5, now)));
    }
}
