//! Resharding between storage servers, seen from the wire: wrong-shard answers that name the
//! owner, exactly-once records that move with their keys, and transfers from outside refused.
//! Servers and shard master run in this process.

#![allow(clippy::unwrap_used)]

use kv_core::Error;
use kv_proto::status::error_from_status;
use kv_proto::v1::key_value_client::KeyValueClient;
use kv_proto::v1::node_client::NodeClient;
use kv_proto::v1::shard_master_client::ShardMasterClient;
use kv_proto::{compat, v1};
use kv_shard::Config;
use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::Channel;

/// Servers in this process on `127.0.0.1:0`, stopped when dropped.
struct Servers {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Servers {
    async fn storage(&mut self) -> String {
        self.storage_with(None).await
    }

    async fn storage_with(&mut self, cluster_token: Option<&str>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cluster_token = cluster_token.map(str::to_owned);
        self.tasks.push(tokio::spawn(async move {
            let config = kv_server::StorageConfig { cluster_token, ..Default::default() };
            kv_server::run_storage(listener, config, std::future::pending()).await.unwrap();
        }));
        addr
    }

    async fn shardmaster(&mut self) -> String {
        self.shardmaster_with(None).await
    }

    async fn shardmaster_with(&mut self, cluster_token: Option<&str>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cluster_token = cluster_token.map(str::to_owned);
        self.tasks.push(tokio::spawn(async move {
            let config = kv_server::ShardMasterConfig { cluster_token, ..Default::default() };
            kv_server::run_shardmaster(listener, config, std::future::pending()).await.unwrap();
        }));
        addr
    }
}

async fn channel(addr: &str) -> Channel {
    for _ in 0..100 {
        if let Ok(channel) = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await {
            return channel;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{addr} does not answer");
}

fn id(seq: u64) -> Option<v1::RequestId> {
    Some(v1::RequestId { client: 9, seq, first_unanswered: 1 })
}

async fn get(kv: &KeyValueClient<Channel>, key: &str) -> Result<Option<String>, tonic::Status> {
    Ok(kv.clone().get(v1::GetRequest { key: key.into() }).await?.into_inner().value)
}

async fn append(kv: &KeyValueClient<Channel>, key: &str, value: &str, seq: u64) -> Result<(), tonic::Status> {
    let request = v1::AppendRequest { key: key.into(), value: value.into(), id: id(seq) };
    kv.clone().append(request).await.map(drop)
}

/// A key that moves from `a` to `b` when `b` joins a cluster of `a`.
fn key_moving_to(a: &str, b: &str) -> String {
    let config = Config::new().join(a).unwrap().join(b).unwrap();
    (0..).map(|i| format!("key{i}")).find(|k| config.owner(k).unwrap().1 == b).unwrap()
}

#[tokio::test]
async fn answers_move_with_their_keys_and_the_old_owner_points_at_the_new() {
    let mut servers = Servers { tasks: Vec::new() };
    let master_addr = servers.shardmaster().await;
    let (a_addr, b_addr) = (servers.storage().await, servers.storage().await);
    let master = ShardMasterClient::new(channel(&master_addr).await);
    let a = KeyValueClient::new(channel(&a_addr).await);
    let b = KeyValueClient::new(channel(&b_addr).await);
    master.clone().join(v1::JoinRequest { server: a_addr.clone() }).await.unwrap();
    let key = key_moving_to(&a_addr, &b_addr);

    // Before B is a member, B is standalone; A serves everything.
    append(&a, &key, "x", 1).await.unwrap();
    master.clone().join(v1::JoinRequest { server: b_addr.clone() }).await.unwrap();

    let refused = get(&a, &key).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    match error_from_status(&refused) {
        Some(Error::WrongShard { epoch: 2, owner: Some(owner), .. }) => assert_eq!(owner, b_addr),
        other => panic!("expected a wrong-shard answer naming {b_addr}, got {other:?}"),
    }
    let refused = append(&a, &key, "!", 5).await.unwrap_err();
    assert!(matches!(error_from_status(&refused), Some(Error::WrongShard { .. })), "writes are refused too");

    // The retry of the append that A applied is answered from the record that moved to B.
    append(&b, &key, "x", 1).await.unwrap();
    assert_eq!(get(&b, &key).await.unwrap().as_deref(), Some("x"), "the retry was applied twice");
    append(&b, &key, "y", 2).await.unwrap();
    assert_eq!(get(&b, &key).await.unwrap().as_deref(), Some("xy"));

    // And back again when B leaves.
    master.clone().leave(v1::LeaveRequest { server: b_addr.clone() }).await.unwrap();
    append(&a, &key, "y", 2).await.unwrap();
    assert_eq!(get(&a, &key).await.unwrap().as_deref(), Some("xy"));
    assert!(matches!(error_from_status(&get(&b, &key).await.unwrap_err()), Some(Error::WrongShard { .. })));
    let status = NodeClient::new(channel(&b_addr).await).status(v1::StatusRequest {}).await.unwrap();
    assert_eq!(status.get_ref().keys, 0, "the leaver dropped what it handed off");

    // The compatibility API serves the same slots.
    let compat_key =
        (0u32..).find(|k| Config::new().join(&a_addr).unwrap().owner(&k.to_string()).is_some()).unwrap();
    let mut compat_b = compat::kv_store_client::KvStoreClient::new(channel(&b_addr).await);
    let refused = compat_b.get(compat::GetRequest { key: compat_key }).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
}

#[tokio::test]
async fn transfers_and_installs_from_outside_are_refused_and_change_nothing() {
    let mut servers = Servers { tasks: Vec::new() };
    let master_addr = servers.shardmaster().await;
    let (a_addr, b_addr) = (servers.storage().await, servers.storage().await);
    let master = ShardMasterClient::new(channel(&master_addr).await);
    master.clone().join(v1::JoinRequest { server: a_addr.clone() }).await.unwrap();
    master.clone().join(v1::JoinRequest { server: b_addr.clone() }).await.unwrap();
    let key = key_moving_to(&a_addr, &b_addr);
    let b = KeyValueClient::new(channel(&b_addr).await);
    append(&b, &key, "real", 1).await.unwrap();

    let mut node_b = NodeClient::new(channel(&b_addr).await);
    let forged = v1::TransferRequest {
        epoch: 2,
        from: "127.0.0.1:1".into(),
        entries: vec![v1::Entry { key: key.clone(), value: "forged".into() }],
        sessions: Vec::new(),
        complete: Vec::new(),
    };
    let refused = node_b.transfer(forged.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let late = v1::TransferRequest { from: a_addr.clone(), ..forged.clone() };
    node_b.transfer(late).await.unwrap(); // a late resend from the real sender: acknowledged, ignored
    let stale = v1::TransferRequest { epoch: 1, from: a_addr.clone(), ..forged.clone() };
    assert_eq!(node_b.transfer(stale).await.unwrap_err().code(), Code::FailedPrecondition);
    let bad_slot = v1::TransferRequest { complete: vec![5000], ..forged };
    assert_eq!(node_b.transfer(bad_slot).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(get(&b, &key).await.unwrap().as_deref(), Some("real"), "nothing was overwritten");

    let garbage = v1::InstallRequest::default();
    assert_eq!(node_b.install(garbage).await.unwrap_err().code(), Code::InvalidArgument);
    let status = node_b.status(v1::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!((status.epoch, status.keys, status.incoming_slots), (2, 1, 0));
}

/// With a cluster token, installs and transfers from callers without it are refused, and the
/// cluster's own members, which carry it, move data as usual.
#[tokio::test]
async fn a_cluster_token_keeps_outsiders_out() {
    let mut servers = Servers { tasks: Vec::new() };
    let master_addr = servers.shardmaster_with(Some("s3cret")).await;
    let a_addr = servers.storage_with(Some("s3cret")).await;
    let b_addr = servers.storage_with(Some("s3cret")).await;
    let master = ShardMasterClient::new(channel(&master_addr).await);
    master.clone().join(v1::JoinRequest { server: a_addr.clone() }).await.unwrap();
    let key = key_moving_to(&a_addr, &b_addr);
    let a = KeyValueClient::new(channel(&a_addr).await);
    append(&a, &key, "x", 1).await.unwrap();
    master.clone().join(v1::JoinRequest { server: b_addr.clone() }).await.unwrap();
    let b = KeyValueClient::new(channel(&b_addr).await);
    assert_eq!(get(&b, &key).await.unwrap().as_deref(), Some("x"), "members move data with the token");

    let mut node_b = NodeClient::new(channel(&b_addr).await);
    let forged = v1::TransferRequest {
        epoch: 2,
        from: a_addr.clone(),
        entries: vec![v1::Entry { key: key.clone(), value: "forged".into() }],
        sessions: Vec::new(),
        complete: Vec::new(),
    };
    assert_eq!(node_b.transfer(forged.clone()).await.unwrap_err().code(), Code::PermissionDenied);
    let mut wrong = tonic::Request::new(forged);
    wrong.metadata_mut().insert("x-kv-cluster-token", "guess".parse().unwrap());
    assert_eq!(node_b.transfer(wrong).await.unwrap_err().code(), Code::PermissionDenied);
    let install = v1::InstallRequest::default();
    assert_eq!(node_b.install(install).await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(get(&b, &key).await.unwrap().as_deref(), Some("x"), "nothing changed");
    let status = node_b.status(v1::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!((status.epoch, status.keys), (2, 1), "status stays readable");
}
