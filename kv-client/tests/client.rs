//! `kv_client::Client` against an in-process server: every method, and how each kind of failure
//! is classified.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{InProcessServer, unused_endpoint, within};
use kv_client::{Client, Error};
use kv_core::Limits;
use kv_server::StorageConfig;

const MIB: usize = 1024 * 1024;

fn some(s: &str) -> Option<String> {
    Some(s.to_owned())
}

#[tokio::test]
async fn every_method_does_what_it_says() {
    let server = InProcessServer::start();
    within("methods", async {
        let client = Client::connect(server.endpoint()).await.unwrap();
        assert_eq!(client.get("k").await.unwrap(), None);
        client.put("k", "one").await.unwrap();
        assert_eq!(client.get("k").await.unwrap(), some("one"));
        client.put("k", "two").await.unwrap();
        assert_eq!(client.get("k").await.unwrap(), some("two"), "put overwrites");
        client.append("k", "+three").await.unwrap();
        assert_eq!(client.get("k").await.unwrap(), some("two+three"), "append goes to the right end");
        client.append("new", "created").await.unwrap();
        assert_eq!(client.get("new").await.unwrap(), some("created"), "append creates the key");

        assert_eq!(client.lpop("k").await.unwrap(), some("t"));
        assert_eq!(client.rpop("k").await.unwrap(), some("e"));
        assert_eq!(client.get("k").await.unwrap(), some("wo+thre"));

        assert!(client.delete("k").await.unwrap());
        assert_eq!(client.get("k").await.unwrap(), None);
        assert!(!client.delete("k").await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn missing_is_none_and_empty_is_some_empty() {
    let server = InProcessServer::start();
    within("missing vs empty", async {
        let client = Client::connect(server.endpoint()).await.unwrap();
        assert_eq!(client.lpop("missing").await.unwrap(), None);
        assert_eq!(client.rpop("missing").await.unwrap(), None);
        assert_eq!(client.get("missing").await.unwrap(), None, "a pop created the missing key");

        client.put("empty", "").await.unwrap();
        assert_eq!(client.get("empty").await.unwrap(), some(""));
        assert_eq!(client.lpop("empty").await.unwrap(), some(""));
        assert_eq!(client.rpop("empty").await.unwrap(), some(""));
        assert_eq!(client.get("empty").await.unwrap(), some(""), "popping \"\" removed the key");
        assert!(client.delete("empty").await.unwrap(), "a key holding \"\" exists");
    })
    .await;
}

#[tokio::test]
async fn pops_take_whole_characters() {
    let server = InProcessServer::start();
    within("multibyte pops", async {
        let client = Client::connect(server.endpoint()).await.unwrap();
        client.put("w", "héllo😀").await.unwrap();
        assert_eq!(client.lpop("w").await.unwrap(), some("h"));
        assert_eq!(client.lpop("w").await.unwrap(), some("é"));
        assert_eq!(client.rpop("w").await.unwrap(), some("😀"));
        assert_eq!(client.get("w").await.unwrap(), some("llo"));
    })
    .await;
}

#[tokio::test]
async fn the_builder_connects_with_its_options() {
    let server = InProcessServer::start();
    within("builder", async {
        let client = Client::builder(format!("http://{}", server.endpoint()))
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(30))
            .connect()
            .await
            .unwrap();
        client.put("k", "v").await.unwrap();
        assert_eq!(client.get("k").await.unwrap(), some("v"));
    })
    .await;
}

/// Clones share one connection and their calls run concurrently; no append is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_run_concurrently_without_losing_appends() {
    let server = InProcessServer::start();
    within("concurrent appends", async {
        let client = Client::connect(server.endpoint()).await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..5 {
                    client.append("race", "ORA ").await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(client.get("race").await.unwrap(), Some("ORA ".repeat(15)));
    })
    .await;
}

#[tokio::test]
async fn an_oversized_key_is_rejected_for_good() {
    let server = InProcessServer::start();
    within("oversized key", async {
        let client = Client::connect(server.endpoint()).await.unwrap();
        let key = "k".repeat(1025);
        let expected = kv_core::Error::KeyTooLarge { len: 1025, max: 1024 };
        for err in [
            client.put(key.clone(), "v").await.unwrap_err(),
            client.append(key.clone(), "v").await.unwrap_err(),
            client.get(key.clone()).await.unwrap_err(),
            client.lpop(key.clone()).await.unwrap_err(),
            client.rpop(key.clone()).await.unwrap_err(),
            client.delete(key.clone()).await.unwrap_err(),
        ] {
            assert!(matches!(&err, Error::Rejected(e) if *e == expected), "{err:?}");
            assert!(!err.is_retryable(), "{err:?}");
            assert!(err.is_definite(), "{err:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn an_oversized_value_is_rejected_and_nothing_changes() {
    let server = InProcessServer::start();
    within("oversized value", async {
        let client = Client::connect(server.endpoint()).await.unwrap();
        let err = client.put("k", "v".repeat(MIB + 1)).await.unwrap_err();
        assert!(
            matches!(err, Error::Rejected(kv_core::Error::ValueTooLarge { len, max }) if len == MIB + 1 && max == MIB),
            "{err:?}"
        );
        assert!(!err.is_retryable());
        assert_eq!(client.get("k").await.unwrap(), None);

        client.put("k", "v".repeat(MIB - 1)).await.unwrap();
        let err = client.append("k", "ww").await.unwrap_err();
        assert!(matches!(err, Error::Rejected(kv_core::Error::ValueTooLarge { .. })), "{err:?}");
        assert_eq!(client.get("k").await.unwrap().map(|v| v.len()), Some(MIB - 1));
        client.append("k", "w").await.unwrap();
        assert_eq!(client.get("k").await.unwrap().map(|v| v.len()), Some(MIB));
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_connect_error() {
    within("unreachable", async {
        let endpoint = unused_endpoint();
        let err = Client::builder(endpoint.clone())
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
            .unwrap_err();
        assert!(matches!(&err, Error::Connect { endpoint: e, .. } if *e == endpoint), "{err:?}");
        assert!(err.is_retryable(), "a server that is down may come back");
        assert!(err.is_definite(), "nothing was sent");
    })
    .await;
}

#[tokio::test]
async fn a_malformed_endpoint_is_an_invalid_endpoint_error() {
    within("malformed endpoint", async {
        let err = Client::connect("not a valid endpoint").await.unwrap_err();
        assert!(
            matches!(&err, Error::InvalidEndpoint { endpoint, .. } if endpoint == "not a valid endpoint"),
            "{err:?}"
        );
        assert!(!err.is_retryable());
    })
    .await;
}

/// A server that goes away after the client connected: calls fail with a transport status, which
/// may be retried but may or may not have been applied.
#[tokio::test]
async fn a_server_that_went_away_is_a_retryable_rpc_error() {
    let server = InProcessServer::start();
    within("server gone", async {
        let client =
            Client::builder(server.endpoint()).timeout(Duration::from_secs(10)).connect().await.unwrap();
        client.put("k", "v").await.unwrap();
        drop(server);
        // The shutdown runs on the server's own thread: calls succeed until it takes effect.
        let err = loop {
            match client.get("k").await {
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(err) => break err,
            }
        };
        assert!(matches!(&err, Error::Rpc(status) if status.code() == tonic::Code::Unavailable), "{err:?}");
        assert!(err.is_retryable(), "{err:?}");
        assert!(!err.is_definite(), "{err:?}");
    })
    .await;
}

/// A server configured for values larger than gRPC's default 4 MiB message limit: the client
/// must be able to read back what it was allowed to write.
#[tokio::test]
async fn values_over_4_mib_round_trip_when_the_server_allows_them() {
    let server = InProcessServer::start_with(StorageConfig {
        limits: Limits { max_value_len: 8 * MIB, ..Limits::default() },
        ..StorageConfig::default()
    });
    within("large values", async {
        let client = Client::connect(server.endpoint()).await.unwrap();
        let value = "v".repeat(5 * MIB);
        client.put("big", value.clone()).await.unwrap();
        assert_eq!(client.get("big").await.unwrap().map(|v| v.len()), Some(5 * MIB));
        assert_eq!(client.rpop("big").await.unwrap(), some("v"));
    })
    .await;
}
