//! A closed-loop load generator: a fixed number of requests in flight, each task sending its
//! next request as soon as the last one answers, for a fixed time. Throughput and latency
//! percentiles (hdrhistogram) per operation.
//!
//! Latency is measured from just before the call to just after its answer, in the client's
//! runtime, so it includes the client's own queueing: with one client runtime worker and 64
//! requests in flight that is what an application sharing the machine would see.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hdrhistogram::Histogram;
use kv_client::Client;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::harness::mix::{Mix, OpKind};

/// What load to generate.
#[derive(Debug, Clone, Serialize)]
pub struct BenchConfig {
    /// Requests in flight.
    pub concurrency: usize,
    /// Measured time, after the warm-up.
    #[serde(serialize_with = "as_secs")]
    pub duration: Duration,
    /// Load before measuring starts (connections warm, allocator settled).
    #[serde(serialize_with = "as_secs")]
    pub warmup: Duration,
    /// Number of distinct keys, all written before the run.
    pub keys: usize,
    /// Bytes per key.
    pub key_size: usize,
    /// Bytes per value written.
    pub value_size: usize,
    /// Operation mix.
    pub mix: Mix,
    /// Seed of every random choice.
    pub seed: u64,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Throughput and latency of one operation (or of all, as `"all"`).
#[derive(Debug, Clone, Serialize)]
pub struct OpStats {
    /// Operation name.
    pub op: String,
    /// Calls that succeeded in the measured window.
    pub ok: u64,
    /// Calls that failed in the measured window.
    pub errors: u64,
    /// Successful calls per second.
    pub ops_per_sec: f64,
    /// Latency percentiles of successful calls, in microseconds.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Slowest.
    pub max_us: f64,
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// What was run.
    pub config: BenchConfig,
    /// Seconds of the measured window: calls sent in it are counted.
    pub elapsed_secs: f64,
    /// All operations together.
    pub total: OpStats,
    /// Each operation of the mix.
    pub per_op: Vec<OpStats>,
    /// The first few error messages, for diagnosis.
    pub sample_errors: Vec<String>,
}

struct TaskResult {
    histograms: Vec<Histogram<u64>>,
    errors: Vec<u64>,
    sample_errors: Vec<String>,
}

fn new_histogram() -> Histogram<u64> {
    // 1 ns to 100 s at 3 significant figures; values above are clamped by `saturating_record`.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// The `i`-th key of a run, `key_size` bytes long (longer if `i` needs more digits).
pub fn bench_key(i: usize, key_size: usize) -> String {
    format!("b{i:0>width$}", width = key_size.saturating_sub(1))
}

fn random_value(rng: &mut SmallRng, size: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..size).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect()
}

/// Writes every key of the run once, so that reads find values.
pub async fn preload(clients: &[Client], config: &BenchConfig) -> Result<()> {
    ensure!(!clients.is_empty(), "no client to load with");
    let mut tasks = JoinSet::new();
    let workers = config.concurrency.max(1);
    for w in 0..workers {
        let client = clients[w % clients.len()].clone();
        let (keys, key_size, value_size, seed) =
            (config.keys, config.key_size, config.value_size, config.seed);
        tasks.spawn(async move {
            let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed_0000 ^ w as u64);
            let value = random_value(&mut rng, value_size);
            for i in (w..keys).step_by(workers) {
                client
                    .put(bench_key(i, key_size), value.clone())
                    .await
                    .with_context(|| format!("preloading key {i}"))?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.context("a preload task panicked")??;
    }
    Ok(())
}

/// Runs the load against `clients` (task `i` uses `clients[i % len]`), showing a progress bar on
/// standard error if `progress` is set.
pub async fn run(clients: &[Client], config: &BenchConfig, progress: bool) -> Result<BenchReport> {
    ensure!(!clients.is_empty(), "no client to load with");
    ensure!(config.concurrency > 0, "concurrency must be at least 1");
    ensure!(config.keys > 0, "the key space must hold at least one key");
    let keys: Arc<[String]> = (0..config.keys).map(|i| bench_key(i, config.key_size)).collect();
    let completed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + config.warmup;
    let end = measure_from + config.duration;
    let ticker = progress.then(|| Ticker::start(config.warmup + config.duration, Arc::clone(&completed)));

    let mut tasks = JoinSet::new();
    for t in 0..config.concurrency {
        let client = clients[t % clients.len()].clone();
        let (keys, completed, mix) = (Arc::clone(&keys), Arc::clone(&completed), config.mix.clone());
        let mut rng = SmallRng::seed_from_u64(config.seed.wrapping_add(t as u64));
        let value = random_value(&mut rng, config.value_size);
        tasks.spawn(async move {
            let mut result = TaskResult {
                histograms: OpKind::ALL.iter().map(|_| new_histogram()).collect(),
                errors: vec![0; OpKind::ALL.len()],
                sample_errors: Vec::new(),
            };
            loop {
                let op = mix.pick(&mut rng);
                let key = keys[rng.random_range(0..keys.len())].clone();
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let outcome = match op {
                    OpKind::Get => client.get(key).await.map(drop),
                    OpKind::Put => client.put(key, value.clone()).await,
                    OpKind::Append => client.append(key, value.clone()).await,
                    OpKind::Lpop => client.lpop(key).await.map(drop),
                    OpKind::Rpop => client.rpop(key).await.map(drop),
                    OpKind::Delete => client.delete(key).await.map(drop),
                };
                let latency = sent.elapsed();
                completed.fetch_add(1, Ordering::Relaxed);
                if sent < measure_from {
                    continue;
                }
                match outcome {
                    Ok(()) => {
                        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
                        result.histograms[op.index()].saturating_record(nanos.max(1));
                    }
                    Err(err) => {
                        result.errors[op.index()] += 1;
                        if result.sample_errors.len() < 3 {
                            result.sample_errors.push(format!("{}: {err}", op.name()));
                        }
                    }
                }
            }
            result
        });
    }

    let mut histograms: Vec<Histogram<u64>> = OpKind::ALL.iter().map(|_| new_histogram()).collect();
    let mut errors = vec![0u64; OpKind::ALL.len()];
    let mut sample_errors = Vec::new();
    while let Some(result) = tasks.join_next().await {
        let result = result.context("a load task panicked")?;
        for (total, part) in histograms.iter_mut().zip(&result.histograms) {
            total.add(part).context("merging histograms")?;
        }
        for (total, part) in errors.iter_mut().zip(&result.errors) {
            *total += part;
        }
        sample_errors.extend(result.sample_errors.into_iter().take(5 - sample_errors.len().min(5)));
    }
    if let Some(ticker) = ticker {
        ticker.finish();
    }
    // Calls are counted when sent inside the window, so the window is the denominator.
    let elapsed_secs = config.duration.as_secs_f64();

    let mut all = new_histogram();
    let mut per_op = Vec::new();
    for &(op, _) in &config.mix.weights {
        all.add(&histograms[op.index()]).context("merging histograms")?;
        per_op.push(stats(op.name(), &histograms[op.index()], errors[op.index()], elapsed_secs));
    }
    if all.is_empty() && errors.iter().sum::<u64>() == 0 {
        bail!("no operation completed in the measured window");
    }
    let total = stats("all", &all, errors.iter().sum(), elapsed_secs);
    Ok(BenchReport { config: config.clone(), elapsed_secs, total, per_op, sample_errors })
}

fn stats(op: &str, h: &Histogram<u64>, errors: u64, secs: f64) -> OpStats {
    let us = |nanos: u64| nanos as f64 / 1_000.0;
    OpStats {
        op: op.to_owned(),
        ok: h.len(),
        errors,
        ops_per_sec: h.len() as f64 / secs,
        mean_us: h.mean() / 1_000.0,
        p50_us: us(h.value_at_quantile(0.50)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
    }
}

/// A progress bar driven from its own thread, so that drawing it never takes time from the
/// load generator's runtime.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Ticker {
    fn start(total: Duration, completed: Arc<AtomicU64>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let bar = indicatif::ProgressBar::new(total.as_millis() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("  {bar:40} {elapsed:>3}/{duration} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let start = Instant::now();
                let (mut last_count, mut last_time) = (0u64, start);
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(250));
                    let now = Instant::now();
                    let count = completed.load(Ordering::Relaxed);
                    let rate = (count - last_count) as f64 / now.duration_since(last_time).as_secs_f64();
                    (last_count, last_time) = (count, now);
                    bar.set_position(now.duration_since(start).as_millis() as u64);
                    bar.set_message(format!("{rate:>9.0} ops/s"));
                }
                bar.finish_and_clear();
            })
        };
        Ticker { stop, thread }
    }

    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_asked_size() {
        assert_eq!(bench_key(42, 16).len(), 16);
        assert_eq!(bench_key(42, 16), "b000000000000042");
        assert_ne!(bench_key(1, 16), bench_key(2, 16));
    }
}
