//! The `kv-server` process's lifecycle: graceful shutdown on SIGTERM/SIGINT, and clear failures
//! for a listen address it cannot use.

#![allow(clippy::unwrap_used)]

mod common;

use common::{ServerProcess, run_to_exit, server_command, some, within};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse, health_client::HealthClient};
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

#[tokio::test]
async fn sigterm_makes_the_server_exit_0() {
    let mut server = ServerProcess::start();
    within("SIGTERM", async {
        let kv = server.native().await;
        kv.put("k", "v").await;
        assert_eq!(kv.get("k").await, some("v"));
        drop(kv);
        server.signal("TERM");
        let status = server.wait_exit().await;
        assert!(status.success(), "exit status {status}; stderr: {}", server.stderr());
    })
    .await;
}

/// The signal handlers are in place by the time the address is printed: a signal sent at once
/// is a graceful shutdown (exit 0), not death by the signal's default action.
#[tokio::test]
async fn a_signal_right_after_startup_is_a_clean_shutdown() {
    for signal in ["TERM", "INT"] {
        let mut server = ServerProcess::start();
        within("signal at startup", async {
            server.signal(signal);
            let status = server.wait_exit().await;
            assert!(status.success(), "SIG{signal}: exit status {status}; stderr: {}", server.stderr());
        })
        .await;
    }
}

/// A watch of the server's overall health, once it has reported `SERVING`.
async fn serving_health_watch(channel: tonic::transport::Channel) -> Streaming<HealthCheckResponse> {
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .expect("health watch failed")
        .into_inner();
    let first = watch.message().await.expect("health watch failed").expect("health watch ended");
    assert_eq!(first.status(), ServingStatus::Serving);
    watch
}

/// The next status a health watch reports other than `SERVING`.
async fn next_change(watch: &mut Streaming<HealthCheckResponse>) -> ServingStatus {
    loop {
        let response = watch.message().await.expect("health watch failed").expect("health watch ended");
        if response.status() != ServingStatus::Serving {
            return response.status();
        }
    }
}

fn list_services() -> ServerReflectionRequest {
    ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    }
}

fn service_names(response: ServerReflectionResponse) -> Vec<String> {
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection response: {other:?}"),
    }
}

/// After SIGTERM the server reports `NOT_SERVING`, stops accepting connections, keeps serving
/// the requests in flight (here a reflection stream opened before the signal, which gets another
/// question answered after it), and exits 0 once they are done, well before its grace period.
#[tokio::test]
async fn requests_in_flight_complete_after_sigterm() {
    // A grace period far beyond EXIT_TIMEOUT: the exit below must come from draining, not from
    // the grace period running out.
    let mut server = ServerProcess::start_with(&["--shutdown-grace-secs", "3600"]);
    let addr = server.addr();
    within("graceful shutdown", async {
        let channel = server.channel().await;
        let mut watch = serving_health_watch(channel.clone()).await;

        let (questions, question_stream) = tokio::sync::mpsc::channel(4);
        questions.send(list_services()).await.unwrap();
        let mut answers = ServerReflectionClient::new(channel.clone())
            .server_reflection_info(ReceiverStream::new(question_stream))
            .await
            .expect("reflection call failed")
            .into_inner();
        let before = answers.message().await.expect("reflection failed").expect("no answer");
        assert!(service_names(before).iter().any(|s| s == "kv.v1.KeyValue"));

        server.signal("TERM");
        assert_eq!(next_change(&mut watch).await, ServingStatus::NotServing);

        // The stream opened before the signal is still served.
        questions.send(list_services()).await.unwrap();
        let after = answers.message().await.expect("reflection failed after SIGTERM").expect("no answer");
        assert!(service_names(after).iter().any(|s| s == "KVStore"));
        assert!(server.is_running(), "the server exited with a request in flight");

        // New connections are refused once the listener is closed.
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }

        // Finishing the requests lets the server exit.
        drop(questions);
        assert!(answers.message().await.expect("reflection stream failed").is_none());
        drop((answers, watch, channel));
        let status = server.wait_exit().await;
        assert!(status.success(), "exit status {status}; stderr: {}", server.stderr());
    })
    .await;
}

/// Requests still running when the grace period ends are dropped, and the server exits 0.
#[tokio::test]
async fn the_grace_period_bounds_the_shutdown() {
    let mut server = ServerProcess::start_with(&["--shutdown-grace-secs", "1"]);
    within("grace period", async {
        let channel = server.channel().await;
        // A health watch never ends by itself: it holds the connection open.
        let watch = serving_health_watch(channel.clone()).await;

        server.signal("TERM");
        let status = server.wait_exit().await;
        assert!(status.success(), "exit status {status}; stderr: {}", server.stderr());
        drop((watch, channel));
    })
    .await;
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut command = server_command();
    command.args(["storage", "--listen", &addr.to_string()]);
    let output = run_to_exit(command);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "kv-server started on a port in use; stderr: {stderr}");
    assert!(stderr.contains("Address already in use"), "stderr: {stderr}");
    assert!(stderr.contains(&addr.to_string()), "the error should name the address; stderr: {stderr}");
    assert!(output.stdout.is_empty(), "stdout: {}", String::from_utf8_lossy(&output.stdout));
    drop(taken);
}

#[test]
fn a_malformed_listen_address_is_a_clear_error() {
    for address in ["nonsense", "127.0.0.1", "127.0.0.1:99999"] {
        let mut command = server_command();
        command.args(["storage", "--listen", address]);
        let output = run_to_exit(command);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "kv-server accepted --listen {address:?}");
        assert!(
            stderr.contains(&format!("invalid listen address {address:?} (expected host:port)")),
            "--listen {address:?}: stderr: {stderr}"
        );
        assert!(output.stdout.is_empty(), "stdout: {}", String::from_utf8_lossy(&output.stdout));
    }
}

#[test]
fn zero_workers_is_a_clear_error() {
    let mut command = server_command();
    command.args(["--workers", "0", "storage", "--listen", "127.0.0.1:0"]);
    let output = run_to_exit(command);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("--workers must be at least 1"), "stderr: {stderr}");
}
