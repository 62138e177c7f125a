//! The `kv` command line against an in-process server: the documented output and exit codes
//! (0 success; 1 no value; 2 bad command line; 3 refused by the server; 4 unreachable or failed).

#![allow(clippy::unwrap_used)]

mod common;

use common::{InProcessServer, kv, kv_command, run, unused_endpoint};
use kv_core::Limits;
use kv_server::StorageConfig;

#[test]
fn get_of_a_missing_key_exits_1_with_no_value_on_stderr() {
    let server = InProcessServer::start();
    let out = kv(&server.endpoint(), &["get", "missing"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stdout, "");
    assert_eq!(out.stderr, "(no value)\n");
}

#[test]
fn an_empty_value_prints_an_empty_line() {
    let server = InProcessServer::start();
    let out = kv(&server.endpoint(), &["put", "k", ""]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = kv(&server.endpoint(), &["get", "k"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "\n");
    assert_eq!(out.stderr, "");
}

#[test]
fn put_append_get_round_trip() {
    let server = InProcessServer::start();
    let endpoint = server.endpoint();
    for args in [&["put", "k", "a"][..], &["append", "k", "b"], &["append", "k", "c"]] {
        let out = kv(&endpoint, args);
        assert_eq!(out.code, Some(0), "{args:?}: {out:?}");
        assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("", ""), "{args:?} should print nothing");
    }
    let out = kv(&endpoint, &["get", "k"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "abc\n");

    let out = kv(&endpoint, &["put", "k", "overwritten"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(kv(&endpoint, &["get", "k"]).stdout, "overwritten\n");

    let out = kv(&endpoint, &["append", "new", "created"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(kv(&endpoint, &["get", "new"]).stdout, "created\n", "append creates a missing key");
}

#[test]
fn pops_print_whole_characters() {
    let server = InProcessServer::start();
    let endpoint = server.endpoint();
    assert_eq!(kv(&endpoint, &["put", "w", "héllo€"]).code, Some(0));
    for (op, expected) in [("lpop", "h\n"), ("lpop", "é\n"), ("rpop", "€\n"), ("rpop", "o\n")] {
        let out = kv(&endpoint, &[op, "w"]);
        assert_eq!(out.code, Some(0), "{op}: {out:?}");
        assert_eq!(out.stdout, expected, "{op}");
    }
    assert_eq!(kv(&endpoint, &["get", "w"]).stdout, "ll\n");

    // An empty value pops "" (an empty line, exit 0); a missing key has no value (exit 1).
    assert_eq!(kv(&endpoint, &["put", "e", ""]).code, Some(0));
    for op in ["lpop", "rpop"] {
        let out = kv(&endpoint, &[op, "e"]);
        assert_eq!((out.code, out.stdout.as_str()), (Some(0), "\n"), "{op} of \"\": {out:?}");
        let out = kv(&endpoint, &[op, "missing"]);
        assert_eq!(out.code, Some(1), "{op} of a missing key: {out:?}");
        assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("", "(no value)\n"));
    }
    assert_eq!(kv(&endpoint, &["get", "missing"]).code, Some(1), "a pop created the missing key");
}

#[test]
fn delete_exits_0_if_the_key_existed_and_1_if_not() {
    let server = InProcessServer::start();
    let endpoint = server.endpoint();
    assert_eq!(kv(&endpoint, &["put", "d", "v"]).code, Some(0));
    let out = kv(&endpoint, &["delete", "d"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("", ""));
    let out = kv(&endpoint, &["delete", "d"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("", "(no such key)\n"));
    assert_eq!(kv(&endpoint, &["get", "d"]).code, Some(1));
}

#[test]
fn input_over_the_limits_exits_3_and_changes_nothing() {
    let server = InProcessServer::start();
    let endpoint = server.endpoint();
    let long_key = "k".repeat(1025);
    for args in [&["put", &long_key, "v"][..], &["append", &long_key, "v"], &["get", &long_key]] {
        let out = kv(&endpoint, args);
        assert_eq!(out.code, Some(3), "{:?}: {out:?}", args[0]);
        assert_eq!(out.stdout, "");
        assert!(out.stderr.contains("key is 1025 bytes, over the limit of 1024 bytes"), "{}", out.stderr);
    }
    assert_eq!(kv(&endpoint, &["get", &"k".repeat(1024)]).code, Some(1), "a 1024-byte key is valid");

    // Values: a server with small limits (a command-line argument cannot hold 1 MiB).
    let small = InProcessServer::start_with(StorageConfig {
        limits: Limits { max_key_len: 8, max_value_len: 16 },
        ..StorageConfig::default()
    });
    let endpoint = small.endpoint();
    let out = kv(&endpoint, &["put", "k", &"v".repeat(17)]);
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(out.stderr.contains("value would be 17 bytes, over the limit of 16 bytes"), "{}", out.stderr);
    assert_eq!(kv(&endpoint, &["get", "k"]).code, Some(1), "a refused put stored its value");
    assert_eq!(kv(&endpoint, &["put", "k", "0123456789"]).code, Some(0));
    let out = kv(&endpoint, &["append", "k", "0123456"]);
    assert_eq!(out.code, Some(3), "{out:?}");
    assert_eq!(kv(&endpoint, &["get", "k"]).stdout, "0123456789\n", "a refused append changed the value");
}

#[test]
fn an_unreachable_server_exits_4() {
    let out = kv(&unused_endpoint(), &["--timeout", "10", "get", "k"]);
    assert_eq!(out.code, Some(4), "{out:?}");
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("cannot connect to"), "{}", out.stderr);
}

#[test]
fn a_bad_command_line_exits_2() {
    let cases: [&[&str]; 5] = [
        &["get"],                           // missing argument
        &["put", "k"],                      // missing argument
        &["frobnicate", "k"],               // unknown command
        &["--timeout", "0", "get", "k"],    // not a positive timeout
        &["--timeout", "soon", "get", "k"], // not a number
    ];
    for args in cases {
        let mut command = kv_command();
        command.args(args);
        let out = run(command);
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
        assert_eq!(out.stdout, "", "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}: no message");
    }
    let out = kv("not a valid endpoint", &["get", "k"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("invalid endpoint"), "{}", out.stderr);
}

#[test]
fn help_documents_the_exit_codes() {
    let mut command = kv_command();
    command.arg("--help");
    let out = run(command);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("Exit codes"), "{}", out.stdout);
}

#[test]
fn the_endpoint_comes_from_the_flag_or_kv_endpoint() {
    let server = InProcessServer::start();
    let endpoint = server.endpoint();
    assert_eq!(kv(&endpoint, &["put", "k", "v"]).code, Some(0));

    let mut command = kv_command();
    command.env("KV_ENDPOINT", &endpoint).args(["get", "k"]);
    let out = run(command);
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "v\n"), "KV_ENDPOINT: {out:?}");

    let mut command = kv_command();
    command.args(["-e", &endpoint, "get", "k"]);
    let out = run(command);
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "v\n"), "-e: {out:?}");

    // The flag wins over the environment.
    let mut command = kv_command();
    command.env("KV_ENDPOINT", unused_endpoint()).args(["--endpoint", &endpoint, "get", "k"]);
    let out = run(command);
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "v\n"), "--endpoint over KV_ENDPOINT: {out:?}");

    // And the environment is really used: pointing it nowhere fails.
    let mut command = kv_command();
    command.env("KV_ENDPOINT", unused_endpoint()).env("KV_TIMEOUT_SECS", "10").args(["get", "k"]);
    let out = run(command);
    assert_eq!(out.code, Some(4), "KV_ENDPOINT pointing nowhere: {out:?}");

    // A http:// URI works too.
    let out = kv(&format!("http://{endpoint}"), &["get", "k"]);
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "v\n"), "http:// endpoint: {out:?}");
}

/// `kv cluster join|leave|status` against a shard master: the configuration as a table, refused
/// changes with exit 3, an unreachable master with exit 4; and data commands through the cluster.
#[test]
fn cluster_commands_show_and_change_the_membership() {
    let master = InProcessServer::start_shardmaster();
    let (a, b) = (InProcessServer::start(), InProcessServer::start());
    let (a, b) = (a.endpoint(), b.endpoint());
    let cluster = |args: &[&str]| {
        let mut command = kv_command();
        command.args(["--shardmaster", &master.endpoint(), "cluster"]).args(args);
        run(command)
    };
    let data = |args: &[&str]| {
        let mut command = kv_command();
        command.args(["--shardmaster", &master.endpoint()]).args(args);
        run(command)
    };
    let empty = cluster(&["status"]);
    assert_eq!(empty.code, Some(0), "{empty:?}");
    assert!(empty.stdout.starts_with("epoch 0, 0 server(s), 4096 slots\n"), "{empty:?}");
    assert!(empty.stdout.contains("no server"), "{empty:?}");
    assert!(empty.stdout.contains("replication factor 1, strong consistency (level 0)"), "{empty:?}");
    let nowhere = data(&["put", "k", "v"]);
    assert_eq!(nowhere.code, Some(4), "no server to take a write: {nowhere:?}");

    assert_eq!(cluster(&["join", &a]).code, Some(0));
    for i in 0..20 {
        assert_eq!(data(&["put", &format!("key{i}"), &format!("value{i}")]).code, Some(0));
    }
    let two = cluster(&["join", &b]);
    assert_eq!(two.code, Some(0), "{two:?}");
    assert!(two.stdout.starts_with("epoch 2, 2 server(s)"), "{two:?}");
    let rows: Vec<&str> = two.stdout.lines().filter(|l| l.contains(&a) || l.contains(&b)).collect();
    assert_eq!(rows.len(), 2, "{two:?}");
    assert!(rows.iter().all(|row| row.contains("2048") && row.contains("50.0%")), "{two:?}");
    assert!(rows.iter().all(|row| row.ends_with("  2  ok")), "both servers at epoch 2: {two:?}");
    let keys: u64 =
        rows.iter().map(|row| row.split_whitespace().nth(5).unwrap().parse::<u64>().unwrap()).sum();
    assert_eq!(keys, 20, "every key is held by exactly one server after the move: {two:?}");
    for i in 0..20 {
        let out = data(&["get", &format!("key{i}")]);
        assert_eq!((out.code, out.stdout), (Some(0), format!("value{i}\n")), "key{i} after the join");
    }

    let again = cluster(&["join", &b]);
    assert_eq!(again.code, Some(3), "a refused change exits 3: {again:?}");
    assert!(again.stderr.contains("already a member"), "{again:?}");
    let unknown = cluster(&["leave", "127.0.0.1:9"]);
    assert_eq!(unknown.code, Some(3), "{unknown:?}");

    let one = cluster(&["leave", &a]);
    assert_eq!(one.code, Some(0), "{one:?}");
    assert!(one.stdout.contains("4096  100.0%") && !one.stdout.contains(&a), "{one:?}");
    let row: Vec<&str> = one.stdout.lines().last().unwrap().split_whitespace().collect();
    assert_eq!(row[5..], ["20", "3", "ok"], "the last server holds all 20 keys, at epoch 3: {one:?}");
    assert_eq!(cluster(&["status"]).stdout, one.stdout, "status shows the current configuration");
    let last = cluster(&["leave", &b]);
    assert_eq!(last.code, Some(3), "the last server cannot leave with keys: {last:?}");
    assert!(last.stderr.contains("last member"), "{last:?}");
    assert_eq!(data(&["get", "key7"]).stdout, "value7\n");

    let mut command = kv_command();
    command.args(["--shardmaster", &unused_endpoint(), "cluster", "status"]);
    assert_eq!(run(command).code, Some(4), "an unreachable shard master exits 4");
}
