//! Graceful shutdown: every socket gets `pusher:error` 4200 then close 4200, and `run()`
//! returns within a few seconds.

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::{Client, TestServer};

/// Reads the 4200 pair, then lets the client answer the close (bounded).
async fn expect_4200(c: &mut Client) {
    c.expect_fatal(4200).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = c.ws.next().await {}
    })
    .await;
}

#[tokio::test]
async fn every_socket_gets_4200_and_run_returns() {
    let mut server = TestServer::start().await;
    let mut idle = server.connect().await;
    let mut public = server.subscriber("news").await;
    let mut private = server.connect().await;
    private.subscribe_private("private-x").await;
    let mut presence = server.connect().await;
    presence
        .subscribe_presence("presence-x", r#"{"user_id":"1","user_info":{}}"#)
        .await;
    let mut other_app = server.connect_key("app-key-2").await;
    let mut limited = server.connect_key("limited-key").await;
    // An HTTP keep-alive connection in the pool must not hold shutdown up either.
    server.api().publish("news", "before", "x").await;
    assert_eq!(public.recv_json().await["event"], "before");

    let start = Instant::now();
    let handle = server.begin_shutdown();
    for c in [
        &mut idle,
        &mut public,
        &mut private,
        &mut presence,
        &mut other_app,
        &mut limited,
    ] {
        expect_4200(c).await;
    }
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("run() returns within 5 s of the signal")
        .expect("no panic");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");

    // The listener is gone: new connections are refused.
    let refused = tokio::net::TcpStream::connect(server.addr).await;
    assert!(refused.is_err(), "still accepting after shutdown");
}

#[tokio::test]
async fn shutdown_with_no_clients_is_quick() {
    let server = TestServer::start().await;
    let took = server.shutdown(Duration::from_secs(3)).await;
    assert!(took < Duration::from_secs(1), "shutdown took {took:?}");
}

#[tokio::test]
async fn shutdown_does_not_wait_for_clients_that_never_answer_the_close() {
    // A client that stops reading: shutdown still finishes within its bound.
    let mut server = TestServer::start().await;
    let _deaf = server.connect().await;
    let mut listening = server.connect().await;
    let start = Instant::now();
    let handle = server.begin_shutdown();
    listening.expect_fatal(4200).await;
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("run() returns within 5 s even with a deaf client")
        .expect("no panic");
    assert!(start.elapsed() < Duration::from_secs(5));
}
