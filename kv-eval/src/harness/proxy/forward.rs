//! The proxy's thread: it accepts connections, forwards them to the target, and applies the
//! faults and counts the bytes on the way, one task per connection and per direction.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
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

use super::faults::{Dir, DirectionFaults, Faults};

/// The largest chunk read from a socket at once.
const CHUNK: usize = 32 * 1024;
/// Bytes of one direction of one connection that may wait in the delay queue: the bound on the
/// proxy's memory, and on throughput under delay (`IN_FLIGHT / delay`).
pub const IN_FLIGHT: usize = 4 * 1024 * 1024;
/// How long connecting to the target may take before the client's connection is reset.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the connections to be reset before dropping them anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Default)]
pub(super) struct DirCounters {
    pub(super) forwarded: AtomicU64,
    pub(super) dropped: AtomicU64,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) accepted: AtomicU64,
    pub(super) open: AtomicU64,
    pub(super) refused: AtomicU64,
    pub(super) connect_failures: AtomicU64,
    pub(super) resets_injected: AtomicU64,
    pub(super) resets_after_drop: AtomicU64,
    pub(super) dirs: [DirCounters; 2],
}

/// What the proxy's thread and its controller share.
pub(super) struct Shared {
    pub(super) target: SocketAddr,
    pub(super) seed: u64,
    pub(super) faults: Mutex<Faults>,
    /// The open connections, by number, so that faults and shutdown can reach them.
    pub(super) conns: Mutex<HashMap<u64, Arc<ConnCtl>>>,
    pub(super) counters: Counters,
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
pub(super) struct ConnCtl {
    /// Wakes the connection's task to reset it. `notify_one` keeps the wake-up if the task is not
    /// waiting yet.
    pub(super) reset: Notify,
    /// Set once it has been told to reset, so that a reset is counted once.
    pub(super) killed: AtomicBool,
    /// Per direction: a byte (or the end of stream) was thrown away; the stream is corrupt.
    pub(super) lost: [AtomicBool; 2],
}

impl ConnCtl {
    /// Tells the connection to reset; false if it had been told already.
    pub(super) fn kill(&self) -> bool {
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

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data under these locks stays consistent even if a holder panicked.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The proxy's thread. It builds its runtime itself so that the runtime is dropped here too:
/// dropping a runtime inside the caller's async context would panic.
pub(super) fn proxy_thread(
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
