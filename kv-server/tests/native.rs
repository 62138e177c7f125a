//! The native API (`kv.v1.KeyValue`) against the real binary: the semantics of every operation.

#![allow(clippy::unwrap_used)]

mod common;

use common::{ServerProcess, some, within};

#[tokio::test]
async fn put_overwrites_and_get_of_a_missing_key_is_no_value() {
    let server = ServerProcess::start();
    within("put/get", async {
        let kv = server.native().await;
        assert_eq!(kv.get("k").await, None);
        kv.put("k", "one").await;
        assert_eq!(kv.get("k").await, some("one"));
        kv.put("k", "two").await;
        assert_eq!(kv.get("k").await, some("two"));
        assert_eq!(kv.get("K").await, None, "keys are case-sensitive");
        kv.put("", "empty key").await;
        assert_eq!(kv.get("").await, some("empty key"), "the empty string is a key like any other");
    })
    .await;
}

#[tokio::test]
async fn append_goes_to_the_right_end_and_creates_the_key() {
    let server = ServerProcess::start();
    within("append", async {
        let kv = server.native().await;
        kv.append("log", "a").await;
        assert_eq!(kv.get("log").await, some("a"));
        kv.append("log", "b").await;
        kv.append("log", "").await;
        kv.append("log", "c").await;
        assert_eq!(kv.get("log").await, some("abc"));
    })
    .await;
}

/// The wire tells a missing value (unset `optional`) from an empty one (`Some("")`).
#[tokio::test]
async fn missing_and_empty_are_told_apart() {
    let server = ServerProcess::start();
    within("missing vs empty", async {
        let kv = server.native().await;
        assert_eq!(kv.lpop("missing").await, None);
        assert_eq!(kv.rpop("missing").await, None);
        assert_eq!(kv.get("missing").await, None, "popping a missing key created it");
        assert!(!kv.delete("missing").await, "popping a missing key created it");

        kv.put("empty", "").await;
        assert_eq!(kv.get("empty").await, some(""));
        assert_eq!(kv.lpop("empty").await, some(""));
        assert_eq!(kv.rpop("empty").await, some(""));
        assert_eq!(kv.get("empty").await, some(""), "popping an empty value removed the key");

        kv.put("one", "x").await;
        assert_eq!(kv.rpop("one").await, some("x"));
        assert_eq!(kv.get("one").await, some(""), "popping the last character removed the key");
    })
    .await;
}

/// A pop takes one Unicode scalar value, however many bytes it is, from the right end.
#[tokio::test]
async fn pops_take_whole_characters() {
    let server = ServerProcess::start();
    within("multibyte pops", async {
        let kv = server.native().await;
        kv.put("w", "héllo").await;
        assert_eq!(kv.lpop("w").await, some("h"));
        assert_eq!(kv.lpop("w").await, some("é"));
        assert_eq!(kv.get("w").await, some("llo"));

        // 2-, 3- and 4-byte characters at both ends.
        kv.put("w", "€ñ😀x😀ñ€").await;
        assert_eq!(kv.lpop("w").await, some("€"));
        assert_eq!(kv.rpop("w").await, some("€"));
        assert_eq!(kv.lpop("w").await, some("ñ"));
        assert_eq!(kv.rpop("w").await, some("ñ"));
        assert_eq!(kv.lpop("w").await, some("😀"));
        assert_eq!(kv.rpop("w").await, some("😀"));
        assert_eq!(kv.get("w").await, some("x"));

        // A combining sequence is two characters: the pop takes the accent alone.
        kv.put("w", "e\u{301}").await;
        assert_eq!(kv.rpop("w").await, some("\u{301}"));
        assert_eq!(kv.get("w").await, some("e"));
    })
    .await;
}

#[tokio::test]
async fn delete_reports_whether_the_key_existed() {
    let server = ServerProcess::start();
    within("delete", async {
        let kv = server.native().await;
        kv.put("d", "v").await;
        assert!(kv.delete("d").await);
        assert_eq!(kv.get("d").await, None);
        assert!(!kv.delete("d").await);

        kv.put("e", "").await;
        assert!(kv.delete("e").await, "a key holding \"\" exists");
        assert_eq!(kv.get("e").await, None);

        kv.append("d", "again").await;
        assert_eq!(kv.get("d").await, some("again"), "a deleted key can be created again");
    })
    .await;
}

/// Three clients on their own connections append to one key at once; no append is lost or torn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_all_kept() {
    let server = ServerProcess::start();
    within("concurrent appends", async {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(3));
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let kv = server.native().await;
            let barrier = std::sync::Arc::clone(&barrier);
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                for _ in 0..5 {
                    kv.append("race", "ORA ").await;
                }
            }));
        }
        for task in tasks {
            task.await.expect("a client failed");
        }
        let kv = server.native().await;
        assert_eq!(kv.get("race").await, Some("ORA ".repeat(15)));
    })
    .await;
}

/// Many requests in flight on one connection (HTTP/2 multiplexing), on distinct keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_carries_concurrent_requests() {
    let server = ServerProcess::start();
    within("multiplexed requests", async {
        let kv = server.native().await;
        let mut tasks = Vec::new();
        for i in 0..50 {
            let kv = kv.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("key-{i}");
                kv.put(&key, &i.to_string()).await;
                kv.append(&key, "!").await;
                assert_eq!(kv.get(&key).await, Some(format!("{i}!")));
            }));
        }
        for task in tasks {
            task.await.expect("a request failed");
        }
    })
    .await;
}
