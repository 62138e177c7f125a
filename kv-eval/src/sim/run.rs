//! One simulated run, start to end: a cluster of the setting's shape on a fresh single-threaded
//! tokio runtime at paused time, the seed's plan of faults, joins and leaves played against a
//! workload of clients on a few hot keys, then the heal, the liveness window, the wait for
//! convergence, the final reads and the checks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::checks::{LIVENESS_BOUND, check_history, check_split_brain, longest_write_gap};
use super::client::{Recorder, SimClient};
use super::faults::{QUIET, apply, play};
use super::health::{health, lock, replicas_agree, until, until_healthy};
use super::net::{MASTER, Net};
use super::schedule::{Event, Fault, HOT_KEYS, LASTING_CUT, Plan, PlanOptions, Setting};
use super::trace::Trace;
use super::world::World;
use crate::harness::history::{Input, Outcome, Output};

/// Clients of the workload.
const CLIENTS: u64 = 4;
/// The longest the cluster may take to be healthy again (every running server a member, every
/// copy caught up, nothing moving) once a fault has ended.
pub(crate) const HEALTH_BOUND: Duration = Duration::from_secs(15);
/// How long the workload goes on after the last fault.
const LIVENESS_WINDOW: Duration = Duration::from_secs(5);
/// The longest the replicas may take to agree once writes stop (eventual mode's background
/// sync runs every 2 s).
const CONVERGENCE_BOUND: Duration = Duration::from_secs(10);

/// Options of a run that are not drawn from its seed.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Keep the trace's text, to print it.
    pub trace: bool,
    /// Let the shard master crash among the faults too (it restarts from the state it saved).
    pub master_crashes: bool,
    /// The servers keep their disks across crashes ([`super::disk`]): a restarted one comes back
    /// with its data, and a whole-cluster crash joins the faults.
    pub durable: bool,
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The seed.
    pub seed: u64,
    /// The setting.
    pub setting: Setting,
    /// What went wrong: nothing if the run passed.
    pub problems: Vec<String>,
    /// The hash of the whole trace, and its number of events.
    pub trace_hash: u64,
    /// Events in the trace.
    pub events: u64,
    /// Operations recorded: ok, failed, unknown.
    pub ops: (usize, usize, usize),
    /// The longest any key went without a successful write after the heal.
    pub longest_gap: Duration,
    /// The longest any key went without a successful write during the lasting cut, if the run
    /// had one.
    pub longest_gap_under_cut: Option<Duration>,
    /// The simulated time the run took.
    pub simulated: Duration,
    /// The wall-clock time it took.
    pub wall: Duration,
    /// The plan, one event per line.
    pub plan: Vec<String>,
    /// The trace's text, if asked for.
    pub trace: Vec<String>,
}

impl RunReport {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Keys written only by appends (after a preload).
fn append_keys() -> Vec<String> {
    HOT_KEYS.iter().filter(|key| key.starts_with('a')).map(|&key| key.to_owned()).collect()
}

/// Keys written by puts.
fn put_keys() -> Vec<String> {
    HOT_KEYS.iter().filter(|key| key.starts_with('p')).map(|&key| key.to_owned()).collect()
}

fn preload(key: &str) -> String {
    format!("init-{key};")
}

/// Runs `seed` under `setting`.
pub fn run(seed: u64, setting: Setting, options: RunOptions) -> RunReport {
    let wall = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build();
    let mut report = match runtime {
        Ok(runtime) if options.trace => {
            // The protocol's log goes into the trace's text, at simulation time.
            let trace = Arc::new(Trace::new(true));
            let start = runtime.block_on(async { tokio::time::Instant::now() });
            let writer = LogWriter { trace: Arc::clone(&trace), start };
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .without_time()
                .with_ansi(false)
                .with_max_level(tracing::Level::DEBUG)
                .finish();
            tracing::subscriber::with_default(subscriber, || {
                runtime.block_on(simulate(seed, setting, options, trace))
            })
        }
        Ok(runtime) => runtime.block_on(simulate(seed, setting, options, Arc::new(Trace::new(false)))),
        Err(err) => RunReport {
            seed,
            setting,
            problems: vec![format!("no runtime: {err}")],
            trace_hash: 0,
            events: 0,
            ops: (0, 0, 0),
            longest_gap: Duration::ZERO,
            longest_gap_under_cut: None,
            simulated: Duration::ZERO,
            wall: Duration::ZERO,
            plan: Vec::new(),
            trace: Vec::new(),
        },
    };
    report.wall = wall.elapsed();
    report
}

async fn simulate(seed: u64, setting: Setting, options: RunOptions, trace: Arc<Trace>) -> RunReport {
    let net = Net::new(seed, QUIET, Arc::clone(&trace));
    let plan_options = PlanOptions { master_crashes: options.master_crashes, durable: options.durable };
    let plan = Plan::draw(seed, setting, plan_options);
    let mut world = World::new(Arc::clone(&net), setting.replication(), plan.rates.clone(), options.durable);
    let recorder = Arc::new(Recorder::default());
    let mut problems = Vec::new();

    world.start_master();
    for server in &plan.initial {
        world.start_server(server);
        if !until(&net, Duration::from_secs(60), || {
            world.config().is_some_and(|config| config.id_of(server).is_some())
        })
        .await
        {
            problems.push(format!("{server} did not join within a minute"));
        }
    }
    // Let the copies of the last join catch up.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut loader =
        SimClient::new(world.client("client-preload"), 900, seed ^ 0xc0ffee, Arc::clone(&recorder));
    for key in append_keys() {
        if !matches!(loader.run(&key, Input::Put(preload(&key))).await, Outcome::Ok(_)) {
            problems.push(format!("the preload of {key} failed"));
        }
    }

    let start = net.elapsed();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for process in 0..CLIENTS {
        let mut client = SimClient::new(
            world.client(&format!("client-{process}")),
            process,
            seed.wrapping_mul(31).wrapping_add(process),
            Arc::clone(&recorder),
        );
        let stop = Arc::clone(&stop);
        clients.push(tokio::spawn(async move {
            let keys: Vec<String> = append_keys().into_iter().chain(put_keys()).collect();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = &keys[client.random_below(keys.len() as u64) as usize];
                let read = client.random_below(10) < 4;
                n += 1;
                let input = match (read, key.starts_with('a')) {
                    (true, _) => Input::Get,
                    (false, true) => Input::Append(format!("c{process}.{n};")),
                    (false, false) => Input::Put(format!("c{process}.{n};")),
                };
                client.run(key, input).await;
                let think = client.random_below(3_000);
                tokio::time::sleep(Duration::from_micros(think)).await;
            }
        }));
    }

    let everyone: Vec<String> = plan
        .rates
        .keys()
        .cloned()
        .chain([MASTER.to_owned()])
        .chain((0..CLIENTS).map(|p| format!("client-{p}")))
        .collect();
    let world = Arc::new(Mutex::new(world));
    // Joins and leaves at their times, whatever the faults do.
    let membership = tokio::spawn({
        let (world, net) = (Arc::clone(&world), Arc::clone(&net));
        let changes = plan.membership.clone();
        async move {
            for (at, event) in changes {
                tokio::time::sleep((start + at).saturating_sub(net.elapsed())).await;
                net.trace(format_args!("event {event:?}"));
                apply(&mut lock(&world), &net, &event, &[], &mut BTreeSet::new());
            }
        }
    });
    // The faults, one at a time, each once the cluster is healthy again.
    let mut crashed = BTreeSet::new();
    let mut recoveries = Vec::new();
    for episode in &plan.episodes {
        let began = net.elapsed();
        if !until_healthy(&world, &net, HEALTH_BOUND).await {
            problems.push(format!(
                "not healthy {:.0} s after the last fault ended: {}",
                HEALTH_BOUND.as_secs_f64(),
                health(&world).await.err().unwrap_or_default()
            ));
            break;
        }
        recoveries.push(net.elapsed() - began);
        tokio::time::sleep(episode.gap).await;
        play(&world, &net, &recorder, episode, &everyone, &mut crashed).await;
    }
    // A lasting cut between a primary and a secondary: the writes must go on around it.
    let mut under_cut = None;
    if plan.lasting_cut {
        let began = net.elapsed();
        if until_healthy(&world, &net, HEALTH_BOUND).await {
            recoveries.push(net.elapsed() - began);
            let pair = lock(&world).config().and_then(|config| {
                let replicas: Vec<String> =
                    config.replicas("p0").into_iter().map(|(_, a)| a.to_owned()).collect();
                Some((replicas.first()?.clone(), replicas.get(1)?.clone()))
            });
            if let Some((a, b)) = pair {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let event = Event::Begin(Fault::CutBetween { a, b });
                net.trace(format_args!("event {event:?} (lasting)"));
                apply(&mut lock(&world), &net, &event, &everyone, &mut crashed);
                let from = net.elapsed();
                tokio::time::sleep(LASTING_CUT).await;
                under_cut = Some((from, net.elapsed()));
            }
        } else {
            problems.push(format!(
                "not healthy {:.0} s after the last fault ended: {}",
                HEALTH_BOUND.as_secs_f64(),
                health(&world).await.err().unwrap_or_default()
            ));
        }
    }
    // Joins, leaves and shard master crashes at their times: the last of them before the heal,
    // which starts a crashed shard master again too (liveness is measured from a whole cluster).
    if membership.await.is_err() {
        problems.push("the membership changes panicked".to_owned());
    }
    net.heal(QUIET);
    {
        let mut world = lock(&world);
        world.resume_all();
        world.start_master();
    }
    net.trace(format_args!("healed"));
    let healed = net.elapsed();
    let began = net.elapsed();
    // A server failed over for a lasting cut may not join again for a while.
    let bound = if under_cut.is_some() { HEALTH_BOUND + kv_shard::LONGEST_HOLD_OFF } else { HEALTH_BOUND };
    if until_healthy(&world, &net, bound).await {
        recoveries.push(net.elapsed() - began);
    } else {
        problems.push(format!(
            "not healthy {:.0} s after the last fault ended: {}",
            bound.as_secs_f64(),
            health(&world).await.err().unwrap_or_default()
        ));
    }
    // The liveness window: the workload goes on after the heal.
    let end_at = (healed + LIVENESS_WINDOW).max(net.elapsed() + Duration::from_secs(1));
    tokio::time::sleep(end_at.saturating_sub(net.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        if client.await.is_err() {
            problems.push("a client panicked".to_owned());
        }
    }
    let stopped = net.elapsed();
    let writing_keys: Vec<String> = append_keys().into_iter().chain(put_keys()).collect();
    let (longest_gap, gap_key) =
        longest_write_gap(&recorder.history(), &writing_keys, healed, end_at.min(stopped));
    if longest_gap > LIVENESS_BOUND {
        problems.push(format!(
            "liveness: after the heal, {gap_key:?} went {:.2} s without a successful write (bound {:.0} s)",
            longest_gap.as_secs_f64(),
            LIVENESS_BOUND.as_secs_f64()
        ));
    }
    let longest_gap_under_cut = under_cut.map(|(from, to)| {
        let (gap, key) = longest_write_gap(&recorder.history(), &writing_keys, from, to);
        if gap > LIVENESS_BOUND {
            problems.push(format!(
                "liveness: under the lasting cut, {key:?} went {:.2} s without a successful write (bound {:.0} s)",
                gap.as_secs_f64(),
                LIVENESS_BOUND.as_secs_f64()
            ));
        }
        gap
    });

    let Some(mut world) =
        Arc::into_inner(world).map(|world| world.into_inner().unwrap_or_else(PoisonError::into_inner))
    else {
        unreachable!("the membership task, the only other holder, has ended");
    };
    problems.append(&mut world.problems);

    // Writes have stopped: the replicas converge.
    let converged = until(&net, CONVERGENCE_BOUND, || replicas_agree(&world, &writing_keys).is_none()).await;
    if !converged {
        let detail = replicas_agree(&world, &writing_keys).unwrap_or_default();
        problems.push(format!(
            "replicas differ {:.0} s after the writes stopped: {detail}",
            CONVERGENCE_BOUND.as_secs_f64()
        ));
    }

    // The final values, read at the primaries, recorded too.
    let mut reader = SimClient::new(world.client("client-final"), 901, seed ^ 0xf1a1, Arc::clone(&recorder));
    let mut finals = BTreeMap::new();
    for key in &writing_keys {
        let value = match reader.run(key, Input::Get).await {
            Outcome::Ok(Output::Value(value)) => value,
            other => {
                problems.push(format!("the final read of {key} failed: {other:?}"));
                None
            }
        };
        finals.insert(key.clone(), value);
    }

    let history = recorder.history();
    problems.extend(check_history(setting.promises(), &history, &append_keys(), &finals, preload));
    problems.extend(check_split_brain(&history, &recorder.acks(), &finals));
    let simulated = net.elapsed();
    world.shut_down();
    net.trace(format_args!("end"));
    let (trace_hash, events) = trace.digest();
    RunReport {
        seed,
        setting,
        problems,
        trace_hash,
        events,
        ops: history.counts(),
        longest_gap,
        longest_gap_under_cut,
        simulated,
        wall: Duration::ZERO,
        plan: plan.lines(),
        trace: trace.take_lines(),
    }
}

/// Writes the protocol's log lines into the trace.
#[derive(Clone)]
struct LogWriter {
    trace: Arc<Trace>,
    start: tokio::time::Instant,
}

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.trace.keeps_text() {
            self.trace.log(self.start.elapsed(), &String::from_utf8_lossy(buf));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
