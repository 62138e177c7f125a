//! `kv-server shardmaster`: membership and placement over both APIs, against the real binary.

#![allow(clippy::unwrap_used)]

mod common;

use common::{ServerProcess, within};
use kv_proto::compat::shard_master_client::ShardMasterClient as CompatClient;
use kv_proto::convert::config_from_wire;
use kv_proto::v1::shard_master_client::ShardMasterClient;
use kv_proto::{compat, v1};
use kv_shard::{Config, slot_of};
use tonic::Code;
use tonic::transport::Channel;

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
        assert_eq!(current(&sm).await, Config::new());
        assert_eq!(query(&sm, "k").await.unwrap_err().code(), Code::Unavailable, "no member, no owner");

        // The master's configurations are the placement's, step by step.
        let mut expected = Config::new();
        for server in ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"] {
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
        }

        // Refused changes change nothing.
        assert_eq!(join(&sm, "127.0.0.1:7002").await.unwrap_err().code(), Code::AlreadyExists);
        assert_eq!(leave(&sm, "127.0.0.1:9999").await.unwrap_err().code(), Code::NotFound);
        assert_eq!(join(&sm, "not an address").await.unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(current(&sm).await, expected);

        expected = expected.leave("127.0.0.1:7001").unwrap();
        assert_eq!(leave(&sm, "127.0.0.1:7001").await.unwrap(), expected);
        expected = expected.leave("127.0.0.1:7002").unwrap().leave("127.0.0.1:7003").unwrap();
        leave(&sm, "127.0.0.1:7002").await.unwrap();
        assert_eq!(leave(&sm, "127.0.0.1:7003").await.unwrap(), expected);
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
        let q = |key: u32| compat::QueryRequest { key };
        assert_eq!(compat.query(q(42)).await.unwrap_err().code(), Code::Unavailable);
        for port in 7001..=7004 {
            compat.join(compat::JoinRequest { server: format!("127.0.0.1:{port}") }).await.unwrap();
        }
        assert_eq!(current(&sm).await.len(), 4, "joins through the compatibility API are members");
        for key in [0u32, 15, 42, 81, 100, u32::MAX] {
            let owner = compat.query(q(key)).await.unwrap().into_inner().server;
            assert_eq!(owner, query(&sm, &key.to_string()).await.unwrap().server, "key {key}");
        }
        let err = compat.join(compat::JoinRequest { server: "127.0.0.1:7001".into() }).await.unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
        compat.leave(compat::LeaveRequest { server: "127.0.0.1:7001".into() }).await.unwrap();
        assert!(current(&sm).await.id_of("127.0.0.1:7001").is_none());
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
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..16 {
            let sm = sm.clone();
            tasks.spawn(async move { join(&sm, &format!("10.0.0.{i}:7000")).await.map(|c| c.epoch()) });
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
            let sm = sm.clone();
            tasks.spawn(async move { join(&sm, "10.0.1.1:7000").await.is_ok() });
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
