//! The course assignment's own kind of client: `tests/compat_python.py`, a plain Python grpcio
//! client of `KVStore`, runs the assignment's sequence, parallel and race tests against the real
//! binary; `tests/compat_python_shardmaster.py` does the same for the `ShardMaster` service, and
//! `tests/compat_python_replicas.py` for its replication calls.
//!
//! They need `python3` with `grpcio` and `grpcio-tools`, which a machine with only the Rust
//! toolchain lacks, and stable libtest cannot decide at run time that a test is ignored. So the
//! build decides (`build.rs`): built without `KV_REQUIRE_PYTHON=1`, the three tests are
//! `#[ignore]`d, and `cargo test --workspace` lists them as *ignored*, with the reason, instead of
//! reporting passes it did not run; built with it (as in CI), they are ordinary tests, and each
//! fails, in one line naming the fix, if `python3` cannot import grpcio and grpcio-tools.
//! (`-- --include-ignored` runs them too.)
//!
//! Nothing here skips silently: a Python test either runs, fails, or is listed as ignored.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{ServerProcess, run_to_exit, try_run_to_exit};

/// The assignment's sequence, parallel, race and limits tests, from Python grpcio.
#[test]
#[cfg_attr(
    not(kv_require_python),
    ignore = "needs python3 with grpcio and grpcio-tools (pip install grpcio grpcio-tools); KV_REQUIRE_PYTHON=1 runs it"
)]
fn a_python_grpcio_client_passes_the_assignments_tests() {
    require_python_grpc();
    assignments_tests();
}

/// The assignment's shard master interface from Python grpcio (subtask 2, one copy of every
/// key): join, query, leave.
#[test]
#[cfg_attr(
    not(kv_require_python),
    ignore = "needs python3 with grpcio and grpcio-tools (pip install grpcio grpcio-tools); KV_REQUIRE_PYTHON=1 runs it"
)]
fn a_python_grpcio_client_uses_the_shard_master() {
    require_python_grpc();
    shard_master();
}

/// The assignment's replication interface from Python grpcio (subtask 3, three strong copies):
/// JoinReplica, QueryReplica, writes at the primary, reads at any replica.
#[test]
#[cfg_attr(
    not(kv_require_python),
    ignore = "needs python3 with grpcio and grpcio-tools (pip install grpcio grpcio-tools); KV_REQUIRE_PYTHON=1 runs it"
)]
fn a_python_grpcio_client_uses_the_replicas() {
    require_python_grpc();
    replicas();
}

/// Fails the test, in one line naming the fix, unless `python3` imports grpcio and grpcio-tools.
fn require_python_grpc() {
    if let Err(reason) = python_grpc_available() {
        panic!(
            "the Python compatibility tests need python3 with grpcio and grpcio-tools \
             (pip install grpcio grpcio-tools; without KV_REQUIRE_PYTHON=1 they are ignored): {reason}"
        );
    }
}

/// Whether `python3` can import grpcio and grpcio-tools.
fn python_grpc_available() -> Result<(), String> {
    let mut command = Command::new("python3");
    command.args(["-c", "import grpc, grpc_tools"]);
    match try_run_to_exit(command) {
        Ok(output) if output.status.success() => Ok(()),
        // The last line of the traceback: `ModuleNotFoundError: No module named 'grpc'`.
        Ok(output) => {
            Err(String::from_utf8_lossy(&output.stderr).trim().lines().last().unwrap_or("").to_owned())
        }
        Err(err) => Err(format!("cannot run python3: {err}")),
    }
}

/// The assignment's sequence, parallel, race and limits tests from Python grpcio.
fn assignments_tests() {
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

/// The Python client of the shard master: join, query, leave.
fn shard_master() {
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

/// The Python client of the replicas: JoinReplica, QueryReplica, reads and writes.
fn replicas() {
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
