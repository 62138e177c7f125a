//! One server process of a [`crate::harness::cluster::Cluster`]: its folder, its fixed
//! address, the proxy in front of it, and the faults on the process itself — [`Node::kill`]
//! (SIGKILL), [`Node::restart`] (same address and folder), [`Node::pause`] / [`Node::resume`]
//! (SIGSTOP / SIGCONT), [`Node::stop`] (SIGTERM: a storage node of a sharded cluster leaves it).
//!
//! Invariant: a node's process, if any, is reaped when it is killed, stopped or dropped; a
//! paused process is resumed before it is signalled to die, so nothing lingers stopped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;

use crate::harness::process::{signal, spawn_server_until};
use crate::harness::proxy::Proxy;

/// One server process of a cluster.
#[derive(Debug)]
pub struct Node {
    pub(super) id: usize,
    /// The `kv-server` subcommand: `storage` or `shardmaster`.
    pub(super) role: &'static str,
    pub(super) addr: SocketAddr,
    pub(super) dir: PathBuf,
    pub(super) bin: PathBuf,
    pub(super) args: Vec<String>,
    pub(super) child: Option<Child>,
    pub(super) paused: bool,
    /// Stopped by [`Node::stop`] (a storage node of a sharded cluster left it): healing does
    /// not start it again.
    pub(super) stopped: bool,
    pub(super) proxy: Option<Proxy>,
    /// Standard output the process prints once it is ready, beyond listening.
    pub(super) ready: Option<&'static str>,
}

impl Node {
    /// The node's index in its cluster.
    pub fn id(&self) -> usize {
        self.id
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address clients should dial: the node's proxy if it has one.
    pub fn client_addr(&self) -> SocketAddr {
        self.proxy.as_ref().map_or(self.addr, Proxy::addr)
    }

    /// The proxy in front of the node, if any.
    pub fn proxy(&self) -> Option<&Proxy> {
        self.proxy.as_ref()
    }

    /// The node's folder: its working directory, `data/`, and `server.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The node's data directory (kept across restarts).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// What the node has logged, over all its runs.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Whether the process is running (possibly paused).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Whether the process was stopped by [`Node::stop`] (and not started again).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Whether the process is stopped by [`Node::pause`].
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    pub(super) fn spawn(&mut self) -> Result<()> {
        let mut args = vec![self.role.to_owned(), "--listen".to_owned(), self.addr.to_string()];
        args.extend(self.args.iter().cloned());
        // A storage server keeps its data in memory, unless it was given a data directory.
        if self.role == "storage" && !self.args.iter().any(|arg| arg == "--data-dir") {
            args.push("--in-memory".to_owned());
        }
        // A port just freed by a killed process can be busy for a moment; retry briefly.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.dir.join("server.log");
            match spawn_server_until(&self.bin, &args, &log, &self.data_dir(), self.ready) {
                Ok((child, _)) => {
                    self.child = Some(child);
                    self.paused = false;
                    self.stopped = false;
                    return Ok(());
                }
                Err(err) if Instant::now() < deadline && format!("{err:#}").contains("in use") => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(err) => return Err(err.context(format!("cannot start node {}", self.id))),
            }
        }
    }

    /// Kills the process with SIGKILL (it gets no chance to clean up) and reaps it. A no-op if
    /// it is not running.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            if self.paused {
                // A stopped process dies of SIGKILL too, but resume it so nothing lingers.
                let _ = signal(&child, Signal::SIGCONT);
            }
            let _ = child.kill();
            child.wait().with_context(|| format!("cannot reap node {}", self.id))?;
        }
        self.paused = false;
        Ok(())
    }

    /// Starts the process again, at the same address with the same folder. Kills it first if it
    /// is still running.
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.spawn()
    }

    /// Stops the process with SIGSTOP: it holds its connections but answers nothing.
    pub fn pause(&mut self) -> Result<()> {
        let Some(child) = &self.child else { bail!("node {} is not running", self.id) };
        signal(child, Signal::SIGSTOP)?;
        self.paused = true;
        // A signal is delivered asynchronously: wait until the process has really stopped, so
        // that nothing the caller sends next is answered.
        wait_for_state(child.id(), |state| state == 'T' || state == 't')
            .with_context(|| format!("node {} did not stop", self.id))
    }

    /// Lets a paused process run again with SIGCONT.
    pub fn resume(&mut self) -> Result<()> {
        if let Some(child) = &self.child {
            signal(child, Signal::SIGCONT)?;
            wait_for_state(child.id(), |state| state != 'T' && state != 't')
                .with_context(|| format!("node {} did not resume", self.id))?;
        }
        self.paused = false;
        Ok(())
    }

    /// Stops the process gracefully (SIGTERM), waiting up to `timeout`; kills it after that.
    /// Returns whether it exited on its own with status 0.
    pub fn stop(&mut self, timeout: Duration) -> Result<bool> {
        let Some(mut child) = self.child.take() else { return Ok(false) };
        self.stopped = true;
        if self.paused {
            signal(&child, Signal::SIGCONT)?;
            self.paused = false;
        }
        signal(&child, Signal::SIGTERM)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.success());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Waits (up to 10 s) until the state letter of process `pid` in `/proc/<pid>/stat` satisfies
/// `ok`. A process that is gone counts as satisfying it.
fn wait_for_state(pid: u32, ok: impl Fn(char) -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return Ok(()) };
        // The state follows the command name, which is in parentheses and may hold spaces.
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
        if state.is_none_or(&ok) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("process {pid} is still in state {state:?} after 10 s");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
