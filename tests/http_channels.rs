//! GET /channels, /channels/{c}, /channels/{c}/users, terminate_connections, and the health
//! checks.

mod support;

use serde_json::json;
use support::TestServer;

#[tokio::test]
async fn channels_lists_occupied_channels_only() {
    let server = TestServer::start().await;
    let api = server.api();
    assert_eq!(
        api.get("channels", &[]).await.ok(),
        &json!({"channels": {}})
    );

    let mut a = server.subscriber("alpha").await;
    a.subscribe_private("private-beta").await;
    let mut p = server.connect().await;
    p.subscribe_presence("presence-gamma", r#"{"user_id":"1"}"#)
        .await;
    let mut q = server.connect().await;
    q.subscribe_presence("presence-gamma", r#"{"user_id":"2"}"#)
        .await;
    q.subscribe_presence("presence-delta", r#"{"user_id":"2"}"#)
        .await;

    assert_eq!(
        api.get("channels", &[]).await.ok(),
        &json!({"channels": {"alpha": {}, "private-beta": {}, "presence-gamma": {}, "presence-delta": {}}})
    );
    assert_eq!(
        api.get("channels", &[("filter_by_prefix", "private-")])
            .await
            .ok(),
        &json!({"channels": {"private-beta": {}}})
    );
    assert_eq!(
        api.get(
            "channels",
            &[("filter_by_prefix", "presence-"), ("info", "user_count")]
        )
        .await
        .ok(),
        &json!({"channels": {"presence-gamma": {"user_count": 2}, "presence-delta": {"user_count": 1}}})
    );

    // Leaving empties a channel: it is no longer listed.
    a.send_json(&json!({"event": "pusher:unsubscribe", "data": {"channel": "alpha"}}))
        .await;
    a.ping_pong().await;
    drop(q);
    support::wait_until("presence-delta to empty", support::TIMEOUT, || {
        server
            .ctx
            .registry
            .channel_stats("1", "presence-delta")
            .subscription_count
            == 0
    })
    .await;
    assert_eq!(
        api.get("channels", &[]).await.ok(),
        &json!({"channels": {"private-beta": {}, "presence-gamma": {}}})
    );
    // Other apps see none of this.
    let api2 = server.api_for("2", "app-key-2", "app-secret-2");
    assert_eq!(
        api2.get("channels", &[]).await.ok(),
        &json!({"channels": {}})
    );
}

#[tokio::test]
async fn channels_user_count_needs_presence_prefix() {
    let server = TestServer::start().await;
    let _p = server.subscriber("x").await;
    let api = server.api();
    api.get("channels", &[("info", "user_count")])
        .await
        .assert_error(400);
    api.get(
        "channels",
        &[("info", "user_count"), ("filter_by_prefix", "private-")],
    )
    .await
    .assert_error(400);
    // The server keeps answering.
    assert_eq!(
        api.get("channels", &[]).await.ok(),
        &json!({"channels": {"x": {}}})
    );
}

#[tokio::test]
async fn channel_info() {
    let server = TestServer::start().await;
    let api = server.api();
    assert_eq!(
        api.get("channels/lonely", &[]).await.ok(),
        &json!({"occupied": false})
    );
    assert_eq!(
        api.get("channels/lonely", &[("info", "subscription_count")])
            .await
            .ok(),
        &json!({"occupied": false, "subscription_count": 0})
    );

    let _a = server.subscriber("busy").await;
    let _b = server.subscriber("busy").await;
    assert_eq!(
        api.get("channels/busy", &[]).await.ok(),
        &json!({"occupied": true})
    );
    assert_eq!(
        api.get("channels/busy", &[("info", "subscription_count")])
            .await
            .ok(),
        &json!({"occupied": true, "subscription_count": 2})
    );
    // user_count only on presence channels.
    api.get("channels/busy", &[("info", "user_count")])
        .await
        .assert_error(400);

    let mut p1 = server.connect().await;
    p1.subscribe_presence("presence-room", r#"{"user_id":"1"}"#)
        .await;
    let mut p2 = server.connect().await;
    p2.subscribe_presence("presence-room", r#"{"user_id":"1"}"#)
        .await;
    assert_eq!(
        api.get("channels/presence-room", &[("info", "user_count")])
            .await
            .ok(),
        &json!({"occupied": true, "user_count": 1})
    );
    assert_eq!(
        api.get(
            "channels/presence-room",
            &[("info", "user_count,subscription_count")]
        )
        .await
        .ok(),
        &json!({"occupied": true, "user_count": 1, "subscription_count": 2})
    );
    // Unknown attributes and invalid names are 400.
    api.get("channels/busy", &[("info", "bogus")])
        .await
        .assert_error(400);
    api.get("channels/bad%20name", &[]).await.assert_error(400);
    api.get(&format!("channels/{}", "a".repeat(165)), &[])
        .await
        .assert_error(400);
}

#[tokio::test]
async fn presence_users() {
    let server = TestServer::start().await;
    let api = server.api();
    let mut p1 = server.connect().await;
    p1.subscribe_presence("presence-users", r#"{"user_id":"2","user_info":{"n":"b"}}"#)
        .await;
    let mut p2 = server.connect().await;
    p2.subscribe_presence("presence-users", r#"{"user_id":1,"user_info":{"n":"a"}}"#)
        .await;
    let mut p3 = server.connect().await;
    p3.subscribe_presence("presence-users", r#"{"user_id":"2","user_info":{"n":"b"}}"#)
        .await;

    let r = api.get("channels/presence-users/users", &[]).await;
    let mut users = r.ok()["users"].as_array().expect("users array").clone();
    users.sort_by_key(|u| u["id"].as_str().unwrap_or("").to_string());
    assert_eq!(users, vec![json!({"id": "1"}), json!({"id": "2"})]);
    assert_eq!(r.json.as_object().unwrap().len(), 1, "{}", r.text);

    assert_eq!(
        api.get("channels/presence-empty/users", &[]).await.ok(),
        &json!({"users": []})
    );
    // Not a presence channel: 400.
    let _s = server.subscriber("public-users").await;
    api.get("channels/public-users/users", &[])
        .await
        .assert_error(400);
    api.get("channels/private-users/users", &[])
        .await
        .assert_error(400);
}

#[tokio::test]
async fn terminate_connections_answers_empty_object() {
    let server = TestServer::start().await;
    let mut c = server.subscriber("t").await;
    let r = server
        .api()
        .post("users/some-user/terminate_connections", &json!({}))
        .await;
    assert_eq!(r.ok(), &json!({}));
    // Not signed in as that user: untouched.
    c.ping_pong().await;
    server.assert_delivers("t", &mut [&mut c]).await;
}

#[tokio::test]
async fn health_checks() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let status = |path: &'static str| {
        let http = http.clone();
        let url = server.http_url(path);
        async move {
            http.get(url)
                .send()
                .await
                .expect("request")
                .status()
                .as_u16()
        }
    };
    assert_eq!(status("/up").await, 200);
    assert_eq!(status("/up/1").await, 200);
    assert_eq!(status("/up/2").await, 200);
    assert_eq!(status("/up/3").await, 404, "disabled app");
    assert_eq!(status("/up/999").await, 404, "unknown app");
}
