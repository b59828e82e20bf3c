//! The extensions across a cluster's nodes (EXTENSIONS.md: "All of it holds across nodes"):
//! peer pairs between users on different nodes, and personal channels that receive events
//! published on any node, with offline subscriptions made on any node, stored in the
//! cluster's one MongoDB (SecantusDB here). Real Redis, real MongoDB-wire server; fails
//! (never skips) when either is missing.

mod support;

use serde_json::{json, Value};
use support::mongo::MongoServer;
use support::redis::RedisServer;
use support::{unique, Client, TestServer};

fn cluster_overrides(redis: &RedisServer) -> String {
    format!(
        "[cluster]\nredis_url = \"{}\"\nnode_timeout = 3\ncommand_timeout = 1\n",
        redis.url()
    )
}

fn peer_data(frame: &Value, event: &str, presence: &str) -> Value {
    assert_eq!(frame["event"], event, "{frame}");
    assert_eq!(frame["channel"], presence, "{frame}");
    serde_json::from_str(frame["data"].as_str().expect("data is a JSON string")).unwrap()
}

async fn join(node: &TestServer, presence: &str, user: &str) -> Client {
    let mut c = node.connect().await;
    let data = json!({"user_id": user, "user_info": {}, "peer": true}).to_string();
    c.subscribe_presence(presence, &data).await;
    c
}

#[tokio::test]
async fn a_pair_forms_talks_and_ends_across_nodes() {
    let redis = RedisServer::start();
    let overrides = cluster_overrides(&redis);
    let a = TestServer::start_with(&overrides).await;
    let b = TestServer::start_with(&overrides).await;
    let base = unique("room");
    let presence = format!("presence-{base}");
    let peer = format!("peer-{base};alice,bob");

    let mut bob = join(&b, &presence, "bob").await;
    let mut alice = join(&a, &presence, "alice").await;
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
    // A second tab of bob, on node A, joins the existing pair.
    let mut bob2 = join(&a, &presence, "bob").await;
    assert_eq!(
        peer_data(&bob2.recv_json().await, "pushi:peer_added", &presence),
        json!({"channel": peer, "user_id": "alice"})
    );

    // The server subscribed every socket of the pair, on both nodes.
    a.api().publish(&peer, "hello", "all").await;
    for c in [&mut alice, &mut bob, &mut bob2] {
        assert_eq!(c.recv_json().await["event"], "hello");
    }
    // Their own subscribe is allowed (they are the pair), an outsider's is not.
    bob.send_subscribe(&peer, "", None).await;
    assert_eq!(bob.expect_subscribed(&peer).await, json!({}));
    let mut eve = join(&b, &presence, "eve").await;
    for c in [&mut alice, &mut bob, &mut bob2] {
        let _ = c.recv_event("pusher_internal:member_added").await;
        let paired = peer_data(&c.recv_json().await, "pushi:peer_added", &presence);
        assert_eq!(paired["user_id"], "eve", "{paired}");
    }
    for _ in 0..2 {
        let got = eve.recv_json().await;
        assert_eq!(
            got["event"], "pushi:peer_added",
            "eve pairs with both: {got}"
        );
    }
    eve.send_subscribe(&peer, "", None).await;
    eve.expect_subscription_error(&peer, 403).await;

    // Client events cross nodes with the sender's id.
    alice.trigger("client-ping", &peer, json!({"n": 1})).await;
    for c in [&mut bob, &mut bob2] {
        let got = c.recv_json().await;
        assert_eq!(got["event"], "client-ping", "{got}");
        assert_eq!(got["user_id"], "alice");
    }

    // bob's last socket leaves: alice (other node) hears the pair ended; delivery stops.
    bob2.close().await;
    alice.expect_nothing(200).await;
    bob.send_json(&json!({"event": "pusher:unsubscribe", "data": {"channel": presence}}))
        .await;
    let mut heard = Vec::new();
    for _ in 0..2 {
        heard.push(alice.recv_json().await);
    }
    let removed = heard
        .iter()
        .find(|f| f["event"] == "pushi:peer_removed")
        .unwrap_or_else(|| panic!("peer_removed: {heard:?}"));
    assert_eq!(
        peer_data(removed, "pushi:peer_removed", &presence),
        json!({"channel": peer, "user_id": "bob"})
    );
    assert!(heard
        .iter()
        .any(|f| f["event"] == "pusher_internal:member_removed"));
    // bob's pairs with alice and with eve both ended (in either order).
    let mut ended = Vec::new();
    for _ in 0..2 {
        let data = peer_data(&bob.recv_json().await, "pushi:peer_removed", &presence);
        ended.push(data["user_id"].as_str().unwrap().to_string());
    }
    ended.sort();
    assert_eq!(ended, ["alice", "eve"]);
    // In a cluster the member leaves first, then its pairs end (script order).
    eve.recv_event("pusher_internal:member_removed").await;
    let ended = eve.recv_event("pushi:peer_removed").await;
    assert_eq!(
        peer_data(&ended, "pushi:peer_removed", &presence)["user_id"],
        "bob"
    );
    b.api().publish(&peer, "after", "x").await;
    b.api().publish(&presence, "marker", "m").await;
    assert_eq!(
        alice.recv_json().await["event"],
        "marker",
        "peer channel is quiet"
    );
    let r = a.api().get(&format!("channels/{peer}"), &[]).await;
    assert_eq!(
        r.ok()["occupied"],
        false,
        "the pair's channel is empty: {}",
        r.text
    );
}

async fn mongo_node(redis: &RedisServer, mongo: &MongoServer, db: &str) -> TestServer {
    let config = pushi::config::MongoConfig {
        uri: mongo.uri(),
        database: db.into(),
        connect_timeout: 5,
        server_selection_timeout: 5,
        startup_timeout: 30,
        change_stream: true,
        poll_interval: 1,
    };
    let connection = pushi::apps::mongo::Connection::open(&config).await.unwrap();
    let (storage, _) = pushi::storage::mongo::MongoStore::open(&connection);
    TestServer::start_with_storage(&cluster_overrides(redis), storage).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_channels_hear_publishes_and_subscriptions_of_every_node() {
    let redis = RedisServer::start();
    let mongo = MongoServer::start();
    let a = mongo_node(&redis, &mongo, "personal").await;
    let b = mongo_node(&redis, &mongo, "personal").await;
    let user = unique("p");
    let channel = unique("news-");
    // Subscribed offline through node A; the personal socket is on node B.
    let r = a
        .api()
        .post("subscribe", &json!({"user_id": user, "event": channel}))
        .await;
    assert_eq!(r.ok(), &json!({}));
    let mut client = b.connect().await;
    let personal = format!("private-personal-{user}");
    let auth = client.auth_for(&personal, None);
    client.send_subscribe(&personal, &auth, None).await;
    let data = client.expect_subscribed(&personal).await;
    assert_eq!(data, json!({"channels": [channel], "events": []}));

    // Published on either node: stored once, delivered to the personal socket on B with id.
    let mut ids = Vec::new();
    for (i, node) in [&a, &b, &a].iter().enumerate() {
        node.api().publish(&channel, &format!("e{i}"), "x").await;
        let got = client.recv_json().await;
        assert_eq!(got["event"], format!("e{i}"), "{got}");
        assert_eq!(got["channel"], personal.as_str());
        assert_eq!(got["origin_channel"], channel.as_str());
        ids.push(got["id"].as_u64().expect("an id"));
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    client.expect_nothing(200).await;
    let stored = b
        .api()
        .get(&format!("users/{user}/events"), &[("limit", "10")])
        .await;
    assert_eq!(
        stored.ok()["events"].as_array().unwrap().len(),
        3,
        "{}",
        stored.text
    );

    // Unsubscribed through node B: a publish entering node A is not stored for the user.
    let r = b
        .api()
        .post("unsubscribe", &json!({"user_id": user, "event": channel}))
        .await;
    assert_eq!(r.ok(), &json!({}));
    a.api().publish(&channel, "late", "x").await;
    a.api().publish(&personal, "direct", "d").await;
    assert_eq!(
        client.recv_json().await["event"],
        "direct",
        "nothing stored before it"
    );
    let stored = a
        .api()
        .get(&format!("users/{user}/events"), &[("limit", "10")])
        .await;
    assert_eq!(
        stored.ok()["events"].as_array().unwrap().len(),
        3,
        "{}",
        stored.text
    );
}
