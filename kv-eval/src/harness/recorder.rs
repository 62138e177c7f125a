//! A client wrapper that records every operation into a [`History`].
//!
//! Each [`RecordingClient`] is one *process* of the history: it runs one operation at a time.
//! Times come from one monotonic clock ([`Instant`]) shared by all the clients of a
//! [`Recorder`]. The outcome of a call is classified conservatively, by
//! [`kv_client::Error::is_definite`]: `fail` only when the operation is known not to have happened
//! (the server refused it, and no earlier attempt of it may have landed); any other error — a
//! timeout, a broken connection, a write still in progress — is `unknown`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kv_client::Client;

use crate::harness::history::{History, Input, Operation, Outcome, Output};

/// Collects the operations of many clients into one history.
#[derive(Debug, Clone)]
pub struct Recorder {
    start: Instant,
    ops: Arc<Mutex<Vec<Operation>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty history whose clock starts now.
    pub fn new() -> Self {
        Recorder { start: Instant::now(), ops: Arc::new(Mutex::new(Vec::new())) }
    }

    /// The time since the history's clock started, on the clock its operations are timed by.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// A client that records its operations as process `process`.
    pub fn client(&self, process: u64, client: Client) -> RecordingClient {
        RecordingClient { process, client, recorder: self.clone() }
    }

    /// The operations recorded so far.
    pub fn history(&self) -> History {
        History { ops: self.ops.lock().map(|ops| ops.clone()).unwrap_or_else(|p| p.into_inner().clone()) }
    }

    fn record(&self, op: Operation) {
        match self.ops.lock() {
            Ok(mut ops) => ops.push(op),
            Err(poisoned) => poisoned.into_inner().push(op),
        }
    }
}

/// One process of a history: a client whose every call is recorded.
#[derive(Debug, Clone)]
pub struct RecordingClient {
    process: u64,
    client: Client,
    recorder: Recorder,
}

impl RecordingClient {
    /// The process id this client records as.
    pub fn process(&self) -> u64 {
        self.process
    }

    /// Runs `input` on `key`, records it, and returns its outcome.
    pub async fn run(&self, key: &str, input: Input) -> Outcome {
        let invoked = self.recorder.start.elapsed();
        let c = &self.client;
        let key_owned = key.to_owned();
        let result = match &input {
            Input::Get => c.get(key_owned).await.map(Output::Value),
            Input::Put(value) => c.put(key_owned, value.clone()).await.map(|()| Output::Unit),
            Input::Append(value) => c.append(key_owned, value.clone()).await.map(|()| Output::Unit),
            Input::Lpop => c.lpop(key_owned).await.map(Output::Value),
            Input::Rpop => c.rpop(key_owned).await.map(Output::Value),
            Input::Delete => c.delete(key_owned).await.map(Output::Deleted),
        };
        let completed = self.recorder.start.elapsed();
        let outcome = match result {
            Ok(output) => Outcome::Ok(output),
            Err(err) if err.is_definite() => Outcome::Fail,
            Err(_) => Outcome::Unknown,
        };
        self.recorder.record(Operation {
            process: self.process,
            key: key.to_owned(),
            input,
            invoked,
            completed,
            outcome: outcome.clone(),
        });
        outcome
    }
}
