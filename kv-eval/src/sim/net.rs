//! The simulated network: the protocols' calls between storage servers, the shard master and
//! the clients, delivered in memory with seeded delays and losses, through links a schedule
//! cuts, slows and heals. It models gRPC over TCP, not datagrams.
//!
//! Every process at an address has a *life*, a number no other process of the run shares: a
//! restarted server is a new life at the same address. A call is a request and an answer:
//! 1. the caller's process must be alive (a crashed process sends nothing: its leftover tasks'
//!    calls are refused at once) and running (a paused one sends when resumed);
//! 2. the request travels for a delay drawn from the network's generator (a few hundred
//!    microseconds, now and then tens of milliseconds: later requests overtake it);
//! 3. across a cut link it waits until the link heals (TCP retransmits until it gets through);
//!    if the caller gives up meanwhile, it still arrives once the link heals, and its handler
//!    runs (the bytes were in the socket; the cancel comes after them, and a handler acts on
//!    arrival), only its answer goes nowhere: so an old request can arrive long after newer ones;
//!    a link can also *stall* the requests of some kinds (installs, say), holding each for a
//!    while before it goes on (or until the stall ends), as a connection stuck retransmitting
//!    does while other calls go out on others;
//! 4. a *lost* message, drawn by the generator or the link's loss rate, breaks the call: the
//!    caller hears, a little later, that the connection broke (*interrupted*: a lost answer's
//!    request was handled);
//! 5. at an address with no process the call is refused (*unavailable*, connection refused);
//!    at a paused process it waits until the process is resumed (the kernel buffers it), and
//!    arrives then even if the caller gave up, as across a cut link;
//! 6. the handler runs, as the gRPC service does (the install and the hand-off of a copy run on
//!    even if the caller gives up; other handlers stop with the caller, as a cancelled request
//!    does); if the process serving it dies meanwhile (or while it was paused, the request
//!    waiting for it), the call breaks at once (*no answer*), as a connection to a killed process
//!    is reset by its kernel;
//! 7. the answer travels back the same way, and is lost if the process died meanwhile.
//!
//! Timeouts are the caller's, on the caller's own clock.
//!
//! Determinism: everything here draws from one seeded generator and keeps its state in ordered
//! maps, and the run is a single-threaded tokio runtime at paused time, so the order in which
//! calls reach this module is itself a function of the seed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use kv_replica::Node;
use kv_shard::ShardMaster;
use kv_shard::clock::{Clock, timeout};
use kv_shard::signal::Signal;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use super::clock::Gate;
use super::trace::Trace;

/// The shard master's address.
pub(crate) const MASTER: &str = "master";

/// What serves at an address.
#[derive(Clone)]
pub(crate) enum Service {
    /// A storage server.
    Node(Arc<Node>),
    /// The shard master.
    Master(ShardMaster),
    /// A client: it serves nothing, but it has links that can be cut.
    Client,
}

#[derive(Clone)]
struct Host {
    life: u64,
    gate: Gate,
    service: Service,
}

/// How a call failed in the network, before or after its handler ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Nothing listens there (or the caller is dead): the request did not get there.
    Refused,
    /// No answer within the timeout, or the connection broke: it may have been applied.
    NoAnswer,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Refused => f.write_str("connection refused"),
            Failure::NoAnswer => f.write_str("no answer (deadline exceeded or connection broken)"),
        }
    }
}

/// How the network delays and loses messages on a link that no fault touches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conditions {
    /// The chance that a message is delayed by tens of milliseconds (reordered).
    pub(crate) slow: f64,
    /// The chance that a message is lost.
    pub(crate) loss: f64,
}

#[derive(Default)]
struct Links {
    cut: BTreeSet<(String, String)>,
    /// Extra loss rate of a link, from → to.
    flaky: BTreeMap<(String, String), f64>,
    /// Requests of some kinds (the first word of what they carry) that a link, from → to, holds
    /// for a while each: a connection stuck retransmitting, while the other calls go on.
    stalled: BTreeMap<(String, String), (Vec<&'static str>, Duration)>,
}

/// The network of one run.
pub(crate) struct Net {
    hosts: Mutex<BTreeMap<String, Host>>,
    links: Mutex<Links>,
    rng: Mutex<Xoshiro256PlusPlus>,
    conditions: Mutex<Conditions>,
    trace: Arc<Trace>,
    start: tokio::time::Instant,
    next_call: Mutex<u64>,
    /// Bumped whenever a link heals: messages held at a cut link look again.
    healed: Signal<u64>,
    /// Bumped whenever a process leaves the network: the calls it was serving break.
    deaths: Signal<u64>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Net").field("hosts", &lock(&self.hosts).keys().collect::<Vec<_>>()).finish()
    }
}

impl Net {
    /// An empty network whose randomness comes from `seed`.
    pub(crate) fn new(seed: u64, conditions: Conditions, trace: Arc<Trace>) -> Arc<Self> {
        Arc::new(Net {
            hosts: Mutex::new(BTreeMap::new()),
            links: Mutex::new(Links::default()),
            rng: Mutex::new(Xoshiro256PlusPlus::seed_from_u64(seed)),
            conditions: Mutex::new(conditions),
            trace,
            start: tokio::time::Instant::now(),
            next_call: Mutex::new(0),
            healed: Signal::new(0),
            deaths: Signal::new(0),
        })
    }

    /// The simulation's time since the run started.
    pub(crate) fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Records an event in the run's trace.
    pub(crate) fn trace(&self, event: fmt::Arguments<'_>) {
        self.trace.event(self.elapsed(), event);
    }

    /// Puts a process at `address`: calls reach `service`, until it is detached.
    pub(crate) fn attach(&self, address: &str, life: u64, gate: Gate, service: Service) {
        lock(&self.hosts).insert(address.to_owned(), Host { life, gate, service });
    }

    /// Takes the process at `address` off the network (it crashed, or stopped).
    pub(crate) fn detach(&self, address: &str) {
        lock(&self.hosts).remove(address);
        self.deaths.modify(|n| {
            *n += 1;
            true
        });
    }

    /// Returns once the process of `life` at `address` is gone.
    async fn until_dead(&self, address: &str, life: u64) {
        while self.is_alive(address, life) {
            let seen = self.deaths.get();
            self.deaths.wait_for(|&n| n != seen || !self.is_alive(address, life)).await;
        }
    }

    /// Whether the process of `life` is the one at `address`.
    pub(crate) fn is_alive(&self, address: &str, life: u64) -> bool {
        lock(&self.hosts).get(address).is_some_and(|host| host.life == life)
    }

    /// Cuts (or heals) the link from `from` to `to`.
    pub(crate) fn set_cut(&self, from: &str, to: &str, cut: bool) {
        let key = (from.to_owned(), to.to_owned());
        let mut links = lock(&self.links);
        if cut {
            links.cut.insert(key);
        } else {
            links.cut.remove(&key);
            drop(links);
            self.healed.modify(|n| {
                *n += 1;
                true
            });
        }
    }

    /// Returns once the link from `from` to `to` is not cut (at once if it is not).
    async fn until_open(&self, from: &str, to: &str) {
        while self.is_cut(from, to) {
            let seen = self.healed.get();
            self.healed.wait_for(|&n| n != seen || !self.is_cut(from, to)).await;
        }
    }

    /// Returns once the link from `from` to `to` stalls nothing (at once if it does not).
    async fn until_unstalled(&self, from: &str, to: &str) {
        let stalls = || lock(&self.links).stalled.contains_key(&(from.to_owned(), to.to_owned()));
        while stalls() {
            let seen = self.healed.get();
            self.healed.wait_for(|&n| n != seen || !stalls()).await;
        }
    }

    /// Makes the link from `from` to `to` lose `rate` of its messages (0: none extra).
    pub(crate) fn set_flaky(&self, from: &str, to: &str, rate: f64) {
        let key = (from.to_owned(), to.to_owned());
        let mut links = lock(&self.links);
        if rate > 0.0 {
            links.flaky.insert(key, rate);
        } else {
            links.flaky.remove(&key);
        }
    }

    /// Makes the link from `from` to `to` hold each request of the `kinds` for `hold` (`None`:
    /// no more: what it holds goes on): it arrives then, whether or not its caller still waits.
    pub(crate) fn set_stalled(&self, from: &str, to: &str, stall: Option<(&[&'static str], Duration)>) {
        let key = (from.to_owned(), to.to_owned());
        let mut links = lock(&self.links);
        match stall {
            Some((kinds, hold)) => {
                links.stalled.insert(key, (kinds.to_vec(), hold));
            }
            None => {
                links.stalled.remove(&key);
                drop(links);
                self.healed.modify(|n| {
                    *n += 1;
                    true
                });
            }
        }
    }

    /// How long the link from `from` to `to` holds a request carrying `what`, if it stalls it.
    fn stall_of(&self, from: &str, to: &str, what: &str) -> Option<Duration> {
        let links = lock(&self.links);
        let (kinds, hold) = links.stalled.get(&(from.to_owned(), to.to_owned()))?;
        let kind = what.split(' ').next()?;
        kinds.contains(&kind).then_some(*hold)
    }

    /// Heals every link, and brings back the quiet network's conditions.
    pub(crate) fn heal(&self, quiet: Conditions) {
        *lock(&self.links) = Links::default();
        *lock(&self.conditions) = quiet;
        self.healed.modify(|n| {
            *n += 1;
            true
        });
    }

    /// Sets how every link delays and loses messages.
    pub(crate) fn set_conditions(&self, conditions: Conditions) {
        *lock(&self.conditions) = conditions;
    }

    /// The delay of one message from `from` to `to`, and whether it is lost.
    fn draw(&self, from: &str, to: &str) -> (Duration, bool) {
        let conditions = *lock(&self.conditions);
        let extra = lock(&self.links).flaky.get(&(from.to_owned(), to.to_owned())).copied().unwrap_or(0.0);
        let mut rng = lock(&self.rng);
        let delay = if rng.random_bool(conditions.slow.clamp(0.0, 1.0)) {
            Duration::from_micros(rng.random_range(5_000..60_000))
        } else {
            Duration::from_micros(rng.random_range(50..400))
        };
        let lost = rng.random_bool((conditions.loss + extra).clamp(0.0, 1.0));
        (delay, lost)
    }

    fn is_cut(&self, from: &str, to: &str) -> bool {
        lock(&self.links).cut.contains(&(from.to_owned(), to.to_owned()))
    }
}

/// One process's side of the network: the calls it makes.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) net: Arc<Net>,
    pub(crate) me: String,
    pub(crate) life: u64,
    pub(crate) gate: Gate,
    pub(crate) clock: Arc<dyn Clock>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint").field("me", &self.me).field("life", &self.life).finish()
    }
}

/// How a handler runs: with its caller, or on its own once it has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handler {
    WithCaller,
    Detached,
}

impl Endpoint {
    /// Sends `what` to `to` and runs `handle` there, within `limit` by this process's clock.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        to: &str,
        limit: Duration,
        what: &str,
        handler: Handler,
        handle: F,
    ) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(Service) -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let net = &self.net;
        let id = {
            let mut next = lock(&net.next_call);
            *next += 1;
            *next
        };
        if !net.is_alive(&self.me, self.life) {
            return Err(Failure::Refused);
        }
        net.trace(format_args!("{} → {to} #{id} {what}", self.me));
        let exchange = async {
            self.gate.running().await;
            let (delay, lost) = net.draw(&self.me, to);
            tokio::time::sleep(delay).await;
            if lost {
                net.trace(format_args!("#{id} request lost"));
                return Err(Failure::NoAnswer);
            }
            let stalled = net.stall_of(&self.me, to, what);
            let held = stalled.is_some()
                || net.is_cut(&self.me, to)
                || lock(&net.hosts).get(to).is_some_and(|host| host.gate.is_paused());
            let (answer, life) = if held {
                // Held in the network: it arrives whether or not the caller still waits.
                let (sent, arrived) = tokio::sync::oneshot::channel();
                let (net, from, to) = (Arc::clone(net), self.me.clone(), to.to_owned());
                tokio::spawn(async move {
                    if let Some(hold) = stalled {
                        net.trace(format_args!("#{id} stalled for {:.3} s", hold.as_secs_f64()));
                        // Or until the link stalls no more: healed, it lets what it held through.
                        tokio::select! {
                            () = tokio::time::sleep(hold) => {}
                            () = net.until_unstalled(&from, &to) => {}
                        }
                    }
                    net.until_open(&from, &to).await;
                    let delivered = deliver(&net, id, &to, Handler::Detached, handle).await;
                    if sent.is_closed() {
                        net.trace(format_args!("#{id} arrived after its caller gave up"));
                    }
                    let _ = sent.send(delivered);
                });
                match arrived.await {
                    Ok(delivered) => delivered?,
                    Err(_) => return Err(Failure::NoAnswer),
                }
            } else {
                deliver(net, id, to, handler, handle).await?
            };
            if !net.is_alive(to, life) {
                net.trace(format_args!("#{id} connection broken"));
                return Err(Failure::NoAnswer);
            }
            let (delay, lost) = net.draw(to, &self.me);
            tokio::time::sleep(delay).await;
            if lost {
                net.trace(format_args!("#{id} answer lost"));
                return Err(Failure::NoAnswer);
            }
            net.until_open(to, &self.me).await;
            if !net.is_alive(&self.me, self.life) {
                return std::future::pending().await;
            }
            Ok(answer)
        };
        match timeout(self.clock.as_ref(), limit, exchange).await {
            Ok(Ok(answer)) => {
                net.trace(format_args!("#{id} answered"));
                Ok(answer)
            }
            Ok(Err(failure)) => Err(failure),
            Err(_) => {
                net.trace(format_args!("#{id} timed out"));
                Err(Failure::NoAnswer)
            }
        }
    }
}

/// Hands request `id` to the process at `to` and runs its handler there: its answer, and the
/// life that gave it.
async fn deliver<T, F, Fut>(
    net: &Net,
    id: u64,
    to: &str,
    handler: Handler,
    handle: F,
) -> Result<(T, u64), Failure>
where
    T: Send + 'static,
    F: FnOnce(Service) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let Some(host) = lock(&net.hosts).get(to).cloned() else {
        net.trace(format_args!("#{id} refused"));
        return Err(Failure::Refused);
    };
    // A paused process that is killed never resumes: what waited for it breaks, as its
    // connections are reset.
    tokio::select! {
        biased;
        () = host.gate.running() => {}
        () = net.until_dead(to, host.life) => {
            net.trace(format_args!("#{id} connection reset: {to} died while paused"));
            return Err(Failure::NoAnswer);
        }
    }
    if !net.is_alive(to, host.life) {
        return Err(Failure::Refused);
    }
    let served = async {
        match handler {
            Handler::WithCaller => Ok(handle(host.service).await),
            Handler::Detached => tokio::spawn(handle(host.service)).await.map_err(|_| Failure::NoAnswer),
        }
    };
    tokio::select! {
        biased;
        answer = served => Ok((answer?, host.life)),
        () = net.until_dead(to, host.life) => {
            net.trace(format_args!("#{id} connection reset: {to} died"));
            Err(Failure::NoAnswer)
        }
    }
}
