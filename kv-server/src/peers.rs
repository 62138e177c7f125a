//! Channels to other servers of the cluster, dialled lazily and kept.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kv_proto::v1::node_client::NodeClient;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

/// One lazily connected channel per peer address. A channel reconnects by itself after a
/// failure, so entries are kept for the life of the process (peers are few). Requests made with
/// [`Peers::request`] carry the cluster's token, if it has one.
#[derive(Debug, Default)]
pub struct Peers {
    channels: Mutex<HashMap<String, Channel>>,
    token: Option<String>,
}

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

impl Peers {
    /// How long dialling a peer may take before the call fails as unavailable.
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

    /// No channel yet; requests carry `token` if given.
    pub fn new(token: Option<String>) -> Self {
        Peers { channels: Mutex::new(HashMap::new()), token }
    }

    /// A request for `message`, with the cluster token.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token
            && let Ok(value) = token.parse()
        {
            request.metadata_mut().insert(TOKEN_HEADER, value);
        }
        request
    }

    /// The channel to `address` (`host:port`).
    pub fn channel(&self, address: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|err| Status::invalid_argument(format!("bad peer address {address:?}: {err}")))?
            .connect_timeout(Self::CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }

    /// The `Node` service of `address`.
    pub fn node(&self, address: &str) -> Result<NodeClient<Channel>, Status> {
        Ok(NodeClient::new(self.channel(address)?).max_decoding_message_size(usize::MAX))
    }
}
