//! A simulated node's clock: the simulation's virtual time (tokio's paused clock) seen at a
//! rate of the node's own, and stopped while the node is paused.
//!
//! Invariants:
//! - `now()` never goes back, and runs at `rate` times the simulation's time from the moment
//!   the clock was made: two nodes' clocks drift apart as two machines' do, within the bounds a
//!   schedule picks (the leases allow 10%; schedules stay well inside).
//! - `sleep_until(t)` returns once `now()` has reached `t` *and* the node is running: a paused
//!   process wakes only when it is resumed, with every timer that expired meanwhile due at once.
//!   Its `now()` is not stopped: a resumed process reads the time that has passed, as after
//!   `SIGSTOP`/`SIGCONT`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kv_shard::clock::Clock;
use kv_shard::signal::Signal;

/// Whether a simulated process runs: resuming it wakes what waited on it.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    paused: Arc<Signal<bool>>,
}

impl Gate {
    pub(crate) fn new() -> Self {
        Gate { paused: Arc::new(Signal::new(false)) }
    }

    /// Stops (`true`) or resumes (`false`) the process.
    pub(crate) fn set_paused(&self, paused: bool) {
        self.paused.set(paused);
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused.get()
    }

    /// Returns once the process runs (at once if it does).
    pub(crate) async fn running(&self) {
        self.paused.wait_for(|paused| !paused).await;
    }
}

/// A node's clock.
#[derive(Debug, Clone)]
pub(crate) struct SimClock {
    origin: Instant,
    rate: f64,
    gate: Gate,
}

impl SimClock {
    /// A clock that reads the simulation's time at `rate` from now, and waits while `gate` is
    /// paused.
    pub(crate) fn new(rate: f64, gate: Gate) -> Self {
        SimClock { origin: tokio::time::Instant::now().into_std(), rate, gate }
    }

    /// The simulation's instant at which this clock reads `local`.
    fn to_sim(&self, local: Instant) -> Instant {
        let elapsed = local.saturating_duration_since(self.origin);
        self.origin + Duration::from_secs_f64(elapsed.as_secs_f64() / self.rate)
    }
}

#[async_trait]
impl Clock for SimClock {
    fn now(&self) -> Instant {
        let sim = tokio::time::Instant::now().into_std();
        self.origin + sim.saturating_duration_since(self.origin).mul_f64(self.rate)
    }

    async fn sleep_until(&self, deadline: Instant) {
        // Rounding can leave `now()` a nanosecond short of the deadline: sleep on until it is not.
        loop {
            tokio::time::sleep_until(tokio::time::Instant::from_std(self.to_sim(deadline))).await;
            self.gate.running().await;
            if self.now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_micros(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_fast_clock_runs_ahead_and_a_paused_one_wakes_on_resume() {
        let gate = Gate::new();
        let fast = SimClock::new(1.05, gate.clone());
        let start = fast.now();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let read = fast.now() - start;
        assert!(read > Duration::from_millis(10_490) && read < Duration::from_millis(10_510), "{read:?}");

        let sleeper = {
            let fast = fast.clone();
            tokio::spawn(async move {
                fast.sleep(Duration::from_secs(1)).await;
                tokio::time::Instant::now()
            })
        };
        gate.set_paused(true);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!sleeper.is_finished(), "a paused process sleeps on");
        let resumed = tokio::time::Instant::now();
        gate.set_paused(false);
        let woke = sleeper.await.expect("the sleeper");
        assert_eq!(woke, resumed, "it wakes when resumed");
    }
}
