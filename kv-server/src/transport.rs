//! The protocols' calls over gRPC: one [`GrpcTransport`] implements the shard master's calls to
//! storage servers ([`ServerCalls`]) and the storage servers' calls to each other
//! ([`PeerCalls`]) over tonic clients, and [`GrpcMaster`] a storage server's calls to its shard
//! master ([`MasterCalls`]).
//!
//! Each call converts the domain message to the wire (`kv_proto::convert`), sets the timeout it
//! is given, carries the cluster token where the cluster has one, and maps a failed call back to
//! the protocol's error by its status (`kv_proto::status`): nothing else is decided here.
//!
//! Where a call goes: to the address the cluster knows the peer by, unless [`DialVia`] names a
//! stand-in for that address (the test harness's proxy on the link from this process to that
//! peer, so that it can cut one link alone). Empty outside tests: the protocol never sees it,
//! peers keep their names, only the socket dialled changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kv_proto::convert::{
    hand_off_copy_to_wire, install_report_from_wire, install_to_wire, lease_grant_from_wire,
    lease_request_to_wire, pong_from_wire, replicate_ack_from_wire, replicate_to_wire,
    server_status_from_wire, transfer_response_from_wire, transfer_to_wire,
};
use kv_proto::status::{replica_error_from_status, shard_error_from_status};
use kv_proto::v1::shard_master_client::ShardMasterClient;
use kv_proto::v1::{self, key_value_client::KeyValueClient, node_client::NodeClient};
use kv_replica::messages::{LeaseGrant, LeaseRequest, Replicate, ReplicateAck};
use kv_replica::transport::PeerCalls;
use kv_shard::Slot;
use kv_shard::messages::{HandOffCopy, Install, InstallReport, Pong, ServerStatus, TransferBatch};
use kv_shard::transport::{MasterCalls, ServerCalls};
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

/// The metadata key of the cluster token.
pub(crate) const TOKEN_HEADER: &str = "x-kv-cluster-token";

/// Whether `request` carries `token` (any request does, when the cluster has none).
pub(crate) fn authorised<T>(request: &tonic::Request<T>, token: Option<&str>) -> Result<(), Status> {
    let Some(token) = token else { return Ok(()) };
    match request.metadata().get(TOKEN_HEADER).and_then(|value| value.to_str().ok()) {
        Some(given) if given == token => Ok(()),
        _ => Err(Status::permission_denied(
            "only members of this cluster may call this (the cluster token is missing or wrong)",
        )),
    }
}

/// How long dialling a server may take before the call fails as unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A lazily connected channel to `address` (`host:port`).
fn dial(address: &str) -> Result<Channel, Status> {
    Ok(Endpoint::from_shared(format!("http://{address}"))
        .map_err(|err| Status::invalid_argument(format!("bad peer address {address:?}: {err}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .connect_lazy())
}

/// Stand-ins for peer addresses: a call to a peer known as `A` dials `B` instead, for each
/// `A=B` given (`--dial-via`, hidden: the harness's fault-injecting links).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DialVia(Arc<HashMap<String, String>>);

impl DialVia {
    /// Parses `A=B,C=D` (empty: no stand-in).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut map = HashMap::new();
        for pair in spec.split(',').map(str::trim).filter(|pair| !pair.is_empty()) {
            let (peer, via) = pair
                .split_once('=')
                .filter(|(peer, via)| !peer.is_empty() && !via.is_empty())
                .ok_or_else(|| format!("expected PEER=VIA, got {pair:?}"))?;
            map.insert(peer.trim().to_owned(), via.trim().to_owned());
        }
        Ok(DialVia(Arc::new(map)))
    }

    /// The address to dial to reach the peer known as `peer`.
    pub fn address<'a>(&'a self, peer: &'a str) -> &'a str {
        self.0.get(peer).map_or(peer, String::as_str)
    }
}

/// The calls of the shard master and of storage servers to storage servers, over one lazily
/// connected channel per address. A channel reconnects by itself after a failure, so entries are
/// kept for the life of the process (servers are few). Every call carries the cluster's token,
/// if it has one.
#[derive(Debug, Default)]
pub struct GrpcTransport {
    channels: Mutex<HashMap<String, Channel>>,
    token: Option<String>,
    dial_via: DialVia,
}

impl GrpcTransport {
    /// No channel yet; calls carry `token` if given.
    pub fn new(token: Option<String>) -> Self {
        GrpcTransport { channels: Mutex::new(HashMap::new()), token, dial_via: DialVia::default() }
    }

    /// Dials the stand-ins `dial_via` names instead of the peers' addresses.
    #[must_use]
    pub fn with_dial_via(mut self, dial_via: DialVia) -> Self {
        self.dial_via = dial_via;
        self
    }

    /// A request for `message`, with the cluster token and `timeout`.
    fn request<T>(&self, message: T, timeout: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token
            && let Ok(value) = token.parse()
        {
            request.metadata_mut().insert(TOKEN_HEADER, value);
        }
        request.set_timeout(timeout);
        request
    }

    /// The channel to the peer known as `address` (at its stand-in, if it has one), dialled on
    /// first use.
    fn channel(&self, address: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let channel = dial(self.dial_via.address(address))?;
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }

    /// The `Node` service of `address`.
    fn node(&self, address: &str) -> Result<NodeClient<Channel>, Status> {
        Ok(NodeClient::new(self.channel(address)?).max_decoding_message_size(usize::MAX))
    }
}

#[async_trait]
impl ServerCalls for GrpcTransport {
    async fn install(
        &self,
        server: &str,
        install: &Install,
        timeout: Duration,
    ) -> Result<InstallReport, kv_shard::Error> {
        let call = async {
            let request = self.request(install_to_wire(install), timeout);
            Ok::<_, Status>(install_report_from_wire(
                &self.node(server)?.install(request).await?.into_inner(),
            ))
        };
        call.await.map_err(|status| shard_error_from_status(&status))
    }

    async fn hand_off_copy(
        &self,
        server: &str,
        request: &HandOffCopy,
        timeout: Duration,
    ) -> Result<InstallReport, kv_shard::Error> {
        let call = async {
            let request = self.request(hand_off_copy_to_wire(request), timeout);
            let answer = self.node(server)?.hand_off_copy(request).await?.into_inner();
            Ok::<_, Status>(install_report_from_wire(&answer))
        };
        call.await.map_err(|status| shard_error_from_status(&status))
    }

    async fn status(&self, server: &str, timeout: Duration) -> Result<ServerStatus, kv_shard::Error> {
        let call = async {
            let request = self.request(v1::StatusRequest {}, timeout);
            Ok::<_, Status>(server_status_from_wire(&self.node(server)?.status(request).await?.into_inner()))
        };
        call.await.map_err(|status| shard_error_from_status(&status))
    }

    async fn ping(&self, server: &str, timeout: Duration) -> Result<Pong, kv_shard::Error> {
        let call = async {
            let request = self.request(v1::PingRequest {}, timeout);
            Ok::<_, Status>(pong_from_wire(&self.node(server)?.ping(request).await?.into_inner()))
        };
        call.await.map_err(|status| shard_error_from_status(&status))
    }
}

#[async_trait]
impl PeerCalls for GrpcTransport {
    async fn replicate(
        &self,
        to: &str,
        batch: &Replicate,
        timeout: Duration,
    ) -> Result<ReplicateAck, kv_replica::Error> {
        let call = async {
            let request = self.request(replicate_to_wire(batch), timeout);
            Ok::<_, Status>(replicate_ack_from_wire(&self.node(to)?.replicate(request).await?.into_inner()))
        };
        call.await.map_err(|status| replica_error_from_status(&status))
    }

    async fn lease(
        &self,
        to: &str,
        request: &LeaseRequest,
        timeout: Duration,
    ) -> Result<LeaseGrant, kv_replica::Error> {
        let call = async {
            let request = self.request(lease_request_to_wire(request), timeout);
            Ok::<_, Status>(lease_grant_from_wire(&self.node(to)?.lease(request).await?.into_inner()))
        };
        call.await.map_err(|status| replica_error_from_status(&status))
    }

    async fn read(
        &self,
        to: &str,
        key: &str,
        timeout: Duration,
    ) -> Result<Option<String>, kv_replica::Error> {
        let call = async {
            let mut client = KeyValueClient::new(self.channel(to)?);
            let request = self.request(v1::GetRequest { key: key.to_owned() }, timeout);
            Ok::<_, Status>(client.get(request).await?.into_inner().value)
        };
        call.await.map_err(|status| replica_error_from_status(&status))
    }

    async fn transfer(
        &self,
        to: &str,
        batch: &TransferBatch,
        timeout: Duration,
    ) -> Result<Vec<Slot>, kv_replica::Error> {
        let call = async {
            let request = self.request(transfer_to_wire(batch), timeout);
            let answer = self.node(to)?.transfer(request).await?.into_inner();
            Ok::<_, Status>(transfer_response_from_wire(&answer))
        };
        call.await.map_err(|status| replica_error_from_status(&status))
    }
}

/// A storage server's calls to its shard master at `address` (or its stand-in), each over a
/// channel dialled for it (joins and leaves are rare, and a shard master may have restarted in between).
#[derive(Debug, Clone)]
pub struct GrpcMaster {
    address: String,
    dial_via: DialVia,
}

impl GrpcMaster {
    /// Calls to the shard master at `address`.
    pub fn new(address: impl Into<String>) -> Self {
        GrpcMaster { address: address.into(), dial_via: DialVia::default() }
    }

    /// Dials the shard master's stand-in, if `dial_via` names one.
    #[must_use]
    pub fn with_dial_via(mut self, dial_via: DialVia) -> Self {
        self.dial_via = dial_via;
        self
    }

    async fn change(&self, server: &str, join: bool, timeout: Duration) -> Result<u64, kv_shard::Error> {
        let call = async {
            let mut master = ShardMasterClient::new(dial(self.dial_via.address(&self.address))?);
            let server = server.to_owned();
            let answer = if join {
                let mut request = tonic::Request::new(v1::JoinRequest { server });
                request.set_timeout(timeout);
                master.join(request).await?
            } else {
                let mut request = tonic::Request::new(v1::LeaveRequest { server });
                request.set_timeout(timeout);
                master.leave(request).await?
            };
            // Only the epoch is read: the server learns its configuration from its installs.
            Ok(answer.into_inner().epoch)
        };
        call.await.map_err(|status| shard_error_from_status(&status))
    }
}

#[async_trait]
impl MasterCalls for GrpcMaster {
    async fn join(&self, server: &str, timeout: Duration) -> Result<u64, kv_shard::Error> {
        self.change(server, true, timeout).await
    }

    async fn leave(&self, server: &str, timeout: Duration) -> Result<u64, kv_shard::Error> {
        self.change(server, false, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::DialVia;

    #[test]
    fn dial_via_rewrites_only_the_peers_it_names() {
        let via = DialVia::parse("127.0.0.1:1=127.0.0.1:9, 127.0.0.1:2=127.0.0.1:8").unwrap();
        assert_eq!(via.address("127.0.0.1:1"), "127.0.0.1:9");
        assert_eq!(via.address("127.0.0.1:2"), "127.0.0.1:8");
        assert_eq!(via.address("127.0.0.1:3"), "127.0.0.1:3");
        assert_eq!(DialVia::parse("").unwrap(), DialVia::default());
        assert!(DialVia::parse("127.0.0.1:1").is_err());
        assert!(DialVia::parse("=127.0.0.1:1").is_err());
    }
}
