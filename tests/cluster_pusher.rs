//! A cluster of in-process nodes on one real Redis behaves as one Pusher app: delivery
//! across nodes (once each, `socket_id` excluded), client events, presence, counts, channel
//! lists, limits, cache channels, watchlists, terminate_connections, webhooks once per
//! cluster, a graceful shutdown of one node, a cluster without MongoDB, and two clusters
//! sharing one Redis under different prefixes. Fails (never skips) when redis-server is
//! missing.
//!
//! Ordering: a frame that travels through Redis arrives after everything published on the
//! same topic before it, but a node delivers its own publishes locally at once. So the
//! markers that prove "nothing else arrived" are published from a node that holds none of
//! the sockets being checked (or after the Redis state shows the change was applied).

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::hooks::{receiver, sorted, HOOK_KEY, HOOK_SECRET};
use support::redis::RedisServer;
use support::{unique, Client, TestServer, TIMEOUT};

/// `n` nodes of one cluster on `redis`, each with the fixture's apps.
async fn nodes(redis: &RedisServer, n: usize, extra: &str) -> Vec<TestServer> {
    nodes_with_apps(redis, n, extra, "").await
}

/// `n` nodes of one cluster on `redis`, each with the fixture's apps and `apps` (TOML
/// appended verbatim: more `[[apps]]`, the same on every node). `extra` holds overrides;
/// a `[cluster]` key in it replaces the default below.
async fn nodes_with_apps(
    redis: &RedisServer,
    n: usize,
    extra: &str,
    apps: &str,
) -> Vec<TestServer> {
    let overrides = format!(
        "[cluster]\nredis_url = \"{}\"\nnode_timeout = 3\ncommand_timeout = 1\n{extra}",
        redis.url()
    );
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(TestServer::start_with_apps(&overrides, apps).await);
    }
    out
}

/// The `data` of a frame, parsed from its JSON string.
fn data_of(v: &Value) -> Value {
    let s = v["data"]
        .as_str()
        .unwrap_or_else(|| panic!("data must be a JSON string: {v}"));
    serde_json::from_str(s).unwrap_or_else(|_| panic!("data must be JSON text: {v}"))
}

/// Presence `channel_data` for `user` (user_info `{"name": user}`).
fn member(user: &str) -> String {
    json!({"user_id": user, "user_info": {"name": user}}).to_string()
}

/// `ids` of a presence object, sorted.
fn ids(presence: &Value) -> Vec<String> {
    let mut ids: Vec<String> = presence["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("ids must be an array: {presence}"))
        .iter()
        .map(|v| v.as_str().expect("ids are strings").to_string())
        .collect();
    ids.sort();
    ids
}

/// Unsubscribes and waits until the server has handled it (its leave ran).
async fn unsubscribe(c: &mut Client, channel: &str) {
    c.send_json(&json!({"event": "pusher:unsubscribe", "data": {"channel": channel}}))
        .await;
    c.ping_pong().await;
}

/// Polls a Redis command until its reply is `want` (a cluster-wide change was applied).
async fn wait_redis(redis: &RedisServer, args: &[&str], want: &str) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let got = redis.command(args);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "redis {args:?} answered {got:?}, not {want:?}, for {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------
// 1. Publishes
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_publish_on_one_node_reaches_subscribers_on_every_node_once() {
    let redis = RedisServer::start();
    let cluster = nodes(&redis, 3, "").await;
    let channel = unique("news-");
    let mut subs = Vec::new();
    for node in &cluster {
        subs.push(node.subscriber(&channel).await);
    }
    for (i, node) in cluster.iter().enumerate() {
        let name = format!("from-{i}");
        node.api().publish(&channel, &name, "{}").await;
        for sub in subs.iter_mut() {
            let got = sub.recv_json().await;
            assert_eq!(got["event"], json!(name), "{got}");
        }
    }
    for sub in subs.iter_mut() {
        sub.expect_nothing(200).await;
    }
}

#[tokio::test]
async fn an_excluded_socket_id_gets_nothing_whichever_node_publishes() {
    let redis = RedisServer::start();
    let cluster = nodes(&redis, 3, "").await;
    let channel = unique("excl-");
    // The excluded socket is on node 1; the others on every node, node 1 included.
    let mut excluded = cluster[1].subscriber(&channel).await;
    let mut others = Vec::new();
    for node in &cluster {
        others.push(node.subscriber(&channel).await);
    }
    for (i, node) in cluster.iter().enumerate() {
        let name = format!("from-{i}");
        let body = json!({"name": name, "channel": channel, "data": "{}", "socket_id": excluded.socket_id});
        let r = node.api().post("events", &body).await;
        assert_eq!(r.ok(), &json!({}), "publish reply");
        for sub in others.iter_mut() {
            assert_eq!(
                sub.recv_json().await,
                json!({"event": name, "channel": channel, "data": "{}"})
            );
        }
    }
    // Node 2's marker travels through Redis after the three publishes: it is the excluded
    // socket's first frame, and every other's next one.
    let mut all: Vec<&mut Client> = std::iter::once(&mut excluded)
        .chain(others.iter_mut())
        .collect();
    cluster[2].assert_delivers(&channel, &mut all).await;
}

// ---------------------------------------------------------------------------------------
// 2. Client events
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn client_events_cross_nodes_without_echo_and_carry_user_id_on_presence() {
    let redis = RedisServer::start();
    let cluster = nodes(&redis, 3, "").await;

    // Private: sender on node 0, receivers on node 1 and on the sender's node.
    let chan = unique("private-chat-");
    let mut sender = cluster[0].connect().await;
    sender.subscribe_private(&chan).await;
    let mut far = cluster[1].connect().await;
    far.subscribe_private(&chan).await;
    let mut near = cluster[0].connect().await;
    near.subscribe_private(&chan).await;
    sender
        .trigger("client-typing", &chan, json!({"who": "a", "n": [1, 2]}))
        .await;
    for c in [&mut far, &mut near] {
        // Exactly the frame: data as sent, no user_id on private channels.
        assert_eq!(
            c.recv_json().await,
            json!({"event": "client-typing", "channel": chan, "data": {"who": "a", "n": [1, 2]}})
        );
    }
    // The sender got nothing back, from its node or through Redis.
    cluster[2]
        .assert_delivers(&chan, &mut [&mut sender, &mut far, &mut near])
        .await;

    // Presence: the receiver on node 1 sees the sender's user_id.
    let presence = unique("presence-chat-");
    let mut psender = cluster[0].connect().await;
    psender
        .subscribe_presence(&presence, r#"{"user_id":42,"user_info":{}}"#)
        .await;
    let mut preceiver = cluster[1].connect().await;
    preceiver
        .subscribe_presence(&presence, r#"{"user_id":"r","user_info":{}}"#)
        .await;
    psender.recv_event("pusher_internal:member_added").await;
    psender
        .trigger("client-hi", &presence, json!({"text": "hello"}))
        .await;
    assert_eq!(
        preceiver.recv_json().await,
        json!({"event": "client-hi", "channel": presence, "data": {"text": "hello"}, "user_id": "42"})
    );
    cluster[2]
        .assert_delivers(&presence, &mut [&mut psender, &mut preceiver])
        .await;
}

// ---------------------------------------------------------------------------------------
// 3. Presence
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn presence_members_are_one_set_across_nodes() {
    let redis = RedisServer::start();
    let cluster = nodes(&redis, 3, "").await;
    let chan = unique("presence-room-");

    let mut u1 = cluster[0].connect().await;
    let p = u1
        .subscribe_presence(&chan, r#"{"user_id":"u1","user_info":{"name":"One"}}"#)
        .await;
    assert_eq!(
        p,
        json!({"ids": ["u1"], "hash": {"u1": {"name": "One"}}, "count": 1})
    );

    // Node 1 lists the member that joined on node 0.
    let u7 = r#"{"user_id":7,"user_info":{"n":2}}"#;
    let mut u7_b = cluster[1].connect().await;
    let p = u7_b.subscribe_presence(&chan, u7).await;
    assert_eq!(p["count"], json!(2), "{p}");
    assert_eq!(ids(&p), ["7", "u1"]);
    assert_eq!(p["hash"], json!({"u1": {"name": "One"}, "7": {"n": 2}}));
    let added = u1.recv_event("pusher_internal:member_added").await;
    assert_eq!(added["channel"], chan.as_str());
    assert_eq!(
        data_of(&added),
        json!({"user_id": "7", "user_info": {"n": 2}})
    );

    // User 7's second socket, on node 0: no second member_added, to anyone.
    let mut u7_a = cluster[0].connect().await;
    let p = u7_a.subscribe_presence(&chan, u7).await;
    assert_eq!(p["count"], json!(2), "two users, three sockets: {p}");
    assert_eq!(ids(&p), ["7", "u1"]);
    cluster[2]
        .assert_delivers(&chan, &mut [&mut u1, &mut u7_b, &mut u7_a])
        .await;

    // User 7 leaves node 1 but is still on node 0: no member_removed.
    unsubscribe(&mut u7_b, &chan).await;
    cluster[2]
        .assert_delivers(&chan, &mut [&mut u1, &mut u7_a])
        .await;

    // Its last socket anywhere leaves: exactly one member_removed.
    u7_a.close().await;
    let removed = u1.recv_event("pusher_internal:member_removed").await;
    assert_eq!(removed["channel"], chan.as_str());
    assert_eq!(data_of(&removed), json!({"user_id": "7"}));
    cluster[2].assert_delivers(&chan, &mut [&mut u1]).await;

    // A later member on node 2 sees only u1.
    let mut late = cluster[2].connect().await;
    let p = late.subscribe_presence(&chan, &member("late")).await;
    assert_eq!(ids(&p), ["late", "u1"], "{p}");
    assert_eq!(p["count"], json!(2), "{p}");
}

// ---------------------------------------------------------------------------------------
// 4. Channel queries
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn channel_queries_are_cluster_wide_on_a_node_without_subscribers() {
    let redis = RedisServer::start();
    let cluster = nodes(&redis, 3, "").await;
    let public = unique("news-");
    let private = unique("private-desk-");
    let presence = unique("presence-lobby-");

    let mut a = cluster[0].subscriber(&public).await;
    a.subscribe_private(&private).await;
    a.subscribe_presence(&presence, &member("u1")).await;
    let mut b = cluster[1].subscriber(&public).await;
    b.subscribe_presence(&presence, &member("u2")).await;
    a.recv_event("pusher_internal:member_added").await;
    // u1's second socket, on node 1.
    let mut b2 = cluster[1].connect().await;
    b2.subscribe_presence(&presence, &member("u1")).await;

    // Node 2 has no subscriber at all.
    let api = cluster[2].api();
    assert_eq!(
        api.get("channels", &[]).await.ok(),
        &json!({"channels": {public.as_str(): {}, private.as_str(): {}, presence.as_str(): {}}})
    );
    assert_eq!(
        api.get("channels", &[("info", "subscription_count")])
            .await
            .ok(),
        &json!({"channels": {
            public.as_str(): {"subscription_count": 2},
            private.as_str(): {"subscription_count": 1},
            presence.as_str(): {"subscription_count": 3},
        }})
    );
    assert_eq!(
        api.get(
            "channels",
            &[("filter_by_prefix", "presence-"), ("info", "user_count")]
        )
        .await
        .ok(),
        &json!({"channels": {presence.as_str(): {"user_count": 2}}})
    );
    assert_eq!(
        api.get(
            &format!("channels/{public}"),
            &[("info", "subscription_count")]
        )
        .await
        .ok(),
        &json!({"occupied": true, "subscription_count": 2})
    );
    assert_eq!(
        api.get(
            &format!("channels/{presence}"),
            &[("info", "user_count,subscription_count")]
        )
        .await
        .ok(),
        &json!({"occupied": true, "user_count": 2, "subscription_count": 3})
    );
    assert_eq!(
        api.get(&format!("channels/{presence}/users"), &[])
            .await
            .ok(),
        &json!({"users": [{"id": "u1"}, {"id": "u2"}]})
    );
    // A publish's `info` is cluster-wide too.
    let r = api
        .post(
            "events",
            &json!({"name": "e", "channel": presence, "data": "d",
                    "info": "user_count,subscription_count"}),
        )
        .await;
    assert_eq!(
        r.ok(),
        &json!({"channels": {presence.as_str(): {"user_count": 2, "subscription_count": 3}}})
    );
    for c in [&mut a, &mut b, &mut b2] {
        assert_eq!(c.recv_json().await, event("e", &presence, "d"));
    }

    // Leaving on nodes 0 and 1 shows on node 2.
    unsubscribe(&mut a, &public).await;
    unsubscribe(&mut b, &public).await;
    unsubscribe(&mut a, &presence).await;
    assert_eq!(
        api.get(
            &format!("channels/{public}"),
            &[("info", "subscription_count")]
        )
        .await
        .ok(),
        &json!({"occupied": false, "subscription_count": 0})
    );
    assert_eq!(
        api.get(
            &format!("channels/{presence}"),
            &[("info", "user_count,subscription_count")]
        )
        .await
        .ok(),
        &json!({"occupied": true, "user_count": 2, "subscription_count": 2}),
        "u1 is still there through node 1"
    );
    unsubscribe(&mut b2, &presence).await;
    assert_eq!(
        api.get(&format!("channels/{presence}/users"), &[])
            .await
            .ok(),
        &json!({"users": [{"id": "u2"}]})
    );
    assert_eq!(
        api.get("channels", &[]).await.ok(),
        &json!({"channels": {private.as_str(): {}, presence.as_str(): {}}})
    );
}

// ---------------------------------------------------------------------------------------
// 5. Subscription counts
// ---------------------------------------------------------------------------------------

fn count_frame(channel: &str, n: usize) -> Value {
    json!({
        "event": "pusher_internal:subscription_count",
        "channel": channel,
        "data": format!("{{\"subscription_count\":{n}}}"),
    })
}

/// Subscribes to a public channel reading raw frames: `subscription_succeeded` is next.
async fn subscribe_raw(c: &mut Client, channel: &str) {
    c.send_subscribe(channel, "", None).await;
    assert_eq!(
        c.recv_any_json().await,
        json!({"event": "pusher_internal:subscription_succeeded", "channel": channel, "data": "{}"})
    );
}

async fn expect_count(c: &mut Client, channel: &str, n: usize) {
    assert_eq!(c.recv_any_json().await, count_frame(channel, n));
}

/// Publishes a marker from `node` and asserts it is each client's next raw frame (no
/// subscription count was queued before it).
async fn assert_next_raw_is_marker(node: &TestServer, channel: &str, clients: &mut [&mut Client]) {
    let name = unique("marker-");
    node.api().publish(channel, &name, "m").await;
    for c in clients.iter_mut() {
        assert_eq!(
            c.recv_any_json().await,
            json!({"event": name, "channel": channel, "data": "m"}),
            "expected only the marker on {channel}"
        );
    }
}

#[tokio::test]
async fn subscription_counts_count_the_sockets_of_every_node() {
    let redis = RedisServer::start();
    let cluster = nodes(&redis, 3, "").await;
    let chan = unique("sc-");

    let mut a = cluster[0].connect().await;
    subscribe_raw(&mut a, &chan).await;
    expect_count(&mut a, &chan, 1).await;

    let mut b = cluster[1].connect().await;
    subscribe_raw(&mut b, &chan).await;
    expect_count(&mut b, &chan, 2).await;
    expect_count(&mut a, &chan, 2).await;

    let mut c = cluster[2].connect().await;
    subscribe_raw(&mut c, &chan).await;
    for x in [&mut a, &mut b, &mut c] {
        expect_count(x, &chan, 3).await;
    }

    // c (node 2) leaves: the others hear 2, c hears nothing more.
    c.send_json(&json!({"event": "pusher:unsubscribe", "data": {"channel": chan}}))
        .await;
    c.send_json(&json!({"event": "pusher:ping", "data": {}}))
        .await;
    assert_eq!(
        c.recv_any_json().await,
        json!({"event": "pusher:pong", "data": "{}"})
    );
    expect_count(&mut a, &chan, 2).await;
    expect_count(&mut b, &chan, 2).await;

    // b's connection (node 1) closes: a hears 1.
    b.close().await;
    expect_count(&mut a, &chan, 1).await;
    // Each count once: node 2 (no subscriber left) publishes the marker.
    assert_next_raw_is_marker(&cluster[2], &chan, &mut [&mut a]).await;
}

// ---------------------------------------------------------------------------------------
// 6. Limits
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_presence_member_limit_is_cluster_wide() {
    let redis = RedisServer::start();
    let cluster = nodes(&redis, 3, "[limits]\nmax_presence_members = 2\n").await;
    let chan = unique("presence-full-");
    let mut a = cluster[0].connect().await;
    a.subscribe_presence(&chan, &member("a")).await;
    let mut b = cluster[1].connect().await;
    b.subscribe_presence(&chan, &member("b")).await;
    a.recv_event("pusher_internal:member_added").await;

    // A third user is refused on a node without members and on a node with one.
    let c_data = member("c");
    let mut refused = Vec::new();
    for node in [&cluster[2], &cluster[0]] {
        let mut c = node.connect().await;
        let auth = c.auth_for(&chan, Some(&c_data));
        c.send_subscribe(&chan, &auth, Some(&c_data)).await;
        c.expect_subscription_error(&chan, 400).await;
        c.ping_pong().await;
        refused.push(c);
    }
    // The members heard nothing of c; the refused sockets get nothing from the channel.
    cluster[2]
        .assert_delivers(&chan, &mut [&mut a, &mut b])
        .await;
    for c in refused.iter_mut() {
        c.ping_pong().await;
    }

    // A second socket of a member, on node 2, is not a new member: admitted.
    let mut b2 = cluster[2].connect().await;
    let p = b2.subscribe_presence(&chan, &member("b")).await;
    assert_eq!(p["count"], json!(2), "{p}");

    // Once a leaves (node 0), c fits, on node 2.
    a.close().await;
    let removed = b.recv_event("pusher_internal:member_removed").await;
    assert_eq!(data_of(&removed), json!({"user_id": "a"}));
    let p = refused[0].subscribe_presence(&chan, &c_data).await;
    assert_eq!(ids(&p), ["b", "c"], "{p}");
    let added = b.recv_event("pusher_internal:member_added").await;
    assert_eq!(
        data_of(&added),
        json!({"user_id": "c", "user_info": {"name": "c"}})
    );
}

#[tokio::test]
async fn an_apps_connection_quota_is_cluster_wide() {
    let redis = RedisServer::start();
    let cluster = nodes(&redis, 3, "").await;
    // fixtures/compat.toml: app 4 ("limited-key") has max_connections = 2.
    let a = cluster[0].connect_key("limited-key").await;
    let mut b = cluster[1].connect_key("limited-key").await;

    // The third connection is refused on every node, this one's included.
    for node in &cluster {
        let mut c = node.connect_raw("/app/limited-key?protocol=7").await;
        let msg = c.expect_fatal(4004).await;
        assert!(!msg.is_empty());
    }
    b.ping_pong().await;
    // Other apps are not limited.
    let mut other = cluster[2].connect().await;
    other.ping_pong().await;

    // a (node 0) leaves: once the cluster counts it gone, node 2 admits one more.
    a.close().await;
    wait_redis(&redis, &["HLEN", "pushi:4:conns"], ":1").await;
    let mut d = cluster[2].connect_key("limited-key").await;
    d.ping_pong().await;
    // ... and the quota holds again, on node 0 too.
    let mut e = cluster[0].connect_raw("/app/limited-key?protocol=7").await;
    e.expect_fatal(4004).await;
    b.ping_pong().await;
}

// ---------------------------------------------------------------------------------------
// 7. Cache channels
// ---------------------------------------------------------------------------------------

async fn expect_cache_miss(c: &mut Client, channel: &str) {
    let v = c.recv_json().await;
    assert_eq!(v["event"], "pusher:cache_miss", "{v}");
    assert_eq!(v["channel"], channel, "{v}");
}

fn event(name: &str, channel: &str, data: &str) -> Value {
    json!({"event": name, "channel": channel, "data": data})
}

/// `GET /channels/{channel}?info=cache` on `node`: (occupied, cache data, ttl).
async fn cache_info(node: &TestServer, channel: &str) -> (Value, Value, u64) {
    let r = node
        .api()
        .get(&format!("channels/{channel}"), &[("info", "cache")])
        .await;
    let body = r.ok().clone();
    let cache = body["cache"].clone();
    assert!(cache.is_object(), "a cached event: {body}");
    assert_eq!(cache.as_object().unwrap().len(), 2, "{body}");
    let ttl = cache["ttl"]
        .as_u64()
        .unwrap_or_else(|| panic!("ttl: {body}"));
    (body["occupied"].clone(), cache["data"].clone(), ttl)
}

#[tokio::test]
async fn a_cache_channel_replays_on_every_node() {
    let redis = RedisServer::start();
    let cluster = nodes(&redis, 3, "").await;
    let chan = unique("cache-x-");

    let mut first = cluster[0].connect().await;
    first.subscribe(&chan).await;
    expect_cache_miss(&mut first, &chan).await;
    cluster[0].api().publish(&chan, "price", r#"{"v":1}"#).await;
    assert_eq!(first.recv_json().await, event("price", &chan, r#"{"v":1}"#));

    // A new subscriber on node 1: succeeded, then the event published on node 0.
    let mut second = cluster[1].connect().await;
    second.subscribe(&chan).await;
    assert_eq!(
        second.recv_json().await,
        event("price", &chan, r#"{"v":1}"#)
    );

    // info=cache on node 1, and on node 2 which has no subscriber.
    for node in [&cluster[1], &cluster[2]] {
        let (occupied, data, ttl) = cache_info(node, &chan).await;
        assert_eq!(occupied, json!(true));
        assert_eq!(data, json!(r#"{"v":1}"#));
        assert!(ttl > 0 && ttl <= 1800, "ttl {ttl}");
    }

    // Published on node 1 now: node 2's new subscriber gets that one.
    cluster[1].api().publish(&chan, "price", r#"{"v":2}"#).await;
    for c in [&mut first, &mut second] {
        assert_eq!(c.recv_json().await, event("price", &chan, r#"{"v":2}"#));
    }
    let mut third = cluster[2].connect().await;
    third.subscribe(&chan).await;
    assert_eq!(third.recv_json().await, event("price", &chan, r#"{"v":2}"#));
    // Nobody got a second replay or a second copy.
    cluster[2]
        .assert_delivers(&chan, &mut [&mut first, &mut second, &mut third])
        .await;
}

// ---------------------------------------------------------------------------------------
// 8. Watchlists
// ---------------------------------------------------------------------------------------

fn user(id: &str, watchlist: &[&str]) -> String {
    json!({"id": id, "user_info": {}, "watchlist": watchlist}).to_string()
}

/// Reads the next frame, which must be a `watchlist_events` frame carrying `events`.
async fn expect_watchlist(c: &mut Client, events: Value) {
    let v = c.recv_json().await;
    assert_eq!(v["event"], "pusher_internal:watchlist_events", "{v}");
    assert_eq!(v.as_object().unwrap().len(), 2, "no channel: {v}");
    assert_eq!(data_of(&v), json!({ "events": events }), "{v}");
}

#[tokio::test]
async fn watchlists_follow_a_users_first_and_last_socket_on_any_node() {
    let redis = RedisServer::start();
    let cluster = nodes(&redis, 3, "").await;
    let mut watcher = cluster[0].signed_in(&user("w", &["b", "c"])).await;
    expect_watchlist(
        &mut watcher,
        json!([{"name": "offline", "user_ids": ["b", "c"]}]),
    )
    .await;

    // b's first socket, on node 1: online.
    let b1 = cluster[1].signed_in(&user("b", &[])).await;
    expect_watchlist(&mut watcher, json!([{"name": "online", "user_ids": ["b"]}])).await;

    // b's second socket, on node 2: nothing. Control: c's online is the very next frame.
    let b2 = cluster[2].signed_in(&user("b", &[])).await;
    let c = cluster[1].signed_in(&user("c", &[])).await;
    expect_watchlist(&mut watcher, json!([{"name": "online", "user_ids": ["c"]}])).await;

    // A watcher signing in on node 2 sees who is online on nodes 1 and 2.
    let mut late = cluster[2].signed_in(&user("late", &["b", "c", "d"])).await;
    expect_watchlist(
        &mut late,
        json!([
            {"name": "online", "user_ids": ["b", "c"]},
            {"name": "offline", "user_ids": ["d"]}
        ]),
    )
    .await;

    // b's socket on node 1 closes: b is still online through node 2, nothing is sent.
    // Control: once the cluster counts one socket for b, c leaves; its offline is next.
    b1.close().await;
    wait_redis(&redis, &["HGET", "pushi:1:users", "b"], "1").await;
    c.close().await;
    for x in [&mut watcher, &mut late] {
        expect_watchlist(x, json!([{"name": "offline", "user_ids": ["c"]}])).await;
    }

    // b's last socket anywhere closes: offline, once.
    b2.close().await;
    for x in [&mut watcher, &mut late] {
        expect_watchlist(x, json!([{"name": "offline", "user_ids": ["b"]}])).await;
    }
    // b comes back on node 0: online again.
    let _b3 = cluster[0].signed_in(&user("b", &[])).await;
    for x in [&mut watcher, &mut late] {
        expect_watchlist(x, json!([{"name": "online", "user_ids": ["b"]}])).await;
        x.ping_pong().await;
    }
}

// ---------------------------------------------------------------------------------------
// 9. terminate_connections
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn terminate_connections_on_one_node_closes_the_users_sockets_on_every_node() {
    let redis = RedisServer::start();
    let cluster = nodes(&redis, 3, "").await;
    let news = unique("news-");
    let user_42 = r#"{"id":"42","user_info":{"name":"Ann"}}"#;
    let mut tab_b = cluster[1].signed_in(user_42).await;
    tab_b.subscribe(&news).await;
    let mut tab_c = cluster[2].signed_in(user_42).await;
    let mut u43 = cluster[1].signed_in(r#"{"id":"43"}"#).await;
    u43.subscribe(&news).await;
    let mut anonymous = cluster[2].subscriber(&news).await;

    // Asked on node 0, which has none of user 42's sockets.
    let r = cluster[0]
        .api()
        .post("users/42/terminate_connections", &json!({}))
        .await;
    assert_eq!(r.ok(), &json!({}), "terminate reply");
    for tab in [&mut tab_b, &mut tab_c] {
        let msg = tab.expect_fatal(4200).await;
        assert!(!msg.is_empty());
    }
    for (i, node) in cluster.iter().enumerate() {
        support::wait_until(
            &format!("user 42's sockets on node {i} to be gone"),
            TIMEOUT,
            || node.ctx.registry.user_connections("1", "42").is_empty(),
        )
        .await;
    }

    // Everyone else is still connected and subscribed.
    u43.ping_pong().await;
    anonymous.ping_pong().await;
    cluster[0]
        .assert_delivers(&news, &mut [&mut u43, &mut anonymous])
        .await;
    let info = cluster[0]
        .api()
        .get(
            &format!("channels/{news}"),
            &[("info", "subscription_count")],
        )
        .await;
    assert_eq!(
        info.ok(),
        &json!({"occupied": true, "subscription_count": 2})
    );
}

// ---------------------------------------------------------------------------------------
// 10. Webhooks, once per cluster
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn webhooks_are_sent_once_per_cluster() {
    let redis = RedisServer::start();
    let mut rcv = receiver().await;
    let app = format!(
        "[[apps]]\nid = \"17\"\nkey = \"{HOOK_KEY}\"\nsecret = \"{HOOK_SECRET}\"\n\
         client_events = true\n\n[[apps.webhooks]]\nurl = \"{}\"\n",
        rcv.url("/hook")
    );
    let cluster = nodes_with_apps(&redis, 2, "", &app).await;
    let connect = |i: usize| cluster[i].connect_app(HOOK_KEY, HOOK_SECRET);
    let public = unique("wh-");
    let presence = unique("presence-wh-");

    // The first subscriber anywhere: occupied.
    let mut a = connect(0).await;
    a.subscribe(&public).await;
    assert_eq!(
        rcv.events(1).await,
        [json!({"name": "channel_occupied", "channel": public})]
    );
    // A second one, on the other node: nothing. (Control: the presence webhooks below
    // are the next ones, and nothing more.)
    let mut b = connect(1).await;
    b.subscribe(&public).await;

    // u1 joins on node 0: occupied and member_added.
    let mut u1_a = connect(0).await;
    u1_a.subscribe_presence(&presence, &member("u1")).await;
    assert_eq!(
        rcv.events(2).await,
        sorted(vec![
            json!({"name": "channel_occupied", "channel": presence}),
            json!({"name": "member_added", "channel": presence, "user_id": "u1"}),
        ])
    );
    // u1 again on node 1: nothing. u2 on node 1: member_added, the only event.
    let mut u1_b = connect(1).await;
    u1_b.subscribe_presence(&presence, &member("u1")).await;
    let mut u2 = connect(1).await;
    u2.subscribe_presence(&presence, &member("u2")).await;
    for c in [&mut u1_a, &mut u1_b] {
        c.recv_event("pusher_internal:member_added").await;
    }
    assert_eq!(
        rcv.events(1).await,
        [json!({"name": "member_added", "channel": presence, "user_id": "u2"})]
    );

    // Node 0's sockets leave first: the channel and u1 are still there through node 1.
    unsubscribe(&mut a, &public).await;
    unsubscribe(&mut u1_a, &presence).await;
    // Then node 1's: vacated and removed, once each (after the 3 s removal delay).
    unsubscribe(&mut b, &public).await;
    unsubscribe(&mut u2, &presence).await;
    u1_b.recv_event("pusher_internal:member_removed").await;
    unsubscribe(&mut u1_b, &presence).await;
    assert_eq!(
        rcv.events(4).await,
        sorted(vec![
            json!({"name": "channel_vacated", "channel": public}),
            json!({"name": "channel_vacated", "channel": presence}),
            json!({"name": "member_removed", "channel": presence, "user_id": "u1"}),
            json!({"name": "member_removed", "channel": presence, "user_id": "u2"}),
        ])
    );
    // Settle: anything node 0 wrongly reported would have come with the removal delay.
    rcv.expect_none(Duration::from_millis(1500)).await;
}

// ---------------------------------------------------------------------------------------
// 11. Graceful shutdown of one node
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_node_shut_down_gracefully_removes_its_members_at_once() {
    let redis = RedisServer::start();
    // A long node_timeout: the other nodes would reap a dead node only after 30 s.
    let mut cluster = nodes(&redis, 3, "[cluster]\nnode_timeout = 30\n").await;
    let chan = unique("presence-shut-");
    let public = unique("only-on-0-");

    let mut observer = cluster[1].connect().await;
    observer.subscribe_presence(&chan, &member("obs")).await;
    let mut ua = cluster[0].connect().await;
    ua.subscribe_presence(&chan, &member("ua")).await;
    ua.subscribe(&public).await;
    observer.recv_event("pusher_internal:member_added").await;
    // "both" has a socket on the dying node and one on node 2.
    let mut both_0 = cluster[0].connect().await;
    both_0.subscribe_presence(&chan, &member("both")).await;
    observer.recv_event("pusher_internal:member_added").await;
    ua.recv_event("pusher_internal:member_added").await;
    let mut both_2 = cluster[2].connect().await;
    both_2.subscribe_presence(&chan, &member("both")).await;
    let api = cluster[1].api();
    assert_eq!(
        api.get(
            &format!("channels/{chan}"),
            &[("info", "user_count,subscription_count")]
        )
        .await
        .ok(),
        &json!({"occupied": true, "user_count": 3, "subscription_count": 4})
    );
    assert_eq!(
        redis.command(&["ZCARD", "pushi:nodes"]),
        ":3",
        "three live nodes"
    );

    let node_0 = cluster.remove(0);
    let started = Instant::now();
    let (took, ()) = tokio::join!(node_0.shutdown(Duration::from_secs(10)), async {
        ua.expect_fatal(4200).await;
        both_0.expect_fatal(4200).await;
    });
    let removed = observer.recv_event("pusher_internal:member_removed").await;
    let after = started.elapsed();
    assert_eq!(data_of(&removed), json!({"user_id": "ua"}));
    let removed = both_2.recv_event("pusher_internal:member_removed").await;
    assert_eq!(data_of(&removed), json!({"user_id": "ua"}));
    assert!(
        after < Duration::from_secs(5),
        "member_removed came {after:?} after the shutdown began (shutdown took {took:?}); \
         node_timeout is 30 s"
    );
    // Only ua: "both" is still there through node 2. Node 2's marker comes through
    // Redis after every notice of the shutdown.
    cluster[1]
        .assert_delivers(&chan, &mut [&mut observer, &mut both_2])
        .await;

    // The survivors no longer count node 0's sockets.
    assert_eq!(
        api.get("channels", &[]).await.ok(),
        &json!({"channels": {chan.as_str(): {}}})
    );
    assert_eq!(
        api.get(
            &format!("channels/{chan}"),
            &[("info", "user_count,subscription_count")]
        )
        .await
        .ok(),
        &json!({"occupied": true, "user_count": 2, "subscription_count": 2})
    );
    assert_eq!(
        api.get(&format!("channels/{chan}/users"), &[]).await.ok(),
        &json!({"users": [{"id": "both"}, {"id": "obs"}]})
    );
    assert_eq!(
        redis.command(&["ZCARD", "pushi:nodes"]),
        ":2",
        "the node unregistered"
    );
}

// ---------------------------------------------------------------------------------------
// 12. A cluster without [mongodb]
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn without_mongodb_offline_routes_answer_503_and_the_rest_works() {
    let redis = RedisServer::start();
    let cluster = nodes(&redis, 2, "").await;
    let api = cluster[0].api();

    let r = api
        .post("subscribe", &json!({"user_id": "u", "event": "news"}))
        .await;
    let msg = r.assert_error(503);
    assert!(msg.contains("MongoDB"), "{msg}");
    let r = api
        .post("unsubscribe", &json!({"user_id": "u", "event": "news"}))
        .await;
    assert!(r.assert_error(503).contains("MongoDB"), "{}", r.text);
    for tail in ["users/u/subscriptions", "users/u/events"] {
        let r = cluster[1].api().get(tail, &[]).await;
        assert!(
            r.assert_error(503).contains("MongoDB"),
            "{tail}: {}",
            r.text
        );
    }

    // Plain Pusher features do not need the store: publishes (HTTP and client events),
    // and presence across the nodes.
    let chan = unique("private-plain-");
    let mut a = cluster[0].connect().await;
    a.subscribe_private(&chan).await;
    let mut b = cluster[1].connect().await;
    b.subscribe_private(&chan).await;
    cluster[1].api().publish(&chan, "hello", "x").await;
    for c in [&mut a, &mut b] {
        assert_eq!(c.recv_json().await, event("hello", &chan, "x"));
    }
    a.trigger("client-hi", &chan, json!({"n": 1})).await;
    assert_eq!(
        b.recv_json().await,
        json!({"event": "client-hi", "channel": chan, "data": {"n": 1}})
    );
    let presence = unique("presence-plain-");
    a.subscribe_presence(&presence, &member("a")).await;
    let p = b.subscribe_presence(&presence, &member("b")).await;
    assert_eq!(ids(&p), ["a", "b"], "{p}");
    a.recv_event("pusher_internal:member_added").await;
}

fn peer_member(user: &str) -> String {
    json!({"user_id": user, "user_info": {"name": user}, "peer": true}).to_string()
}

/// The `data` of a `pushi:peer_*` frame, checked to be on `presence`.
fn peer_data(frame: &Value, event: &str, presence: &str) -> Value {
    assert_eq!(frame["event"], event, "{frame}");
    assert_eq!(frame["channel"], presence, "{frame}");
    data_of(frame)
}

#[tokio::test]
async fn without_mongodb_peer_channels_still_pair_on_one_node() {
    let redis = RedisServer::start();
    let cluster = nodes(&redis, 2, "").await;
    let base = unique("room");
    let presence = format!("presence-{base}");
    let peer = format!("peer-{base};alice,bob");

    // Both peers on node 0 (what one node's registry pairs).
    let mut bob = cluster[0].connect().await;
    bob.subscribe_presence(&presence, &peer_member("bob")).await;
    let mut alice = cluster[0].connect().await;
    alice
        .subscribe_presence(&presence, &peer_member("alice"))
        .await;
    assert_eq!(
        peer_data(&alice.recv_json().await, "pushi:peer_added", &presence),
        json!({"channel": peer, "user_id": "bob"})
    );
    assert_eq!(
        bob.recv_event("pusher_internal:member_added").await["channel"],
        presence.as_str()
    );
    assert_eq!(
        peer_data(&bob.recv_json().await, "pushi:peer_added", &presence),
        json!({"channel": peer, "user_id": "alice"})
    );
    // Their own subscribe succeeds; client events go to the other side with user_id.
    for c in [&mut alice, &mut bob] {
        c.send_subscribe(&peer, "", None).await;
        assert_eq!(c.expect_subscribed(&peer).await, json!({}));
    }
    alice.trigger("client-ping", &peer, json!({"n": 1})).await;
    let got = bob.recv_json().await;
    assert_eq!(
        got,
        json!({"event": "client-ping", "channel": peer, "data": {"n": 1}, "user_id": "alice"})
    );
    // An HTTP publish on the other node reaches the pair.
    cluster[1].api().publish(&peer, "hello", "both").await;
    for c in [&mut alice, &mut bob] {
        assert_eq!(c.recv_json().await, event("hello", &peer, "both"));
    }
}

// ---------------------------------------------------------------------------------------
// 13. Two clusters on one Redis
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn clusters_with_different_prefixes_do_not_see_each_other() {
    let redis = RedisServer::start();
    let x = nodes(&redis, 2, "[cluster]\nprefix = \"x\"\n").await;
    let y = nodes(&redis, 2, "[cluster]\nprefix = \"y\"\n").await;
    let chan = unique("shared-");
    let presence = unique("presence-shared-");
    let x_only = unique("x-only-");

    let mut xs = x[0].subscriber(&chan).await;
    xs.subscribe(&x_only).await;
    let mut ys = y[0].subscriber(&chan).await;

    // A publish in x reaches x's subscriber, not y's.
    x[1].api().publish(&chan, "to-x", "x").await;
    assert_eq!(xs.recv_json().await, event("to-x", &chan, "x"));
    y[1].api().publish(&chan, "to-y", "y").await;
    assert_eq!(
        ys.recv_json().await,
        event("to-y", &chan, "y"),
        "y's own event first"
    );
    x[1].assert_delivers(&chan, &mut [&mut xs]).await;
    y[1].assert_delivers(&chan, &mut [&mut ys]).await;

    // Members: same channel name, separate sets.
    let mut xm = x[0].connect().await;
    xm.subscribe_presence(&presence, &member("ux")).await;
    let mut ym = y[1].connect().await;
    let p = ym.subscribe_presence(&presence, &member("uy")).await;
    assert_eq!(
        p,
        json!({"ids": ["uy"], "hash": {"uy": {"name": "uy"}}, "count": 1})
    );
    x[1].assert_delivers(&presence, &mut [&mut xm]).await;
    assert_eq!(
        x[1].api()
            .get(&format!("channels/{presence}/users"), &[])
            .await
            .ok(),
        &json!({"users": [{"id": "ux"}]})
    );
    assert_eq!(
        y[0].api()
            .get(&format!("channels/{presence}/users"), &[])
            .await
            .ok(),
        &json!({"users": [{"id": "uy"}]})
    );
    assert_eq!(
        y[0].api().get("channels", &[]).await.ok(),
        &json!({"channels": {chan.as_str(): {}, presence.as_str(): {}}})
    );
    assert_eq!(
        x[0].api()
            .get(
                &format!("channels/{chan}"),
                &[("info", "subscription_count")]
            )
            .await
            .ok(),
        &json!({"occupied": true, "subscription_count": 1})
    );
}

// ---------------------------------------------------------------------------------------
// Member notices older than a joining socket's member list
// ---------------------------------------------------------------------------------------

/// A member notice carries its channel's version; a socket that joined drops the notices at
/// or below the version its `subscription_succeeded` reflected (one that was in flight while
/// it joined would otherwise announce a member its list already has). Forged notices on
/// the channel's topic stand in for ones in flight.
#[tokio::test]
async fn member_notices_older_than_a_joining_sockets_list_are_dropped() {
    let redis = RedisServer::start();
    let cluster = nodes(&redis, 2, "").await;
    let presence = unique("presence-floor-");
    let mut a = cluster[0].connect().await;
    a.subscribe_presence(&presence, &member("ua")).await;
    let mut b = cluster[1].connect().await;
    b.subscribe_presence(&presence, &member("ub")).await;
    a.recv_event("pusher_internal:member_added").await;
    let floor: u64 = redis
        .command(&["HGET", "pushi:1:pv", &presence])
        .parse()
        .expect("a version");
    let topic = format!("pushi:m:1:{presence}");
    let notice = |user: &str, version: u64| {
        let frame = json!({
            "event": "pusher_internal:member_added",
            "channel": presence,
            "data": json!({"user_id": user, "user_info": {}}).to_string(),
        });
        format!("f\0\0\0{version}\0{frame}")
    };
    // Stale for b (it joined after it), but not for a: a joined at an older version.
    redis.command(&["PUBLISH", &topic, &notice("stale", floor)]);
    redis.command(&["PUBLISH", &topic, &notice("fresh", floor + 1)]);
    let got = b.recv_event("pusher_internal:member_added").await;
    assert_eq!(data_of(&got)["user_id"], "fresh", "{got}");
    b.expect_nothing(100).await;
    for user in ["stale", "fresh"] {
        let got = a.recv_event("pusher_internal:member_added").await;
        assert_eq!(data_of(&got)["user_id"], user, "{got}");
    }
}

// ---------------------------------------------------------------------------------------
// Re-asserting while sockets keep joining
// ---------------------------------------------------------------------------------------

/// Redis loses everything (FLUSHALL) while sockets keep subscribing to new channels: the
/// node notices at its next heartbeat and re-asserts its state, and no subscribe waits on
/// that (a join waiting for its channel's topic while holding the node's state would
/// deadlock the task that re-asserts). Afterwards Redis holds every subscription again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribes_racing_a_reassert_all_complete_and_are_all_restored() {
    let redis = RedisServer::start();
    let cluster = nodes(&redis, 1, "").await;
    let node = &cluster[0];
    // Sockets subscribed up front; each task keeps subscribing its socket to new channels.
    let mut tasks = Vec::new();
    let stop = Instant::now() + Duration::from_millis(2500);
    for _ in 0..16 {
        let addr = node.addr;
        tasks.push(tokio::spawn(async move {
            let (mut channels, mut clients) = (Vec::new(), Vec::new());
            while Instant::now() < stop {
                // A fresh socket every 200 channels (a socket may hold 1,000).
                if channels.len() % 200 == 0 {
                    clients.push(support::process::connect_at(addr).await);
                }
                let c = clients.last_mut().expect("a socket");
                let channel = unique("race-");
                c.send_subscribe(&channel, "", None).await;
                // Bounded by TIMEOUT: a deadlocked node would never answer.
                c.expect_subscribed(&channel).await;
                channels.push(channel);
            }
            (clients, channels)
        }));
    }
    // node_timeout 3: a heartbeat every second; the flush lands among the subscribes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(redis.command(&["FLUSHALL"]), "+OK");
    let mut all = Vec::new();
    let mut clients = Vec::new();
    for t in tasks {
        let (c, channels) = t.await.expect("a subscriber task");
        clients.extend(c);
        all.extend(channels);
    }
    assert!(all.len() > 100, "{} subscribes", all.len());
    for channel in &all {
        wait_redis(&redis, &["HLEN", &format!("pushi:1:ch:{channel}")], ":1").await;
    }
}

/// A command that fails while the pub/sub connection lives (here: Redis no longer knows the
/// node, so its JOIN is refused) makes the node repair itself: it registers again,
/// re-asserts what it holds and counts as joined again, without waiting for a reconnect.
#[tokio::test]
async fn a_failed_command_is_repaired_without_a_reconnect() {
    let redis = RedisServer::start();
    let cluster = nodes(&redis, 1, "").await;
    let node = &cluster[0];
    let id = node
        .ctx
        .cluster
        .as_ref()
        .expect("a cluster node")
        .id()
        .to_string();
    let (x, y) = (unique("x-"), unique("y-"));
    let _a = node.subscriber(&x).await;
    let mut b = node.connect().await;
    assert_eq!(redis.command(&["ZREM", "pushi:nodes", &id]), ":1");
    // Refused by Redis (not registered); served locally, repaired in the background.
    b.subscribe(&y).await;
    wait_redis(&redis, &["HLEN", &format!("pushi:1:ch:{y}")], ":1").await;
    wait_redis(&redis, &["HLEN", &format!("pushi:1:ch:{x}")], ":1").await;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let r = reqwest::get(node.http_url("/ready")).await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never ready again: {}",
            r.text().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        redis.command(&["ZSCORE", "pushi:nodes", &id]).len() > 3,
        "registered again"
    );
}
