//! Client events (`client-*`): delivery rules, and every rejection (a `pusher:error` on a
//! socket that stays open, with nothing delivered to the others).

mod support;

use futures_util::SinkExt;
use serde_json::{json, Value};
use support::{Client, TestServer};
use tokio_tungstenite::tungstenite::Message;

/// Sender and receiver on app 1, both subscribed to a fresh private channel.
async fn private_pair(server: &TestServer) -> (Client, Client, String) {
    let chan = support::unique("private-chat-");
    let mut sender = server.connect().await;
    sender.subscribe_private(&chan).await;
    let mut receiver = server.connect().await;
    receiver.subscribe_private(&chan).await;
    (sender, receiver, chan)
}

/// After a rejection: the sender still works, and both get the next event and nothing else.
async fn nothing_leaked(
    server: &TestServer,
    sender: &mut Client,
    receiver: &mut Client,
    chan: &str,
) {
    sender.ping_pong().await;
    let mut late = server.late_subscriber(chan).await;
    server
        .assert_delivers(chan, &mut [sender, receiver, &mut late])
        .await;
}

#[tokio::test]
async fn delivered_verbatim_and_not_echoed() {
    let server = TestServer::start().await;
    let (mut sender, mut receiver, chan) = private_pair(&server).await;

    // Object data stays an object, with its content as sent.
    sender
        .send_text(&format!(
            r#"{{"event":"client-typing","channel":"{chan}","data":{{"who":"a","n":[1,2,{{"x":null}}]}}}}"#
        ))
        .await;
    let got = receiver.recv_json().await;
    assert_eq!(
        got,
        json!({"event": "client-typing", "channel": chan, "data": {"who": "a", "n": [1, 2, {"x": null}]}})
    );
    assert!(
        got.get("user_id").is_none(),
        "no user_id on private channels: {got}"
    );

    // String data stays a string.
    sender.trigger("client-s", &chan, json!("{\"a\":1}")).await;
    assert_eq!(
        receiver.recv_json().await,
        json!({"event": "client-s", "channel": chan, "data": "{\"a\":1}"})
    );

    // The sender got neither back.
    server.assert_delivers(&chan, &mut [&mut sender]).await;
}

#[tokio::test]
async fn presence_client_events_carry_user_id() {
    let server = TestServer::start().await;
    let chan = "presence-chat";
    let mut sender = server.connect().await;
    sender
        .subscribe_presence(chan, r#"{"user_id":42,"user_info":{}}"#)
        .await;
    let mut receiver = server.connect().await;
    receiver
        .subscribe_presence(chan, r#"{"user_id":"r","user_info":{}}"#)
        .await;
    sender.recv_event("pusher_internal:member_added").await;

    sender
        .trigger("client-hi", chan, json!({"text": "hello"}))
        .await;
    assert_eq!(
        receiver.recv_json().await,
        json!({"event": "client-hi", "channel": chan, "data": {"text": "hello"}, "user_id": "42"})
    );
    server
        .assert_delivers(chan, &mut [&mut sender, &mut receiver])
        .await;
}

#[tokio::test]
async fn refused_when_the_app_disables_them() {
    let server = TestServer::start().await;
    let chan = "private-quiet";
    let mut sender = server.connect_key("quiet-key").await;
    sender.subscribe_private(chan).await;
    let mut receiver = server.connect_key("quiet-key").await;
    receiver.subscribe_private(chan).await;
    sender.trigger("client-x", chan, json!({})).await;
    let msg = sender.expect_error(None).await;
    assert_eq!(msg, "Client events are not enabled for this app");
    sender.ping_pong().await;
    // Nothing reached the receiver: an event published on app 5 is its next frame.
    let api = server.api_for("5", "quiet-key", "quiet-secret");
    api.publish(chan, "after", "x").await;
    assert_eq!(
        receiver.recv_json().await,
        json!({"event": "after", "channel": chan, "data": "x"})
    );
    assert_eq!(
        sender.recv_json().await,
        json!({"event": "after", "channel": chan, "data": "x"})
    );
}

#[tokio::test]
async fn refused_on_public_channels() {
    let server = TestServer::start().await;
    let chan = "public-chat";
    let mut sender = server.subscriber(chan).await;
    let mut receiver = server.subscriber(chan).await;
    sender.trigger("client-x", chan, json!({})).await;
    sender.expect_error(None).await;
    nothing_leaked(&server, &mut sender, &mut receiver, chan).await;
}

#[tokio::test]
async fn refused_on_encrypted_channels() {
    let server = TestServer::start().await;
    let chan = "private-encrypted-chat";
    let mut sender = server.connect().await;
    sender.subscribe_private(chan).await;
    let mut receiver = server.connect().await;
    receiver.subscribe_private(chan).await;
    sender
        .trigger("client-x", chan, json!({"nonce": "n", "ciphertext": "c"}))
        .await;
    sender.expect_error(None).await;
    nothing_leaked(&server, &mut sender, &mut receiver, chan).await;
}

#[tokio::test]
async fn refused_when_not_subscribed() {
    let server = TestServer::start().await;
    let chan = support::unique("private-members-");
    let mut outsider = server.connect().await;
    let mut receiver = server.connect().await;
    receiver.subscribe_private(&chan).await;
    outsider.trigger("client-x", &chan, json!({})).await;
    outsider.expect_error(None).await;
    outsider.ping_pong().await;
    server.assert_delivers(&chan, &mut [&mut receiver]).await;

    // After unsubscribing, refused again.
    let (mut sender, mut receiver, chan) = private_pair(&server).await;
    sender
        .send_json(&json!({"event": "pusher:unsubscribe", "data": {"channel": chan}}))
        .await;
    sender.trigger("client-x", &chan, json!({})).await;
    sender.expect_error(None).await;
    sender.ping_pong().await;
    server.assert_delivers(&chan, &mut [&mut receiver]).await;
}

#[tokio::test]
async fn refused_without_client_prefix() {
    let server = TestServer::start().await;
    let (mut sender, mut receiver, chan) = private_pair(&server).await;
    sender.trigger("my-event", &chan, json!({})).await;
    sender.expect_error(None).await;
    nothing_leaked(&server, &mut sender, &mut receiver, &chan).await;
}

#[tokio::test]
async fn data_over_10kb_is_refused() {
    let server = TestServer::start().await;
    let (mut sender, mut receiver, chan) = private_pair(&server).await;
    // Exactly 10 KiB of data (a JSON string of 10238 chars plus quotes) is delivered.
    let at_limit = "a".repeat(10 * 1024 - 2);
    sender.trigger("client-big", &chan, json!(at_limit)).await;
    let got = receiver.recv_json().await;
    assert_eq!(got["event"], "client-big");
    assert_eq!(got["data"].as_str().map(str::len), Some(10 * 1024 - 2));

    // Over the limit: refused, nothing delivered, the socket stays open.
    let over = "a".repeat(10 * 1024);
    sender.trigger("client-big", &chan, json!(over)).await;
    sender.expect_error(None).await;
    let over_obj = json!({"blob": "b".repeat(11 * 1024)});
    sender.trigger("client-big", &chan, over_obj).await;
    sender.expect_error(None).await;
    nothing_leaked(&server, &mut sender, &mut receiver, &chan).await;
}

#[tokio::test]
async fn more_than_10_per_second_is_4301() {
    let server = TestServer::start().await;
    let (mut sender, mut receiver, chan) = private_pair(&server).await;
    // Eleven in one burst (one flush), right after subscribing.
    for i in 0..11 {
        let frame = json!({"event": "client-n", "channel": chan, "data": {"i": i}});
        sender
            .ws
            .feed(Message::text(frame.to_string()))
            .await
            .unwrap();
    }
    sender.ws.flush().await.unwrap();
    for i in 0..10 {
        assert_eq!(
            receiver.recv_json().await,
            json!({"event": "client-n", "channel": chan, "data": {"i": i}})
        );
    }
    let msg = sender.expect_error(Some(4301)).await;
    assert!(!msg.is_empty());
    // The 11th was dropped; the socket is open; the receiver has nothing else queued.
    nothing_leaked(&server, &mut sender, &mut receiver, &chan).await;

    // A new second: client events go through again.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    sender
        .trigger("client-n", &chan, json!({"i": "again"}))
        .await;
    assert_eq!(
        receiver.recv_json().await,
        json!({"event": "client-n", "channel": chan, "data": {"i": "again"}})
    );
}

#[tokio::test]
async fn rate_limit_is_per_connection() {
    let server = TestServer::start().await;
    let (mut a, mut receiver, chan) = private_pair(&server).await;
    let mut b = server.connect().await;
    b.subscribe_private(&chan).await;
    for i in 0..10 {
        a.trigger("client-a", &chan, json!(i)).await;
        b.trigger("client-b", &chan, json!(i)).await;
    }
    let mut got: Vec<Value> = Vec::new();
    for _ in 0..20 {
        got.push(receiver.recv_json().await);
    }
    assert_eq!(got.iter().filter(|v| v["event"] == "client-a").count(), 10);
    assert_eq!(got.iter().filter(|v| v["event"] == "client-b").count(), 10);
    // Neither sender was rate limited: each received the other's 10 and no error.
    for (c, other) in [(&mut a, "client-b"), (&mut b, "client-a")] {
        for _ in 0..10 {
            assert_eq!(c.recv_json().await["event"], other);
        }
    }
    server
        .assert_delivers(&chan, &mut [&mut a, &mut b, &mut receiver])
        .await;
}
