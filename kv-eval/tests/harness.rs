//! The cluster harness against real `kv-server` processes: node faults, network faults through
//! the proxies, and the chaos runner's verdicts on a single in-memory server.
//!
//! They run the `kv-server` binary built from the current source (`find_binary` builds it
//! once per test process; or set `KV_SERVER_BIN`).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use kv_client::{Client, ShardMaster};
use kv_eval::harness::chaos::{self, ChaosConfig, FaultKind};
use kv_eval::harness::cluster::{Cluster, ClusterConfig};
use kv_eval::harness::history::{Input, Outcome, Output};
use kv_eval::harness::linearizability::{self, Verdict};
use kv_eval::harness::proxy::Faults;
use kv_eval::harness::recorder::Recorder;

const TIMEOUT: Duration = Duration::from_millis(300);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn client(addr: std::net::SocketAddr) -> Client {
    Client::builder(addr.to_string()).timeout(TIMEOUT).connect_timeout(TIMEOUT).connect().await.unwrap()
}

/// Retries `get` until the node answers (bounded), for the moments after a heal.
async fn get_eventually(client: &Client, key: &str) -> Option<String> {
    for _ in 0..200 {
        if let Ok(value) = client.get(key).await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the node did not answer within 10 s");
}

#[test]
fn nodes_can_be_killed_restarted_paused_and_resumed() {
    let mut cluster = Cluster::start(&ClusterConfig::new(2).unwrap()).unwrap();
    let rt = runtime();
    let addr = cluster.nodes()[0].addr();
    let pid_dir = cluster.nodes()[0].data_dir();
    assert!(pid_dir.is_dir());
    assert_ne!(cluster.nodes()[0].addr(), cluster.nodes()[1].addr());
    rt.block_on(async {
        let c = client(cluster.nodes()[0].client_addr()).await;
        c.put("k", "v").await.unwrap();
        assert_eq!(c.get("k").await.unwrap().as_deref(), Some("v"));
    });

    // Kill: the node stops answering; the other node is unaffected.
    cluster.node_mut(0).kill().unwrap();
    assert!(!cluster.node_mut(0).is_running());
    rt.block_on(async {
        let c = client(cluster.nodes()[1].client_addr()).await;
        c.put("other", "x").await.unwrap();
        let dead = Client::builder(cluster.nodes()[0].addr().to_string()).timeout(TIMEOUT).connect().await;
        assert!(dead.is_err(), "a killed node accepted a connection");
    });

    // Restart: same address; the in-memory data is gone.
    cluster.node_mut(0).restart().unwrap();
    assert_eq!(cluster.nodes()[0].addr(), addr);
    rt.block_on(async {
        let c = client(cluster.nodes()[0].client_addr()).await;
        assert_eq!(get_eventually(&c, "k").await, None, "an in-memory server kept data over a restart");
        c.put("k", "v2").await.unwrap();

        // Pause: calls time out instead of failing fast; resume: they work again.
        cluster.node_mut(0).pause().unwrap();
        let err = c.get("k").await.unwrap_err();
        assert!(!err.is_definite(), "a call to a paused node must be of unknown outcome: {err}");
        cluster.node_mut(0).resume().unwrap();
        assert_eq!(get_eventually(&c, "k").await.as_deref(), Some("v2"));
    });
    assert!(cluster.nodes()[0].log().contains("listening"), "the node's log is kept across restarts");
}

#[test]
fn proxies_partition_and_heal_the_path_to_a_node() {
    let mut cluster = Cluster::start(&ClusterConfig::new(1).unwrap()).unwrap();
    let rt = runtime();
    rt.block_on(async {
        let node = &cluster.nodes()[0];
        assert_ne!(node.client_addr(), node.addr(), "clients go through the proxy");
        let c = client(node.client_addr()).await;
        c.put("k", "before").await.unwrap();

        node.proxy().unwrap().set_faults(Faults::partition());
        let err = c.put("k", "during").await.unwrap_err();
        assert!(!err.is_definite(), "a call across a partition must be of unknown outcome: {err}");
        // The node itself is fine: only the path is cut.
        let direct = client(node.addr()).await;
        assert_eq!(direct.get("k").await.unwrap().as_deref(), Some("before"), "a black-holed write arrived");

        node.proxy().unwrap().heal();
        assert_eq!(get_eventually(&c, "k").await.as_deref(), Some("before"));
        c.put("k", "after").await.unwrap();
        assert_eq!(direct.get("k").await.unwrap().as_deref(), Some("after"));
    });
    cluster.heal().unwrap();
}

/// A cluster with a shard master: storage nodes join it at start-up, known by their client
/// addresses; the master can be paused, cut off and restarted like any node (it keeps its state
/// in its data directory, so a restart goes on with the cluster).
#[test]
fn a_cluster_can_include_a_shard_master_to_break() {
    let config = ClusterConfig { shardmaster: true, ..ClusterConfig::new(2).unwrap() };
    let mut cluster = Cluster::start(&config).unwrap();
    let rt = runtime();
    let master_addr = cluster.shardmaster().unwrap().client_addr().to_string();
    rt.block_on(async {
        let master = ShardMaster::connect(master_addr.clone()).await.unwrap();
        let config = master.config().await.unwrap();
        assert_eq!((config.epoch(), config.len()), (2, 2));
        for node in cluster.nodes() {
            assert!(config.id_of(&node.client_addr().to_string()).is_some(), "joined by its client address");
        }
        let owner = master.query("k").await.unwrap().0;
        assert!(cluster.nodes().iter().any(|n| n.client_addr().to_string() == owner));
        let alias = master.join(cluster.nodes()[0].addr().to_string()).await.unwrap_err();
        assert!(
            alias.to_string().contains("knows itself as"),
            "a second name for a member is refused: {alias}"
        );

        cluster.shardmaster().unwrap().proxy().unwrap().set_faults(Faults::partition());
        let cut_off = tokio::time::timeout(Duration::from_secs(2), master.config()).await;
        assert!(!matches!(cut_off, Ok(Ok(_))), "a partitioned shard master answered");
        cluster.heal().unwrap();

        cluster.shardmaster_mut().unwrap().restart().unwrap();
        let master = ShardMaster::connect(master_addr).await.unwrap();
        let after = master.config().await.unwrap();
        assert_eq!(
            (after.epoch(), after.len()),
            (2, 2),
            "the harness's shard master keeps its state in its data directory across a restart"
        );
    });
    assert!(cluster.logs().contains("shard master listening"));
}

/// With `route_links`, the processes dial each other through the links (`kv-server
/// --dial-via`): the shard master's pings and installs go over its link to each server, a
/// server's join over its link to the master, and replication over the server-to-server links.
#[test]
fn routed_links_carry_the_traffic_between_processes() {
    let config = ClusterConfig {
        shardmaster: true,
        route_links: true,
        replication_factor: 2,
        ..ClusterConfig::new(2).unwrap()
    };
    let cluster = Cluster::start(&config).unwrap();
    let rt = runtime();
    let master_addr = cluster.shardmaster().unwrap().client_addr().to_string();
    rt.block_on(async {
        let client = Client::connect_cluster(master_addr).await.unwrap();
        for i in 0..20 {
            client.put(format!("k{i}"), "v").await.unwrap();
        }
    });
    let carried = |p: &kv_eval::harness::proxy::Proxy| p.stats().upstream.bytes_forwarded > 0;
    for id in 0..2 {
        let (to_master, from_master) = cluster.master_links(id).unwrap();
        assert!(carried(to_master), "node {id} joined over its link to the master");
        assert!(carried(from_master), "the master reached node {id} over its link");
    }
    // Each node is primary of some of the 20 keys and replicates them to the other.
    assert!(
        carried(cluster.link(0, 1).unwrap()) && carried(cluster.link(1, 0).unwrap()),
        "{}",
        cluster.logs()
    );
}

/// Node-to-node links: each ordered pair has its own proxy, so the harness can cut one direction,
/// both, or whole groups apart. (The calls here stand in for a node's calls to its peer.)
#[test]
fn links_between_nodes_partition_one_way_both_ways_and_heal() {
    let mut cluster = Cluster::start(&ClusterConfig::new(3).unwrap()).unwrap();
    let rt = runtime();
    rt.block_on(async {
        for (a, b) in [(0, 1), (1, 0), (1, 2), (2, 1)] {
            assert_ne!(cluster.peer_addr(a, b), cluster.nodes()[b].addr());
            assert_ne!(cluster.peer_addr(a, b), cluster.peer_addr(b, a));
        }
        let zero_to_one = client(cluster.peer_addr(0, 1)).await;
        let one_to_two = client(cluster.peer_addr(1, 2)).await;
        let two_to_one = client(cluster.peer_addr(2, 1)).await;
        zero_to_one.put("k", "v").await.unwrap();
        assert_eq!(two_to_one.get("k").await.unwrap().as_deref(), Some("v"), "links reach the same node");

        // Node 0 alone on one side: its link to node 1 is cut; 1 <-> 2 still talk.
        cluster.partition(&[0], &[1, 2]);
        assert!(!zero_to_one.get("k").await.unwrap_err().is_definite());
        one_to_two.put("x", "y").await.unwrap();
        assert!(two_to_one.get("k").await.is_ok());
        cluster.heal().unwrap();
        assert_eq!(get_eventually(&zero_to_one, "k").await.as_deref(), Some("v"));

        // One way: 2 -> 1 drops what 2 sends; 1 -> 2 is untouched.
        let mut faults = Faults::default();
        faults.upstream.drop = true;
        cluster.link(2, 1).unwrap().set_faults(faults);
        assert!(!two_to_one.get("k").await.unwrap_err().is_definite());
        assert_eq!(one_to_two.get("x").await.unwrap().as_deref(), Some("y"));
        cluster.heal().unwrap();
        assert_eq!(get_eventually(&two_to_one, "k").await.as_deref(), Some("v"));

        // Isolating a node cuts its client path and its links too.
        let c = client(cluster.nodes()[1].client_addr()).await;
        cluster.isolate(1);
        assert!(!c.get("k").await.unwrap_err().is_definite());
        assert!(!zero_to_one.get("k").await.unwrap_err().is_definite());
        cluster.heal().unwrap();
        assert_eq!(get_eventually(&c, "k").await.as_deref(), Some("v"));
    });
}

fn chaos_config(faults: Vec<FaultKind>, seed: u64) -> ChaosConfig {
    ChaosConfig {
        mix: chaos::DEFAULT_MIX.parse().unwrap(),
        clients: 6,
        duration: Duration::from_secs(4),
        keys: 4,
        timeout: Duration::from_millis(400),
        faults,
        interval: Duration::from_millis(1000),
        fault_duration: Duration::from_millis(500),
        check_budget: Duration::from_secs(120),
        seed,
    }
}

/// The client retries a write whose answer was lost, and the server applies it once: the answers
/// are black-holed (the write itself gets through), the client times out and retries with the
/// same id, and after the heal the retry is answered from the server's memory.
#[test]
fn a_write_whose_answer_was_lost_is_retried_and_applied_once() {
    let cluster = Cluster::start(&ClusterConfig::new(1).unwrap()).unwrap();
    let rt = runtime();
    let node = &cluster.nodes()[0];
    let proxy = node.proxy().unwrap();
    rt.block_on(async {
        let c = Client::builder(node.client_addr().to_string())
            .timeout(TIMEOUT)
            .attempts(20)
            .connect()
            .await
            .unwrap();
        c.put("k", "a").await.unwrap();
        let mut answers_lost = Faults::default();
        answers_lost.downstream.drop = true;
        proxy.set_faults(answers_lost);
        let append = c.append("k", "b");
        let heal = async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            proxy.heal();
        };
        let (result, ()) = tokio::join!(append, heal);
        result.unwrap();
        assert!(proxy.stats().downstream.bytes_dropped > 0, "no answer was lost: the test proved nothing");
        let direct = client(node.addr()).await;
        assert_eq!(direct.get("k").await.unwrap().as_deref(), Some("ab"), "the retried append ran twice");
    });
}

/// The proof that the checker bites, step by step: acknowledged writes, a restart of an
/// in-memory server, reads that find nothing. The recorded history must be flagged.
#[test]
fn a_restart_that_loses_acknowledged_writes_is_flagged() {
    let mut cluster = Cluster::start(&ClusterConfig::new(1).unwrap()).unwrap();
    let rt = runtime();
    let recorder = Recorder::new();
    let writer = rt.block_on(async { recorder.client(0, client(cluster.nodes()[0].client_addr()).await) });
    rt.block_on(async {
        for key in ["a", "b"] {
            assert!(matches!(writer.run(key, Input::Put("v".into())).await, Outcome::Ok(_)));
            assert!(matches!(writer.run(key, Input::Append("w".into())).await, Outcome::Ok(_)));
        }
    });
    assert!(linearizability::check(&recorder.history()).is_linearizable());

    cluster.node_mut(0).restart().unwrap();
    rt.block_on(async {
        let reader = recorder.client(1, client(cluster.nodes()[0].client_addr()).await);
        assert_eq!(reader.run("a", Input::Get).await, Outcome::Ok(Output::Value(None)));
    });
    let report = linearizability::check(&recorder.history());
    match &report.verdict {
        Verdict::NotLinearizable { key, window, .. } => {
            assert_eq!(key, "a");
            assert!(window.iter().any(|op| op.process == 1 && op.input == Input::Get), "{report}");
        }
        other => panic!("the loss went unnoticed: {other:?}\n{report}"),
    }
}

/// The same through the chaos runner: clients on a few keys while the nemesis kills and
/// restarts the in-memory server. A register workload (get and put, no delete) keeps the
/// violation cheap to prove: nothing but the loss makes a written key read as missing, and each
/// restart gives every key a good chance that its next operation is such a read.
#[test]
fn chaos_flags_the_data_loss_of_restarting_an_in_memory_server() {
    let config = ChaosConfig {
        mix: "get=60,put=40".parse().unwrap(),
        keys: 8,
        ..chaos_config(vec![FaultKind::Kill], 11)
    };
    let report = chaos::run(&ClusterConfig::new(1).unwrap(), &config).unwrap();
    assert!(report.schedule.iter().any(|e| e.event.starts_with("kill")), "{report}");
    assert!(report.ok > 100, "too little happened to judge: {report}");
    assert!(!report.passed, "the data loss went unnoticed:\n{report}");
    match &report.linearizability.verdict {
        Verdict::NotLinearizable { window, .. } => assert!(!window.is_empty(), "{report}"),
        other => panic!("expected a violation, got {other:?}\n{report}"),
    }
}

/// The same kills with a durable server (`--data-dir`, `--fsync always`): it comes back with
/// every write it acknowledged, and the history stays linearizable across the kills.
#[test]
fn chaos_with_a_durable_server_stays_linearizable_across_kills() {
    let config = ChaosConfig {
        mix: "get=60,put=40".parse().unwrap(),
        keys: 8,
        ..chaos_config(vec![FaultKind::Kill], 11)
    };
    let cluster = ClusterConfig { durable: true, ..ClusterConfig::new(1).unwrap() };
    let report = chaos::run(&cluster, &config).unwrap();
    assert!(report.schedule.iter().any(|e| e.event.starts_with("kill")), "{report}");
    assert!(report.ok > 100, "too little happened to judge: {report}");
    assert!(report.passed, "a durable server lost what it acknowledged:\n{report}");
}

/// Faults that lose nothing (a pause, a partition, a flaky path) leave a single server's history
/// linearizable, with the unknown outcomes they cause.
#[test]
fn chaos_without_data_loss_stays_linearizable() {
    let config = chaos_config(vec![FaultKind::Pause, FaultKind::Partition, FaultKind::Flaky], 12);
    let report = chaos::run(&ClusterConfig::new(1).unwrap(), &config).unwrap();
    assert!(report.schedule.len() >= 4, "faults were injected and ended: {report}");
    assert!(report.ok > 100, "too little happened to judge: {report}");
    assert!(report.passed, "a correct single server was judged not linearizable:\n{report}");
}
