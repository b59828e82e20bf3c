//! Cache channels (PUSHER-SPEC 1.4 `pusher:cache_miss`, 2.2 `info=cache`): a new subscriber
//! gets `subscription_succeeded` and then either the last HTTP-published event or
//! `pusher:cache_miss`; client events are not cached; entries expire after `limits.cache_ttl`.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{Client, TestServer};

/// Reads the next frame, which must be `pusher:cache_miss` for `channel` (data, when present,
/// is the empty object as a string, as sockudo sends it).
async fn expect_cache_miss(c: &mut Client, channel: &str) {
    let v = c.recv_json().await;
    assert_eq!(v["event"], "pusher:cache_miss", "{v}");
    assert_eq!(v["channel"], channel, "{v}");
    let obj = v.as_object().unwrap();
    if let Some(data) = obj.get("data") {
        assert_eq!(data, &json!("{}"), "{v}");
    }
    assert!(
        obj.keys()
            .all(|k| ["event", "channel", "data"].contains(&k.as_str())),
        "{v}"
    );
}

fn event(name: &str, channel: &str, data: &str) -> Value {
    json!({"event": name, "channel": channel, "data": data})
}

#[tokio::test]
async fn public_cache_channel_miss_then_replay_of_the_last_event() {
    let server = TestServer::start().await;
    let chan = "cache-x";
    let mut first = server.connect().await;
    first.subscribe(chan).await;
    expect_cache_miss(&mut first, chan).await;

    let api = server.api();
    api.publish(chan, "price", r#"{"v":1}"#).await;
    assert_eq!(first.recv_json().await, event("price", chan, r#"{"v":1}"#));
    api.publish(chan, "price", r#"{"v":2}"#).await;
    assert_eq!(first.recv_json().await, event("price", chan, r#"{"v":2}"#));

    // A new subscriber: succeeded, then exactly the last event, then nothing else.
    let mut second = server.connect().await;
    second.subscribe(chan).await;
    assert_eq!(second.recv_json().await, event("price", chan, r#"{"v":2}"#));
    server
        .assert_delivers(chan, &mut [&mut first, &mut second])
        .await;
    // The first subscriber is not sent the replay again.
    second.ping_pong().await;

    // The cache outlives its subscribers.
    first.close().await;
    second.close().await;
    let mut third = server.connect().await;
    third.subscribe(chan).await;
    let v = third.recv_json().await;
    assert_eq!(v["channel"], chan, "{v}");
    assert!(
        v["event"].as_str().unwrap().starts_with("marker-"),
        "the marker was the last event: {v}"
    );
}

#[tokio::test]
async fn private_and_presence_cache_channels() {
    let server = TestServer::start().await;
    let private = "private-cache-p";
    let presence = "presence-cache-q";
    let member = r#"{"user_id":"m1","user_info":{}}"#;

    let mut a = server.connect().await;
    a.subscribe_private(private).await;
    expect_cache_miss(&mut a, private).await;
    a.subscribe_presence(presence, member).await;
    expect_cache_miss(&mut a, presence).await;

    server.api().publish(private, "ev-p", "dp").await;
    server.api().publish(presence, "ev-q", "dq").await;
    assert_eq!(a.recv_json().await, event("ev-p", private, "dp"));
    assert_eq!(a.recv_json().await, event("ev-q", presence, "dq"));

    let mut b = server.connect().await;
    b.subscribe_private(private).await;
    assert_eq!(b.recv_json().await, event("ev-p", private, "dp"));
    let p = b
        .subscribe_presence(presence, r#"{"user_id":"m2","user_info":{}}"#)
        .await;
    assert_eq!(p["count"], json!(2));
    assert_eq!(b.recv_json().await, event("ev-q", presence, "dq"));
    // a hears m2 join; no replay for a.
    let added = a.recv_event("pusher_internal:member_added").await;
    assert_eq!(added["channel"], presence);
    server.assert_delivers(private, &mut [&mut a, &mut b]).await;
}

#[tokio::test]
async fn non_cache_channels_replay_nothing() {
    let server = TestServer::start().await;
    for chan in ["news-cache-x", "private-x-cache", "cachex"] {
        server.api().publish(chan, "ev", "d").await;
        let mut c = server.connect().await;
        if chan.starts_with("private-") {
            c.subscribe_private(chan).await;
        } else {
            c.subscribe(chan).await;
        }
        // No cache_miss, no replay: the next frame is the pong.
        c.ping_pong().await;
    }
}

#[tokio::test]
async fn client_events_are_not_cached() {
    let server = TestServer::start().await;
    let chan = "private-cache-client";
    let mut a = server.connect().await;
    a.subscribe_private(chan).await;
    expect_cache_miss(&mut a, chan).await;
    let mut b = server.connect().await;
    b.subscribe_private(chan).await;
    expect_cache_miss(&mut b, chan).await;

    a.trigger("client-typing", chan, json!({"t": 1})).await;
    assert_eq!(
        b.recv_json().await,
        json!({"event": "client-typing", "channel": chan, "data": {"t": 1}})
    );
    let mut c = server.connect().await;
    c.subscribe_private(chan).await;
    expect_cache_miss(&mut c, chan).await;
    let info = server
        .api()
        .get(&format!("channels/{chan}"), &[("info", "cache")])
        .await;
    assert_eq!(info.ok(), &json!({"occupied": true, "cache": null}));
}

#[tokio::test]
async fn channel_info_cache() {
    let server = TestServer::start().await;
    let api = server.api();
    let chan = "cache-info";

    // Nothing cached, nobody subscribed.
    let r = api
        .get(&format!("channels/{chan}"), &[("info", "cache")])
        .await;
    assert_eq!(r.ok(), &json!({"occupied": false, "cache": null}));

    let data = r#"{"price":10}"#;
    api.publish(chan, "tick", data).await;
    let r = api
        .get(&format!("channels/{chan}"), &[("info", "cache")])
        .await;
    let body = r.ok();
    assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
    assert_eq!(body["occupied"], json!(false), "{body}");
    assert_eq!(body["cache"]["data"], json!(data), "{body}");
    assert_eq!(body["cache"].as_object().unwrap().len(), 2, "{body}");
    let ttl = body["cache"]["ttl"]
        .as_u64()
        .unwrap_or_else(|| panic!("ttl must be a non-negative integer: {body}"));
    assert!(
        (1790..=1800).contains(&ttl),
        "ttl {ttl} must be at most cache_ttl (1800) and just published"
    );

    // With a subscriber and subscription_count.
    let _sub = server.subscriber(chan).await;
    let r = api
        .get(
            &format!("channels/{chan}"),
            &[("info", "cache,subscription_count")],
        )
        .await;
    let body = r.ok();
    assert_eq!(body["occupied"], json!(true), "{body}");
    assert_eq!(body["subscription_count"], json!(1), "{body}");
    assert_eq!(body["cache"]["data"], json!(data), "{body}");

    // Private and presence cache channels answer too.
    api.publish("private-cache-info", "tick", "pd").await;
    let r = api
        .get("channels/private-cache-info", &[("info", "cache")])
        .await;
    assert_eq!(r.ok()["cache"]["data"], json!("pd"));
    let r = api
        .get("channels/presence-cache-info", &[("info", "cache")])
        .await;
    assert_eq!(r.ok(), &json!({"occupied": false, "cache": null}));
}

#[tokio::test]
async fn info_cache_on_a_non_cache_channel_is_400() {
    let server = TestServer::start().await;
    let api = server.api();
    for chan in ["news", "private-news", "presence-news", "cachenews"] {
        api.publish(chan, "ev", "d").await;
        let r = api
            .get(&format!("channels/{chan}"), &[("info", "cache")])
            .await;
        r.assert_error(400);
    }
}

#[tokio::test]
async fn multi_channel_publish_caches_each_cache_channel() {
    let server = TestServer::start().await;
    let r = server
        .api()
        .post(
            "events",
            &json!({"name": "m", "channels": ["cache-m1", "cache-m2", "plain-m"], "data": "md"}),
        )
        .await;
    assert_eq!(r.ok(), &json!({}));
    for chan in ["cache-m1", "cache-m2"] {
        let mut c = server.subscriber(chan).await;
        assert_eq!(c.recv_json().await, event("m", chan, "md"));
    }
}

#[tokio::test]
async fn cache_entries_expire_after_cache_ttl() {
    let server = TestServer::start_with("[limits]\ncache_ttl = 1\n").await;
    let chan = "cache-ttl";
    server.api().publish(chan, "ev", "short-lived").await;
    let r = server
        .api()
        .get(&format!("channels/{chan}"), &[("info", "cache")])
        .await;
    let body = r.ok();
    assert_eq!(body["cache"]["data"], json!("short-lived"), "{body}");
    let ttl = body["cache"]["ttl"].as_u64().expect("ttl");
    assert!(ttl <= 1, "ttl {ttl} is at most cache_ttl = 1");
    let mut fresh = server.subscriber(chan).await;
    assert_eq!(fresh.recv_json().await, event("ev", chan, "short-lived"));

    // Past the TTL (expiry is time-based; 1.3 s > 1 s).
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let mut late = server.connect().await;
    late.subscribe(chan).await;
    expect_cache_miss(&mut late, chan).await;
    let r = server
        .api()
        .get(&format!("channels/{chan}"), &[("info", "cache")])
        .await;
    assert_eq!(r.ok(), &json!({"occupied": true, "cache": null}));
    // The existing subscriber was not sent anything on expiry.
    fresh.ping_pong().await;
}

/// A response larger than `server.max_request_head_kb` (which also sizes hyper's buffers)
/// is written whole: a 10 KiB cache entry of quotes is 20 KiB once JSON-escaped.
#[tokio::test]
async fn info_cache_answers_larger_than_the_head_cap_are_whole() {
    let server = TestServer::start_with("[server]\nmax_request_head_kb = 8\n").await;
    let data = "\"".repeat(10 * 1024);
    server.api().publish("cache-big", "e", &data).await;
    let r = server
        .api()
        .get("channels/cache-big", &[("info", "cache")])
        .await;
    assert_eq!(r.ok()["cache"]["data"], serde_json::json!(data));
}
