//! The client of one storage server.

use std::time::Duration;

use kv_proto::v1::{self, key_value_client::KeyValueClient};
use tonic::transport::{Channel, Endpoint};

use crate::{Error, Result};

/// A connection to one storage server. Clone it freely: clones share the connection, and
/// requests from all of them run concurrently over it.
#[derive(Debug, Clone)]
pub struct Client {
    kv: KeyValueClient<Channel>,
}

/// Options for a [`Client`], from [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    endpoint: String,
    timeout: Duration,
    connect_timeout: Duration,
}

impl ClientBuilder {
    /// The longest any one call may take before it fails with `DEADLINE_EXCEEDED`
    /// (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The longest connecting may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Connects, failing at once if the server cannot be reached.
    pub async fn connect(self) -> Result<Client> {
        let uri = if self.endpoint.contains("://") {
            self.endpoint.clone()
        } else {
            format!("http://{}", self.endpoint)
        };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|err| Error::InvalidEndpoint {
                endpoint: self.endpoint.clone(),
                reason: err.to_string(),
            })?
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| Error::Connect { endpoint: self.endpoint.clone(), source })?;
        // No client-side cap on responses (tonic's default is 4 MiB): the server enforces the
        // value limit, which may be set above that, and a value it accepted must be readable.
        Ok(Client { kv: KeyValueClient::new(channel).max_decoding_message_size(usize::MAX) })
    }
}

impl Client {
    /// Connects to the storage server at `endpoint` (`host:port`, or a `http://` URI) with the
    /// default options.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), kv_client::Error> {
    /// let client = kv_client::Client::connect("127.0.0.1:50051").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(endpoint: impl Into<String>) -> Result<Self> {
        Self::builder(endpoint).connect().await
    }

    /// Options for connecting to `endpoint`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), kv_client::Error> {
    /// use std::time::Duration;
    /// let client = kv_client::Client::builder("127.0.0.1:50051")
    ///     .timeout(Duration::from_secs(1))
    ///     .connect()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            endpoint: endpoint.into(),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// The value of `key`: `None` if the key is missing, `Some("")` if its value is empty.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn example(client: kv_client::Client) -> Result<(), kv_client::Error> {
    /// match client.get("user:7").await? {
    ///     Some(value) => println!("user:7 = {value}"),
    ///     None => println!("no user:7"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get(&self, key: impl Into<String>) -> Result<Option<String>> {
        let response = self.kv.clone().get(v1::GetRequest { key: key.into() }).await?;
        Ok(response.into_inner().value)
    }

    /// Sets `key` to `value`, creating the key.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn example(client: kv_client::Client) -> Result<(), kv_client::Error> {
    /// client.put("user:7", "ada").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn put(&self, key: impl Into<String>, value: impl Into<String>) -> Result<()> {
        self.kv.clone().put(v1::PutRequest { key: key.into(), value: value.into() }).await?;
        Ok(())
    }

    /// Appends `value` to the right end of `key`'s value, creating the key.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn example(client: kv_client::Client) -> Result<(), kv_client::Error> {
    /// client.put("log", "a").await?;
    /// client.append("log", "b").await?;
    /// assert_eq!(client.get("log").await?.as_deref(), Some("ab"));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn append(&self, key: impl Into<String>, value: impl Into<String>) -> Result<()> {
        self.kv.clone().append(v1::AppendRequest { key: key.into(), value: value.into() }).await?;
        Ok(())
    }

    /// Removes and returns the first character of `key`'s value: `Some("")` if the value is
    /// empty (the key stays), `None` if the key is missing (nothing is created).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn example(client: kv_client::Client) -> Result<(), kv_client::Error> {
    /// client.put("word", "été").await?;
    /// assert_eq!(client.lpop("word").await?.as_deref(), Some("é"));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn lpop(&self, key: impl Into<String>) -> Result<Option<String>> {
        let response = self.kv.clone().l_pop(v1::PopRequest { key: key.into() }).await?;
        Ok(response.into_inner().value)
    }

    /// Removes and returns the last character of `key`'s value; as [`Client::lpop`] otherwise.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn example(client: kv_client::Client) -> Result<(), kv_client::Error> {
    /// client.put("word", "ab").await?;
    /// assert_eq!(client.rpop("word").await?.as_deref(), Some("b"));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn rpop(&self, key: impl Into<String>) -> Result<Option<String>> {
        let response = self.kv.clone().r_pop(v1::PopRequest { key: key.into() }).await?;
        Ok(response.into_inner().value)
    }

    /// Removes `key`; returns whether it existed.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn example(client: kv_client::Client) -> Result<(), kv_client::Error> {
    /// let existed = client.delete("user:7").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn delete(&self, key: impl Into<String>) -> Result<bool> {
        let response = self.kv.clone().delete(v1::DeleteRequest { key: key.into() }).await?;
        Ok(response.into_inner().existed)
    }
}
