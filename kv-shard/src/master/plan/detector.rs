//! The shard master's failure detector, as a pure state machine: it is told who answered each
//! round of pings, and says which member to fail over.
//!
//! Invariants:
//! - a member is failed only once it has not answered for longer than the failure timeout,
//!   counted from the first round that saw it as a member (a new member gets the whole timeout),
//!   and over rounds that ran: the time the watch spent in a failover does not count;
//! - no member is failed while fewer than half the members answer: the shard master may be the
//!   one cut off;
//! - nothing is failed with a replication factor of 1, or a single member: there is no other
//!   copy to promote;
//! - a member silent to the shard master that another member, which answers, heard from lately
//!   is *vouched for*: it is failed only once silent for [`VOUCHED_LIMIT`] timeouts. Lossy links
//!   to the shard master then fail no live member (a failover would leave its slots one copy
//!   short, for a second failure to lose), while a crashed or isolated member, heard by no one,
//!   is failed after the timeout as before;
//! - a member answering as another process than the one that joined (it restarted, and lost
//!   what it held) is failed at once;
//! - two members that answer, one of which has heard nothing from the other for longer than the
//!   failure timeout, are cut off from each other: one of the two is failed ([`cut_off`]: the
//!   one cut off from the most members, between equals the later in member order, the newer
//!   member), deterministically given the same answers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::messages::UnheardPeer;

/// What one member answered a ping with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Heard {
    /// Nothing, in time.
    Nothing,
    /// Nothing, in time; but a member that answered heard from it lately.
    Vouched,
    /// The process that joined answered.
    Alive,
    /// Another process answered: the member restarted.
    Restarted,
}

/// What to do after a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing.
    Wait,
    /// Fail over this member, which restarted.
    Restarted(String),
    /// Fail over this member, silent for this long.
    Silent(String, Duration),
}

/// How many failure timeouts a member vouched for may stay silent before it is failed anyway
/// (it may be cut off from the shard master only: changes need it to answer).
pub(crate) const VOUCHED_LIMIT: u32 = 3;

/// When each member last answered, and when one was last vouched for.
#[derive(Debug, Clone)]
pub(crate) struct Detector {
    timeout: Duration,
    last_seen: BTreeMap<String, Instant>,
    /// A vouch counts for half a timeout: a round in which no one answers the shard master says
    /// nothing new about anyone.
    last_vouched: BTreeMap<String, Instant>,
}

impl Detector {
    /// A detector that fails members silent for longer than `timeout`.
    pub(crate) fn new(timeout: Duration) -> Self {
        Detector { timeout, last_seen: BTreeMap::new(), last_vouched: BTreeMap::new() }
    }

    /// Takes one round: what every current member (in member order) answered the pings sent at
    /// `sent`, heard by `now`; `replicated` is whether slots have more than one copy. A member
    /// first seen in this round counts as seen when the pings were sent.
    pub(crate) fn round(
        &mut self,
        heard: &[(String, Heard)],
        sent: Instant,
        now: Instant,
        replicated: bool,
    ) -> Verdict {
        self.last_seen.retain(|address, _| heard.iter().any(|(member, _)| member == address));
        self.last_vouched.retain(|address, _| heard.iter().any(|(member, _)| member == address));
        let mut restarted = None;
        for (address, answer) in heard {
            let seen = self.last_seen.entry(address.clone()).or_insert(sent);
            match answer {
                Heard::Restarted => restarted = Some(address.clone()),
                Heard::Alive => *seen = now,
                Heard::Vouched => {
                    self.last_vouched.insert(address.clone(), now);
                }
                Heard::Nothing => {}
            }
        }
        let vouched = |address: &str| {
            self.last_vouched
                .get(address)
                .is_some_and(|at| now.saturating_duration_since(*at) <= self.timeout / 2)
        };
        if !replicated || heard.len() < 2 {
            return Verdict::Wait;
        }
        if let Some(address) = restarted {
            return Verdict::Restarted(address);
        }
        let silent = |seen: &Instant| now.saturating_duration_since(*seen) > self.timeout;
        let alive = self.last_seen.values().filter(|seen| !silent(seen)).count();
        // A shard master cut off from most members fails none: it may be the one cut off.
        if alive * 2 < heard.len() {
            return Verdict::Wait;
        }
        let failed = |address: &str, seen: &Instant| {
            silent(seen)
                && (!vouched(address) || now.saturating_duration_since(*seen) > self.timeout * VOUCHED_LIMIT)
        };
        match self.last_seen.iter().find(|(address, seen)| failed(address, seen)) {
            Some((address, seen)) => Verdict::Silent(address.clone(), now.saturating_duration_since(*seen)),
            None => Verdict::Wait,
        }
    }

    /// Counts every member as seen at `now`: the rounds stopped while a failover ran, and the
    /// silence the detector did not watch is not silence it saw.
    pub(crate) fn resume(&mut self, now: Instant) {
        for seen in self.last_seen.values_mut() {
            *seen = (*seen).max(now);
        }
    }

    /// Forgets `server` (failed over: if it comes back, it is a new member).
    pub(crate) fn forget(&mut self, server: &str) {
        self.last_seen.remove(server);
        self.last_vouched.remove(server);
    }
}

/// The member to fail over because a link between members that answer is cut, with the
/// members it is cut from: every report of a member that answered this round (`reports`: by
/// reporter) about another that answered (`heard`, in member order), unheard for longer than
/// `timeout`, is a cut link between the two, whichever end reported it; the member on the most
/// cut links goes (one cut off from many), and between equals the later in member order, the
/// newer member. None if no report is that old.
pub(crate) fn cut_off(
    heard: &[(String, Heard)],
    reports: &[(String, UnheardPeer)],
    timeout: Duration,
) -> Option<(String, Vec<String>)> {
    let alive =
        |address: &str| heard.iter().any(|(member, answer)| member == address && *answer == Heard::Alive);
    let mut links: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (reporter, report) in reports {
        if report.unheard_for > timeout && *reporter != report.peer && alive(reporter) && alive(&report.peer)
        {
            for (end, other) in [(reporter.as_str(), &report.peer), (report.peer.as_str(), reporter)] {
                let of = links.entry(end).or_default();
                if !of.contains(other) {
                    of.push(other.clone());
                }
            }
        }
    }
    heard
        .iter()
        .enumerate()
        .filter_map(|(position, (member, _))| {
            links.get(member.as_str()).map(|cut| (cut.len(), position, member, cut))
        })
        .max_by_key(|&(count, position, _, _)| (count, position))
        .map(|(_, _, member, cut)| (member.clone(), cut.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(800);
    const TICK: Duration = Duration::from_millis(100);

    fn heard(answers: &[(&str, Heard)]) -> Vec<(String, Heard)> {
        answers.iter().map(|&(a, h)| (a.to_owned(), h)).collect()
    }

    /// Runs rounds every 100 ms from `start` until a verdict other than `Wait`, or `limit`.
    fn until_verdict(
        detector: &mut Detector,
        answers: &[(&str, Heard)],
        start: Instant,
        limit: Duration,
    ) -> (Verdict, Duration) {
        let mut elapsed = Duration::ZERO;
        while elapsed <= limit {
            let verdict = detector.round(&heard(answers), start + elapsed, start + elapsed, true);
            if verdict != Verdict::Wait {
                return (verdict, elapsed);
            }
            elapsed += TICK;
        }
        (Verdict::Wait, elapsed)
    }

    #[test]
    fn a_member_silent_past_the_timeout_is_failed_not_before() {
        let start = Instant::now();
        let mut detector = Detector::new(TIMEOUT);
        let all = [("a:1", Heard::Alive), ("b:1", Heard::Alive), ("c:1", Heard::Alive)];
        assert_eq!(until_verdict(&mut detector, &all, start, Duration::from_secs(5)).0, Verdict::Wait);
        let later = start + Duration::from_secs(5);
        let b_silent = [("a:1", Heard::Alive), ("b:1", Heard::Nothing), ("c:1", Heard::Alive)];
        let (verdict, after) = until_verdict(&mut detector, &b_silent, later + TICK, Duration::from_secs(5));
        assert!(
            matches!(verdict, Verdict::Silent(ref a, silent) if a == "b:1" && silent > TIMEOUT),
            "{verdict:?}"
        );
        assert!(after > TIMEOUT - TICK && after <= TIMEOUT + TICK, "failed after {after:?}");
    }

    #[test]
    fn a_new_member_gets_the_whole_timeout_and_a_forgotten_one_starts_over() {
        let start = Instant::now();
        let mut detector = Detector::new(TIMEOUT);
        let silent_from_the_start = [("a:1", Heard::Alive), ("b:1", Heard::Alive), ("c:1", Heard::Nothing)];
        let (verdict, after) =
            until_verdict(&mut detector, &silent_from_the_start, start, Duration::from_secs(5));
        assert_eq!(verdict, Verdict::Silent("c:1".into(), TIMEOUT + TICK));
        assert_eq!(after, TIMEOUT + TICK);
        detector.forget("c:1");
        let again = start + after + TICK;
        assert_eq!(detector.round(&heard(&silent_from_the_start), again, again, true), Verdict::Wait);
    }

    #[test]
    fn a_master_cut_off_from_most_members_fails_none() {
        let start = Instant::now();
        let mut detector = Detector::new(TIMEOUT);
        let most_silent = [
            ("a:1", Heard::Alive),
            ("b:1", Heard::Nothing),
            ("c:1", Heard::Nothing),
            ("d:1", Heard::Nothing),
        ];
        assert_eq!(
            until_verdict(&mut detector, &most_silent, start, Duration::from_secs(10)).0,
            Verdict::Wait
        );
        let half =
            [("a:1", Heard::Alive), ("b:1", Heard::Alive), ("c:1", Heard::Nothing), ("d:1", Heard::Nothing)];
        let mut detector = Detector::new(TIMEOUT);
        assert!(matches!(
            until_verdict(&mut detector, &half, start, Duration::from_secs(10)).0,
            Verdict::Silent(..)
        ));
    }

    #[test]
    fn a_member_others_still_hear_is_failed_only_after_the_longer_limit() {
        let start = Instant::now();
        let mut detector = Detector::new(TIMEOUT);
        let vouched = [("a:1", Heard::Alive), ("b:1", Heard::Vouched), ("c:1", Heard::Alive)];
        let (verdict, after) = until_verdict(&mut detector, &vouched, start, Duration::from_secs(5));
        assert!(matches!(verdict, Verdict::Silent(ref a, _) if a == "b:1"), "{verdict:?}");
        assert!(
            after > TIMEOUT * VOUCHED_LIMIT - TICK && after <= TIMEOUT * VOUCHED_LIMIT + TICK,
            "{after:?}"
        );
        // Heard by no one any more (it crashed): the plain timeout, counted from its last answer.
        let mut detector = Detector::new(TIMEOUT);
        assert_eq!(until_verdict(&mut detector, &vouched, start, TIMEOUT * 2).0, Verdict::Wait);
        let silent = [("a:1", Heard::Alive), ("b:1", Heard::Nothing), ("c:1", Heard::Alive)];
        let at = start + TIMEOUT * 2 + TICK;
        assert_eq!(detector.round(&heard(&silent), at, at, true), Verdict::Wait, "vouched for a moment ago");
        let at = at + TIMEOUT / 2;
        assert!(
            matches!(detector.round(&heard(&silent), at, at, true), Verdict::Silent(ref a, _) if a == "b:1")
        );
    }

    #[test]
    fn a_restarted_member_is_failed_at_once_and_only_where_copies_exist() {
        let now = Instant::now();
        let answers = heard(&[("a:1", Heard::Alive), ("b:1", Heard::Restarted)]);
        assert_eq!(Detector::new(TIMEOUT).round(&answers, now, now, true), Verdict::Restarted("b:1".into()));
        assert_eq!(Detector::new(TIMEOUT).round(&answers, now, now, false), Verdict::Wait);
        let alone = heard(&[("b:1", Heard::Restarted)]);
        assert_eq!(Detector::new(TIMEOUT).round(&alone, now, now, true), Verdict::Wait);
        let mut unreplicated = Detector::new(TIMEOUT);
        let silent = heard(&[("a:1", Heard::Alive), ("b:1", Heard::Nothing)]);
        for i in 0..100 {
            assert_eq!(unreplicated.round(&silent, now + TICK * i, now + TICK * i, false), Verdict::Wait);
        }
    }

    fn report(reporter: &str, peer: &str, ms: u64) -> (String, UnheardPeer) {
        (reporter.to_owned(), UnheardPeer { peer: peer.to_owned(), unheard_for: Duration::from_millis(ms) })
    }

    #[test]
    fn a_cut_link_fails_one_of_its_ends_once_reported_past_the_timeout() {
        let all = heard(&[("a:1", Heard::Alive), ("b:1", Heard::Alive), ("c:1", Heard::Alive)]);
        // a and c report each other: the later in member order goes.
        let pair = [report("a:1", "c:1", 900), report("c:1", "a:1", 900)];
        assert_eq!(cut_off(&all, &pair, TIMEOUT), Some(("c:1".into(), vec!["a:1".into()])));
        // Whichever end reported it first.
        let one_end = [report("a:1", "c:1", 700), report("c:1", "a:1", 900)];
        assert_eq!(cut_off(&all, &one_end, TIMEOUT), Some(("c:1".into(), vec!["a:1".into()])));
        // Not before the timeout.
        let young = [report("a:1", "c:1", 700), report("c:1", "a:1", 800)];
        assert_eq!(cut_off(&all, &young, TIMEOUT), None);
        // The one cut from most members goes, whatever the order.
        let isolated = [report("a:1", "b:1", 900), report("c:1", "b:1", 900), report("b:1", "c:1", 900)];
        assert_eq!(cut_off(&all, &isolated, TIMEOUT).map(|(m, _)| m), Some("b:1".into()));
    }

    #[test]
    fn a_cut_is_judged_only_between_members_that_answer() {
        let c_silent = heard(&[("a:1", Heard::Alive), ("b:1", Heard::Alive), ("c:1", Heard::Nothing)]);
        // c is the silence detector's to fail; its own old reports count for nothing.
        let reports = [report("a:1", "c:1", 5_000), report("c:1", "b:1", 5_000)];
        assert_eq!(cut_off(&c_silent, &reports, TIMEOUT), None);
        let all = heard(&[("a:1", Heard::Alive), ("b:1", Heard::Alive)]);
        let strangers = [report("a:1", "z:1", 5_000), report("a:1", "a:1", 5_000)];
        assert_eq!(cut_off(&all, &strangers, TIMEOUT), None);
    }

    #[test]
    fn a_new_member_counts_as_seen_when_the_pings_went_out_not_when_they_timed_out() {
        let start = Instant::now();
        let slow_round = Duration::from_millis(300);
        let mut detector = Detector::new(TIMEOUT);
        let answers = heard(&[("a:1", Heard::Alive), ("b:1", Heard::Alive), ("c:1", Heard::Nothing)]);
        assert_eq!(detector.round(&answers, start, start + slow_round, true), Verdict::Wait);
        let at = start + TIMEOUT + TICK;
        assert_eq!(
            detector.round(&answers, at - slow_round, at, true),
            Verdict::Silent("c:1".into(), TIMEOUT + TICK)
        );
    }
}
