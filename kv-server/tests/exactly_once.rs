//! Exactly-once writes: a write sent again with the same id is answered, not applied again.

#![allow(clippy::unwrap_used)]

mod common;

use common::{ServerProcess, within};
use kv_proto::status::error_from_status;
use kv_proto::v1::{self, key_value_client::KeyValueClient};
use tonic::Code;
use tonic::transport::Channel;

fn id(client: u64, seq: u64, first_unanswered: u64) -> Option<v1::RequestId> {
    Some(v1::RequestId { client, seq, first_unanswered })
}

async fn get(kv: &mut KeyValueClient<Channel>, key: &str) -> Option<String> {
    kv.get(v1::GetRequest { key: key.into() }).await.unwrap().into_inner().value
}

#[tokio::test]
async fn a_write_sent_twice_with_one_id_is_applied_once() {
    let server = ServerProcess::start();
    within("exactly once", async {
        let mut kv = KeyValueClient::new(server.unary_channel().await);
        for _ in 0..2 {
            let append = v1::AppendRequest { key: "k".into(), value: "x".into(), id: id(5, 1, 1) };
            kv.append(append).await.unwrap();
        }
        assert_eq!(get(&mut kv, "k").await.as_deref(), Some("x"));

        kv.put(v1::PutRequest { key: "p".into(), value: "abc".into(), id: id(5, 2, 1) }).await.unwrap();
        for _ in 0..3 {
            let popped = kv.l_pop(v1::PopRequest { key: "p".into(), id: id(5, 3, 1) }).await.unwrap();
            assert_eq!(popped.into_inner().value.as_deref(), Some("a"), "a retry gets the first answer");
        }
        assert_eq!(get(&mut kv, "p").await.as_deref(), Some("bc"));
        for _ in 0..2 {
            let deleted = kv.delete(v1::DeleteRequest { key: "p".into(), id: id(5, 4, 1) }).await.unwrap();
            assert!(deleted.into_inner().existed, "a retried delete answers as the first did");
        }

        // Another client's write with the same number is another write.
        kv.append(v1::AppendRequest { key: "k".into(), value: "x".into(), id: id(6, 1, 1) }).await.unwrap();
        assert_eq!(get(&mut kv, "k").await.as_deref(), Some("xx"));
        // Without an id, every arrival is applied.
        for _ in 0..2 {
            kv.append(v1::AppendRequest { key: "k".into(), value: "y".into(), id: None }).await.unwrap();
        }
        assert_eq!(get(&mut kv, "k").await.as_deref(), Some("xxyy"));
    })
    .await;
}

#[tokio::test]
async fn a_retry_of_a_forgotten_answer_is_refused() {
    let server = ServerProcess::start();
    within("stale retry", async {
        let mut kv = KeyValueClient::new(server.unary_channel().await);
        kv.append(v1::AppendRequest { key: "k".into(), value: "1".into(), id: id(5, 1, 1) }).await.unwrap();
        // Write 2 says the client has every answer below 2: the answer to 1 may go.
        kv.append(v1::AppendRequest { key: "k".into(), value: "2".into(), id: id(5, 2, 2) }).await.unwrap();
        let stale = v1::AppendRequest { key: "k".into(), value: "1".into(), id: id(5, 1, 2) };
        let status = kv.append(stale).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(error_from_status(&status), Some(kv_core::Error::StaleRetry { client: 5, seq: 1 }));
        assert_eq!(get(&mut kv, "k").await.as_deref(), Some("12"));
    })
    .await;
}

/// A refused write is not remembered: once the refusal's cause is gone, its retry applies.
#[tokio::test]
async fn a_refused_write_is_not_remembered() {
    let server = ServerProcess::start_with(&["--max-value-bytes", "3"]);
    within("refused then retried", async {
        let mut kv = KeyValueClient::new(server.unary_channel().await);
        kv.put(v1::PutRequest { key: "k".into(), value: "abc".into(), id: None }).await.unwrap();
        let append = || v1::AppendRequest { key: "k".into(), value: "d".into(), id: id(5, 1, 1) };
        assert_eq!(kv.append(append()).await.unwrap_err().code(), Code::InvalidArgument);
        kv.l_pop(v1::PopRequest { key: "k".into(), id: None }).await.unwrap();
        kv.append(append()).await.unwrap();
        assert_eq!(get(&mut kv, "k").await.as_deref(), Some("bcd"));
    })
    .await;
}

/// An id reused for a different write is refused, not answered with the first write's output.
#[tokio::test]
async fn an_id_reused_for_another_write_is_refused() {
    let server = ServerProcess::start();
    within("reused id", async {
        let mut kv = KeyValueClient::new(server.unary_channel().await);
        kv.put(v1::PutRequest { key: "k".into(), value: "abc".into(), id: id(5, 1, 1) }).await.unwrap();
        let other = kv.l_pop(v1::PopRequest { key: "k".into(), id: id(5, 1, 1) }).await.unwrap_err();
        assert_eq!(other.code(), Code::InvalidArgument);
        assert_eq!(get(&mut kv, "k").await.as_deref(), Some("abc"), "the refused pop changed nothing");
    })
    .await;
}

/// With a data directory, the exactly-once records survive `kill -9` with their writes: a retry
/// after the restart is answered as the first attempt was, not applied again, and a retry of an
/// answer the client had forgotten is still refused.
#[tokio::test]
async fn a_retry_after_kill_9_and_a_restart_is_answered_not_applied_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let flags = ["--data-dir", data.to_str().unwrap(), "--fsync", "always"];
    let mut first = ServerProcess::start_with(&flags);
    within("writes before the crash", async {
        let mut kv = KeyValueClient::new(first.unary_channel().await);
        kv.append(v1::AppendRequest { key: "k".into(), value: "x".into(), id: id(5, 1, 1) }).await.unwrap();
        kv.put(v1::PutRequest { key: "p".into(), value: "abc".into(), id: id(5, 2, 2) }).await.unwrap();
        let popped = kv.r_pop(v1::PopRequest { key: "p".into(), id: id(5, 3, 3) }).await.unwrap();
        assert_eq!(popped.into_inner().value.as_deref(), Some("c"));
    })
    .await;
    first.signal("KILL");
    first.wait_exit().await;

    let second = ServerProcess::start_with(&flags);
    within("retries after the restart", async {
        let mut kv = KeyValueClient::new(second.unary_channel().await);
        for _ in 0..2 {
            let popped = kv.r_pop(v1::PopRequest { key: "p".into(), id: id(5, 3, 3) }).await.unwrap();
            assert_eq!(popped.into_inner().value.as_deref(), Some("c"), "answered as before the crash");
        }
        assert_eq!(get(&mut kv, "p").await.as_deref(), Some("ab"), "the pop was not applied again");
        // The client had its answer to write 1 (its floor was 3): a late copy of it is refused.
        let stale =
            kv.append(v1::AppendRequest { key: "k".into(), value: "x".into(), id: id(5, 1, 1) }).await;
        let refused = error_from_status(&stale.unwrap_err());
        assert_eq!(refused, Some(kv_core::Error::StaleRetry { client: 5, seq: 1 }));
        assert_eq!(get(&mut kv, "k").await.as_deref(), Some("x"));
        // New writes go on.
        kv.append(v1::AppendRequest { key: "k".into(), value: "y".into(), id: id(5, 4, 4) }).await.unwrap();
        assert_eq!(get(&mut kv, "k").await.as_deref(), Some("xy"));
    })
    .await;
    second.wait_for_log("exactly-once records kept on disk").await;
}
