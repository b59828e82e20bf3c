//! Heartbeats: the server pings a silent client after `activity_timeout` and closes with
//! 4201 when nothing comes back within `pong_timeout`; a client that answers stays.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use support::TestServer;
use tokio_tungstenite::tungstenite::Message;

const FAST: &str = "[server]\nactivity_timeout = 1\npong_timeout = 1\n";

#[tokio::test]
async fn silent_client_is_pinged_then_closed_4201() {
    let server = TestServer::start_with(FAST).await;
    let mut c = server.connect_raw("/app/app-key?protocol=7").await;
    let data = c.established().await;
    assert_eq!(data["activity_timeout"], json!(1));
    let start = Instant::now();

    let ping = c.recv_json().await;
    assert_eq!(ping, json!({"event": "pusher:ping", "data": "{}"}));
    let pinged_after = start.elapsed();
    assert!(
        pinged_after >= Duration::from_millis(900),
        "pinged after {pinged_after:?}, before activity_timeout"
    );

    let msg = c.expect_fatal(4201).await;
    assert!(!msg.is_empty());
    let closed_after = start.elapsed() - pinged_after;
    assert!(
        closed_after >= Duration::from_millis(900),
        "closed {closed_after:?} after the ping, before pong_timeout"
    );

    // The server still serves: a fresh connection works and the closed one is forgotten.
    assert_eq!(server.connection_count("1"), 0);
    let mut fresh = server.connect().await;
    fresh.ping_pong().await;
}

#[tokio::test]
async fn client_that_answers_pings_stays_connected() {
    let server = TestServer::start_with(FAST).await;
    let mut c = server.subscriber("beat").await;
    for _ in 0..3 {
        let ping = c.recv_json().await;
        assert_eq!(ping, json!({"event": "pusher:ping", "data": "{}"}));
        c.send_json(&json!({"event": "pusher:pong", "data": {}}))
            .await;
    }
    // Over three activity periods, no 4201: the socket works and still receives events.
    c.ping_pong().await;
    server.assert_delivers("beat", &mut [&mut c]).await;
}

#[tokio::test]
async fn any_client_frame_counts_as_activity() {
    let server = TestServer::start_with(FAST).await;
    let mut c = server.connect().await;
    let start = Instant::now();
    // A client that sends its own pusher:ping every 300 ms is never pinged by the server.
    while start.elapsed() < Duration::from_millis(2500) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.ping_pong().await; // asserts the next frame is the pong, not a server ping
    }
}

#[tokio::test]
async fn websocket_ping_frames_are_answered() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    c.ws.send(Message::Ping(b"hello".to_vec().into()))
        .await
        .unwrap();
    let got = tokio::time::timeout(support::TIMEOUT, c.ws.next())
        .await
        .expect("a pong within the timeout")
        .expect("stream open")
        .expect("no error");
    match got {
        Message::Pong(p) => assert_eq!(&p[..], b"hello"),
        other => panic!("expected a pong frame, got {other:?}"),
    }
    c.ping_pong().await;
}
