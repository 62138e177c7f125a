//! What a proxy injects, per direction of its connections; the module documentation of
//! [`super`] says why the faults of a byte stream are these.

use std::time::Duration;

/// A direction; its number indexes the per-direction arrays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dir {
    Up = 0,
    Down = 1,
}

impl Dir {
    pub(super) const BOTH: [Dir; 2] = [Dir::Up, Dir::Down];
}

/// Faults of one direction of every connection through a proxy.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DirectionFaults {
    /// Black hole: bytes are read and thrown away; the sender sees silence, not an error.
    /// Turning it off resets the connections that lost bytes (see the module documentation).
    pub drop: bool,
    /// Each chunk is delivered this long after it was read, plus jitter.
    pub delay: Duration,
    /// Each chunk gets an extra delay drawn uniformly from `0..jitter`; order is kept.
    pub jitter: Duration,
    /// Probability, per chunk to forward, that the connection is reset instead. Clamped to
    /// `0.0..=1.0`; NaN counts as 0.
    pub reset_rate: f64,
}

/// The faults a proxy injects. `Faults::default()` injects nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Client → target.
    pub upstream: DirectionFaults,
    /// Target → client.
    pub downstream: DirectionFaults,
    /// New connections are accepted and reset at once (the client sees its connect, or its first
    /// read or write, fail with a reset); open ones are untouched.
    pub refuse_new: bool,
}

impl Faults {
    /// A full partition: both directions black-holed.
    pub fn partition() -> Self {
        let drop = DirectionFaults { drop: true, ..DirectionFaults::default() };
        Faults { upstream: drop, downstream: drop, refuse_new: false }
    }

    /// A flaky path: every chunk delayed by 1–21 ms both ways, and 1 % of them reset their
    /// connection instead (for a gRPC client, about one reset per 50 requests).
    pub fn flaky() -> Self {
        let flaky = DirectionFaults {
            drop: false,
            delay: Duration::from_millis(1),
            jitter: Duration::from_millis(20),
            reset_rate: 0.01,
        };
        Faults { upstream: flaky, downstream: flaky, refuse_new: false }
    }

    /// Both directions delayed by `delay` plus up to `jitter`.
    pub fn delayed(delay: Duration, jitter: Duration) -> Self {
        let slow = DirectionFaults { delay, jitter, ..DirectionFaults::default() };
        Faults { upstream: slow, downstream: slow, refuse_new: false }
    }

    pub(super) fn get(&self, dir: Dir) -> &DirectionFaults {
        match dir {
            Dir::Up => &self.upstream,
            Dir::Down => &self.downstream,
        }
    }
}
