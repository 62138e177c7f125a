//! Retrying a call while its target cannot answer yet, until a deadline: the one backoff policy
//! of the protocols' calls.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::clock::Clock;

/// An error that says whether sending the same request again may succeed.
pub trait Retryable {
    /// Whether the same request may succeed if sent again.
    fn is_retryable(&self) -> bool;
}

impl Retryable for crate::Error {
    fn is_retryable(&self) -> bool {
        crate::Error::is_retryable(self)
    }
}

/// Runs `call` until it succeeds, fails for good, or `deadline` comes by `clock`, retrying
/// [`Retryable`] failures with a backoff of 20 ms doubling to 1 s. `call` gets the time one
/// attempt may take: what is left, capped at `attempt_cap` (and at least 1 ms).
pub async fn retry_until<T, E, F, Fut>(
    clock: &dyn Clock,
    deadline: Instant,
    attempt_cap: Duration,
    mut call: F,
) -> Result<T, E>
where
    E: Retryable,
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Duration::from_millis(20);
    loop {
        let remaining = deadline.saturating_duration_since(clock.now());
        match call(remaining.clamp(Duration::from_millis(1), attempt_cap)).await {
            Err(err) if err.is_retryable() && clock.now() + backoff < deadline => {
                clock.sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::Error;
    use crate::clock::TokioClock;

    #[tokio::test(start_paused = true)]
    async fn retries_what_may_pass_until_the_deadline_and_nothing_else() {
        let clock = TokioClock;
        let calls = AtomicU32::new(0);
        let start = clock.now();
        let failing =
            retry_until(&clock, start + Duration::from_secs(3), Duration::from_secs(1), |timeout| {
                calls.fetch_add(1, Ordering::Relaxed);
                assert!(timeout <= Duration::from_secs(1) && timeout >= Duration::from_millis(1));
                async { Err::<(), _>(Error::Unavailable("down".into())) }
            })
            .await;
        assert_eq!(failing, Err(Error::Unavailable("down".into())));
        // 20 + 40 + 80 + 160 + 320 + 640 + 1000 ms of backoff fit in 3 s, the next does not.
        assert_eq!(calls.load(Ordering::Relaxed), 8);
        assert!(clock.now() < start + Duration::from_secs(3));

        calls.store(0, Ordering::Relaxed);
        let refused =
            retry_until(&clock, clock.now() + Duration::from_secs(3), Duration::from_secs(1), |_| {
                calls.fetch_add(1, Ordering::Relaxed);
                async { Err::<(), _>(Error::FailedPrecondition("no".into())) }
            })
            .await;
        assert!(refused.is_err());
        assert_eq!(calls.load(Ordering::Relaxed), 1, "a refusal is not retried");

        let mut left = 2;
        let passes =
            retry_until(&clock, clock.now() + Duration::from_secs(3), Duration::from_secs(1), |_| {
                left -= 1;
                let result = if left > 0 { Err(Error::Interrupted("cut off".into())) } else { Ok(7) };
                async move { result }
            })
            .await;
        assert_eq!(passes, Ok(7));
    }
}
