//! A short `kv-eval chaos` run against a replicated cluster of real processes: 4 servers,
//! 3 strong replicas, every link behind its own proxy, and one of each of a cut link (healed
//! after a moment), a killed secondary, a killed primary and a server cut from the shard
//! master. The run must pass the simulator's checks (linearizable, appends exactly once, no
//! acknowledged one lost), converge, and take writes again within 10 s of each fault's end;
//! and the faults must really have happened (the cut link dropped bytes). A second run kills the
//! shard master, which must go on from its data directory.
//!
//! It runs the `kv-server` binary built from the current source (or `KV_SERVER_BIN`).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use kv_eval::harness::cluster::{Cluster, ClusterConfig};
use kv_eval::harness::cluster_chaos::{self, ClusterChaosConfig, ClusterFault};

#[test]
fn a_replicated_cluster_survives_kills_and_cuts_and_passes_the_checks() {
    let config = ClusterChaosConfig {
        servers: 4,
        replication_factor: 3,
        faults: vec![
            ClusterFault::Link,
            ClusterFault::KillSecondary,
            ClusterFault::KillPrimary,
            ClusterFault::MasterLink,
        ],
        duration: Duration::from_secs(12),
        interval: Duration::from_secs(1),
        fault_duration: Duration::from_millis(1500),
        tail: Duration::from_secs(4),
        liveness_bound: Duration::from_secs(10),
        seed: 7,
        ..ClusterChaosConfig::default()
    };
    let mut base = ClusterConfig::new(0).unwrap();
    base.seed = 7;
    let mut cluster = Cluster::start(&cluster_chaos::cluster_config(&base, &config).unwrap()).unwrap();
    let report = cluster_chaos::run_on(&mut cluster, &config).unwrap();
    println!("{report}");
    assert!(report.passed, "{report}\n{}", cluster.logs());

    // The faults happened: one of each kind (the first round always runs whole) ...
    for kind in &config.faults {
        assert!(report.injected(*kind) >= 1, "no {kind} injected:\n{report}");
    }
    // ... and the links carried, then cut, real traffic between the servers.
    let n = cluster.nodes().len();
    let dropped: u64 = (0..n)
        .flat_map(|a| (0..n).map(move |b| (a, b)))
        .filter_map(|(a, b)| cluster.link(a, b))
        .map(|link| link.stats().upstream.bytes_dropped + link.stats().downstream.bytes_dropped)
        .sum();
    assert!(dropped > 0, "no link cut dropped anything:\n{report}");
    assert!(report.ok > 100, "too little work done under the faults:\n{report}");
}

/// A shard master killed with `kill -9` and restarted on its data directory goes on with the
/// cluster it had, during writes: no second, empty cluster, no server out of the membership, every
/// acknowledged append kept, and writes again within the bound. (Before the shard master saved
/// its state, this same run failed: every server out of the cluster, every append lost.)
#[test]
fn a_killed_shard_master_goes_on_from_its_data_directory() {
    let config = ClusterChaosConfig {
        servers: 3,
        clients: 2,
        faults: vec![ClusterFault::KillMaster],
        duration: Duration::from_secs(2),
        fault_duration: Duration::from_secs(1),
        tail: Duration::from_secs(2),
        liveness_bound: Duration::from_secs(10),
        seed: 3,
        ..ClusterChaosConfig::default()
    };
    let mut base = ClusterConfig::new(0).unwrap();
    base.seed = 3;
    let mut cluster = Cluster::start(&cluster_chaos::cluster_config(&base, &config).unwrap()).unwrap();
    let report = cluster_chaos::run_on(&mut cluster, &config).unwrap();
    println!("{report}");
    assert_eq!(report.injected(ClusterFault::KillMaster), 1, "{report}");
    assert!(report.passed, "{report}\n{}", cluster.logs());
}

/// Durable servers (`--data-dir`, `--fsync always`), every one of them killed with `kill -9` at
/// once while the clients write, then all started again: each comes back as the member it was,
/// with its data, and the run passes the checks across the crash (linearizable, every
/// acknowledged append kept exactly once). A killed primary, restarted quickly, comes back too.
/// (With in-memory servers the same crash loses every value.)
#[test]
fn a_whole_cluster_crash_of_durable_servers_loses_nothing() {
    let config = ClusterChaosConfig {
        servers: 3,
        clients: 3,
        faults: vec![ClusterFault::CrashAll, ClusterFault::KillPrimary],
        duration: Duration::from_secs(4),
        interval: Duration::from_secs(1),
        fault_duration: Duration::from_millis(1500),
        tail: Duration::from_secs(3),
        liveness_bound: Duration::from_secs(15),
        durable: true,
        seed: 5,
        ..ClusterChaosConfig::default()
    };
    let mut base = ClusterConfig::new(0).unwrap();
    base.seed = 5;
    let mut cluster = Cluster::start(&cluster_chaos::cluster_config(&base, &config).unwrap()).unwrap();
    let report = cluster_chaos::run_on(&mut cluster, &config).unwrap();
    println!("{report}");
    assert!(report.passed, "{report}\n{}", cluster.logs());
    assert!(report.injected(ClusterFault::CrashAll) >= 1, "no whole-cluster crash:\n{report}");
    let logs = cluster.logs();
    assert!(
        logs.contains("taken back as the member this server was"),
        "no server came back in place:\n{logs}"
    );
    assert!(report.ok > 50, "too little work done:\n{report}");
}
