//! The course assignment's API (`KVStore`) against the real binary: its evaluation flows, and the
//! same data seen through both APIs.

#![allow(clippy::unwrap_used)]

mod common;

use common::{ServerProcess, some, within};

/// The assignment's sequence test, step by step.
#[tokio::test]
async fn the_assignments_sequence_test() {
    let server = ServerProcess::start();
    within("sequence test", async {
        let kv = server.compat().await;
        assert_eq!(kv.get(10).await, None);

        kv.put(33, "?!?!?").await;
        assert_eq!(kv.get(33).await, some("?!?!?"));

        kv.append(45, "huh?").await;
        assert_eq!(kv.get(45).await, some("huh?"), "append creates a missing key");
        kv.put(45, "huh!").await;
        assert_eq!(kv.get(45).await, some("huh!"), "put overwrites");
        kv.append(45, "?").await;
        assert_eq!(kv.get(45).await, some("huh!?"), "append goes to the right end");

        assert_eq!(kv.lpop(3).await, None);
        assert_eq!(kv.lpop(45).await, some("h"));
        assert_eq!(kv.rpop(45).await, some("?"));
        assert_eq!(kv.lpop(45).await, some("u"));
        assert_eq!(kv.rpop(45).await, some("!"));
        assert_eq!(kv.rpop(45).await, some("h"));
        assert_eq!(kv.lpop(45).await, some(""), "popping an empty value gives \"\"");
        assert_eq!(kv.get(45).await, some(""), "the emptied key stays");

        assert_eq!(kv.get(86).await, None);
        assert_eq!(kv.get(34).await, None);
        kv.append(86, "URV_ROCKS").await;
        kv.append(34, "paxos_enjoyer").await;
        assert_eq!(kv.get(86).await, some("URV_ROCKS"));
        assert_eq!(kv.get(34).await, some("paxos_enjoyer"));

        // Popping a missing key created nothing.
        assert_eq!(kv.get(3).await, None);
    })
    .await;
}

/// The assignment's parallel test: client i works on key 20·i on its own connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_assignments_parallel_test() {
    const DATA: [&str; 5] = ["1.965.000.000", "75.000.000", "32.000.000", "24.000.000", "3.200.000"];
    let server = ServerProcess::start();
    within("parallel test", async {
        let mut tasks = Vec::new();
        for (i, value) in DATA.iter().enumerate().take(3) {
            let kv = server.compat().await;
            let key = 20 * u32::try_from(i).unwrap();
            tasks.push(tokio::spawn(async move {
                kv.put(key, value).await;
                assert_eq!(kv.get(key).await.as_deref(), Some(*value));
                kv.append(key, value).await;
                assert_eq!(kv.get(key).await, Some(format!("{value}{value}")));
                kv.put(key, "").await;
                assert_eq!(kv.get(key).await, some(""));
            }));
        }
        for task in tasks {
            task.await.expect("a client failed");
        }
    })
    .await;
}

/// The assignment's race test: 3 clients append "ORA " to key 15 five times each; no append
/// may be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_assignments_race_test() {
    let server = ServerProcess::start();
    within("race test", async {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(3));
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let kv = server.compat().await;
            let barrier = std::sync::Arc::clone(&barrier);
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                for _ in 0..5 {
                    kv.append(15, "ORA ").await;
                }
            }));
        }
        for task in tasks {
            task.await.expect("a client failed");
        }
        let kv = server.compat().await;
        assert_eq!(kv.get(15).await, Some("ORA ".repeat(15)));
        let native = server.native().await;
        assert_eq!(native.get("15").await, Some("ORA ".repeat(15)));
    })
    .await;
}

/// A `uint32` key is the native key of its decimal digits, both ways, for every operation.
#[tokio::test]
async fn both_apis_see_the_same_data() {
    let server = ServerProcess::start();
    within("cross-API test", async {
        let compat = server.compat().await;
        let native = server.native().await;

        compat.put(42, "from compat").await;
        assert_eq!(native.get("42").await, some("from compat"));

        native.put("7", "from native").await;
        assert_eq!(compat.get(7).await, some("from native"));

        compat.append(7, "+c").await;
        native.append("7", "+n").await;
        assert_eq!(compat.get(7).await, some("from native+c+n"));
        assert_eq!(native.lpop("7").await, some("f"));
        assert_eq!(compat.rpop(7).await, some("n"));
        assert_eq!(native.get("7").await, some("rom native+c+"));

        // Deleting through the native API removes the compat key.
        assert!(native.delete("42").await);
        assert_eq!(compat.get(42).await, None);

        // Only the canonical decimal form is the same key.
        native.put("042", "padded").await;
        native.put(" 5", "spaced").await;
        assert_eq!(compat.get(42).await, None);
        assert_eq!(compat.get(5).await, None);

        // The extremes of uint32.
        compat.put(0, "zero").await;
        compat.put(u32::MAX, "max").await;
        assert_eq!(native.get("0").await, some("zero"));
        assert_eq!(native.get("4294967295").await, some("max"));
    })
    .await;
}

/// `optional string value`: unset means missing, `Some("")` is an empty value; through the
/// compatibility API too.
#[tokio::test]
async fn missing_and_empty_are_told_apart() {
    let server = ServerProcess::start();
    within("missing vs empty", async {
        let kv = server.compat().await;
        assert_eq!(kv.get(1).await, None);
        assert_eq!(kv.lpop(1).await, None);
        assert_eq!(kv.rpop(1).await, None);
        assert_eq!(kv.get(1).await, None, "popping a missing key created it");

        kv.put(1, "").await;
        assert_eq!(kv.get(1).await, some(""));
        assert_eq!(kv.lpop(1).await, some(""));
        assert_eq!(kv.rpop(1).await, some(""));
        assert_eq!(kv.get(1).await, some(""), "popping an empty value removed the key");

        kv.append(2, "").await;
        assert_eq!(kv.get(2).await, some(""), "appending \"\" creates an empty key");
    })
    .await;
}

/// Pops take whole Unicode characters through the compatibility API too.
#[tokio::test]
async fn compat_pops_take_whole_characters() {
    let server = ServerProcess::start();
    within("multibyte pops", async {
        let kv = server.compat().await;
        kv.put(9, "héllo wörld €😀").await;
        assert_eq!(kv.lpop(9).await, some("h"));
        assert_eq!(kv.lpop(9).await, some("é"));
        assert_eq!(kv.rpop(9).await, some("😀"));
        assert_eq!(kv.rpop(9).await, some("€"));
        assert_eq!(kv.get(9).await, some("llo wörld "));
    })
    .await;
}
