//! Peer channels (EXTENSIONS.md §3): two `peer`-flagged members of `presence-<base>` get
//! `peer-<base>;<a>,<b>`, announced with `pushi:peer_added`; the server subscribes both;
//! only the pair may subscribe; client events go to the other side with `user_id`; HTTP
//! publishes reach it; leaving tears it down with `pushi:peer_removed`.

mod support;

use serde_json::{json, Value};
use support::{unique, Client, TestServer};

fn member(user: &str, peer: bool) -> String {
    if peer {
        json!({"user_id": user, "user_info": {"name": user}, "peer": true}).to_string()
    } else {
        json!({"user_id": user, "user_info": {"name": user}}).to_string()
    }
}

async fn join(server: &TestServer, presence: &str, user: &str, peer: bool) -> Client {
    let mut c = server.connect().await;
    c.subscribe_presence(presence, &member(user, peer)).await;
    c
}

/// The `data` of a `pushi:peer_*` frame, checked to be on `presence`.
fn peer_data(frame: &Value, event: &str, presence: &str) -> Value {
    assert_eq!(frame["event"], event, "{frame}");
    assert_eq!(frame["channel"], presence, "{frame}");
    serde_json::from_str(frame["data"].as_str().expect("data is a JSON string")).unwrap()
}

#[tokio::test]
async fn a_pair_forms_talks_and_ends() {
    let server = TestServer::start().await;
    let api = server.api();
    let base = unique("room");
    let presence = format!("presence-{base}");
    let peer = format!("peer-{base};alice,bob");

    let mut bob = join(&server, &presence, "bob", true).await;
    // alice flags herself in user_info: accepted too.
    let mut alice = server.connect().await;
    let data = json!({"user_id": "alice", "user_info": {"peer": true}}).to_string();
    alice.subscribe_presence(&presence, &data).await;
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

    // The server subscribed both: an HTTP publish reaches them before they subscribe.
    api.publish(&peer, "hello", "both").await;
    for c in [&mut alice, &mut bob] {
        let got = c.recv_json().await;
        assert_eq!(got["event"], "hello", "{got}");
        assert_eq!(got["channel"], peer.as_str());
    }
    // Their own subscribe (pusher-js sends auth "") succeeds, twice is harmless.
    for c in [&mut alice, &mut bob] {
        c.send_subscribe(&peer, "", None).await;
        assert_eq!(c.expect_subscribed(&peer).await, json!({}));
    }
    alice.send_subscribe(&peer, "", None).await;
    alice.expect_subscribed(&peer).await;

    // Client events go to the other side, with the sender, and are not echoed.
    alice.trigger("client-ping", &peer, json!({"n": 1})).await;
    let got = bob.recv_json().await;
    assert_eq!(got["event"], "client-ping");
    assert_eq!(got["channel"], peer.as_str());
    assert_eq!(got["user_id"], "alice");
    assert_eq!(got["data"], json!({"n": 1}));
    bob.trigger("client-pong", &peer, json!("x")).await;
    assert_eq!(alice.recv_json().await["user_id"], "bob");
    alice.expect_nothing(100).await;

    // The channel is listed like any other.
    let r = api
        .get(
            &format!("channels/{peer}"),
            &[("info", "subscription_count")],
        )
        .await;
    assert_eq!(r.ok()["subscription_count"], 2, "{}", r.text);

    // bob leaves the presence channel: both hear that the pair ended, delivery stops.
    bob.send_json(&json!({"event": "pusher:unsubscribe", "data": {"channel": presence}}))
        .await;
    assert_eq!(
        peer_data(&bob.recv_json().await, "pushi:peer_removed", &presence),
        json!({"channel": peer, "user_id": "alice"})
    );
    assert_eq!(
        peer_data(&alice.recv_json().await, "pushi:peer_removed", &presence),
        json!({"channel": peer, "user_id": "bob"})
    );
    assert_eq!(
        alice.recv_event("pusher_internal:member_removed").await["channel"],
        presence.as_str()
    );
    api.publish(&peer, "after", "x").await;
    api.publish(&presence, "marker", "m").await;
    assert_eq!(
        alice.recv_json().await["event"],
        "marker",
        "peer channel is quiet"
    );
    bob.expect_nothing(100).await;
    let r = api.get(&format!("channels/{peer}"), &[]).await;
    assert_eq!(r.ok()["occupied"], false, "{}", r.text);
    // And a client event there is refused now.
    alice.trigger("client-late", &peer, json!(1)).await;
    let err = alice.expect_error(None).await;
    assert!(err.contains("not subscribed"), "{err}");
}

#[tokio::test]
async fn pairing_needs_both_flags_in_any_join_order_and_pairable_ids() {
    let server = TestServer::start().await;
    let presence = format!("presence-{}", unique("r"));
    // Only one side flagged: no pair.
    let mut ann = join(&server, &presence, "ann", true).await;
    let mut ben = join(&server, &presence, "ben", false).await;
    ann.recv_event("pusher_internal:member_added").await;
    // Ids with ';' or ',' take part in presence but are never paired.
    let mut odd = join(&server, &presence, "o;dd", true).await;
    ann.recv_event("pusher_internal:member_added").await;
    ben.recv_event("pusher_internal:member_added").await;
    // Both flagged, joining in the other order: the same sorted name.
    let mut abe = join(&server, &presence, "abe", true).await;
    let base = presence.strip_prefix("presence-").unwrap();
    let peer = format!("peer-{base};abe,ann");
    assert_eq!(
        peer_data(&abe.recv_json().await, "pushi:peer_added", &presence)["channel"],
        peer.as_str()
    );
    ann.recv_event("pusher_internal:member_added").await;
    assert_eq!(
        peer_data(&ann.recv_json().await, "pushi:peer_added", &presence)["user_id"],
        "abe"
    );
    ben.recv_event("pusher_internal:member_added").await;
    odd.recv_event("pusher_internal:member_added").await;
    ben.expect_nothing(100).await;
    odd.expect_nothing(100).await;
    abe.expect_nothing(100).await;
}

#[tokio::test]
async fn only_the_pair_on_the_presence_channel_may_subscribe() {
    let server = TestServer::start().await;
    let base = unique("r");
    let presence = format!("presence-{base}");
    let peer = format!("peer-{base};alice,bob");
    let mut alice = join(&server, &presence, "alice", true).await;
    let _bob = join(&server, &presence, "bob", true).await;
    alice.recv_json().await; // member_added
    alice.recv_json().await; // peer_added
                             // A third member, flagged or not, and a socket not on the presence channel.
    let mut carol = join(&server, &presence, "carol", false).await;
    alice.recv_event("pusher_internal:member_added").await;
    carol.send_subscribe(&peer, "", None).await;
    carol.expect_subscription_error(&peer, 403).await;
    let mut outsider = server.connect().await;
    outsider.send_subscribe(&peer, "", None).await;
    outsider.expect_subscription_error(&peer, 403).await;
    // Names that are not a pair's.
    for name in [
        format!("peer-{base};bob,alice"),
        format!("peer-{base};alice,zed"),
        format!("peer-{base}"),
    ] {
        alice.send_subscribe(&name, "", None).await;
        alice.expect_subscription_error(&name, 403).await;
    }
    // A client event from outside does not reach the pair.
    outsider.trigger("client-x", &peer, json!(1)).await;
    outsider.expect_error(None).await;
}

#[tokio::test]
async fn every_socket_of_a_peer_joins_and_the_pair_lasts_until_the_last_leaves() {
    let server = TestServer::start().await;
    let api = server.api();
    let base = unique("r");
    let presence = format!("presence-{base}");
    let peer = format!("peer-{base};alice,bob");
    let mut alice = join(&server, &presence, "alice", true).await;
    let mut bob = join(&server, &presence, "bob", true).await;
    alice.recv_json().await; // member_added
    alice.recv_json().await; // peer_added
    bob.recv_json().await; // peer_added
                           // alice's second tab hears of the pair and is on the peer channel.
    let mut alice2 = join(&server, &presence, "alice", true).await;
    assert_eq!(
        peer_data(&alice2.recv_json().await, "pushi:peer_added", &presence)["user_id"],
        "bob"
    );
    api.publish(&peer, "three", "x").await;
    for c in [&mut alice, &mut alice2, &mut bob] {
        assert_eq!(c.recv_json().await["event"], "three");
    }
    // The first tab goes: the pair stays for the second.
    alice.close().await;
    api.publish(&peer, "two", "x").await;
    assert_eq!(alice2.recv_json().await["event"], "two");
    assert_eq!(bob.recv_json().await["event"], "two");
    // The last tab goes: bob hears the end.
    alice2.close().await;
    assert_eq!(
        peer_data(&bob.recv_json().await, "pushi:peer_removed", &presence)["user_id"],
        "alice"
    );
    bob.recv_event("pusher_internal:member_removed").await;
    let r = api.get(&format!("channels/{peer}"), &[]).await;
    assert_eq!(r.ok()["occupied"], false, "{}", r.text);
}
