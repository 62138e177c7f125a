//! The shard master's calls to storage servers, with the timeouts and retries each one gets,
//! and the waits built on them (until a server goes silent, until copies have caught up).
//!
//! Nothing here decides anything about the cluster: it asks, and reports what it heard. Every
//! wait reads time through the clock, so a test or a simulator drives it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::Error;
use crate::clock::Clock;
use crate::messages::{HandOffCopy, Install, InstallReport, Pong, ServerStatus};
use crate::retry::retry_until;
use crate::transport::ServerCalls;
use futures_util::future::join_all;
use tracing::warn;

/// How long the shard master waits for a server's answer before deciding it cannot reach it,
/// when it checks a joiner or a leaver.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often members are pinged.
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(100);
/// How long a ping may take.
pub(crate) const PING_TIMEOUT: Duration = Duration::from_millis(300);

/// The shard master's side of its calls to storage servers.
#[derive(Clone)]
pub(crate) struct Calls {
    servers: Arc<dyn ServerCalls>,
    pub(crate) clock: Arc<dyn Clock>,
    /// How long the data moves of one change may take.
    pub(crate) move_timeout: Duration,
    /// How long a member may go without answering before it is failed.
    pub(crate) failure_timeout: Duration,
    /// Members the failure detector judged cut off from a peer, until their failover is over:
    /// the waits treat them as silent, so a change in progress does not hold their failover up.
    judged: Arc<Mutex<BTreeSet<String>>>,
}

impl std::fmt::Debug for Calls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Calls").field("move_timeout", &self.move_timeout).finish_non_exhaustive()
    }
}

impl Calls {
    pub(crate) fn new(
        servers: Arc<dyn ServerCalls>,
        clock: Arc<dyn Clock>,
        move_timeout: Duration,
        failure_timeout: Duration,
    ) -> Self {
        Calls { servers, clock, move_timeout, failure_timeout, judged: Arc::default() }
    }

    /// Marks `server` as cut off from a peer (`true`) until its failover is over (`false`).
    pub(crate) fn judge_cut_off(&self, server: &str, cut_off: bool) {
        let mut judged = self.judged.lock().unwrap_or_else(PoisonError::into_inner);
        if cut_off {
            judged.insert(server.to_owned());
        } else {
            judged.remove(server);
        }
    }

    /// Whether `server` is judged cut off from a peer (its failover for that is under way).
    pub(crate) fn is_judged(&self, server: &str) -> bool {
        self.judged.lock().unwrap_or_else(PoisonError::into_inner).contains(server)
    }

    /// The clock's time.
    pub(crate) fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Installs `install` at `server`, retrying while it is unreachable or busy, until
    /// `deadline`. An install may hand off a lot of data: an attempt may take all the time left.
    pub(crate) async fn install(
        &self,
        server: &str,
        install: &Install,
        deadline: Instant,
    ) -> Result<InstallReport, Error> {
        retry_until(self.clock.as_ref(), deadline, self.move_timeout, |timeout| {
            self.servers.install(server, install, timeout)
        })
        .await
    }

    /// Asks `holder` to send a copy it kept (`Node.HandOffCopy`), retrying while it is
    /// unreachable, for up to the move timeout.
    pub(crate) async fn hand_off_copy(
        &self,
        holder: &str,
        request: &HandOffCopy,
    ) -> Result<InstallReport, Error> {
        let deadline = self.now() + self.move_timeout;
        retry_until(self.clock.as_ref(), deadline, self.move_timeout, |timeout| {
            self.servers.hand_off_copy(holder, request, timeout)
        })
        .await
    }

    /// What `server` holds, if it answers within the probe timeout.
    pub(crate) async fn status_of(&self, server: &str) -> Result<ServerStatus, Error> {
        self.status_within(server, PROBE_TIMEOUT).await
    }

    /// What `server` holds, if it answers within `timeout`.
    pub(crate) async fn status_within(&self, server: &str, timeout: Duration) -> Result<ServerStatus, Error> {
        self.servers.status(server, timeout).await
    }

    /// What `server` holds, for a failover: asked three times, the last two with the probe
    /// timeout (a server busy switching configurations may take a while).
    pub(crate) async fn status_for_failover(&self, server: &str) -> Result<ServerStatus, Error> {
        let mut answer = self.status_within(server, PING_TIMEOUT * 2).await;
        for _ in 0..2 {
            if answer.is_ok() {
                break;
            }
            answer = self.status_of(server).await;
        }
        answer
    }

    /// What `server` holds, asked up to three times: the first call on a connection to a
    /// process that has since restarted may fail.
    pub(crate) async fn status_after_restart(&self, server: &str) -> Result<ServerStatus, Error> {
        let mut last = Err(Error::Unavailable("not asked".to_owned()));
        for _ in 0..3 {
            last = self.status_of(server).await;
            if last.is_ok() {
                break;
            }
            self.clock.sleep(Duration::from_millis(50)).await;
        }
        last
    }

    /// The incarnation `server` answers a ping with, if it answers in time.
    pub(crate) async fn ping(&self, server: &str) -> Option<u64> {
        self.pong(server).await.map(|pong| pong.incarnation)
    }

    /// What `server` answers a ping with, if it answers in time.
    pub(crate) async fn pong(&self, server: &str) -> Option<Pong> {
        self.servers.ping(server, PING_TIMEOUT).await.ok()
    }

    /// Whether `server` fails every one of a few probes, a second apart, or answers as another
    /// process than `joined` (it restarted, and holds nothing of what it held): then it is
    /// presumed dead.
    pub(crate) async fn is_gone(&self, server: &str, joined: Option<u64>) -> bool {
        for attempt in 0..3 {
            if attempt > 0 {
                self.clock.sleep(Duration::from_secs(1)).await;
            }
            if let Ok(status) = self.status_of(server).await {
                return joined.is_some_and(|joined| joined != status.incarnation);
            }
        }
        true
    }

    /// Returns once `server` answers that it holds a configuration of `epoch` or later.
    pub(crate) async fn until_at_epoch(&self, server: &str, epoch: u64) {
        loop {
            if self.status_of(server).await.is_ok_and(|status| status.epoch >= epoch) {
                return;
            }
            self.clock.sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether `server` answers that it still waits for slots.
    pub(crate) async fn receiver_waits(&self, server: &str) -> bool {
        self.status_of(server).await.is_ok_and(|status| status.incoming_slots > 0)
    }

    /// Returns once `server` has not answered a ping for the failure timeout, or answers as
    /// another process than `joined`, the incarnation it joined as: it restarted, and what it
    /// held is gone (waiting for it to catch up or hand off would wait for nothing). Or once it
    /// is judged cut off from a peer: its failover is waiting.
    pub(crate) async fn until_silent(&self, server: &str, joined: Option<u64>) {
        let mut last_seen = self.now();
        loop {
            self.clock.sleep(HEARTBEAT).await;
            if self.is_judged(server) {
                return;
            }
            match self.ping(server).await {
                Some(incarnation) if joined.is_some_and(|joined| joined != incarnation) => return,
                Some(_) => last_seen = self.now(),
                None if self.now().saturating_duration_since(last_seen) > self.failure_timeout => return,
                None => {}
            }
        }
    }

    /// Returns once `server` answers that it has heard nothing from a server for longer than the
    /// failure timeout, while that one answers this shard master: the link between them is cut
    /// (a sender that cannot reach its receiver, say). Never, while that does not happen.
    pub(crate) async fn until_cut_off(&self, server: &str) -> String {
        loop {
            self.clock.sleep(HEARTBEAT).await;
            let Some(pong) = self.pong(server).await else { continue };
            for report in pong.unheard.iter().filter(|report| report.unheard_for > self.failure_timeout) {
                if report.peer != server && self.ping(&report.peer).await.is_some() {
                    return report.peer.clone();
                }
            }
        }
    }

    /// Returns the first of `servers` (each with the incarnation it joined as) not to answer
    /// pings for the failure timeout, or to answer as another process; never, if there are none.
    pub(crate) async fn until_any_silent<'s>(&self, servers: &[(&'s str, Option<u64>)]) -> &'s str {
        if servers.is_empty() {
            return std::future::pending().await;
        }
        let watches = servers.iter().map(|&(server, joined)| {
            Box::pin(async move {
                self.until_silent(server, joined).await;
                server
            })
        });
        futures_util::future::select_all(watches).await.0
    }

    /// Whether at least half of `servers` answer a ping.
    pub(crate) async fn most_answer(&self, servers: &[&str]) -> bool {
        let answers = join_all(servers.iter().map(|server| self.ping(server))).await;
        answers.iter().filter(|answer| answer.is_some()).count() * 2 >= servers.len()
    }

    /// Returns once every one of `servers` has answered, in one round, that it has no copy still
    /// catching up, or at `deadline` (with a warning: the change is then over with copies still
    /// catching up). A server whose answer is lost may be the one catching up: the round is
    /// asked again (one that stops answering is the caller's to watch).
    pub(crate) async fn until_caught_up(&self, servers: &[&str], deadline: Instant) {
        loop {
            let statuses = join_all(servers.iter().map(|server| self.status_of(server))).await;
            let syncing: u32 = statuses.iter().flatten().map(|status| status.syncing_slots).sum();
            if syncing == 0 && statuses.iter().all(Result::is_ok) {
                return;
            }
            if self.now() >= deadline {
                warn!(slots = syncing, "copies still catching up at the end of a change");
                return;
            }
            self.clock.sleep(Duration::from_millis(50)).await;
        }
    }
}
