//! Malformed client input: each is answered with `pusher:error` (code null) on a socket that
//! stays open, except a frame over the transport cap, which closes with 1009. In every case
//! the same socket (when open) and another subscriber keep working.

mod support;

use serde_json::json;
use support::TestServer;

async fn rejected_text(text: &str) {
    let server = TestServer::start().await;
    let (mut bad, mut witness, ch) = server.bad_and_witness("malformed-").await;
    bad.send_text(text).await;
    bad.expect_error(None).await;
    server.still_fine(&mut bad, &mut witness, &ch).await;
}

#[tokio::test]
async fn non_json_text() {
    rejected_text("this is not json").await;
}

#[tokio::test]
async fn truncated_json() {
    rejected_text(r#"{"event":"pusher:ping","data":"#).await;
}

#[tokio::test]
async fn json_that_is_not_an_object() {
    rejected_text("[1,2,3]").await;
    rejected_text("\"pusher:ping\"").await;
}

#[tokio::test]
async fn json_without_string_event() {
    rejected_text(r#"{"data":{}}"#).await;
    rejected_text(r#"{"event":42,"data":{}}"#).await;
}

#[tokio::test]
async fn unknown_pusher_events() {
    rejected_text(r#"{"event":"pusher:nonsense","data":{}}"#).await;
    rejected_text(
        r#"{"event":"pusher_internal:subscription_succeeded","channel":"x","data":"{}"}"#,
    )
    .await;
}

#[tokio::test]
async fn subscribe_without_channel() {
    rejected_text(r#"{"event":"pusher:subscribe","data":{"auth":""}}"#).await;
    rejected_text(r#"{"event":"pusher:subscribe"}"#).await;
}

#[tokio::test]
async fn several_bad_frames_in_a_row_each_get_an_error() {
    let server = TestServer::start().await;
    let (mut bad, mut witness, ch) = server.bad_and_witness("malformed-").await;
    for t in ["x", "{}", "[]", r#"{"event":"pusher:bogus"}"#] {
        bad.send_text(t).await;
    }
    for _ in 0..4 {
        bad.expect_error(None).await;
    }
    server.still_fine(&mut bad, &mut witness, &ch).await;
}

#[tokio::test]
async fn binary_frames() {
    let server = TestServer::start().await;
    let (mut bad, mut witness, ch) = server.bad_and_witness("malformed-").await;
    bad.send_binary(br#"{"event":"pusher:ping","data":{}}"#.to_vec())
        .await;
    bad.expect_error(None).await;
    bad.send_binary(vec![0, 159, 146, 150]).await;
    bad.expect_error(None).await;
    server.still_fine(&mut bad, &mut witness, &ch).await;
}

#[tokio::test]
async fn frame_at_the_transport_cap_is_read() {
    // 64 KiB is the cap (max(64 KiB, 4 x 10 KiB)); a frame just under it is parsed.
    let server = TestServer::start().await;
    let (mut bad, mut witness, ch) = server.bad_and_witness("malformed-").await;
    let filler = "x".repeat(60 * 1024);
    bad.send_json(&json!({"event": "pusher:ping", "data": {"pad": filler}}))
        .await;
    assert_eq!(
        bad.recv_json().await,
        json!({"event": "pusher:pong", "data": "{}"})
    );
    server.still_fine(&mut bad, &mut witness, &ch).await;
}

#[tokio::test]
async fn frame_over_the_transport_cap_closes_1009() {
    let server = TestServer::start().await;
    let (mut bad, mut witness, ch) = server.bad_and_witness("malformed-").await;
    let filler = "x".repeat(64 * 1024 + 1);
    bad.send_json(&json!({"event": "pusher:ping", "data": {"pad": filler}}))
        .await;
    let err = bad.recv_event("pusher:error").await;
    assert!(err["data"].is_object(), "{err}");
    assert!(
        err["data"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{err}"
    );
    assert_eq!(bad.recv_close().await, Some(1009));
    // The witness on the same channel is unaffected, and the closed socket left the channel.
    witness.ping_pong().await;
    server.assert_delivers(&ch, &mut [&mut witness]).await;
    support::wait_until(
        "the closed socket to be forgotten",
        support::TIMEOUT,
        || server.connection_count("1") == 1,
    )
    .await;
}

#[tokio::test]
async fn oversized_frame_sent_in_pieces_closes_1009() {
    // A fragmented message whose pieces are small but whose total is over the cap.
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::protocol::frame::{
        coding::{Data, OpCode},
        Frame,
    };
    use tokio_tungstenite::tungstenite::Message;
    let server = TestServer::start().await;
    let (mut bad, mut witness, ch) = server.bad_and_witness("malformed-").await;
    let piece = vec![b'x'; 16 * 1024];
    let n = 5; // 80 KiB in total
    for i in 0..n {
        let op = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(piece.clone(), op, i == n - 1);
        if bad.ws.send(Message::Frame(frame)).await.is_err() {
            break; // the server may already have closed
        }
    }
    let err = bad.recv_event("pusher:error").await;
    assert!(err["data"].is_object(), "{err}");
    assert_eq!(bad.recv_close().await, Some(1009));
    server.assert_delivers(&ch, &mut [&mut witness]).await;
}

#[tokio::test]
async fn transport_cap_follows_the_payload_limit() {
    // With 20 KiB events the cap is 4 x 20 KiB = 80 KiB: 70 KiB passes, 81 KiB closes 1009.
    let server = TestServer::start_with("[limits]\nmax_event_payload_kb = 20\n").await;
    let (mut bad, mut witness, ch) = server.bad_and_witness("malformed-").await;
    let pad = "x".repeat(70 * 1024);
    bad.send_json(&json!({"event": "pusher:ping", "data": {"pad": pad}}))
        .await;
    assert_eq!(
        bad.recv_json().await,
        json!({"event": "pusher:pong", "data": "{}"})
    );
    let pad = "x".repeat(81 * 1024);
    bad.send_json(&json!({"event": "pusher:ping", "data": {"pad": pad}}))
        .await;
    bad.recv_event("pusher:error").await;
    assert_eq!(bad.recv_close().await, Some(1009));
    server.assert_delivers(&ch, &mut [&mut witness]).await;
}
