//! Histories of concurrent operations: what each client asked, when, and what it got back.
//!
//! An [`Operation`] is logged with its process (one client, which runs one operation at a
//! time), its key, its input, its invocation and completion times on one monotonic clock, and
//! its [`Outcome`]:
//! - `Ok(output)`: it happened, and returned `output`;
//! - `Fail`: it is known *not* to have happened (the server refused it);
//! - `Unknown`: it may or may not have happened (a timeout, a broken connection). It may take
//!   effect at any point after its invocation, or never, so a checker treats its completion as
//!   lying at the end of time.
//!
//! A history is what [`crate::harness::linearizability`] checks, and what a run writes out as JSON.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The register operations of the store, per key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "op", content = "value")]
pub enum Input {
    /// `get(key)`
    Get,
    /// `put(key, value)`
    Put(String),
    /// `append(key, value)`
    Append(String),
    /// `lpop(key)`
    Lpop,
    /// `rpop(key)`
    Rpop,
    /// `delete(key)`
    Delete,
}

/// What a successful operation returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "value")]
pub enum Output {
    /// `get`, `lpop`, `rpop`: the value or character, `None` for a missing key.
    Value(Option<String>),
    /// `put`, `append`: nothing.
    Unit,
    /// `delete`: whether the key existed.
    Deleted(bool),
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "status", content = "output")]
pub enum Outcome {
    /// It happened and returned this.
    Ok(Output),
    /// It is known not to have happened.
    Fail,
    /// It may or may not have happened.
    Unknown,
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// The client that ran it; a process runs one operation at a time.
    pub process: u64,
    /// The key it acted on.
    pub key: String,
    /// What was asked.
    pub input: Input,
    /// When it was invoked, since the history's start.
    #[serde(with = "nanos")]
    pub invoked: Duration,
    /// When its answer arrived (or the client gave up), since the history's start.
    #[serde(with = "nanos")]
    pub completed: Duration,
    /// How it ended.
    pub outcome: Outcome,
}

/// A history: operations in no particular order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The operations.
    pub ops: Vec<Operation>,
}

impl History {
    /// Counts of `ok`, `fail` and `unknown` operations.
    pub fn counts(&self) -> (usize, usize, usize) {
        self.ops.iter().fold((0, 0, 0), |(ok, fail, unknown), op| match op.outcome {
            Outcome::Ok(_) => (ok + 1, fail, unknown),
            Outcome::Fail => (ok, fail + 1, unknown),
            Outcome::Unknown => (ok, fail, unknown + 1),
        })
    }
}

mod nanos {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_nanos)
    }
}
