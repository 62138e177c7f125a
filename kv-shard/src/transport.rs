//! The calls between the shard master and the storage servers, as traits: the protocol code
//! makes them, a binding carries them (gRPC in `kv-server`, memory in tests and the simulator).
//!
//! Every call names its target by its address as a member and takes the longest it may wait for
//! the answer: a call that gets none by then fails with [`Error::Interrupted`], one that cannot
//! reach its target with [`Error::Unavailable`], and the target's own refusals come back as the
//! other variants, with its message. Calls are not retried here: the protocol decides.

use std::time::Duration;

use async_trait::async_trait;

use crate::Error;
use crate::messages::{HandOffCopy, Install, InstallReport, Pong, ServerStatus};

/// What the shard master sends the storage servers.
#[async_trait]
pub trait ServerCalls: Send + Sync + 'static {
    /// Installs a configuration at `server` (`Node.Install`); returns once its hand-offs are
    /// done.
    async fn install(
        &self,
        server: &str,
        install: &Install,
        timeout: Duration,
    ) -> Result<InstallReport, Error>;

    /// Has `server` send a copy it kept of a dead primary's slots (`Node.HandOffCopy`).
    async fn hand_off_copy(
        &self,
        server: &str,
        request: &HandOffCopy,
        timeout: Duration,
    ) -> Result<InstallReport, Error>;

    /// What `server` holds (`Node.Status`).
    async fn status(&self, server: &str, timeout: Duration) -> Result<ServerStatus, Error>;

    /// Whether `server` answers, and as which process (`Node.Ping`).
    async fn ping(&self, server: &str, timeout: Duration) -> Result<Pong, Error>;
}

/// What a storage server sends the shard master: its own joins and leaves.
#[async_trait]
pub trait MasterCalls: Send + Sync + 'static {
    /// Asks the shard master to make `server` a member; returns the epoch of the configuration
    /// that does.
    async fn join(&self, server: &str, timeout: Duration) -> Result<u64, Error>;

    /// Asks the shard master to hand `server`'s slots to the others and remove it; returns the
    /// epoch of the configuration without it.
    async fn leave(&self, server: &str, timeout: Duration) -> Result<u64, Error>;
}
