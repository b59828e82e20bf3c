//! Connecting: the handshake frame, ping/pong, protocol versions and the fatal connect
//! errors (4001, 4003, 4004, 4005, 4007), each followed by a check that the server still
//! serves everyone else.

mod support;

use serde_json::json;
use support::{Client, TestServer, TIMEOUT};

fn is_socket_id(s: &str) -> bool {
    // ^\d+\.\d+$
    match s.split_once('.') {
        Some((a, b)) => {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        }
        None => false,
    }
}

/// A subscriber connected before a refused connection still gets events afterwards.
async fn others_unaffected(server: &TestServer, witness: &mut Client, channel: &str) {
    witness.ping_pong().await;
    server.assert_delivers(channel, &mut [witness]).await;
}

#[tokio::test]
async fn handshake_frame_shape() {
    let server = TestServer::start().await;
    let mut c = server
        .connect_raw("/app/app-key?protocol=7&client=js&version=8.6.0")
        .await;
    let v = c.recv_json().await;
    assert_eq!(v["event"], "pusher:connection_established");
    let obj = v.as_object().unwrap();
    assert_eq!(obj.len(), 2, "only event and data: {v}");
    let data = v["data"]
        .as_str()
        .expect("data is a JSON string (double encoding)");
    let data: serde_json::Value = serde_json::from_str(data).unwrap();
    let sid = data["socket_id"].as_str().expect("socket_id string");
    assert!(
        is_socket_id(sid),
        "socket_id {sid:?} must match ^\\d+\\.\\d+$"
    );
    assert_eq!(data["activity_timeout"], json!(120));

    // Two connections get different socket ids.
    let c2 = server.connect().await;
    assert!(is_socket_id(&c2.socket_id));
    assert_ne!(c2.socket_id, sid);
}

#[tokio::test]
async fn activity_timeout_follows_config() {
    let server = TestServer::start_with("[server]\nactivity_timeout = 33\n").await;
    let mut c = server.connect_raw("/app/app-key?protocol=7").await;
    let data = c.established().await;
    assert_eq!(data["activity_timeout"], json!(33));
}

#[tokio::test]
async fn ping_pong() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    c.ping_pong().await;
    // pusher-js sends data as an object; older clients as a string: both answered.
    c.send_json(&json!({"event": "pusher:ping", "data": "{}"}))
        .await;
    assert_eq!(
        c.recv_json().await,
        json!({"event": "pusher:pong", "data": "{}"})
    );
    c.ping_pong().await;
    // A client pong needs no answer.
    c.send_json(&json!({"event": "pusher:pong", "data": {}}))
        .await;
    c.ping_pong().await;
}

#[tokio::test]
async fn protocols_5_6_7_and_missing_are_accepted() {
    let server = TestServer::start().await;
    for q in [
        "protocol=5&client=java-client&version=2.4.0",
        "protocol=6",
        "protocol=7&client=js&version=8.6.0&flash=false",
        "client=js&version=8.6.0",
        "",
    ] {
        let path = if q.is_empty() {
            "/app/app-key".to_string()
        } else {
            format!("/app/app-key?{q}")
        };
        let mut c = server.connect_raw(&path).await;
        c.established().await;
        c.ping_pong().await;
    }
}

#[tokio::test]
async fn unsupported_protocol_is_4007() {
    let server = TestServer::start().await;
    let mut witness = server.subscriber("w").await;
    for q in [
        "protocol=4",
        "protocol=abc",
        "protocol=8",
        "protocol=",
        "protocol=-7",
    ] {
        let mut c = server.connect_raw(&format!("/app/app-key?{q}")).await;
        let msg = c.expect_fatal(4007).await;
        assert!(!msg.is_empty(), "{q}");
    }
    assert_eq!(
        server.connection_count("1"),
        1,
        "refused connections are not counted"
    );
    others_unaffected(&server, &mut witness, "w").await;
}

#[tokio::test]
async fn unknown_key_is_4001() {
    let server = TestServer::start().await;
    let mut witness = server.subscriber("w").await;
    let mut c = server.connect_raw("/app/no-such-key?protocol=7").await;
    let msg = c.expect_fatal(4001).await;
    assert_eq!(msg, "Application does not exist");
    others_unaffected(&server, &mut witness, "w").await;
}

#[tokio::test]
async fn disabled_app_is_4003() {
    let server = TestServer::start().await;
    let mut witness = server.subscriber("w").await;
    let mut c = server.connect_raw("/app/disabled-key?protocol=7").await;
    c.expect_fatal(4003).await;
    assert_eq!(server.connection_count("3"), 0);
    others_unaffected(&server, &mut witness, "w").await;
}

#[tokio::test]
async fn bad_path_is_4005() {
    let server = TestServer::start().await;
    let mut witness = server.subscriber("w").await;
    for path in [
        "/app/?protocol=7",
        "/app/app-key/extra?protocol=7",
        "/app//?protocol=7",
        "/app/app-key/?protocol=7",
    ] {
        let mut c = server.connect_raw(path).await;
        let msg = c.expect_fatal(4005).await;
        assert!(!msg.is_empty(), "{path}");
    }
    others_unaffected(&server, &mut witness, "w").await;
}

#[tokio::test]
async fn upgrade_on_app_without_key_is_4005() {
    // "/app" is not /app/{key} either: refused over the WebSocket like "/app/".
    let server = TestServer::start().await;
    let mut c = server.connect_raw("/app?protocol=7").await;
    c.expect_fatal(4005).await;
}

#[tokio::test]
async fn connection_quota_is_4004_and_frees_up() {
    let server = TestServer::start().await;
    let mut witness = server.subscriber("w").await;
    let mut a = server.connect_key("limited-key").await;
    let mut b = server.connect_key("limited-key").await;
    assert_eq!(server.connection_count("4"), 2);

    let mut c = server.connect_raw("/app/limited-key?protocol=7").await;
    let msg = c.expect_fatal(4004).await;
    assert!(!msg.is_empty());
    assert_eq!(
        server.connection_count("4"),
        2,
        "the refused one is not counted"
    );

    // The admitted two still work; other apps are not limited.
    a.ping_pong().await;
    b.ping_pong().await;
    others_unaffected(&server, &mut witness, "w").await;

    // After one closes (the server has seen it once the socket ends), a new one is admitted.
    a.close().await;
    support::wait_until("app 4 to count one connection", TIMEOUT, || {
        server.connection_count("4") == 1
    })
    .await;
    let mut d = server.connect_key("limited-key").await;
    d.ping_pong().await;
    // ... and the quota holds again.
    let mut e = server.connect_raw("/app/limited-key?protocol=7").await;
    e.expect_fatal(4004).await;
    b.ping_pong().await;
}

#[tokio::test]
async fn quota_frees_up_when_a_client_vanishes_without_close() {
    let server = TestServer::start().await;
    let a = server.connect_key("limited-key").await;
    let _b = server.connect_key("limited-key").await;
    drop(a); // TCP closed without a close frame
    support::wait_until("app 4 to count one connection", TIMEOUT, || {
        server.connection_count("4") == 1
    })
    .await;
    let mut d = server.connect_key("limited-key").await;
    d.ping_pong().await;
}

#[tokio::test]
async fn server_answers_a_client_close() {
    // RFC 6455 5.5.1: the endpoint that receives a Close frame sends one back.
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
    use tokio_tungstenite::tungstenite::Message;
    c.ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    assert_eq!(
        c.recv_close().await,
        Some(1000),
        "server echoes the close frame"
    );
}
