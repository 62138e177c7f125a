//! Fault-injecting TCP proxies on loopback: how the cluster harness breaks the network
//! without privileges.
//!
//! A [`Proxy`] listens on `127.0.0.1:0` and forwards every connection it accepts to one target
//! address (one upstream connection per accepted connection, `TCP_NODELAY` on both). Every path
//! the harness wants to break (client → node, node → node) dials a proxy instead of the node, and
//! the harness sets [`Faults`] on it at any time; they apply at once to the connections already
//! open and to new ones. "Upstream" is the direction client → target, "downstream" target →
//! client.
//!
//! # Why faults look the way they do on a byte stream
//!
//! A TCP connection carries a byte stream, not messages: a gRPC request is a run of bytes whose
//! framing (HTTP/2 frame headers, length prefixes) tells the receiver where it ends. The proxy
//! sees only chunks of that stream, cut wherever the kernel happened to cut them. It therefore
//! cannot lose *one message* the way a datagram network can: removing an arbitrary run of bytes
//! from the middle of a stream does not lose a request, it corrupts every frame after it. So the
//! faults are the ones a real network produces on TCP:
//!
//! - **drop** is a black hole for one direction: the proxy keeps reading that direction and throws
//!   the bytes away (an end of stream or a reset in it is swallowed too). The peer sees silence,
//!   not an error, exactly as behind a partition; its requests time out. A partition is `drop`
//!   both ways, a one-way partition `drop` one way.
//! - When a black-holed direction is **healed**, a connection that lost at least one byte (or its
//!   end of stream) is corrupt: whatever comes next would be read as the continuation of frames
//!   whose middle is gone. Real TCP would have retransmitted or given up; the proxy does the
//!   honest equivalent: it resets every such connection (both sockets) at the moment the fault
//!   is lifted, and never forwards another byte in the direction that lost some. Clients see
//!   the reset and reconnect, over a clean stream. Connections that lost nothing (idle during
//!   the partition) carry on.
//! - **reset_rate** is the "random message loss" of a stream: for each chunk about to be
//!   forwarded, with this probability the connection is reset instead (`SO_LINGER` 0, so both
//!   peers get a real RST). Requests in flight on it fail with an *unknown* outcome — they may or
//!   may not have been applied — which is exactly what a linearizability checker must cope with.
//! - **delay** plus uniform **jitter** delays each chunk, preserving the order within a
//!   connection. Each direction has a queue of `(deliver_at, bytes)` drained by its own writer,
//!   so the reader never sleeps: delay adds latency but does not cap throughput (up to
//!   [`IN_FLIGHT`] bytes per direction and connection are in the queue at once).
//! - **refuse_new** accepts new connections and resets them at once, like a node whose port
//!   refuses connections; open ones are untouched.
//!
//! Bytes already queued when a fault starts are still delivered: they had "left" before it.
//!
//! # Runtime
//!
//! Each proxy runs on its own thread with its own single-threaded tokio runtime, so it keeps
//! forwarding while the caller's runtime is blocked (or is a current-thread runtime busy in a
//! test), and every method is a plain synchronous call, usable from sync and async code alike.
//! Dropping the proxy (or [`Proxy::shutdown`]) stops accepting, resets every connection it
//! carries and joins its thread. Background errors (a failed accept, a socket that died) are not
//! logged: they are counted in [`ProxyStats`] or end the one connection concerned.
//!
//! Randomness (jitter, resets) comes from the seed given to [`Proxy::start`], mixed with the
//! connection's number and direction.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, SemaphorePermit, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The largest chunk read from a socket at once.
const CHUNK: usize = 32 * 1024;
/// Bytes of one direction of one connection that may wait in the delay queue: the bound on the
/// proxy's memory, and on throughput under delay (`IN_FLIGHT / delay`).
pub const IN_FLIGHT: usize = 4 * 1024 * 1024;
/// How long connecting to the target may take before the client's connection is reset.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the connections to be reset before dropping them anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Faults of one direction of every connection through a proxy.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DirectionFaults {
    /// Black hole: bytes are read and thrown away; the sender sees silence, not an error.
    /// Turning it off resets the connections that lost bytes (see the module documentation).
    pub drop: bool,
    /// Each chunk is delivered this long after it was read, plus jitter.
    pub delay: Duration,
    /// Each chunk gets an extra delay drawn uniformly from `0..jitter`; order is kept.
    pub jitter: Duration,
    /// Probability, per chunk to forward, that the connection is reset instead. Clamped to
    /// `0.0..=1.0`; NaN counts as 0.
    pub reset_rate: f64,
}

/// The faults a proxy injects. `Faults::default()` injects nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Client → target.
    pub upstream: DirectionFaults,
    /// Target → client.
    pub downstream: DirectionFaults,
    /// New connections are accepted and reset at once (the client sees its connect, or its first
    /// read or write, fail with a reset); open ones are untouched.
    pub refuse_new: bool,
}

impl Faults {
    /// A full partition: both directions black-holed.
    pub fn partition() -> Self {
        let drop = DirectionFaults { drop: true, ..DirectionFaults::default() };
        Faults { upstream: drop, downstream: drop, refuse_new: false }
    }

    /// A flaky path: every chunk delayed by 1–21 ms both ways, and 1 % of them reset their
    /// connection instead (for a gRPC client, about one reset per 50 requests).
    pub fn flaky() -> Self {
        let flaky = DirectionFaults {
            drop: false,
            delay: Duration::from_millis(1),
            jitter: Duration::from_millis(20),
            reset_rate: 0.01,
        };
        Faults { upstream: flaky, downstream: flaky, refuse_new: false }
    }

    /// Both directions delayed by `delay` plus up to `jitter`.
    pub fn delayed(delay: Duration, jitter: Duration) -> Self {
        let slow = DirectionFaults { delay, jitter, ..DirectionFaults::default() };
        Faults { upstream: slow, downstream: slow, refuse_new: false }
    }

    fn get(&self, dir: Dir) -> &DirectionFaults {
        match dir {
            Dir::Up => &self.upstream,
            Dir::Down => &self.downstream,
        }
    }
}

/// Byte counts of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Bytes written to the receiving side.
    pub bytes_forwarded: u64,
    /// Bytes read and thrown away by a black hole.
    pub bytes_dropped: u64,
}

/// A snapshot of a proxy's counters, all since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted, refused ones included.
    pub accepted: u64,
    /// Connections being forwarded now (connecting to the target included).
    pub open: u64,
    /// Connections reset at once because of `refuse_new`.
    pub refused: u64,
    /// Connections reset because the target could not be reached.
    pub connect_failures: u64,
    /// Client → target.
    pub upstream: DirectionStats,
    /// Target → client.
    pub downstream: DirectionStats,
    /// Connections reset by `reset_rate`.
    pub resets_injected: u64,
    /// Connections reset because a black hole that ate some of their bytes was lifted.
    pub resets_after_drop: u64,
}

/// A fault-injecting TCP proxy in front of one address; see the [module documentation](self).
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// The stop signal (dropping the sender is the signal) and the proxy's thread.
    running: Mutex<Option<(oneshot::Sender<()>, std::thread::JoinHandle<()>)>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("target", &self.shared.target)
            .field("faults", &self.faults())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `target`, on a thread
    /// of its own. `seed` drives jitter and random resets.
    pub fn start(target: SocketAddr, seed: u64) -> io::Result<Proxy> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            seed,
            faults: Mutex::new(Faults::default()),
            conns: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("kv-proxy-{}", addr.port()))
            .spawn(move || proxy_thread(listener, thread_shared, stop_rx, ready_tx))?;
        let proxy = Proxy { addr, shared, running: Mutex::new(Some((stop_tx, thread))) };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(proxy),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(io::Error::other("the proxy thread ended before it started")),
        }
    }

    /// The address clients dial instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address connections are forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// The faults injected now.
    pub fn faults(&self) -> Faults {
        *lock(&self.shared.faults)
    }

    /// Replaces the faults, for open connections and new ones alike. If a direction stops being
    /// black-holed, every connection that lost bytes in it is reset.
    pub fn set_faults(&self, faults: Faults) {
        let old = std::mem::replace(&mut *lock(&self.shared.faults), faults);
        let healed: Vec<Dir> =
            Dir::BOTH.into_iter().filter(|&dir| old.get(dir).drop && !faults.get(dir).drop).collect();
        if healed.is_empty() {
            return;
        }
        // A reader marks a connection as lossy under the faults lock, in the same critical section
        // in which it saw `drop`; so every loss is visible here, and none can happen after the
        // swap above.
        for conn in lock(&self.shared.conns).values() {
            if healed.iter().any(|&dir| conn.lost[dir as usize].load(Ordering::Relaxed)) && conn.kill() {
                self.shared.counters.resets_after_drop.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Ends every fault (`Faults::default()`); resets the connections a black hole corrupted.
    pub fn heal(&self) {
        self.set_faults(Faults::default());
    }

    /// The counters now.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let dir = |d: &DirCounters| DirectionStats {
            bytes_forwarded: get(&d.forwarded),
            bytes_dropped: get(&d.dropped),
        };
        ProxyStats {
            accepted: get(&c.accepted),
            open: get(&c.open),
            refused: get(&c.refused),
            connect_failures: get(&c.connect_failures),
            upstream: dir(&c.dirs[Dir::Up as usize]),
            downstream: dir(&c.dirs[Dir::Down as usize]),
            resets_injected: get(&c.resets_injected),
            resets_after_drop: get(&c.resets_after_drop),
        }
    }

    /// Stops accepting, resets every connection and waits until the proxy's thread has ended
    /// (milliseconds; at most 5 s). Idempotent; `drop` calls it. From async code this blocks the
    /// caller's thread for that long.
    pub fn shutdown(&self) {
        let running = lock(&self.running).take();
        if let Some((stop, thread)) = running {
            drop(stop);
            // Never join from the proxy's own thread (it cannot own its proxy, but be safe).
            if thread.thread().id() != std::thread::current().id() {
                // A panic on the proxy thread has nothing left to clean up; ignore it.
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A direction; its number indexes the per-direction arrays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Up = 0,
    Down = 1,
}

impl Dir {
    const BOTH: [Dir; 2] = [Dir::Up, Dir::Down];
}

#[derive(Default)]
struct DirCounters {
    forwarded: AtomicU64,
    dropped: AtomicU64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    open: AtomicU64,
    refused: AtomicU64,
    connect_failures: AtomicU64,
    resets_injected: AtomicU64,
    resets_after_drop: AtomicU64,
    dirs: [DirCounters; 2],
}

/// What the proxy's thread and its controller share.
struct Shared {
    target: SocketAddr,
    seed: u64,
    faults: Mutex<Faults>,
    /// The open connections, by number, so that faults and shutdown can reach them.
    conns: Mutex<HashMap<u64, Arc<ConnCtl>>>,
    counters: Counters,
}

impl Shared {
    /// The faults to apply to a chunk (or end of stream) just read in `dir`, or `None` if it must
    /// be thrown away: the direction is black-holed or already lost bytes. Marks the loss.
    fn admit(&self, conn: &ConnCtl, dir: Dir) -> Option<DirectionFaults> {
        let faults = lock(&self.faults);
        let lost = &conn.lost[dir as usize];
        let f = *faults.get(dir);
        if f.drop || lost.load(Ordering::Relaxed) {
            lost.store(true, Ordering::Relaxed);
            None
        } else {
            Some(f)
        }
    }
}

/// The handle the controller keeps on one connection.
#[derive(Default)]
struct ConnCtl {
    /// Wakes the connection's task to reset it. `notify_one` keeps the wake-up if the task is not
    /// waiting yet.
    reset: Notify,
    /// Set once it has been told to reset, so that a reset is counted once.
    killed: AtomicBool,
    /// Per direction: a byte (or the end of stream) was thrown away; the stream is corrupt.
    lost: [AtomicBool; 2],
}

impl ConnCtl {
    /// Tells the connection to reset; false if it had been told already.
    fn kill(&self) -> bool {
        let first = !self.killed.swap(true, Ordering::Relaxed);
        self.reset.notify_one();
        first
    }
}

/// Unregisters a connection when its task ends or is dropped (even unpolled, at shutdown).
struct ConnGuard {
    shared: Arc<Shared>,
    id: u64,
    ctl: Arc<ConnCtl>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        lock(&self.shared.conns).remove(&self.id);
        self.shared.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connection ended with a reset (injected, or a socket died): reset both sides.
struct Reset;

/// A chunk waiting in the delay queue, holding its share of the queue's byte budget.
struct Chunk<'a> {
    deliver_at: Instant,
    bytes: Vec<u8>,
    _budget: SemaphorePermit<'a>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data under these locks stays consistent even if a holder panicked.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The proxy's thread. It builds its runtime itself so that the runtime is dropped here too:
/// dropping a runtime inside the caller's async context would panic.
fn proxy_thread(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    stop: oneshot::Receiver<()>,
    ready: std::sync::mpsc::Sender<io::Result<()>>,
) {
    // Sending fails only if the caller is gone, and then there is nobody to tell.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    runtime.block_on(async move {
        match TcpListener::from_std(listener) {
            Ok(listener) => {
                let _ = ready.send(Ok(()));
                serve(listener, shared, stop).await;
            }
            Err(err) => {
                let _ = ready.send(Err(err));
            }
        }
    });
}

/// Accepts until `stop` fires, then resets every connection and waits for them.
async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let mut tasks = JoinSet::new();
    let mut next_id: u64 = 0;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else {
                    // Out of file descriptors or the like: wait a little instead of spinning.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
                if lock(&shared.faults).refuse_new {
                    shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                    reset(&client, None);
                    continue;
                }
                next_id += 1;
                let ctl = Arc::new(ConnCtl::default());
                lock(&shared.conns).insert(next_id, Arc::clone(&ctl));
                shared.counters.open.fetch_add(1, Ordering::Relaxed);
                let guard = ConnGuard { shared: Arc::clone(&shared), id: next_id, ctl };
                tasks.spawn(connection(guard, client));
            }
        }
    }
    drop(listener);
    for conn in lock(&shared.conns).values() {
        conn.kill();
    }
    // Whatever has not ended by then is dropped with the runtime (closed, maybe without RST).
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async { while tasks.join_next().await.is_some() {} }).await;
}

/// Forwards one accepted connection until it ends or is told to reset.
async fn connection(guard: ConnGuard, mut client: TcpStream) {
    let mut server = None;
    let reset_both = tokio::select! {
        () = guard.ctl.reset.notified() => true,
        reset = forward(&guard, &mut client, &mut server) => reset,
    };
    if reset_both {
        reset(&client, server.as_ref());
    }
}

/// Makes closing these sockets send RST instead of FIN.
fn reset(client: &TcpStream, server: Option<&TcpStream>) {
    // Failing means the socket is dead already, which is the goal.
    let _ = client.set_zero_linger();
    if let Some(server) = server {
        let _ = server.set_zero_linger();
    }
}

/// Connects to the target and pumps both directions; true if the connection must be reset,
/// false if both directions ended cleanly.
async fn forward(guard: &ConnGuard, client: &mut TcpStream, server: &mut Option<TcpStream>) -> bool {
    let shared = &guard.shared;
    // Options fail only on a dead socket, which the first read or write reports.
    let _ = client.set_nodelay(true);
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(shared.target)).await;
    let Ok(Ok(connected)) = connected else {
        shared.counters.connect_failures.fetch_add(1, Ordering::Relaxed);
        return true;
    };
    let server = server.insert(connected);
    let _ = server.set_nodelay(true);
    let rng = |dir: Dir| {
        let salt = guard.id.wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ (dir as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        SmallRng::seed_from_u64(shared.seed ^ salt)
    };
    let (client_read, client_write) = client.split();
    let (server_read, server_write) = server.split();
    tokio::try_join!(
        pump(guard, Dir::Up, client_read, server_write, rng(Dir::Up)),
        pump(guard, Dir::Down, server_read, client_write, rng(Dir::Down)),
    )
    .is_err()
}

/// One direction: a reader that applies the faults and queues chunks, and a writer that
/// delivers them when due.
async fn pump(
    guard: &ConnGuard,
    dir: Dir,
    src: ReadHalf<'_>,
    dst: WriteHalf<'_>,
    rng: SmallRng,
) -> Result<(), Reset> {
    let budget = Semaphore::new(IN_FLIGHT);
    let (queue, delivery) = mpsc::unbounded_channel();
    tokio::try_join!(read_side(guard, dir, src, &budget, queue, rng), write_side(guard, dir, dst, delivery))?;
    Ok(())
}

async fn read_side<'a>(
    guard: &ConnGuard,
    dir: Dir,
    mut src: ReadHalf<'_>,
    budget: &'a Semaphore,
    queue: mpsc::UnboundedSender<Chunk<'a>>,
    mut rng: SmallRng,
) -> Result<(), Reset> {
    let counters = &guard.shared.counters;
    let mut buf = vec![0; CHUNK];
    loop {
        let read = src.read(&mut buf).await;
        let Some(faults) = guard.shared.admit(&guard.ctl, dir) else {
            match read {
                Ok(n) if n > 0 => {
                    counters.dirs[dir as usize].dropped.fetch_add(n as u64, Ordering::Relaxed);
                    continue;
                }
                // The end of stream (or reset) fell into the black hole: the other side must not
                // learn of it. The connection lives on until healed (reset) or shut down.
                _ => return std::future::pending().await,
            }
        };
        let n = match read {
            Ok(0) => return Ok(()), // Dropping `queue` lets the writer pass the end of stream on.
            Ok(n) => n,
            Err(_) => return Err(Reset),
        };
        if chance(&mut rng, faults.reset_rate) {
            counters.resets_injected.fetch_add(1, Ordering::Relaxed);
            return Err(Reset);
        }
        let wait = faults.delay.saturating_add(jitter(&mut rng, faults.jitter));
        let now = Instant::now();
        // An absurd delay is a day: as good as forever, without overflowing the clock.
        let deliver_at = now.checked_add(wait).unwrap_or(now + Duration::from_secs(86_400));
        let permits = u32::try_from(n).map_err(|_| Reset)?;
        // Waits while the queue is full; the semaphore is never closed.
        let budget = budget.acquire_many(permits).await.map_err(|_| Reset)?;
        let chunk = Chunk { deliver_at, bytes: buf[..n].to_vec(), _budget: budget };
        // The writer only stops early on an error, which ends this task anyway.
        queue.send(chunk).map_err(|_| Reset)?;
    }
}

async fn write_side(
    guard: &ConnGuard,
    dir: Dir,
    mut dst: WriteHalf<'_>,
    mut delivery: mpsc::UnboundedReceiver<Chunk<'_>>,
) -> Result<(), Reset> {
    while let Some(chunk) = delivery.recv().await {
        if chunk.deliver_at > Instant::now() {
            tokio::time::sleep_until(chunk.deliver_at).await;
        }
        dst.write_all(&chunk.bytes).await.map_err(|_| Reset)?;
        guard.shared.counters.dirs[dir as usize]
            .forwarded
            .fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
    }
    // The source ended cleanly: pass the end of stream on. Failing means the receiver is gone,
    // which the other direction will notice.
    let _ = dst.shutdown().await;
    Ok(())
}

/// True with probability `p`, clamped to `0.0..=1.0` (NaN is 0).
fn chance(rng: &mut SmallRng, p: f64) -> bool {
    if p.is_nan() || p <= 0.0 {
        false
    } else if p >= 1.0 {
        true
    } else {
        rng.random_bool(p)
    }
}

/// A duration drawn uniformly from `0..max`.
fn jitter(rng: &mut SmallRng, max: Duration) -> Duration {
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 { Duration::ZERO } else { Duration::from_nanos(rng.random_range(0..nanos)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_can_be_shared_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Proxy>();
    }

    #[test]
    fn chance_clamps_and_never_panics() {
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..100 {
            assert!(!chance(&mut rng, 0.0));
            assert!(!chance(&mut rng, -1.0));
            assert!(!chance(&mut rng, f64::NAN));
            assert!(chance(&mut rng, 1.0));
            assert!(chance(&mut rng, 2.5));
        }
        let hits = (0..10_000).filter(|_| chance(&mut rng, 0.5)).count();
        assert!((4_000..6_000).contains(&hits), "{hits} of 10000");
    }

    #[test]
    fn jitter_stays_below_its_bound() {
        let mut rng = SmallRng::seed_from_u64(7);
        assert_eq!(jitter(&mut rng, Duration::ZERO), Duration::ZERO);
        for _ in 0..1000 {
            assert!(jitter(&mut rng, Duration::from_millis(3)) < Duration::from_millis(3));
        }
        // No overflow on absurd bounds.
        let _ = jitter(&mut rng, Duration::MAX);
    }
}
