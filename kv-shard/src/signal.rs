//! A value tasks can wait on: [`Signal`], the protocols' stand-in for `tokio::sync::watch`.
//!
//! tokio's `watch` spreads its waiters over several queues picked at random, to ease contention
//! between threads, so tasks that wait on one value wake in an order no seed controls. A
//! deterministic simulation of the protocols cannot have that. A `Signal` keeps its waiters in
//! one queue (a `Notify`): when the value changes, they wake in the order they began to wait.
//!
//! Invariants: a change made after a waiter checked the value is never missed (the waiter is
//! registered before it checks); `wait_for` returns a value that satisfied its predicate when
//! read.

use std::sync::{Mutex, PoisonError};

use tokio::sync::Notify;

/// A value, and the tasks waiting for it to change.
#[derive(Debug, Default)]
pub struct Signal<T> {
    value: Mutex<T>,
    changed: Notify,
}

impl<T: Copy> Signal<T> {
    /// A signal holding `value`.
    pub fn new(value: T) -> Self {
        Signal { value: Mutex::new(value), changed: Notify::new() }
    }

    /// The value now.
    pub fn get(&self) -> T {
        *self.value.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the value, and wakes every waiter.
    pub fn set(&self, value: T) {
        self.modify(|current| {
            *current = value;
            true
        });
    }

    /// Changes the value with `change`, which says whether it changed anything; wakes every
    /// waiter if it did. Returns what `change` said.
    pub fn modify(&self, change: impl FnOnce(&mut T) -> bool) -> bool {
        let changed = change(&mut self.value.lock().unwrap_or_else(PoisonError::into_inner));
        if changed {
            self.changed.notify_waiters();
        }
        changed
    }

    /// Returns the value once `ready` holds for it (at once if it does).
    pub async fn wait_for(&self, ready: impl Fn(&T) -> bool) -> T {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the check: a change right after it still wakes this waiter.
            notified.as_mut().enable();
            let value = self.get();
            if ready(&value) {
                return value;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn waiters_see_the_change_they_wait_for() {
        let signal = Arc::new(Signal::new(0u64));
        let waiter = tokio::spawn({
            let signal = Arc::clone(&signal);
            async move { signal.wait_for(|&n| n >= 2).await }
        });
        tokio::task::yield_now().await;
        signal.set(1);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "1 is not enough");
        assert!(!signal.modify(|_| false), "no change, no wake-up");
        signal.modify(|n| {
            *n += 1;
            true
        });
        assert_eq!(waiter.await.expect("the waiter"), 2);
        assert_eq!(signal.wait_for(|&n| n == 2).await, 2, "already so: at once");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn waiters_wake_in_the_order_they_began_to_wait() {
        let signal = Arc::new(Signal::new(false));
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..16 {
            let (signal, order) = (Arc::clone(&signal), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                signal.wait_for(|&set| set).await;
                order.lock().unwrap_or_else(PoisonError::into_inner).push(i);
            }));
            tokio::task::yield_now().await;
        }
        signal.set(true);
        for task in tasks {
            task.await.expect("a waiter");
        }
        let order = order.lock().unwrap_or_else(PoisonError::into_inner).clone();
        assert_eq!(order, (0..16).collect::<Vec<_>>());
    }
}
