//! Leases between replicas, and the fences they put on slots that change hands (the argument
//! is in `kv_replica`'s docs, "Failures").
//!
//! Every server asks each of its peers for a lease every [`RENEW_INTERVAL`]; a peer grants one
//! only to its peers, and remembers its promise. A primary needs a live lease from every
//! secondary of a slot to take its writes (and, in strong mode, serve its reads); a strong
//! secondary needs one from the slot's primary to serve reads.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use kv_core::Error;
use kv_proto::v1;
use kv_replica::{Role, peers, role, secondaries};
use kv_shard::{Config, SLOTS, Slot};
use tokio::sync::Notify;
use tonic::Status;
use tracing::{debug, info};

use crate::node::Node;
use crate::replication::lock;

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

/// One server's leases: those it holds from its peers and those it promised them.
#[derive(Debug)]
pub(crate) struct Leases {
    /// Leases this server holds, by peer: valid until, and the epoch both were at.
    held: std::sync::Mutex<HashMap<String, (Instant, u64)>>,
    /// Promises this server made, by peer, until.
    promised: std::sync::Mutex<HashMap<String, Instant>>,
    /// Per slot: no write (and no read at the primary) before this instant.
    fences: std::sync::Mutex<HashMap<Slot, Instant>>,
    /// Renew now (after an install).
    kick: Notify,
    started: std::sync::atomic::AtomicBool,
}

impl Leases {
    pub(crate) fn new() -> Self {
        Leases {
            held: std::sync::Mutex::new(HashMap::new()),
            promised: std::sync::Mutex::new(HashMap::new()),
            fences: std::sync::Mutex::new(HashMap::new()),
            kick: Notify::new(),
            started: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether this server holds a live lease from `peer`, granted at `epoch`.
    fn holds(&self, peer: &str, now: Instant, epoch: u64) -> bool {
        lock(&self.held).get(peer).is_some_and(|&(until, at)| until > now && at == epoch)
    }

    /// The fence of `slot`, if it is still up.
    pub(crate) fn fence(&self, slot: Slot) -> Option<Instant> {
        let mut fences = lock(&self.fences);
        let fence = fences.get(&slot).copied()?;
        if fence <= Instant::now() {
            fences.remove(&slot);
            return None;
        }
        Some(fence)
    }
}

impl Node {
    /// As the primary of `slot`: waits out its fence, then checks that every secondary's lease
    /// is live (no one else can have taken the slot over).
    pub(crate) async fn primary_lease(&self, view: &Config, slot: Slot) -> Result<(), Error> {
        self.wait_fence(slot).await;
        // A lease missing right after an install is on its way: wait for it a little.
        let deadline = Instant::now() + LEASE_WAIT;
        loop {
            let now = Instant::now();
            let missing: Vec<&str> = secondaries(view, slot)
                .into_iter()
                .filter(|peer| !self.leases.holds(peer, now, view.epoch()))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if now >= deadline {
                return Err(Error::Replication(format!(
                    "the primary of slot {slot} holds no lease from {} (unreachable, or being replaced)",
                    missing.join(", ")
                )));
            }
            self.leases.kick.notify_one();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits out the fence of `slot`, if it has one.
    pub(crate) async fn wait_fence(&self, slot: Slot) {
        if let Some(fence) = self.leases.fence(slot) {
            tokio::time::sleep_until(fence.into()).await;
        }
    }

    /// As a strong secondary of `slot`: checks that the primary's lease is live (it cannot have
    /// committed a write without this server).
    pub(crate) fn secondary_lease(&self, view: &Config, slot: Slot) -> Result<(), Error> {
        let primary = view.owner_of_slot(slot).and_then(|id| view.address(id));
        match primary {
            Some(primary) if self.leases.holds(primary, Instant::now(), view.epoch()) => Ok(()),
            _ => {
                self.leases.kick.notify_one();
                Err(Error::Replication(format!(
                    "this secondary of slot {slot} holds no lease from its primary: read at the primary"
                )))
            }
        }
    }

    /// Grants a lease to `from`, if it is a peer in the configuration held, and at its epoch.
    ///
    /// The view is read and the promise recorded under the promises' lock, which an install
    /// takes, after switching the view, to set its fences: so a promise is either made under the
    /// new view, or seen by the fences.
    pub(crate) fn grant_lease(&self, request: &v1::LeaseRequest) -> Result<v1::LeaseResponse, Status> {
        let mut promised = lock(&self.leases.promised);
        let view = self.replicas.view();
        if request.epoch != view.epoch() {
            return Err(Status::unavailable(format!(
                "this server is at epoch {}, the caller at {}: leases are between servers at one epoch",
                view.epoch(),
                request.epoch
            )));
        }
        if !peers(&view, self.me()).contains(&request.from.as_str()) {
            return Err(Status::failed_precondition(format!(
                "{} shares no slot with this server at epoch {}",
                request.from,
                view.epoch()
            )));
        }
        let until = Instant::now() + LEASE;
        let promise = promised.entry(request.from.clone()).or_insert(until);
        *promise = (*promise).max(until);
        Ok(v1::LeaseResponse { epoch: view.epoch(), lease_ms: LEASE.as_millis() as u32 })
    }

    /// Sets the fences of an install from `previous` to `next`, once the view is `next`:
    /// - a slot this server keeps as primary but without some secondaries waits out its promises
    ///   to them (they may still read their copies);
    /// - a slot it takes over from a failed primary (`promoted`) waits out its promise to that
    ///   primary (it may still serve);
    /// - a slot it hands off is sent only once its promises to the slot's secondaries are over
    ///   (the new owner must not commit a write they could miss).
    ///
    /// Starts the renewals on the first install, and renews at once.
    pub(crate) fn fence_install(&self, previous: &Config, next: &Config, promoted: &[Slot]) {
        let me = self.me();
        let promised = lock(&self.leases.promised);
        let promised_to = |peer: &str| promised.get(peer).copied();
        let latest = |peers: Vec<&str>| peers.into_iter().filter_map(promised_to).max();
        let mut fences = lock(&self.leases.fences);
        let mut fenced = 0;
        let promoted_set = crate::replication::slot_set(promoted);
        for slot in 0..SLOTS as Slot {
            let (was, now) = (role(previous, me, slot), role(next, me, slot));
            let until = if now == Role::Primary && promoted_set[usize::from(slot)] {
                let old = previous.owner_of_slot(slot).and_then(|id| previous.address(id));
                old.and_then(promised_to)
            } else if now == Role::Primary && was == Role::Primary {
                let kept = secondaries(next, slot);
                latest(secondaries(previous, slot).into_iter().filter(|s| !kept.contains(s)).collect())
            } else if was == Role::Primary {
                latest(secondaries(previous, slot))
            } else {
                None
            };
            if let Some(until) = until.filter(|&u| u > Instant::now()) {
                fences.insert(slot, until);
                fenced += 1;
            }
        }
        drop(fences);
        drop(promised);
        if fenced > 0 {
            info!(slots = fenced, "slots wait out leases promised to servers that lost them");
        }
        if !self.leases.started.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tokio::spawn(renew_leases(self.this.clone()));
        }
        self.leases.kick.notify_one();
    }
}

/// Renews this server's leases from its peers, every [`RENEW_INTERVAL`], for as long as the
/// server lives.
async fn renew_leases(node: Weak<Node>) {
    loop {
        let Some(node) = node.upgrade() else { return };
        let view = node.replicas.view();
        let request = v1::LeaseRequest { from: node.me().to_owned(), epoch: view.epoch() };
        let asks = peers(&view, node.me()).into_iter().map(|peer| {
            let node = &node;
            let request = request.clone();
            async move {
                let sent = Instant::now();
                let epoch = request.epoch;
                let mut call = node.peers.request(request);
                call.set_timeout(RENEW_TIMEOUT);
                let answer = match node.peers.node(peer) {
                    Ok(mut client) => client.lease(call).await,
                    Err(status) => Err(status),
                };
                match answer {
                    Ok(response) => {
                        let response = response.into_inner();
                        if response.epoch != epoch {
                            return;
                        }
                        let granted = Duration::from_millis(u64::from(response.lease_ms)).min(LEASE);
                        let until = sent + granted.mul_f64(CLOCK_MARGIN);
                        let mut held = lock(&node.leases.held);
                        let lease = held.entry(peer.to_owned()).or_insert((until, epoch));
                        if lease.1 != epoch || lease.0 < until {
                            *lease = (until, epoch);
                        }
                    }
                    Err(status) => debug!(peer, reason = status.message(), "lease not renewed"),
                }
            }
        });
        join_all(asks).await;
        let _ = tokio::time::timeout(RENEW_INTERVAL, node.leases.kick.notified()).await;
    }
}
