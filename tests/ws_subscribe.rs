//! Subscriptions: successes, and every refusal (`pusher:error` code null plus
//! `pusher:subscription_error` with a status) on a socket that stays open, with other
//! subscribers unaffected.

mod support;

use serde_json::json;
use support::{Client, TestServer};

#[tokio::test]
async fn public_and_private_subscriptions_succeed() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    c.subscribe("news").await;
    c.subscribe_private("private-room").await;
    server.assert_delivers("news", &mut [&mut c]).await;
    server.assert_delivers("private-room", &mut [&mut c]).await;
}

#[tokio::test]
async fn longest_valid_name_and_full_charset_are_accepted() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let long = "a".repeat(164);
    c.subscribe(&long).await;
    c.subscribe("A-Za-z0-9_-=@,.;").await;
    server.assert_delivers(&long, &mut [&mut c]).await;
    server
        .assert_delivers("A-Za-z0-9_-=@,.;", &mut [&mut c])
        .await;
}

#[tokio::test]
async fn over_long_channel_name_is_refused() {
    let server = TestServer::start().await;
    let (mut bad, mut witness, ch) = server.bad_and_witness("sub-").await;
    let name = "a".repeat(165);
    bad.send_subscribe(&name, "", None).await;
    bad.expect_subscription_error(&name, 400).await;
    server.still_fine(&mut bad, &mut witness, &ch).await;
    // Not subscribed to it: nothing is delivered there (the API refuses the name too).
    let r = server
        .api()
        .post(
            "events",
            &json!({"name": "e", "channel": name, "data": "x"}),
        )
        .await;
    r.assert_error(400);
    bad.expect_nothing(100).await;
}

#[tokio::test]
async fn invalid_channel_names_are_refused() {
    let server = TestServer::start().await;
    let (mut bad, mut witness, ch) = server.bad_and_witness("sub-").await;
    for name in [
        "has space",
        "#hash",
        "caf\u{e9}",
        "a/b",
        "a:b",
        "",
        "#server-to-user-",
    ] {
        bad.send_subscribe(name, "", None).await;
        bad.expect_subscription_error(name, 400).await;
    }
    server.still_fine(&mut bad, &mut witness, &ch).await;
}

#[tokio::test]
async fn private_channel_with_bad_auth_is_refused_401() {
    let server = TestServer::start().await;
    let (mut bad, mut witness, ch) = server.bad_and_witness("sub-").await;
    let chan = "private-secret";
    // No auth, empty auth, malformed, wrong key, wrong signature, signature for another socket.
    let other_socket = pushi::auth::sign(support::SECRET, format!("1.1:{chan}").as_bytes());
    let bad_auths = [
        None,
        Some(String::new()),
        Some("no-colon".to_string()),
        Some(format!(
            "other-key:{}",
            pushi::auth::sign(
                support::SECRET,
                format!("{}:{chan}", bad.socket_id).as_bytes()
            )
        )),
        Some(format!("{}:{}", support::KEY, "0".repeat(64))),
        Some(format!("{}:{other_socket}", support::KEY)),
    ];
    for auth in bad_auths {
        let mut data = json!({"channel": chan});
        if let Some(a) = &auth {
            data["auth"] = json!(a);
        }
        bad.send_json(&json!({"event": "pusher:subscribe", "data": data}))
            .await;
        bad.expect_subscription_error(chan, 401).await;
    }
    server.still_fine(&mut bad, &mut witness, &ch).await;
    // The refused channel delivers nothing to `bad`.
    server.api().publish(chan, "e", "x").await;
    server.assert_delivers(&ch, &mut [&mut bad]).await;
}

#[tokio::test]
async fn private_auth_from_another_app_is_refused() {
    let server = TestServer::start().await;
    let (mut bad, mut witness, ch) = server.bad_and_witness("sub-").await;
    let chan = "private-x";
    let sig = pushi::auth::sign(
        "app-secret-2",
        format!("{}:{chan}", bad.socket_id).as_bytes(),
    );
    bad.send_subscribe(chan, &format!("app-key-2:{sig}"), None)
        .await;
    bad.expect_subscription_error(chan, 401).await;
    server.still_fine(&mut bad, &mut witness, &ch).await;
}

/// A presence channel with one observer member, plus the bad socket and a witness.
async fn presence_setup(server: &TestServer) -> (Client, Client, String) {
    let chan = support::unique("presence-room-");
    let mut observer = server.connect().await;
    observer
        .subscribe_presence(&chan, r#"{"user_id":"observer","user_info":{}}"#)
        .await;
    let bad = server.connect().await;
    (bad, observer, chan)
}

async fn presence_refused(channel_data: Option<&str>, status: u16) {
    let server = TestServer::start().await;
    let (mut bad, mut observer, chan) = presence_setup(&server).await;
    let auth = bad.auth_for(&chan, channel_data);
    bad.send_subscribe(&chan, &auth, channel_data).await;
    bad.expect_subscription_error(&chan, status).await;
    bad.ping_pong().await;
    // The observer saw no member_added: the marker is its next frame.
    server.assert_delivers(&chan, &mut [&mut observer]).await;
    let users = server
        .api()
        .get(&format!("channels/{chan}/users"), &[])
        .await;
    assert_eq!(users.ok(), &json!({"users": [{"id": "observer"}]}));
    // The same socket can still join with good data.
    let presence = bad
        .subscribe_presence(&chan, r#"{"user_id":"late","user_info":{}}"#)
        .await;
    assert_eq!(presence["count"], json!(2));
    let added = observer.recv_event("pusher_internal:member_added").await;
    assert_eq!(added["data"], r#"{"user_id":"late","user_info":{}}"#);
}

#[tokio::test]
async fn presence_channel_data_not_json() {
    presence_refused(Some("not json at all"), 400).await;
}

#[tokio::test]
async fn presence_channel_data_not_an_object() {
    presence_refused(Some("[1,2]"), 400).await;
}

#[tokio::test]
async fn presence_channel_data_without_user_id() {
    presence_refused(Some(r#"{"user_info":{"name":"x"}}"#), 400).await;
}

#[tokio::test]
async fn presence_channel_data_with_empty_or_bad_user_id() {
    presence_refused(Some(r#"{"user_id":"","user_info":{}}"#), 400).await;
    presence_refused(Some(r#"{"user_id":null}"#), 400).await;
    presence_refused(Some(r#"{"user_id":{"a":1}}"#), 400).await;
}

#[tokio::test]
async fn presence_user_id_over_128_chars() {
    let long = format!(r#"{{"user_id":"{}","user_info":{{}}}}"#, "u".repeat(129));
    presence_refused(Some(&long), 400).await;
}

#[tokio::test]
async fn presence_without_channel_data() {
    presence_refused(None, 400).await;
}

#[tokio::test]
async fn presence_user_info_too_big() {
    let big = format!(
        r#"{{"user_id":"big","user_info":{{"x":"{}"}}}}"#,
        "y".repeat(1100)
    );
    presence_refused(Some(&big), 400).await;
}

#[tokio::test]
async fn presence_with_bad_signature_is_401() {
    let server = TestServer::start().await;
    let (mut bad, mut observer, chan) = presence_setup(&server).await;
    let data = r#"{"user_id":"x","user_info":{}}"#;
    // Signed over different channel_data than sent.
    let auth = bad.auth_for(&chan, Some(r#"{"user_id":"y","user_info":{}}"#));
    bad.send_subscribe(&chan, &auth, Some(data)).await;
    bad.expect_subscription_error(&chan, 401).await;
    bad.ping_pong().await;
    server.assert_delivers(&chan, &mut [&mut observer]).await;
}

#[tokio::test]
async fn existing_presence_subscription_is_refused() {
    let server = TestServer::start().await;
    let (mut bad, mut observer, chan) = presence_setup(&server).await;
    let data = r#"{"user_id":"dup","user_info":{}}"#;
    bad.subscribe_presence(&chan, data).await;
    observer.recv_event("pusher_internal:member_added").await;
    let auth = bad.auth_for(&chan, Some(data));
    bad.send_subscribe(&chan, &auth, Some(data)).await;
    bad.expect_subscription_error(&chan, 400).await;
    // Still subscribed once: one copy of the next event each, no member events.
    server
        .assert_delivers(&chan, &mut [&mut bad, &mut observer])
        .await;
    bad.expect_nothing(100).await;
}

#[tokio::test]
async fn resubscribing_a_public_channel_succeeds_and_delivers_once() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    c.subscribe("again").await;
    c.subscribe("again").await;
    c.subscribe_private("private-again").await;
    c.subscribe_private("private-again").await;
    server.assert_delivers("again", &mut [&mut c]).await;
    server.assert_delivers("private-again", &mut [&mut c]).await;
    c.expect_nothing(150).await;
    let info = server
        .api()
        .get("channels/again", &[("info", "subscription_count")])
        .await;
    assert_eq!(
        info.ok(),
        &json!({"occupied": true, "subscription_count": 1})
    );
}

#[tokio::test]
async fn unsubscribe_has_no_reply_and_stops_delivery() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    c.subscribe("a").await;
    c.subscribe("b").await;
    c.send_json(&json!({"event": "pusher:unsubscribe", "data": {"channel": "a"}}))
        .await;
    // No reply; the next frame is the pong.
    c.ping_pong().await;
    server.api().publish("a", "e", "x").await;
    server.assert_delivers("b", &mut [&mut c]).await;
    // Unsubscribing from a channel it is not in: also silent.
    c.send_json(&json!({"event": "pusher:unsubscribe", "data": {"channel": "zzz"}}))
        .await;
    c.ping_pong().await;
    let info = server.api().get("channels/a", &[]).await;
    assert_eq!(info.ok(), &json!({"occupied": false}));
}

#[tokio::test]
async fn subscribe_data_as_json_string_is_accepted() {
    // Older clients send data as a JSON-encoded string.
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    c.send_json(&json!({"event": "pusher:subscribe", "data": "{\"channel\":\"old\"}"}))
        .await;
    let data = c.expect_subscribed("old").await;
    assert_eq!(data, json!({}));
}
