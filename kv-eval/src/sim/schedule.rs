//! What a simulated run does, drawn from its seed before it starts: the settings' cluster, the
//! clock rates, the faults and their times, the joins and leaves. Pure: the same seed and
//! setting give the same plan.
//!
//! The faults come one at a time (the protocol's guarantees are for one failure at a time): a
//! fault holds for a while and ends (a crashed server is started again, empty), and the next
//! one begins a short gap after the cluster is *healthy* again (no leave under way, every
//! running server a member, every copy caught up, nothing moving): the simulator waits for
//! that, within a bound, and a cluster that does not get there is a failed run. Joins and
//! leaves fall in the first seconds, whatever the faults do. With two replicas or more, half the
//! plans end on a *lasting cut*: once the cluster is healthy again, the link between a primary
//! and one of its secondaries is cut both ways for [`LASTING_CUT`], a fault the protocol must
//! work around rather than wait out.
//! After the last fault the workload goes on for the liveness window.
//!
//! Faults added after others are drawn from streams of their own and placed last, so that the
//! seeds kept as regression tests keep the stories they were kept for.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use kv_shard::{Consistency, Replication};
use rand::rngs::Xoshiro256PlusPlus;

use super::checks::Promises;
use rand::{RngExt, SeedableRng};

/// A cluster setting the simulator runs: consistency, replication factor, synchronous
/// secondaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// Strong or eventual.
    pub consistency: Consistency,
    /// Replicas per slot.
    pub factor: usize,
    /// In eventual mode, the secondaries that apply a write before it is acknowledged.
    pub sync_replicas: usize,
}

impl Setting {
    /// The settings CI runs, in order.
    pub fn all() -> Vec<Setting> {
        ["strong-r1", "strong-r2", "strong-r3", "eventual-r2", "eventual-r3", "eventual-r3-sync1"]
            .iter()
            .filter_map(|name| name.parse().ok())
            .collect()
    }

    /// The replication settings of the cluster.
    pub fn replication(&self) -> Replication {
        Replication {
            factor: self.factor,
            consistency: self.consistency,
            sync_replicas: self.sync_replicas,
            sync_interval: Duration::from_secs(2),
        }
    }

    /// Whether the store promises that no acknowledged write is lost under one failure.
    pub fn keeps_acknowledged(&self) -> bool {
        self.consistency == Consistency::Strong || self.sync_replicas > 0
    }

    /// What the store promises in this setting, for the checks.
    pub fn promises(&self) -> Promises {
        Promises {
            linearizable: self.consistency == Consistency::Strong,
            keeps_acknowledged: self.keeps_acknowledged(),
        }
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-r{}", self.consistency, self.factor)?;
        if self.consistency == Consistency::Eventual && self.sync_replicas > 0 {
            write!(f, "-sync{}", self.sync_replicas)?;
        }
        Ok(())
    }
}

impl FromStr for Setting {
    type Err = String;

    /// `strong-r3`, `eventual-r2`, `eventual-r3-sync1`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected strong-rN or eventual-rN[-syncK]");
        let mut parts = s.split('-');
        let consistency: Consistency = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let factor: usize =
            parts.next().and_then(|p| p.strip_prefix('r')).and_then(|n| n.parse().ok()).ok_or_else(bad)?;
        let sync_replicas = match parts.next() {
            None => 0,
            Some(p) => p.strip_prefix("sync").and_then(|n| n.parse().ok()).ok_or_else(bad)?,
        };
        if parts.next().is_some() || factor == 0 || factor > 3 {
            return Err(bad());
        }
        let setting = Setting { consistency, factor, sync_replicas };
        setting.replication().validate().map_err(|err| format!("{s:?}: {err}"))?;
        Ok(setting)
    }
}

/// One fault, with what it acts on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Fault {
    /// The link from one server to another loses this share of its messages.
    Lossy { from: String, to: String, rate: f64 },
    /// Every link delays a share of its messages by tens of milliseconds (they are reordered).
    Slow { share: f64 },
    /// The link from one server to another is cut (one way).
    CutOneWay { from: String, to: String },
    /// Two servers cannot reach each other, while both reach the shard master and the rest.
    CutBetween { a: String, b: String },
    /// A server is cut from the shard master only.
    CutFromMaster { server: String },
    /// A server can reach no one, and no one it.
    Isolate { server: String },
    /// A server's process is stopped, with what is sent to it buffered.
    Pause { server: String },
    /// A server's process crashes (its memory is gone); it is started again at the end.
    Crash { server: String },
    /// Every server's process crashes at once (durable runs: their disks stay); they are all
    /// started again at the end.
    CrashAll,
    /// The shard master's process is stopped.
    PauseMaster,
    /// The shard master crashes, and restarts from the state it saved.
    CrashMaster,
    /// Every link loses this share of its messages, and half-way through a server crashes (it
    /// is started again at the end): the primary of a hot key, or else `server`. Writes whose
    /// prepares were lost at one secondary are aborted, later writes of the same keys made, then
    /// their primary is gone.
    CrashAmidLoss { server: String, loss: f64 },
    /// A membership change moves slots while the shard master's installs and pings to the first
    /// secondary of the hot key `key` are stalled, each for `stall`: the key's primary leaves (if
    /// `leave`, and the members are more than the replicas), or else `joiner` joins. The shard
    /// master stops waiting for that secondary, and the senders hand off while it is still at
    /// the old epoch, where its primary's leases let it serve reads.
    StalledInstall { key: String, joiner: String, leave: bool, stall: Duration },
    /// The first secondary of the hot key `key` leaves while the replication from the key's
    /// primary is stalled (each batch held for `stall`), so the copy that replaces the leaver's
    /// catches up slowly; `after` the leave returns (the leaver stops), the primary crashes (it
    /// is started again at the end).
    CrashAfterLeave { key: String, stall: Duration, after: Duration },
    /// Every link loses `loss` of its messages, and `after` the first write a primary fails (the
    /// write is aborted), that primary crashes (it is started again at the end): its secondaries
    /// may hold the aborted write prepared, and later writes of the key.
    CrashAfterAbort { loss: f64, after: Duration },
    /// `joiner` joins while every hand-off batch sent to it is stalled for `stall`; once it holds
    /// its slots it is cut off from everyone for `isolate` (failed over as silent), and once healed
    /// joins again, when batches of its first join, resent meanwhile, are still on their way to it.
    StaleBatch { joiner: String, stall: Duration, isolate: Duration },
    /// Slot counts made uneven, then a leave whose predecessor gains none of the leaver's slots,
    /// so that its hand-offs do not wait for the copies it resets: the member before the
    /// primary `P` of the hot key `key` crashes (`spare` joins first if the members are too few)
    /// and is failed over, `P` taking its slots; then `P`'s first secondary leaves while the
    /// replication from `P` to the secondary that replaces it is stalled (each batch held for
    /// `stall`), and `after` the leave returns (the leaver stops), `P` crashes. Both crashed
    /// servers are started again at the end.
    UnevenLeave { key: String, spare: String, stall: Duration, after: Duration },
    /// A partition with clients on both sides: the primary of the hot key `key` is cut from
    /// every other server and from the shard master, both ways, while the clients still reach
    /// it; a client on the majority side (cut from that primary) appends to `key` meanwhile. The
    /// clients whose map is out of date go on writing at the cut-off primary, the majority-side
    /// client at the primary that replaces it.
    Minority { key: String },
}

/// What happens at a moment of the run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Event {
    /// A fault begins.
    Begin(Fault),
    /// A fault ends.
    End(Fault),
    /// A new server starts and joins.
    Join(String),
    /// A member leaves.
    Leave(String),
}

/// One fault of a run: it begins `gap` after the cluster is healthy again from the last one,
/// holds for `hold`, then ends.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Episode {
    pub(crate) gap: Duration,
    pub(crate) fault: Fault,
    pub(crate) hold: Duration,
}

/// A run's plan.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The servers started before the workload.
    pub(crate) initial: Vec<String>,
    /// Each server's clock rate.
    pub(crate) rates: BTreeMap<String, f64>,
    /// The faults, one after the other.
    pub(crate) episodes: Vec<Episode>,
    /// Joins and leaves, by time since the workload started, whatever the faults do.
    pub(crate) membership: Vec<(Duration, Event)>,
    /// Whether the faults end on a lasting cut between a primary and a secondary.
    pub(crate) lasting_cut: bool,
}

/// The address of the `i`-th server of a run.
pub(crate) fn server(i: usize) -> String {
    format!("10.0.0.{}:7000", i + 1)
}

/// Options of the plan that are not drawn.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlanOptions {
    /// Whether the shard master may crash among the faults too (it crashes in a third of the
    /// runs anyway, around a membership change).
    pub(crate) master_crashes: bool,
    /// Whether the servers keep their disks across crashes: then a crash is a fault a single
    /// replica survives too, and three runs in four add a crash of every server at once.
    pub(crate) durable: bool,
}

/// Faults per run.
const EPISODES: usize = 3;
/// The keys the workload writes most, which aimed faults pick from.
pub(crate) const HOT_KEYS: [&str; 6] = ["a0", "a1", "a2", "a3", "p0", "p1"];
/// How long a lasting cut holds.
pub(crate) const LASTING_CUT: Duration = Duration::from_secs(12);

impl Plan {
    /// The plan of `seed` for `setting`.
    pub(crate) fn draw(seed: u64, setting: Setting, options: PlanOptions) -> Plan {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x5eed_91a7);
        let n = setting.factor.max(2) + rng.random_range(0..=2usize);
        let initial: Vec<String> = (0..n).map(server).collect();
        let mut rates = BTreeMap::new();
        for i in 0..n + 2 {
            rates.insert(server(i), rng.random_range(0.98..1.02));
        }
        // Faults act on the initial servers and the one that may join.
        let targets: Vec<String> = (0..=n).map(server).collect();
        let mut episodes = Vec::new();
        for _ in 0..EPISODES {
            let pick = |rng: &mut Xoshiro256PlusPlus| targets[rng.random_range(0..targets.len())].clone();
            let a = pick(&mut rng);
            let mut b = pick(&mut rng);
            if b == a {
                b = targets[(targets.iter().position(|t| *t == a).unwrap_or(0) + 1) % targets.len()].clone();
            }
            // A crash loses the only copy with one replica: not a fault that setting survives.
            let mut kinds: Vec<u8> = (0..8).collect();
            if setting.factor > 1 || options.durable {
                kinds.extend([8, 8]);
            }
            if options.master_crashes {
                kinds.push(9);
            }
            let fault = match kinds[rng.random_range(0..kinds.len())] {
                0 => Fault::Lossy { from: a, to: b, rate: rng.random_range(0.1..0.6) },
                1 => Fault::Slow { share: rng.random_range(0.05..0.4) },
                2 => Fault::CutOneWay { from: a, to: b },
                3 => Fault::CutBetween { a, b },
                4 => Fault::CutFromMaster { server: a },
                5 => Fault::Isolate { server: a },
                6 => Fault::Pause { server: a },
                7 => Fault::PauseMaster,
                8 => Fault::Crash { server: a },
                _ => Fault::CrashMaster,
            };
            let gap = Duration::from_millis(rng.random_range(100..1_500));
            let hold = Duration::from_millis(rng.random_range(200..2_500));
            episodes.push(Episode { gap, fault, hold });
        }

        // A join and a leave, each maybe, in the first seconds, whatever the faults do.
        let mut membership = Vec::new();
        if rng.random_bool(0.5) {
            let at = Duration::from_millis(rng.random_range(300..6_000));
            membership.push((at, Event::Join(server(n))));
        }
        if rng.random_bool(0.4) && n > setting.factor {
            let at = Duration::from_millis(rng.random_range(300..6_000));
            membership.push((at, Event::Leave(initial[rng.random_range(0..n)].clone())));
        }
        // The shard master crashes in a third of the runs, around a membership change (or at
        // any time in the first seconds), and restarts from what it saved. From a stream of its
        // own, so the rest of each plan stays as it was.
        let mut master = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x3a57_e6c1);
        if master.random_bool(1.0 / 3.0) {
            let near = membership.get(master.random_range(0..membership.len().max(1))).map(|(at, _)| *at);
            let at = near.unwrap_or_default() + Duration::from_millis(master.random_range(0..1_500));
            let down = Duration::from_millis(master.random_range(200..2_500));
            membership.push((at, Event::Begin(Fault::CrashMaster)));
            membership.push((at + down, Event::End(Fault::CrashMaster)));
        }
        membership.sort_by_key(|(at, _)| *at);
        let lasting_cut = setting.factor > 1 && rng.random_bool(0.5);
        // Drawn from a stream of its own, after the rest: the plans above stay as they were.
        let mut extra = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x1055_c4a5);
        if setting.factor > 1 && extra.random_bool(0.5) {
            let server = targets[extra.random_range(0..targets.len())].clone();
            episodes.push(Episode {
                gap: Duration::from_millis(extra.random_range(100..1_000)),
                fault: Fault::CrashAmidLoss { server, loss: extra.random_range(0.05..0.3) },
                hold: Duration::from_millis(extra.random_range(600..2_000)),
            });
        }
        // A long cut from the shard master only: past the detector's limit for a member its
        // peers still hear, so it is failed over alive, holding leases, with its slots promoted
        // elsewhere. Drawn from a stream of its own too, and last: earlier faults stay as they were.
        let mut long = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x10c6_c075);
        if setting.factor > 1 && long.random_bool(0.5) {
            let server = targets[long.random_range(0..targets.len())].clone();
            episodes.push(Episode {
                gap: Duration::from_millis(long.random_range(100..1_000)),
                fault: Fault::CutFromMaster { server },
                hold: Duration::from_millis(long.random_range(3_000..5_000)),
            });
        }
        // A fault aimed at one step of the protocol (a hand-off, a catch-up, an abort), from a
        // stream of its own, last.
        let mut aimed = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0xa13e_d5f7);
        if setting.factor > 1 && aimed.random_bool(0.75) {
            let joiner = server(n + 1);
            let fault = match aimed.random_range(0..4) {
                0 => Fault::StalledInstall {
                    key: HOT_KEYS[aimed.random_range(0..HOT_KEYS.len())].to_owned(),
                    joiner,
                    leave: aimed.random_bool(0.5),
                    stall: Duration::from_millis(aimed.random_range(1_000..2_000)),
                },
                1 => Fault::CrashAfterLeave {
                    key: HOT_KEYS[aimed.random_range(0..HOT_KEYS.len())].to_owned(),
                    stall: Duration::from_millis(aimed.random_range(300..1_000)),
                    after: Duration::from_millis(aimed.random_range(0..50)),
                },
                3 => Fault::StaleBatch {
                    joiner,
                    // Longer than a hand-off batch's timeout (5 s), so that the first join's
                    // batches are resent, and resent again while the joiner is failed over.
                    stall: Duration::from_millis(aimed.random_range(7_500..9_000)),
                    isolate: Duration::from_millis(aimed.random_range(3_000..5_000)),
                },
                _ => Fault::CrashAfterAbort {
                    loss: aimed.random_range(0.05..0.3),
                    after: Duration::from_millis(aimed.random_range(0..30)),
                },
            };
            episodes.push(Episode {
                gap: Duration::from_millis(aimed.random_range(100..1_000)),
                fault,
                hold: Duration::from_millis(aimed.random_range(1_000..3_000)),
            });
        }
        // Slot counts made uneven before a leave (see `Fault::UnevenLeave`), in a third of the
        // runs with two replicas or more: from a stream of its own, last.
        let mut uneven = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x0e7e_11ea);
        if setting.factor > 1 && uneven.random_bool(1.0 / 3.0) {
            episodes.push(Episode {
                gap: Duration::from_millis(uneven.random_range(100..1_000)),
                fault: Fault::UnevenLeave {
                    key: HOT_KEYS[uneven.random_range(0..HOT_KEYS.len())].to_owned(),
                    spare: server(n + 2),
                    stall: Duration::from_millis(uneven.random_range(1_500..3_000)),
                    after: Duration::from_millis(uneven.random_range(0..300)),
                },
                hold: Duration::from_millis(uneven.random_range(1_000..2_000)),
            });
        }
        // A partition with clients on both sides (see `Fault::Minority`), past the failover of
        // the cut-off primary, in a third of the runs with two replicas or more: from a stream of
        // its own, last.
        let mut minority = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x3170_21e7);
        if setting.factor > 1 && minority.random_bool(1.0 / 3.0) {
            let appended: Vec<&str> = HOT_KEYS.iter().copied().filter(|key| key.starts_with('a')).collect();
            episodes.push(Episode {
                gap: Duration::from_millis(minority.random_range(100..1_000)),
                fault: Fault::Minority { key: appended[minority.random_range(0..appended.len())].to_owned() },
                hold: Duration::from_millis(minority.random_range(2_000..4_000)),
            });
        }
        // Durable runs: every server crashes at once, while the clients write, and all start
        // again with their disks. From a stream of its own, last.
        let mut durable = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0xd15c_0a11);
        if options.durable && durable.random_bool(0.75) {
            episodes.push(Episode {
                gap: Duration::from_millis(durable.random_range(100..1_000)),
                fault: Fault::CrashAll,
                hold: Duration::from_millis(durable.random_range(200..2_500)),
            });
        }
        Plan { initial, rates, episodes, membership, lasting_cut }
    }

    /// The plan, a line per fault or change.
    pub(crate) fn lines(&self) -> Vec<String> {
        let faults = self.episodes.iter().enumerate().map(|(i, e)| {
            format!(
                "fault {}: {:?} for {:.3} s, {:.3} s after the cluster is healthy",
                i + 1,
                e.fault,
                e.hold.as_secs_f64(),
                e.gap.as_secs_f64()
            )
        });
        let lasting = self.lasting_cut.then(|| {
            format!(
                "then: the link between the primary of p0 and its first secondary cut both ways for {:.0} s",
                LASTING_CUT.as_secs_f64()
            )
        });
        let changes =
            self.membership.iter().map(|(at, event)| format!("at {:.3} s: {event:?}", at.as_secs_f64()));
        faults.chain(lasting).chain(changes).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_print_alike() {
        for setting in Setting::all() {
            assert_eq!(setting.to_string().parse::<Setting>(), Ok(setting));
        }
        assert_eq!(Setting::all().len(), 6);
        assert!(
            "eventual-r2-sync1".parse::<Setting>().is_err(),
            "every secondary synchronous is strong mode"
        );
        assert!("strong-r0".parse::<Setting>().is_err());
    }

    #[test]
    fn a_plan_is_a_function_of_its_seed() {
        let setting: Setting = "strong-r3".parse().expect("a setting");
        let options = PlanOptions { master_crashes: false, durable: false };
        let a = Plan::draw(7, setting, options);
        let b = Plan::draw(7, setting, options);
        assert_eq!((&a.episodes, &a.membership, &a.initial), (&b.episodes, &b.membership, &b.initial));
        let c = Plan::draw(8, setting, options);
        assert!(a.episodes != c.episodes || a.initial != c.initial, "another seed, another plan");
        assert!((EPISODES..=EPISODES + 4).contains(&a.episodes.len()));
    }
}
