//! User sign-in (`pusher:signin`, PUSHER-SPEC 1.4 and 3.4) and `#server-to-user-<id>` channels:
//! the signature over `socket_id::user::user_data`, refusals that leave the socket usable, one
//! user per connection, and delivery only to the sockets signed in as that user.

mod support;

use serde_json::{json, Value};
use support::TestServer;

const USER_42: &str = r#"{"id":"42","user_info":{"name":"Ann"}}"#;
const USER_43: &str = r#"{"id":"43","user_info":{"name":"Bob"}}"#;

/// The spec's test vector (3.4), so the helper the tests sign with is itself checked.
#[test]
fn user_signature_vector() {
    let msg = pushi::auth::user_string("1234.1234", r#"{"id":"12345"}"#);
    assert_eq!(msg, r#"1234.1234::user::{"id":"12345"}"#);
    assert_eq!(
        pushi::auth::sign("7ad3773142a6692b25b8", msg.as_bytes()),
        "4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba"
    );
}

#[tokio::test]
async fn signin_success_echoes_the_user_data_string() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    // Odd spacing and key order: the server must echo the signed bytes, not a re-serialization.
    let user_data = r#"{ "user_info" : {"name":"Ann","n":1}, "id" : "42" }"#;
    let auth = c.signin_auth(user_data);
    c.send_signin(&auth, user_data).await;
    let v = c.recv_json().await;
    assert_eq!(v["event"], "pusher:signin_success", "{v}");
    assert_eq!(v.as_object().unwrap().len(), 2, "only event and data: {v}");
    let data: Value =
        serde_json::from_str(v["data"].as_str().expect("data is a JSON string")).unwrap();
    assert_eq!(data, json!({ "user_data": user_data }));
    assert_eq!(
        data["user_data"].as_str(),
        Some(user_data),
        "user_data echoed byte for byte"
    );
    c.ping_pong().await;
}

#[tokio::test]
async fn bad_signatures_are_refused_and_the_socket_keeps_working() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let other = server.connect().await;

    let wrong_secret = format!(
        "{}:{}",
        support::KEY,
        pushi::auth::sign(
            "not-the-secret",
            pushi::auth::user_string(&c.socket_id, USER_42).as_bytes()
        )
    );
    let other_socket = other.signin_auth(USER_42); // signed for another socket id
    let wrong_key = {
        let good = c.signin_auth(USER_42);
        let sig = good.split(':').nth(1).unwrap().to_string();
        format!("app-key-2:{sig}")
    };
    let other_user = c.signin_auth(USER_43); // signature over different user_data
    for auth in [
        wrong_secret.as_str(),
        other_socket.as_str(),
        wrong_key.as_str(),
        other_user.as_str(),
        "",
        "app-key",
    ] {
        c.send_signin(auth, USER_42).await;
        c.expect_error(None).await;
        c.ping_pong().await;
    }
    // Nothing was associated: #server-to-user-42 is still refused...
    c.send_subscribe("#server-to-user-42", "", None).await;
    c.expect_subscription_error("#server-to-user-42", 403).await;
    // ...and a correct sign-in (even as another user than the failed attempts) works.
    c.signin(USER_43).await;
    c.subscribe("#server-to-user-43").await;
    c.subscribe("news").await;
    server.assert_delivers("news", &mut [&mut c]).await;
}

#[tokio::test]
async fn user_data_without_a_string_id_is_refused() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    for user_data in [
        r#"{"id":42}"#,
        r#"{"id":""}"#,
        r#"{"id":null}"#,
        r#"{"user_info":{"name":"x"}}"#,
        r#"{"id":["42"]}"#,
        r#""42""#,
        "not json",
    ] {
        // Correctly signed: only the content is wrong.
        let auth = c.signin_auth(user_data);
        c.send_signin(&auth, user_data).await;
        let msg = c.expect_error(None).await;
        assert!(!msg.is_empty(), "{user_data}");
        c.ping_pong().await;
    }
    c.signin(USER_42).await;
    c.ping_pong().await;
}

#[tokio::test]
async fn one_user_per_connection() {
    let server = TestServer::start().await;
    let mut c = server.signed_in(USER_42).await;

    // A valid signature for another user on the same socket is refused.
    let auth = c.signin_auth(USER_43);
    c.send_signin(&auth, USER_43).await;
    c.expect_error(None).await;
    c.ping_pong().await;

    // The socket is still user 42, not 43.
    c.send_subscribe("#server-to-user-43", "", None).await;
    c.expect_subscription_error("#server-to-user-43", 403).await;
    c.subscribe("#server-to-user-42").await;
    assert_eq!(server.ctx.registry.user_connections("1", "43").len(), 0);
    assert_eq!(server.ctx.registry.user_connections("1", "42").len(), 1);

    // Signing in again as the same user is not "a different user id": accepted.
    c.signin(USER_42).await;
    assert_eq!(server.ctx.registry.user_connections("1", "42").len(), 1);
    server
        .assert_delivers("#server-to-user-42", &mut [&mut c])
        .await;
}

#[tokio::test]
async fn server_to_user_channel_only_for_the_signed_in_id() {
    let server = TestServer::start().await;
    let chan = "#server-to-user-42";

    let mut anonymous = server.connect().await;
    anonymous.send_subscribe(chan, "", None).await;
    anonymous.expect_subscription_error(chan, 403).await;
    anonymous.ping_pong().await;

    let mut u43 = server.signed_in(USER_43).await;
    u43.send_subscribe(chan, "", None).await;
    u43.expect_subscription_error(chan, 403).await;
    // A signature does not help either: the channel is not a private channel.
    let auth = u43.auth_for(chan, None);
    u43.send_subscribe(chan, &auth, None).await;
    u43.expect_subscription_error(chan, 403).await;
    u43.ping_pong().await;

    let mut u42 = server.signed_in(USER_42).await;
    let data = {
        u42.send_subscribe(chan, "", None).await;
        u42.expect_subscribed(chan).await
    };
    assert_eq!(data, json!({}));

    // The refused sockets are not subscribed: only 42 is counted ('#' percent-encoded).
    let info = server
        .api()
        .get(
            "channels/%23server-to-user-42",
            &[("info", "subscription_count")],
        )
        .await;
    assert_eq!(
        info.ok(),
        &json!({"occupied": true, "subscription_count": 1})
    );
    server.assert_delivers(chan, &mut [&mut u42]).await;
}

#[tokio::test]
async fn publish_to_a_user_reaches_only_that_users_subscribed_sockets() {
    let server = TestServer::start().await;
    let chan42 = "#server-to-user-42";
    let chan43 = "#server-to-user-43";
    let public = "s2u-control";

    let mut tab1 = server.signed_in(USER_42).await;
    tab1.subscribe(chan42).await;
    let mut tab2 = server.signed_in(USER_42).await;
    tab2.subscribe(chan42).await;
    // Signed in as 42 but never subscribed to its user channel.
    let mut tab3 = server.signed_in(USER_42).await;
    tab3.subscribe(public).await;
    let mut u43 = server.signed_in(USER_43).await;
    u43.subscribe(chan43).await;
    u43.subscribe(public).await;
    let mut anonymous = server.subscriber(public).await;

    let data = r#"{"note":"for 42"}"#;
    server.api().publish(chan42, "notice", data).await;
    let want = json!({"event": "notice", "channel": chan42, "data": data});
    assert_eq!(tab1.recv_json().await, want);
    assert_eq!(tab2.recv_json().await, want);

    // 43's own channel works, and 42's event did not reach 43 before it.
    let data43 = r#"{"note":"for 43"}"#;
    server.api().publish(chan43, "notice", data43).await;
    assert_eq!(
        u43.recv_json().await,
        json!({"event": "notice", "channel": chan43, "data": data43})
    );
    // Nobody else got 42's event: their next frame is a later marker.
    server
        .assert_delivers(public, &mut [&mut tab3, &mut u43, &mut anonymous])
        .await;
    server
        .assert_delivers(chan42, &mut [&mut tab1, &mut tab2])
        .await;

    // Through `channels` (what the SDKs' sendToUser does) too.
    let r = server
        .api()
        .post(
            "events",
            &json!({"name": "multi", "channels": [chan42], "data": "m"}),
        )
        .await;
    assert_eq!(r.ok(), &json!({}));
    let want = json!({"event": "multi", "channel": chan42, "data": "m"});
    assert_eq!(tab1.recv_json().await, want);
    assert_eq!(tab2.recv_json().await, want);
    server
        .assert_delivers(public, &mut [&mut tab3, &mut u43, &mut anonymous])
        .await;
}

#[tokio::test]
async fn closing_a_tab_keeps_the_other_tab_signed_in() {
    let server = TestServer::start().await;
    let chan = "#server-to-user-42";
    let mut tab1 = server.signed_in(USER_42).await;
    tab1.subscribe(chan).await;
    let mut tab2 = server.signed_in(USER_42).await;
    tab2.subscribe(chan).await;
    tab1.close().await;
    support::wait_until("the closed tab to be signed out", support::TIMEOUT, || {
        server.ctx.registry.user_connections("1", "42").len() == 1
    })
    .await;
    server.assert_delivers(chan, &mut [&mut tab2]).await;
}
