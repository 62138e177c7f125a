//! The trace of a simulated run: every message, fault and client operation, in the order they
//! happened, at the simulation's time.
//!
//! A run always keeps the trace's hash (xxh3 over every event's text), which is what the
//! determinism check compares: the same seed and settings give the same hash, or something the
//! seed does not control leaked into the run. The text itself is kept only when asked for
//! (`kv-eval sim --seed S --trace`), since a run makes hundreds of thousands of events.

use std::fmt::{self, Write as _};
use std::sync::Mutex;
use std::time::Duration;

use xxhash_rust::xxh3::Xxh3;

/// The events of one run.
#[derive(Default)]
pub(crate) struct Trace {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    hash: Xxh3,
    events: u64,
    lines: Option<Vec<String>>,
    line: String,
}

impl fmt::Debug for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trace").finish_non_exhaustive()
    }
}

/// Feeds what is formatted into the hash, without keeping it.
struct HashWriter<'a>(&'a mut Xxh3);

impl fmt::Write for HashWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

impl Trace {
    /// A trace that keeps its text when `keep` is set.
    pub(crate) fn new(keep: bool) -> Self {
        let trace = Trace::default();
        if keep {
            trace.lock().lines = Some(Vec::new());
        }
        trace
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records one event, at simulation time `at`.
    pub(crate) fn event(&self, at: Duration, event: fmt::Arguments<'_>) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        inner.events += 1;
        let micros = at.as_micros();
        let _ = writeln!(HashWriter(&mut inner.hash), "{micros} {event}");
        if let Some(lines) = &mut inner.lines {
            inner.line.clear();
            let _ = write!(inner.line, "{:>6}.{:06} {event}", micros / 1_000_000, micros % 1_000_000);
            lines.push(inner.line.clone());
        }
    }

    /// Records a line of the protocol's own log, at simulation time `at`: kept with the text
    /// when the text is kept, and not hashed (a run is the same with or without its log).
    pub(crate) fn log(&self, at: Duration, line: &str) {
        let mut inner = self.lock();
        if let Some(lines) = &mut inner.lines {
            let micros = at.as_micros();
            lines.push(format!(
                "{:>6}.{:06}   log: {}",
                micros / 1_000_000,
                micros % 1_000_000,
                line.trim_end()
            ));
        }
    }

    /// Whether the text is kept.
    pub(crate) fn keeps_text(&self) -> bool {
        self.lock().lines.is_some()
    }

    /// The hash of every event so far, and how many there were.
    pub(crate) fn digest(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.hash.digest(), inner.events)
    }

    /// The events' text, if it was kept.
    pub(crate) fn take_lines(&self) -> Vec<String> {
        self.lock().lines.take().unwrap_or_default()
    }
}
