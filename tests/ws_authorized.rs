//! `authorized_connections` apps (PUSHER-SPEC 1.5, 4009 "Connection is unauthorized"): a
//! connection must sign in, or subscribe to a channel that needs a signature, within
//! `server.authorization_timeout`; otherwise `pusher:error` 4009 then close 4009.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{Client, TestServer};

const KEY: &str = "authz-key";
const SECRET: &str = "authz-secret";

const OVERRIDES: &str = "[server]\nauthorization_timeout = 1\n";
const EXTRA_APP: &str = r#"
[[apps]]
id = "9"
key = "authz-key"
secret = "authz-secret"
authorized_connections = true
client_events = true
"#;

async fn server() -> TestServer {
    TestServer::start_with_apps(OVERRIDES, EXTRA_APP).await
}

/// Reads 4009 and returns how long after `since` it arrived.
async fn expect_4009(c: &mut Client, since: Instant) -> Duration {
    let msg = c.expect_fatal(4009).await;
    assert!(!msg.is_empty());
    since.elapsed()
}

#[tokio::test]
async fn a_silent_connection_is_closed_with_4009_after_the_timeout() {
    let server = server().await;
    let mut silent = server.connect_app(KEY, SECRET).await;
    let since = Instant::now();
    // Staying active does not count as authorizing.
    silent.ping_pong().await;
    let took = expect_4009(&mut silent, since).await;
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(3000),
        "closed after {took:?}, timeout is 1 s"
    );
    support::wait_until("the connection to be released", support::TIMEOUT, || {
        server.connection_count("9") == 0
    })
    .await;
}

#[tokio::test]
async fn public_subscriptions_and_failed_signins_do_not_authorize() {
    let server = server().await;
    let since = Instant::now();
    let mut public = server.connect_app(KEY, SECRET).await;
    public.subscribe("news").await;

    let mut bad_signin = server.connect_app(KEY, SECRET).await;
    bad_signin
        .send_signin(&format!("{KEY}:{}", "0".repeat(64)), r#"{"id":"1"}"#)
        .await;
    bad_signin.expect_error(None).await;

    let mut bad_private = server.connect_app(KEY, SECRET).await;
    bad_private
        .send_subscribe("private-x", &format!("{KEY}:{}", "0".repeat(64)), None)
        .await;
    bad_private
        .expect_subscription_error("private-x", 401)
        .await;

    for c in [&mut public, &mut bad_signin, &mut bad_private] {
        let took = expect_4009(c, since).await;
        assert!(took < Duration::from_millis(3000), "closed after {took:?}");
    }
}

#[tokio::test]
async fn signing_in_or_a_signed_subscription_in_time_keeps_the_connection() {
    let server = server().await;
    let mut signed_in = server.connect_app(KEY, SECRET).await;
    signed_in.signin(r#"{"id":"u1"}"#).await;

    let mut private = server.connect_app(KEY, SECRET).await;
    private.subscribe_private("private-authz").await;

    let mut presence = server.connect_app(KEY, SECRET).await;
    presence
        .subscribe_presence("presence-authz", r#"{"user_id":"u2","user_info":{}}"#)
        .await;

    // A control that is not authorized, opened last: it is closed, proving the timer runs.
    let since = Instant::now();
    let mut control = server.connect_app(KEY, SECRET).await;
    // Apps without authorized_connections are not affected.
    let mut app1 = server.connect().await;

    let took = expect_4009(&mut control, since).await;
    assert!(took < Duration::from_millis(3000), "closed after {took:?}");
    // Past the timeout for everyone else too; wait a little more than the timeout again.
    let all = [&mut signed_in, &mut private, &mut presence, &mut app1];
    futures_util::future::join_all(all.into_iter().map(|c| async move {
        c.expect_nothing(600).await;
        c.ping_pong().await;
    }))
    .await;
    assert!(since.elapsed() > Duration::from_millis(1500));

    // They keep working.
    let api = server.api_for("9", KEY, SECRET);
    api.publish("private-authz", "ev", "d").await;
    assert_eq!(
        private.recv_json().await,
        json!({"event": "ev", "channel": "private-authz", "data": "d"})
    );
    assert_eq!(server.connection_count("9"), 3);
}
