//! Replicated clusters of real processes, failing in the middle of data moves: a server that
//! sends slots, one that receives them, or one that has just joined dies or stops, and every
//! acknowledged write is still there, at every replica.
//!
//! They run the `kv-server` binary built from the current source (`find_binary` builds it
//! once per test process; or set `KV_SERVER_BIN`).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::replicated::{
    assert_linearizable, at_every_replica, node_of, read_back, replicated, run_on, settled, workload,
};
use common::{config, master_addr, runtime};
use kv_client::{Client, ReadFrom, ShardMaster, server_status};
use kv_eval::harness::cluster::Cluster;
use kv_eval::harness::recorder::Recorder;
use kv_shard::Config;

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
