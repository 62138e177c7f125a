//! Channels to other servers of the cluster, dialled lazily and kept.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kv_proto::v1::node_client::NodeClient;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

/// One lazily connected channel per peer address. A channel reconnects by itself after a
/// failure, so entries are kept for the life of the process (peers are few).
#[derive(Debug, Default)]
pub struct Peers {
    channels: Mutex<HashMap<String, Channel>>,
}

impl Peers {
    /// How long dialling a peer may take before the call fails as unavailable.
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

    /// No channel yet.
    pub fn new() -> Self {
        Self::default()
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
