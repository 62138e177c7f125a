//! How a client reaches a server: the endpoint for an address, a channel to it, and the native
//! API over a channel. The client, its routes and the shard master client all open channels
//! here, and this module depends on none of them.

use std::time::Duration;

use kv_proto::v1::key_value_client::KeyValueClient;
use tonic::transport::{Channel, Endpoint};

use crate::{Error, Result};

/// The native API over `channel`. No client-side cap on responses (tonic's default is 4 MiB):
/// the server enforces the value limit, which may be set above that, and a value it accepted
/// must be readable.
pub(crate) fn kv_client(channel: Channel) -> KeyValueClient<Channel> {
    KeyValueClient::new(channel).max_decoding_message_size(usize::MAX)
}

/// The endpoint for `address` (`host:port`, or a `http://` URI).
pub(crate) fn endpoint(address: &str, timeout: Duration, connect_timeout: Duration) -> Result<Endpoint> {
    let uri = if address.contains("://") { address.to_owned() } else { format!("http://{address}") };
    Ok(Endpoint::from_shared(uri)
        .map_err(|err| Error::InvalidEndpoint { endpoint: address.to_owned(), reason: err.to_string() })?
        .timeout(timeout)
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true))
}

/// Opens a channel to `endpoint` (`host:port`, or a `http://` URI), failing at once if it
/// cannot be reached; calls on it fail after `timeout`.
pub(crate) async fn dial(address: &str, timeout: Duration, connect_timeout: Duration) -> Result<Channel> {
    endpoint(address, timeout, connect_timeout)?
        .connect()
        .await
        .map_err(|source| Error::Connect { endpoint: address.to_owned(), source })
}
