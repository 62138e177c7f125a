//! `kv-eval sharded` end to end, shortened: real shard master and storage server processes, the
//! library entry point the binary calls.
//!
//! It runs the `kv-server` binary built from the current source (`find_binary` builds it once
//! per test process; or set `KV_SERVER_BIN`). Nothing here asserts timing or speed: only what
//! every run must show, however loaded the machine.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use kv_eval::load::bench::BenchConfig;
use kv_eval::sharded::{self, ChangeKind, LoadConfig, Options, Phase};

fn short_run(chart: std::path::PathBuf) -> Options {
    Options {
        server_bin: None,
        phases: vec![Phase::Functional, Phase::Throughput, Phase::Resharding],
        bench: BenchConfig {
            concurrency: 16,
            duration: Duration::from_secs(1),
            warmup: Duration::from_millis(200),
            keys: 500,
            key_size: 16,
            value_size: 32,
            mix: "get=50,put=50".parse().unwrap(),
            seed: 3,
        },
        server_counts: vec![1, 2],
        load: LoadConfig { duration: Duration::from_secs(4), clients: 8, keys: 120, ..LoadConfig::default() },
        chart,
        progress: false,
    }
}

#[test]
fn a_short_sharded_run_passes_every_check_and_draws_its_chart() {
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("run-throughput.svg");
    let report = sharded::run(&short_run(chart.clone())).unwrap();
    let failed: Vec<_> = report.checks.iter().filter(|c| !c.passed).collect();
    assert!(failed.is_empty(), "failed checks: {failed:#?}");
    assert!(report.passed);

    // The functional flows, each of them there.
    let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    for servers in [2, 4, 8] {
        for flow in ["sequence", "parallel", "all stop at once"] {
            assert!(
                names.iter().any(|n| n.starts_with(&format!("{servers} servers: {flow}"))),
                "{servers} servers, {flow}: {names:?}"
            );
        }
    }
    assert_eq!(names.iter().filter(|n| n.starts_with("5 servers: leave")).count(), 4, "{names:?}");
    let muda: Vec<_> = report.checks.iter().filter(|c| c.name.starts_with("MUDA")).collect();
    assert_eq!(muda.len(), 10, "9 steps and the value after the last join: {muda:#?}");
    assert!(muda.iter().all(|c| c.passed), "{muda:#?}");
    let all_stop = report.checks.iter().find(|c| c.name.starts_with("8 servers: all stop")).unwrap();
    assert!(all_stop.detail.contains("stays a member"), "{all_stop:?}");

    // Throughput per server count, measured without errors.
    let servers: Vec<usize> = report.throughput.iter().map(|row| row.servers).collect();
    assert_eq!(servers, [1, 2]);
    for row in &report.throughput {
        assert!(row.benchmark.total.ok > 0 && row.benchmark.total.errors == 0, "{row:?}");
    }

    // Resharding: linearizable, every append exactly once, joins and leaves under load.
    let r = report.resharding.as_ref().unwrap();
    assert!(r.linearizability.is_linearizable(), "{}", r.linearizability);
    assert!(r.appends.is_clean(), "{:?}", r.appends);
    assert_eq!((r.appends.lost, r.appends.duplicated, r.appends.failed_applied), (0, 0, 0));
    assert!(r.appends.acknowledged > 0, "{:?}", r.appends);
    assert!(r.unread_keys.is_empty(), "{:?}", r.unread_keys);
    assert!(r.ok > 0 && !r.buckets.is_empty());
    for kind in [ChangeKind::Join, ChangeKind::Leave] {
        let change = r.changes.iter().find(|c| c.kind == kind).unwrap();
        assert!(change.succeeded, "{change:?}");
        assert!(change.keys_moved > 0, "{change:?}");
        assert!(change.at_secs < r.load_secs, "during the load: {change:?}, load {} s", r.load_secs);
        if kind == ChangeKind::Leave {
            assert_eq!(change.keys_moved as f64, change.keys_ideal, "a leave moves only the leaver's keys");
        }
    }
    assert!(r.history.ops.len() > r.ok, "the history holds the preload and final reads too");

    // The chart: an SVG document with the changes labelled.
    assert_eq!(report.chart.as_deref(), Some(chart.as_path()));
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<?xml"), "{}", &svg[..svg.len().min(100)]);
    assert!(svg.contains("<svg") && svg.contains("</svg>"));
    assert!(svg.contains("join node") && svg.contains("leave node"), "labelled changes");

    // Everything serialises for --json.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["passed"], true);
    assert_eq!(json["resharding"]["linearizability"]["verdict"]["kind"], "linearizable");
}
