//! HTTP API request signing (PUSHER-SPEC 2.1): every refusal is the right status with a
//! `{"error": ...}` body, publishes nothing, and leaves the server serving.

mod support;

use serde_json::json;
use support::{Client, Md5, Signing, TestServer};

const CHANNEL: &str = "auth-watch";

fn event_body() -> Vec<u8> {
    json!({"name": "should-not-arrive", "channel": CHANNEL, "data": "x"})
        .to_string()
        .into_bytes()
}

/// A subscriber on CHANNEL; after a refused request, the next thing it gets is a fresh
/// marker event (so the refused event was not delivered and publishing still works).
async fn watcher(server: &TestServer) -> Client {
    server.subscriber(CHANNEL).await
}

async fn nothing_published(server: &TestServer, w: &mut Client) {
    server.assert_delivers(CHANNEL, &mut [w]).await;
}

async fn post_events(server: &TestServer, signing: Signing) -> support::Reply {
    let api = server.api();
    api.request("POST", &api.path("events"), &[], &event_body(), signing)
        .await
}

#[tokio::test]
async fn correctly_signed_request_is_accepted() {
    let server = TestServer::start().await;
    let mut w = watcher(&server).await;
    let r = post_events(&server, Signing::default()).await;
    assert_eq!(r.ok(), &json!({}));
    assert_eq!(
        w.recv_json().await,
        json!({"event": "should-not-arrive", "channel": CHANNEL, "data": "x"})
    );
}

#[tokio::test]
async fn unknown_app_id_is_404() {
    let server = TestServer::start().await;
    let mut w = watcher(&server).await;
    for id in ["999", "0", "app-key"] {
        let api = server.api_for(id, support::KEY, support::SECRET);
        let r = api
            .request(
                "POST",
                &api.path("events"),
                &[],
                &event_body(),
                Signing::default(),
            )
            .await;
        r.assert_error(404);
        let r = api.get("channels", &[]).await;
        r.assert_error(404);
    }
    nothing_published(&server, &mut w).await;
}

#[tokio::test]
async fn disabled_app_is_403() {
    let server = TestServer::start().await;
    let api = server.api_for("3", "disabled-key", "disabled-secret");
    let r = api
        .post("events", &json!({"name": "e", "channel": "c", "data": "x"}))
        .await;
    r.assert_error(403);
    api.get("channels", &[]).await.assert_error(403);
}

#[tokio::test]
async fn wrong_auth_key_is_401() {
    let server = TestServer::start().await;
    let mut w = watcher(&server).await;
    // Another app's key (signed with that app's secret), and a made-up key.
    let r = post_events(
        &server,
        Signing {
            auth_key: Some("app-key-2".into()),
            secret: Some("app-secret-2".into()),
            ..Signing::default()
        },
    )
    .await;
    r.assert_error(401);
    let r = post_events(
        &server,
        Signing {
            auth_key: Some("nope".into()),
            ..Signing::default()
        },
    )
    .await;
    r.assert_error(401);
    nothing_published(&server, &mut w).await;
}

#[tokio::test]
async fn wrong_signature_is_401() {
    let server = TestServer::start().await;
    let mut w = watcher(&server).await;
    let cases = [
        Signing {
            secret: Some("wrong-secret".into()),
            ..Signing::default()
        },
        Signing {
            signature: Some("0".repeat(64)),
            ..Signing::default()
        },
        Signing {
            signature: Some("zz-not-hex".into()),
            ..Signing::default()
        },
        Signing {
            signature: Some(String::new()),
            ..Signing::default()
        },
    ];
    for s in cases {
        post_events(&server, s).await.assert_error(401);
    }
    // A GET whose query was changed after signing.
    let api = server.api();
    let path = api.path("channels");
    let ts = support::now_unix().to_string();
    let params = vec![
        ("auth_key".to_string(), support::KEY.to_string()),
        ("auth_timestamp".to_string(), ts.clone()),
        ("auth_version".to_string(), "1.0".to_string()),
    ];
    let sig = pushi::auth::sign(
        support::SECRET,
        pushi::auth::request_string("GET", &path, &params).as_bytes(),
    );
    let r = api
        .request(
            "GET",
            &path,
            &[("filter_by_prefix", "presence-")],
            b"",
            Signing {
                signature: Some(sig),
                timestamp: Some(ts),
                ..Signing::default()
            },
        )
        .await;
    r.assert_error(401);
    nothing_published(&server, &mut w).await;
}

#[tokio::test]
async fn missing_or_bad_timestamp_is_401() {
    let server = TestServer::start().await;
    let mut w = watcher(&server).await;
    post_events(
        &server,
        Signing {
            timestamp: None,
            ..Signing::default()
        },
    )
    .await
    .assert_error(401);
    post_events(
        &server,
        Signing {
            timestamp: Some("yesterday".into()),
            ..Signing::default()
        },
    )
    .await
    .assert_error(401);
    post_events(
        &server,
        Signing {
            timestamp: Some(String::new()),
            ..Signing::default()
        },
    )
    .await
    .assert_error(401);
    nothing_published(&server, &mut w).await;
}

#[tokio::test]
async fn expired_timestamp_is_401() {
    let server = TestServer::start().await;
    let mut w = watcher(&server).await;
    let now = support::now_unix();
    // 600 s or more away, either direction, is refused.
    for ts in [now - 600, now - 3600, now + 601, now + 86_400, 0] {
        post_events(
            &server,
            Signing {
                timestamp: Some(ts.to_string()),
                ..Signing::default()
            },
        )
        .await
        .assert_error(401);
    }
    nothing_published(&server, &mut w).await;
    // Well inside the window, both directions, is accepted.
    for ts in [now - 500, now + 500] {
        let r = post_events(
            &server,
            Signing {
                timestamp: Some(ts.to_string()),
                ..Signing::default()
            },
        )
        .await;
        assert_eq!(r.ok(), &json!({}));
        assert_eq!(w.recv_json().await["event"], "should-not-arrive");
    }
}

#[tokio::test]
async fn wrong_body_md5_is_401() {
    let server = TestServer::start().await;
    let mut w = watcher(&server).await;
    let body = event_body();
    let cases = [
        Md5::Omit,
        Md5::Value(pushi::auth::md5_hex(b"{}")),
        Md5::Value("0".repeat(32)),
    ];
    for m in cases {
        let r = post_events(
            &server,
            Signing {
                body_md5: m.clone(),
                ..Signing::default()
            },
        )
        .await;
        r.assert_error(401);
    }
    // Body changed after signing: body_md5 (and signature) no longer match.
    let api = server.api();
    let ts = support::now_unix().to_string();
    let params = vec![
        ("auth_key".to_string(), support::KEY.to_string()),
        ("auth_timestamp".to_string(), ts.clone()),
        ("auth_version".to_string(), "1.0".to_string()),
        ("body_md5".to_string(), pushi::auth::md5_hex(&body)),
    ];
    let path = api.path("events");
    let sig = pushi::auth::sign(
        support::SECRET,
        pushi::auth::request_string("POST", &path, &params).as_bytes(),
    );
    let tampered = json!({"name": "tampered", "channel": CHANNEL, "data": "y"}).to_string();
    let r = api
        .request(
            "POST",
            &path,
            &[],
            tampered.as_bytes(),
            Signing {
                timestamp: Some(ts),
                body_md5: Md5::Value(pushi::auth::md5_hex(&body)),
                signature: Some(sig),
                ..Signing::default()
            },
        )
        .await;
    r.assert_error(401);
    nothing_published(&server, &mut w).await;
}

#[tokio::test]
async fn auth_version_must_be_1_0() {
    let server = TestServer::start().await;
    let api = server.api();
    // A request without auth_version (otherwise correctly signed) is refused.
    let path = api.path("channels");
    let ts = support::now_unix().to_string();
    let params = vec![
        ("auth_key".to_string(), support::KEY.to_string()),
        ("auth_timestamp".to_string(), ts.clone()),
    ];
    let sig = pushi::auth::sign(
        support::SECRET,
        pushi::auth::request_string("GET", &path, &params).as_bytes(),
    );
    let url = format!(
        "{}{}?auth_key={}&auth_timestamp={}&auth_signature={}",
        api.base,
        path,
        support::KEY,
        ts,
        sig
    );
    let resp = api.http.get(&url).send().await.unwrap();
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].is_string(), "{body}");
}

#[tokio::test]
async fn query_keys_are_signed_lowercased_and_sorted() {
    // Signature computed over lowercased, sorted keys; unescaped values.
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    c.subscribe_presence("presence-q", r#"{"user_id":"1"}"#)
        .await;
    let r = server
        .api()
        .get(
            "channels",
            &[("info", "user_count"), ("filter_by_prefix", "presence-")],
        )
        .await;
    assert_eq!(
        r.ok(),
        &json!({"channels": {"presence-q": {"user_count": 1}}})
    );
}
