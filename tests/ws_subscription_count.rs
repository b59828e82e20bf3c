//! `pusher_internal:subscription_count` (PUSHER-SPEC 1.4): on apps that enable it, every
//! subscriber of a non-presence channel is sent `{"subscription_count":N}` (data as a JSON
//! string) on each subscribe and unsubscribe; never on presence channels, never on other apps.
//!
//! These tests read raw frames: the shared helpers skip subscription counts.

mod support;

use serde_json::{json, Value};
use support::{Api, Client, TestServer};

fn count_frame(channel: &str, n: usize) -> Value {
    json!({
        "event": "pusher_internal:subscription_count",
        "channel": channel,
        "data": format!("{{\"subscription_count\":{n}}}"),
    })
}

/// Subscribes (public or private-) reading raw frames: `subscription_succeeded` must be next.
async fn subscribe_raw(c: &mut Client, channel: &str) {
    let auth = if channel.starts_with("private-") {
        c.auth_for(channel, None)
    } else {
        String::new()
    };
    c.send_subscribe(channel, &auth, None).await;
    let v = c.recv_any_json().await;
    assert_eq!(
        v,
        json!({"event": "pusher_internal:subscription_succeeded", "channel": channel, "data": "{}"})
    );
}

async fn expect_count(c: &mut Client, channel: &str, n: usize) {
    assert_eq!(c.recv_any_json().await, count_frame(channel, n));
}

/// Publishes a marker with `api` and asserts it is each client's next raw frame (so no count
/// was queued before it).
async fn assert_next_is_marker(api: &Api, channel: &str, clients: &mut [&mut Client]) {
    let name = support::unique("marker-");
    api.publish(channel, &name, "m").await;
    for c in clients.iter_mut() {
        assert_eq!(
            c.recv_any_json().await,
            json!({"event": name, "channel": channel, "data": "m"}),
            "expected only the marker on {channel}"
        );
    }
}

async fn unsubscribe(c: &mut Client, channel: &str) {
    c.send_json(&json!({"event": "pusher:unsubscribe", "data": {"channel": channel}}))
        .await;
}

#[tokio::test]
async fn counts_follow_subscribes_and_unsubscribes() {
    let server = TestServer::start().await;
    let api = server.api();
    let chan = "sc-public";

    let mut a = server.connect().await;
    subscribe_raw(&mut a, chan).await;
    expect_count(&mut a, chan, 1).await;

    let mut b = server.connect().await;
    subscribe_raw(&mut b, chan).await;
    expect_count(&mut b, chan, 2).await;
    expect_count(&mut a, chan, 2).await;

    let mut c = server.connect().await;
    subscribe_raw(&mut c, chan).await;
    for x in [&mut a, &mut b, &mut c] {
        expect_count(x, chan, 3).await;
    }

    // Unsubscribe: the others hear 2; the leaver hears nothing more on the channel.
    unsubscribe(&mut c, chan).await;
    expect_count(&mut a, chan, 2).await;
    expect_count(&mut b, chan, 2).await;
    c.send_json(&json!({"event": "pusher:ping", "data": {}}))
        .await;
    assert_eq!(
        c.recv_any_json().await,
        json!({"event": "pusher:pong", "data": "{}"}),
        "no count (or anything) for the socket that left"
    );

    // Disconnect counts as an unsubscribe.
    c.close().await;
    b.close().await;
    expect_count(&mut a, chan, 1).await;
    assert_next_is_marker(&api, chan, &mut [&mut a]).await;

    // The HTTP API agrees.
    let info = api
        .get(
            &format!("channels/{chan}"),
            &[("info", "subscription_count")],
        )
        .await;
    assert_eq!(
        info.ok(),
        &json!({"occupied": true, "subscription_count": 1})
    );
}

#[tokio::test]
async fn private_channels_are_counted_and_channels_are_separate() {
    let server = TestServer::start().await;
    let api = server.api();
    let private = "private-sc";
    let other = "sc-other";

    let mut a = server.connect().await;
    subscribe_raw(&mut a, private).await;
    expect_count(&mut a, private, 1).await;
    let mut b = server.connect().await;
    subscribe_raw(&mut b, other).await;
    expect_count(&mut b, other, 1).await;

    // b joins the private channel: only the private channel's subscribers hear about it.
    subscribe_raw(&mut b, private).await;
    expect_count(&mut b, private, 2).await;
    expect_count(&mut a, private, 2).await;
    // a joins the other channel.
    subscribe_raw(&mut a, other).await;
    expect_count(&mut a, other, 2).await;
    expect_count(&mut b, other, 2).await;
    assert_next_is_marker(&api, private, &mut [&mut a, &mut b]).await;
}

#[tokio::test]
async fn presence_channels_get_no_counts() {
    let server = TestServer::start().await;
    let api = server.api();
    let chan = "presence-sc";
    let mut a = server.connect().await;
    let auth = a.auth_for(chan, Some(r#"{"user_id":"a"}"#));
    a.send_subscribe(chan, &auth, Some(r#"{"user_id":"a"}"#))
        .await;
    assert_eq!(
        a.recv_any_json().await["event"],
        "pusher_internal:subscription_succeeded"
    );
    let mut b = server.connect().await;
    let auth = b.auth_for(chan, Some(r#"{"user_id":"b"}"#));
    b.send_subscribe(chan, &auth, Some(r#"{"user_id":"b"}"#))
        .await;
    assert_eq!(
        b.recv_any_json().await["event"],
        "pusher_internal:subscription_succeeded"
    );
    assert_eq!(
        a.recv_any_json().await["event"],
        "pusher_internal:member_added"
    );
    // No count before the marker, for either.
    assert_next_is_marker(&api, chan, &mut [&mut a, &mut b]).await;
    unsubscribe(&mut b, chan).await;
    assert_eq!(
        a.recv_any_json().await["event"],
        "pusher_internal:member_removed"
    );
    assert_next_is_marker(&api, chan, &mut [&mut a]).await;
}

#[tokio::test]
async fn apps_without_the_option_get_no_counts() {
    let server = TestServer::start().await;
    let api2 = server.api_for("2", "app-key-2", "app-secret-2");
    let chan = "sc-app2";
    let mut a = server.connect_key("app-key-2").await;
    subscribe_raw(&mut a, chan).await;
    let mut b = server.connect_key("app-key-2").await;
    subscribe_raw(&mut b, chan).await;
    let mut p = server.connect_key("app-key-2").await;
    subscribe_raw(&mut p, "private-sc-app2").await;
    assert_next_is_marker(&api2, chan, &mut [&mut a, &mut b]).await;
    unsubscribe(&mut b, chan).await;
    b.close().await;
    assert_next_is_marker(&api2, chan, &mut [&mut a]).await;
    assert_next_is_marker(&api2, "private-sc-app2", &mut [&mut p]).await;

    // Same channel name on app 1 is counted, and app 2's sockets do not hear it.
    let mut one = server.connect().await;
    subscribe_raw(&mut one, chan).await;
    expect_count(&mut one, chan, 1).await;
    assert_next_is_marker(&api2, chan, &mut [&mut a]).await;
}
