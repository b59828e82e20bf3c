//! Live apps from the config file: SIGHUP re-reads `[[apps]]` and applies the difference to
//! the running server. A rotated secret refuses old signatures (HTTP and channel auth) while
//! live sockets stay; a disabled app's sockets are closed with 4003, a removed app's with
//! 4001; a file with an error is refused with the key named and the running apps stay.

mod support;

use std::time::Duration;

use serde_json::json;
use support::process::{api_at, ServerProcess};
use support::{config_text, Client, TIMEOUT};

const KEY: &str = "reload-key";

fn app8(secret: &str, enabled: bool) -> String {
    format!("[[apps]]\nid = \"8\"\nkey = \"{KEY}\"\nsecret = \"{secret}\"\nenabled = {enabled}\n")
}

/// The fixture plus app 8 as given, and `server_extra` lines in `[server]`.
fn text(app: &str, server_extra: &str) -> String {
    let mut t = config_text(server_extra);
    t.push('\n');
    t.push_str(app);
    t
}

async fn connect(server: &ServerProcess, secret: &str) -> Client {
    let url = server.ws_url(&format!("/app/{KEY}?protocol=7"));
    let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url.as_str()))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut c = Client {
        ws,
        socket_id: String::new(),
        key: KEY.to_string(),
        secret: secret.to_string(),
    };
    c.established().await;
    c
}

/// Rewrites the config file and sends SIGHUP.
fn reload(server: &ServerProcess, text: &str) {
    std::fs::write(server.config_path(), text).expect("rewrite the config");
    server.hangup();
}

fn event(channel: &str, name: &str) -> serde_json::Value {
    json!({"name": name, "channel": channel, "data": "{}"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_rotations_disables_and_removals_to_live_sockets() {
    let server = ServerProcess::start_text(text(&app8("old-secret", true), "")).await;
    let mut live = connect(&server, "old-secret").await;
    live.subscribe("news").await;
    let old = api_at(server.addr, "8", KEY, "old-secret");
    let new = api_at(server.addr, "8", KEY, "new-secret");
    assert_eq!(
        old.post("events", &event("news", "before")).await.status,
        200
    );
    assert_eq!(live.recv_json().await["event"], "before");

    // Rotate the secret (and change a [server] and a [storage] key, which need a restart).
    reload(
        &server,
        &text(
            &app8("new-secret", true),
            "[server]\nwrite_timeout = 7\n[storage]\nreplay_last = 3\n",
        ),
    );
    server
        .logged("apps changed", 1, Duration::from_secs(5))
        .await;
    assert!(
        server.stderr_text().contains("sections=server, storage"),
        "{}",
        server.stderr_text()
    );
    old.post("events", &event("news", "x"))
        .await
        .assert_error(401);
    assert_eq!(
        new.post("events", &event("news", "after")).await.status,
        200
    );
    // The live socket stayed and gets the event; channel auth now needs the new secret.
    assert_eq!(live.recv_json().await["event"], "after");
    let stale = live.auth_for("private-a", None);
    live.send_subscribe("private-a", &stale, None).await;
    live.expect_subscription_error("private-a", 401).await;
    live.secret = "new-secret".into();
    live.subscribe_private("private-b").await;

    // A file with an error is refused, naming the key; the running apps stay.
    reload(
        &server,
        &text(
            "[[apps]]\nid = \"8\"\nkey = \"reload-key\"\nsecret = 5\n",
            "",
        ),
    );
    server
        .logged("config reload refused", 1, Duration::from_secs(5))
        .await;
    let log = server.stderr_text();
    assert!(log.contains("secret"), "{log}");
    assert_eq!(
        new.post("events", &event("news", "still")).await.status,
        200
    );
    assert_eq!(live.recv_json().await["event"], "still");

    // Disable: live sockets get 4003, new ones are refused with 4003, the API with 403.
    reload(&server, &text(&app8("new-secret", false), ""));
    live.expect_fatal(4003).await;
    let url = server.ws_url(&format!("/app/{KEY}?protocol=7"));
    let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let mut refused = Client {
        ws,
        socket_id: String::new(),
        key: KEY.into(),
        secret: String::new(),
    };
    refused.expect_fatal(4003).await;
    new.post("events", &event("news", "x"))
        .await
        .assert_error(403);

    // Enable again, then remove: the app's sockets get 4001, the API 404.
    reload(&server, &text(&app8("new-secret", true), ""));
    server
        .logged("apps changed", 3, Duration::from_secs(5))
        .await;
    let mut again = connect(&server, "new-secret").await;
    reload(&server, &text("", ""));
    again.expect_fatal(4001).await;
    new.post("events", &event("news", "x"))
        .await
        .assert_error(404);

    // App 1 of the fixture was never touched.
    let mut witness = support::process::connect_at(server.addr).await;
    witness.subscribe("w").await;
    support::process::publish_at(server.addr, "w", "ok", "{}").await;
    assert_eq!(witness.recv_json().await["event"], "ok");
}
