//! Bad input against the real binary: keys and values over the limits are refused with
//! `INVALID_ARGUMENT` and a decodable detail, and change nothing. Most tests use a server with
//! tiny limits (`--max-key-bytes 8 --max-value-bytes 16`), one the default 1 MiB.

#![allow(clippy::unwrap_used)]

mod common;

use common::{ServerProcess, some, within};
use kv_core::Error;
use kv_proto::status::error_from_status;
use tonic::{Code, Status};

const SMALL_LIMITS: &[&str] = &["--max-key-bytes", "8", "--max-value-bytes", "16"];

/// The store's error a refusal carries, after checking it is a refusal.
#[track_caller]
fn refusal<T: std::fmt::Debug>(result: Result<T, Status>) -> Error {
    let status = result.expect_err("the server accepted an operation over the limits");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let err = error_from_status(&status).unwrap_or_else(|| panic!("no decodable detail in {status:?}"));
    assert_eq!(status.message(), err.to_string(), "the message should say what the detail says");
    assert!(!err.is_retryable());
    err
}

#[tokio::test]
async fn an_oversized_key_is_refused_by_every_native_operation() {
    let server = ServerProcess::start_with(SMALL_LIMITS);
    within("oversized keys", async {
        let kv = server.native().await;
        let key = "123456789"; // 9 bytes
        let expected = Error::KeyTooLarge { len: 9, max: 8 };
        assert_eq!(refusal(kv.try_put(key, "v").await), expected);
        assert_eq!(refusal(kv.try_append(key, "v").await), expected);
        assert_eq!(refusal(kv.try_get(key).await), expected);
        assert_eq!(refusal(kv.try_lpop(key).await), expected);
        assert_eq!(refusal(kv.try_rpop(key).await), expected);
        assert_eq!(refusal(kv.try_delete(key).await), expected);
        // Keys are measured in bytes: four 2-byte characters fit, five do not.
        assert_eq!(refusal(kv.try_put("ééééé", "v").await), Error::KeyTooLarge { len: 10, max: 8 });
        kv.put("éééé", "v").await;
        assert_eq!(kv.get("éééé").await, some("v"));
        // A key of exactly the limit is fine, and the server still serves after refusals.
        kv.put("12345678", "v").await;
        assert_eq!(kv.get("12345678").await, some("v"));
        // The same key through the compatibility API (123456789 is "123456789") is refused too.
        let compat = server.compat().await;
        assert_eq!(refusal(compat.try_get(123_456_789).await), expected);
    })
    .await;
}

#[tokio::test]
async fn an_oversized_value_is_refused_and_nothing_is_stored() {
    let server = ServerProcess::start_with(SMALL_LIMITS);
    within("oversized values", async {
        let kv = server.native().await;
        let too_long = "x".repeat(17);
        assert_eq!(refusal(kv.try_put("new", &too_long).await), Error::ValueTooLarge { len: 17, max: 16 });
        assert_eq!(kv.get("new").await, None, "a refused put created its key");
        assert_eq!(refusal(kv.try_append("new", &too_long).await), Error::ValueTooLarge { len: 17, max: 16 });
        assert_eq!(kv.get("new").await, None, "a refused append created its key");

        kv.put("k", &"y".repeat(16)).await;
        assert_eq!(refusal(kv.try_put("k", &too_long).await), Error::ValueTooLarge { len: 17, max: 16 });
        assert_eq!(kv.get("k").await, Some("y".repeat(16)), "a refused put changed the value");

        // Values are measured in bytes: eight 2-byte characters fit, nine do not.
        assert_eq!(refusal(kv.try_put("k", &"é".repeat(9)).await), Error::ValueTooLarge { len: 18, max: 16 });
        kv.put("k", &"é".repeat(8)).await;
        assert_eq!(kv.get("k").await, Some("é".repeat(8)));
    })
    .await;
}

#[tokio::test]
async fn an_append_that_would_cross_the_limit_is_refused_and_changes_nothing() {
    let server = ServerProcess::start_with(SMALL_LIMITS);
    within("append over the limit", async {
        let kv = server.native().await;
        kv.put("k", &"a".repeat(10)).await;
        assert_eq!(
            refusal(kv.try_append("k", &"b".repeat(7)).await),
            Error::ValueTooLarge { len: 17, max: 16 }
        );
        assert_eq!(kv.get("k").await, Some("a".repeat(10)), "a refused append changed the value");
        kv.append("k", &"b".repeat(6)).await;
        assert_eq!(kv.get("k").await, Some(format!("{}{}", "a".repeat(10), "b".repeat(6))));
        assert_eq!(refusal(kv.try_append("k", "c").await), Error::ValueTooLarge { len: 17, max: 16 });
        kv.append("k", "").await;
        assert_eq!(kv.get("k").await.map(|v| v.len()), Some(16));
    })
    .await;
}

#[tokio::test]
async fn the_compatibility_api_refuses_the_same_way() {
    let server = ServerProcess::start_with(SMALL_LIMITS);
    within("compat limits", async {
        let kv = server.compat().await;
        let too_long = "x".repeat(17);
        assert_eq!(refusal(kv.try_put(1, &too_long).await), Error::ValueTooLarge { len: 17, max: 16 });
        assert_eq!(kv.get(1).await, None);
        assert_eq!(refusal(kv.try_append(1, &too_long).await), Error::ValueTooLarge { len: 17, max: 16 });
        assert_eq!(kv.get(1).await, None);

        kv.put(2, "0123456789").await;
        assert_eq!(refusal(kv.try_append(2, "abcdefg").await), Error::ValueTooLarge { len: 17, max: 16 });
        assert_eq!(kv.get(2).await, some("0123456789"));

        // A uint32 key of nine digits is a 9-byte native key: over this server's key limit.
        let key_too_large = Error::KeyTooLarge { len: 9, max: 8 };
        assert_eq!(refusal(kv.try_put(123_456_789, "v").await), key_too_large);
        assert_eq!(refusal(kv.try_append(123_456_789, "v").await), key_too_large);
        assert_eq!(refusal(kv.try_get(123_456_789).await), key_too_large);
        assert_eq!(refusal(kv.try_lpop(123_456_789).await), key_too_large);
        assert_eq!(refusal(kv.try_rpop(123_456_789).await), key_too_large);
        kv.put(12_345_678, "v").await;
        assert_eq!(kv.get(12_345_678).await, some("v"));
    })
    .await;
}

/// The default limits: 1 KiB keys, 1 MiB values, exactly.
#[tokio::test]
async fn the_default_limits_are_1_kib_keys_and_1_mib_values() {
    const MIB: usize = 1024 * 1024;
    let server = ServerProcess::start();
    within("default limits", async {
        let kv = server.native().await;
        let over = "v".repeat(MIB + 1);
        assert_eq!(refusal(kv.try_put("big", &over).await), Error::ValueTooLarge { len: MIB + 1, max: MIB });
        assert_eq!(kv.get("big").await, None, "a refused put created its key");

        let exact = "v".repeat(MIB);
        kv.put("big", &exact).await;
        assert_eq!(kv.get("big").await.map(|v| v.len()), Some(MIB));
        assert_eq!(refusal(kv.try_append("big", "w").await), Error::ValueTooLarge { len: MIB + 1, max: MIB });
        assert_eq!(kv.get("big").await, Some(exact), "a refused append changed the value");

        let long_key = "k".repeat(1025);
        assert_eq!(refusal(kv.try_put(&long_key, "v").await), Error::KeyTooLarge { len: 1025, max: 1024 });
        let key = "k".repeat(1024);
        kv.put(&key, "v").await;
        assert_eq!(kv.get(&key).await, some("v"));
    })
    .await;
}

/// A message far over the limits is refused by the transport before it is read into memory:
/// not with one of the store's statuses, but the request still changes nothing and the server
/// carries on.
#[tokio::test]
async fn a_message_over_the_transport_limit_is_refused() {
    let server = ServerProcess::start();
    within("transport limit", async {
        let kv = server.native().await;
        let status =
            kv.try_put("huge", &"v".repeat(5 * 1024 * 1024)).await.expect_err("a 5 MiB put was accepted");
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        assert_eq!(error_from_status(&status), None, "{status:?}");
        assert_eq!(kv.get("huge").await, None);
        kv.put("after", "ok").await;
        assert_eq!(kv.get("after").await, some("ok"));
    })
    .await;
}
