//! A sharded cluster of real processes, in the spirit of MIT 6.824's shardkv tests: a shard master
//! and storage servers that join and leave while clients work, checked for lost, duplicated or
//! resurrected writes.
//!
//! They run the `kv-server` binary built from the current source (`find_binary` builds it
//! once per test process; or set `KV_SERVER_BIN`).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{STOP, config, master_addr, runtime};
use kv_client::{Client, server_status};
use kv_eval::harness::cluster::{Cluster, ClusterConfig};
use kv_shard::Config;

fn sharded(nodes: usize) -> Cluster {
    common::with_shardmaster(nodes, 1, &[])
}

/// A cluster client that rides out moves and restarts: short timeouts, many attempts.
async fn client(cluster: &Cluster) -> Client {
    Client::cluster_builder(master_addr(cluster))
        .timeout(Duration::from_secs(2))
        .attempts(40)
        .connect()
        .await
        .unwrap()
}

/// Keys each member holds, by what it reports.
async fn keys_per_server(config: &Config) -> BTreeMap<String, u64> {
    let mut keys = BTreeMap::new();
    for (_, address) in config.members() {
        let status = server_status(address, Duration::from_secs(5)).await.unwrap();
        assert_eq!(status.epoch, config.epoch(), "{address} is at the shard master's epoch");
        assert_eq!(status.incoming_slots, 0, "{address} has every slot it owns");
        keys.insert(address.to_owned(), status.keys);
    }
    keys
}

/// Every key reads back as expected, and each server holds exactly the keys it owns.
async fn check_all(cluster: &Cluster, expected: &BTreeMap<String, String>) {
    let c = client(cluster).await;
    for (key, value) in expected {
        assert_eq!(c.get(key.as_str()).await.unwrap().as_deref(), Some(value.as_str()), "{key}");
    }
    let config = config(cluster).await;
    let mut owned: BTreeMap<String, u64> = config.members().map(|(_, a)| (a.to_owned(), 0)).collect();
    for key in expected.keys() {
        *owned.get_mut(config.owner(key).unwrap().1).unwrap() += 1;
    }
    assert_eq!(keys_per_server(&config).await, owned, "each server holds exactly the keys it owns");
}

/// A dead server only affects its own keys: the others keep serving reads and writes.
#[test]
fn a_dead_server_only_affects_its_own_keys() {
    let mut cluster = sharded(3);
    let rt = runtime();
    let dead = cluster.nodes()[1].client_addr().to_string();
    rt.block_on(async {
        let c = client(&cluster).await;
        for i in 0..60 {
            c.put(format!("k{i}"), format!("v{i}")).await.unwrap();
        }
    });
    cluster.node_mut(1).kill().unwrap();
    rt.block_on(async {
        let config = config(&cluster).await;
        let impatient = Client::cluster_builder(master_addr(&cluster))
            .timeout(Duration::from_millis(500))
            .attempts(2)
            .move_wait(Duration::ZERO)
            .connect()
            .await
            .unwrap();
        let (mut served, mut unserved) = (0, 0);
        for i in 0..60 {
            let key = format!("k{i}");
            if config.owner(&key).unwrap().1 == dead {
                assert!(impatient.get(key.as_str()).await.is_err(), "{key} lives on the dead server");
                unserved += 1;
            } else {
                assert_eq!(impatient.get(key.as_str()).await.unwrap(), Some(format!("v{i}")));
                impatient.append(key.as_str(), "+").await.unwrap();
                assert_eq!(impatient.get(key.as_str()).await.unwrap(), Some(format!("v{i}+")));
                served += 1;
            }
        }
        assert!(served > 0 && unserved > 0, "60 keys over 3 servers: {served} served, {unserved} not");
    });
}

/// Joins and leaves move the data: every value intact, each server holding exactly what it owns,
/// and a leaver that stops cleanly; the last server cannot leave with data, and once it is gone
/// the cluster says the keys are unavailable rather than missing.
#[test]
fn joins_and_leaves_keep_every_value() {
    let mut cluster = sharded(1);
    let rt = runtime();
    let mut expected = BTreeMap::new();
    rt.block_on(async {
        let c = client(&cluster).await;
        for i in 0..300 {
            let (key, value) = (format!("key:{i}"), format!("value {i} ✓"));
            c.put(key.as_str(), value.as_str()).await.unwrap();
            expected.insert(key, value);
        }
        // Values that pops emptied and deletes removed must stay so.
        c.put("empty", "x").await.unwrap();
        assert_eq!(c.lpop("empty").await.unwrap().as_deref(), Some("x"));
        expected.insert("empty".into(), String::new());
        c.put("deleted", "gone").await.unwrap();
        assert!(c.delete("deleted").await.unwrap());
    });
    for _ in 0..2 {
        cluster.add_node().unwrap();
        rt.block_on(check_all(&cluster, &expected));
    }
    assert_eq!(rt.block_on(config(&cluster)).len(), 3);

    assert!(cluster.node_mut(0).stop(STOP).unwrap(), "the leaver exits cleanly:\n{}", cluster.logs());
    rt.block_on(async {
        let config = config(&cluster).await;
        assert_eq!(config.len(), 2, "a stopped server has left");
        check_all(&cluster, &expected).await;
        assert_eq!(client(&cluster).await.get("deleted").await.unwrap(), None, "a deleted key stays deleted");
    });
    assert!(cluster.node_mut(1).stop(STOP).unwrap());
    rt.block_on(check_all(&cluster, &expected));

    // The last server cannot leave with keys: it stops, and the shard master still names it, so
    // clients get an error, never "no value".
    assert!(cluster.node_mut(2).stop(STOP).unwrap());
    assert!(cluster.nodes()[2].log().contains("last member"), "{}", cluster.logs());
    rt.block_on(async {
        assert_eq!(config(&cluster).await.len(), 1);
        let c = Client::cluster_builder(master_addr(&cluster))
            .timeout(Duration::from_millis(500))
            .attempts(2)
            .connect()
            .await
            .unwrap();
        assert!(c.get("key:1").await.is_err(), "the data is not served, and not reported missing");
    });
}

/// Ten clients append to a few shared keys through joins, leaves and a server restart: every
/// append lands exactly once, in each client's order.
#[test]
fn concurrent_appends_survive_joins_leaves_and_a_restart() {
    const KEYS: usize = 4;
    const CLIENTS: usize = 10;
    let mut cluster = sharded(3);
    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let c = rt.block_on(client(&cluster));
    let appenders: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (c, stop) = (c.clone(), Arc::clone(&stop));
            rt.spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("shared{}", (id + n) % KEYS);
                    c.append(key.as_str(), format!("{id}.{n} ")).await.unwrap_or_else(|err| {
                        panic!("append {id}.{n} to {key} failed: {err}");
                    });
                    n += 1;
                }
                n
            })
        })
        .collect();
    let wait_for_appends = || std::thread::sleep(Duration::from_millis(300));

    wait_for_appends();
    cluster.add_node().unwrap();
    wait_for_appends();
    assert!(cluster.node_mut(0).stop(STOP).unwrap(), "{}", cluster.logs());
    wait_for_appends();
    cluster.node_mut(0).restart().unwrap(); // joins again, as a new member
    wait_for_appends();
    assert!(cluster.node_mut(2).stop(STOP).unwrap(), "{}", cluster.logs());
    wait_for_appends();
    cluster.add_node().unwrap();
    wait_for_appends();
    stop.store(true, Ordering::Relaxed);

    let counts: Vec<usize> = appenders.into_iter().map(|task| rt.block_on(task).unwrap()).collect();
    rt.block_on(async {
        let mut seen = vec![Vec::new(); CLIENTS];
        for k in 0..KEYS {
            let value = c.get(format!("shared{k}")).await.unwrap().unwrap_or_default();
            let mut last: BTreeMap<usize, usize> = BTreeMap::new();
            for token in value.split_whitespace() {
                let (id, n) = token.split_once('.').unwrap();
                let (id, n): (usize, usize) = (id.parse().unwrap(), n.parse().unwrap());
                if let Some(&before) = last.get(&id) {
                    assert!(n > before, "shared{k}: {id}.{n} after {id}.{before}: out of order or twice");
                }
                last.insert(id, n);
                seen[id].push(n);
            }
        }
        for (id, mut ns) in seen.into_iter().enumerate() {
            ns.sort_unstable();
            assert_eq!(ns, (0..counts[id]).collect::<Vec<_>>(), "client {id}: each append exactly once");
        }
    });
    assert!(counts.iter().sum::<usize>() > CLIENTS, "the clients did work: {counts:?}");
}

/// Slots that do not move keep serving while others move: reads of keys that stay put, sent
/// once each (no retry), all succeed while a leave's data is in flight, slowed down by delays on
/// the receivers' network paths.
#[test]
fn keys_that_do_not_move_keep_serving_during_a_move() {
    let mut cluster = sharded(3);
    let rt = runtime();
    let leaver = cluster.nodes()[2].client_addr().to_string();
    let (before, stayers) = rt.block_on(async {
        let c = client(&cluster).await;
        let value = "v".repeat(1000);
        for i in 0..600 {
            c.put(format!("key{i}"), value.as_str()).await.unwrap();
        }
        let before = config(&cluster).await;
        let stayers: Vec<String> = (0..600)
            .map(|i| format!("key{i}"))
            .filter(|k| before.owner(k).unwrap().1 != leaver)
            .take(8)
            .collect();
        (before, stayers)
    });
    assert!(before.owner("key0").is_some());
    // Every batch to a receiver, and every read, now takes at least 2 × 100 ms.
    for node in &cluster.nodes()[..2] {
        node.proxy()
            .unwrap()
            .set_faults(kv_eval::harness::proxy::Faults::delayed(Duration::from_millis(100), Duration::ZERO));
    }
    let master = master_addr(&cluster);
    let done = Arc::new(AtomicBool::new(false));
    let started = std::time::Instant::now();
    let leaving = std::thread::scope(|scope| {
        let stopping = scope.spawn(|| {
            let from = started.elapsed();
            let ok = cluster.node_mut(2).stop(STOP).unwrap();
            let to = started.elapsed();
            done.store(true, Ordering::Relaxed);
            (from, to, ok)
        });
        let reads = rt.block_on(async {
            let once = Client::cluster_builder(master)
                .timeout(Duration::from_secs(5))
                .attempts(1)
                .move_wait(Duration::ZERO)
                .connect()
                .await
                .unwrap();
            let readers: Vec<_> = stayers
                .iter()
                .map(|key| {
                    let (once, key, done) = (once.clone(), key.clone(), Arc::clone(&done));
                    tokio::spawn(async move {
                        let mut reads = Vec::new();
                        while !done.load(Ordering::Relaxed) {
                            let from = started.elapsed();
                            let result = once.get(key.as_str()).await;
                            reads.push((from, started.elapsed(), result.map_err(|e| e.to_string())));
                        }
                        reads
                    })
                })
                .collect();
            let mut all = Vec::new();
            for reader in readers {
                all.extend(reader.await.unwrap());
            }
            all
        });
        (stopping.join().unwrap(), reads)
    });
    let ((leave_from, leave_to, clean), reads) = leaving;
    assert!(clean, "the leaver exits cleanly:\n{}", cluster.logs());
    for (_, _, result) in &reads {
        assert!(
            result.as_ref().is_ok_and(|v| v.is_some()),
            "a read of a key that stays put failed: {result:?}"
        );
    }
    let overlapping = reads.iter().filter(|(from, to, _)| *from < leave_to && *to > leave_from).count();
    println!("leave {leave_from:?}..{leave_to:?}, {} reads, {overlapping} overlapping", reads.len());
    assert!(overlapping > 0, "no read overlapped the move ({leave_from:?}..{leave_to:?}): {reads:?}");
    for node in &cluster.nodes()[..2] {
        node.proxy().unwrap().heal();
    }
    rt.block_on(async {
        let c = client(&cluster).await;
        for i in 0..600 {
            assert_eq!(c.get(format!("key{i}")).await.unwrap().map(|v| v.len()), Some(1000), "key{i}");
        }
    });
}

/// A random workload over a few keys, recorded, while servers join and leave over an unreliable
/// network (every storage server's path delayed, with jitter, and connections reset now and
/// then, transfers included): the history, final reads included, is linearizable.
#[test]
fn a_workload_through_membership_changes_on_a_flaky_network_is_linearizable() {
    use kv_eval::harness::history::{Input, Outcome};
    use kv_eval::harness::linearizability::{self, Verdict};
    use kv_eval::harness::recorder::Recorder;
    use rand::rngs::SmallRng;
    use rand::{RngExt, SeedableRng};

    let mut cluster = sharded(3);
    let rt = runtime();
    let recorder = Recorder::new();
    let keys: Arc<[String]> = (0..12).map(|i| format!("k{i}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let flaky = |cluster: &Cluster| {
        for node in cluster.nodes() {
            node.proxy().unwrap().set_faults(kv_eval::harness::proxy::Faults::flaky());
        }
    };
    flaky(&cluster);
    let workers: Vec<_> = (0..6u64)
        .map(|process| {
            let (keys, stop, recorder) = (Arc::clone(&keys), Arc::clone(&stop), recorder.clone());
            let master = master_addr(&cluster);
            rt.spawn(async move {
                let c =
                    Client::cluster_builder(master).timeout(Duration::from_secs(1)).connect().await.unwrap();
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
                        _ => Input::Lpop,
                    };
                    if c.run(key, input).await == Outcome::Unknown {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();
    let pause = || std::thread::sleep(Duration::from_millis(700));
    pause();
    cluster.add_node().unwrap();
    flaky(&cluster);
    pause();
    assert!(cluster.node_mut(0).stop(STOP).unwrap(), "{}", cluster.logs());
    pause();
    cluster.add_node().unwrap();
    flaky(&cluster);
    pause();
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        rt.block_on(worker).unwrap();
    }
    for node in cluster.nodes() {
        node.proxy().unwrap().heal();
    }
    rt.block_on(async {
        let c = client(&cluster).await;
        let reader = recorder.client(99, c);
        for key in keys.iter() {
            assert!(matches!(reader.run(key, Input::Get).await, Outcome::Ok(_)), "final read of {key}");
        }
    });
    let history = recorder.history();
    let (ok, fail, unknown) = history.counts();
    let report = linearizability::check_with_budget(&history, Duration::from_secs(60));
    println!("{ok} ok, {fail} failed, {unknown} unknown: {:?} in {:.2} s", report.verdict, report.elapsed);
    assert!(ok > 100, "the workload did work: {ok} ok");
    assert_eq!(report.verdict, Verdict::Linearizable, "{}", cluster.logs());
}

/// A receiver that stops answering in the middle of a leave delays the hand-off but loses
/// nothing: the leave is reported incomplete, the leaver keeps its data and stays up, and once
/// the receiver is back the shard master brings it up to date and the leaver finishes.
#[test]
fn a_paused_receiver_delays_a_leave_but_loses_nothing() {
    let mut config = ClusterConfig::new(3).unwrap();
    config.shardmaster = true;
    config.shardmaster_args = vec!["--move-timeout-secs".into(), "2".into()];
    config.server_args.extend(["--handoff-timeout-secs".into(), "1".into()]);
    let mut cluster = Cluster::start(&config).unwrap();
    let rt = runtime();
    let mut expected = BTreeMap::new();
    rt.block_on(async {
        let c = client(&cluster).await;
        for i in 0..200 {
            c.put(format!("key{i}"), format!("value{i}")).await.unwrap();
            expected.insert(format!("key{i}"), format!("value{i}"));
        }
    });
    cluster.node_mut(1).pause().unwrap();
    let (first, rest) = cluster.nodes_mut().split_at_mut(2);
    let (paused, leaver) = (&mut first[1], &mut rest[0]);
    let leaver_log = leaver.dir().join("server.log");
    let clean = std::thread::scope(|scope| {
        let stopping = scope.spawn(|| leaver.stop(STOP).unwrap());
        // The leave runs into both timeouts, and reports itself incomplete: only then resume.
        let deadline = std::time::Instant::now() + STOP;
        while !std::fs::read_to_string(&leaver_log).unwrap_or_default().contains("could not hand off") {
            assert!(std::time::Instant::now() < deadline, "the leave never gave up on the paused receiver");
            std::thread::sleep(Duration::from_millis(50));
        }
        paused.resume().unwrap();
        stopping.join().unwrap()
    });
    assert!(clean, "the leaver exits cleanly once its data is handed off:\n{}", cluster.logs());
    assert!(
        cluster.nodes()[2].log().contains("could not hand off"),
        "the leave was incomplete at first:\n{}",
        cluster.logs()
    );
    rt.block_on(check_all(&cluster, &expected));
}
