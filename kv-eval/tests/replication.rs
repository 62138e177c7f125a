//! Replicated clusters of real processes: every slot held by a primary and secondaries, read
//! from any replica, through membership changes and network faults, checked for linearizability
//! (strong consistency), convergence (eventual consistency), and lost or duplicated writes.
//!
//! They run the `kv-server` binary built from the current source (`find_binary` builds it
//! once per test process; or set `KV_SERVER_BIN`).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{STOP, config, master_addr, runtime};
use kv_client::{Client, ReadFrom, ShardMaster, server_status};
use kv_eval::harness::cluster::Cluster;
use kv_eval::harness::history::{Input, Outcome};
use kv_eval::harness::linearizability::{self, Verdict};
use kv_eval::harness::recorder::Recorder;
use kv_shard::Config;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

fn replicated(nodes: usize, factor: usize, flags: &[&str]) -> Cluster {
    common::with_shardmaster(nodes, factor, flags)
}

/// Waits until every member is at the shard master's epoch with every slot it owns and every
/// copy it keeps up to date.
async fn settled(cluster: &Cluster, within: Duration) -> Config {
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
async fn at_every_replica(config: &Config, key: &str) -> Vec<(String, Option<String>)> {
    let mut values = Vec::new();
    for (_, address) in config.replicas(key) {
        let direct = Client::builder(address).attempts(20).connect().await.unwrap();
        values.push((address.to_owned(), direct.get(key).await.unwrap()));
    }
    values
}

/// Reads every key back at its primary, recorded (so that a lost write shows in the history),
/// and checks that every replica of it holds the same value.
async fn read_back(cluster: &Cluster, recorder: &Recorder, config: &Config, keys: &[String]) {
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
const WORK: usize = 100;

/// Lets the workload run on for `at_least`, and then until it has completed more than [`WORK`]
/// operations (a loaded machine runs fewer in the same time), for at most a minute more.
fn run_on(recorder: &Recorder, at_least: Duration) {
    std::thread::sleep(at_least);
    let deadline = Instant::now() + Duration::from_secs(60);
    while recorder.history().counts().0 <= WORK && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks the recorded history: it did work, and it is linearizable.
fn assert_linearizable(cluster: &Cluster, recorder: &Recorder) {
    let history = recorder.history();
    let (ok, fail, unknown) = history.counts();
    let report = linearizability::check_with_budget(&history, Duration::from_secs(60));
    println!("{ok} ok, {fail} failed, {unknown} unknown: {:?} in {:.2} s", report.verdict, report.elapsed);
    assert!(ok > WORK, "the workload did work: {ok} ok");
    assert_eq!(report.verdict, Verdict::Linearizable, "{}", cluster.logs());
}

/// `clients` recorded cluster clients (processes `first..`) running a random mix of reads from
/// any replica, puts, appends and pops over `keys` until `stop`.
fn workload(
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

/// The primary of the slot of `key`, by the shard master, as the harness's node index.
fn node_of(cluster: &Cluster, address: &str) -> usize {
    cluster.nodes().iter().position(|n| n.client_addr().to_string() == address).unwrap()
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

/// A primary that dies in the middle of handing its slots off (here, while leaving) loses
/// nothing: the secondaries of those slots kept copies, and one of them finishes the hand-off.
#[test]
fn a_sender_that_dies_during_a_move_loses_nothing() {
    let mut cluster = replicated(4, 3, &["--consistency", "strong"]);
    let rt = runtime();
    let keys: Vec<String> = (0..200).map(|i| format!("m{i}")).collect();
    let master = master_addr(&cluster);
    let (leaver, leaver_addr, real_addr) = rt.block_on(async {
        let c = Client::cluster_builder(master.as_str()).connect().await.unwrap();
        for key in &keys {
            c.put(key.as_str(), format!("value of {key}")).await.unwrap();
        }
        let before = config(&cluster).await;
        let (_, address) = before.members().nth(1).unwrap();
        let leaver = node_of(&cluster, address);
        (leaver, address.to_owned(), cluster.nodes()[leaver].addr().to_string())
    });
    // Slow the receivers down, so that the hand-off is caught half-way.
    for (i, node) in cluster.nodes().iter().enumerate() {
        if i != leaver {
            node.proxy().unwrap().set_faults(kv_eval::harness::proxy::Faults::delayed(
                Duration::from_millis(60),
                Duration::from_millis(10),
            ));
        }
    }
    let epoch = rt.block_on(config(&cluster)).epoch();
    let leave = rt.spawn({
        let (master, leaver_addr) = (master.clone(), leaver_addr.clone());
        async move { ShardMaster::connect(master).await.unwrap().leave(leaver_addr).await }
    });
    // Kill the leaver once it has switched to the new epoch: it is handing its slots off.
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(status) = server_status(&real_addr, Duration::from_secs(1)).await
                && status.epoch > epoch
            {
                println!("killing the leaver mid-move: {status:?}");
                break;
            }
            assert!(Instant::now() < deadline, "the leaver never switched\n{}", cluster.logs());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    cluster.node_mut(leaver).kill().unwrap();
    let left = rt.block_on(leave).unwrap();
    println!("the leave answered: {:?}", left.as_ref().map(|config| config.epoch()));
    assert!(left.is_ok(), "the leave completed from the copies: {left:?}\n{}", cluster.logs());
    assert!(
        cluster.logs().contains("handed off the copies of a dead primary's slots"),
        "a secondary sent its copies\n{}",
        cluster.logs()
    );
    for node in cluster.nodes() {
        if let Some(proxy) = node.proxy() {
            proxy.heal();
        }
    }
    rt.block_on(async {
        let after = settled(&cluster, Duration::from_secs(60)).await;
        assert!(after.id_of(&leaver_addr).is_none(), "the leaver is gone");
        let c =
            Client::cluster_builder(master.as_str()).read_from(ReadFrom::Primary).connect().await.unwrap();
        for key in &keys {
            assert_eq!(
                c.get(key.as_str()).await.unwrap(),
                Some(format!("value of {key}")),
                "{key}\n{}",
                cluster.logs()
            );
        }
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

/// Checks that every one of `keys` holds `"value of KEY"` at its primary, and the same at every
/// replica of `config` (`what` says what the test did).
async fn every_value_intact(cluster: &Cluster, config: &Config, keys: &[String], what: &str) {
    let c =
        Client::cluster_builder(master_addr(cluster)).read_from(ReadFrom::Primary).connect().await.unwrap();
    for key in keys {
        let value = c.get(key.as_str()).await.unwrap();
        assert_eq!(value, Some(format!("value of {key}")), "{key} ({what})\n{}", cluster.logs());
        let values = at_every_replica(config, key).await;
        assert!(values.iter().all(|(_, v)| *v == values[0].1), "replicas of {key} differ: {values:?}");
    }
}

/// Waits until the server at `address` (its own address, not its proxy) owes no hand-off.
async fn until_nothing_owed(cluster: &Cluster, address: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        match server_status(address, Duration::from_secs(2)).await {
            Ok(status) if status.outgoing_slots == 0 => return,
            status => assert!(
                Instant::now() < deadline,
                "{address} still owes slots: {status:?}\n{}",
                cluster.logs()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A server that dies while slots are still moving to it (here, the slots of a leaver) loses
/// nothing: its failover gives those slots to its heir, which takes them from the leaver (still
/// holding them) and keeps what its own copy holds newer, and the leaver's unfinished hand-offs
/// to the other receivers carry over to the failover's epoch. Recorded clients working on the
/// moving keys throughout see a linearizable history.
#[test]
fn a_receiver_that_dies_during_a_move_loses_nothing() {
    a_receiver_dies_during_a_move(3);
}

/// [`a_receiver_that_dies_during_a_move_loses_nothing`], with two copies of every slot.
#[test]
fn with_two_copies_a_receiver_that_dies_during_a_move_loses_nothing() {
    a_receiver_dies_during_a_move(2);
}

fn a_receiver_dies_during_a_move(factor: usize) {
    let mut cluster = replicated(4, factor, &["--consistency", "strong"]);
    let rt = runtime();
    let master = master_addr(&cluster);
    let keys: Vec<String> = (0..200).map(|i| format!("r{i}")).collect();
    let before = rt.block_on(config(&cluster));
    let leaver_addr = before.members().nth(1).unwrap().1.to_owned();
    let leaver = node_of(&cluster, &leaver_addr);
    let leaver_real = cluster.nodes()[leaver].addr().to_string();
    // The workload's keys are all the leaver's: they all move.
    let moving: Arc<[String]> = (0..)
        .map(|i| format!("w{i}"))
        .filter(|k| before.owner(k).is_some_and(|(_, a)| a == leaver_addr))
        .take(12)
        .collect();
    rt.block_on(async {
        let c = Client::cluster_builder(master.as_str()).connect().await.unwrap();
        for key in &keys {
            c.put(key.as_str(), format!("value of {key}")).await.unwrap();
        }
    });
    let recorder = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let workers = workload(&rt, &cluster, &recorder, &moving, &stop, 4, 200);
    std::thread::sleep(Duration::from_millis(500));
    // Slow the receivers down, so that the hand-off is caught half-way.
    for (i, node) in cluster.nodes().iter().enumerate() {
        if i != leaver {
            node.proxy().unwrap().set_faults(kv_eval::harness::proxy::Faults::delayed(
                Duration::from_millis(40),
                Duration::from_millis(10),
            ));
        }
    }
    let leave = rt.spawn({
        let (master, leaver_addr) = (master.clone(), leaver_addr.clone());
        async move { ShardMaster::connect(master).await.unwrap().leave(leaver_addr).await }
    });
    // Kill a receiver that has switched to the new epoch and still waits for slots.
    let victim = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for (i, node) in cluster.nodes().iter().enumerate() {
                if i == leaver {
                    continue;
                }
                if let Ok(status) = server_status(&node.addr().to_string(), Duration::from_secs(1)).await
                    && status.epoch > before.epoch()
                    && status.incoming_slots > 0
                {
                    println!("killing a receiver mid-move: {status:?}");
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no receiver was seen waiting\n{}", cluster.logs());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let victim_addr = cluster.nodes()[victim].client_addr().to_string();
    cluster.node_mut(victim).kill().unwrap();
    let left = rt.block_on(leave).unwrap();
    println!("the leave answered: {left:?}");
    run_on(&recorder, Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        rt.block_on(worker).unwrap();
    }
    for node in cluster.nodes() {
        if let Some(proxy) = node.proxy() {
            proxy.heal();
        }
    }
    rt.block_on(async {
        let after = settled(&cluster, Duration::from_secs(60)).await;
        assert!(after.id_of(&victim_addr).is_none(), "the receiver was failed over");
        assert!(after.id_of(&leaver_addr).is_none(), "the leaver is gone");
        until_nothing_owed(&cluster, &leaver_real, Duration::from_secs(60)).await;
        let log = cluster.nodes()[leaver].log();
        let moves: Vec<&str> =
            log.lines().filter(|l| l.contains("carrying") || l.contains("handed off slots")).collect();
        println!("the leaver's moves:\n{}", moves.join("\n"));
        // With three copies, every receiver's acknowledgement waited for the dead one's catch-up
        // (with three members left, it is a secondary of every slot): the hand-offs to the others
        // were unfinished at the failover too, and carried over to a later epoch than the leave's.
        let leave_epoch = before.epoch() + 1;
        let epoch_of = |line: &str| -> Option<u64> {
            line.split_whitespace().find_map(|field| field.strip_prefix("epoch=")?.parse().ok())
        };
        let carried_over: std::collections::BTreeSet<&str> = moves
            .iter()
            .filter(|l| l.contains("handed off slots") && epoch_of(l).is_some_and(|e| e > leave_epoch))
            .filter_map(|l| l.split_whitespace().find(|field| field.starts_with("to=")))
            .collect();
        if factor == 3 {
            assert!(
                carried_over.len() >= 2,
                "hand-offs to the heir and to another receiver after the leave's epoch: {carried_over:?}"
            );
        }
        assert!(
            cluster.logs().contains("taking over the slots a failed owner was still receiving"),
            "the heir took the receiver's unfinished slots from the leaver\n{}",
            cluster.logs()
        );
        every_value_intact(&cluster, &after, &keys, "a receiver was killed mid-move").await;
        read_back(&cluster, &recorder, &after, &moving).await;
    });
    assert_linearizable(&cluster, &recorder);
}

/// A primary that fails while its first secondary is still catching up (a server that has
/// just joined) fails over to a secondary whose copy is up to date, not to the one catching up:
/// nothing is lost.
#[test]
fn a_failover_while_a_new_secondary_catches_up_promotes_an_up_to_date_copy() {
    failover_while_a_joiner_catches_up(
        4,
        3,
        "promoting up-to-date secondaries in place of first secondaries",
    );
}

/// The primary of the newest member's slots is paused through a join, so that it never sends
/// the joiner (which becomes the secondary of those slots) its snapshot, and is failed after:
/// every key is then read back, at every replica, and `log` must have been logged.
fn failover_while_a_joiner_catches_up(nodes: usize, factor: usize, log: &str) {
    // Long enough a failure timeout for the join to start while the primary is paused.
    let flags = ["--consistency", "strong", "--failure-timeout-ms", "6000"];
    let mut cluster = replicated(nodes, factor, &flags);
    let rt = runtime();
    let master = master_addr(&cluster);
    let keys: Vec<String> = (0..300).map(|i| format!("j{i}")).collect();
    let before = rt.block_on(async {
        let c = Client::cluster_builder(master.as_str()).connect().await.unwrap();
        for key in &keys {
            c.put(key.as_str(), format!("value of {key}")).await.unwrap();
        }
        settled(&cluster, Duration::from_secs(30)).await
    });
    // The newest member: a server that joins becomes the first secondary of its slots.
    let primary = before.members().last().unwrap().1.to_owned();
    let victim = node_of(&cluster, &primary);
    let its_keys = keys.iter().filter(|k| before.owner(k).is_some_and(|(_, a)| a == primary)).count();
    assert!(its_keys > 0);
    cluster.node_mut(victim).pause().unwrap();
    let joined = cluster.add_node().unwrap();
    let joined_addr = cluster.nodes()[joined].client_addr().to_string();
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while config(&cluster).await.id_of(&primary).is_some() {
            assert!(Instant::now() < deadline, "the paused primary was not failed over\n{}", cluster.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    cluster.node_mut(victim).kill().unwrap();
    rt.block_on(async {
        let after = settled(&cluster, Duration::from_secs(60)).await;
        assert!(after.id_of(&joined_addr).is_some());
        assert!(cluster.logs().contains(log), "expected {log:?} in the logs\n{}", cluster.logs());
        let what = format!("{its_keys} keys were the failed primary's");
        every_value_intact(&cluster, &after, &keys, &what).await;
    });
}

/// With two copies of every slot, a server that dies right after joining loses nothing: every
/// slot that moved to it was acknowledged only once its one secondary held an up-to-date copy,
/// even where that secondary is the server that sent it (which keeps the data it sent as its
/// copy, rather than dropping it and catching up from the joiner).
#[test]
fn with_two_copies_a_server_that_dies_right_after_joining_loses_nothing() {
    let mut cluster = replicated(3, 2, &["--consistency", "strong"]);
    let rt = runtime();
    let master = master_addr(&cluster);
    let keys: Vec<String> = (0..300).map(|i| format!("t{i}")).collect();
    rt.block_on(async {
        let c = Client::cluster_builder(master.as_str()).connect().await.unwrap();
        for key in &keys {
            c.put(key.as_str(), format!("value of {key}")).await.unwrap();
        }
        settled(&cluster, Duration::from_secs(30)).await;
    });
    let joined = cluster.add_node().unwrap();
    let joined_addr = cluster.nodes()[joined].client_addr().to_string();
    let (moved, secondary) = rt.block_on(async {
        let after = config(&cluster).await;
        let id = after.id_of(&joined_addr).unwrap();
        let slot = (0..).find(|&s| after.owner_of_slot(s) == Some(id)).unwrap();
        let secondary = after.address(after.replicas_of_slot(slot)[1]).unwrap().to_owned();
        let moved = keys.iter().filter(|k| after.owner(k).is_some_and(|(owner, _)| owner == id)).count();
        (moved, secondary)
    });
    assert!(moved > 0, "some keys moved to the new server");
    // The join has returned: the new server's secondary is up to date with every slot of it.
    let secondary_real = cluster.nodes()[node_of(&cluster, &secondary)].addr().to_string();
    let status = rt.block_on(server_status(&secondary_real, Duration::from_secs(2))).unwrap();
    assert_eq!(status.syncing_slots, 0, "{secondary} right after the join: {status:?}\n{}", cluster.logs());
    // It sent the new server some of those slots itself, and kept what it sent as its copy.
    let log = cluster.nodes()[node_of(&cluster, &secondary)].log();
    assert!(
        log.lines().any(|l| l.contains("handed off slots") && !l.contains("kept_as_copies=0 ")),
        "{secondary} kept the slots it handed off as its copies\n{log}"
    );
    cluster.node_mut(joined).kill().unwrap();
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while config(&cluster).await.id_of(&joined_addr).is_some() {
            assert!(Instant::now() < deadline, "the killed server was not failed over\n{}", cluster.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let after = settled(&cluster, Duration::from_secs(60)).await;
        let what = format!("{moved} keys had moved to the killed server");
        every_value_intact(&cluster, &after, &keys, &what).await;
    });
}

/// With two copies of every slot, a join gives some slots a new secondary (the joiner) without
/// moving them, and the old one leaves their replica set. If their primary fails before the new
/// secondary has caught up, the old secondary, which kept its copy, brings it up to date first:
/// nothing is lost.
#[test]
fn with_two_copies_a_failover_while_a_new_secondary_catches_up_loses_nothing() {
    failover_while_a_joiner_catches_up(
        3,
        2,
        "a former secondary's copy brought a failed primary's heir up to date",
    );
}
