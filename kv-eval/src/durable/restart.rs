//! How long a storage server takes to come back after `kill -9` with a full data directory: it is
//! filled with values (`--fsync never`, the fastest fill: a killed process loses nothing the
//! operating system was handed), killed, and started again on the same directory. Measured: the
//! time from starting the process until it answers a read, and a sample of the values, checked.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kv_client::Client;
use serde::Serialize;

use crate::harness::process::ServerProcess;

/// Bytes per value written.
const VALUE_BYTES: usize = 16 * 1024;
/// Writes in flight while filling.
const IN_FLIGHT: u64 = 64;
/// Every this many keys, one is read back after the restart.
const SAMPLE_EVERY: u64 = 97;

/// What the restart measured.
#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    /// Values written before the crash.
    pub keys: u64,
    /// Their bytes, in MiB.
    pub mib: f64,
    /// The data directory's size on disk at the crash, in MiB.
    pub dir_mib: f64,
    /// Seconds the fill took.
    pub fill_secs: f64,
    /// Seconds from starting the process again to its first answered read.
    pub restart_secs: f64,
    /// Values read back after the restart.
    pub checked: u64,
    /// Of those, missing or wrong.
    pub wrong: u64,
}

impl Restart {
    /// One line for the report.
    pub fn summary(&self) -> String {
        format!(
            "restart after kill -9: {} keys, {:.0} MiB of values ({:.0} MiB on disk, filled in {:.1} s, \
             {:.0} MiB/s); serving reads {:.2} s after the process started; {} of {} sampled values \
             wrong",
            self.keys,
            self.mib,
            self.dir_mib,
            self.fill_secs,
            self.mib / self.fill_secs.max(1e-9),
            self.restart_secs,
            self.wrong,
            self.checked
        )
    }
}

/// The value of key number `i`: its number, then filler, `VALUE_BYTES` in all.
fn value_of(i: u64) -> String {
    let mut value = format!("{i}:");
    let fill = char::from(b'a' + (i % 26) as u8);
    value.extend(std::iter::repeat_n(fill, VALUE_BYTES - value.len()));
    value
}

fn key_of(i: u64) -> String {
    format!("restart-{i:08}")
}

/// Fills a server with `mib` MiB, kills it, starts it again, and checks a sample.
pub(crate) fn run(bin: &Path, mib: u64, runtime: &tokio::runtime::Runtime) -> Result<Restart> {
    let dir = tempfile::Builder::new().prefix("kv-eval-restart-").tempdir().context("no temporary folder")?;
    let data = dir.path().join("data");
    let args: Vec<String> = ["--data-dir", &data.display().to_string(), "--fsync", "never", "--log", "warn"]
        .map(str::to_owned)
        .into();
    let keys = (mib * 1024 * 1024).div_ceil(VALUE_BYTES as u64);
    let server = ServerProcess::start_storage(bin, &args)?;
    let started = Instant::now();
    runtime.block_on(fill(&server.addr().to_string(), keys))?;
    let fill_secs = started.elapsed().as_secs_f64();
    let dir_mib = dir_bytes(&data) as f64 / (1024.0 * 1024.0);
    server.crash()?;

    let started = Instant::now();
    let server = ServerProcess::start_storage(bin, &args)?;
    let endpoint = server.addr().to_string();
    let (restart_secs, checked, wrong) = runtime.block_on(async {
        let client = loop {
            if let Ok(client) = Client::connect(endpoint.clone()).await
                && client.get(key_of(0)).await.is_ok()
            {
                break client;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(600),
                "the restarted server never answered"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let restart_secs = started.elapsed().as_secs_f64();
        let (mut checked, mut wrong) = (0, 0);
        for i in (0..keys).step_by(SAMPLE_EVERY as usize) {
            checked += 1;
            if client.get(key_of(i)).await.ok().flatten() != Some(value_of(i)) {
                wrong += 1;
            }
        }
        Ok((restart_secs, checked, wrong))
    })?;
    let _ = server.stop(Duration::from_secs(15));
    let mib = (keys * VALUE_BYTES as u64) as f64 / (1024.0 * 1024.0);
    Ok(Restart { keys, mib, dir_mib, fill_secs, restart_secs, checked, wrong })
}

/// Writes keys `0..keys`, `IN_FLIGHT` at a time.
async fn fill(endpoint: &str, keys: u64) -> Result<()> {
    let client = Arc::new(Client::connect(endpoint.to_owned()).await.context("cannot connect to fill")?);
    let next = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (client, next) = (Arc::clone(&client), Arc::clone(&next));
        writers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys {
                    return Ok::<(), anyhow::Error>(());
                }
                client.put(key_of(i), value_of(i)).await.with_context(|| format!("put {}", key_of(i)))?;
            }
        }));
    }
    for writer in writers {
        writer.await.context("a writer failed")??;
    }
    Ok(())
}

/// The bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_bytes(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |meta| meta.len()),
            Err(_) => 0,
        })
        .sum()
}
