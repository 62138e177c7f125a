//! The course assignment's own kind of client: `tests/compat_python.py`, a plain Python grpcio
//! client of `KVStore`, runs the assignment's sequence, parallel and race tests against the real
//! binary; `tests/compat_python_shardmaster.py` does the same for the `ShardMaster` service.
//!
//! Needs `python3` with `grpcio` and `grpcio-tools`. Without them the test is skipped with a
//! message, unless `KV_REQUIRE_PYTHON=1` (as in CI), where it fails.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{ServerProcess, run_to_exit, try_run_to_exit};

/// Whether the Python tests can run: `python3` imports grpcio and grpcio-tools. If not, the
/// test is skipped with a message, unless `KV_REQUIRE_PYTHON=1` (as in CI), which fails it.
fn python_grpc_or_skip() -> bool {
    let Err(reason) = python_grpc_available() else { return true };
    assert!(
        std::env::var("KV_REQUIRE_PYTHON").as_deref() != Ok("1"),
        "KV_REQUIRE_PYTHON=1 but python3 cannot import grpc and grpc_tools \
         (pip install grpcio grpcio-tools): {reason}"
    );
    println!("skipping: grpcio not installed (pip install grpcio grpcio-tools): {reason}");
    false
}

/// Whether `python3` can import grpcio and grpcio-tools.
fn python_grpc_available() -> Result<(), String> {
    let mut command = Command::new("python3");
    command.args(["-c", "import grpc, grpc_tools"]);
    match try_run_to_exit(command) {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(String::from_utf8_lossy(&output.stderr).trim().to_owned()),
        Err(err) => Err(format!("cannot run python3: {err}")),
    }
}

#[test]
fn a_python_grpcio_client_passes_the_assignments_tests() {
    if !python_grpc_or_skip() {
        return;
    }

    let server = ServerProcess::start();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("compat_python.py");
    let mut command = Command::new("python3");
    command.arg(&script).arg(server.addr().to_string());
    let output = run_to_exit(command);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- server log\n{}",
        script.display(),
        output.status,
        server.stderr()
    );
    for test in ["sequence test", "parallel test", "race test", "limits test"] {
        assert!(stdout.contains(&format!("ok   {test}")), "{test} did not report success:\n{stdout}");
    }
}

/// The assignment's shard master interface from Python grpcio (subtask 2, one copy of every
/// key): join, query, leave.
#[test]
fn a_python_grpcio_client_uses_the_shard_master() {
    if !python_grpc_or_skip() {
        return;
    }
    let master = ServerProcess::start_shardmaster_with(&["--replication-factor", "1"]);
    let servers = [ServerProcess::start(), ServerProcess::start(), ServerProcess::start()];
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("compat_python_shardmaster.py");
    let mut command = Command::new("python3");
    command.arg(&script).arg(master.addr().to_string());
    command.args(servers.iter().map(|server| server.addr().to_string()));
    let output = run_to_exit(command);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}\n--- server log\n{}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr),
        master.stderr()
    );
    for test in ["join and query", "data at the owners", "leave"] {
        assert!(stdout.contains(&format!("ok   {test}")), "{test} did not report success:\n{stdout}");
    }
}

/// The assignment's replication interface from Python grpcio (subtask 3, three strong copies):
/// JoinReplica, QueryReplica, writes at the primary, reads at any replica.
#[test]
fn a_python_grpcio_client_uses_the_replicas() {
    if !python_grpc_or_skip() {
        return;
    }
    let master =
        ServerProcess::start_shardmaster_with(&["--replication-factor", "3", "--consistency", "strong"]);
    let servers: Vec<ServerProcess> = (0..4).map(|_| ServerProcess::start()).collect();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("compat_python_replicas.py");
    let mut command = Command::new("python3");
    command.arg(&script).arg(master.addr().to_string());
    command.args(servers.iter().map(|server| server.addr().to_string()));
    let output = run_to_exit(command);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let logs: Vec<String> = servers.iter().map(ServerProcess::stderr).collect();
    assert!(
        output.status.success(),
        "{} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}\n--- shard master log\n{}\n--- storage logs\n{}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr),
        master.stderr(),
        logs.join("\n---\n")
    );
    for test in ["join replica", "query replica", "reads at every replica", "writes only at the primary"] {
        assert!(stdout.contains(&format!("ok   {test}")), "{test} did not report success:\n{stdout}");
    }
}
