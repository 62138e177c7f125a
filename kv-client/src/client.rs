//! The client of one storage server, or of a sharded cluster.
//!
//! Writes are exactly-once across retries: a client picks a random id, numbers its writes, and
//! sends a retry with the same number, so a server that applied the first attempt answers the
//! retry from memory (see `kv_core::session`), even if the key has moved to another server since
//! (the memory moves with the keys). Calls that fail with a retryable error are tried again with
//! exponential backoff and jitter, up to the configured number of attempts.
//!
//! Against a cluster, the client caches the shard master's configuration and sends each request
//! straight to the owner of its key's slot ([`crate::route`]). A *wrong shard* answer from a
//! server at least as recent as the cached map means the map is stale: the client refreshes it
//! and follows at once, without counting an attempt; a *moving* answer or a server behind the map
//! is waited for with backoff, within a time budget ([`ClientBuilder::move_wait`]); an
//! unreachable server is retried with backoff after a refresh.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kv_proto::v1::{self, key_value_client::KeyValueClient};
use rand::RngExt;
use tonic::transport::Channel;

use crate::channel::{dial, kv_client};
use crate::route::Route;
use crate::{Error, Result};

/// A connection to one storage server, or to a cluster. Clone it freely: clones share the
/// connections and the client's identity, and requests from all of them run concurrently.
#[derive(Debug, Clone)]
pub struct Client {
    route: Route,
    writes: Arc<WriteIds>,
    retry: Retry,
    read_from: ReadFrom,
}

/// What a [`ClientBuilder`] connects to.
#[derive(Debug, Clone)]
enum Target {
    Server(String),
    Cluster(String),
}

/// Options for a [`Client`], from [`Client::builder`] or [`Client::cluster_builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    target: Target,
    timeout: Duration,
    connect_timeout: Duration,
    retry: Retry,
    read_from: ReadFrom,
}

/// Where a cluster client sends reads. Writes always go to the key's primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadFrom {
    /// Any replica of the key's slot, chosen at random: spreads the reads. Under strong
    /// consistency every replica's answer is linearizable; under eventual consistency a
    /// secondary's may be stale.
    #[default]
    AnyReplica,
    /// The primary only: the latest value under either consistency, on one server per key.
    Primary,
}

/// A wrong-shard answer is followed at once, after refreshing the map, at most this many times
/// per call (then it counts as an attempt, with backoff).
const MAX_REDIRECTS: u32 = 8;

/// How calls that fail with a retryable error are tried again.
#[derive(Debug, Clone, Copy)]
struct Retry {
    /// Attempts in all, the first included.
    attempts: u32,
    /// How long a call may keep waiting for a slot that is moving (or a server catching up with
    /// the map), on top of its attempts.
    move_wait: Duration,
    /// Pause before the first retry; it doubles, up to `max_backoff`, with random jitter.
    backoff: Duration,
    max_backoff: Duration,
}

/// The client's identity for exactly-once writes, and the numbers of its writes in flight.
#[derive(Debug)]
struct WriteIds {
    client: u64,
    next: AtomicU64,
    in_flight: Mutex<BTreeSet<u64>>,
}

impl WriteIds {
    fn new() -> Self {
        // Nonzero: 0 means "no id" on the wire.
        let client = rand::random::<u64>().max(1);
        WriteIds { client, next: AtomicU64::new(1), in_flight: Mutex::new(BTreeSet::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Numbers a new write; it counts as in flight until the returned guard is dropped.
    fn start(&self) -> WriteGuard<'_> {
        // Numbered under the lock: a number taken but not yet in flight would let a concurrent
        // write report a `first_unanswered` above it, and the server would refuse it as stale.
        let mut in_flight = self.lock();
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        in_flight.insert(seq);
        WriteGuard { ids: self, seq }
    }
}

/// A write in flight; dropping it tells the server, with the next write, that its answer is in.
struct WriteGuard<'a> {
    ids: &'a WriteIds,
    seq: u64,
}

impl WriteGuard<'_> {
    /// The id to send with this write (or its retry) now.
    fn id(&self) -> Option<v1::RequestId> {
        let first_unanswered = self.ids.lock().first().copied().unwrap_or(self.seq);
        Some(v1::RequestId { client: self.ids.client, seq: self.seq, first_unanswered })
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.ids.lock().remove(&self.seq);
    }
}

impl ClientBuilder {
    /// How many times a call is tried in all before a retryable error is returned (default 4
    /// for one server, 10 for a cluster, where a key's slot may be moving; 1 turns retries off).
    /// Writes are retried exactly-once.
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.retry.attempts = attempts.max(1);
        self
    }

    /// How long a call against a cluster may keep waiting, with backoff, for a slot that is
    /// moving or a server that has not caught up with the map (default 30 s), without using up
    /// its attempts: a large move takes a while. `Duration::ZERO` makes such answers count as
    /// attempts like any other retryable error.
    pub fn move_wait(mut self, wait: Duration) -> Self {
        self.retry.move_wait = wait;
        self
    }

    /// The pause before the first retry (default 20 ms); it doubles at each retry, up to 1 s,
    /// with random jitter.
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.retry.backoff = backoff;
        self
    }

    /// The longest one attempt of a call may take (default 10 s); tonic reports a timeout as
    /// `CANCELLED`. A call takes at most about `attempts` times this, plus the backoff: keep that
    /// well under the server's session expiry (10 minutes), past which a retry of a write that
    /// landed could land again.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The longest connecting may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Where a cluster client sends reads (default: any replica). A read that a secondary
    /// cannot serve (it is catching up, or unreachable) goes to the primary.
    pub fn read_from(mut self, read_from: ReadFrom) -> Self {
        self.read_from = read_from;
        self
    }

    /// Connects, failing at once if the server (or, for a cluster, the shard master) cannot be
    /// reached. A cluster client reads the configuration here, and connects to storage servers
    /// when it first needs them.
    pub async fn connect(self) -> Result<Client> {
        let route = match &self.target {
            Target::Server(endpoint) => {
                let channel = dial(endpoint, self.timeout, self.connect_timeout).await?;
                Route::Server(kv_client(channel))
            }
            Target::Cluster(shardmaster) => {
                Route::cluster(shardmaster, self.timeout, self.connect_timeout).await?
            }
        };
        Ok(Client { route, writes: Arc::new(WriteIds::new()), retry: self.retry, read_from: self.read_from })
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
            target: Target::Server(endpoint.into()),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            retry: Retry {
                attempts: 4,
                move_wait: Duration::from_secs(30),
                backoff: Duration::from_millis(20),
                max_backoff: Duration::from_secs(1),
            },
            read_from: ReadFrom::default(),
        }
    }

    /// Connects to the cluster of the shard master at `shardmaster` with the default options:
    /// requests go straight to the server that owns their key.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), kv_client::Error> {
    /// let client = kv_client::Client::connect_cluster("127.0.0.1:50050").await?;
    /// client.put("user:7", "ada").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect_cluster(shardmaster: impl Into<String>) -> Result<Self> {
        Self::cluster_builder(shardmaster).connect().await
    }

    /// Options for connecting to the cluster of the shard master at `shardmaster`.
    pub fn cluster_builder(shardmaster: impl Into<String>) -> ClientBuilder {
        let mut builder = Self::builder(String::new());
        builder.target = Target::Cluster(shardmaster.into());
        builder.retry.attempts = 10;
        builder
    }

    /// This client's id for exactly-once writes (shared by its clones).
    pub fn id(&self) -> u64 {
        self.writes.client
    }

    /// Runs `call` against the server that owns `key` (for a `read`, maybe one of its
    /// secondaries) until it succeeds, fails for good, or runs out of attempts.
    async fn call<T, F, Fut>(&self, key: &str, read: bool, mut call: F) -> Result<T>
    where
        F: FnMut(KeyValueClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut backoff = self.retry.backoff;
        let mut attempt = 1;
        let mut redirects = 0;
        let mut unknown_before = false;
        let mut any_replica = read && self.read_from == ReadFrom::AnyReplica;
        let started = tokio::time::Instant::now();
        loop {
            let (server, epoch, secondary) = self.route.server_for(key, any_replica);
            let result = match server {
                Ok(server) => call(server).await,
                Err(err) => Err(err),
            };
            let err = match result {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            // A secondary that cannot serve the read: ask the primary, once, at once.
            if secondary && err.is_retryable() {
                any_replica = false;
                continue;
            }
            if let Route::Cluster(cluster) = &self.route {
                match &err {
                    // The map is stale: refresh it and follow at once.
                    Error::Rejected(kv_core::Error::WrongShard { epoch: at, .. })
                        if *at >= epoch && redirects < MAX_REDIRECTS =>
                    {
                        redirects += 1;
                        cluster.refresh(epoch).await;
                        continue;
                    }
                    // The server is behind the map (it will catch up), or the slot is moving, or
                    // the redirects are used up (the shard master could not be reached, say):
                    // wait, within the move budget, without using up attempts; a map the server
                    // says is stale is fetched again after the wait.
                    Error::Rejected(kv_core::Error::WrongShard { .. } | kv_core::Error::Moving { .. })
                        if started.elapsed() + backoff < self.retry.move_wait =>
                    {
                        let jitter = rand::rng().random_range(0.5..1.5);
                        tokio::time::sleep(backoff.mul_f64(jitter)).await;
                        backoff = (backoff * 2).min(self.retry.max_backoff);
                        if let Error::Rejected(kv_core::Error::WrongShard { epoch: at, .. }) = &err
                            && *at >= epoch
                        {
                            cluster.refresh(epoch).await;
                        }
                        continue;
                    }
                    Error::Rejected(kv_core::Error::WrongShard { .. } | kv_core::Error::Moving { .. }) => {}
                    // Unreachable, or no owner: the map may be stale too.
                    err if err.is_retryable() => cluster.refresh(epoch).await,
                    _ => {}
                }
            }
            if err.is_retryable() && attempt < self.retry.attempts {
                unknown_before |= !err.is_definite();
                let jitter = rand::rng().random_range(0.5..1.5);
                tokio::time::sleep(backoff.mul_f64(jitter)).await;
                backoff = (backoff * 2).min(self.retry.max_backoff);
                attempt += 1;
                continue;
            }
            // A definite last answer does not undo an earlier attempt that may have landed.
            if unknown_before && err.is_definite() {
                return Err(Error::AfterUnknown(Box::new(err)));
            }
            return Err(err);
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
        let key = key.into();
        self.call(&key, true, |mut kv| {
            let request = v1::GetRequest { key: key.clone() };
            async move { Ok(kv.get(request).await?.into_inner().value) }
        })
        .await
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
        let (key, value, write) = (key.into(), value.into(), self.writes.start());
        self.call(&key, false, |mut kv| {
            let request = v1::PutRequest { key: key.clone(), value: value.clone(), id: write.id() };
            async move { kv.put(request).await.map(drop).map_err(Error::from) }
        })
        .await
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
        let (key, value, write) = (key.into(), value.into(), self.writes.start());
        self.call(&key, false, |mut kv| {
            let request = v1::AppendRequest { key: key.clone(), value: value.clone(), id: write.id() };
            async move { kv.append(request).await.map(drop).map_err(Error::from) }
        })
        .await
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
        let (key, write) = (key.into(), self.writes.start());
        self.call(&key, false, |mut kv| {
            let request = v1::PopRequest { key: key.clone(), id: write.id() };
            async move { Ok(kv.l_pop(request).await?.into_inner().value) }
        })
        .await
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
        let (key, write) = (key.into(), self.writes.start());
        self.call(&key, false, |mut kv| {
            let request = v1::PopRequest { key: key.clone(), id: write.id() };
            async move { Ok(kv.r_pop(request).await?.into_inner().value) }
        })
        .await
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
        let (key, write) = (key.into(), self.writes.start());
        self.call(&key, false, |mut kv| {
            let request = v1::DeleteRequest { key: key.clone(), id: write.id() };
            async move { Ok(kv.delete(request).await?.into_inner().existed) }
        })
        .await
    }
}
