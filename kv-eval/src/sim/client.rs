//! A cluster client over the simulated network, with the real client's behaviour
//! (`kv_client::Client`, cluster mode): a cached map refreshed from the shard master on a
//! redirect or an unreachable server, reads at any replica (falling back to the primary),
//! exactly-once ids on writes (a client id, a number per write, the lowest unanswered one), and
//! the same retry rules (10 attempts, backoff from 20 ms doubling to 1 s with jitter, a wait of
//! up to 30 s while a slot moves, up to 8 redirects). Its randomness comes from its seed.
//!
//! Every operation is recorded in the harness's history format, with the outcome the real
//! recorder gives it: ok, *fail* (known not to have happened) or *unknown*.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kv_core::{Mutation, Op, Output as DataOutput, RequestId};
use kv_shard::Config;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use super::net::{Endpoint, Failure, Handler, Service};
use crate::harness::history::{History, Input, Operation, Outcome, Output};

const ATTEMPTS: u32 = 10;
const MAX_REDIRECTS: u32 = 8;
const BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const MOVE_WAIT: Duration = Duration::from_secs(30);
/// A call's timeout: shorter than the real client's 10 s, so that runs end sooner; the
/// protocol's own timeouts are all shorter still.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Why one attempt failed.
#[derive(Debug, Clone)]
enum CallError {
    Net(Failure),
    Rejected(kv_core::Error),
    NoOwner,
}

impl CallError {
    fn is_retryable(&self) -> bool {
        match self {
            CallError::Net(_) | CallError::NoOwner => true,
            CallError::Rejected(err) => err.is_retryable(),
        }
    }

    /// Known not to have happened, as `kv_client::Error::is_definite` says.
    fn is_definite(&self) -> bool {
        match self {
            CallError::Net(Failure::Refused) => true,
            CallError::Net(Failure::NoAnswer) | CallError::NoOwner => false,
            CallError::Rejected(
                kv_core::Error::InProgress { .. }
                | kv_core::Error::StaleRetry { .. }
                | kv_core::Error::Replication(_),
            ) => false,
            CallError::Rejected(_) => true,
        }
    }
}

/// A write a storage server acknowledged: when (the simulation's time, as the server answered),
/// which server, at which epoch, and what it wrote.
#[derive(Debug, Clone)]
pub(crate) struct Ack {
    pub(crate) at: Duration,
    pub(crate) server: String,
    pub(crate) epoch: u64,
    pub(crate) key: String,
    /// The value of an append, or else `None`.
    pub(crate) appended: Option<String>,
}

/// The operations of a run, recorded.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    ops: Mutex<Vec<Operation>>,
    /// Every write a server acknowledged, in the order it did (a client may not hear of it).
    acks: Mutex<Vec<Ack>>,
    /// Writes a primary failed because it could not replicate them (it aborted them), with when
    /// and where: an aimed fault acts on them.
    failed_writes: Mutex<Vec<(Duration, String)>>,
}

impl Recorder {
    fn write_failed(&self, at: Duration, server: &str) {
        self.failed_writes.lock().unwrap_or_else(PoisonError::into_inner).push((at, server.to_owned()));
    }

    /// The first write a primary aborted at or after `since`: when, and the primary.
    pub(crate) fn first_failed_write(&self, since: Duration) -> Option<(Duration, String)> {
        let failed = self.failed_writes.lock().unwrap_or_else(PoisonError::into_inner);
        failed.iter().find(|(at, _)| *at >= since).cloned()
    }

    fn acknowledged(&self, ack: Ack) {
        self.acks.lock().unwrap_or_else(PoisonError::into_inner).push(ack);
    }

    /// Every write a server acknowledged so far.
    pub(crate) fn acks(&self) -> Vec<Ack> {
        self.acks.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn record(&self, op: Operation) {
        self.ops.lock().unwrap_or_else(PoisonError::into_inner).push(op);
    }

    /// Everything recorded so far.
    pub(crate) fn history(&self) -> History {
        History { ops: self.ops.lock().unwrap_or_else(PoisonError::into_inner).clone() }
    }
}

/// One client process: one operation at a time.
pub(crate) struct SimClient {
    endpoint: Endpoint,
    process: u64,
    id: u64,
    next_seq: u64,
    config: Arc<Config>,
    rng: Xoshiro256PlusPlus,
    recorder: Arc<Recorder>,
}

impl SimClient {
    /// A client at `endpoint`, recording as `process`, drawing from `seed`.
    pub(crate) fn new(endpoint: Endpoint, process: u64, seed: u64, recorder: Arc<Recorder>) -> Self {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let id = rng.random::<u64>().max(1);
        SimClient { endpoint, process, id, next_seq: 1, config: Arc::new(Config::new()), rng, recorder }
    }

    /// Runs `input` on `key`, records it, and returns its outcome.
    pub(crate) async fn run(&mut self, key: &str, input: Input) -> Outcome {
        let net = Arc::clone(&self.endpoint.net);
        let invoked = net.elapsed();
        net.trace(format_args!("client {} invokes {key:?} {input:?}", self.process));
        let result = match &input {
            Input::Get => self.read(key).await.map(Output::Value),
            Input::Put(value) => self.write(key, Op::Put(value.clone())).await.map(|_| Output::Unit),
            Input::Append(value) => self.write(key, Op::Append(value.clone())).await.map(|_| Output::Unit),
            Input::Lpop => self.write(key, Op::LPop).await.map(|out| Output::Value(out.into_popped())),
            Input::Rpop => self.write(key, Op::RPop).await.map(|out| Output::Value(out.into_popped())),
            Input::Delete => self.write(key, Op::Delete).await.map(|out| match out {
                DataOutput::Deleted(existed) => Output::Deleted(existed),
                _ => Output::Deleted(false),
            }),
        };
        let outcome = match result {
            Ok(output) => Outcome::Ok(output),
            Err((_, true)) => Outcome::Fail,
            Err((_, false)) => Outcome::Unknown,
        };
        self.record(key, input, invoked, outcome)
    }

    /// Records an operation invoked at `invoked` that ended now with `outcome`; returns it.
    fn record(&self, key: &str, input: Input, invoked: Duration, outcome: Outcome) -> Outcome {
        let net = &self.endpoint.net;
        net.trace(format_args!("client {} completes {key:?}: {outcome:?}", self.process));
        self.recorder.record(Operation {
            process: self.process,
            key: key.to_owned(),
            input,
            invoked,
            completed: net.elapsed(),
            outcome: outcome.clone(),
        });
        outcome
    }

    /// Reads `key` once at `server`, whatever the map says (a client whose map is out of date
    /// does so), and records it: a read that fails changed nothing.
    pub(crate) async fn read_at(&mut self, key: &str, server: &str) -> Outcome {
        let net = Arc::clone(&self.endpoint.net);
        let invoked = net.elapsed();
        net.trace(format_args!("client {} invokes {key:?} Get at {server}", self.process));
        let owned = key.to_owned();
        let answer = self
            .endpoint
            .call(
                server,
                CALL_TIMEOUT,
                &format!("get {key:?}"),
                Handler::WithCaller,
                move |service| async move {
                    match service {
                        Service::Node(node) => Some(node.get(&owned).await),
                        _ => None,
                    }
                },
            )
            .await;
        let outcome = match answer {
            Ok(Some(Ok(value))) => Outcome::Ok(Output::Value(value)),
            _ => Outcome::Fail,
        };
        self.record(key, Input::Get, invoked, outcome)
    }

    async fn read(&mut self, key: &str) -> Result<Option<String>, (CallError, bool)> {
        let owned = key.to_owned();
        self.call(key, None, move |node| {
            let key = owned.clone();
            async move { node.get(&key).await }
        })
        .await
    }

    async fn write(&mut self, key: &str, op: Op) -> Result<DataOutput, (CallError, bool)> {
        let seq = self.next_seq;
        self.next_seq += 1;
        // One write at a time: this one is the lowest unanswered.
        let id = RequestId { client: self.id, seq, first_unanswered: seq };
        let appended = match &op {
            Op::Append(value) => Some(value.clone()),
            _ => None,
        };
        let mutation = Mutation { key: key.to_owned(), op };
        self.call(key, Some(appended), move |node| {
            let mutation = mutation.clone();
            async move { node.write(Some(id), mutation).await }
        })
        .await
    }

    /// Fetches the map again, unless a newer one than `seen` is cached; keeps the cached one if
    /// the shard master cannot be reached, or holds an older one.
    async fn refresh(&mut self, seen: u64) {
        if self.config.epoch() > seen {
            return;
        }
        if let Ok(config) = self.endpoint.config(CALL_TIMEOUT).await
            && config.epoch() > self.config.epoch()
        {
            self.config = config;
        }
    }

    /// Runs `call` at the key's server until it succeeds, fails for good, or runs out of
    /// attempts; an error comes with whether it is definite (nothing happened). A write (`write`
    /// holds the value it appends, if it is an append) is recorded as acknowledged by the server
    /// that answered it, as it answers.
    async fn call<T, F, Fut>(
        &mut self,
        key: &str,
        write: Option<Option<String>>,
        call: F,
    ) -> Result<T, (CallError, bool)>
    where
        T: Send + 'static,
        F: Fn(Arc<kv_replica::Node>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<T, kv_core::Error>> + Send + 'static,
    {
        let call = Arc::new(call);
        let read = write.is_none();
        let mut backoff = BACKOFF;
        let mut attempt = 1;
        let mut redirects = 0;
        let mut unknown_before = false;
        let mut any_replica = read;
        let started = self.endpoint.net.elapsed();
        if self.config.epoch() == 0 {
            self.refresh(0).await;
        }
        loop {
            let config = Arc::clone(&self.config);
            let epoch = config.epoch();
            let replicas = config.replicas(key);
            let chosen = if any_replica && !replicas.is_empty() {
                self.rng.random_range(0..replicas.len())
            } else {
                0
            };
            let secondary = chosen > 0;
            let result: Result<T, CallError> = match replicas.get(chosen) {
                None => Err(CallError::NoOwner),
                Some((_, server)) => {
                    let call = Arc::clone(&call);
                    let what = format!("{}{} {key:?}", if read { "get" } else { "write" }, attempt);
                    let acked = write.clone().map(|appended| {
                        let (recorder, net) = (Arc::clone(&self.recorder), Arc::clone(&self.endpoint.net));
                        let (server, key) = (server.to_string(), key.to_owned());
                        move |epoch| {
                            recorder.acknowledged(Ack { at: net.elapsed(), server, epoch, key, appended });
                        }
                    });
                    let answer = self
                        .endpoint
                        .call(server, CALL_TIMEOUT, &what, Handler::WithCaller, move |service| async move {
                            match service {
                                Service::Node(node) => {
                                    let answer = call(Arc::clone(&node)).await;
                                    if let (Ok(_), Some(acked)) = (&answer, acked) {
                                        acked(node.epoch());
                                    }
                                    Some(answer)
                                }
                                _ => None,
                            }
                        })
                        .await;
                    match answer {
                        Ok(Some(Ok(value))) => return Ok(value),
                        Ok(Some(Err(err @ kv_core::Error::Replication(_)))) if !read => {
                            self.recorder.write_failed(self.endpoint.net.elapsed(), server);
                            Err(CallError::Rejected(err))
                        }
                        Ok(Some(Err(err))) => Err(CallError::Rejected(err)),
                        Ok(None) => Err(CallError::Net(Failure::Refused)),
                        Err(failure) => Err(CallError::Net(failure)),
                    }
                }
            };
            let Err(err) = result else { unreachable!("returned above") };
            if secondary && err.is_retryable() {
                any_replica = false;
                continue;
            }
            match &err {
                CallError::Rejected(kv_core::Error::WrongShard { epoch: at, .. })
                    if *at >= epoch && redirects < MAX_REDIRECTS =>
                {
                    redirects += 1;
                    self.refresh(epoch).await;
                    continue;
                }
                CallError::Rejected(kv_core::Error::WrongShard { .. } | kv_core::Error::Moving { .. })
                    if self.endpoint.net.elapsed() - started + backoff < MOVE_WAIT =>
                {
                    self.pause(&mut backoff).await;
                    // Redirects used up (the shard master could not be reached, say): a map the
                    // server says is stale is fetched again after the wait.
                    if let CallError::Rejected(kv_core::Error::WrongShard { epoch: at, .. }) = &err
                        && *at >= epoch
                    {
                        self.refresh(epoch).await;
                    }
                    continue;
                }
                CallError::Rejected(kv_core::Error::WrongShard { .. } | kv_core::Error::Moving { .. }) => {}
                err if err.is_retryable() => self.refresh(epoch).await,
                _ => {}
            }
            if err.is_retryable() && attempt < ATTEMPTS {
                unknown_before |= !err.is_definite();
                self.pause(&mut backoff).await;
                attempt += 1;
                continue;
            }
            let definite = err.is_definite() && !unknown_before;
            return Err((err, definite));
        }
    }

    async fn pause(&mut self, backoff: &mut Duration) {
        let jitter = self.rng.random_range(0.5..1.5);
        self.endpoint.clock.sleep(backoff.mul_f64(jitter)).await;
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
    }

    /// A draw from this client's generator.
    pub(crate) fn random_below(&mut self, n: u64) -> u64 {
        self.rng.random_range(0..n.max(1))
    }
}
