//! Replicated clusters of real processes: every slot held by a primary and secondaries, read
//! from any replica, through membership changes and network faults, checked for linearizability
//! (strong consistency), convergence (eventual consistency), and lost or duplicated writes.
//! Failures in the middle of data moves are in `replication_moves.rs`.
//!
//! They run the `kv-server` binary built from the current source (`find_binary` builds it
//! once per test process; or set `KV_SERVER_BIN`).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::replicated::{
    assert_linearizable, at_every_replica, node_of, read_back, replicated, run_on, settled, workload,
};
use common::{STOP, config, master_addr, runtime};
use kv_client::{Client, server_status};
use kv_eval::harness::cluster::Cluster;
use kv_eval::harness::recorder::Recorder;

/// Strong consistency: clients reading from any replica while writing through the primaries,
/// with servers joining and leaving and every link flaky, see a linearizable history.
#[test]
fn strong_reads_at_any_replica_are_linearizable_through_joins_leaves_and_a_flaky_network() {
    let mut cluster = replicated(3, 3, &["--consistency", "strong"]);
    let rt = runtime();
    let recorder = Recorder::new();
    let keys: Arc<[String]> = (0..10).map(|i| format!("k{i}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let flaky = |cluster: &Cluster| {
        for node in cluster.nodes() {
            node.proxy().unwrap().set_faults(kv_eval::harness::proxy::Faults::flaky());
        }
    };
    flaky(&cluster);
    let workers = workload(&rt, &cluster, &recorder, &keys, &stop, 6, 0);
    let pause = || std::thread::sleep(Duration::from_millis(800));
    pause();
    cluster.add_node().unwrap();
    flaky(&cluster);
    pause();
    cluster.add_node().unwrap();
    flaky(&cluster);
    pause();
    assert!(cluster.node_mut(1).stop(STOP).unwrap(), "{}", cluster.logs());
    run_on(&recorder, Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        rt.block_on(worker).unwrap();
    }
    for node in cluster.nodes() {
        node.proxy().unwrap().heal();
    }
    rt.block_on(async {
        let config = settled(&cluster, Duration::from_secs(30)).await;
        read_back(&cluster, &recorder, &config, &keys).await;
    });
    assert_linearizable(&cluster, &recorder);
}

/// Eventual consistency: after writes stop, every replica of every key holds the primary's
/// value within one sync interval (plus transfer).
#[test]
fn eventual_replicas_converge_once_writes_stop() {
    let cluster =
        replicated(4, 3, &["--consistency", "eventual", "--sync-replicas", "0", "--sync-interval-ms", "500"]);
    let rt = runtime();
    let keys: Vec<String> = (0..40).map(|i| format!("e{i}")).collect();
    rt.block_on(async {
        let c = Client::cluster_builder(master_addr(&cluster)).connect().await.unwrap();
        let started = Instant::now();
        let mut n = 0;
        while started.elapsed() < Duration::from_millis(1500) {
            n += 1;
            let key = &keys[n % keys.len()];
            match n % 3 {
                0 => c.put(key.as_str(), format!("{n}")).await.unwrap(),
                1 => c.append(key.as_str(), "+").await.unwrap(),
                _ => drop(c.rpop(key.as_str()).await.unwrap()),
            }
        }
        let stopped = Instant::now();
        let config = settled(&cluster, Duration::from_secs(30)).await;
        // Converged when every replica agrees with the primary, for every key.
        let deadline = stopped + Duration::from_secs(15);
        loop {
            let mut differing = Vec::new();
            for key in &keys {
                let values = at_every_replica(&config, key).await;
                if values.iter().any(|(_, v)| *v != values[0].1) {
                    differing.push(values);
                }
            }
            if differing.is_empty() {
                println!("{n} writes; converged {:.2} s after the last", stopped.elapsed().as_secs_f64());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replicas did not converge: {differing:?}\n{}",
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// A server that joins becomes a secondary of some slots and catches up from snapshots while
/// appends go on; then every replica holds every acknowledged append exactly once, in order.
#[test]
fn a_new_replica_catches_up_while_writes_continue() {
    let mut cluster = replicated(3, 3, &["--consistency", "strong"]);
    let rt = runtime();
    let keys: Arc<[String]> = (0..30).map(|i| format!("a{i}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4u64)
        .map(|writer| {
            let (keys, stop) = (Arc::clone(&keys), Arc::clone(&stop));
            let master = master_addr(&cluster);
            rt.spawn(async move {
                let c = Client::cluster_builder(master)
                    .timeout(Duration::from_secs(2))
                    .attempts(40)
                    .connect()
                    .await
                    .unwrap();
                let mut acked: BTreeMap<String, Vec<String>> = BTreeMap::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = &keys[(n as usize * 7 + writer as usize) % keys.len()];
                    let token = format!("<{writer}.{n}>");
                    c.append(key.as_str(), token.as_str()).await.unwrap();
                    acked.entry(key.clone()).or_default().push(token);
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    cluster.add_node().unwrap();
    let joined = cluster.nodes().last().unwrap().client_addr().to_string();
    std::thread::sleep(Duration::from_millis(700));
    rt.block_on(async {
        let status = server_status(&joined, Duration::from_secs(2)).await.unwrap();
        println!("the new server during the writes: {status:?}");
    });
    stop.store(true, Ordering::Relaxed);
    let mut acked: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
    for writer in writers {
        for (key, tokens) in rt.block_on(writer).unwrap() {
            acked.entry(key).or_default().push(tokens);
        }
    }
    rt.block_on(async {
        let config = settled(&cluster, Duration::from_secs(30)).await;
        let status = server_status(&joined, Duration::from_secs(2)).await.unwrap();
        assert!(status.replica_slots > 0, "the new server is a secondary of some slots: {status:?}");
        let mut copies = 0;
        for key in keys.iter() {
            let values = at_every_replica(&config, key).await;
            copies += values.iter().filter(|(address, _)| *address == joined).count();
            for (address, value) in &values {
                let value = value.clone().unwrap_or_default();
                for tokens in acked.get(key).into_iter().flatten() {
                    // Each writer's appends, in its order, each exactly once.
                    let mut rest = value.as_str();
                    for token in tokens {
                        assert_eq!(value.matches(token.as_str()).count(), 1, "{token} at {address}: {value}");
                        let at = rest
                            .find(token.as_str())
                            .unwrap_or_else(|| panic!("{token} out of order at {address}"));
                        rest = &rest[at + token.len()..];
                    }
                }
                assert_eq!(
                    *value,
                    values[0].1.clone().unwrap_or_default(),
                    "{key}: {address} differs from the primary"
                );
            }
        }
        assert!(copies > 0, "the new server holds copies of some of the keys");
    });
}

/// Strong consistency through a `kill -9` of a primary under load: its slots fail over to
/// their secondaries within the failure timeout, and the whole history, with a final read of
/// every key, stays linearizable: no acknowledged write is lost, none is applied twice.
#[test]
fn killing_a_primary_under_load_fails_over_and_loses_no_acknowledged_write() {
    let mut cluster = replicated(4, 3, &["--consistency", "strong"]);
    let rt = runtime();
    let recorder = Recorder::new();
    let keys: Arc<[String]> = (0..10).map(|i| format!("f{i}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let workers = workload(&rt, &cluster, &recorder, &keys, &stop, 6, 10);
    std::thread::sleep(Duration::from_millis(800));
    let before = rt.block_on(config(&cluster));
    let (_, primary) = before.replicas(&keys[0])[0];
    let victim = node_of(&cluster, primary);
    // A key outside the history with the same primary, to see when its slots take writes again.
    let probe = (0..).map(|i| format!("probe{i}")).find(|k| before.replicas(k)[0].1 == primary).unwrap();
    let killed = Instant::now();
    cluster.node_mut(victim).kill().unwrap();
    // Writes to the victim's slots are taken again once the failover is in.
    let recovered = rt.block_on(async {
        let c = Client::cluster_builder(master_addr(&cluster))
            .timeout(Duration::from_millis(500))
            .attempts(1)
            .connect()
            .await
            .unwrap();
        loop {
            if c.put(probe.as_str(), "probe").await.is_ok() {
                return killed.elapsed();
            }
            assert!(killed.elapsed() < Duration::from_secs(20), "no failover\n{}", cluster.logs());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    println!(
        "writes to the killed primary's slots accepted again {:.3} s after the kill",
        recovered.as_secs_f64()
    );
    run_on(&recorder, Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        rt.block_on(worker).unwrap();
    }
    rt.block_on(async {
        let after = settled(&cluster, Duration::from_secs(30)).await;
        assert!(after.id_of(primary).is_none(), "the killed primary was failed over");
        assert_eq!(after.len(), 3);
        read_back(&cluster, &recorder, &after, &keys).await;
    });
    assert_linearizable(&cluster, &recorder);
}

/// A primary cut off from the shard master and its peers is failed over; a client that still
/// reaches it (straight at its listening address) gets neither an acknowledged write nor a
/// stale read from it once its successor has taken a write. When it is reachable again it
/// drops its stale copy and joins again, as a new member.
#[test]
fn a_primary_cut_off_by_a_partition_is_fenced_and_rejoins() {
    let cluster = replicated(4, 3, &["--consistency", "strong"]);
    let rt = runtime();
    rt.block_on(async {
        let c = Client::cluster_builder(master_addr(&cluster)).connect().await.unwrap();
        c.put("fenced", "before").await.unwrap();
        let before = config(&cluster).await;
        let (_, primary) = before.replicas("fenced")[0];
        let victim = node_of(&cluster, primary);
        let behind_the_cut = Client::builder(cluster.nodes()[victim].addr().to_string())
            .attempts(1)
            .timeout(Duration::from_secs(2))
            .connect()
            .await
            .unwrap();
        assert_eq!(behind_the_cut.get("fenced").await.unwrap().as_deref(), Some("before"));
        cluster.nodes()[victim].proxy().unwrap().set_faults(kv_eval::harness::proxy::Faults::partition());
        let deadline = Instant::now() + Duration::from_secs(20);
        while config(&cluster).await.id_of(primary).is_some() {
            assert!(Instant::now() < deadline, "the cut-off primary was not failed over\n{}", cluster.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        c.put("fenced", "after").await.unwrap();
        for _ in 0..5 {
            let read = behind_the_cut.get("fenced").await;
            assert!(
                !matches!(read.as_ref(), Ok(Some(v)) if v == "before"),
                "a stale read from the old primary"
            );
            let write = behind_the_cut.put("fenced", "lost").await;
            assert!(write.is_err(), "the old primary acknowledged a write after its failover");
        }
        assert_eq!(c.get("fenced").await.unwrap().as_deref(), Some("after"));
        cluster.nodes()[victim].proxy().unwrap().heal();
        let deadline = Instant::now() + Duration::from_secs(30);
        while config(&cluster).await.id_of(primary).is_none() {
            assert!(Instant::now() < deadline, "the old primary did not join again\n{}", cluster.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let after = settled(&cluster, Duration::from_secs(30)).await;
        let values = at_every_replica(&after, "fenced").await;
        assert!(values.iter().all(|(_, v)| v.as_deref() == Some("after")), "{values:?}");
    });
}

/// Strong consistency through a server paused past the failure timeout (failed over, then
/// back: it drops its stale copies and joins again) and a server killed and restarted (it
/// joins again, empty, and catches up): the history stays linearizable, and every replica
/// ends with the same values.
#[test]
fn strong_mode_stays_linearizable_through_a_pause_and_a_kill_and_restart() {
    let mut cluster = replicated(4, 3, &["--consistency", "strong"]);
    let rt = runtime();
    let recorder = Recorder::new();
    let keys: Arc<[String]> = (0..10).map(|i| format!("c{i}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let workers = workload(&rt, &cluster, &recorder, &keys, &stop, 5, 100);
    let pause = |ms| std::thread::sleep(Duration::from_millis(ms));
    pause(700);
    cluster.node_mut(1).pause().unwrap();
    pause(2000);
    cluster.node_mut(1).resume().unwrap();
    // Long enough for the paused server to join again: the kill then lands around its join,
    // while the victim may have to hand slots to it.
    pause(1200);
    cluster.node_mut(2).kill().unwrap();
    pause(300);
    if let Err(err) = cluster.node_mut(2).restart() {
        panic!("{err:?}\n{}", cluster.logs());
    }
    run_on(&recorder, Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        rt.block_on(worker).unwrap();
    }
    rt.block_on(async {
        // Both come back as members.
        let deadline = Instant::now() + Duration::from_secs(30);
        while config(&cluster).await.len() < 4 {
            assert!(
                Instant::now() < deadline,
                "the paused and the restarted server did not join again\n{}",
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let after = settled(&cluster, Duration::from_secs(30)).await;
        read_back(&cluster, &recorder, &after, &keys).await;
    });
    assert_linearizable(&cluster, &recorder);
}
