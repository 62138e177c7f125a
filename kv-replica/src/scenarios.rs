//! Scenarios of the storage servers' and the shard master's drivers, in one process: real
//! [`Node`]s and a real [`ShardMaster`] over the in-memory network, at tokio's paused, virtual
//! time. Each reads as a script: build a cluster, cut a link or kill a server, let time pass,
//! check what the protocol promised.

use std::sync::Arc;
use std::time::Duration;

use kv_core::{Error as DataError, MemoryStorage, Mutation};
use kv_shard::clock::{Clock, TokioClock};
use kv_shard::{Config, Consistency, MasterSettings, Replication, ShardMaster, slot_of};

use crate::testing::{MemoryNetwork, primary_of};
use crate::{Node, NodeSettings};
use crate::{Role, role, secondaries};

/// A cluster of storage servers and its shard master, in memory.
struct Cluster {
    clock: Arc<dyn Clock>,
    network: Arc<MemoryNetwork>,
    master: ShardMaster,
    nodes: Vec<(String, Arc<Node>)>,
    /// Each server's engine, by its index.
    storages: Vec<Arc<MemoryStorage>>,
}

impl Cluster {
    /// `n` servers joined one after the other, their slots replicated as `replication` says.
    async fn start(n: usize, replication: Replication) -> Cluster {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock);
        let network = MemoryNetwork::new(Arc::clone(&clock));
        let settings = MasterSettings {
            move_timeout: Duration::from_secs(30),
            failure_timeout: Duration::from_millis(800),
            replication,
        };
        let master =
            ShardMaster::new(settings, network.caller("master"), Arc::clone(&clock)).expect("settings");
        let mut cluster = Cluster { clock, network, master, nodes: Vec::new(), storages: Vec::new() };
        for i in 0..n {
            cluster.add(i).await;
        }
        cluster
    }

    /// Starts server `i` and has it join.
    async fn add(&mut self, i: usize) {
        let address = format!("10.0.0.{i}:7000");
        let storage = Arc::new(MemoryStorage::new());
        let node = self.node_over(&address, Arc::clone(&storage), i as u64 + 1);
        self.network.attach(&address, &node);
        self.nodes.push((address.clone(), node));
        self.storages.push(storage);
        self.master.join(&address).await.expect("join");
    }

    fn node_over(&self, address: &str, storage: Arc<MemoryStorage>, incarnation: u64) -> Arc<Node> {
        let settings = NodeSettings {
            me: address.to_owned(),
            joining: true,
            handoff_timeout: Duration::from_secs(30),
            incarnation,
        };
        Node::new(storage, settings, self.network.caller(address), Arc::clone(&self.clock))
    }

    /// Starts server `i` again, as a new process over `storage` (what it kept), not joined yet.
    async fn restart(&mut self, i: usize, storage: Arc<MemoryStorage>) {
        let address = self.nodes[i].0.clone();
        let node = self.node_over(&address, storage, 100 + i as u64);
        node.restore_membership().await.expect("its membership record reads back");
        self.network.attach(&address, &node);
        self.nodes[i].1 = node;
    }

    /// Keys the servers have sent in catch-ups, in all.
    async fn catch_up_keys(&self) -> u64 {
        let mut keys = 0;
        for (_, node) in &self.nodes {
            keys += node.status().await.map(|s| s.catch_up.keys).unwrap_or(0);
        }
        keys
    }

    fn node(&self, address: &str) -> &Arc<Node> {
        &self.nodes.iter().find(|(a, _)| a == address).expect("a server of the cluster").1
    }

    fn config(&self) -> Arc<Config> {
        self.master.current()
    }

    /// The primary of `key`, and its secondaries.
    fn replicas(&self, key: &str) -> (String, Vec<String>) {
        let config = self.config();
        let primary = primary_of(&config, key).expect("an owner").to_owned();
        let secondaries = secondaries(&config, slot_of(key)).into_iter().map(str::to_owned).collect();
        (primary, secondaries)
    }

    async fn put(&self, key: &str, value: &str) -> Result<(), DataError> {
        let (primary, _) = self.replicas(key);
        self.node(&primary).write(None, Mutation::put(key, value)).await.map(drop)
    }

    async fn get_at(&self, address: &str, key: &str) -> Result<Option<String>, DataError> {
        self.node(address).get(key).await
    }

    async fn sleep(&self, duration: Duration) {
        self.clock.sleep(duration).await;
    }
}

/// The value of `key` in server `i`'s engine.
async fn storage_value(cluster: &Cluster, i: usize, key: &str) -> Option<String> {
    kv_core::Storage::get(cluster.storages[i].as_ref(), key).await.expect("an engine read")
}

fn strong(factor: usize) -> Replication {
    Replication { factor, consistency: Consistency::Strong, ..Replication::default() }
}

/// A strong write whose secondary does not answer fails, retryably, and is applied nowhere:
/// not at the primary, and not at the secondaries that prepared it (they drop it once a later
/// write of the key names it aborted).
#[tokio::test(start_paused = true)]
async fn a_strong_write_with_a_secondary_that_does_not_answer_is_applied_nowhere() {
    let cluster = Cluster::start(3, strong(3)).await;
    cluster.put("k", "before").await.expect("a healthy write");
    let (primary, secondaries) = cluster.replicas("k");
    let silent = &secondaries[1];

    cluster.network.cut(&primary, silent);
    let started = cluster.clock.now();
    let err = cluster.put("k", "lost").await.expect_err("a write its secondary never confirmed");
    assert!(err.is_retryable(), "{err}");
    let took = cluster.clock.now() - started;
    assert!(took <= Duration::from_secs(3), "the write gave up after {took:?}");

    cluster.network.heal();
    cluster.sleep(Duration::from_millis(300)).await;
    for replica in [&primary, &secondaries[0], silent] {
        assert_eq!(cluster.get_at(replica, "k").await.unwrap().as_deref(), Some("before"), "at {replica}");
    }
    cluster.put("k", "after").await.expect("a write once healed");
    cluster.sleep(Duration::from_millis(300)).await;
    for replica in [&primary, &secondaries[0], silent] {
        assert_eq!(cluster.get_at(replica, "k").await.unwrap().as_deref(), Some("after"), "at {replica}");
    }
}

/// A lease runs out: a secondary cut off from its primary stops serving strong reads, and the
/// primary stops taking writes, within a lease, and both serve again once the link heals.
#[tokio::test(start_paused = true)]
async fn a_lease_that_runs_out_stops_reads_at_the_secondary_and_writes_at_the_primary() {
    let cluster = Cluster::start(3, strong(3)).await;
    cluster.put("k", "v").await.expect("a healthy write");
    let (primary, secondaries) = cluster.replicas("k");
    let secondary = &secondaries[0];
    assert_eq!(cluster.get_at(secondary, "k").await.unwrap().as_deref(), Some("v"));

    cluster.network.cut(&primary, secondary);
    cluster.network.cut(secondary, &primary);
    // Leases last 500 ms, counted at 90% from the request: by then both have run out.
    cluster.sleep(Duration::from_millis(600)).await;
    let read = cluster.get_at(secondary, "k").await.expect_err("no lease from the primary");
    assert!(matches!(read, DataError::Replication(_)), "{read}");
    let write = cluster.put("k", "w").await.expect_err("no lease from a secondary");
    assert!(matches!(write, DataError::Replication(ref m) if m.contains("holds no lease")), "{write}");

    cluster.network.heal();
    cluster.sleep(Duration::from_millis(300)).await;
    cluster.put("k", "w").await.expect("leases renewed");
    assert_eq!(cluster.get_at(secondary, "k").await.unwrap().as_deref(), Some("w"));
}

/// An install fences a slot: after a failover, the new primary of a slot takes no write before
/// the lease it promised the failed primary has run out, and by then the failed primary, cut
/// off, has stopped serving it.
#[tokio::test(start_paused = true)]
async fn an_install_fences_a_promoted_slot_until_the_old_primary_has_stopped() {
    let cluster = Cluster::start(4, strong(3)).await;
    cluster.put("k", "v").await.expect("a healthy write");
    let (old, _) = cluster.replicas("k");

    cluster.network.isolate(&old);
    let cut_off = cluster.clock.now();
    let config = cluster.master.fail(&old).await.expect("failover");
    let (heir, _) = cluster.replicas("k");
    assert_ne!(heir, old);
    assert_eq!(role(&config, &heir, slot_of("k")), Role::Primary);

    cluster.put("k", "w").await.expect("a write at the new primary");
    let written = cluster.clock.now() - cut_off;
    // Renewals come every 100 ms, each promising 500 ms: the last promise before the cut ends
    // between 400 and 500 ms after it.
    assert!(written >= Duration::from_millis(400), "written {written:?} after the cut, inside the fence");
    assert!(written <= Duration::from_millis(700), "written {written:?} after the cut");
    let stale = cluster.get_at(&old, "k").await.expect_err("the old primary has no lease left");
    assert!(matches!(stale, DataError::Replication(_)), "{stale}");
}

/// A failover plan executed: the shard master's failure detector fails a dead server over to
/// up-to-date secondaries, and no acknowledged write is lost.
#[tokio::test(start_paused = true)]
async fn a_dead_primary_is_failed_over_and_no_acknowledged_write_is_lost() {
    let cluster = Cluster::start(4, strong(3)).await;
    let keys: Vec<String> = (0..64).map(|i| format!("key-{i}")).collect();
    for key in &keys {
        cluster.put(key, &format!("{key}=1")).await.expect("a healthy write");
    }
    let (dead, _) = cluster.replicas(&keys[0]);
    let epoch = cluster.config().epoch();
    let master = cluster.master.clone();
    let watcher = tokio::spawn(async move { master.watch().await });

    cluster.network.detach(&dead);
    let died = cluster.clock.now();
    while cluster.config().id_of(&dead).is_some() {
        cluster.sleep(Duration::from_millis(50)).await;
    }
    let detected = cluster.clock.now() - died;
    assert!(detected <= Duration::from_millis(1200), "failed over after {detected:?}");
    assert_eq!(cluster.config().epoch(), epoch + 1);
    watcher.abort();

    cluster.sleep(Duration::from_millis(600)).await;
    for key in &keys {
        let (primary, secondaries) = cluster.replicas(key);
        assert_ne!(primary, dead);
        let expected = format!("{key}=1");
        assert_eq!(
            cluster.get_at(&primary, key).await.unwrap(),
            Some(expected.clone()),
            "{key} at {primary}"
        );
        let newer = format!("{key}=2");
        cluster.put(key, &newer).await.expect("writes go on");
        for secondary in &secondaries {
            // A ready copy answers the latest write; one still catching up refuses.
            match cluster.get_at(secondary, key).await {
                Ok(value) => assert_eq!(value.as_ref(), Some(&newer), "{key} at {secondary}"),
                Err(err) => {
                    assert!(matches!(err, DataError::WrongShard { .. }), "{key} at {secondary}: {err}")
                }
            }
        }
    }
}

/// Eventual mode with a synchronous secondary: a write applied at the primary that did not reach
/// its synchronous secondary fails, and the client retries it. The retry is answered from the
/// primary's exactly-once record, but only once the synchronous secondary holds the write: that
/// secondary is the one a failover promotes, and the acknowledgement must hold there.
#[tokio::test(start_paused = true)]
async fn a_retry_answered_from_memory_first_reaches_the_synchronous_secondary() {
    let replication = Replication {
        factor: 3,
        consistency: Consistency::Eventual,
        sync_replicas: 1,
        ..Replication::default()
    };
    let cluster = Cluster::start(3, replication).await;
    cluster.put("k", "a;").await.expect("a healthy write");
    let (primary, secondaries) = cluster.replicas("k");
    let synchronous = &secondaries[0];
    let id = kv_core::RequestId { client: 7, seq: 1, first_unanswered: 1 };

    cluster.network.cut(&primary, synchronous);
    let first = cluster.node(&primary).write(Some(id), Mutation::append("k", "b;")).await;
    let err = first.expect_err("its synchronous secondary is cut off");
    assert!(err.is_retryable(), "{err}");
    cluster.network.heal();
    cluster.node(&primary).write(Some(id), Mutation::append("k", "b;")).await.expect("the retry");
    assert_eq!(
        cluster.get_at(synchronous, "k").await.unwrap().as_deref(),
        Some("a;b;"),
        "acknowledged, so held by the synchronous secondary"
    );
    assert_eq!(cluster.get_at(&primary, "k").await.unwrap().as_deref(), Some("a;b;"), "applied once");
}

/// Strong mode, the aborted-writes list: a write prepared at the first secondary but not at the
/// second is aborted at the primary; a later write of the key commits, and its commit notice
/// has not reached the first secondary when the primary dies. The first secondary, promoted,
/// commits what it holds prepared: had it kept the aborted write (with its exactly-once record),
/// the client's retry would be answered "done" while the value, computed by the later write
/// without it, lacks it. The later write's prepare named it aborted, so it was dropped, and the
/// retry applies it.
#[tokio::test(start_paused = true)]
async fn an_aborted_write_is_not_committed_by_a_takeover() {
    let cluster = Cluster::start(3, strong(3)).await;
    cluster.put("k", "a;").await.expect("a healthy write");
    let (primary, secondaries) = cluster.replicas("k");
    let (first, second) = (&secondaries[0], &secondaries[1]);
    let id = kv_core::RequestId { client: 7, seq: 1, first_unanswered: 1 };

    cluster.network.cut(&primary, second);
    let aborted = cluster.node(&primary).write(Some(id), Mutation::append("k", "b;")).await;
    assert!(aborted.expect_err("the second secondary does not answer").is_retryable());
    cluster.network.heal();
    cluster.node(&primary).write(None, Mutation::append("k", "c;")).await.expect("a later write");
    // Its commit notice goes out in the background: cut before it leaves, then the primary dies.
    cluster.network.cut(&primary, first);
    cluster.network.detach(&primary);
    let config = cluster.master.fail(&primary).await.expect("the failover");
    assert_eq!(primary_of(&config, "k"), Some(first.as_str()), "the first secondary takes over");

    cluster.node(first).write(Some(id), Mutation::append("k", "b;")).await.expect("the retry");
    let value = cluster.get_at(first, "k").await.unwrap().unwrap_or_default();
    assert!(value.contains("b;"), "an acknowledged append is in the value: {value:?}");
    assert_eq!(value.matches("b;").count(), 1, "once: {value:?}");
}

/// A member failed over while it was down, restarted over the data it kept, joins again as a
/// new member: its new copies start from what it kept, and are sent only the buckets that
/// differ from their primaries' (the keys written while it was down, a key deleted meanwhile
/// included), not the whole of their data; and they end up equal to their primaries'.
#[tokio::test(start_paused = true)]
async fn a_member_back_from_a_failover_is_sent_only_what_changed_while_it_was_down() {
    let mut cluster = Cluster::start(3, strong(3)).await;
    let keys: Vec<String> = (0..600).map(|i| format!("key-{i}")).collect();
    for key in &keys {
        cluster.put(key, "before").await.expect("a healthy write");
    }
    cluster.sleep(Duration::from_millis(300)).await;
    let down = cluster.nodes[2].0.clone();
    let storage = Arc::clone(&cluster.storages[2]);
    cluster.network.detach(&down);
    cluster.master.fail(&down).await.expect("failover");
    cluster.sleep(Duration::from_millis(600)).await;
    // While it is down: some keys rewritten, some deleted, one added.
    for key in keys.iter().step_by(20) {
        cluster.put(key, "while down").await.expect("a write after the failover");
    }
    for key in keys.iter().skip(7).step_by(50) {
        let (primary, _) = cluster.replicas(key);
        cluster.node(&primary).write(None, Mutation::delete(key.clone())).await.expect("a delete");
    }
    cluster.put("new-key", "while down").await.expect("a new key");

    let before: u64 = cluster.catch_up_keys().await;
    cluster.restart(2, storage).await;
    cluster.master.join(&down).await.expect("joins again");
    let deadline = cluster.clock.now() + Duration::from_secs(20);
    while !cluster.node(&down).status().await.unwrap().unready.is_empty() {
        assert!(cluster.clock.now() < deadline, "its copies never caught up");
        cluster.sleep(Duration::from_millis(100)).await;
    }
    let sent = cluster.catch_up_keys().await - before;
    let config = cluster.config();
    let held: usize = keys.iter().filter(|key| role(&config, &down, slot_of(key)) == Role::Secondary).count();
    assert!(held > 300, "it is a secondary of {held} of the keys");
    assert!(sent > 0 && sent * 4 < held as u64, "{sent} keys sent to copies of {held}");
    for key in keys.iter().chain([&"new-key".to_owned()]) {
        if role(&config, &down, slot_of(key)) != Role::Secondary {
            continue;
        }
        let (primary, _) = cluster.replicas(key);
        let expected = cluster.get_at(&primary, key).await.unwrap();
        assert_eq!(storage_value(&cluster, 2, key).await, expected, "{key} at the copy");
    }
}
