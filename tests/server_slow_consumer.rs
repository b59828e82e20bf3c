//! A client that never reads is disconnected once its queue (server.max_queued_messages)
//! fills; a normal subscriber on the same channel keeps receiving every event.

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use support::{Incoming, TestServer};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

const CHANNEL: &str = "firehose";
/// Most events published while waiting for the slow client to be dropped.
const MAX_EVENTS: usize = 4000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_and_others_get_everything() {
    let server = TestServer::start_with("[server]\nmax_queued_messages = 64\n").await;

    // The slow client: a small receive buffer, subscribed, then never read again.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let url = server.ws_url("/app/app-key?protocol=7");
    let (mut slow, _) = tokio_tungstenite::client_async(url.as_str(), stream)
        .await
        .expect("slow client handshake");
    let first = |m: Option<Result<Message, _>>| -> Value {
        match m {
            Some(Ok(Message::Text(t))) => serde_json::from_str(t.as_str()).unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    };
    let hello = first(
        tokio::time::timeout(support::TIMEOUT, slow.next())
            .await
            .unwrap(),
    );
    assert_eq!(hello["event"], "pusher:connection_established");
    let sub = json!({"event": "pusher:subscribe", "data": {"auth": "", "channel": CHANNEL}});
    futures_util::SinkExt::send(&mut slow, Message::text(sub.to_string()))
        .await
        .unwrap();
    let ok = first(
        tokio::time::timeout(support::TIMEOUT, slow.next())
            .await
            .unwrap(),
    );
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");

    // The normal subscriber reads everything in a task until the "end" event.
    let mut normal = server.subscriber(CHANNEL).await;
    assert_eq!(server.connection_count("1"), 2);
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let v = normal.recv_json().await;
            assert_eq!(v["channel"], CHANNEL, "{v}");
            if v["event"] == "end" {
                return (seen, normal);
            }
            assert_eq!(v["event"], "big", "{v}");
            let data = v["data"].as_str().expect("string data");
            let i: usize = data[..8].trim().parse().expect("index prefix");
            assert_eq!(data.len(), 9 * 1024);
            seen.push(i);
        }
    });

    // Publish 9 KB events one request at a time until the server drops the slow client.
    let api = server.api();
    let start = Instant::now();
    let mut published = 0;
    let mut dropped_at = None;
    while published < MAX_EVENTS {
        let mut data = format!("{published:<8}");
        data.push_str(&"x".repeat(9 * 1024 - 8));
        api.publish(CHANNEL, "big", &data).await;
        published += 1;
        if server.connection_count("1") == 1 {
            dropped_at = Some(published);
            break;
        }
    }
    let dropped_at = dropped_at.unwrap_or_else(|| {
        panic!(
            "slow client still connected after {published} events of 9 KB ({:?})",
            start.elapsed()
        )
    });
    // A few more events after the drop still reach the normal subscriber.
    for _ in 0..20 {
        let mut data = format!("{published:<8}");
        data.push_str(&"x".repeat(9 * 1024 - 8));
        api.publish(CHANNEL, "big", &data).await;
        published += 1;
    }
    api.publish(CHANNEL, "end", "").await;

    let (seen, mut normal) = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("the normal subscriber receives everything in time")
        .expect("reader ok");
    assert_eq!(
        seen,
        (0..published).collect::<Vec<_>>(),
        "every event, in order, once"
    );

    // The slow client's TCP connection is closed by the server: reading what is buffered
    // ends (close frame, EOF or reset) within a bounded time.
    let drain = async {
        loop {
            match slow.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the slow client's connection was not closed (dropped after {dropped_at} events)"
            )
        });

    // The channel still has the normal subscriber only.
    let info = api
        .get(
            &format!("channels/{CHANNEL}"),
            &[("info", "subscription_count")],
        )
        .await;
    assert_eq!(
        info.ok(),
        &json!({"occupied": true, "subscription_count": 1})
    );
    normal.ping_pong().await;
    // Counted as a full queue, not only as one more 4200.
    let metrics = server
        .ctx
        .metrics
        .render(&pushi::metrics::Gauges::default());
    assert!(
        metrics
            .lines()
            .any(|l| l == "pushi_queue_full_disconnections_total{app_id=\"1\"} 1"),
        "{metrics}"
    );
    eprintln!("slow client dropped after {dropped_at} events of 9 KB");
}

#[tokio::test]
async fn a_reading_client_is_never_dropped() {
    // Control: with the same small queue, a client that reads keeps up with one event per
    // request and is not disconnected.
    let server = TestServer::start_with("[server]\nmax_queued_messages = 64\n").await;
    let mut c = server.subscriber(CHANNEL).await;
    let api = server.api();
    let data = "y".repeat(9 * 1024);
    for _ in 0..200 {
        api.publish(CHANNEL, "big", &data).await;
        match c.next_within(support::TIMEOUT).await {
            Some(Incoming::Json(v)) => assert_eq!(v["event"], "big"),
            other => panic!("expected the event, got {other:?}"),
        }
    }
    c.ping_pong().await;
    assert_eq!(server.connection_count("1"), 1);
}
