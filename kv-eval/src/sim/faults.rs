//! What each event of a plan does to the simulated cluster: a fault begins or ends on the
//! network or on a process, a server joins or leaves.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::client::{Recorder, SimClient};
use super::health::lock;
use super::net::{Conditions, MASTER, Net};
use super::schedule::{Episode, Event, Fault};
use super::world::World;
use crate::harness::history::Input;

/// The network's conditions when no fault touches it.
pub(crate) const QUIET: Conditions = Conditions { slow: 0.01, loss: 0.001 };

/// Plays one fault: begins it, holds it (acting on the cluster meanwhile, for the faults that
/// do), and ends it.
pub(crate) async fn play(
    world: &Mutex<World>,
    net: &Net,
    recorder: &Arc<Recorder>,
    episode: &Episode,
    everyone: &[String],
    crashed: &mut BTreeSet<String>,
) {
    let event = Event::Begin(episode.fault.clone());
    net.trace(format_args!("event {event:?}"));
    apply(&mut lock(world), net, &event, everyone, crashed);
    let began = net.elapsed();
    let until_end = || (began + episode.hold).saturating_sub(net.elapsed());
    // A server this fault crashed, started again at its end; the links it stalled.
    let mut restart: Vec<String> = Vec::new();
    let mut unstall: Vec<(String, String)> = Vec::new();
    let mut stale_reader = None;
    // The links a partition cut, healed at its end; the client on its majority side.
    let mut uncut: Vec<(String, String)> = Vec::new();
    let mut majority_writer = None;
    match &episode.fault {
        Fault::CrashAmidLoss { server, .. } => {
            tokio::time::sleep(episode.hold / 2).await;
            // The primary of a hot key, if there is one: its aborted writes are the point.
            let primary = replica(world, "a0", 0).unwrap_or_else(|| server.clone());
            restart.extend(crash(world, net, &primary, "amid the losses"));
        }
        Fault::StalledInstall { key, joiner, leave, stall } => {
            let primary = replica(world, key, 0);
            if let Some(secondary) = replica(world, key, 1) {
                // Its pings too: the shard master stops waiting for it, and goes on with the
                // senders, while it still serves under the old configuration.
                net.trace(format_args!(
                    "event installs and pings to {secondary}, a secondary of {key:?}, stall"
                ));
                net.set_stalled(MASTER, &secondary, Some((&["install", "ping"], *stall)));
                unstall.push((MASTER.to_owned(), secondary.clone()));
                // A client whose map is out of date reads the key there meanwhile.
                let endpoint = lock(world).client("client-stale");
                let net = Arc::clone(&endpoint.net);
                let mut reader = SimClient::new(endpoint, 902, 0x57a1e, Arc::clone(recorder));
                let (key, end) = (key.clone(), began + *stall + Duration::from_millis(1_500));
                stale_reader = Some(tokio::spawn(async move {
                    while net.elapsed() < end {
                        reader.read_at(&key, &secondary).await;
                        tokio::time::sleep(Duration::from_millis(3)).await;
                    }
                }));
            }
            {
                let mut world = lock(world);
                let spare = can_leave(&world);
                match primary {
                    Some(primary) if *leave && spare && world.is_running(&primary) => {
                        net.trace(format_args!("event {primary}, the primary of {key:?}, leaves"));
                        world.leave(&primary);
                    }
                    _ => {
                        net.trace(format_args!("event {joiner} joins"));
                        world.start_server(joiner);
                    }
                }
            }
            // Past the shard master giving up on it, and its resend of the install.
            tokio::time::sleep(*stall + Duration::from_millis(1_500)).await;
        }
        Fault::StaleBatch { joiner, stall, isolate } => {
            for from in everyone.iter().filter(|from| *from != joiner) {
                net.set_stalled(from, joiner, Some((&["transfer"], *stall)));
                unstall.push((from.clone(), joiner.clone()));
            }
            net.trace(format_args!("event {joiner} joins, its hand-offs stalled"));
            lock(world).start_server(joiner);
            let deadline = net.elapsed() + Duration::from_secs(30);
            while net.elapsed() < deadline {
                let node = lock(world).node(joiner);
                let status = match node {
                    Some(node) => node.status().await.ok(),
                    None => None,
                };
                if status.is_some_and(|s| s.epoch > 0 && s.incoming_slots == 0) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Cut off from everyone, it is failed over as silent once the join gives way; healed,
            // it learns so, and joins again.
            net.trace(format_args!("event {joiner} holds its slots, and is isolated"));
            let isolation = Fault::Isolate { server: joiner.clone() };
            apply(&mut lock(world), net, &Event::Begin(isolation.clone()), everyone, crashed);
            tokio::time::sleep(*isolate).await;
            apply(&mut lock(world), net, &Event::End(isolation), everyone, crashed);
            // The batches resent during its first join are still on their way.
            tokio::time::sleep(*stall + Duration::from_secs(2)).await;
        }
        Fault::CrashAfterLeave { key, stall, after } => {
            let (primary, secondary) = (replica(world, key, 0), replica(world, key, 1));
            let spare = can_leave(&lock(world));
            if let (Some(primary), Some(secondary), true) = (primary, secondary, spare) {
                for to in everyone.iter().filter(|to| **to != primary) {
                    net.set_stalled(&primary, to, Some((&["replicate"], *stall)));
                    unstall.push((primary.clone(), to.clone()));
                }
                net.trace(format_args!(
                    "event {secondary}, a secondary of {key:?}, leaves; {primary} stalls"
                ));
                lock(world).leave(&secondary);
                if poll(net, Duration::from_secs(30), || !lock(world).is_running(&secondary)).await {
                    tokio::time::sleep(*after).await;
                    restart.extend(crash(world, net, &primary, "after the leave returned"));
                }
            }
        }
        Fault::CrashAfterAbort { after, .. } => {
            let aborted = || recorder.first_failed_write(began).is_some();
            if poll(net, episode.hold, aborted).await
                && let Some((_, primary)) = recorder.first_failed_write(began)
            {
                tokio::time::sleep(*after).await;
                restart.extend(crash(world, net, &primary, "after it failed a write"));
            }
        }
        Fault::UnevenLeave { key, spare, stall, after } => {
            restart = uneven_leave(world, net, key, spare, *stall, *after, &mut unstall).await;
        }
        Fault::Minority { key } => {
            if let Some(primary) = replica(world, key, 0) {
                let endpoint = lock(world).client("client-majority");
                let servers = everyone.iter().filter(|other| !other.starts_with("client-"));
                for other in servers.chain([&endpoint.me]).filter(|other| **other != primary) {
                    net.set_cut(&primary, other, true);
                    net.set_cut(other, &primary, true);
                    uncut.push((primary.clone(), other.clone()));
                }
                net.trace(format_args!(
                    "event {primary}, the primary of {key:?}, is cut from the servers and the shard \
                     master; the clients still reach it"
                ));
                let net = Arc::clone(&endpoint.net);
                let mut writer = SimClient::new(endpoint, 903, 0x3170_21e7, Arc::clone(recorder));
                let (key, end) = (key.clone(), began + episode.hold);
                majority_writer = Some(tokio::spawn(async move {
                    let mut n = 0;
                    while net.elapsed() < end {
                        n += 1;
                        writer.run(&key, Input::Append(format!("m{n};"))).await;
                        tokio::time::sleep(Duration::from_millis(3)).await;
                    }
                }));
            }
        }
        _ => {}
    }
    tokio::time::sleep(until_end()).await;
    let event = Event::End(episode.fault.clone());
    net.trace(format_args!("event {event:?}"));
    apply(&mut lock(world), net, &event, everyone, crashed);
    for (a, b) in uncut {
        net.set_cut(&a, &b, false);
        net.set_cut(&b, &a, false);
    }
    for task in [stale_reader, majority_writer].into_iter().flatten() {
        let _ = task.await;
    }
    for (from, to) in unstall {
        net.set_stalled(&from, &to, None);
    }
    for server in restart {
        lock(world).start_server(&server);
    }
}

/// What [`Fault::UnevenLeave`] does; returns the servers it crashed.
async fn uneven_leave(
    world: &Mutex<World>,
    net: &Net,
    key: &str,
    spare: &str,
    stall: Duration,
    after: Duration,
    unstall: &mut Vec<(String, String)>,
) -> Vec<String> {
    let mut crashed = Vec::new();
    let Some(factor) = lock(world).config().map(|config| config.replication().factor) else { return crashed };
    // The crashed member and the leaver go; the replicas stay.
    let members = || lock(world).config().map_or(0, |config| config.len());
    if members() < factor + 2 {
        net.trace(format_args!("event {spare} joins, for a leave after a crash"));
        lock(world).start_server(spare);
        let joined = || lock(world).config().is_some_and(|config| config.id_of(spare).is_some());
        if !poll(net, Duration::from_secs(30), joined).await || members() < factor + 2 {
            return crashed;
        }
        // Its copies catch up.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // The member before the key's primary in the ring: its slots go to that primary.
    let Some(config) = lock(world).config() else { return crashed };
    let Some((primary, _)) = config.replicas(key).first().map(|&(id, address)| (id, address.to_owned()))
    else {
        return crashed;
    };
    let ring: Vec<(kv_shard::ServerId, &str)> = config.members().collect();
    let Some(at) = ring.iter().position(|&(id, _)| id == primary) else { return crashed };
    let before = ring[(at + ring.len() - 1) % ring.len()].1.to_owned();
    let Some(victim) = crash(world, net, &before, "to make slot counts uneven") else { return crashed };
    crashed.push(victim);
    let failed = || lock(world).config().is_some_and(|config| config.id_of(&before).is_none());
    if !poll(net, Duration::from_secs(10), failed).await {
        return crashed;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The primary's first secondary leaves; the one that replaces it catches up slowly.
    let Some(config) = lock(world).config() else { return crashed };
    let replicas: Vec<String> = config.replicas(key).iter().map(|(_, a)| (*a).to_owned()).collect();
    let (Some(primary), Some(leaver)) = (replicas.first().cloned(), replicas.get(1).cloned()) else {
        return crashed;
    };
    let Ok(next) = config.leave(&leaver) else { return crashed };
    let Some(successor) = next.replicas(key).get(1).map(|(_, a)| (*a).to_owned()) else { return crashed };
    if !can_leave(&lock(world)) || !lock(world).is_running(&leaver) {
        return crashed;
    }
    net.set_stalled(&primary, &successor, Some((&["replicate"], stall)));
    unstall.push((primary.clone(), successor.clone()));
    net.trace(format_args!(
        "event {leaver}, the first secondary of {key:?}, leaves; {primary} → {successor} stalls"
    ));
    lock(world).leave(&leaver);
    if poll(net, Duration::from_secs(40), || !lock(world).is_running(&leaver)).await {
        tokio::time::sleep(after).await;
        crashed.extend(crash(world, net, &primary, "after the leave returned"));
        // The stall outlasts the primary's failover, installed at the successor: what it held,
        // let through at the end of the fault, then comes from a primary no longer.
        let failed = || lock(world).config().filter(|config| config.id_of(&primary).is_none());
        if poll(net, Duration::from_secs(10), || failed().is_some()).await
            && let Some(epoch) = failed().map(|config| config.epoch())
        {
            let deadline = net.elapsed() + Duration::from_secs(10);
            while net.elapsed() < deadline {
                let node = lock(world).node(&successor);
                match node {
                    Some(node) if node.status().await.is_ok_and(|status| status.epoch < epoch) => {}
                    _ => break,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    crashed
}

/// Whether a member may leave: the members are more than the replicas.
fn can_leave(world: &World) -> bool {
    world.config().is_some_and(|config| config.members().count() > config.replication().factor)
}

/// The `index`-th replica of `key` (0: its primary) in the shard master's map.
fn replica(world: &Mutex<World>, key: &str, index: usize) -> Option<String> {
    let config = lock(world).config()?;
    config.replicas(key).get(index).map(|(_, address)| (*address).to_owned())
}

/// Crashes `server` if it runs; the server crashed.
fn crash(world: &Mutex<World>, net: &Net, server: &str, why: &str) -> Option<String> {
    let mut world = lock(world);
    if !world.is_running(server) {
        return None;
    }
    net.trace(format_args!("event {server} crashes {why}"));
    world.crash(server);
    Some(server.to_owned())
}

/// Waits, looking every millisecond, until `done` holds or `limit` has passed; whether it held.
async fn poll(net: &Net, limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = net.elapsed() + limit;
    while !done() {
        if net.elapsed() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}

pub(crate) fn apply(
    world: &mut World,
    net: &Net,
    event: &Event,
    everyone: &[String],
    crashed: &mut BTreeSet<String>,
) {
    let cut_both = |a: &str, b: &str, cut: bool| {
        net.set_cut(a, b, cut);
        net.set_cut(b, a, cut);
    };
    match event {
        Event::Join(server) => world.start_server(server),
        Event::Leave(server) => world.leave(server),
        Event::Begin(fault) | Event::End(fault) => {
            let on = matches!(event, Event::Begin(_));
            match fault {
                Fault::Lossy { from, to, rate } => net.set_flaky(from, to, if on { *rate } else { 0.0 }),
                Fault::Slow { share } => {
                    net.set_conditions(if on { Conditions { slow: *share, ..QUIET } } else { QUIET })
                }
                Fault::CutOneWay { from, to } => net.set_cut(from, to, on),
                Fault::CutBetween { a, b } => cut_both(a, b, on),
                Fault::CutFromMaster { server } => cut_both(server, MASTER, on),
                Fault::Isolate { server } => {
                    for other in everyone.iter().filter(|other| *other != server) {
                        cut_both(server, other, on);
                    }
                }
                Fault::Pause { server } => world.set_paused(server, on),
                Fault::PauseMaster => world.set_paused(MASTER, on),
                Fault::Crash { server } => {
                    if on && world.is_running(server) {
                        world.crash(server);
                        crashed.insert(server.clone());
                    } else if !on && crashed.remove(server) {
                        world.start_server(server);
                    }
                }
                Fault::CrashAll => {
                    if on {
                        let running: Vec<String> =
                            world.running().map(|(address, _)| address.clone()).collect();
                        for server in running {
                            world.crash(&server);
                            crashed.insert(server);
                        }
                    } else {
                        for server in std::mem::take(crashed) {
                            world.start_server(&server);
                        }
                    }
                }
                Fault::CrashAmidLoss { loss, .. } | Fault::CrashAfterAbort { loss, .. } => {
                    // The crash itself, and the restart, are the episode loop's.
                    net.set_conditions(if on { Conditions { loss: *loss, ..QUIET } } else { QUIET });
                }
                // What these do, `play` does.
                Fault::StalledInstall { .. }
                | Fault::CrashAfterLeave { .. }
                | Fault::StaleBatch { .. }
                | Fault::UnevenLeave { .. }
                | Fault::Minority { .. } => {}
                Fault::CrashMaster => {
                    if on {
                        world.crash_master();
                    } else {
                        world.start_master();
                    }
                }
            }
        }
    }
}
