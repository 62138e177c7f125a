//! Test harness: a storage server running in this process, on a runtime of its own, and bounded
//! runs of the `kv` binary.

// Each test crate uses a different part of the harness.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kv_server::StorageConfig;

/// Upper bound for the server to start and for a `kv` run; generous, against hangs only.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `future`, panicking if it takes longer than [`TIMEOUT`].
pub(crate) async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(TIMEOUT, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: did not finish within {TIMEOUT:?}"),
    }
}

/// Environment variables `kv` reads; cleared so that the caller's environment cannot change what
/// a test runs.
const KV_ENV: &[&str] = &["KV_ENDPOINT", "KV_SHARDMASTER", "KV_TIMEOUT_SECS"];

/// A storage server (`kv_server::run_storage`) on `127.0.0.1:0`, on a thread with its own
/// single-threaded runtime. Dropping it starts the server's shutdown.
pub(crate) struct InProcessServer {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl InProcessServer {
    /// A server with the default configuration (1 KiB keys, 1 MiB values).
    pub(crate) fn start() -> Self {
        Self::start_with(StorageConfig::default())
    }

    pub(crate) fn start_with(config: StorageConfig) -> Self {
        Self::spawn(move |listener, stopped| async move {
            kv_server::run_storage(listener, config, stopped).await.expect("the server failed");
        })
    }

    /// A shard master (`kv_server::run_shardmaster`).
    #[allow(dead_code)] // Not every test crate that includes this module starts one.
    pub(crate) fn start_shardmaster() -> Self {
        Self::spawn(|listener, stopped| async move {
            let config = kv_server::ShardMasterConfig::default();
            kv_server::run_shardmaster(listener, config, stopped).await.expect("the shard master failed");
        })
    }

    fn spawn<F, Fut>(serve: F) -> Self
    where
        F: FnOnce(
                tokio::net::TcpListener,
                std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
            ) -> Fut
            + Send
            + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let (addr_tx, addr_rx) = mpsc::channel();
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let stopped = Box::pin(async {
                    // An error means the sender was dropped: stop then too.
                    let _ = stop.await;
                });
                serve(listener, stopped).await;
            });
        });
        let addr = addr_rx.recv_timeout(TIMEOUT).expect("the in-process server did not start");
        InProcessServer { addr, shutdown: Some(shutdown) }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address as `kv` and `Client::connect` take it.
    pub(crate) fn endpoint(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for InProcessServer {
    fn drop(&mut self) {
        // Not joined: the thread ends once the clients' connections close (or the grace period
        // runs out), and waiting for that here could block the very runtime that must close them.
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// An address nothing listens on: a port the OS just handed out, released again.
pub(crate) fn unused_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr.to_string()
}

/// A `kv` command with a clean environment.
pub(crate) fn kv_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kv"));
    for var in KV_ENV {
        command.env_remove(var);
    }
    command
}

/// The result of a `kv` run.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs `kv --endpoint ENDPOINT ARGS...`.
pub(crate) fn kv(endpoint: &str, args: &[&str]) -> Run {
    let mut command = kv_command();
    command.args(["--endpoint", endpoint]).args(args);
    run(command)
}

/// Runs `command` to completion within [`TIMEOUT`], killing it and panicking otherwise.
pub(crate) fn run(mut command: Command) -> Run {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = command.spawn().unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    let mut child = ChildGuard(child);
    let stdout = read_to_end(child.0.stdout.take().unwrap());
    let stderr = read_to_end(child.0.stderr.take().unwrap());
    let status = wait(&mut child.0).unwrap_or_else(|| panic!("{command:?} still running after {TIMEOUT:?}"));
    let collect = |rx: mpsc::Receiver<Vec<u8>>| {
        String::from_utf8(rx.recv_timeout(TIMEOUT).expect("output pipe still open"))
            .expect("output is not UTF-8")
    };
    Run { code: status.code(), stdout: collect(stdout), stderr: collect(stderr) }
}

/// Kills and reaps its child on drop, so no process outlives a failed test.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn read_to_end(mut reader: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = reader.read_to_end(&mut all);
        let _ = tx.send(all);
    });
    rx
}

fn wait(child: &mut Child) -> Option<ExitStatus> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
