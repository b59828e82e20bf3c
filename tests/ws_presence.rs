//! Presence channels: the `subscription_succeeded` payload, member_added / member_removed
//! once per user (first / last connection), numeric ids, and the member limit.

mod support;

use serde_json::{json, Value};
use support::TestServer;

fn data_of(v: &Value) -> Value {
    let s = v["data"]
        .as_str()
        .unwrap_or_else(|| panic!("data must be a JSON string: {v}"));
    serde_json::from_str(s).unwrap_or_else(|_| panic!("data must be JSON text: {v}"))
}

#[tokio::test]
async fn subscription_succeeded_lists_members() {
    let server = TestServer::start().await;
    let chan = "presence-shape";
    let mut a = server.connect().await;
    let p = a
        .subscribe_presence(chan, r#"{"user_id":10,"user_info":{"name":"Mr. Pusher"}}"#)
        .await;
    assert_eq!(
        p,
        json!({"ids": ["10"], "hash": {"10": {"name": "Mr. Pusher"}}, "count": 1}),
        "numeric user_id is a string in ids and hash"
    );
    let mut b = server.connect().await;
    let p = b
        .subscribe_presence(chan, r#"{"user_id":"b","user_info":{"n":2}}"#)
        .await;
    assert_eq!(p["count"], json!(2));
    let mut ids: Vec<String> = p["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().expect("ids are strings").to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["10", "b"]);
    assert_eq!(
        p["hash"],
        json!({"10": {"name": "Mr. Pusher"}, "b": {"n": 2}})
    );

    // a hears about b, with data as a string and user_id stringified.
    let added = a.recv_event("pusher_internal:member_added").await;
    assert_eq!(added["channel"], chan);
    assert_eq!(
        data_of(&added),
        json!({"user_id": "b", "user_info": {"n": 2}})
    );
    // b does not hear about itself.
    server.assert_delivers(chan, &mut [&mut a, &mut b]).await;
}

#[tokio::test]
async fn members_are_counted_per_user_not_per_socket() {
    let server = TestServer::start().await;
    let chan = "presence-tabs";
    let mut observer = server.connect().await;
    observer
        .subscribe_presence(chan, r#"{"user_id":"obs","user_info":{}}"#)
        .await;

    // User 7 opens a first tab: one member_added, with a numeric id stringified.
    let u7 = r#"{"user_id":7,"user_info":{"tab":1}}"#;
    let mut tab1 = server.connect().await;
    tab1.subscribe_presence(chan, u7).await;
    let added = observer.recv_event("pusher_internal:member_added").await;
    assert_eq!(
        data_of(&added),
        json!({"user_id": "7", "user_info": {"tab": 1}})
    );

    // A second tab of the same user: no member_added to anyone.
    let mut tab2 = server.connect().await;
    let p = tab2.subscribe_presence(chan, u7).await;
    assert_eq!(p["count"], json!(2), "two users, three sockets: {p}");
    server
        .assert_delivers(chan, &mut [&mut observer, &mut tab1, &mut tab2])
        .await;

    let info = server
        .api()
        .get(
            &format!("channels/{chan}"),
            &[("info", "user_count,subscription_count")],
        )
        .await;
    assert_eq!(
        info.ok(),
        &json!({"occupied": true, "user_count": 2, "subscription_count": 3})
    );

    // The first tab leaves (unsubscribe): user 7 is still present, no member_removed.
    tab1.send_json(&json!({"event": "pusher:unsubscribe", "data": {"channel": chan}}))
        .await;
    tab1.ping_pong().await; // the server has handled the unsubscribe
    server
        .assert_delivers(chan, &mut [&mut observer, &mut tab2])
        .await;

    // The last tab disconnects: exactly one member_removed.
    drop(tab2);
    let removed = observer.recv_event("pusher_internal:member_removed").await;
    assert_eq!(removed["channel"], chan);
    assert_eq!(data_of(&removed), json!({"user_id": "7"}));
    server.assert_delivers(chan, &mut [&mut observer]).await;

    let users = server
        .api()
        .get(&format!("channels/{chan}/users"), &[])
        .await;
    assert_eq!(users.ok(), &json!({"users": [{"id": "obs"}]}));
}

#[tokio::test]
async fn member_removed_on_unsubscribe_of_last_socket() {
    let server = TestServer::start().await;
    let chan = "presence-unsub";
    let mut observer = server.connect().await;
    observer
        .subscribe_presence(chan, r#"{"user_id":"obs","user_info":{}}"#)
        .await;
    let mut u = server.connect().await;
    u.subscribe_presence(chan, r#"{"user_id":"u","user_info":null}"#)
        .await;
    observer.recv_event("pusher_internal:member_added").await;
    u.send_json(&json!({"event": "pusher:unsubscribe", "data": {"channel": chan}}))
        .await;
    let removed = observer.recv_event("pusher_internal:member_removed").await;
    assert_eq!(data_of(&removed), json!({"user_id": "u"}));
    // u is no longer subscribed: the marker reaches only the observer.
    server.assert_delivers(chan, &mut [&mut observer]).await;
    u.ping_pong().await;
}

#[tokio::test]
async fn presence_member_limit() {
    let server = TestServer::start_with("[limits]\nmax_presence_members = 2\n").await;
    let chan = "presence-full";
    let mut a = server.connect().await;
    a.subscribe_presence(chan, r#"{"user_id":"a","user_info":{}}"#)
        .await;
    let mut b = server.connect().await;
    b.subscribe_presence(chan, r#"{"user_id":"b","user_info":{}}"#)
        .await;
    a.recv_event("pusher_internal:member_added").await;

    // A third user is refused: pusher:error + subscription_error, socket stays open.
    let mut c = server.connect().await;
    let data = r#"{"user_id":"c","user_info":{}}"#;
    let auth = c.auth_for(chan, Some(data));
    c.send_subscribe(chan, &auth, Some(data)).await;
    c.expect_subscription_error(chan, 400).await;
    c.ping_pong().await;
    // Members heard nothing about c, and c receives nothing from the channel.
    server.assert_delivers(chan, &mut [&mut a, &mut b]).await;
    c.expect_nothing(100).await;

    // A second socket of an existing member is not a new member: admitted.
    let mut b2 = server.connect().await;
    let p = b2
        .subscribe_presence(chan, r#"{"user_id":"b","user_info":{}}"#)
        .await;
    assert_eq!(p["count"], json!(2));

    // Once a member leaves, a new user fits.
    drop(a);
    let removed = b.recv_event("pusher_internal:member_removed").await;
    assert_eq!(data_of(&removed), json!({"user_id": "a"}));
    c.subscribe_presence(chan, data).await;
    let added = b.recv_event("pusher_internal:member_added").await;
    assert_eq!(data_of(&added), json!({"user_id": "c", "user_info": {}}));
}

#[tokio::test]
async fn presence_limit_default_is_100() {
    // 100 users fit, the 101st is refused.
    let server = TestServer::start().await;
    let chan = "presence-hundred";
    let mut sockets = Vec::new();
    for i in 0..100 {
        let mut s = server.connect().await;
        s.subscribe_presence(chan, &format!(r#"{{"user_id":"u{i}"}}"#))
            .await;
        sockets.push(s);
    }
    let mut extra = server.connect().await;
    let data = r#"{"user_id":"u100"}"#;
    let auth = extra.auth_for(chan, Some(data));
    extra.send_subscribe(chan, &auth, Some(data)).await;
    extra.expect_subscription_error(chan, 400).await;
    extra.ping_pong().await;
    let info = server
        .api()
        .get(&format!("channels/{chan}"), &[("info", "user_count")])
        .await;
    assert_eq!(info.ok(), &json!({"occupied": true, "user_count": 100}));
}
