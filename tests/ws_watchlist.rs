//! Watchlists (PUSHER-SPEC 1.4 `pusher_internal:watchlist_events`): the initial online/offline
//! state after sign-in, `online` on a watched user's first connection, `offline` on the last,
//! and the 100-id limit (error 4302 after the initial events).

mod support;

use serde_json::{json, Value};
use support::{Client, TestServer, TIMEOUT};

fn user(id: &str, watchlist: &[&str]) -> String {
    json!({"id": id, "user_info": {}, "watchlist": watchlist}).to_string()
}

/// Reads the next frame, which must be exactly a `watchlist_events` frame (no channel, data a
/// JSON string) carrying `events`.
async fn expect_watchlist(c: &mut Client, events: Value) {
    let v = c.recv_json().await;
    assert_eq!(v["event"], "pusher_internal:watchlist_events", "{v}");
    assert_eq!(
        v.as_object().unwrap().len(),
        2,
        "only event and data (no channel): {v}"
    );
    let data = v["data"]
        .as_str()
        .unwrap_or_else(|| panic!("watchlist_events data must be a JSON string: {v}"));
    let data: Value = serde_json::from_str(data).expect("data is JSON text");
    assert_eq!(data, json!({ "events": events }), "{v}");
}

async fn wait_user_sockets(server: &TestServer, id: &str, n: usize) {
    support::wait_until(&format!("user {id} to have {n} sockets"), TIMEOUT, || {
        server.ctx.registry.user_connections("1", id).len() == n
    })
    .await;
}

#[tokio::test]
async fn initial_state_is_offline_for_absent_users() {
    let server = TestServer::start().await;
    let mut a = server.signed_in(&user("a", &["b", "c"])).await;
    // Exactly what the server sends, as text.
    let v = a.recv_json().await;
    assert_eq!(
        v,
        json!({
            "event": "pusher_internal:watchlist_events",
            "data": "{\"events\":[{\"name\":\"offline\",\"user_ids\":[\"b\",\"c\"]}]}"
        })
    );
    a.ping_pong().await;
}

#[tokio::test]
async fn no_watchlist_no_watchlist_events() {
    let server = TestServer::start().await;
    let mut a = server.signed_in(r#"{"id":"a"}"#).await;
    let mut b = server.signed_in(&user("b", &[])).await;
    // Next frames are the pongs: no watchlist_events for absent or empty watchlists.
    a.ping_pong().await;
    b.ping_pong().await;
}

#[tokio::test]
async fn online_and_offline_follow_first_and_last_connection() {
    let server = TestServer::start().await;
    let mut a = server.signed_in(&user("a", &["b", "c"])).await;
    expect_watchlist(&mut a, json!([{"name": "offline", "user_ids": ["b", "c"]}])).await;

    // b's first tab: a hears online.
    let b1 = server.signed_in(&user("b", &[])).await;
    expect_watchlist(&mut a, json!([{"name": "online", "user_ids": ["b"]}])).await;

    // b's second tab: nothing. Positive control: c's sign-in is the very next frame.
    let b2 = server.signed_in(&user("b", &[])).await;
    let c = server.signed_in(&user("c", &[])).await;
    expect_watchlist(&mut a, json!([{"name": "online", "user_ids": ["c"]}])).await;

    // An anonymous socket and an unwatched user change nothing.
    let _anon = server.connect().await;
    let _d = server.signed_in(&user("d", &[])).await;

    // b closes one tab: still online, nothing sent.
    b1.close().await;
    wait_user_sockets(&server, "b", 1).await;
    a.ping_pong().await;

    // b's last tab closes: offline.
    b2.close().await;
    expect_watchlist(&mut a, json!([{"name": "offline", "user_ids": ["b"]}])).await;
    // Exactly once: the next frame is c's offline.
    drop(c);
    expect_watchlist(&mut a, json!([{"name": "offline", "user_ids": ["c"]}])).await;
    a.ping_pong().await;

    // b comes back: online again.
    let _b3 = server.signed_in(&user("b", &[])).await;
    expect_watchlist(&mut a, json!([{"name": "online", "user_ids": ["b"]}])).await;
}

#[tokio::test]
async fn initial_state_lists_online_and_offline() {
    let server = TestServer::start().await;
    let _b = server.signed_in(&user("b", &[])).await;
    let _d = server.signed_in(&user("d", &[])).await;
    let mut a = server.signed_in(&user("a", &["b", "c", "d"])).await;
    expect_watchlist(
        &mut a,
        json!([
            {"name": "online", "user_ids": ["b", "d"]},
            {"name": "offline", "user_ids": ["c"]}
        ]),
    )
    .await;
    a.ping_pong().await;
}

#[tokio::test]
async fn several_watchers_and_mutual_watching() {
    let server = TestServer::start().await;
    let mut a = server.signed_in(&user("a", &["b"])).await;
    expect_watchlist(&mut a, json!([{"name": "offline", "user_ids": ["b"]}])).await;
    let mut x = server.signed_in(&user("x", &["b"])).await;
    expect_watchlist(&mut x, json!([{"name": "offline", "user_ids": ["b"]}])).await;
    // b watches a: a is online already; a and x hear b come online.
    let mut b = server.signed_in(&user("b", &["a"])).await;
    expect_watchlist(&mut b, json!([{"name": "online", "user_ids": ["a"]}])).await;
    expect_watchlist(&mut a, json!([{"name": "online", "user_ids": ["b"]}])).await;
    expect_watchlist(&mut x, json!([{"name": "online", "user_ids": ["b"]}])).await;
    // a leaves: b hears offline, x does not (x does not watch a).
    a.close().await;
    expect_watchlist(&mut b, json!([{"name": "offline", "user_ids": ["a"]}])).await;
    x.ping_pong().await;
    b.ping_pong().await;
}

#[tokio::test]
async fn watchlist_over_100_ids_is_cut_with_error_4302() {
    let server = TestServer::start().await;
    let ids: Vec<String> = (0..101).map(|i| format!("w{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut a = server.signed_in(&user("a", &refs)).await;
    // The initial events cover the first 100 ids only...
    expect_watchlist(
        &mut a,
        json!([{"name": "offline", "user_ids": &ids[..100]}]),
    )
    .await;
    // ...then the non-fatal 4302 error.
    let v = a.recv_json().await;
    assert_eq!(
        v,
        json!({"event": "pusher:error", "data": {
            "code": 4302,
            "message": "Watchlist limit exceeded. Only the first 100 user IDs are accepted."
        }})
    );
    a.ping_pong().await;

    // The 101st id is not watched; the 100th is.
    let _w100 = server.signed_in(&user("w100", &[])).await;
    let _w99 = server.signed_in(&user("w99", &[])).await;
    expect_watchlist(&mut a, json!([{"name": "online", "user_ids": ["w99"]}])).await;
    a.ping_pong().await;
}

#[tokio::test]
async fn watchlist_of_exactly_100_ids_is_accepted() {
    let server = TestServer::start().await;
    let ids: Vec<String> = (0..100).map(|i| format!("v{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut a = server.signed_in(&user("a", &refs)).await;
    expect_watchlist(&mut a, json!([{"name": "offline", "user_ids": ids}])).await;
    // No 4302: the next frame is the pong.
    a.ping_pong().await;
}

#[tokio::test]
async fn watchlists_are_per_app() {
    let server = TestServer::start().await;
    let mut a = server.signed_in(&user("a", &["b"])).await;
    expect_watchlist(&mut a, json!([{"name": "offline", "user_ids": ["b"]}])).await;
    // User "b" of app 2 is another user.
    let mut other = server.connect_key("app-key-2").await;
    other.signin(&user("b", &[])).await;
    a.ping_pong().await;
    let _b = server.signed_in(&user("b", &[])).await;
    expect_watchlist(&mut a, json!([{"name": "online", "user_ids": ["b"]}])).await;
}
