//! POST /events and /batch_events: the fan-out frame, socket_id exclusion, info replies, and
//! every refusal (status + `{"error": ...}`) publishing nothing while the server keeps serving.

mod support;

use serde_json::{json, Value};
use support::{Client, TestServer};

const CHANNEL: &str = "events-watch";

async fn watcher(server: &TestServer) -> Client {
    server.subscriber(CHANNEL).await
}

/// The refused request delivered nothing: the watcher's next frame is a fresh marker.
async fn nothing_published(server: &TestServer, w: &mut Client) {
    server.assert_delivers(CHANNEL, &mut [w]).await;
}

async fn refused(server: &TestServer, tail: &str, body: &Value, status: u16) -> String {
    server.api().post(tail, body).await.assert_error(status)
}

#[tokio::test]
async fn fan_out_frame_carries_data_verbatim() {
    let server = TestServer::start().await;
    let mut w = watcher(&server).await;
    let mut w2 = server.subscriber("other").await;
    for data in ["plain text", "{\"a\":1}", "", "\u{e9}\u{1f600}", "[1, 2]"] {
        let r = server
            .api()
            .post(
                "events",
                &json!({"name": "ev", "channels": [CHANNEL, "other"], "data": data}),
            )
            .await;
        assert_eq!(r.ok(), &json!({}));
        assert_eq!(
            w.recv_json().await,
            json!({"event": "ev", "channel": CHANNEL, "data": data})
        );
        assert_eq!(
            w2.recv_json().await,
            json!({"event": "ev", "channel": "other", "data": data})
        );
    }
}

#[tokio::test]
async fn body_not_json_is_400() {
    let server = TestServer::start().await;
    let mut w = watcher(&server).await;
    let api = server.api();
    for body in [
        &b"not json"[..],
        b"{\"name\":",
        b"[1,2]",
        b"\"str\"",
        b"null",
    ] {
        api.post_bytes("events", body).await.assert_error(400);
        api.post_bytes("batch_events", body).await.assert_error(400);
    }
    // An empty body (no body_md5 needed) is not an event either.
    api.post_bytes("events", b"").await.assert_error(400);
    nothing_published(&server, &mut w).await;
}

#[tokio::test]
async fn missing_or_bad_fields_are_400() {
    let server = TestServer::start().await;
    let mut w = watcher(&server).await;
    let bodies = [
        json!({"channel": CHANNEL, "data": "x"}), // no name
        json!({"name": "e", "channel": CHANNEL}), // no data
        json!({"name": "", "channel": CHANNEL, "data": "x"}), // empty name
        json!({"name": 5, "channel": CHANNEL, "data": "x"}), // name not a string
        json!({"name": "e", "channel": CHANNEL, "data": {"a": 1}}), // data not a string
        json!({"name": "e", "channel": CHANNEL, "data": 5}), // data not a string
        json!({"name": "e", "data": "x"}),        // no channel(s)
        json!({"name": "e", "channels": [], "data": "x"}), // empty channels
        json!({"name": "e", "channels": CHANNEL, "data": "x"}), // channels not a list
        json!({"name": "e", "channels": [CHANNEL, 5], "data": "x"}), // channel not a string
        json!({"name": "e", "channels": [CHANNEL, "bad name"], "data": "x"}), // invalid name
        json!({"name": "e", "channel": "a".repeat(165), "data": "x"}), // name too long
        json!({"name": "e", "channel": CHANNEL, "data": "x", "socket_id": "abc"}),
        json!({"name": "e", "channel": CHANNEL, "data": "x", "socket_id": "1.2.3"}),
        json!({"name": "e", "channel": CHANNEL, "data": "x", "info": "bogus"}),
        json!({"name": "x".repeat(201), "channel": CHANNEL, "data": "x"}),
    ];
    for b in &bodies {
        let r = server.api().post("events", b).await;
        assert_eq!(r.status, 400, "{b}: {}", r.text);
        r.assert_error(400);
    }
    nothing_published(&server, &mut w).await;
}

#[tokio::test]
async fn more_than_100_channels_is_400() {
    let server = TestServer::start().await;
    let mut w = watcher(&server).await;
    let mut channels: Vec<String> = (0..100).map(|i| format!("many-{i}")).collect();
    channels.push(CHANNEL.to_string()); // 101
    refused(
        &server,
        "events",
        &json!({"name": "e", "channels": channels, "data": "x"}),
        400,
    )
    .await;
    nothing_published(&server, &mut w).await;

    // Exactly 100 is fine.
    channels.remove(0);
    let r = server
        .api()
        .post(
            "events",
            &json!({"name": "hundred", "channels": channels, "data": "x"}),
        )
        .await;
    assert_eq!(r.ok(), &json!({}));
    assert_eq!(
        w.recv_json().await,
        json!({"event": "hundred", "channel": CHANNEL, "data": "x"})
    );
}

#[tokio::test]
async fn data_over_10kb_is_413() {
    let server = TestServer::start().await;
    let mut w = watcher(&server).await;
    let over = "d".repeat(10 * 1024 + 1);
    let msg = refused(
        &server,
        "events",
        &json!({"name": "e", "channel": CHANNEL, "data": over}),
        413,
    )
    .await;
    assert!(!msg.is_empty());
    // Multi-byte characters count as bytes.
    let over_utf8 = "\u{e9}".repeat(5 * 1024 + 1);
    refused(
        &server,
        "events",
        &json!({"name": "e", "channel": CHANNEL, "data": over_utf8}),
        413,
    )
    .await;
    nothing_published(&server, &mut w).await;

    // Exactly 10 KiB is delivered.
    let at = "d".repeat(10 * 1024);
    let r = server
        .api()
        .post(
            "events",
            &json!({"name": "full", "channel": CHANNEL, "data": at}),
        )
        .await;
    assert_eq!(r.ok(), &json!({}));
    assert_eq!(
        w.recv_json().await,
        json!({"event": "full", "channel": CHANNEL, "data": at})
    );
}

#[tokio::test]
async fn socket_id_excludes_that_connection() {
    let server = TestServer::start().await;
    let mut a = server.subscriber("room").await;
    let mut b = server.subscriber("room").await;
    let r = server
        .api()
        .post(
            "events",
            &json!({"name": "said", "channel": "room", "data": "hi", "socket_id": a.socket_id}),
        )
        .await;
    assert_eq!(r.ok(), &json!({}));
    assert_eq!(
        b.recv_json().await,
        json!({"event": "said", "channel": "room", "data": "hi"})
    );
    // a's next frame is the marker: it never got "said".
    server.assert_delivers("room", &mut [&mut a, &mut b]).await;

    // Same in a batch.
    let r = server
        .api()
        .post(
            "batch_events",
            &json!({"batch": [
                {"name": "b1", "channel": "room", "data": "1", "socket_id": b.socket_id},
                {"name": "b2", "channel": "room", "data": "2"}
            ]}),
        )
        .await;
    assert_eq!(r.ok(), &json!({}));
    assert_eq!(a.recv_json().await["event"], "b1");
    assert_eq!(a.recv_json().await["event"], "b2");
    assert_eq!(b.recv_json().await["event"], "b2");
    server.assert_delivers("room", &mut [&mut a, &mut b]).await;

    // An unknown (well-formed) socket id excludes nobody.
    let r = server
        .api()
        .post(
            "events",
            &json!({"name": "all", "channel": "room", "data": "x", "socket_id": "1.1"}),
        )
        .await;
    assert_eq!(r.ok(), &json!({}));
    assert_eq!(a.recv_json().await["event"], "all");
    assert_eq!(b.recv_json().await["event"], "all");
}

#[tokio::test]
async fn events_info_reports_counts() {
    let server = TestServer::start().await;
    let _a = server.subscriber("counted").await;
    let _b = server.subscriber("counted").await;
    let mut p1 = server.connect().await;
    p1.subscribe_presence("presence-counted", r#"{"user_id":"1"}"#)
        .await;
    let mut p2 = server.connect().await;
    p2.subscribe_presence("presence-counted", r#"{"user_id":"1"}"#)
        .await;
    let mut p3 = server.connect().await;
    p3.subscribe_presence("presence-counted", r#"{"user_id":"2"}"#)
        .await;

    let r = server
        .api()
        .post(
            "events",
            &json!({"name": "e", "channels": ["counted", "empty"], "data": "x", "info": "subscription_count"}),
        )
        .await;
    assert_eq!(
        r.ok(),
        &json!({"channels": {"counted": {"subscription_count": 2}, "empty": {"subscription_count": 0}}})
    );
    let r = server
        .api()
        .post(
            "events",
            &json!({"name": "e", "channel": "presence-counted", "data": "x", "info": "user_count,subscription_count"}),
        )
        .await;
    assert_eq!(
        r.ok(),
        &json!({"channels": {"presence-counted": {"user_count": 2, "subscription_count": 3}}})
    );
}

#[tokio::test]
async fn batch_of_10_is_delivered_in_order() {
    let server = TestServer::start().await;
    let mut w = watcher(&server).await;
    let batch: Vec<Value> = (0..10)
        .map(|i| json!({"name": format!("n{i}"), "channel": CHANNEL, "data": format!("{i}")}))
        .collect();
    let r = server
        .api()
        .post("batch_events", &json!({"batch": batch}))
        .await;
    assert_eq!(r.ok(), &json!({}));
    for i in 0..10 {
        assert_eq!(
            w.recv_json().await,
            json!({"event": format!("n{i}"), "channel": CHANNEL, "data": format!("{i}")})
        );
    }
    nothing_published(&server, &mut w).await;
}

#[tokio::test]
async fn batch_info_is_index_aligned() {
    let server = TestServer::start().await;
    let _w = watcher(&server).await;
    let r = server
        .api()
        .post(
            "batch_events",
            &json!({"batch": [
                {"name": "a", "channel": CHANNEL, "data": "1", "info": "subscription_count"},
                {"name": "b", "channel": "nobody", "data": "2"},
            ]}),
        )
        .await;
    assert_eq!(r.ok(), &json!({"batch": [{"subscription_count": 1}, {}]}));
}

#[tokio::test]
async fn batch_over_10_is_400_and_publishes_nothing() {
    let server = TestServer::start().await;
    let mut w = watcher(&server).await;
    let batch: Vec<Value> = (0..11)
        .map(|i| json!({"name": "n", "channel": CHANNEL, "data": format!("{i}")}))
        .collect();
    refused(&server, "batch_events", &json!({"batch": batch}), 400).await;
    nothing_published(&server, &mut w).await;
}

#[tokio::test]
async fn bad_batch_items_refuse_the_whole_batch() {
    let server = TestServer::start().await;
    let mut w = watcher(&server).await;
    let good = json!({"name": "n", "channel": CHANNEL, "data": "ok"});
    let cases = [
        (
            json!({"batch": [good, {"channel": CHANNEL, "data": "x"}]}),
            400,
        ),
        (
            json!({"batch": [good, {"name": "n", "channel": CHANNEL}]}),
            400,
        ),
        (
            json!({"batch": [good, {"name": "n", "channels": [CHANNEL], "data": "x"}]}),
            400,
        ),
        (json!({"batch": [good, 5]}), 400),
        (json!({"batch": "nope"}), 400),
        (json!({}), 400),
        (
            json!({"batch": [good, {"name": "n", "channel": CHANNEL, "data": "d".repeat(10 * 1024 + 1)}]}),
            413,
        ),
    ];
    for (body, status) in &cases {
        let r = server.api().post("batch_events", body).await;
        assert_eq!(r.status, *status, "{}", r.text);
        r.assert_error(*status);
    }
    nothing_published(&server, &mut w).await;
}

#[tokio::test]
async fn apps_are_isolated() {
    let server = TestServer::start().await;
    let mut one = server.subscriber("shared-name").await;
    let mut two = server.connect_key("app-key-2").await;
    two.subscribe("shared-name").await;
    let api2 = server.api_for("2", "app-key-2", "app-secret-2");
    api2.publish("shared-name", "for-two", "x").await;
    assert_eq!(two.recv_json().await["event"], "for-two");
    server.assert_delivers("shared-name", &mut [&mut one]).await;
}
