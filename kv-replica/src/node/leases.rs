//! Leases between replicas, and the fences they put on slots that change hands (the argument
//! is in `kv_replica`'s docs, "Failures").
//!
//! Every server asks each of its peers for a lease every [`RENEW_INTERVAL`]; a peer grants one
//! only to its peers, and remembers its promise. A primary needs a live lease from every
//! secondary of a slot to take its writes (and, in strong mode, serve its reads); a strong
//! secondary needs one from the slot's primary to serve reads.
//!
//! Invariants:
//! - a lease counts from when its request was *sent*, for [`CLOCK_MARGIN`] of what was granted,
//!   so it ends before the promise the grantor made, which counts from when it answered;
//! - a lease counts only at the epoch both servers were at when it was granted;
//! - a grant reads the configuration and records its promise under the promises' lock, which an
//!   install takes (after switching the configuration) to set its fences: a promise is either
//!   made under the new configuration, or seen by the fences.
//!
//! The renewals, and the hand-offs' batches, also tell which servers this one hears nothing
//! from, for the shard master ([`Leases::unheard`]): a server is *unheard* from the first
//! request to it that went unanswered in time (not refused: no answer at all) after its last
//! answer, for as long as the requests sent since go unanswered, counted up to the latest of
//! them, and while they go on. A request held up by a pause of this process counts for nothing
//! on its own: the next is sent after the pause. They tell too which servers answered lately
//! ([`Leases::heard`]: an answer or a refusal, not a refused connection), which the shard master
//! takes as a sign of life of a server that does not answer it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::messages::{LeaseGrant, LeaseRequest};
use crate::transport::PeerCalls;
use crate::{Error, peers, secondaries};
use futures_util::future::join_all;
use kv_shard::clock::{Clock, timeout};
use kv_shard::messages::{HeardPeer, UnheardPeer};
use kv_shard::{Config, Slot};
use tokio::sync::Notify;
use tracing::{debug, info};

use super::plan::install_fences;
use super::view::{View, lock};

/// How long a lease lasts, from when its request was sent.
pub(crate) const LEASE: Duration = Duration::from_millis(500);
/// How often leases are renewed.
const RENEW_INTERVAL: Duration = Duration::from_millis(100);
/// Longest one renewal may take.
const RENEW_TIMEOUT: Duration = Duration::from_millis(250);
/// Longest a primary waits for a lease it lacks before it refuses a request.
const LEASE_WAIT: Duration = Duration::from_millis(300);
/// The share of a lease the holder counts on, for clocks that run at slightly different rates.
const CLOCK_MARGIN: f64 = 0.9;
/// A server is reported unheard only while requests to it go on: the last one went out at most
/// this long ago.
const UNHEARD_FRESH: Duration = Duration::from_secs(2);

/// One server's leases: those it holds from its peers and those it promised them.
pub(crate) struct Leases {
    this: Weak<Leases>,
    view: Arc<View>,
    peers: Arc<dyn PeerCalls>,
    clock: Arc<dyn Clock>,
    /// Leases this server holds, by peer: valid until, and the epoch both were at.
    held: Mutex<BTreeMap<String, (Instant, u64)>>,
    /// Promises this server made, by peer, until.
    promised: Mutex<BTreeMap<String, Instant>>,
    /// Per slot: no write (and no read at the primary) before this instant.
    fences: Mutex<BTreeMap<Slot, Instant>>,
    /// Servers whose requests go unanswered: when the first and the latest of them were sent.
    unanswered: Mutex<BTreeMap<String, (Instant, Instant)>>,
    /// When each server last answered (or refused) a request.
    answered: Mutex<BTreeMap<String, Instant>>,
    /// Renew now (after an install).
    kick: Notify,
    started: AtomicBool,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases").field("held", &self.held).finish_non_exhaustive()
    }
}

impl Leases {
    pub(crate) fn new(view: Arc<View>, peers: Arc<dyn PeerCalls>, clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new_cyclic(|this| Leases {
            this: this.clone(),
            view,
            peers,
            clock,
            held: Mutex::new(BTreeMap::new()),
            promised: Mutex::new(BTreeMap::new()),
            fences: Mutex::new(BTreeMap::new()),
            unanswered: Mutex::new(BTreeMap::new()),
            answered: Mutex::new(BTreeMap::new()),
            kick: Notify::new(),
            started: AtomicBool::new(false),
        })
    }

    /// Whether this server holds a live lease from `peer`, granted at `epoch`.
    fn holds(&self, peer: &str, now: Instant, epoch: u64) -> bool {
        lock(&self.held).get(peer).is_some_and(|&(until, at)| until > now && at == epoch)
    }

    /// Records how a request sent to `peer` at `sent` ended: answered, or not (in time).
    pub(crate) fn record_answer<T>(&self, peer: &str, sent: Instant, answer: &Result<T, Error>) {
        let mut unanswered = lock(&self.unanswered);
        if matches!(answer, Err(Error::Interrupted(_))) {
            unanswered.entry(peer.to_owned()).or_insert((sent, sent)).1 = sent;
        } else {
            unanswered.remove(peer);
        }
        drop(unanswered);
        // A process answered (a refused connection is no process: it proves nothing).
        if !matches!(answer, Err(Error::Interrupted(_) | Error::Unavailable(_))) {
            lock(&self.answered).insert(peer.to_owned(), self.clock.now());
        }
    }

    /// The servers that answered this one within [`UNHEARD_FRESH`], and how long ago.
    pub(crate) fn heard(&self) -> Vec<HeardPeer> {
        let now = self.clock.now();
        let mut answered = lock(&self.answered);
        answered.retain(|_, &mut at| now.saturating_duration_since(at) <= UNHEARD_FRESH);
        answered
            .iter()
            .map(|(peer, &at)| HeardPeer { peer: peer.clone(), ago: now.saturating_duration_since(at) })
            .collect()
    }

    /// The servers this one hears nothing from, and for how long (see the module's docs).
    pub(crate) fn unheard(&self) -> Vec<UnheardPeer> {
        let now = self.clock.now();
        let mut unanswered = lock(&self.unanswered);
        unanswered.retain(|_, &mut (_, latest)| now.saturating_duration_since(latest) <= UNHEARD_FRESH);
        unanswered
            .iter()
            .map(|(peer, &(first, latest))| UnheardPeer {
                peer: peer.clone(),
                unheard_for: latest.saturating_duration_since(first),
            })
            .filter(|report| !report.unheard_for.is_zero())
            .collect()
    }

    /// The fence of `slot`, if it is still up.
    pub(crate) fn fence(&self, slot: Slot) -> Option<Instant> {
        let mut fences = lock(&self.fences);
        let fence = fences.get(&slot).copied()?;
        if fence <= self.clock.now() {
            fences.remove(&slot);
            return None;
        }
        Some(fence)
    }

    /// Waits out the fence of `slot`, if it has one.
    pub(crate) async fn wait_fence(&self, slot: Slot) {
        if let Some(fence) = self.fence(slot) {
            self.clock.sleep_until(fence).await;
        }
    }

    /// As the primary of `slot` in `view`: waits out its fence, then checks that every
    /// secondary's lease is live (no one else can have taken the slot over).
    pub(crate) async fn primary_lease(&self, view: &Config, slot: Slot) -> Result<(), kv_core::Error> {
        self.wait_fence(slot).await;
        // A lease missing right after an install is on its way: wait for it a little.
        let deadline = self.clock.now() + LEASE_WAIT;
        loop {
            let now = self.clock.now();
            let missing: Vec<&str> = secondaries(view, slot)
                .into_iter()
                .filter(|peer| !self.holds(peer, now, view.epoch()))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if now >= deadline {
                return Err(kv_core::Error::Replication(format!(
                    "the primary of slot {slot} holds no lease from {} (unreachable, or being replaced)",
                    missing.join(", ")
                )));
            }
            self.kick.notify_one();
            self.clock.sleep(Duration::from_millis(10)).await;
        }
    }

    /// As a strong secondary of `slot` in `view`: checks that the primary's lease is live (it
    /// cannot have committed a write without this server).
    pub(crate) fn secondary_lease(&self, view: &Config, slot: Slot) -> Result<(), kv_core::Error> {
        let primary = view.owner_of_slot(slot).and_then(|id| view.address(id));
        match primary {
            Some(primary) if self.holds(primary, self.clock.now(), view.epoch()) => Ok(()),
            _ => {
                self.kick.notify_one();
                Err(kv_core::Error::Replication(format!(
                    "this secondary of slot {slot} holds no lease from its primary: read at the primary"
                )))
            }
        }
    }

    /// Grants a lease to the caller of `request`, if it is a peer in the configuration held,
    /// and at its epoch.
    pub(crate) fn grant(&self, request: &LeaseRequest) -> Result<LeaseGrant, Error> {
        let mut promised = lock(&self.promised);
        let view = self.view.get();
        if request.epoch != view.epoch() {
            return Err(Error::Unavailable(format!(
                "this server is at epoch {}, the caller at {}: leases are between servers at one epoch",
                view.epoch(),
                request.epoch
            )));
        }
        if !peers(&view, self.view.me()).contains(&request.from.as_str()) {
            return Err(Error::FailedPrecondition(format!(
                "{} shares no slot with this server at epoch {}",
                request.from,
                view.epoch()
            )));
        }
        let until = self.clock.now() + LEASE;
        let promise = promised.entry(request.from.clone()).or_insert(until);
        *promise = (*promise).max(until);
        Ok(LeaseGrant { epoch: view.epoch(), lease: LEASE })
    }

    /// Sets the fences of an install from `previous` to `next`, once the view is `next` (see
    /// [`install_fences`]).
    ///
    /// Starts the renewals on the first install, and renews at once.
    pub(crate) fn fence_install(&self, previous: &Config, next: &Config, promoted: &[Slot]) {
        let promised = lock(&self.promised);
        let new = install_fences(previous, next, self.view.me(), promoted, &promised, self.clock.now());
        let fenced = new.len();
        let mut fences = lock(&self.fences);
        fences.extend(new);
        drop(fences);
        drop(promised);
        if fenced > 0 {
            info!(slots = fenced, "slots wait out leases promised to servers that lost them");
        }
        if !self.started.swap(true, Ordering::Relaxed) {
            tokio::spawn(renew(self.this.clone()));
        }
        self.kick.notify_one();
    }

    /// Asks every peer for a lease, once, and records what they grant.
    async fn renew_once(&self) {
        let view = self.view.get();
        let request = LeaseRequest { from: self.view.me().to_owned(), epoch: view.epoch() };
        let asks = peers(&view, self.view.me()).into_iter().map(|peer| {
            let request = &request;
            async move {
                let sent = self.clock.now();
                let answer = self.peers.lease(peer, request, RENEW_TIMEOUT).await;
                self.record_answer(peer, sent, &answer);
                match answer {
                    Ok(grant) => {
                        if grant.epoch != request.epoch {
                            return;
                        }
                        let until = lease_end(sent, grant.lease);
                        let mut held = lock(&self.held);
                        let lease = held.entry(peer.to_owned()).or_insert((until, request.epoch));
                        if lease.1 != request.epoch || lease.0 < until {
                            *lease = (until, request.epoch);
                        }
                    }
                    Err(err) => debug!(peer, reason = %err, "lease not renewed"),
                }
            }
        });
        join_all(asks).await;
    }
}

/// The end of a lease granted for `granted` in answer to a request sent at `sent`, as its holder
/// counts it: from the sending, for [`CLOCK_MARGIN`] of it, and never for more than [`LEASE`].
fn lease_end(sent: Instant, granted: Duration) -> Instant {
    sent + granted.min(LEASE).mul_f64(CLOCK_MARGIN)
}

/// Renews a server's leases from its peers, every [`RENEW_INTERVAL`] (or at once when kicked),
/// for as long as the server lives.
async fn renew(leases: Weak<Leases>) {
    loop {
        let Some(leases) = leases.upgrade() else { return };
        leases.renew_once().await;
        let _ = timeout(leases.clock.as_ref(), RENEW_INTERVAL, leases.kick.notified()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The grantor promises [`LEASE`] from when it answers; the holder counts its lease from
    /// when it asked. Whatever the delays, and with the holder's clock up to 10% slower than
    /// real time, the lease ends (in real time) no later than the promise.
    #[test]
    fn a_lease_ends_before_the_promise_it_stands_on() {
        let sent = Instant::now();
        for delay_ms in [0, 1, 50, 250] {
            let answered = sent + Duration::from_millis(delay_ms);
            let promise = answered + LEASE;
            for granted in [LEASE, LEASE * 2, Duration::from_millis(100)] {
                let counted = lease_end(sent, granted) - sent;
                assert!(counted <= LEASE.mul_f64(CLOCK_MARGIN), "a grant is capped at the lease");
                for rate in [1.0, 0.95, 0.9] {
                    let real_end = sent + counted.div_f64(rate);
                    assert!(
                        real_end <= promise,
                        "delay {delay_ms} ms, rate {rate}: {real_end:?} > {promise:?}"
                    );
                }
            }
        }
    }
}
