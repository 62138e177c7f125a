//! `kv-eval replicas` end to end, shortened: real shard master and storage server processes, the
//! library entry point the binary calls.
//!
//! It runs the `kv-server` binary built from the current source (`find_binary` builds it once
//! per test process; or set `KV_SERVER_BIN`). Nothing here asserts timing or speed: only what
//! every run must show, however loaded the machine.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use kv_eval::load::bench::BenchConfig;
use kv_eval::replicas::{
    self, ChartPaths, FailoverConfig, LevelsConfig, Options, Phase, Setting, StalenessConfig,
    ThroughputConfig,
};

fn setting(s: &str) -> Setting {
    s.parse().unwrap()
}

fn short_run(charts: &Path) -> Options {
    Options {
        server_bin: None,
        phases: vec![Phase::Levels, Phase::Throughput, Phase::Staleness, Phase::Failover],
        servers: 6,
        durable: false,
        // Short, so that convergence is quick to wait for; still far longer than a put-then-get.
        sync_interval: Duration::from_secs(1),
        levels: LevelsConfig {
            levels: vec![0, 2],
            duration: Duration::from_secs(2),
            ..LevelsConfig::default()
        },
        throughput: ThroughputConfig {
            settings: vec![setting("1:0"), setting("3:2")],
            bench: BenchConfig {
                concurrency: 16,
                duration: Duration::from_secs(1),
                warmup: Duration::from_millis(200),
                keys: 500,
                key_size: 16,
                value_size: 32,
                mix: "put=1".parse().unwrap(),
                seed: 3,
            },
        },
        staleness: StalenessConfig {
            levels: vec![0],
            duration: Duration::from_secs(2),
            ..StalenessConfig::default()
        },
        failover: FailoverConfig {
            settings: vec![setting("3:2")],
            clients: 4,
            keys: 60,
            before_kill: Duration::from_secs(1),
            after_kill: Duration::from_millis(2500),
            ..FailoverConfig::default()
        },
        charts: ChartPaths::in_dir(charts, "run"),
        progress: false,
        seed: 3,
    }
}

#[test]
fn a_short_replicas_run_passes_every_check_and_draws_its_charts() {
    let dir = tempfile::tempdir().unwrap();
    let options = short_run(dir.path());
    let report = replicas::run(&options).unwrap();
    let failed: Vec<_> = report.checks.iter().filter(|c| !c.passed).collect();
    assert!(failed.is_empty(), "failed checks: {failed:#?}");
    assert!(report.passed);

    // The assignment's experiment: the strong level reads nothing stale and is linearizable;
    // level 0, whose secondaries lag by up to a sync interval, reads stale values.
    let levels: Vec<Setting> = report.levels.iter().map(|row| row.setting).collect();
    assert_eq!(levels, [setting("3:0"), setting("3:2")]);
    for row in &report.levels {
        let t = &row.tally;
        assert!(t.pairs > 0 && t.failed == 0 && t.unexplained == 0, "{}: {t:?}", row.setting);
        assert_eq!(t.pairs, t.ok + t.stale + t.newer, "{}: {t:?}", row.setting);
    }
    let (eventual, strong) = (&report.levels[0], &report.levels[1]);
    assert!(eventual.tally.stale > 0, "level 0 read nothing stale: {:?}", eventual.tally);
    assert_eq!(strong.tally.stale, 0, "{:?}", strong.tally);
    assert!(strong.linearizability.is_linearizable(), "{}", strong.linearizability);
    assert!(report.checks.iter().any(|c| c.name.contains("R=3 level 2 (strong): no stale read")));

    // Throughput per setting, measured without errors.
    let settings: Vec<Setting> = report.throughput.iter().map(|row| row.setting).collect();
    assert_eq!(settings, [setting("1:0"), setting("3:2")]);
    for row in &report.throughput {
        for bench in [&row.puts, &row.gets] {
            assert!(bench.total.ok > 0 && bench.total.errors == 0, "{}: {:?}", row.setting, bench.total);
        }
        assert_eq!(row.puts.per_op[0].op, "put");
        assert_eq!(row.gets.per_op[0].op, "get");
    }

    // Staleness: reads were judged, and every replica converged after the writes stopped.
    let [row] = report.staleness.as_slice() else { panic!("{:?}", report.staleness) };
    assert_eq!(row.setting, setting("3:0"));
    assert!(row.stale.reads > 0 && row.stale.unexplained == 0, "{:?}", row.stale);
    let c = &row.convergence;
    assert!(c.keys > 0 && c.secs.is_some() && c.unconverged.is_empty(), "{c:?}");

    // Failover: the killed primary's slots took writes again at a promoted secondary, the server
    // is off the map, and nothing acknowledged was lost (the checks above: a linearizable
    // history, every acknowledged append found once). How long it took is reported, not judged.
    let [failover] = report.failover.as_slice() else { panic!("{:?}", report.failover) };
    assert_eq!(failover.setting, setting("3:2"));
    assert!(failover.recovered_after_secs.is_some() && failover.failed_over_after_secs.is_some());
    assert!(failover.probe_secs.iter().all(Option::is_some), "{:?}", failover.probe_secs);
    assert!(failover.primary_slots > 0 && failover.victim_keys > 0, "the victim held the first key");
    assert!(failover.epoch_after > failover.epoch_before && failover.promoted.is_some(), "a new map");
    assert!(failover.linearizability.is_linearizable(), "{}", failover.linearizability);
    let a = &failover.appends;
    assert!(a.is_clean() && a.acknowledged > 0 && failover.unread_keys.is_empty(), "{a:?}");
    assert!(failover.overall.ok > 0 && failover.buckets.len() > 1);
    for name in [
        "failover: R=3 level 2: the killed primary's slots took writes again",
        "failover: R=3 level 2 (strong): the history is linearizable",
        "failover: R=3 level 2: every acknowledged append applied exactly once",
    ] {
        assert!(report.checks.iter().any(|c| c.name == name), "no check {name:?}");
    }

    // The charts: SVG documents naming their settings.
    let failover_chart = options.charts.failover_of(setting("3:2"));
    assert_eq!(
        report.charts,
        [options.charts.levels.clone(), options.charts.throughput.clone(), failover_chart.clone()]
    );
    let svg = std::fs::read_to_string(&failover_chart).unwrap();
    assert!(svg.contains(&format!("kill -9 {}", failover.killed)) && svg.contains("writes again after"));
    for (chart, names) in [
        (&options.charts.levels, ["R=3 level 0", "R=3 level 2"]),
        (&options.charts.throughput, ["R=1 level 0", "R=3 level 2"]),
    ] {
        let svg = std::fs::read_to_string(chart).unwrap();
        assert!(svg.starts_with("<?xml") && svg.contains("</svg>"), "{}", chart.display());
        for name in names {
            assert!(svg.contains(name), "{} does not name {name}", chart.display());
        }
    }

    // Everything serialises for --json.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["passed"], true);
    assert_eq!(json["levels"][1]["setting"]["consistency"], "strong");
    assert_eq!(json["levels"][1]["linearizability"]["verdict"]["kind"], "linearizable");
    assert_eq!(json["failover"][0]["setting"]["consistency"], "strong");
    assert!(json["failover"][0]["recovered_after_secs"].is_f64());
    assert_eq!(json["failover"][0]["linearizability"]["verdict"]["kind"], "linearizable");
    assert!(json["failover"][0]["buckets"].as_array().is_some_and(|b| b.len() > 1));
}

#[test]
fn impossible_options_are_refused_before_any_server_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = short_run(dir.path());
    options.throughput.settings.push(setting("5:4"));
    options.servers = 4;
    let err = replicas::run(&options).unwrap_err();
    assert!(format!("{err:#}").contains("cannot hold 5 replicas"), "{err:#}");

    let mut options = short_run(dir.path());
    options.levels.levels = vec![3];
    let err = replicas::run(&options).unwrap_err();
    assert!(format!("{err:#}").contains("level 3"), "{err:#}");

    let mut options = short_run(dir.path());
    options.failover.settings = vec![setting("1:0")];
    let err = replicas::run(&options).unwrap_err();
    assert!(format!("{err:#}").contains("replication factor of at least 2"), "{err:#}");
    assert!(report_files(dir.path()).is_empty(), "nothing ran, nothing was drawn");
}

fn report_files(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().path()).collect()
}
