//! What the replication tests share: replicated clusters, waiting for them to settle, reading
//! every replica, and recorded workloads checked for linearizability.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kv_client::{Client, ReadFrom, server_status};
use kv_eval::harness::cluster::Cluster;
use kv_eval::harness::history::{Input, Outcome};
use kv_eval::harness::linearizability::{self, Verdict};
use kv_eval::harness::recorder::Recorder;
use kv_shard::Config;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::{config, master_addr};

pub(crate) fn replicated(nodes: usize, factor: usize, flags: &[&str]) -> Cluster {
    super::with_shardmaster(nodes, factor, flags)
}

/// Waits until every member is at the shard master's epoch with every slot it owns and every
/// copy it keeps up to date.
pub(crate) async fn settled(cluster: &Cluster, within: Duration) -> Config {
    let deadline = Instant::now() + within;
    loop {
        let config = config(cluster).await;
        let mut behind = Vec::new();
        for (_, address) in config.members() {
            match server_status(address, Duration::from_secs(2)).await {
                Ok(s) if s.epoch == config.epoch() && s.incoming_slots == 0 && s.syncing_slots == 0 => {}
                Ok(s) => behind.push(format!("{address}: {s:?}")),
                Err(err) => behind.push(format!("{address}: {err}")),
            }
        }
        if behind.is_empty() {
            return config;
        }
        assert!(Instant::now() < deadline, "replicas did not settle: {behind:?}\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What every replica of `key` holds, read at each one directly, primary first.
pub(crate) async fn at_every_replica(config: &Config, key: &str) -> Vec<(String, Option<String>)> {
    let mut values = Vec::new();
    for (_, address) in config.replicas(key) {
        let direct = Client::builder(address).attempts(20).connect().await.unwrap();
        values.push((address.to_owned(), direct.get(key).await.unwrap()));
    }
    values
}

/// Reads every key back at its primary, recorded (so that a lost write shows in the history),
/// and checks that every replica of it holds the same value.
pub(crate) async fn read_back(cluster: &Cluster, recorder: &Recorder, config: &Config, keys: &[String]) {
    let c =
        Client::cluster_builder(master_addr(cluster)).read_from(ReadFrom::Primary).connect().await.unwrap();
    let reader = recorder.client(99, c);
    for key in keys {
        assert!(matches!(reader.run(key, Input::Get).await, Outcome::Ok(_)), "final read of {key}");
        let values = at_every_replica(config, key).await;
        assert!(values.iter().all(|(_, v)| *v == values[0].1), "replicas of {key} differ: {values:?}");
    }
}

/// Operations a workload must complete (`ok`) for its history to say something.
pub(crate) const WORK: usize = 100;

/// Lets the workload run on for `at_least`, and then until it has completed more than [`WORK`]
/// operations (a loaded machine runs fewer in the same time), for at most a minute more.
pub(crate) fn run_on(recorder: &Recorder, at_least: Duration) {
    std::thread::sleep(at_least);
    let deadline = Instant::now() + Duration::from_secs(60);
    while recorder.history().counts().0 <= WORK && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks the recorded history: it did work, and it is linearizable.
pub(crate) fn assert_linearizable(cluster: &Cluster, recorder: &Recorder) {
    let history = recorder.history();
    let (ok, fail, unknown) = history.counts();
    let report = linearizability::check_with_budget(&history, Duration::from_secs(60));
    println!("{ok} ok, {fail} failed, {unknown} unknown: {:?} in {:.2} s", report.verdict, report.elapsed);
    assert!(ok > WORK, "the workload did work: {ok} ok");
    assert_eq!(report.verdict, Verdict::Linearizable, "{}", cluster.logs());
}

/// `clients` recorded cluster clients (processes `first..`) running a random mix of reads from
/// any replica, puts, appends and pops over `keys` until `stop`.
pub(crate) fn workload(
    rt: &tokio::runtime::Runtime,
    cluster: &Cluster,
    recorder: &Recorder,
    keys: &Arc<[String]>,
    stop: &Arc<AtomicBool>,
    clients: u64,
    first: u64,
) -> Vec<tokio::task::JoinHandle<()>> {
    (first..first + clients)
        .map(|process| {
            let (keys, stop, recorder) = (Arc::clone(keys), Arc::clone(stop), recorder.clone());
            let master = master_addr(cluster);
            rt.spawn(async move {
                let c = Client::cluster_builder(master)
                    .timeout(Duration::from_secs(1))
                    .read_from(ReadFrom::AnyReplica)
                    .connect()
                    .await
                    .unwrap();
                let c = recorder.client(process, c);
                let mut rng = SmallRng::seed_from_u64(process);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = &keys[rng.random_range(0..keys.len())];
                    let input = match rng.random_range(0..10) {
                        0..4 => Input::Get,
                        4..6 => Input::Put(format!("{process}.{n};")),
                        6..9 => Input::Append(format!("{process}.{n};")),
                        _ if process % 2 == 0 => Input::Lpop,
                        _ => Input::Rpop,
                    };
                    if c.run(key, input).await == Outcome::Unknown {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect()
}

/// The primary of the slot of `key`, by the shard master, as the harness's node index.
pub(crate) fn node_of(cluster: &Cluster, address: &str) -> usize {
    cluster.nodes().iter().position(|n| n.client_addr().to_string() == address).unwrap()
}
