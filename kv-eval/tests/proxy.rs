//! The fault-injecting proxy against a plain TCP echo server, with blocking sockets: every fault,
//! the reset of connections a black hole corrupted, counters, shutdown, and many connections.
//!
//! Every wait is bounded (a read timeout or [`wait_until`]); timing is only ever checked from
//! below ("a 200 ms delay took at least 200 ms"), so a loaded machine makes tests slower, never
//! red.

#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use kv_eval::harness::proxy::{DirectionFaults, Faults, Proxy, ProxyStats};

/// The bound on every wait that is expected to succeed.
const LONG: Duration = Duration::from_secs(10);
/// How long a read waits to conclude that nothing comes.
const SILENCE: Duration = Duration::from_millis(300);

/// An echo server on its own threads: optionally sends a greeting on connect, then echoes.
struct Echo {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Echo {
    fn start(greeting: &'static [u8]) -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let echo = Echo {
            addr: listener.local_addr().unwrap(),
            accepted: Arc::default(),
            received: Arc::default(),
            stop: Arc::default(),
        };
        let (accepted, received, stop) = (echo.accepted.clone(), echo.received.clone(), echo.stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                accepted.fetch_add(1, Ordering::SeqCst);
                let received = received.clone();
                thread::spawn(move || {
                    if conn.write_all(greeting).is_err() {
                        return;
                    }
                    let mut buf = [0; 16 * 1024];
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                received.fetch_add(n as u64, Ordering::SeqCst);
                                if conn.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        echo
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, LONG);
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, LONG).unwrap();
    stream.set_read_timeout(Some(LONG)).unwrap();
    stream.set_write_timeout(Some(LONG)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

fn read_n(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    stream.read_exact(&mut buf).unwrap();
    buf
}

fn expect_echo(stream: &mut TcpStream, message: &[u8]) {
    stream.write_all(message).unwrap();
    assert_eq!(read_n(stream, message.len()), message);
}

/// Connects to a proxy that must reset the connection at once (refusing it, or failing to reach
/// its target). The reset may come before the connect call returns, and then fails it.
fn expect_reset_on_connect(addr: SocketAddr) {
    match TcpStream::connect_timeout(&addr, LONG) {
        Err(err) => assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}"),
        Ok(mut stream) => {
            stream.set_read_timeout(Some(LONG)).unwrap();
            assert_eq!(expect_closed(&mut stream), Err(ErrorKind::ConnectionReset));
        }
    }
}

/// Asserts that nothing arrives for [`SILENCE`]: the read times out (not an end of stream).
fn expect_silence(stream: &mut TcpStream) {
    stream.set_read_timeout(Some(SILENCE)).unwrap();
    let mut buf = [0; 1];
    let result = stream.read(&mut buf);
    stream.set_read_timeout(Some(LONG)).unwrap();
    match result {
        Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected silence, got {other:?}"),
    }
}

/// Asserts that the connection is closed (reset or end of stream) within [`LONG`]; returns how.
fn expect_closed(stream: &mut TcpStream) -> Result<usize, ErrorKind> {
    let mut buf = [0; 64];
    let deadline = Instant::now() + LONG;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(0),
            Ok(_) => assert!(Instant::now() < deadline, "the connection stays open"),
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the connection stays open: {err}")
            }
            Err(err) => return Err(err.kind()),
        }
    }
}

/// Polls `cond` until it holds, failing after [`LONG`].
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LONG;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

fn one_way(drop_up: bool, drop_down: bool) -> Faults {
    Faults {
        upstream: DirectionFaults { drop: drop_up, ..DirectionFaults::default() },
        downstream: DirectionFaults { drop: drop_down, ..DirectionFaults::default() },
        refuse_new: false,
    }
}

#[test]
fn forwards_both_ways() {
    let echo = Echo::start(b"hello\n");
    let proxy = Proxy::start(echo.addr, 1).unwrap();
    assert_eq!(proxy.target(), echo.addr);
    let mut client = connect(proxy.addr());
    assert_eq!(read_n(&mut client, 6), b"hello\n");
    expect_echo(&mut client, b"ping");
    // A megabyte, written by another thread while this one reads the echo.
    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut writer = client.try_clone().unwrap();
    let sent = big.clone();
    let writing = thread::spawn(move || writer.write_all(&sent).unwrap());
    assert_eq!(read_n(&mut client, big.len()), big);
    writing.join().unwrap();
    assert_eq!(echo.received(), 4 + big.len() as u64);
}

#[test]
fn a_clean_close_passes_the_end_of_stream_on() {
    let echo = Echo::start(b"");
    let proxy = Proxy::start(echo.addr, 15).unwrap();
    let mut client = connect(proxy.addr());
    client.write_all(b"bye").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    // The server sees the end of stream, echoes, and closes; the client gets all of it, then
    // an end of stream, not a reset.
    assert_eq!(read_n(&mut client, 3), b"bye");
    assert_eq!(expect_closed(&mut client), Ok(0));
    wait_until("the connection is closed", || proxy.stats().open == 0);
}

#[test]
fn partition_black_holes_both_ways() {
    let echo = Echo::start(b"");
    let proxy = Proxy::start(echo.addr, 2).unwrap();
    let mut client = connect(proxy.addr());
    expect_echo(&mut client, b"before");
    proxy.set_faults(Faults::partition());
    assert_eq!(proxy.faults(), Faults::partition());
    client.write_all(b"lost").unwrap();
    expect_silence(&mut client);
    wait_until("the proxy dropped the bytes", || proxy.stats().upstream.bytes_dropped == 4);
    assert_eq!(echo.received(), 6, "nothing reaches the server through a partition");
    // A connection opened during the partition is black-holed too (the server accepts it, as the
    // proxy connects, but hears nothing).
    let mut late = connect(proxy.addr());
    late.write_all(b"late").unwrap();
    expect_silence(&mut late);
    wait_until("the proxy dropped the late bytes", || proxy.stats().upstream.bytes_dropped == 8);
    assert_eq!(echo.received(), 6);
}

#[test]
fn heal_resets_corrupted_connections_only_and_new_ones_work() {
    let echo = Echo::start(b"");
    let proxy = Proxy::start(echo.addr, 3).unwrap();
    let mut lossy = connect(proxy.addr());
    let mut idle = connect(proxy.addr());
    expect_echo(&mut lossy, b"a");
    expect_echo(&mut idle, b"b");
    proxy.set_faults(Faults::partition());
    lossy.write_all(b"gone").unwrap();
    // Heal only once the proxy has eaten the bytes; before, they would still be in its socket.
    wait_until("the proxy dropped the bytes", || proxy.stats().upstream.bytes_dropped == 4);
    proxy.heal();
    assert_eq!(proxy.faults(), Faults::default());
    assert_eq!(expect_closed(&mut lossy), Err(ErrorKind::ConnectionReset));
    assert_eq!(proxy.stats().resets_after_drop, 1);
    // The idle connection lost nothing: it carries on.
    expect_echo(&mut idle, b"still here");
    let mut fresh = connect(proxy.addr());
    expect_echo(&mut fresh, b"fresh");
    assert_eq!(echo.received(), 2 + 10 + 5, "the dropped bytes never reached the server");
    assert_eq!(proxy.stats().resets_after_drop, 1);
}

#[test]
fn one_way_drop_upstream_still_delivers_downstream() {
    let echo = Echo::start(b"greeting\n");
    let proxy = Proxy::start(echo.addr, 4).unwrap();
    proxy.set_faults(one_way(true, false));
    let mut client = connect(proxy.addr());
    assert_eq!(read_n(&mut client, 9), b"greeting\n", "downstream still works");
    client.write_all(b"ping").unwrap();
    expect_silence(&mut client);
    wait_until("the proxy dropped the bytes", || proxy.stats().upstream.bytes_dropped == 4);
    assert_eq!(echo.accepted(), 1);
    assert_eq!(echo.received(), 0, "the server receives nothing upstream");
    wait_until("the greeting is counted", || proxy.stats().downstream.bytes_forwarded == 9);
    // Lifting the black hole resets the connection that lost "ping".
    proxy.heal();
    assert!(expect_closed(&mut client).is_err());
    assert_eq!(echo.received(), 0);
}

#[test]
fn one_way_drop_downstream_still_delivers_upstream() {
    let echo = Echo::start(b"greeting\n");
    let proxy = Proxy::start(echo.addr, 5).unwrap();
    proxy.set_faults(one_way(false, true));
    let mut client = connect(proxy.addr());
    client.write_all(b"ping").unwrap();
    wait_until("the server received the bytes", || echo.received() == 4);
    expect_silence(&mut client);
    wait_until("the proxy dropped greeting and echo", || proxy.stats().downstream.bytes_dropped == 13);
    wait_until("the bytes are counted", || proxy.stats().upstream.bytes_forwarded == 4);
    assert_eq!(proxy.stats().downstream.bytes_forwarded, 0);
}

#[test]
fn delay_adds_at_least_the_delay_and_keeps_order() {
    let echo = Echo::start(b"");
    let proxy = Proxy::start(echo.addr, 6).unwrap();
    let mut client = connect(proxy.addr());
    expect_echo(&mut client, b"warm");
    let mut faults = Faults::delayed(Duration::from_millis(100), Duration::from_millis(50));
    faults.upstream.delay = Duration::from_millis(200);
    proxy.set_faults(faults);
    let start = Instant::now();
    expect_echo(&mut client, b"slow");
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(300), "a 200 + 100 ms round trip took {took:?}");

    // Many small writes under heavy jitter come back whole and in order.
    proxy.set_faults(Faults::delayed(Duration::from_millis(5), Duration::from_millis(30)));
    let mut writer = client.try_clone().unwrap();
    let writing = thread::spawn(move || {
        for i in 0..200u32 {
            writer.write_all(&i.to_be_bytes()).unwrap();
            if i % 20 == 0 {
                thread::sleep(Duration::from_millis(1));
            }
        }
    });
    let got = read_n(&mut client, 200 * 4);
    writing.join().unwrap();
    let expected: Vec<u8> = (0..200u32).flat_map(u32::to_be_bytes).collect();
    assert_eq!(got, expected);
}

#[test]
fn reset_rate_one_resets_on_the_first_byte() {
    let echo = Echo::start(b"");
    let proxy = Proxy::start(echo.addr, 7).unwrap();
    proxy.set_faults(Faults {
        upstream: DirectionFaults { reset_rate: 1.0, ..DirectionFaults::default() },
        ..Faults::default()
    });
    let mut client = connect(proxy.addr());
    client.write_all(b"x").unwrap();
    assert_eq!(expect_closed(&mut client), Err(ErrorKind::ConnectionReset), "a real RST");
    assert_eq!(proxy.stats().resets_injected, 1);
    assert_eq!(echo.received(), 0);
    wait_until("the connection is closed", || proxy.stats().open == 0);
    // Rates outside 0..=1 are clamped instead of panicking the proxy.
    proxy.set_faults(Faults {
        upstream: DirectionFaults { reset_rate: f64::NAN, ..DirectionFaults::default() },
        downstream: DirectionFaults { reset_rate: -3.0, ..DirectionFaults::default() },
        refuse_new: false,
    });
    let mut client = connect(proxy.addr());
    expect_echo(&mut client, b"fine");
    proxy.set_faults(Faults {
        downstream: DirectionFaults { reset_rate: 7.0, ..DirectionFaults::default() },
        ..Faults::default()
    });
    client.write_all(b"y").unwrap();
    assert_eq!(expect_closed(&mut client), Err(ErrorKind::ConnectionReset));
    wait_until("the server got the byte", || echo.received() == 5);
    assert_eq!(proxy.stats().resets_injected, 2);
}

#[test]
fn refuse_new_resets_new_connections_and_spares_open_ones() {
    let echo = Echo::start(b"");
    let proxy = Proxy::start(echo.addr, 8).unwrap();
    let mut open = connect(proxy.addr());
    expect_echo(&mut open, b"one");
    proxy.set_faults(Faults { refuse_new: true, ..Faults::default() });
    expect_reset_on_connect(proxy.addr());
    expect_echo(&mut open, b"two");
    assert_eq!(echo.accepted(), 1, "a refused connection never reaches the server");
    let stats = proxy.stats();
    assert_eq!((stats.accepted, stats.refused, stats.open), (2, 1, 1));
    proxy.heal();
    let mut fresh = connect(proxy.addr());
    expect_echo(&mut fresh, b"three");
    assert_eq!(echo.accepted(), 2);
}

#[test]
fn unreachable_target_resets_the_client() {
    // A port that was free a moment ago: nothing listens there.
    let target = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let proxy = Proxy::start(target, 9).unwrap();
    expect_reset_on_connect(proxy.addr());
    assert_eq!(proxy.stats().connect_failures, 1);
}

#[test]
fn stats_count_connections_and_bytes() {
    let echo = Echo::start(b"hi");
    let proxy = Proxy::start(echo.addr, 10).unwrap();
    assert_eq!(proxy.stats(), ProxyStats::default());
    let mut a = connect(proxy.addr());
    let mut b = connect(proxy.addr());
    assert_eq!(read_n(&mut a, 2), b"hi");
    assert_eq!(read_n(&mut b, 2), b"hi");
    expect_echo(&mut a, &[1; 1000]);
    expect_echo(&mut b, &[2; 500]);
    // The proxy counts a chunk just after writing it, so the client may be a hair faster.
    wait_until("the bytes are counted", || {
        let stats = proxy.stats();
        (stats.upstream.bytes_forwarded, stats.downstream.bytes_forwarded) == (1500, 1504)
    });
    let stats = proxy.stats();
    assert_eq!((stats.accepted, stats.open), (2, 2));
    assert_eq!(stats.upstream.bytes_dropped + stats.downstream.bytes_dropped, 0);
    assert_eq!(stats.resets_injected + stats.resets_after_drop + stats.refused + stats.connect_failures, 0);
    drop(a);
    wait_until("one connection is closed", || proxy.stats().open == 1);
    // A clean close passes the end of stream on: the server's side ends too.
    drop(b);
    wait_until("both connections are closed", || proxy.stats().open == 0);
}

#[test]
fn dropping_the_proxy_closes_its_connections() {
    let echo = Echo::start(b"");
    let proxy = Proxy::start(echo.addr, 11).unwrap();
    let mut a = connect(proxy.addr());
    let mut b = connect(proxy.addr());
    expect_echo(&mut a, b"a");
    expect_echo(&mut b, b"b");
    proxy.shutdown();
    assert!(expect_closed(&mut a).is_err());
    proxy.shutdown(); // idempotent
    assert_eq!(proxy.stats().open, 0);
    drop(proxy);
    assert!(expect_closed(&mut b).is_err());

    let proxy = Proxy::start(echo.addr, 12).unwrap();
    let mut c = connect(proxy.addr());
    expect_echo(&mut c, b"c");
    drop(proxy);
    assert!(expect_closed(&mut c).is_err());
}

#[test]
fn many_concurrent_connections_all_echo() {
    const CONNS: usize = 50;
    const SIZE: usize = 64 * 1024;
    let echo = Echo::start(b"");
    let proxy = Proxy::start(echo.addr, 13).unwrap();
    proxy.set_faults(Faults::delayed(Duration::from_millis(1), Duration::from_millis(5)));
    let clients: Vec<_> = (0..CONNS)
        .map(|c| {
            let addr = proxy.addr();
            thread::spawn(move || {
                let message: Vec<u8> = (0..SIZE).map(|i| (i * 7 + c * 13) as u8).collect();
                let mut stream = connect(addr);
                let mut writer = stream.try_clone().unwrap();
                let sent = message.clone();
                let writing = thread::spawn(move || {
                    for piece in sent.chunks(4096) {
                        writer.write_all(piece).unwrap();
                    }
                });
                assert_eq!(read_n(&mut stream, SIZE), message, "connection {c}");
                writing.join().unwrap();
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    let total = (CONNS * SIZE) as u64;
    wait_until("the bytes are counted", || {
        let stats = proxy.stats();
        (stats.upstream.bytes_forwarded, stats.downstream.bytes_forwarded) == (total, total)
    });
    assert_eq!(proxy.stats().accepted, CONNS as u64);
    assert_eq!(echo.received(), total);
}

/// The proxy does not need the caller's runtime: here a current-thread runtime blocks on
/// synchronous I/O through the proxy (which would deadlock if the proxy ran on it), controls it
/// from async code, and drops it there without a panic.
#[tokio::test]
async fn runs_beside_a_blocked_current_thread_runtime() {
    let echo = Echo::start(b"");
    let proxy = Proxy::start(echo.addr, 14).unwrap();
    let mut client = connect(proxy.addr());
    expect_echo(&mut client, b"blocking");
    proxy.set_faults(Faults::partition());
    client.write_all(b"x").unwrap();
    expect_silence(&mut client);
    proxy.heal();

    let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(b"async").await.unwrap();
    let mut buf = [0; 5];
    tokio::time::timeout(LONG, stream.read_exact(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf, b"async");
    drop(proxy);
    let closed = tokio::time::timeout(LONG, stream.read(&mut buf)).await.unwrap();
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
}
