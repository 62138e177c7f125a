//! A storage server with a data directory: what it acknowledged survives `kill -9`, it keeps its
//! data under the working directory by default, it refuses a directory it cannot read, with an
//! error that says why, and a cluster member comes back as the member it was.

#![allow(clippy::unwrap_used)]

mod common;

use common::{ServerProcess, first_two_lines, run_to_exit, server_command, within};

/// Writes from 16 clients at once (so that writes share their syncs), `kill -9` after the last
/// answer, a restart on the same directory: every acknowledged write is there.
#[tokio::test]
async fn every_acknowledged_write_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let flags = ["--data-dir", data.to_str().unwrap(), "--fsync", "always"];
    let mut first = ServerProcess::start_with(&flags);
    within("writes, then kill -9", async {
        let mut writers = Vec::new();
        for client in 0..16 {
            let kv = first.native().await;
            writers.push(tokio::spawn(async move {
                for i in 0..40 {
                    kv.put(&format!("c{client}k{i}"), &format!("v{i}")).await;
                    kv.append(&format!("c{client}log"), &format!("{i};")).await;
                }
                kv.delete(&format!("c{client}k0")).await;
            }));
        }
        for writer in writers {
            writer.await.unwrap();
        }
    })
    .await;
    first.signal("KILL");
    first.wait_exit().await;

    let second = ServerProcess::start_with(&flags);
    within("reads after the restart", async {
        let kv = second.native().await;
        let log: String = (0..40).map(|i| format!("{i};")).collect();
        for client in 0..16 {
            assert_eq!(kv.get(&format!("c{client}k0")).await, None, "a delete was lost");
            for i in 1..40 {
                assert_eq!(
                    kv.get(&format!("c{client}k{i}")).await.as_deref(),
                    Some(format!("v{i}").as_str())
                );
            }
            assert_eq!(
                kv.get(&format!("c{client}log")).await,
                Some(log.clone()),
                "client {client}'s appends"
            );
        }
    })
    .await;
    second.wait_for_log("data directory opened").await;
    assert!(second.stderr().contains("keys=640"), "{}", second.stderr());
}

/// Durable by default: with no data directory a server keeps its data in `kv-storage-PORT` under
/// its working directory, and says so at start-up; with port 0 it refuses to start.
#[test]
fn a_storage_server_keeps_its_data_on_disk_by_default() {
    let cwd = tempfile::tempdir().unwrap();
    let refused = run_to_exit({
        let mut command = server_command();
        command.current_dir(cwd.path()).args(["storage", "--listen", "127.0.0.1:0"]);
        command
    });
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--in-memory"), "{refused:?}");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut command = server_command();
    command.current_dir(cwd.path()).args(["storage", "--listen", &format!("127.0.0.1:{port}")]);
    let (first, second) = first_two_lines(command);
    assert!(first.contains(&format!("listening on 127.0.0.1:{port}")), "{first:?}");
    let dir = format!("kv-storage-{port}");
    assert!(second.contains(&dir) && second.contains("fsync: always"), "{second:?}");
    assert!(cwd.path().join(&dir).is_dir(), "no {dir} under the working directory");
}

/// A directory written by another format, or one whose files are not the engine's, stops the
/// server at start-up with an error naming the directory; nothing is served from it.
#[tokio::test]
async fn a_data_directory_it_cannot_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let flags = ["--data-dir", data.to_str().unwrap()];
    let server = ServerProcess::start_with(&flags);
    within("a write", async { server.native().await.put("k", "v").await }).await;
    drop(server);
    let mut files = Vec::new();
    let mut pending = vec![data.clone()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.file_name().is_some_and(|name| name != "lock") {
                files.push(path);
            }
        }
    }
    assert!(!files.is_empty());
    for file in &files {
        std::fs::write(file, b"not the engine's bytes").unwrap();
    }
    let mut damaged = ServerProcess::start_with(&flags);
    let status = damaged.wait_exit().await;
    assert!(!status.success(), "a damaged data directory must stop the server");
    let stderr = damaged.stderr();
    assert!(stderr.contains(&data.display().to_string()), "{stderr}");
}

/// A cluster member with a data directory, killed with `kill -9` and started again on it at the
/// same address, is taken back by the shard master as the member it was and serves its data
/// again (with one copy of each slot, before this it could only exit: "a member already, its data
/// lost"). The same directory under another address is refused at start-up, naming the member
/// whose data it is.
#[tokio::test]
async fn a_cluster_member_comes_back_with_its_data_and_refuses_another_address() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let master = ServerProcess::start_shardmaster_with(&["--replication-factor", "1"]);
    let master_addr = master.addr().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let flags = ["--shardmaster", master_addr.as_str(), "--data-dir", data];
    let mut first = ServerProcess::start_at("storage", &listen, &flags);
    first.wait_for_log("joined the cluster").await;
    within("writes before the crash", async {
        let client = first.native().await;
        for i in 0..50 {
            client.put(&format!("k{i}"), &format!("v{i}")).await;
        }
    })
    .await;
    first.signal("KILL");
    first.wait_exit().await;

    let mut second = ServerProcess::start_at("storage", &listen, &flags);
    second.wait_for_log("taken back as the member this server was").await;
    within("reads after the restart", async {
        let client = second.native().await;
        for i in 0..50 {
            assert_eq!(client.get(&format!("k{i}")).await.as_deref(), Some(format!("v{i}").as_str()), "k{i}");
        }
        client.put("after", "restart").await;
    })
    .await;
    second.signal("KILL");
    second.wait_exit().await;

    let mut other = ServerProcess::start_with(&flags);
    let status = other.wait_exit().await;
    assert!(!status.success(), "another address must not serve this member's data");
    let stderr = other.stderr();
    assert!(stderr.contains(&format!("the data kept here is that of the member at {listen}")), "{stderr}");
}
