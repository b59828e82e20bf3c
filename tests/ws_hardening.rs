//! Hardening of the WebSocket side: clients that stop reading (write timeout, heartbeat while
//! a write is pending, slow consumers), per-connection subscription limits, RFC 6455 protocol
//! errors on a raw socket, `allowed_origins`, and exact numeric presence user ids.
//!
//! Every test has a positive control: a legitimate client on the same server keeps working
//! (it receives a marker event published after the misbehaviour, or every event).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::{unique, wait_until, Api, Client, Incoming, TestServer, TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A WebSocket client over a plain TCP stream (the stalled / slow clients).
type RawWs = WebSocketStream<TcpStream>;

/// Event data of `len` bytes that starts with its index (left-aligned in 8 characters).
fn big_data(i: usize, len: usize) -> String {
    let mut data = format!("{i:<8}");
    data.push_str(&"x".repeat(len - 8));
    data
}

/// The index at the start of a `big` event's data.
fn index_of(v: &Value) -> usize {
    let data = v["data"]
        .as_str()
        .unwrap_or_else(|| panic!("string data: {v}"));
    data[..8].trim().parse().expect("index prefix")
}

/// Publishes `count` events named `big` (indices `from..from + count`) with `len` bytes of
/// data each, ten per `POST /batch_events`.
async fn publish_big_batches(api: &Api, channel: &str, from: usize, count: usize, len: usize) {
    let mut i = from;
    while i < from + count {
        let n = (from + count - i).min(10);
        let batch: Vec<Value> = (i..i + n)
            .map(|k| json!({"name": "big", "channel": channel, "data": big_data(k, len)}))
            .collect();
        let r = api.post("batch_events", &json!({ "batch": batch })).await;
        assert_eq!(r.ok(), &json!({}), "batch publish reply");
        i += n;
    }
}

/// Next JSON frame of a support client within [`TIMEOUT`], answering (and skipping) server
/// `pusher:ping`s, so a witness survives short `activity_timeout`s.
async fn recv_answering_pings(c: &mut Client) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = match c.next_within(left).await {
            Some(Incoming::Json(v)) => v,
            None => panic!("no frame other than pusher:ping within {TIMEOUT:?}"),
            Some(other) => panic!("expected a JSON text frame, got {other:?}"),
        };
        if v["event"] == "pusher:ping" {
            c.send_json(&json!({"event": "pusher:pong", "data": {}}))
                .await;
            continue;
        }
        return v;
    }
}

/// Publishes a fresh marker on `channel` through `api` and asserts that the next frame
/// (server pings aside) of each client is exactly that event.
async fn delivers(api: &Api, channel: &str, clients: &mut [&mut Client]) {
    let name = unique("marker-");
    let data = format!("{{\"marker\":\"{name}\"}}");
    api.publish(channel, &name, &data).await;
    for c in clients.iter_mut() {
        let got = recv_answering_pings(c).await;
        assert_eq!(
            got,
            json!({"event": name, "channel": channel, "data": data}),
            "expected only the marker event on {channel}"
        );
    }
}

/// A witness that reads in a task: `n` `big` events on its channel, then anything else until
/// stopped, answering server pings throughout (so it survives short `activity_timeout`s).
struct Reader {
    /// Events received so far.
    progress: Arc<AtomicUsize>,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<(Client, Vec<usize>)>,
}

impl Reader {
    fn spawn(mut c: Client, channel: String, n: usize) -> Reader {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let progress = Arc::new(AtomicUsize::new(0));
        let counter = progress.clone();
        let handle = tokio::spawn(async move {
            let mut seen = Vec::with_capacity(n);
            let mut last_event = Instant::now();
            loop {
                let done = seen.len() == n;
                assert!(
                    done || last_event.elapsed() < TIMEOUT,
                    "witness: no event within {TIMEOUT:?} after {} events",
                    seen.len()
                );
                let got = tokio::select! {
                    biased;
                    _ = &mut stopped, if done => return (c, seen),
                    got = c.next_within(TIMEOUT) => got,
                };
                let v = match got {
                    Some(Incoming::Json(v)) => v,
                    None if done => continue,
                    None => panic!("witness: no frame within {TIMEOUT:?} after {seen:?}"),
                    Some(other) => panic!("witness: expected a text frame, got {other:?}"),
                };
                if v["event"] == "pusher:ping" {
                    c.send_json(&json!({"event": "pusher:pong", "data": {}}))
                        .await;
                    continue;
                }
                assert!(!done, "witness: unexpected frame after the events: {v}");
                assert_eq!(v["channel"], channel.as_str(), "{v}");
                assert_eq!(v["event"], "big", "{v}");
                seen.push(index_of(&v));
                counter.store(seen.len(), Ordering::Relaxed);
                last_event = Instant::now();
            }
        });
        Reader {
            progress,
            stop,
            handle,
        }
    }

    /// Waits (bounded) for all events, stops reading and returns the client and the indices.
    async fn finish(self) -> (Client, Vec<usize>) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(20), self.handle)
            .await
            .expect("the witness receives every event in time")
            .expect("witness task ok")
    }
}

/// Next text frame of a raw client as JSON, skipping `subscription_count` notices.
async fn raw_next_json(ws: &mut RawWs) -> Value {
    loop {
        let msg = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("a frame within the timeout");
        match msg {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON text frame");
                if v["event"] == "pusher_internal:subscription_count" {
                    continue;
                }
                return v;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// A client of app 1 with a 4 KiB receive buffer, subscribed to `channel`, that will not read
/// again until the test says so.
async fn stalled_client(server: &TestServer, channel: &str) -> RawWs {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let url = server.ws_url("/app/app-key?protocol=7");
    let (mut ws, _) = tokio::time::timeout(
        TIMEOUT,
        tokio_tungstenite::client_async(url.as_str(), stream),
    )
    .await
    .expect("handshake in time")
    .expect("stalled client handshake");
    let hello = raw_next_json(&mut ws).await;
    assert_eq!(hello["event"], "pusher:connection_established", "{hello}");
    let sub = json!({"event": "pusher:subscribe", "data": {"auth": "", "channel": channel}});
    ws.send(Message::text(sub.to_string())).await.unwrap();
    let ok = raw_next_json(&mut ws).await;
    assert_eq!(
        ok["event"], "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    assert_eq!(ok["channel"], channel, "{ok}");
    ws
}

/// Waits (bounded) until app 1 has `target` connections; meanwhile checks every ~250 ms
/// that `other` still receives a fresh marker on `other_ch`. Returns when the count was seen.
async fn wait_for_count_while_serving(
    server: &TestServer,
    target: usize,
    limit: Duration,
    other: &mut Client,
    other_ch: &str,
) -> Instant {
    let api = server.api();
    let start = Instant::now();
    let mut next_check = start;
    loop {
        if server.connection_count("1") == target {
            return Instant::now();
        }
        assert!(
            start.elapsed() < limit,
            "app 1 still has {} connections after {limit:?} (expected {target})",
            server.connection_count("1")
        );
        if Instant::now() >= next_check {
            delivers(&api, other_ch, &mut [other]).await;
            next_check = Instant::now() + Duration::from_millis(250);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads a raw client to its end (bounded): the server must have closed the TCP connection.
async fn drain_to_end(ws: &mut RawWs, what: &str) {
    let drain = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .unwrap_or_else(|_| panic!("{what}: the server did not close the TCP connection"));
}

// ---------------------------------------------------------------------------------------
// 1-3: clients that stop reading
// ---------------------------------------------------------------------------------------

/// Events of 90 KB: with 160 of them (14 MB) the stalled client's share is far more than the
/// socket buffers, tungstenite's write buffer and the outbox can hold, so a write stays
/// pending; far fewer than `max_queued_messages`, so the queue never overflows.
const STALL_EVENTS: usize = 160;
const STALL_LEN: usize = 90_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_stops_reading_on_a_quiet_channel_is_closed_after_write_timeout() {
    let server = TestServer::start_with(
        "[server]\nmax_queued_messages = 100000\nwrite_timeout = 2\n\
         [limits]\nmax_event_payload_kb = 100\n",
    )
    .await;
    let ch = unique("quiet-");
    let mut stalled = stalled_client(&server, &ch).await;
    let witness = server.subscriber(&ch).await;
    let other_ch = unique("other-");
    let mut other = server.subscriber(&other_ch).await;
    assert_eq!(server.connection_count("1"), 3);
    let reader = Reader::spawn(witness, ch.clone(), STALL_EVENTS);

    let api = server.api();
    let start = Instant::now();
    publish_big_batches(&api, &ch, 0, STALL_EVENTS, STALL_LEN).await;
    let published = Instant::now();
    // Nothing more is published on the channel: only the write timeout can end the stall.
    let dropped =
        wait_for_count_while_serving(&server, 2, Duration::from_secs(10), &mut other, &other_ch)
            .await;
    let after_publish = dropped.saturating_duration_since(published);
    let after_start = dropped - start;
    eprintln!(
        "write timeout: publishing took {:?}, dropped {after_publish:?} after it",
        published - start
    );
    assert!(
        after_start >= Duration::from_millis(1900),
        "dropped {after_start:?} after the first publish, before write_timeout (2 s)"
    );
    assert!(
        after_publish < Duration::from_secs(6),
        "dropped {after_publish:?} after the last publish; write_timeout is 2 s"
    );

    // The normal subscriber got every event, in order, and still works; so does a newcomer.
    let (mut witness, seen) = reader.finish().await;
    assert_eq!(seen, (0..STALL_EVENTS).collect::<Vec<_>>());
    let mut late = server.subscriber(&ch).await;
    delivers(&api, &ch, &mut [&mut witness, &mut late]).await;
    delivers(&api, &other_ch, &mut [&mut other]).await;
    // The stalled client's TCP connection really is closed.
    drain_to_end(&mut stalled, "stalled client").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_closes_a_stalled_client_while_a_write_is_pending() {
    let server = TestServer::start_with(
        "[server]\nactivity_timeout = 1\npong_timeout = 1\nwrite_timeout = 60\n\
         max_queued_messages = 100000\n[limits]\nmax_event_payload_kb = 100\n",
    )
    .await;
    let ch = unique("stall-");
    let mut stalled = stalled_client(&server, &ch).await;
    let witness = server.subscriber(&ch).await;
    assert_eq!(server.connection_count("1"), 2);
    let reader = Reader::spawn(witness, ch.clone(), STALL_EVENTS);

    // The stalled client stays active (it sends pusher:ping) while its socket fills, so the
    // heartbeat starts counting only once a write is certainly pending.
    let api = server.api();
    let ping = json!({"event": "pusher:ping", "data": {}}).to_string();
    for from in (0..STALL_EVENTS).step_by(10) {
        publish_big_batches(&api, &ch, from, 10, STALL_LEN).await;
        stalled.send(Message::text(ping.clone())).await.unwrap();
    }
    let silent_from = Instant::now();
    // A newcomer is admitted and served while the stall lasts (it joins only now: with
    // activity_timeout = 1 a client nobody reads for 2 s is closed, rightly).
    let other_ch = unique("other-");
    let mut other = server.subscriber(&other_ch).await;
    assert_eq!(server.connection_count("1"), 3);
    let dropped =
        wait_for_count_while_serving(&server, 2, Duration::from_secs(10), &mut other, &other_ch)
            .await;
    let after = dropped - silent_from;
    eprintln!("heartbeat: dropped {after:?} after the client's last frame");
    assert!(
        after >= Duration::from_millis(1500),
        "dropped {after:?} after the client's last frame, before activity + pong timeout (2 s)"
    );
    assert!(
        after < Duration::from_millis(4500),
        "dropped {after:?} after the client's last frame: the heartbeat (1 s + 1 s) should \
         close it, not the 60 s write timeout"
    );

    let (mut witness, seen) = reader.finish().await;
    assert_eq!(seen, (0..STALL_EVENTS).collect::<Vec<_>>());
    delivers(&api, &ch, &mut [&mut witness]).await;
    delivers(&api, &other_ch, &mut [&mut other]).await;
    drain_to_end(&mut stalled, "stalled client").await;
}

/// What a slow client read once it started reading.
#[derive(Debug, PartialEq)]
enum Seen {
    Event(usize),
    Error(Value),
    Other(Value),
    Close(Option<u16>),
    End(String),
}

/// Reads a raw client until its connection ends (bounded by the caller).
async fn read_all(mut ws: RawWs) -> Vec<Seen> {
    let mut out = Vec::new();
    loop {
        let seen = match tokio::time::timeout(TIMEOUT, ws.next()).await {
            Err(_) => Seen::End("nothing more within the timeout".into()),
            Ok(None) => Seen::End("stream ended".into()),
            Ok(Some(Err(e))) => Seen::End(e.to_string()),
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
                if v["event"] == "pusher_internal:subscription_count" {
                    continue;
                } else if v["event"] == "big" {
                    Seen::Event(index_of(&v))
                } else if v["event"] == "pusher:error" {
                    Seen::Error(v)
                } else {
                    Seen::Other(v)
                }
            }
            Ok(Some(Ok(Message::Close(f)))) => Seen::Close(f.map(|f| u16::from(f.code))),
            Ok(Some(Ok(_))) => continue,
        };
        let end = matches!(seen, Seen::End(_));
        out.push(seen);
        if end {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_sees_a_prefix_then_error_and_close_4200() {
    // The kernel lets ~3 MB wait for a 4 KiB-window reader on loopback (the send buffer
    // autotunes up to tcp_wmem's 4 MB), ~345 events of 9 KB here: 600 surely overflow.
    const EVENTS: usize = 600;
    let server = TestServer::start_with("[server]\nmax_queued_messages = 8\n").await;
    let ch = unique("firehose-");
    let slow = stalled_client(&server, &ch).await;
    let witness = server.subscriber(&ch).await;
    assert_eq!(server.connection_count("1"), 2);
    let reader = Reader::spawn(witness, ch.clone(), EVENTS);

    // One 9 KB event per request, as fast as the API answers.
    // The slow client starts reading as soon as the server drops it: the closing frames get
    // about 1 s to get out.
    let api = server.api();
    let mut slow = Some(slow);
    let mut slow_reader = None;
    let mut dropped_at = None;
    for i in 0..EVENTS {
        // The witness has a queue of 8 too: keep at most 4 events ahead of it, so that it
        // is never a slow consumer, however the threads are scheduled.
        wait_until("the witness to keep up", TIMEOUT, || {
            reader.progress.load(Ordering::Relaxed) + 4 > i
        })
        .await;
        api.publish(&ch, "big", &big_data(i, 9 * 1024)).await;
        if slow_reader.is_none() && server.connection_count("1") == 1 {
            dropped_at = Some(i + 1);
            let ws = slow.take().expect("not taken yet");
            slow_reader = Some(tokio::spawn(read_all(ws)));
        }
    }
    let (Some(dropped_at), Some(slow_reader)) = (dropped_at, slow_reader) else {
        panic!("the slow client (queue of 8) was not dropped after {EVENTS} events of 9 KB");
    };
    let got = tokio::time::timeout(Duration::from_secs(20), slow_reader)
        .await
        .expect("the slow client's connection ends in time")
        .expect("slow reader ok");
    let events: Vec<usize> = got
        .iter()
        .filter_map(|s| match s {
            Seen::Event(i) => Some(*i),
            _ => None,
        })
        .collect();
    eprintln!(
        "slow consumer: dropped after {dropped_at} events, then read {} events; tail {:?}",
        events.len(),
        &got[events.len()..]
    );
    assert!(!events.is_empty(), "the slow client saw no event: {got:?}");
    assert_eq!(
        events,
        (0..events.len()).collect::<Vec<_>>(),
        "the slow client sees a prefix of the events, in order"
    );
    assert!(
        events.len() < dropped_at,
        "the slow client saw {} events although it was dropped after {dropped_at}: queued \
         frames should have been dropped",
        events.len()
    );
    let tail = &got[events.len()..];
    assert!(
        tail.len() >= 2,
        "after the events: expected pusher:error 4200 then close 4200, got {tail:?}"
    );
    match &tail[0] {
        Seen::Error(v) => {
            assert_eq!(v["data"]["code"], json!(4200), "{v}");
            assert!(
                v["data"]["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{v}"
            );
        }
        other => panic!("expected pusher:error 4200 after the events, got {other:?} ({tail:?})"),
    }
    assert_eq!(
        tail[1],
        Seen::Close(Some(4200)),
        "close frame after the error: {tail:?}"
    );
    assert!(
        matches!(tail.get(2), None | Some(Seen::End(_))),
        "nothing after the close: {tail:?}"
    );

    let (mut witness, seen) = reader.finish().await;
    assert_eq!(seen, (0..EVENTS).collect::<Vec<_>>(), "the witness got all");
    assert_eq!(server.connection_count("1"), 1);
    server.assert_delivers(&ch, &mut [&mut witness]).await;
}

// ---------------------------------------------------------------------------------------
// 4-5: subscription limits
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn subscriptions_per_connection_are_limited() {
    // A high subscribe rate, so that only the channel limit can refuse.
    let server = TestServer::start_with(
        "[limits]\nmax_channels_per_connection = 5\nmax_subscribes_per_second = 100000\n",
    )
    .await;
    let mut c = server.connect().await;
    let chans: Vec<String> = (0..5).map(|_| unique("lim-")).collect();
    for ch in &chans {
        c.subscribe(ch).await;
    }
    let sixth = unique("lim-");
    c.send_subscribe(&sixth, "", None).await;
    c.expect_subscription_refusal(&sixth, Some(4300), 429).await;
    // The connection stays open and its five channels still deliver.
    c.ping_pong().await;
    for ch in &chans {
        server.assert_delivers(ch, &mut [&mut c]).await;
    }
    // The refused channel was not joined: a marker there does not reach c, one on a
    // subscribed channel published after it does (and is the next frame).
    server.api().publish(&sixth, "nope", "{}").await;
    server.assert_delivers(&chans[0], &mut [&mut c]).await;
    // The limit is per connection: another connection joins the sixth channel.
    let mut other = server.subscriber(&sixth).await;
    server.assert_delivers(&sixth, &mut [&mut other]).await;
    // Subscribing again to a channel it has is not refused.
    c.subscribe(&chans[2]).await;
    // After leaving one channel, a new one is accepted.
    c.send_json(&json!({"event": "pusher:unsubscribe", "data": {"channel": chans[0]}}))
        .await;
    c.subscribe(&sixth).await;
    server.api().publish(&chans[0], "gone", "{}").await;
    server
        .assert_delivers(&sixth, &mut [&mut c, &mut other])
        .await;
    // Now at five again: one more new channel is refused.
    let seventh = unique("lim-");
    c.send_subscribe(&seventh, "", None).await;
    c.expect_subscription_refusal(&seventh, Some(4300), 429)
        .await;
    server.assert_delivers(&chans[4], &mut [&mut c]).await;
}

#[tokio::test]
async fn subscribe_rate_is_limited_per_connection() {
    let server = TestServer::start_with(
        "[limits]\nmax_channels_per_connection = 5\nmax_subscribes_per_second = 2\n",
    )
    .await;
    let mut c = server.connect().await;
    let chans: Vec<String> = (0..6).map(|_| unique("rate-")).collect();
    // A burst of six at once: five succeed (the burst is max_channels_per_connection), the
    // sixth is over the rate.
    for ch in &chans {
        c.send_subscribe(ch, "", None).await;
    }
    for ch in &chans[..5] {
        assert_eq!(c.expect_subscribed(ch).await, json!({}));
    }
    c.expect_subscription_refusal(&chans[5], Some(4301), 429)
        .await;
    let refused_at = Instant::now();
    // Another connection is not affected.
    let mut other = server.subscriber(&chans[5]).await;
    server.assert_delivers(&chans[5], &mut [&mut other]).await;
    // Make room under the channel limit (unsubscribing takes no token), then poll until a
    // subscribe is accepted again: at 2 per second, after about half a second.
    c.send_json(&json!({"event": "pusher:unsubscribe", "data": {"channel": chans[0]}}))
        .await;
    let fresh = unique("rate-");
    let mut refusals = 0;
    loop {
        c.send_subscribe(&fresh, "", None).await;
        let v = c.recv_json().await;
        if v["event"] == "pusher_internal:subscription_succeeded" {
            assert_eq!(v["channel"], fresh.as_str(), "{v}");
            break;
        }
        assert_eq!(v["event"], "pusher:error", "{v}");
        assert_eq!(v["data"]["code"], json!(4301), "{v}");
        let sub = c.recv_event("pusher:subscription_error").await;
        assert_eq!(sub["channel"], fresh.as_str(), "{sub}");
        refusals += 1;
        assert!(
            refused_at.elapsed() < Duration::from_secs(3),
            "subscribes still refused {:?} after the burst ({refusals} refusals)",
            refused_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waited = refused_at.elapsed();
    eprintln!("subscribe rate: accepted again after {waited:?}, {refusals} refusals");
    assert!(
        waited >= Duration::from_millis(300),
        "a subscribe was accepted {waited:?} after the refusal: the rate (2/s) is not enforced"
    );
    assert!(refusals >= 1, "the first retry should still be refused");
    // Every channel the connection holds delivers; the one it left does not.
    server.api().publish(&chans[0], "gone", "{}").await;
    for ch in chans[1..5].iter().chain([&fresh]) {
        server.assert_delivers(ch, &mut [&mut c]).await;
    }
    server.assert_delivers(&chans[5], &mut [&mut other]).await;
}

// ---------------------------------------------------------------------------------------
// 6: RFC 6455 protocol errors over a raw socket
// ---------------------------------------------------------------------------------------

/// Opens a raw TCP connection to app 1 and completes the WebSocket handshake by hand; reads
/// `pusher:connection_established`.
async fn raw_socket(server: &TestServer) -> TcpStream {
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let req = format!(
        "GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    s.write_all(req.as_bytes()).await.unwrap();
    // Byte by byte, so nothing after the head is consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 8192, "response head too long");
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(TIMEOUT, s.read(&mut b))
            .await
            .expect("handshake reply in time")
            .unwrap();
        assert_eq!(n, 1, "connection ended during the handshake: {head:?}");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    let (op, payload) = read_server_frame(&mut s).await.expect("a first frame");
    assert_eq!(op, 1, "text frame");
    let v: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(v["event"], "pusher:connection_established", "{v}");
    s
}

/// A client frame: `first` is the FIN/RSV/opcode byte; masked unless `mask` is false.
fn client_frame(first: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let mut f = vec![first];
    let m = if mask { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n <= 0xffff => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if mask {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

/// Reads one server frame (opcode, payload); None at the end of the stream. Server frames
/// must be final and unmasked.
async fn read_server_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let read = async {
        let mut h = [0u8; 2];
        if s.read_exact(&mut h).await.is_err() {
            return None;
        }
        assert_eq!(h[0] & 0x70, 0, "server frame with RSV bits");
        assert_eq!(h[1] & 0x80, 0, "server frames must not be masked");
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                s.read_exact(&mut b).await.ok()?;
                u16::from_be_bytes(b) as usize
            }
            127 => {
                let mut b = [0u8; 8];
                s.read_exact(&mut b).await.ok()?;
                u64::from_be_bytes(b) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.ok()?;
        Some((h[0] & 0x0f, payload))
    };
    tokio::time::timeout(TIMEOUT, read)
        .await
        .expect("a server frame (or the end) within the timeout")
}

/// Sends `bytes` on a fresh raw connection and expects `pusher:error` with `code`, then a
/// close frame with `code`; then the witness still works and the bad socket is forgotten.
async fn protocol_error(bytes: &[u8], code: u16, what: &str) {
    let server = TestServer::start().await;
    let ch = unique("rfc-");
    let mut witness = server.subscriber(&ch).await;
    let mut s = raw_socket(&server).await;
    assert_eq!(server.connection_count("1"), 2);
    s.write_all(bytes).await.unwrap();

    let (op, payload) = read_server_frame(&mut s)
        .await
        .unwrap_or_else(|| panic!("{what}: connection ended without pusher:error"));
    assert_eq!(
        op,
        1,
        "{what}: expected the pusher:error text frame, got opcode {op} ({:?})",
        String::from_utf8_lossy(&payload)
    );
    let v: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(v["event"], "pusher:error", "{what}: {v}");
    assert_eq!(v["data"]["code"], json!(code), "{what}: {v}");
    assert!(
        v["data"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {v}"
    );
    let (op, payload) = read_server_frame(&mut s)
        .await
        .unwrap_or_else(|| panic!("{what}: connection ended without a close frame"));
    assert_eq!(op, 8, "{what}: expected a close frame, got opcode {op}");
    assert!(payload.len() >= 2, "{what}: close frame without a code");
    assert_eq!(
        u16::from_be_bytes([payload[0], payload[1]]),
        code,
        "{what}: close code"
    );
    // Answer the close; the server then ends the connection.
    let _ = s.write_all(&client_frame(0x88, &payload[..2], true)).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, s.read_to_end(&mut rest)).await;

    wait_until("the bad socket to be forgotten", TIMEOUT, || {
        server.connection_count("1") == 1
    })
    .await;
    witness.ping_pong().await;
    let mut late = server.subscriber(&ch).await;
    server
        .assert_delivers(&ch, &mut [&mut witness, &mut late])
        .await;
}

#[tokio::test]
async fn raw_control_a_valid_masked_frame_is_served() {
    // Control for the protocol error tests: the same hand-built framing, done right, works.
    let server = TestServer::start().await;
    let mut s = raw_socket(&server).await;
    let ping = br#"{"event":"pusher:ping","data":{}}"#;
    s.write_all(&client_frame(0x81, ping, true)).await.unwrap();
    let (op, payload) = read_server_frame(&mut s).await.expect("pong");
    assert_eq!(op, 1);
    let v: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(v, json!({"event": "pusher:pong", "data": "{}"}));
    // A WebSocket ping of 125 bytes (the most allowed) is answered with a pong.
    s.write_all(&client_frame(0x89, &[b'p'; 125], true))
        .await
        .unwrap();
    let (op, payload) = read_server_frame(&mut s).await.expect("pong frame");
    assert_eq!((op, payload), (0x0a, vec![b'p'; 125]));
}

#[tokio::test]
async fn invalid_utf8_text_closes_1007() {
    let bytes = client_frame(0x81, b"{\"event\":\"\xff\xfe\"}", true);
    protocol_error(&bytes, 1007, "invalid UTF-8").await;
}

#[tokio::test]
async fn unmasked_client_frame_closes_1002() {
    let bytes = client_frame(0x81, br#"{"event":"pusher:ping","data":{}}"#, false);
    protocol_error(&bytes, 1002, "unmasked frame").await;
}

#[tokio::test]
async fn reserved_bit_closes_1002() {
    let bytes = client_frame(0xc1, br#"{"event":"pusher:ping","data":{}}"#, true);
    protocol_error(&bytes, 1002, "RSV1").await;
}

#[tokio::test]
async fn oversized_ping_closes_1002() {
    let bytes = client_frame(0x89, &[b'p'; 126], true);
    protocol_error(&bytes, 1002, "126-byte ping").await;
}

#[tokio::test]
async fn fragmented_control_frame_closes_1002() {
    // A ping without FIN.
    let bytes = client_frame(0x09, b"part", true);
    protocol_error(&bytes, 1002, "fragmented ping").await;
}

#[tokio::test]
async fn text_frame_over_the_transport_cap_closes_1009() {
    // The cap is max(10 KiB x 4, 64 KiB) = 64 KiB. Only the head of a 64 KiB + 1 frame is
    // sent: the length alone must be refused (nothing is left unread, so no reset).
    let mut bytes = vec![0x81, 0x80 | 127];
    bytes.extend_from_slice(&(64u64 * 1024 + 1).to_be_bytes());
    bytes.extend_from_slice(&[1, 2, 3, 4]);
    protocol_error(&bytes, 1009, "frame over the cap").await;
}

// ---------------------------------------------------------------------------------------
// 7: allowed_origins
// ---------------------------------------------------------------------------------------

/// Connects to app `key` (protocol 7) with an optional `Origin` header; reads nothing.
async fn connect_with_origin(
    server: &TestServer,
    key: &str,
    secret: &str,
    origin: Option<&str>,
) -> Client {
    let url = server.ws_url(&format!("/app/{key}?protocol=7&client=js&version=8.6.0"));
    let mut req = url.as_str().into_client_request().unwrap();
    if let Some(origin) = origin {
        req.headers_mut()
            .insert("Origin", HeaderValue::from_str(origin).unwrap());
    }
    let (ws, resp) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect in time")
        .unwrap_or_else(|e| panic!("connect with origin {origin:?} failed: {e}"));
    assert_eq!(resp.status().as_u16(), 101);
    Client {
        ws,
        socket_id: String::new(),
        key: key.to_string(),
        secret: secret.to_string(),
    }
}

#[tokio::test]
async fn allowed_origins_are_enforced_for_browsers_only() {
    const KEY7: &str = "origin-key";
    const SECRET7: &str = "origin-secret";
    let server = TestServer::start().await;
    let api7 = server.api_for("7", KEY7, SECRET7);
    let ch = unique("origin-");

    // An allowed exact origin: established, and it works.
    let mut good = connect_with_origin(&server, KEY7, SECRET7, Some("https://good.example")).await;
    good.established().await;
    good.subscribe(&ch).await;
    // A subdomain of the wildcard (any depth).
    let mut sub =
        connect_with_origin(&server, KEY7, SECRET7, Some("https://a.b.example.org")).await;
    sub.established().await;
    sub.subscribe(&ch).await;
    // No Origin header: not a browser, not restricted.
    let mut bare = connect_with_origin(&server, KEY7, SECRET7, None).await;
    bare.established().await;
    bare.subscribe(&ch).await;
    assert_eq!(server.connection_count("7"), 3);

    // Refused: another host, the wrong scheme, and the wildcard's own apex.
    for origin in [
        "https://evil.example",
        "http://good.example",
        "https://example.org",
        "https://good.example.evil.com",
    ] {
        let mut evil = connect_with_origin(&server, KEY7, SECRET7, Some(origin)).await;
        let msg = evil.expect_fatal(4009).await;
        assert!(!msg.is_empty(), "{origin}");
        assert_eq!(
            server.connection_count("7"),
            3,
            "a refused origin ({origin}) must not be counted"
        );
        // The admitted browsers and the non-browser keep working throughout.
        delivers(&api7, &ch, &mut [&mut good, &mut sub, &mut bare]).await;
    }

    // App 1 has no allowed_origins: any origin is accepted.
    let mut any = connect_with_origin(
        &server,
        support::KEY,
        support::SECRET,
        Some("https://evil.example"),
    )
    .await;
    any.established().await;
    let ch1 = unique("any-origin-");
    any.subscribe(&ch1).await;
    server.assert_delivers(&ch1, &mut [&mut any]).await;
}

// ---------------------------------------------------------------------------------------
// 8: numeric presence user ids
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn numeric_presence_user_ids_are_kept_exactly() {
    const ID1: &str = "123456789012345678901";
    const ID2: &str = "123456789012345678902";
    let server = TestServer::start().await;
    let ch = format!("presence-{}", unique("bigint-"));

    let mut a = server.connect().await;
    let data_a = format!(r#"{{"user_id":{ID1},"user_info":{{"n":1}}}}"#);
    let p = a.subscribe_presence(&ch, &data_a).await;
    assert_eq!(p["count"], json!(1), "{p}");
    assert_eq!(p["ids"], json!([ID1]), "{p}");

    let mut b = server.connect().await;
    let data_b = format!(r#"{{"user_id":{ID2},"user_info":{{"n":2}}}}"#);
    let p = b.subscribe_presence(&ch, &data_b).await;
    assert_eq!(p["count"], json!(2), "{p}");
    let mut ids: Vec<&str> = p["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("ids array: {p}"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("ids must be strings: {p}"))
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [ID1, ID2], "{p}");
    assert_eq!(p["hash"][ID1], json!({"n": 1}), "{p}");
    assert_eq!(p["hash"][ID2], json!({"n": 2}), "{p}");

    // The first member is told about the second with the exact id text.
    let added = a.recv_event("pusher_internal:member_added").await;
    assert_eq!(added["channel"], ch.as_str(), "{added}");
    let text = added["data"]
        .as_str()
        .unwrap_or_else(|| panic!("data must be a string: {added}"));
    assert!(
        text.contains(&format!(r#""user_id":"{ID2}""#)),
        "member_added must carry the id {ID2} as exact text: {text}"
    );
    let data: Value = serde_json::from_str(text).unwrap();
    assert_eq!(data, json!({"user_id": ID2, "user_info": {"n": 2}}));

    // The HTTP API lists both ids exactly.
    let users = server.api().get(&format!("channels/{ch}/users"), &[]).await;
    let mut listed: Vec<String> = users.ok()["users"]
        .as_array()
        .unwrap_or_else(|| panic!("users array: {}", users.text))
        .iter()
        .map(|u| u["id"].as_str().expect("string id").to_string())
        .collect();
    listed.sort_unstable();
    assert_eq!(listed, [ID1, ID2], "{}", users.text);

    // Both members receive events on the channel.
    server.assert_delivers(&ch, &mut [&mut a, &mut b]).await;
}
