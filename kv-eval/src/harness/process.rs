//! Real `kv-server` processes, started on free loopback ports and always stopped; and the
//! binary they run, which in tests is always built from the current source ([`find_binary`]).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a server may take to bind and report its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take after that to report it is ready (to join a cluster, whose data
/// moves may take a while).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Finds the binary `name` of this workspace (the binary of the package of that name):
/// 1. for `kv-server`, the path in the environment variable `KV_SERVER_BIN`, if set;
/// 2. in a test executable that cargo runs (`CARGO` set, the executable in `<profile>/deps/`):
///    the binary built from the current source, by `cargo_build`, so that a test never runs
///    a stale binary left in `target/` nor fails for want of one (`cargo test -p kv-eval` does
///    not build other packages' binaries);
/// 3. beside the running executable (`target/<profile>/`, as `target/release/kv-eval` finds
///    `target/release/kv-server`), else one level up (a test executable run by hand).
pub fn find_binary(name: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("KV_SERVER_BIN").filter(|_| name == "kv-server") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("cannot locate the running executable")?;
    let in_deps = exe.parent().and_then(Path::file_name).is_some_and(|dir| dir == "deps");
    if let Some(cargo) = std::env::var_os("CARGO").filter(|_| in_deps) {
        return cargo_build(Path::new(&cargo), &exe, name);
    }
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

/// Builds the binary `name` of the package `name` with `cargo` (`cargo build -p NAME --bin
/// NAME`), in the profile and the target folder of the test executable `exe`
/// (`<target>/<profile>/deps/<test>`), from the source this crate was compiled from, and returns
/// its path. Once per process: later calls return the first one's answer. Cargo makes the build
/// a no-op when the binary is up to date; it does not wait for the `cargo test` that runs this,
/// which holds no lock on the target folder while its tests run.
fn cargo_build(cargo: &Path, exe: &Path, name: &str) -> Result<PathBuf> {
    static BUILT: OnceLock<Mutex<HashMap<String, std::result::Result<PathBuf, String>>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Mutex::default).lock().unwrap_or_else(PoisonError::into_inner);
    let result = built
        .entry(name.to_owned())
        .or_insert_with(|| run_cargo_build(cargo, exe, name).map_err(|err| format!("{err:#}")));
    result.clone().map_err(|err| anyhow!("{err}"))
}

fn run_cargo_build(cargo: &Path, exe: &Path, name: &str) -> Result<PathBuf> {
    let profile_dir =
        exe.parent().and_then(Path::parent).context("a test executable outside <profile>/deps/")?;
    let target_dir = profile_dir.parent().context("a profile folder without a parent")?;
    let profile = match profile_dir.file_name().and_then(|dir| dir.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let output = Command::new(cargo)
        .args([
            "build",
            "--message-format=json-render-diagnostics",
            "--profile",
            profile,
            "-p",
            name,
            "--bin",
            name,
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", cargo.display()))?;
    if !output.status.success() {
        bail!(
            "`cargo build -p {name} --bin {name}` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // The executable's path, from the artifact message cargo prints for it (also when fresh).
    let executable = String::from_utf8_lossy(&output.stdout).lines().find_map(|line| {
        let message: serde_json::Value = serde_json::from_str(line).ok()?;
        let is_it = message["reason"] == "compiler-artifact" && message["target"]["name"] == name;
        message["executable"].as_str().filter(|_| is_it).map(PathBuf::from)
    });
    executable.with_context(|| format!("`cargo build -p {name} --bin {name}` reported no executable"))
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
    /// Starts `kv-server storage --listen 127.0.0.1:0 <extra>` (in memory, unless `extra` gives it
    /// a data directory) and waits until it reports the address it bound. Its log (standard
    /// error) goes to a file in a fresh temporary folder.
    pub fn start_storage(bin: &Path, extra: &[String]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("kv-eval-")
            .tempdir()
            .context("cannot create a temporary folder")?;
        let log_path = dir.path().join("server.log");
        let mut args = vec!["storage".to_owned(), "--listen".to_owned(), "127.0.0.1:0".to_owned()];
        args.extend_from_slice(extra);
        if !extra.iter().any(|arg| arg == "--data-dir") {
            args.push("--in-memory".to_owned());
        }
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

    /// Kills the server with `kill -9` (no chance to sync or close anything) and waits for it.
    pub fn crash(mut self) -> Result<()> {
        signal(&self.child, Signal::SIGKILL)?;
        self.child.wait().context("cannot wait for the killed server")?;
        Ok(())
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
