//! Whether a simulated cluster is well: healthy (every running server a member at the current
//! epoch, nothing moving or catching up), and, once writes stop, its replicas in agreement.
//! Read by the run between faults and at its end; none of it changes the cluster.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use kv_core::Storage;

use super::net::Net;
use super::world::World;

pub(crate) fn lock(world: &Mutex<World>) -> MutexGuard<'_, World> {
    world.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether the cluster is healthy: the shard master runs, no leave is under way, every running
/// server is a member at the current epoch, and no server catches up, waits for or owes slots.
/// What is wrong, if it is not.
pub(crate) async fn health(world: &Mutex<World>) -> Result<(), String> {
    let inputs = lock(world).health_inputs();
    let Some((config, servers, leaving)) = inputs else {
        return Err("the shard master does not run".to_owned());
    };
    if let Some(leaver) = leaving.first() {
        return Err(format!("{leaver} is still leaving"));
    }
    for (address, node) in servers {
        if config.id_of(&address).is_none() {
            return Err(format!("{address} runs but is not a member"));
        }
        let status = node.status().await.map_err(|err| format!("{address}: {err}"))?;
        if status.epoch != config.epoch() {
            return Err(format!(
                "{address} is at epoch {}, the shard master at {}",
                status.epoch,
                config.epoch()
            ));
        }
        if status.syncing_slots + status.incoming_slots + status.outgoing_slots > 0 {
            return Err(format!(
                "{address} catches up {} slots, waits for {}, owes {}",
                status.syncing_slots, status.incoming_slots, status.outgoing_slots
            ));
        }
    }
    Ok(())
}

/// Waits until the cluster is healthy, or `limit` has passed; whether it is.
pub(crate) async fn until_healthy(world: &Mutex<World>, net: &Net, limit: Duration) -> bool {
    let deadline = net.elapsed() + limit;
    loop {
        if health(world).await.is_ok() {
            return true;
        }
        if net.elapsed() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits, polling every 50 ms, until `done` holds or `limit` has passed; whether it held.
pub(crate) async fn until(net: &Net, limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = net.elapsed() + limit;
    loop {
        if done() {
            return true;
        }
        if net.elapsed() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A key whose replicas hold different values, if one does.
pub(crate) fn replicas_agree(world: &World, keys: &[String]) -> Option<String> {
    let config = world.config()?;
    let servers: BTreeMap<&String, _> = world.running().collect();
    for key in keys {
        let mut values = Vec::new();
        for (_, address) in config.replicas(key) {
            let Some(server) = servers.get(&address.to_owned()) else {
                return Some(format!("{key}: replica {address} does not run"));
            };
            values.push((address.to_owned(), peek(server.storage.values(), key)));
        }
        if values.windows(2).any(|pair| pair[0].1 != pair[1].1) {
            let shown: Vec<String> = values
                .iter()
                .map(|(address, value)| format!("{address} holds {}", summary(value.as_deref())))
                .collect();
            return Some(format!("{key}: {}", shown.join(", ")));
        }
    }
    None
}

/// A value, shortened for a report: its length and its end.
fn summary(value: Option<&str>) -> String {
    match value {
        None => "no value".to_owned(),
        Some(value) => {
            let tail: String = value.chars().rev().take(24).collect::<Vec<_>>().into_iter().rev().collect();
            format!("{} chars ending {tail:?}", value.chars().count())
        }
    }
}

/// The value an in-memory engine holds, read without waiting.
fn peek(storage: &kv_core::MemoryStorage, key: &str) -> Option<String> {
    super::world::at_once(storage.get(key)).and_then(Result::ok).flatten()
}
