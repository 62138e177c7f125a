//! `kv-eval single-node` end to end: real server processes, the real runner binary.
//!
//! They run the `kv-server` binary built from the current source (`find_binary` builds it
//! once per test process; or set `KV_SERVER_BIN`).

use std::process::Command;

use kv_eval::harness::process::{ServerProcess, find_binary};

fn kv_eval() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kv-eval"))
}

fn short_run() -> [&'static str; 10] {
    ["--duration", "0.5", "--warmup", "0.1", "--keys", "100", "--concurrency", "8", "--no-progress", "--seed"]
}

#[test]
fn passes_against_a_server_it_starts_and_writes_json() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let json = dir.path().join("results.json");
    let server_bin = find_binary("kv-server").expect("kv-server binary");
    let output = kv_eval()
        .arg("single-node")
        .args(short_run())
        .arg("7")
        .arg("--server-bin")
        .arg(&server_bin)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run kv-eval");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kv-eval failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).expect("valid json");
    assert_eq!(report["passed"], true);
    assert_eq!(report["started_server"], true);
    let checks = report["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 4, "sequence, parallel, race, shutdown: {checks:?}");
    assert!(checks.iter().all(|c| c["passed"] == true), "{checks:?}");
    let bench = &report["benchmark"];
    assert_eq!(bench["config"]["seed"], 7);
    assert!(bench["total"]["ok"].as_u64().expect("ok count") > 0);
    assert_eq!(bench["total"]["errors"], 0);
    let ops: Vec<&str> =
        bench["per_op"].as_array().expect("per_op").iter().filter_map(|o| o["op"].as_str()).collect();
    assert_eq!(ops, ["get", "put"]);
    for field in ["p50_us", "p99_us", "p999_us"] {
        assert!(bench["total"][field].as_f64().expect(field) > 0.0);
    }
    assert!(stdout.contains("graceful shutdown (SIGTERM): pass"), "{stdout}");
}

#[test]
fn fails_when_a_check_fails() {
    // A server that refuses values over 4 bytes fails the sequence test's put of "?!?!?".
    let server_bin = find_binary("kv-server").expect("kv-server binary");
    let server =
        ServerProcess::start_storage(&server_bin, &["--max-value-bytes".into(), "4".into()]).expect("server");
    let output = kv_eval()
        .args(["single-node", "--no-bench", "--endpoint", &server.addr().to_string()])
        .output()
        .expect("run kv-eval");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "kv-eval passed against a broken server:\n{stdout}");
    assert!(stdout.contains("FAIL"), "{stdout}");
    assert!(stdout.contains("over the limit"), "the failure names its cause:\n{stdout}");
}

#[test]
fn a_bad_command_line_is_refused() {
    let output = kv_eval().args(["single-node", "--mix", "get=0"]).output().expect("run kv-eval");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no operation with a positive weight"));
}
