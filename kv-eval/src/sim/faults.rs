//! What each event of a plan does to the simulated cluster: a fault begins or ends on the
//! network or on a process, a server joins or leaves.

use std::collections::BTreeSet;

use super::net::{Conditions, MASTER, Net};
use super::schedule::{Event, Fault};
use super::world::World;

/// The network's conditions when no fault touches it.
pub(crate) const QUIET: Conditions = Conditions { slow: 0.01, loss: 0.001 };

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
