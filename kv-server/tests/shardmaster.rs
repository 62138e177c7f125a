//! `kv-server shardmaster`: membership and placement over both APIs, against the real binary.

#![allow(clippy::unwrap_used)]

mod common;

use common::{ServerProcess, within};
use kv_proto::compat::shard_master_client::ShardMasterClient as CompatClient;
use kv_proto::convert::config_from_wire;
use kv_proto::v1::shard_master_client::ShardMasterClient;
use kv_proto::{compat, v1};
use kv_shard::{Config, Replication, slot_of};
use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::Channel;

/// Storage servers in this process, on `127.0.0.1:0`, stopped when dropped.
struct StorageServers {
    addrs: Vec<String>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl StorageServers {
    async fn start(n: usize) -> Self {
        let (mut addrs, mut tasks) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(listener.local_addr().unwrap().to_string());
            let config = kv_server::StorageConfig::default();
            tasks.push(tokio::spawn(async move {
                kv_server::run_storage(listener, config, std::future::pending()).await.unwrap();
            }));
        }
        StorageServers { addrs, tasks }
    }

    fn addr(&self, i: usize) -> &str {
        &self.addrs[i]
    }
}

impl Drop for StorageServers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn clients(master: &ServerProcess) -> (ShardMasterClient<Channel>, CompatClient<Channel>) {
    let channel = master.unary_channel().await;
    (ShardMasterClient::new(channel.clone()), CompatClient::new(channel))
}

async fn join(c: &ShardMasterClient<Channel>, server: &str) -> Result<Config, tonic::Status> {
    let wire = c.clone().join(v1::JoinRequest { server: server.into() }).await?.into_inner();
    Ok(config_from_wire(&wire).unwrap())
}

async fn leave(c: &ShardMasterClient<Channel>, server: &str) -> Result<Config, tonic::Status> {
    let wire = c.clone().leave(v1::LeaveRequest { server: server.into() }).await?.into_inner();
    Ok(config_from_wire(&wire).unwrap())
}

async fn query(c: &ShardMasterClient<Channel>, key: &str) -> Result<v1::QueryResponse, tonic::Status> {
    Ok(c.clone().query(v1::QueryRequest { key: key.into() }).await?.into_inner())
}

async fn current(c: &ShardMasterClient<Channel>) -> Config {
    config_from_wire(&c.clone().get_config(v1::GetConfigRequest {}).await.unwrap().into_inner()).unwrap()
}

#[tokio::test]
async fn joins_leaves_and_queries_follow_the_placement() {
    let master = ServerProcess::start_shardmaster();
    within("membership", async {
        let (sm, _) = clients(&master).await;
        let servers = StorageServers::start(3).await;
        let (s1, s2, s3) = (servers.addr(0), servers.addr(1), servers.addr(2));
        // The binary's default: three strong copies of every slot.
        let empty =
            Config::new().with_replication(Replication { factor: 3, ..Replication::default() }).unwrap();
        assert_eq!(current(&sm).await, empty);
        assert_eq!(query(&sm, "k").await.unwrap_err().code(), Code::Unavailable, "no member, no owner");

        // The master's configurations are the placement's, step by step.
        let mut expected = empty;
        for server in [s1, s2, s3] {
            expected = expected.join(server).unwrap();
            assert_eq!(join(&sm, server).await.unwrap(), expected);
        }
        assert_eq!(current(&sm).await, expected);
        assert_eq!(expected.epoch(), 3);
        for key in ["a", "b", "user:7", "42", ""] {
            let answer = query(&sm, key).await.unwrap();
            assert_eq!(answer.server, expected.owner(key).unwrap().1, "{key:?}");
            assert_eq!(answer.epoch, 3);
            assert_eq!(answer.slot, u32::from(slot_of(key)));
            // Three members, three copies: the two others are the secondaries, in ring order.
            let secondaries: Vec<&str> = expected.replicas(key).into_iter().skip(1).map(|(_, a)| a).collect();
            assert_eq!(answer.secondaries, secondaries, "{key:?}");
            assert_eq!(answer.secondaries.len(), 2);
            assert!(!answer.secondaries.contains(&answer.server));
        }

        // Refused changes change nothing.
        assert_eq!(join(&sm, s2).await.unwrap_err().code(), Code::AlreadyExists);
        assert_eq!(leave(&sm, "127.0.0.1:9999").await.unwrap_err().code(), Code::NotFound);
        assert_eq!(join(&sm, "not an address").await.unwrap_err().code(), Code::InvalidArgument);
        let unreachable = join(&sm, "127.0.0.1:1").await.unwrap_err();
        assert_eq!(unreachable.code(), Code::Unavailable, "a server that does not answer cannot join");
        assert_eq!(current(&sm).await, expected);

        expected = expected.leave(s1).unwrap();
        assert_eq!(leave(&sm, s1).await.unwrap(), expected);
        expected = expected.leave(s2).unwrap().leave(s3).unwrap();
        leave(&sm, s2).await.unwrap();
        assert_eq!(leave(&sm, s3).await.unwrap(), expected);
        assert!(expected.is_empty());
        assert_eq!(query(&sm, "k").await.unwrap_err().code(), Code::Unavailable, "the last member left");
    })
    .await;
}

#[tokio::test]
async fn the_compatibility_service_shares_the_state_and_decimal_keys() {
    let master = ServerProcess::start_shardmaster();
    within("compat", async {
        let (sm, mut compat) = clients(&master).await;
        let servers = StorageServers::start(4).await;
        let q = |key: u32| compat::QueryRequest { key };
        assert_eq!(compat.query(q(42)).await.unwrap_err().code(), Code::Unavailable);
        for server in &servers.addrs {
            compat.join(compat::JoinRequest { server: server.clone() }).await.unwrap();
        }
        assert_eq!(current(&sm).await.len(), 4, "joins through the compatibility API are members");
        for key in [0u32, 15, 42, 81, 100, u32::MAX] {
            let owner = compat.query(q(key)).await.unwrap().into_inner().server;
            assert_eq!(owner, query(&sm, &key.to_string()).await.unwrap().server, "key {key}");
        }
        let err = compat.join(compat::JoinRequest { server: servers.addr(0).into() }).await.unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
        compat.leave(compat::LeaveRequest { server: servers.addr(0).into() }).await.unwrap();
        assert!(current(&sm).await.id_of(servers.addr(0)).is_none());
    })
    .await;
}

/// Concurrent changes are serialised: every join lands in its own epoch, and of many joins of
/// one server exactly one succeeds.
#[tokio::test]
async fn concurrent_changes_are_serialised() {
    let master = ServerProcess::start_shardmaster();
    within("concurrent joins", async {
        let (sm, _) = clients(&master).await;
        let servers = StorageServers::start(17).await;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..16 {
            let (sm, server) = (sm.clone(), servers.addr(i).to_owned());
            tasks.spawn(async move { join(&sm, &server).await.map(|c| c.epoch()) });
        }
        let mut epochs: Vec<u64> = Vec::new();
        while let Some(result) = tasks.join_next().await {
            epochs.push(result.unwrap().unwrap());
        }
        epochs.sort_unstable();
        assert_eq!(epochs, (1..=16).collect::<Vec<_>>(), "each change has its own epoch");
        let config = current(&sm).await;
        assert_eq!((config.epoch(), config.len()), (16, 16));
        let counts = config.slot_counts();
        assert!(counts.values().max().unwrap() - counts.values().min().unwrap() <= 1);

        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (sm, server) = (sm.clone(), servers.addr(16).to_owned());
            tasks.spawn(async move { join(&sm, &server).await.is_ok() });
        }
        let mut successes = 0;
        while let Some(ok) = tasks.join_next().await {
            successes += usize::from(ok.unwrap());
        }
        assert_eq!(successes, 1);
        assert_eq!(current(&sm).await.epoch(), 17);
    })
    .await;
}

/// A shard master with a data directory, killed and started again on it, goes on from the
/// cluster it had: same configuration, the next change numbered after it; one whose state file is
/// damaged refuses to start, rather than start a new cluster.
#[tokio::test]
async fn a_restarted_shard_master_goes_on_from_its_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("master");
    let flags = ["--data-dir", data_dir.to_str().unwrap(), "--replication-factor", "1"];
    let servers = StorageServers::start(3).await;
    let mut first = ServerProcess::start_shardmaster_with(&flags);
    let before = within("joins before the crash", async {
        let (sm, _) = clients(&first).await;
        join(&sm, servers.addr(0)).await.unwrap();
        join(&sm, servers.addr(1)).await.unwrap()
    })
    .await;
    assert_eq!(before.epoch(), 2);
    first.signal("KILL");
    first.wait_exit().await;

    let second = ServerProcess::start_shardmaster_with(&flags);
    within("the restarted shard master", async {
        let (sm, _) = clients(&second).await;
        assert_eq!(current(&sm).await, before, "the cluster it had, not an empty one");
        assert_eq!(join(&sm, servers.addr(1)).await.unwrap_err().code(), Code::AlreadyExists);
        let after = join(&sm, servers.addr(2)).await.unwrap();
        assert_eq!(after, before.join(servers.addr(2)).unwrap(), "the next epoch after the saved one");
    })
    .await;
    second.wait_for_log("shard master state loaded").await;
    drop(second);

    std::fs::write(data_dir.join("master-state.pb"), b"not a master state").unwrap();
    let mut damaged = ServerProcess::start_shardmaster_with(&flags);
    let status = damaged.wait_exit().await;
    assert!(!status.success(), "a damaged state must stop the shard master");
    let stderr = damaged.stderr();
    assert!(stderr.contains("master-state.pb") && stderr.contains("cannot start"), "{stderr}");
}

/// Durable by default: a shard master given no data directory keeps its state in
/// `kv-shardmaster-PORT` under its working directory, and says so at start-up; with port 0, which
/// would name another directory at every start, it refuses to start.
#[test]
fn a_shard_master_keeps_its_state_on_disk_by_default() {
    let cwd = tempfile::tempdir().unwrap();
    let refused = common::run_to_exit({
        let mut command = common::server_command();
        command.current_dir(cwd.path()).args(["shardmaster", "--listen", "127.0.0.1:0"]);
        command
    });
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--in-memory"), "{refused:?}");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut command = common::server_command();
    command.current_dir(cwd.path()).args(["shardmaster", "--listen", &format!("127.0.0.1:{port}")]);
    let (first, second) = common::first_two_lines(command);
    assert!(first.contains(&format!("listening on 127.0.0.1:{port}")), "{first:?}");
    let dir = format!("kv-shardmaster-{port}");
    assert!(second.contains(&dir), "{second:?}");
    assert!(cwd.path().join(&dir).is_dir(), "no {dir} under the working directory");
}
