//! The debug console over real HTTP: off by default; per-app login with the secret (one
//! answer for a wrong secret and an unknown app); tokens bound to their app; the live feed
//! (server-sent events) carrying connections, subscriptions, API publishes and client
//! events as they happen; the event creator publishing through the API's pipeline; a
//! console that does not read is dropped, not buffered for; in a cluster, a console on one
//! node sees what happens on the others.

mod support;

use serde_json::{json, Value};
use support::{TestServer, APP_ID, SECRET, TIMEOUT};

const ON: &str = "[console]\nenabled = true\n";

async fn login(server: &TestServer, app_id: &str, secret: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(server.http_url("/console/login"))
        .json(&json!({"app_id": app_id, "secret": secret}))
        .send()
        .await
        .unwrap()
}

async fn token(server: &TestServer) -> String {
    let res = login(server, APP_ID, SECRET).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["app_id"], APP_ID);
    let token = body["token"].as_str().unwrap().to_string();
    assert!(!token.contains(SECRET));
    token
}

/// An open feed: reads server-sent events one at a time.
struct Feed {
    res: reqwest::Response,
    buf: String,
}

impl Feed {
    async fn open(server: &TestServer, app_id: &str, token: &str) -> Feed {
        let res = reqwest::Client::new()
            .get(server.http_url(&format!("/console/apps/{app_id}/feed?token={token}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let mut feed = Feed {
            res,
            buf: String::new(),
        };
        // The console is registered once the stream has begun.
        assert_eq!(feed.next().await, Some(("open".into(), "{}".into())));
        feed
    }

    /// The next event's (name, data); `None` when the stream ended.
    async fn next(&mut self) -> Option<(String, String)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut name, mut data) = (String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if name.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some((name, data));
            }
            let chunk = tokio::time::timeout(TIMEOUT, self.res.chunk())
                .await
                .expect("a feed event in time")
                .expect("the feed reads");
            self.buf.push_str(std::str::from_utf8(&chunk?).unwrap());
        }
    }

    /// The next record, whatever it is.
    async fn strict(&mut self) -> Value {
        let (name, data) = self.next().await.expect("the feed is open");
        assert_eq!(name, "record");
        serde_json::from_str(&data).unwrap()
    }

    /// The next record of `kind` (others are skipped).
    async fn record(&mut self, kind: &str) -> Value {
        loop {
            let (name, data) = self.next().await.expect("the feed is open");
            assert_eq!(name, "record");
            let v: Value = serde_json::from_str(&data).unwrap();
            if v["type"] == kind {
                return v;
            }
        }
    }
}

#[tokio::test]
async fn the_console_is_off_unless_enabled() {
    let server = TestServer::start().await;
    let res = reqwest::get(server.http_url("/console")).await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(login(&server, APP_ID, SECRET).await.status(), 404);
}

#[tokio::test]
async fn the_page_is_served_from_the_binary_with_its_own_scripts_only() {
    let server = TestServer::start_with(ON).await;
    let res = reqwest::get(server.http_url("/console")).await.unwrap();
    assert_eq!(res.status(), 200);
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    let html = res.text().await.unwrap();
    assert!(html.contains(r#"<script src="/console/console.js""#));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no CDN"
    );
    for (path, kind) in [
        ("/console/console.js", "javascript"),
        ("/console/console.css", "css"),
    ] {
        let res = reqwest::get(server.http_url(path)).await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert!(res.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains(kind));
    }
}

#[tokio::test]
async fn login_takes_the_app_secret_and_tokens_stay_with_their_app() {
    let server = TestServer::start_with(ON).await;
    let wrong = login(&server, APP_ID, "not-the-secret").await;
    assert_eq!(wrong.status(), 401);
    let wrong: Value = wrong.json().await.unwrap();
    let unknown: Value = login(&server, "no-such-app", SECRET)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(wrong, unknown, "no hint of which app ids exist");
    let bad = reqwest::Client::new()
        .post(server.http_url("/console/login"))
        .body("app_id=1")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.json::<Value>().await.unwrap()["error"].is_string());

    let token = token(&server).await;
    let http = reqwest::Client::new();
    let state = |app: &str, auth: Option<String>| {
        let mut req = http.get(server.http_url(&format!("/console/apps/{app}/state")));
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        req.send()
    };
    let ok = state(APP_ID, Some(format!("Bearer {token}")))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let body: Value = ok.json().await.unwrap();
    assert_eq!(body["app_id"], APP_ID);
    assert!(!body.to_string().contains(SECRET), "no secret in the state");
    for (app, auth) in [
        (APP_ID, None),
        (APP_ID, Some("Bearer 99999999999.00".to_string())),
        ("2", Some(format!("Bearer {token}"))),
    ] {
        let res = state(app, auth.clone()).await.unwrap();
        assert_eq!(res.status(), 401, "{app} {auth:?}");
        assert!(res.json::<Value>().await.unwrap()["error"].is_string());
    }
    let feed = http
        .get(server.http_url("/console/apps/2/feed"))
        .query(&[("token", &token)])
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_shows_what_happens_to_the_app_as_it_happens() {
    let server = TestServer::start_with(ON).await;
    let token = token(&server).await;
    let mut feed = Feed::open(&server, APP_ID, &token).await;

    let mut client = server.connect().await;
    let socket_id = client.socket_id.clone();
    let r = feed.record("connected").await;
    assert_eq!(r["socket_id"], socket_id.as_str());

    let channel = support::unique("private-console");
    client.subscribe_private(&channel).await;
    let r = feed.record("subscribed").await;
    assert_eq!(
        (r["channel"].as_str(), r["socket_id"].as_str()),
        (Some(channel.as_str()), Some(socket_id.as_str()))
    );

    let res = server
        .api()
        .post(
            "events",
            &json!({"name": "from-api", "channel": channel, "data": "{\"n\":1}"}),
        )
        .await;
    assert_eq!(res.status, 200);
    let r = feed.record("api_message").await;
    assert_eq!(r["event"], "from-api");
    assert_eq!(r["data"], "{\"n\":1}");

    client
        .send_json(&json!({"event": "client-typing", "channel": channel, "data": {"x": true}}))
        .await;
    let r = feed.record("client_event").await;
    assert_eq!(r["event"], "client-typing");
    assert_eq!(r["socket_id"], socket_id.as_str());
    assert_eq!(r["data"], "{\"x\":true}");

    // Another app's traffic is not in this app's feed.
    let _other = server.connect_app("app-key-2", "app-secret-2").await;
    drop(client);
    // Strictly next: app 2's connection would have come first.
    let r = feed.strict().await;
    assert_eq!(
        (r["type"].as_str(), r["channel"].as_str()),
        (Some("unsubscribed"), Some(channel.as_str()))
    );
    let r = feed.strict().await;
    assert_eq!(
        (r["type"].as_str(), r["socket_id"].as_str()),
        (Some("disconnected"), Some(socket_id.as_str()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_creator_publishes_through_the_api_pipeline() {
    let server = TestServer::start_with(ON).await;
    let token = token(&server).await;
    let channel = support::unique("creator");
    let mut sub = server.subscriber(&channel).await;
    let http = reqwest::Client::new();
    let post = |body: Value| {
        http.post(server.http_url(&format!("/console/apps/{APP_ID}/events")))
            .header("authorization", format!("Bearer {token}"))
            .json(&body)
            .send()
    };
    let res = post(json!({"name": "made-here", "channel": channel, "data": "{\"a\":1}"}))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let got = sub.recv_event("made-here").await;
    assert_eq!(got["data"], "{\"a\":1}");
    // The API's own checks apply.
    let res = post(json!({"name": "x", "channel": "bad name!", "data": "1"}))
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.json::<Value>().await.unwrap()["error"].is_string());
    let res = http
        .post(server.http_url(&format!("/console/apps/{APP_ID}/events")))
        .json(&json!({"name": "x", "channel": channel, "data": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "no token, no publish");
    sub.expect_nothing(200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_that_does_not_read_is_dropped() {
    let server = TestServer::start_with(ON).await;
    let token = token(&server).await;
    let mut stalled = Feed::open(&server, APP_ID, &token).await;
    // Far more records than the ring and every socket buffer between hold; the console
    // reads none of them meanwhile.
    let api = server.api();
    let data = "x".repeat(2000);
    let channel = support::unique("flood");
    let batch: Vec<Value> = (0..10)
        .map(|_| json!({"name": "e", "channel": channel, "data": data}))
        .collect();
    for _ in 0..1500 {
        let res = api.post("batch_events", &json!({ "batch": batch })).await;
        assert_eq!(res.status, 200);
    }
    // Reading now: what was buffered, then `dropped`.
    let mut records = 0;
    loop {
        let (name, _) = stalled
            .next()
            .await
            .expect("the stream goes on until dropped");
        match name.as_str() {
            "record" => records += 1,
            "dropped" => break,
            other => panic!("unexpected event {other}"),
        }
    }
    assert!(records < 15_000, "not everything was buffered: {records}");
    // The server let go of the console: its place among the app's watchers is gone.
    support::wait_until("the stalled console is released", TIMEOUT, || {
        server.ctx.feed.watched_here().is_empty()
    })
    .await;
    // The server goes on: a new console works.
    let mut fresh = Feed::open(&server, APP_ID, &token).await;
    server
        .api()
        .post(
            "events",
            &json!({"name": "after", "channel": channel, "data": "1"}),
        )
        .await;
    assert_eq!(fresh.record("api_message").await["event"], "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_a_console_sees_every_node() {
    let redis = support::redis::RedisServer::start();
    let overrides = format!(
        "[cluster]\nredis_url = \"{}\"\nnode_timeout = 3\ncommand_timeout = 1\n{ON}",
        redis.url()
    );
    let a = TestServer::start_with(&overrides).await;
    let b = TestServer::start_with(&overrides).await;
    // Nobody watches: no node records anything.
    assert!(!b.ctx.feed.is_watched(APP_ID));
    // Logged in on A, the token works on B too (signed with the app secret, not a session).
    let token = token(&a).await;
    let mut feed = Feed::open(&a, APP_ID, &token).await;
    support::wait_until("node B learns of the console on A", TIMEOUT, || {
        b.ctx.feed.is_watched(APP_ID)
    })
    .await;

    let mut client = b.connect().await;
    // A's state counts B's connection.
    let state: Value = reqwest::Client::new()
        .get(a.http_url(&format!("/console/apps/{APP_ID}/state")))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["connections"], 1, "{state}");
    let r = feed.record("connected").await;
    assert_eq!(r["socket_id"], client.socket_id.as_str());
    let node_b = b.ctx.cluster.as_ref().unwrap().id().to_string();
    assert_eq!(r["node"], node_b.as_str(), "the record names the node");

    let channel = support::unique("private-cluster-console");
    client.subscribe_private(&channel).await;
    assert_eq!(feed.record("subscribed").await["channel"], channel.as_str());
    let res = b
        .api()
        .post(
            "events",
            &json!({"name": "on-b", "channel": channel, "data": "1"}),
        )
        .await;
    assert_eq!(res.status, 200);
    let r = feed.record("api_message").await;
    assert_eq!(
        (r["event"].as_str(), r["node"].as_str()),
        (Some("on-b"), Some(node_b.as_str()))
    );

    // The event creator on A reaches the client on B.
    let res = reqwest::Client::new()
        .post(a.http_url(&format!("/console/apps/{APP_ID}/events")))
        .header("authorization", format!("Bearer {token}"))
        .json(&json!({"name": "from-console", "channel": channel, "data": "2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(client.recv_event("on-b").await["data"], "1");
    assert_eq!(client.recv_event("from-console").await["data"], "2");
    // Its record comes from A itself.
    let r = feed.record("api_message").await;
    assert_eq!(r["event"], "from-console");
    let node_a = a.ctx.cluster.as_ref().unwrap().id().to_string();
    assert_eq!(r["node"], node_a.as_str());
}
