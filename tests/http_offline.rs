//! Offline subscriptions over the signed HTTP API (EXTENSIONS.md §1): `POST /subscribe`,
//! `/unsubscribe`, `GET /users/{u}/subscriptions`, `GET /users/{u}/events`; what a publish
//! stores (and what it does not); bad input; a store that fails.

mod support;

use std::sync::Arc;

use async_trait::async_trait;
use pushi::storage::{
    ActiveSubscription, ChannelRange, EventStore, Interval, NewEvent, Order, Retention, Storage,
    StoreError, StoreStatus, StoredEvent, SubscriptionStore, UserChannel,
};
use serde_json::{json, Value};
use support::{unique, TestServer};

async fn subscribe(api: &support::Api, user: &str, channel: &str) {
    let r = api
        .post("subscribe", &json!({"user_id": user, "event": channel}))
        .await;
    assert_eq!(r.ok(), &json!({}), "subscribe {user} to {channel}");
}

async fn unsubscribe(api: &support::Api, user: &str, channel: &str) {
    let r = api
        .post("unsubscribe", &json!({"user_id": user, "event": channel}))
        .await;
    assert_eq!(r.ok(), &json!({}), "unsubscribe {user} from {channel}");
}

async fn events(api: &support::Api, user: &str, query: &[(&str, &str)]) -> Vec<Value> {
    let r = api.get(&format!("users/{user}/events"), query).await;
    r.ok()["events"].as_array().expect("events array").clone()
}

fn names(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn subscriptions_store_what_is_published_meanwhile() {
    let server = TestServer::start().await;
    let api = server.api();
    let user = unique("u");
    let (a, b, c) = (unique("a-"), unique("b-"), unique("c-"));
    api.publish(&a, "before", "0").await;
    subscribe(&api, &user, &a).await;
    subscribe(&api, &user, &a).await; // idempotent
                                      // `channel` is accepted for `event`.
    let r = api
        .post("subscribe", &json!({"user_id": user, "channel": b}))
        .await;
    assert_eq!(r.ok(), &json!({}));
    api.publish(&a, "a1", "{\"n\":1}").await;
    api.publish(&b, "b1", "x").await;
    api.publish(&c, "c1", "not subscribed").await;
    unsubscribe(&api, &user, &a).await;
    unsubscribe(&api, &user, &a).await; // idempotent
    api.publish(&a, "after", "x").await;

    let r = api.get(&format!("users/{user}/subscriptions"), &[]).await;
    assert_eq!(r.ok(), &json!({ "channels": [b] }));

    let all = events(&api, &user, &[]).await;
    assert_eq!(names(&all), ["b1", "a1"], "newest first: {all:?}");
    let a1 = &all[1];
    assert_eq!(a1["channel"], a.as_str());
    assert_eq!(a1["data"], "{\"n\":1}", "data exactly as published");
    let id = a1["id"].as_u64().expect("numeric id");
    assert!(all[0]["id"].as_u64().unwrap() > id);
    let ts = a1["timestamp_ms"].as_u64().expect("timestamp_ms");
    let now = support::now_unix() as u64 * 1000;
    assert!(ts <= now + 1000 && ts + 60_000 > now, "{ts} vs {now}");
    let keys: Vec<&String> = a1.as_object().unwrap().keys().collect();
    assert_eq!(
        keys.len(),
        5,
        "id, channel, event, data, timestamp_ms: {a1}"
    );

    assert_eq!(names(&events(&api, &user, &[("limit", "1")]).await), ["b1"]);
    let before = all[0]["id"].to_string();
    assert_eq!(
        names(&events(&api, &user, &[("before", &before)]).await),
        ["a1"]
    );
    // A batch is stored too, in order.
    let r = api
        .post(
            "batch_events",
            &json!({"batch": [
                {"name": "x1", "channel": b, "data": "1"},
                {"name": "x2", "channel": c, "data": "2"},
                {"name": "x3", "channel": b, "data": "3"},
            ]}),
        )
        .await;
    assert_eq!(r.ok(), &json!({}));
    assert_eq!(
        names(&events(&api, &user, &[("limit", "3")]).await),
        ["x3", "x1", "b1"]
    );
}

#[tokio::test]
async fn a_user_never_seen_has_nothing() {
    let server = TestServer::start().await;
    let api = server.api();
    let r = api.get("users/nobody-at-all/subscriptions", &[]).await;
    assert_eq!(r.ok(), &json!({"channels": []}));
    let r = api.get("users/nobody-at-all/events", &[]).await;
    assert_eq!(r.ok(), &json!({"events": []}));
}

#[tokio::test]
async fn client_events_are_stored_with_their_sender() {
    let server = TestServer::start().await;
    let api = server.api();
    let channel = unique("presence-room-");
    let user = unique("reader");
    subscribe(&api, &user, &channel).await;
    let mut alice = server.connect().await;
    alice
        .subscribe_presence(&channel, r#"{"user_id":"alice","user_info":{}}"#)
        .await;
    let mut bob = server.connect().await;
    bob.subscribe_presence(&channel, r#"{"user_id":"bob","user_info":{}}"#)
        .await;
    alice.recv_event("pusher_internal:member_added").await;
    alice
        .trigger("client-typing", &channel, json!({"on": true}))
        .await;
    let got = bob.recv_event("client-typing").await;
    assert_eq!(got["user_id"], "alice");
    let stored = events(&api, &user, &[]).await;
    assert_eq!(names(&stored), ["client-typing"]);
    assert_eq!(stored[0]["data"], json!({"on": true}), "raw JSON kept");
    assert_eq!(stored[0]["user_id"], "alice");
}

#[tokio::test]
async fn a_channel_without_offline_subscribers_stores_nothing_and_many_subscribers_store_once() {
    let server = TestServer::start().await;
    let api = server.api();
    let storage = server.ctx.publisher.storage().clone();
    let stored = |channel: String| {
        let storage = storage.clone();
        async move {
            let range = vec![ChannelRange {
                channel,
                ids: 0..u64::MAX,
            }];
            storage
                .events
                .events("1", range, 10_000, Order::OldestFirst)
                .await
                .unwrap()
        }
    };
    let quiet = unique("quiet-");
    for i in 0..20 {
        api.publish(&quiet, "e", &i.to_string()).await;
    }
    assert!(stored(quiet).await.is_empty());

    let busy = unique("busy-");
    let users: Vec<String> = (0..1000).map(|i| format!("fan{i}")).collect();
    for user in &users {
        server
            .ctx
            .publisher
            .offline("1", user, &busy, true)
            .await
            .unwrap();
    }
    api.publish(&busy, "news", "once").await;
    assert_eq!(stored(busy.clone()).await.len(), 1, "one stored event");
    for user in [&users[0], &users[499], &users[999]] {
        assert_eq!(names(&events(&api, user, &[]).await), ["news"]);
    }
}

#[tokio::test]
async fn bad_input_gets_a_400_naming_the_problem() {
    let server = TestServer::start_with("[storage]\nmax_subscriptions_per_user = 2\n").await;
    let api = server.api();
    let long = "u".repeat(129);
    for (body, needle) in [
        (json!({"event": "news"}), "user_id"),
        (json!({"user_id": 5, "event": "news"}), "user_id"),
        (json!({"user_id": long, "event": "news"}), "128"),
        (json!({"user_id": "a b", "event": "news"}), "user_id"),
        (json!({"user_id": "u"}), "event"),
        (json!({"user_id": "u", "event": "bad channel"}), "channel"),
        (
            json!({"user_id": "u", "event": "news", "channel": "news"}),
            "not both",
        ),
        (
            json!({"user_id": "u", "event": "private-personal-u"}),
            "private-personal-u",
        ),
        (
            json!({"user_id": "u", "event": "#server-to-user-u"}),
            "#server-to-user-u",
        ),
    ] {
        let r = api.post("subscribe", &body).await;
        let msg = r.assert_error(400);
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    let r = api.post_bytes("subscribe", b"not json").await;
    r.assert_error(400);

    subscribe(&api, "u", "one").await;
    subscribe(&api, "u", "two").await;
    subscribe(&api, "u", "two").await; // already there: not a third
    let r = api
        .post("subscribe", &json!({"user_id": "u", "event": "three"}))
        .await;
    assert!(r.assert_error(400).contains("2"), "{}", r.text);

    for (query, needle) in [
        (vec![("limit", "0")], "limit"),
        (vec![("limit", "101")], "limit"),
        (vec![("limit", "x")], "limit"),
        (vec![("before", "x")], "before"),
        (vec![("before", "-1")], "before"),
    ] {
        let r = api.get("users/u/events", &query).await;
        let msg = r.assert_error(400);
        assert!(msg.contains(needle), "{query:?}: {msg}");
    }
    let r = api
        .get(&format!("users/{}/events", "u".repeat(129)), &[])
        .await;
    r.assert_error(400);
    let r = api.get("users/a%20b/subscriptions", &[]).await;
    r.assert_error(400);
    // Wrong methods and unsigned requests.
    let r = api.get("subscribe", &[]).await;
    assert_eq!(r.status, 405, "{}", r.text);
    let r = api.post("users/u/events", &json!({})).await;
    assert_eq!(r.status, 405, "{}", r.text);
    let url = server.http_url("/apps/1/users/u/events");
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // The good subscriptions are untouched by all of it.
    let r = api.get("users/u/subscriptions", &[]).await;
    assert_eq!(r.ok(), &json!({"channels": ["one", "two"]}));
}

/// A store whose event writes fail (as on a full disk); subscriptions work.
#[derive(Debug)]
struct DiskFull;

#[async_trait]
impl EventStore for DiskFull {
    async fn append(
        &self,
        _: &str,
        _: Vec<NewEvent>,
        _: pushi::storage::OnCommit,
    ) -> Result<Vec<u64>, StoreError> {
        Err(StoreError::Unavailable("No space left on device".into()))
    }
    async fn events(
        &self,
        _: &str,
        _: Vec<ChannelRange>,
        _: usize,
        _: Order,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        Err(StoreError::Unavailable("No space left on device".into()))
    }
    async fn prune(&self, _: Retention, _: u64) -> Result<u64, StoreError> {
        Ok(0)
    }
}

#[async_trait]
impl SubscriptionStore for DiskFull {
    async fn subscribe(&self, _: &str, _: &str, _: &str) -> Result<bool, StoreError> {
        Ok(true)
    }
    async fn unsubscribe(&self, _: &str, _: &str, _: &str) -> Result<bool, StoreError> {
        Ok(true)
    }
    async fn user(&self, _: &str, _: &str) -> Result<Vec<UserChannel>, StoreError> {
        Ok(vec![UserChannel {
            channel: "earlier".into(),
            intervals: vec![Interval { from: 1, to: None }],
        }])
    }
    async fn active(&self) -> Result<Vec<ActiveSubscription>, StoreError> {
        Ok(Vec::new())
    }
}

#[tokio::test]
async fn a_failing_store_answers_503_delivers_nothing_of_that_publish_and_live_traffic_goes_on() {
    let storage = Storage::new(Arc::new(DiskFull), "test", Arc::new(StoreStatus::default()));
    let server = TestServer::start_with_storage("", storage).await;
    let api = server.api();
    let stored = unique("stored-");
    let live = unique("live-");
    subscribe(&api, "u", &stored).await;
    let mut on_stored = server.subscriber(&stored).await;
    let mut on_live = server.subscriber(&live).await;

    let r = api
        .post(
            "events",
            &json!({"name": "e", "channels": [live, stored], "data": "x"}),
        )
        .await;
    let msg = r.assert_error(503);
    assert!(msg.contains("No space left on device"), "{msg}");
    // Nothing of the refused publish was delivered, on either channel.
    api.publish(&live, "marker", "m").await;
    assert_eq!(on_live.recv_json().await["event"], "marker");
    on_stored.expect_nothing(200).await;
    // Reading the user's events fails the same way, with a JSON body.
    let r = api.get("users/u/events", &[]).await;
    assert!(r.assert_error(503).contains("No space"));
}

#[tokio::test]
async fn a_personal_channel_whose_replay_cannot_be_read_is_refused_with_503() {
    let storage = Storage::new(Arc::new(DiskFull), "test", Arc::new(StoreStatus::default()));
    let server = TestServer::start_with_storage("", storage).await;
    let mut client = server.connect().await;
    let channel = "private-personal-u";
    let auth = client.auth_for(channel, None);
    client.send_subscribe(channel, &auth, None).await;
    let msg = client.expect_subscription_error(channel, 503).await;
    assert!(msg.contains("No space left on device"), "{msg}");
    // Not left half-subscribed: a direct publish does not reach it; the socket still works.
    server.api().publish(channel, "direct", "x").await;
    let other = unique("other-");
    client.subscribe(&other).await;
    server.api().publish(&other, "marker", "m").await;
    assert_eq!(client.recv_json().await["event"], "marker");
}
