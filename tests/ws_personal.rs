//! Personal channels `private-personal-<user_id>` (EXTENSIONS.md §2): aggregation of the
//! user's offline subscriptions with `origin_channel` and `id`, live subscription changes,
//! the replay in `subscription_succeeded`, `{"since": id}` recovery with no gap and no
//! duplicate against a racing publisher, and the refusals.

mod support;

use std::collections::BTreeSet;

use serde_json::{json, Value};
use support::{unique, Client, TestServer};

async fn offline(server: &TestServer, route: &str, user: &str, channel: &str) {
    let r = server
        .api()
        .post(route, &json!({"user_id": user, "event": channel}))
        .await;
    assert_eq!(r.ok(), &json!({}), "{route} {user} {channel}");
}

/// Subscribes `client` to `user`'s personal channel, with `channel_data` when given; returns
/// the `subscription_succeeded` data.
async fn personal(client: &mut Client, user: &str, channel_data: Option<&str>) -> Value {
    let channel = format!("private-personal-{user}");
    let auth = client.auth_for(&channel, channel_data);
    client.send_subscribe(&channel, &auth, channel_data).await;
    client.expect_subscribed(&channel).await
}

fn ids(events: &Value) -> Vec<u64> {
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect()
}

fn names(events: &Value) -> Vec<String> {
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn aggregates_the_users_offline_subscriptions_live() {
    let server = TestServer::start().await;
    let api = server.api();
    let user = unique("p");
    let (a, b, c) = (unique("a-"), unique("b-"), unique("c-"));
    offline(&server, "subscribe", &user, &a).await;
    offline(&server, "subscribe", &user, &b).await;
    let mut client = server.connect().await;
    let data = personal(&mut client, &user, None).await;
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(data, json!({"channels": want, "events": []}));

    let personal_channel = format!("private-personal-{user}");
    api.publish(&a, "on-a", "{\"x\":1}").await;
    let got = client.recv_json().await;
    assert_eq!(got["event"], "on-a");
    assert_eq!(got["channel"], personal_channel.as_str());
    assert_eq!(got["data"], "{\"x\":1}");
    assert_eq!(got["origin_channel"], a.as_str());
    let first = got["id"].as_u64().expect("stored id");
    api.publish(&c, "on-c", "not subscribed").await;
    api.publish(&b, "on-b", "2").await;
    let got = client.recv_json().await;
    assert_eq!(got["event"], "on-b", "{got}");
    assert_eq!(got["origin_channel"], b.as_str());
    assert!(got["id"].as_u64().unwrap() > first);

    // A publish straight to the personal channel arrives, without origin or id.
    api.publish(&personal_channel, "direct", "d").await;
    let got = client.recv_json().await;
    assert_eq!(
        got,
        json!({"event": "direct", "channel": personal_channel, "data": "d"})
    );

    // Subscription changes apply at once to the live socket.
    offline(&server, "subscribe", &user, &c).await;
    offline(&server, "unsubscribe", &user, &a).await;
    api.publish(&a, "gone", "x").await;
    api.publish(&c, "now-c", "x").await;
    let got = client.recv_json().await;
    assert_eq!(got["event"], "now-c", "a is unsubscribed: {got}");
    assert_eq!(got["origin_channel"], c.as_str());
    client.expect_nothing(100).await;

    // Every socket of the user gets it; another user's personal channel does not.
    let mut second = server.connect().await;
    personal(&mut second, &user, None).await;
    let mut other = server.connect().await;
    personal(&mut other, &unique("someone-else"), None).await;
    api.publish(&b, "both", "x").await;
    assert_eq!(client.recv_json().await["event"], "both");
    assert_eq!(second.recv_json().await["event"], "both");
    other.expect_nothing(100).await;
}

#[tokio::test]
async fn subscription_succeeded_replays_the_last_n() {
    let server = TestServer::start_with("[storage]\nreplay_last = 3\n").await;
    let api = server.api();
    let user = unique("r");
    let (a, b) = (unique("a-"), unique("b-"));
    offline(&server, "subscribe", &user, &a).await;
    offline(&server, "subscribe", &user, &b).await;
    for i in 0..5 {
        let channel = if i % 2 == 0 { &a } else { &b };
        api.publish(channel, &format!("e{i}"), &i.to_string()).await;
    }
    let mut client = server.connect().await;
    let data = personal(&mut client, &user, None).await;
    assert_eq!(names(&data["events"]), ["e2", "e3", "e4"], "oldest first");
    let e = &data["events"][0];
    assert_eq!(e["channel"], a.as_str());
    assert_eq!(e["data"], "2");
    assert!(e["timestamp_ms"].as_u64().unwrap() > 0);
    let ids = ids(&data["events"]);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert!(data.get("truncated").is_none());
}

#[tokio::test]
async fn since_replays_every_missed_event_up_to_the_cap() {
    let server = TestServer::start_with("[storage]\nreplay_max = 4\n").await;
    let api = server.api();
    let user = unique("s");
    let a = unique("a-");
    offline(&server, "subscribe", &user, &a).await;
    let mut client = server.connect().await;
    personal(&mut client, &user, None).await;
    api.publish(&a, "seen", "x").await;
    let cursor = client.recv_json().await["id"].as_u64().unwrap();
    client.close().await;
    // Missed while away.
    for i in 0..3 {
        api.publish(&a, &format!("missed{i}"), "x").await;
    }
    let mut back = server.connect().await;
    let data = personal(
        &mut back,
        &user,
        Some(&json!({ "since": cursor }).to_string()),
    )
    .await;
    assert_eq!(names(&data["events"]), ["missed0", "missed1", "missed2"]);
    assert!(data.get("truncated").is_none());
    // More missed than the cap: the newest up to the cap, marked truncated.
    let last = *ids(&data["events"]).last().unwrap();
    back.close().await;
    for i in 0..6 {
        api.publish(&a, &format!("later{i}"), "x").await;
    }
    let mut again = server.connect().await;
    let data = personal(
        &mut again,
        &user,
        Some(&json!({ "since": last }).to_string()),
    )
    .await;
    assert_eq!(
        names(&data["events"]),
        ["later2", "later3", "later4", "later5"]
    );
    assert_eq!(data["truncated"], true);
    // Nothing after the cursor: an empty replay, then live events.
    let newest = *ids(&data["events"]).last().unwrap();
    let mut live = server.connect().await;
    let data = personal(
        &mut live,
        &user,
        Some(&json!({ "since": newest }).to_string()),
    )
    .await;
    assert_eq!(data["events"], json!([]));
    api.publish(&a, "fresh", "x").await;
    assert_eq!(live.recv_json().await["event"], "fresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_racing_the_subscribe_is_delivered_exactly_once() {
    let server = TestServer::start_with("[storage]\nreplay_max = 1000\n").await;
    racing_subscribe(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_racing_the_subscribe_is_delivered_exactly_once_with_mongodb() {
    let mongo = support::mongo::MongoServer::start();
    let config = pushi::config::MongoConfig {
        uri: mongo.uri(),
        database: "race".into(),
        connect_timeout: 5,
        server_selection_timeout: 5,
        startup_timeout: 30,
        change_stream: true,
        poll_interval: 1,
    };
    let connection = pushi::apps::mongo::Connection::open(&config).await.unwrap();
    let (storage, _) = pushi::storage::mongo::MongoStore::open(&connection);
    let server = TestServer::start_with_storage("[storage]\nreplay_max = 1000\n", storage).await;
    racing_subscribe(&server).await;
}

/// Three publishers on a channel `user` is offline-subscribed to, while a socket subscribes
/// to the personal channel with `since: 0`: the replay plus the live stream hold every event
/// exactly once, ids increasing.
async fn racing_subscribe(server: &TestServer) {
    let user = unique("race");
    let a = unique("a-");
    offline(server, "subscribe", &user, &a).await;
    let total = 300;
    // Publishers run while the socket subscribes with since = 0 (everything stored).
    let mut publishers = Vec::new();
    for w in 0..3 {
        let api = server.api();
        let a = a.clone();
        publishers.push(tokio::spawn(async move {
            for i in 0..total / 3 {
                api.publish(&a, &format!("w{w}-{i}"), "x").await;
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let mut client = server.connect().await;
    let data = personal(&mut client, &user, Some("{\"since\":0}")).await;
    let mut seen: Vec<u64> = ids(&data["events"]);
    let replayed = seen.len();
    for p in publishers {
        p.await.unwrap();
    }
    while seen.len() < total {
        let got = client.recv_json().await;
        assert_eq!(got["origin_channel"], a.as_str(), "{got}");
        seen.push(got["id"].as_u64().unwrap());
    }
    client.expect_nothing(200).await;
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "increasing, no duplicate (replayed {replayed})"
    );
    let distinct: BTreeSet<u64> = seen.iter().copied().collect();
    assert_eq!(distinct.len(), total);
    let stored = server
        .api()
        .get(&format!("users/{user}/events"), &[("limit", "100")])
        .await;
    let newest: Vec<u64> = ids(&stored.ok()["events"]);
    assert_eq!(
        newest[0],
        *seen.last().unwrap(),
        "nothing missing at the end"
    );
}

#[tokio::test]
async fn refusals() {
    let server = TestServer::start().await;
    let user = unique("x");
    let channel = format!("private-personal-{user}");
    let mut client = server.connect().await;
    // A signature for another user's personal channel.
    let other = client.auth_for(&format!("private-personal-{user}-not"), None);
    client.send_subscribe(&channel, &other, None).await;
    client.expect_subscription_error(&channel, 401).await;
    // No signature at all.
    client.send_subscribe(&channel, "", None).await;
    client.expect_subscription_error(&channel, 401).await;
    // A bad `since` (signed, so only its value is wrong).
    for data in [
        r#"{"since":"x"}"#,
        r#"{"since":-1}"#,
        r#"{"since":1.5}"#,
        r#"[1]"#,
        "not json",
    ] {
        let auth = client.auth_for(&channel, Some(data));
        client.send_subscribe(&channel, &auth, Some(data)).await;
        let msg = client.expect_subscription_error(&channel, 400).await;
        assert!(msg.contains("channel_data"), "{data}: {msg}");
    }
    // The connection is fine afterwards.
    let data = personal(&mut client, &user, None).await;
    assert_eq!(data, json!({"channels": [], "events": []}));
}
