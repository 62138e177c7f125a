//! Channels to other servers of the cluster, dialled lazily and kept.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kv_proto::v1::node_client::NodeClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

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

/// Whether a peer's answer means "try again later": it is unreachable, or not ready yet.
pub(crate) fn retryable(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded | Code::Unknown)
}

/// Runs `call` until it succeeds, fails for good, or `deadline` comes, retrying [`retryable`]
/// failures with a backoff of 20 ms doubling to 1 s. `call` gets the time one attempt may take:
/// what is left, capped at `attempt_cap`.
pub(crate) async fn retry_until<T, F, Fut>(
    deadline: Instant,
    attempt_cap: Duration,
    mut call: F,
) -> Result<T, Status>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut backoff = Duration::from_millis(20);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match call(remaining.clamp(Duration::from_millis(1), attempt_cap)).await {
            Err(status) if retryable(&status) && Instant::now() + backoff < deadline => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            result => return result,
        }
    }
}
