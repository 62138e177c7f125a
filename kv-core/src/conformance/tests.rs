//! The concurrency scenarios must bite: engines that read a key, let others run, then write
//! it back without holding the key's lock lose updates, and the scenarios must fail against
//! them, every time. One such engine never awaits in its race window (only threads running at
//! once can interleave it, which is what a multi-threaded runtime is for); the other yields to
//! the runtime there.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{concurrent_appends_are_atomic, concurrent_pops_return_each_character_once};
use crate::{Limits, MemoryStorage, Mutation, Output, Result, Storage};

/// What a [`Racy`] engine does between reading a key and writing it back.
#[derive(Debug, Clone, Copy)]
enum Window {
    /// Blocks its thread for a moment, without awaiting: to the runtime, `apply` runs straight
    /// through, as in an engine that takes no async lock.
    Blocking,
    /// Yields to the runtime, as an engine awaiting I/O between the two would.
    Yield,
}

/// A [`MemoryStorage`] whose `apply` reads the key, waits in its [`Window`], applies the
/// operation to what it read and writes the result back, holding no lock in between: two
/// operations on a key that overlap lose one of their effects.
#[derive(Debug)]
struct Racy {
    inner: MemoryStorage,
    window: Window,
}

impl Racy {
    fn new(window: Window) -> Self {
        Racy { inner: MemoryStorage::new(), window }
    }
}

#[async_trait]
impl Storage for Racy {
    fn limits(&self) -> &Limits {
        self.inner.limits()
    }

    async fn get(&self, key: &str) -> Result<Option<String>> {
        self.inner.get(key).await
    }

    async fn apply(&self, mutation: Mutation) -> Result<Output> {
        let Mutation { key, op } = mutation;
        let mut slot = self.inner.get(&key).await?;
        match self.window {
            Window::Blocking => std::thread::sleep(Duration::from_micros(50)),
            Window::Yield => tokio::task::yield_now().await,
        }
        let output = op.apply(&mut slot, self.limits())?;
        match slot {
            Some(value) => self.inner.import(vec![(key, value)]).await?,
            None => {
                self.inner.remove_where(&|k: &str| k == key).await?;
            }
        }
        Ok(output)
    }

    async fn export(
        &self,
        select: &(dyn for<'k> Fn(&'k str) -> bool + Sync),
    ) -> Result<Vec<(String, String)>> {
        self.inner.export(select).await
    }

    async fn import(&self, entries: Vec<(String, String)>) -> Result<()> {
        self.inner.import(entries).await
    }

    async fn remove_where(&self, select: &(dyn for<'k> Fn(&'k str) -> bool + Sync)) -> Result<usize> {
        self.inner.remove_where(select).await
    }

    async fn key_count(&self) -> Result<usize> {
        self.inner.key_count().await
    }
}

/// Runs `scenario` in a task of its own and returns its panic message; panics if it passed.
async fn failure_of(scenario: impl std::future::Future<Output = ()> + Send + 'static) -> String {
    let Err(err) = tokio::spawn(scenario).await else {
        panic!("the scenario passed against an engine that loses updates");
    };
    let payload = err.into_panic();
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_catch_a_race_between_threads() {
    let message = failure_of(concurrent_appends_are_atomic(Arc::new(Racy::new(Window::Blocking)))).await;
    assert!(message.contains("concurrent appends lost"), "failed for another reason: {message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pops_catch_a_race_between_threads() {
    let message =
        failure_of(concurrent_pops_return_each_character_once(Arc::new(Racy::new(Window::Blocking)))).await;
    assert!(message.contains("exactly once"), "failed for another reason: {message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_catch_a_race_across_an_await() {
    let message = failure_of(concurrent_appends_are_atomic(Arc::new(Racy::new(Window::Yield)))).await;
    assert!(message.contains("concurrent appends lost"), "failed for another reason: {message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pops_catch_a_race_across_an_await() {
    let message =
        failure_of(concurrent_pops_return_each_character_once(Arc::new(Racy::new(Window::Yield)))).await;
    assert!(message.contains("exactly once"), "failed for another reason: {message}");
}

/// On one thread the blocking race never shows, so the scenarios refuse to run there.
#[tokio::test(flavor = "current_thread")]
async fn the_concurrency_scenarios_refuse_a_single_threaded_runtime() {
    let message = failure_of(concurrent_appends_are_atomic(Arc::new(MemoryStorage::new()))).await;
    assert!(message.contains("multi-threaded runtime"), "failed for another reason: {message}");
}

/// The correct engine passes the scenarios over and over, under the same contention.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_memory_engine_passes_them_repeatedly() {
    for _ in 0..20 {
        concurrent_appends_are_atomic(Arc::new(MemoryStorage::new())).await;
        concurrent_pops_return_each_character_once(Arc::new(MemoryStorage::new())).await;
    }
}
