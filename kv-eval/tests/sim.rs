//! The deterministic simulator in CI: a budget of seeds across every setting must pass, and a
//! seed must replay exactly. `KV_SIM_SEEDS` sets the seeds per setting (default 90: 540 runs).
//! A failing seed prints the command that replays it; once understood and fixed, it joins the
//! regression seeds below.

use kv_eval::sim::{self, RunOptions, RunReport, Setting};

fn setting(name: &str) -> Setting {
    name.parse().expect("a setting")
}

fn failures(reports: &[RunReport]) -> Vec<String> {
    reports
        .iter()
        .filter(|report| !report.passed())
        .map(|report| {
            format!(
                "seed {} {}: {}\n  replay: kv-eval sim --seed {} --settings {} --trace",
                report.seed,
                report.setting,
                report.problems.join(" | "),
                report.seed,
                report.setting
            )
        })
        .collect()
}

/// Seeds that found a bug, with the setting they found it in: each must pass from now on.
const REGRESSIONS: &[(u64, &str, &str)] = &[
    (
        25,
        "strong-r2",
        "the shard master took a lost Status answer for a server with no copy catching up, ended a \
         leave's change while the new secondary of 2048 slots was still catching up (their \
         snapshots stalled), and the crash of their primary that followed lost \"a0\" whole",
    ),
    (
        47,
        "strong-r2",
        "as seed 25: a change ended on a lost Status answer with copies catching up, and a crash \
         after it lost \"a0\"",
    ),
    (
        7,
        "strong-r1",
        "a client used up its redirects while the shard master was down, then retried the server \
         that had handed its key off without fetching the map again, for the whole move wait: \
         \"a3\" went 4.36 s without a write after the heal",
    ),
    (
        1,
        "strong-r3",
        "a member crashed and restarted during a join; the join waited its whole move timeout for the \
     restarted (empty) member's copies, since it answered pings, and its slots took no writes",
    ),
    (
        9,
        "eventual-r3",
        "an append's answer was lost; the background sync carried its value to a secondary without \
         its exactly-once record; that secondary, promoted, applied the client's retry a second time",
    ),
    (
        2,
        "strong-r3",
        "a server cut off from the shard master only was failed over, and never heard so once the cut \
         healed: the shard master installs only at members, so it stayed out of the cluster for good",
    ),
    (
        44,
        "strong-r3",
        "a failed-over server, told, joined again after a leave had made a newer epoch; it refused the \
         join's install for skipping an epoch, so the join waited its whole move timeout",
    ),
    (
        32,
        "eventual-r3-sync1",
        "a slot's primary crashed while its synchronous secondary left; the leave made the background \
         secondary synchronous with its stale copy, and the failover promoted it: acknowledged writes \
         lost. Since the shard master crashes too: a leaver whose leave a restart cut short stopped once \
         a failover's install cleared its debt, the answer lost, and the failover waited on it 30 s",
    ),
    (
        108,
        "strong-r3",
        "a leaver stopped right after its leave; the shard master's repairs kept retrying an install at \
         it for 30 s with the change lock held, and a crashed member's failover waited all that time",
    ),
    (
        290,
        "strong-r2",
        "a join began while a sender had just crashed; the other sender's install gave way before it \
         switched, so its copy of the dead sender's moving slots was live, not retired, and the \
         failover found no copy to send: the join never settled and a key's data was lost",
    ),
    (
        5,
        "eventual-r2",
        "(lasting cut) a joiner whose data had not arrived reported its sender first, and the sender, \
         holding every slot's only up-to-date copy, was failed over: now a cut link fails the end on \
         the most cut links, between equals the newer member",
    ),
    (
        66,
        "strong-r3",
        "a server failed over for a cut link kept part-received slots, and its joins were refused for \
         holding keys of its own",
    ),
    (
        111,
        "eventual-r3-sync1",
        "(lasting cut) a rejoined server flushed a key owed from its former membership before the \
         slot's data arrived, deleting it at a secondary promoted next: 316 appends lost",
    ),
    (
        1,
        "eventual-r2",
        "a receiver paused at the start of a leave missed its install; the leaver's batches were refused \
         as too new for the whole move timeout, with the change lock held. Since the shard master \
         crashes too: it restarted during the leave, before the leaver's own install; the leaver, \
         owing nothing yet at its old epoch, was forgotten as owing, and the hand-off a failover \
         carried over waited forever",
    ),
    (
        61,
        "eventual-r2",
        "a leaver crashed mid hand-off and restarted at once; its refusal of the install meant for its \
         old self read as the answer of a live sender keeping the data, so its secondaries' copies were \
         never sent, and the receivers waited for its slots for good",
    ),
    (
        47,
        "eventual-r3",
        "(lasting cut) a member failed over for the cut joined again while it held; failed over again, \
         it learnt so only at a repair round 2 s later, answering \"moving\" for the slots it had been \
         taking meanwhile, where every client waited: 4.1 s without a write",
    ),
    (
        88,
        "eventual-r3-sync1",
        "(crash amid losses) writes were acknowledged by a synchronous secondary still catching up; the \
         failover promoted an up-to-date background copy, which missed them: 3 appends lost",
    ),
    (
        39,
        "eventual-r3",
        "(crash amid losses) a restarted member's join failed its old self over incompletely, and that \
         error, returned as the join's, read as \"joined\": the server never asked again",
    ),
    (
        155,
        "eventual-r2",
        "(crash amid losses) a member whose pings were lost was failed over just as the other crashed: \
         its slots went to the dead one, and every slot's only copy was dropped",
    ),
    (
        416,
        "eventual-r3-sync1",
        "the watch ran no round while a failover took 0.75 s, then counted that time as another member's \
         silence and failed it too, promoting a copy still catching up: 99 appends lost",
    ),
    (
        460,
        "eventual-r3",
        "as 416: a second, false failover right after a slow one left a server catching up for good",
    ),
    (
        540,
        "eventual-r3-sync1",
        "(crash amid losses) the synchronous secondary crashed, then the primary, alive but unheard, was \
         failed over to the background copy, which missed the last acknowledged appends: 2 lost",
    ),
    (
        467,
        "eventual-r3-sync1",
        "as 540, during a lasting cut: a background copy promoted while the synchronous one was silent: \
         6 appends lost",
    ),
    (
        557,
        "strong-r2",
        "a paused member was judged silent during a leave; its failover waited for the leave and ran \
         after it had answered again, and the crash that followed of the one other copy lost a key",
    ),
    (
        558,
        "strong-r3",
        "(crash amid losses) a primary whose pings the losses ate, alive and heard by its peers, was \
         failed over; its heir crashed next, before the other copies had caught up: 243 appends lost",
    ),
    (
        726,
        "eventual-r3-sync1",
        "as 558, in eventual mode: a live primary failed over under losses, then a crash: 8 appends lost",
    ),
    (
        25,
        "strong-r3",
        "a client gave up on an append stalled at its prepare; the primary dropped the write's handler \
         without recording it as aborted, so the next prepare of the key did not name it, and the \
         takeover after the primary crashed committed it, with its exactly-once record, under a value \
         computed without it: the retry was answered done, and the append was lost",
    ),
    (
        49,
        "strong-r2",
        "a crashed primary's prepare, stalled in the network, reached the copy of its restarted \
         successor's secondary at the same address; taken, its number (higher than the successor's) \
         made the copy drop every later write as a late duplicate: the replicas differed for good",
    ),
    (
        51,
        "strong-r2",
        "a crashed primary's stalled prepare was held by its restarted successor's secondary, and \
         committed at the next takeover over the successor's writes: acknowledged appends lost",
    ),
    (
        21,
        "eventual-r3-sync1",
        "a write the primary applied but could not confirm at its synchronous secondary was reported \
         to the client as a definite failure, though it was there",
    ),
    (
        11,
        "strong-r2",
        "a catch-up that asked the secondary's digests first never got an answer over a link that \
         held every request past its timeout (a one-way snapshot still landed there): the copy never \
         caught up, and the crash of its primary lost \"a2\" whole",
    ),
    (36, "strong-r2", "as 11"),
    (48, "strong-r2", "as 11"),
    (
        21,
        "strong-r2",
        "as 11, after the fix that sent a silent secondary its slots whole: only the first group of \
         64 slots was, the send stopped at its unanswered batch, and the others never caught up",
    ),
    (6, "strong-r2", "as 21"),
    (
        52,
        "eventual-r3-sync1",
        "a copy still handing its slot off refused the new primary's writes; the catch-up that \
         followed sent the slot's records before the digest round trip and its values after, so a \
         value held a write whose record was missing: the copy, promoted, applied its retry twice",
    ),
    (
        89,
        "eventual-r3-sync1",
        "a copy that kept its data to catch up from forgot its exactly-once records before the copy \
         kept of its slot for a move took them: the move's new owner applied a retry twice",
    ),
    (76, "eventual-r3-sync1", "as 89"),
    (76, "strong-r3", "as 89, in strong mode"),
];

/// Seeds that found a bug with durable servers (`kv-eval sim --durable`), as above.
const DURABLE_REGRESSIONS: &[(u64, &str, &str)] = &[
    (
        11,
        "strong-r2",
        "a primary promoted by a failover kept the exactly-once records of the writes it had received \
         as a secondary in memory only; after a whole-cluster crash it applied a client's retry again",
    ),
    (
        12,
        "eventual-r3-sync1",
        "as 11, in eventual mode: an append applied twice across a whole-cluster crash",
    ),
    (
        4,
        "strong-r1",
        "a join moved slots of a crashed member; restarted with its data, it could not be taken back \
         (its slots had changed) and, with one copy of each slot, never rejoined: its slots were lost",
    ),
    (2, "strong-r1", "as 4, with a leave moving slots to the crashed member"),
    (
        44,
        "strong-r1",
        "as 4, with a join while every member was down: no member answered to say the cluster was \
         durable, and the join went ahead",
    ),
    (
        61,
        "strong-r2",
        "a leaver crashed and restarted with the data it had not handed off yet but no membership: its \
         join was refused for holding keys, and the repairs replayed old epochs at it, which made it \
         owe 2048 slots no one expected: the cluster never settled",
    ),
];

#[test]
fn regression_seeds_pass() {
    let runs: Vec<(u64, Setting)> =
        REGRESSIONS.iter().map(|&(seed, name, _)| (seed, setting(name))).collect();
    let reports = sim::run_many(&runs, RunOptions::default(), 1, &|_| {});
    let failed = failures(&reports);
    assert!(failed.is_empty(), "regressions:\n{}", failed.join("\n"));
    let runs: Vec<(u64, Setting)> =
        DURABLE_REGRESSIONS.iter().map(|&(seed, name, _)| (seed, setting(name))).collect();
    let reports = sim::run_many(&runs, RunOptions { durable: true, ..RunOptions::default() }, 1, &|_| {});
    let failed = failures(&reports);
    assert!(failed.is_empty(), "durable regressions (replay with --durable):\n{}", failed.join("\n"));
}

#[test]
fn a_seed_replays_exactly() {
    for name in ["strong-r3", "eventual-r3"] {
        let first = sim::run(42, setting(name), RunOptions::default());
        let again = sim::run(42, setting(name), RunOptions::default());
        assert!(first.events > 1_000, "{name}: a run of {} events", first.events);
        assert_eq!(
            (first.trace_hash, first.events),
            (again.trace_hash, again.events),
            "{name}: the same seed gave two different runs"
        );
        let other = sim::run(43, setting(name), RunOptions::default());
        assert_ne!(first.trace_hash, other.trace_hash, "{name}: another seed, another run");
    }
}

/// Durable servers (`kv-eval sim --durable`): crashes keep the disks, whole-cluster crashes join
/// the faults. `KV_SIM_DURABLE_SEEDS` sets the seeds per setting (default 30: 180 runs).
#[test]
fn durable_servers_pass_their_seed_budget() {
    let per_setting: u64 =
        std::env::var("KV_SIM_DURABLE_SEEDS").ok().and_then(|n| n.parse().ok()).unwrap_or(30);
    let runs: Vec<(u64, Setting)> = Setting::all()
        .into_iter()
        .flat_map(|setting| (1..=per_setting).map(move |seed| (seed, setting)))
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let reports =
        sim::run_many(&runs, RunOptions { durable: true, ..RunOptions::default() }, threads, &|_| {});
    assert_eq!(reports.len(), runs.len());
    let failed = failures(&reports);
    assert!(
        failed.is_empty(),
        "{} of {} durable runs failed (replay with --durable):\n{}",
        failed.len(),
        reports.len(),
        failed.join("\n")
    );
}

#[test]
fn every_setting_passes_its_seed_budget() {
    let per_setting: u64 = std::env::var("KV_SIM_SEEDS").ok().and_then(|n| n.parse().ok()).unwrap_or(90);
    let runs: Vec<(u64, Setting)> = Setting::all()
        .into_iter()
        .flat_map(|setting| (1..=per_setting).map(move |seed| (seed, setting)))
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let started = std::time::Instant::now();
    let reports = sim::run_many(&runs, RunOptions::default(), threads, &|_| {});
    let wall = started.elapsed().as_secs_f64();
    println!("{} runs in {wall:.1} s ({:.1} runs/s)", reports.len(), reports.len() as f64 / wall);
    assert_eq!(reports.len(), runs.len());
    let failed = failures(&reports);
    assert!(failed.is_empty(), "{} of {} runs failed:\n{}", failed.len(), reports.len(), failed.join("\n"));
}
