//! Real `kv-server` processes, started on free loopback ports and always stopped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a server may take to bind and report its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take after that to report it is ready (to join a cluster, whose data
/// moves may take a while).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Finds the binary `name` of this workspace: the environment variable `KV_SERVER_BIN` for
/// `kv-server`, else beside the running executable (`target/<profile>/`), else one level up (for
/// test executables in `target/<profile>/deps/`).
pub fn find_binary(name: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("KV_SERVER_BIN").filter(|_| name == "kv-server") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("cannot locate the running executable")?;
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent();
    }
    bail!(
        "cannot find the `{name}` binary next to {}: build it first (`cargo build --release`), \
         or point KV_SERVER_BIN at it",
        exe.display()
    )
}

/// Starts `bin args..` in `cwd` with its standard error appended to `log_path`, and waits until
/// its first line of standard output reports the address it listens on (`... HOST:PORT`). The
/// rest of its output is drained in the background. On any failure the process is killed.
pub fn spawn_server(bin: &Path, args: &[String], log_path: &Path, cwd: &Path) -> Result<(Child, SocketAddr)> {
    spawn_server_until(bin, args, log_path, cwd, None)
}

/// As [`spawn_server`], and then, if `ready` is given, also waits (up to a minute) for a line of
/// standard output that contains it (a storage server prints one when it has joined its
/// cluster).
pub fn spawn_server_until(
    bin: &Path,
    args: &[String],
    log_path: &Path,
    cwd: &Path,
    ready: Option<&str>,
) -> Result<(Child, SocketAddr)> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("cannot open the server log {}", log_path.display()))?;
    let mut child = Command::new(bin)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let fail = |child: &mut Child, err: anyhow::Error| {
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(log_path).unwrap_or_default();
        Err(err.context(format!("the server's log:\n{log}")))
    };
    let Some(stdout) = child.stdout.take() else {
        return fail(&mut child, anyhow!("no standard output from the server"));
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Every line goes to the waiting caller while it listens; then the rest is drained, so
        // the server never blocks on a full pipe.
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let line = match rx.recv_timeout(START_TIMEOUT) {
        Ok(line) => line,
        Err(_) => return fail(&mut child, anyhow!("the server did not report its address")),
    };
    let Some(addr) = line.rsplit(' ').next().and_then(|addr| addr.parse().ok()) else {
        return fail(&mut child, anyhow!("unexpected first line from the server: {line:?}"));
    };
    if let Some(ready) = ready {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains(ready) => break,
                Ok(_) => {}
                Err(_) => return fail(&mut child, anyhow!("the server did not report {ready:?}")),
            }
        }
    }
    Ok((child, addr))
}

/// Sends `signal` to the process `child`.
pub fn signal(child: &Child, signal: Signal) -> Result<()> {
    let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
    kill(pid, signal).with_context(|| format!("cannot send {signal} to process {pid}"))
}

/// A running `kv-server` process. Dropping it kills the process (SIGKILL) and reaps it.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    log_path: PathBuf,
    // Owns the folder the log is in; removed on drop.
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    /// Starts `kv-server storage --listen 127.0.0.1:0 <extra>` and waits until it reports the
    /// address it bound. Its log (standard error) goes to a file in a fresh temporary folder.
    pub fn start_storage(bin: &Path, extra: &[String]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("kv-eval-")
            .tempdir()
            .context("cannot create a temporary folder")?;
        let log_path = dir.path().join("server.log");
        let mut args = vec!["storage".to_owned(), "--listen".to_owned(), "127.0.0.1:0".to_owned()];
        args.extend_from_slice(extra);
        let (child, addr) = spawn_server(bin, &args, &log_path, dir.path())?;
        Ok(ServerProcess { child, addr, log_path, _dir: dir })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_else(|err| format!("(cannot read the log: {err})"))
    }

    /// Asks the server to shut down gracefully (SIGTERM) and waits up to `timeout` for it to exit;
    /// kills it if it does not. Returns how it exited, or an error if it had to be killed.
    pub fn stop(mut self, timeout: Duration) -> Result<ExitStatus> {
        signal(&self.child, Signal::SIGTERM)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().context("cannot wait for the server")? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("the server did not exit within {timeout:?} of SIGTERM; killed it");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
