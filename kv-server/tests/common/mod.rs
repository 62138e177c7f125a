//! End-to-end harness: the real `kv-server` binary as a child process, and clients for it.
//!
//! [`ServerProcess`] starts `kv-server storage --listen 127.0.0.1:0`, reads the bound address from
//! the first line of standard output, and kills and reaps the process when dropped, so no server
//! outlives its test even when the test panics. Every wait here is bounded: the bounds are generous
//! upper limits against hangs on a loaded machine, never assertions about speed.

// Each test crate uses a different part of the harness.
#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use kv_proto::compat::{self, kv_store_client::KvStoreClient};
use kv_proto::v1::{self, key_value_client::KeyValueClient};
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

/// Upper bound for a server to print its address.
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for a process to exit when it should.
pub(crate) const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for connecting and for one RPC.
pub(crate) const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for a whole test body.
pub(crate) const TEST_TIMEOUT: Duration = Duration::from_secs(180);

/// Environment variables the server reads; cleared so that the caller's environment cannot
/// change what a test runs.
const SERVER_ENV: &[&str] = &[
    "KV_LOG",
    "KV_WORKERS",
    "KV_LISTEN",
    "KV_MAX_KEY_BYTES",
    "KV_MAX_VALUE_BYTES",
    "KV_SHUTDOWN_GRACE_SECS",
    "KV_SHARDMASTER",
    "KV_ADVERTISE",
    "KV_HANDOFF_TIMEOUT_SECS",
    "KV_MOVE_TIMEOUT_SECS",
    "KV_CLUSTER_TOKEN",
    "KV_DATA_DIR",
    "KV_IN_MEMORY",
    "KV_FSYNC",
    "KV_FSYNC_INTERVAL_MS",
];

/// Runs `future`, panicking if it takes longer than [`TEST_TIMEOUT`].
pub(crate) async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(TEST_TIMEOUT, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: did not finish within {TEST_TIMEOUT:?}"),
    }
}

/// A `kv-server` command with a clean environment and piped output.
pub(crate) fn server_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kv-server"));
    for var in SERVER_ENV {
        command.env_remove(var);
    }
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    command
}

/// Runs `command`, reads the first two lines it prints (its address, and where it keeps its
/// data), then kills and reaps it.
pub(crate) fn first_two_lines(mut command: Command) -> (String, String) {
    let mut child = ChildGuard(command.spawn().expect("cannot spawn kv-server"));
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let (mut first, mut second) = (String::new(), String::new());
    stdout.read_line(&mut first).unwrap();
    stdout.read_line(&mut second).unwrap();
    (first, second)
}

/// Kills and reaps its child on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Fails only if the child has already exited, which is what we want anyway.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Everything a child wrote to one of its pipes so far, and whether the pipe has closed (the
/// child has exited and all it wrote has been read).
struct Drained {
    bytes: Mutex<Vec<u8>>,
    ended: std::sync::atomic::AtomicBool,
}

impl Drained {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().unwrap()).into_owned()
    }

    fn has_ended(&self) -> bool {
        self.ended.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Collects everything `reader` produces, on a thread of its own, so a chatty child never blocks
/// on a full pipe.
fn drain(mut reader: impl Read + Send + 'static) -> Arc<Drained> {
    let drained = Arc::new(Drained { bytes: Mutex::new(Vec::new()), ended: Default::default() });
    let sink = Arc::clone(&drained);
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        loop {
            match reader.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink.bytes.lock().unwrap().extend_from_slice(&chunk[..n]),
            }
        }
        sink.ended.store(true, std::sync::atomic::Ordering::Release);
    });
    drained
}

/// Reads `reader` to its end on a thread of its own; the receiver gets everything read.
fn read_to_end(mut reader: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = reader.read_to_end(&mut all);
        let _ = tx.send(all);
    });
    rx
}

/// Runs `command` to completion within [`EXIT_TIMEOUT`] (killing it and panicking otherwise)
/// and returns its exit status and output.
pub(crate) fn run_to_exit(command: Command) -> Output {
    let program = command.get_program().to_owned();
    try_run_to_exit(command).unwrap_or_else(|err| panic!("cannot run {program:?}: {err}"))
}

/// As [`run_to_exit`], but returns the error if the command cannot be started.
pub(crate) fn try_run_to_exit(mut command: Command) -> std::io::Result<Output> {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = ChildGuard(command.spawn()?);
    let stdout = read_to_end(child.0.stdout.take().unwrap());
    let stderr = read_to_end(child.0.stderr.take().unwrap());
    let status = wait_blocking(&mut child.0, EXIT_TIMEOUT)
        .unwrap_or_else(|| panic!("{command:?} still running after {EXIT_TIMEOUT:?}"));
    // The pipes reach their end when the process exits.
    let collect =
        |rx: mpsc::Receiver<Vec<u8>>| rx.recv_timeout(EXIT_TIMEOUT).expect("output pipe still open");
    Ok(Output { status, stdout: collect(stdout), stderr: collect(stderr) })
}

fn wait_blocking(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("cannot poll the child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `kv-server storage` process.
pub(crate) struct ServerProcess {
    child: ChildGuard,
    addr: SocketAddr,
    stderr: Arc<Drained>,
}

impl ServerProcess {
    /// Starts a server with the default limits.
    pub(crate) fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `storage` flags (`--max-value-bytes 16`, ...).
    pub(crate) fn start_with(flags: &[&str]) -> Self {
        Self::start_role("storage", flags)
    }

    /// Starts a shard master.
    #[allow(dead_code)] // Not every test crate that includes this module starts one.
    pub(crate) fn start_shardmaster() -> Self {
        Self::start_role("shardmaster", &[])
    }

    /// Starts a shard master with extra flags (`--replication-factor 1`, ...).
    #[allow(dead_code)] // Not every test crate that includes this module starts one.
    pub(crate) fn start_shardmaster_with(flags: &[&str]) -> Self {
        Self::start_role("shardmaster", flags)
    }

    /// Starts `kv-server <role> --listen 127.0.0.1:0 <flags>` (in memory, unless `flags` give it a
    /// data directory).
    fn start_role(role: &str, flags: &[&str]) -> Self {
        Self::start_at(role, "127.0.0.1:0", flags)
    }

    /// Starts `kv-server <role> --listen <listen> <flags>` (in memory, unless `flags` give it a
    /// data directory).
    pub(crate) fn start_at(role: &str, listen: &str, flags: &[&str]) -> Self {
        let mut command = server_command();
        command.args([role, "--listen", listen]).args(flags);
        if !flags.contains(&"--data-dir") {
            command.arg("--in-memory");
        }
        let mut child = ChildGuard(command.spawn().expect("cannot spawn kv-server"));
        let stderr = drain(child.0.stderr.take().unwrap());

        let stdout = child.0.stdout.take().unwrap();
        let (line_tx, line_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut first = String::new();
            let read = stdout.read_line(&mut first).map(|_| first);
            if line_tx.send(read).is_ok() {
                // Keep reading so that later output cannot block the server.
                let _ = std::io::copy(&mut stdout, &mut std::io::sink());
            }
        });
        let line = match line_rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(Ok(line)) => line,
            Ok(Err(err)) => panic!("cannot read kv-server's stdout: {err}"),
            Err(_) => {
                panic!("kv-server printed no address within {STARTUP_TIMEOUT:?}; stderr: {}", stderr.text())
            }
        };
        let addr = line
            .trim_end()
            .strip_prefix(&format!("kv-server {role} listening on "))
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| {
                panic!("unexpected first line from kv-server: {line:?}; stderr: {}", stderr.text())
            });
        ServerProcess { child, addr, stderr }
    }

    /// The address the server listens on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// What the server has written to standard error so far (its logs); once [`Self::wait_exit`]
    /// has returned, all of it.
    pub(crate) fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// Waits until the server's logs contain `needle` (a line it writes before it answers a
    /// request may still be in the pipe when the answer arrives), panicking after [`RPC_TIMEOUT`].
    pub(crate) async fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + RPC_TIMEOUT;
        while !self.stderr().contains(needle) {
            assert!(Instant::now() < deadline, "no {needle:?} in the server's logs: {}", self.stderr());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a signal (`"TERM"`, `"INT"`, ...) with `kill(1)`.
    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -{name} {} failed: {status}", self.pid());
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        self.child.0.try_wait().expect("cannot poll kv-server").is_none()
    }

    /// Waits (without blocking the async runtime, which may have connections to close) for the
    /// process to exit, panicking after [`EXIT_TIMEOUT`].
    pub(crate) async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.child.0.try_wait().expect("cannot poll kv-server") {
                // What it wrote before it exited may still be in the pipe.
                while !self.stderr.has_ended() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "kv-server still running {EXIT_TIMEOUT:?} after it should have exited; stderr: {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A new connection to the server, without a per-call deadline (for streams); bound the
    /// calls with [`within`].
    pub(crate) async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_timeout(RPC_TIMEOUT)
            .connect()
            .await
            .unwrap_or_else(|err| panic!("cannot connect to kv-server at {}: {err}", self.addr))
    }

    /// A new connection whose calls fail after [`RPC_TIMEOUT`].
    pub(crate) async fn unary_channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_timeout(RPC_TIMEOUT)
            .timeout(RPC_TIMEOUT)
            .connect()
            .await
            .unwrap_or_else(|err| panic!("cannot connect to kv-server at {}: {err}", self.addr))
    }

    /// A native-API client on a new connection.
    pub(crate) async fn native(&self) -> Native {
        Native(KeyValueClient::new(self.unary_channel().await))
    }

    /// A compatibility-API client on a new connection.
    pub(crate) async fn compat(&self) -> Compat {
        Compat(KvStoreClient::new(self.unary_channel().await))
    }
}

/// The native API (`kv.v1.KeyValue`), one method per RPC. `try_*` return the status; the others
/// panic on any error.
#[derive(Clone)]
pub(crate) struct Native(pub(crate) KeyValueClient<Channel>);

impl Native {
    pub(crate) async fn try_get(&self, key: &str) -> Result<Option<String>, Status> {
        Ok(self.0.clone().get(v1::GetRequest { key: key.into() }).await?.into_inner().value)
    }

    pub(crate) async fn try_put(&self, key: &str, value: &str) -> Result<(), Status> {
        self.0.clone().put(v1::PutRequest { key: key.into(), value: value.into(), id: None }).await?;
        Ok(())
    }

    pub(crate) async fn try_append(&self, key: &str, value: &str) -> Result<(), Status> {
        self.0.clone().append(v1::AppendRequest { key: key.into(), value: value.into(), id: None }).await?;
        Ok(())
    }

    pub(crate) async fn try_lpop(&self, key: &str) -> Result<Option<String>, Status> {
        Ok(self.0.clone().l_pop(v1::PopRequest { key: key.into(), id: None }).await?.into_inner().value)
    }

    pub(crate) async fn try_rpop(&self, key: &str) -> Result<Option<String>, Status> {
        Ok(self.0.clone().r_pop(v1::PopRequest { key: key.into(), id: None }).await?.into_inner().value)
    }

    pub(crate) async fn try_delete(&self, key: &str) -> Result<bool, Status> {
        Ok(self.0.clone().delete(v1::DeleteRequest { key: key.into(), id: None }).await?.into_inner().existed)
    }

    pub(crate) async fn get(&self, key: &str) -> Option<String> {
        self.try_get(key).await.unwrap_or_else(|s| panic!("get({key:?}) failed: {s:?}"))
    }

    pub(crate) async fn put(&self, key: &str, value: &str) {
        self.try_put(key, value).await.unwrap_or_else(|s| panic!("put({key:?}) failed: {s:?}"));
    }

    pub(crate) async fn append(&self, key: &str, value: &str) {
        self.try_append(key, value).await.unwrap_or_else(|s| panic!("append({key:?}) failed: {s:?}"));
    }

    pub(crate) async fn lpop(&self, key: &str) -> Option<String> {
        self.try_lpop(key).await.unwrap_or_else(|s| panic!("lpop({key:?}) failed: {s:?}"))
    }

    pub(crate) async fn rpop(&self, key: &str) -> Option<String> {
        self.try_rpop(key).await.unwrap_or_else(|s| panic!("rpop({key:?}) failed: {s:?}"))
    }

    pub(crate) async fn delete(&self, key: &str) -> bool {
        self.try_delete(key).await.unwrap_or_else(|s| panic!("delete({key:?}) failed: {s:?}"))
    }
}

/// The course assignment's API (`KVStore`, `uint32` keys), one method per RPC. `try_*` return
/// the status; the others panic on any error.
#[derive(Clone)]
pub(crate) struct Compat(pub(crate) KvStoreClient<Channel>);

impl Compat {
    pub(crate) async fn try_get(&self, key: u32) -> Result<Option<String>, Status> {
        Ok(self.0.clone().get(compat::GetRequest { key }).await?.into_inner().value)
    }

    pub(crate) async fn try_put(&self, key: u32, value: &str) -> Result<(), Status> {
        self.0.clone().put(compat::PutRequest { key, value: value.into() }).await?;
        Ok(())
    }

    pub(crate) async fn try_append(&self, key: u32, value: &str) -> Result<(), Status> {
        self.0.clone().append(compat::AppendRequest { key, value: value.into() }).await?;
        Ok(())
    }

    pub(crate) async fn try_lpop(&self, key: u32) -> Result<Option<String>, Status> {
        Ok(self.0.clone().l_pop(compat::GetRequest { key }).await?.into_inner().value)
    }

    pub(crate) async fn try_rpop(&self, key: u32) -> Result<Option<String>, Status> {
        Ok(self.0.clone().r_pop(compat::GetRequest { key }).await?.into_inner().value)
    }

    pub(crate) async fn get(&self, key: u32) -> Option<String> {
        self.try_get(key).await.unwrap_or_else(|s| panic!("get({key}) failed: {s:?}"))
    }

    pub(crate) async fn put(&self, key: u32, value: &str) {
        self.try_put(key, value).await.unwrap_or_else(|s| panic!("put({key}) failed: {s:?}"));
    }

    pub(crate) async fn append(&self, key: u32, value: &str) {
        self.try_append(key, value).await.unwrap_or_else(|s| panic!("append({key}) failed: {s:?}"));
    }

    pub(crate) async fn lpop(&self, key: u32) -> Option<String> {
        self.try_lpop(key).await.unwrap_or_else(|s| panic!("lpop({key}) failed: {s:?}"))
    }

    pub(crate) async fn rpop(&self, key: u32) -> Option<String> {
        self.try_rpop(key).await.unwrap_or_else(|s| panic!("rpop({key}) failed: {s:?}"))
    }
}

/// Shorthand for `Some(s.to_owned())`, to compare with what the API returns.
pub(crate) fn some(s: &str) -> Option<String> {
    Some(s.to_owned())
}
