//! A standalone storage server with a data directory: what it acknowledged survives `kill -9`,
//! it keeps its data under the working directory by default, and it refuses a directory it
//! cannot read, with an error that says why.

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

/// A cluster member cannot yet recover from a data directory: it is refused one, before it
/// binds or joins, with an error that says why.
#[test]
fn a_cluster_member_is_refused_a_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut command = server_command();
    command.args(["storage", "--listen", "127.0.0.1:0", "--shardmaster", "127.0.0.1:9", "--data-dir"]);
    command.arg(&data);
    let refused = run_to_exit(command);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("cluster member keeps its data in memory"), "{stderr}");
    assert!(!data.exists(), "a refused server made its data directory");
}
