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

mod faults;
mod forward;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use faults::Dir;
pub use faults::{DirectionFaults, Faults};
pub use forward::IN_FLIGHT;
use forward::{Counters, DirCounters, Shared, lock, proxy_thread};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_can_be_shared_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Proxy>();
    }
}
