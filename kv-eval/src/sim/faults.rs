//! What each event of a plan does to the simulated cluster: a fault begins or ends on the
//! network or on a process, a server joins or leaves.

use std::collections::BTreeSet;
use std::sync::Mutex;

use super::health::lock;
use super::net::{Conditions, MASTER, Net};
use super::schedule::{Episode, Event, Fault};
use super::world::World;

/// The network's conditions when no fault touches it.
pub(crate) const QUIET: Conditions = Conditions { slow: 0.01, loss: 0.001 };

/// Plays one fault: begins it, holds it, and ends it.
pub(crate) async fn play(
    world: &Mutex<World>,
    net: &Net,
    episode: &Episode,
    everyone: &[String],
    crashed: &mut BTreeSet<String>,
) {
    let event = Event::Begin(episode.fault.clone());
    net.trace(format_args!("event {event:?}"));
    apply(&mut lock(world), net, &event, everyone, crashed);
    let mut crashed_amid = None;
    if let Fault::CrashAmidLoss { server, .. } = &episode.fault {
        tokio::time::sleep(episode.hold / 2).await;
        {
            let mut world = lock(world);
            // The primary of a hot key, if there is one: its aborted writes are the point.
            let primary = world
                .config()
                .and_then(|config| config.replicas("a0").first().map(|(_, address)| (*address).to_owned()));
            let server = primary.unwrap_or_else(|| server.clone());
            if world.is_running(&server) {
                net.trace(format_args!("event {server} crashes amid the losses"));
                world.crash(&server);
                crashed_amid = Some(server);
            }
        }
        tokio::time::sleep(episode.hold - episode.hold / 2).await;
    } else {
        tokio::time::sleep(episode.hold).await;
    }
    let event = Event::End(episode.fault.clone());
    net.trace(format_args!("event {event:?}"));
    apply(&mut lock(world), net, &event, everyone, crashed);
    if let Some(server) = crashed_amid {
        lock(world).start_server(&server);
    }
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
                Fault::CrashAmidLoss { loss, .. } => {
                    // The crash itself, and the restart, are the episode loop's.
                    net.set_conditions(if on { Conditions { loss: *loss, ..QUIET } } else { QUIET });
                }
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
