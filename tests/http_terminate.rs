//! `POST /apps/{id}/users/{user_id}/terminate_connections` (PUSHER-SPEC 2.2): 200 `{}`; every
//! connection signed in as that user gets `pusher:error` 4200 and close 4200; other users,
//! anonymous sockets and presence-only members of that id stay connected.

mod support;

use serde_json::json;
use support::{TestServer, TIMEOUT};

const USER_42: &str = r#"{"id":"42","user_info":{"name":"Ann"}}"#;
const USER_43: &str = r#"{"id":"43"}"#;

#[tokio::test]
async fn terminates_every_connection_of_the_user_and_only_those() {
    let server = TestServer::start().await;
    let mut tab1 = server.signed_in(USER_42).await;
    let mut tab2 = server.signed_in(USER_42).await;
    tab2.subscribe("#server-to-user-42").await;
    tab2.subscribe("news").await;
    let mut u43 = server.signed_in(USER_43).await;
    u43.subscribe("news").await;
    let mut anonymous = server.subscriber("news").await;
    // Presence member "42" without a sign-in: not affected [PD-terminate].
    let mut presence_only = server.connect().await;
    presence_only
        .subscribe_presence("presence-term", r#"{"user_id":"42","user_info":{}}"#)
        .await;
    // An app-2 user 42 is another app's user.
    let mut other_app = server.connect_key("app-key-2").await;
    other_app.signin(USER_42).await;

    let r = server
        .api()
        .post("users/42/terminate_connections", &json!({}))
        .await;
    assert_eq!(r.ok(), &json!({}), "terminate reply");

    for tab in [&mut tab1, &mut tab2] {
        let msg = tab.expect_fatal(4200).await;
        assert!(!msg.is_empty());
    }
    support::wait_until("user 42's sockets to be gone", TIMEOUT, || {
        server.ctx.registry.user_connections("1", "42").is_empty()
    })
    .await;

    u43.ping_pong().await;
    anonymous.ping_pong().await;
    presence_only.ping_pong().await;
    other_app.ping_pong().await;
    // Still subscribed and receiving; tab2's subscriptions are gone.
    server
        .assert_delivers("news", &mut [&mut u43, &mut anonymous])
        .await;
    let info = server
        .api()
        .get("channels/news", &[("info", "subscription_count")])
        .await;
    assert_eq!(
        info.ok(),
        &json!({"occupied": true, "subscription_count": 2})
    );
    assert_eq!(server.connection_count("1"), 3);
    assert_eq!(server.connection_count("2"), 1);
}

#[tokio::test]
async fn presence_members_of_a_terminated_user_are_removed() {
    let server = TestServer::start().await;
    let chan = "presence-term-room";
    let mut watcher = server.signed_in(USER_43).await;
    watcher
        .subscribe_presence(chan, r#"{"user_id":"43","user_info":{}}"#)
        .await;
    let mut ann = server.signed_in(USER_42).await;
    ann.subscribe_presence(chan, r#"{"user_id":"42","user_info":{}}"#)
        .await;
    assert_eq!(
        watcher.recv_event("pusher_internal:member_added").await["channel"],
        chan
    );

    let r = server
        .api()
        .post("users/42/terminate_connections", &json!({}))
        .await;
    assert_eq!(r.ok(), &json!({}));
    ann.expect_fatal(4200).await;
    let removed = watcher.recv_event("pusher_internal:member_removed").await;
    assert_eq!(
        removed,
        json!({"event": "pusher_internal:member_removed", "channel": chan,
               "data": "{\"user_id\":\"42\"}"})
    );
    watcher.ping_pong().await;
}

#[tokio::test]
async fn unknown_user_is_a_no_op_and_the_user_may_sign_in_again() {
    let server = TestServer::start().await;
    let mut u43 = server.signed_in(USER_43).await;
    let r = server
        .api()
        .post("users/nobody/terminate_connections", &json!({}))
        .await;
    assert_eq!(r.ok(), &json!({}));
    u43.ping_pong().await;

    let mut first = server.signed_in(USER_42).await;
    let r = server
        .api()
        .post("users/42/terminate_connections", &json!({}))
        .await;
    assert_eq!(r.ok(), &json!({}));
    first.expect_fatal(4200).await;

    // Nothing else was done: the user may reconnect and sign in again.
    let mut again = server.signed_in(USER_42).await;
    again.subscribe("#server-to-user-42").await;
    server
        .assert_delivers("#server-to-user-42", &mut [&mut again])
        .await;
    u43.ping_pong().await;
}

#[tokio::test]
async fn terminate_needs_post_and_a_valid_signature() {
    let server = TestServer::start().await;
    let mut tab = server.signed_in(USER_42).await;
    let r = server
        .api()
        .get("users/42/terminate_connections", &[])
        .await;
    assert_eq!(r.status, 405, "GET: {}", r.text);
    let bad = support::Api {
        secret: "wrong".into(),
        ..server.api()
    };
    let r = bad.post("users/42/terminate_connections", &json!({})).await;
    r.assert_error(401);
    // Neither request terminated anything.
    tab.ping_pong().await;
}

#[tokio::test]
async fn watchers_hear_a_terminated_user_go_offline() {
    let server = TestServer::start().await;
    let mut watcher = server.signed_in(r#"{"id":"w","watchlist":["42"]}"#).await;
    let v = watcher.recv_event("pusher_internal:watchlist_events").await;
    assert_eq!(
        v["data"],
        json!("{\"events\":[{\"name\":\"offline\",\"user_ids\":[\"42\"]}]}")
    );
    let mut tab1 = server.signed_in(USER_42).await;
    let mut tab2 = server.signed_in(USER_42).await;
    let v = watcher.recv_event("pusher_internal:watchlist_events").await;
    assert_eq!(
        v["data"],
        json!("{\"events\":[{\"name\":\"online\",\"user_ids\":[\"42\"]}]}")
    );
    let r = server
        .api()
        .post("users/42/terminate_connections", &json!({}))
        .await;
    assert_eq!(r.ok(), &json!({}));
    tab1.expect_fatal(4200).await;
    tab2.expect_fatal(4200).await;
    // Once, after both tabs are gone.
    let v = watcher.recv_event("pusher_internal:watchlist_events").await;
    assert_eq!(
        v["data"],
        json!("{\"events\":[{\"name\":\"offline\",\"user_ids\":[\"42\"]}]}")
    );
    watcher.ping_pong().await;
}
