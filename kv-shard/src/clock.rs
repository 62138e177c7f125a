//! Time, as the protocols read it.
//!
//! Every timeout, interval, lease and deadline of the shard master's and the storage servers'
//! protocols reads the time and sleeps through a [`Clock`], never through
//! `std::time::Instant::now()` or a direct `tokio::time` call, so that whoever runs the protocol
//! decides what time is: [`TokioClock`] is tokio's timer, which is the wall clock in production
//! and tokio's paused, auto-advancing clock in tests (`#[tokio::test(start_paused = true)]`); a
//! simulator can give every node a clock of its own.
//!
//! Instants are `std::time::Instant`s, so protocol state can keep them in plain structs; a clock
//! only promises that its `now` never goes back, and that `sleep_until(t)` returns once `now()`
//! has reached `t`.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

use async_trait::async_trait;

/// A source of time that a protocol can also wait on.
#[async_trait]
pub trait Clock: Debug + Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Instant;

    /// Returns once [`Clock::now`] has reached `deadline` (at once if it has).
    async fn sleep_until(&self, deadline: Instant);

    /// Returns once `duration` has passed.
    async fn sleep(&self, duration: Duration) {
        self.sleep_until(self.now() + duration).await;
    }
}

/// tokio's timer: the wall clock, or tokio's paused clock where the runtime's is paused.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

#[async_trait]
impl Clock for TokioClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    async fn sleep_until(&self, deadline: Instant) {
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// The time ran out before the future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline passed")]
pub struct Elapsed;

/// Runs `future` until it finishes or `clock` reaches `deadline`, as `tokio::time::timeout_at`
/// does (the future is polled first, so one that is ready wins over a deadline that passed).
pub async fn timeout_at<F: Future>(
    clock: &dyn Clock,
    deadline: Instant,
    future: F,
) -> Result<F::Output, Elapsed> {
    tokio::select! {
        biased;
        output = future => Ok(output),
        () = clock.sleep_until(deadline) => Err(Elapsed),
    }
}

/// Runs `future` for at most `duration` by `clock`, as `tokio::time::timeout` does.
pub async fn timeout<F: Future>(
    clock: &dyn Clock,
    duration: Duration,
    future: F,
) -> Result<F::Output, Elapsed> {
    timeout_at(clock, clock.now() + duration, future).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_the_paused_clock() {
        let clock = TokioClock;
        let start = clock.now();
        clock.sleep(Duration::from_secs(3600)).await;
        assert!(clock.now() >= start + Duration::from_secs(3600));
        clock.sleep_until(start).await;
        assert!(clock.now() < start + Duration::from_secs(3601), "a past deadline does not wait");
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_end_slow_futures_and_let_ready_ones_win() {
        let clock = TokioClock;
        let slow = timeout(&clock, Duration::from_millis(10), std::future::pending::<()>()).await;
        assert_eq!(slow, Err(Elapsed));
        let ready = timeout_at(&clock, clock.now() - Duration::from_millis(1), async { 7 }).await;
        assert_eq!(ready, Ok(7));
    }
}
