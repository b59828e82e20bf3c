//! Webhook delivery (PUSHER-SPEC 4) to a real HTTP receiver run inside the test: event shapes,
//! body and headers (signature over the raw body), the 3 s `channel_vacated` delay and its
//! flap suppression, `event_types` filters, retry after a 500, and delivery during shutdown.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::{Client, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const KEY: &str = "hook-key";
const SECRET: &str = "hook-secret";

// ---------------------------------------------------------------------------------------
// A minimal HTTP/1.1 receiver
// ---------------------------------------------------------------------------------------

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hook {
    method: String,
    path: String,
    /// Header names lower-cased.
    headers: HashMap<String, String>,
    body: Vec<u8>,
    json: Value,
    at: Instant,
    /// The status the receiver answered.
    status: u16,
}

struct Receiver {
    port: u16,
    rx: mpsc::UnboundedReceiver<Hook>,
}

/// Starts a receiver on 127.0.0.1:0 that answers 500 to its first `fail_first` requests and
/// 200 to the rest. Every request is recorded before it is answered.
async fn receiver(fail_first: usize) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    let seen = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            let seen = seen.clone();
            tokio::spawn(serve(stream, tx, seen, fail_first));
        }
    });
    Receiver { port, rx }
}

/// Serves requests on one connection (keep-alive) until the peer closes.
async fn serve(
    mut stream: TcpStream,
    tx: mpsc::UnboundedSender<Hook>,
    seen: Arc<AtomicUsize>,
    fail_first: usize,
) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // Headers.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or("");
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut headers = HashMap::new();
        for line in lines {
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        assert!(
            !headers
                .get("transfer-encoding")
                .is_some_and(|t| t.contains("chunked")),
            "webhook bodies are sent with a content-length"
        );
        let len: usize = headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let body_start = head_end + 4;
        while buf.len() < body_start + len {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[body_start..body_start + len].to_vec();
        buf.drain(..body_start + len);
        let n = seen.fetch_add(1, Ordering::SeqCst);
        let status = if n < fail_first { 500 } else { 200 };
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let _ = tx.send(Hook {
            method,
            path,
            headers,
            body,
            json,
            at: Instant::now(),
            status,
        });
        let reply = if status == 200 {
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
        } else {
            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n"
        };
        if stream.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Checks what every webhook request must look like (PUSHER-SPEC 4) and returns its events.
fn check_request(h: &Hook, key: &str, secret: &str) -> Vec<Value> {
    assert_eq!(h.method, "POST", "{h:?}");
    assert_eq!(
        h.headers.get("content-type").map(String::as_str),
        Some("application/json"),
        "{h:?}"
    );
    assert_eq!(
        h.headers.get("x-pusher-key").map(String::as_str),
        Some(key),
        "{h:?}"
    );
    let want = pushi::auth::webhook_signature(secret, &h.body);
    assert_eq!(
        h.headers.get("x-pusher-signature"),
        Some(&want),
        "signature over the raw body: {h:?}"
    );
    let obj = h
        .json
        .as_object()
        .unwrap_or_else(|| panic!("body must be a JSON object: {h:?}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["events", "time_ms"], "{}", h.json);
    let time_ms = obj["time_ms"]
        .as_i64()
        .unwrap_or_else(|| panic!("time_ms must be an integer: {}", h.json));
    assert!(
        (now_ms() - time_ms).abs() < 10_000,
        "time_ms {time_ms} is not fresh"
    );
    let events = obj["events"]
        .as_array()
        .unwrap_or_else(|| panic!("events must be an array: {}", h.json))
        .clone();
    assert!(!events.is_empty(), "a webhook without events: {}", h.json);
    events
}

impl Receiver {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The next request within `wait`, or None.
    async fn next_within(&mut self, wait: Duration) -> Option<Hook> {
        tokio::time::timeout(wait, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next request (checked as the default app's); panics after 6 s.
    async fn next(&mut self) -> Hook {
        let h = self
            .next_within(Duration::from_secs(6))
            .await
            .expect("a webhook within 6 s");
        check_request(&h, KEY, SECRET);
        h
    }

    /// Collects events from successive requests until `n` events have arrived; panics after
    /// 6 s. Returns the events and the arrival time of the last request.
    async fn events(&mut self, n: usize) -> (Vec<Value>, Instant) {
        let mut all = Vec::new();
        let mut at = Instant::now();
        while all.len() < n {
            let h = self.next().await;
            at = h.at;
            all.extend(check_request(&h, KEY, SECRET));
        }
        assert_eq!(all.len(), n, "more events than expected: {all:?}");
        (all, at)
    }

    /// Asserts that no request arrives within `wait`.
    async fn expect_none(&mut self, wait: Duration) {
        if let Some(h) = self.next_within(wait).await {
            panic!(
                "expected no webhook within {wait:?}, got {} on {}",
                h.json, h.path
            );
        }
    }
}

/// An app `7` whose webhooks go to `hooks` (TOML lines inside each `[[apps.webhooks]]`).
fn app_toml(subscription_count: bool, hooks: &[String]) -> String {
    let mut s = format!(
        "[[apps]]\nid = \"17\"\nkey = \"{KEY}\"\nsecret = \"{SECRET}\"\nclient_events = true\n\
         subscription_count = {subscription_count}\n"
    );
    for h in hooks {
        s.push_str("\n[[apps.webhooks]]\n");
        s.push_str(h);
        s.push('\n');
    }
    s
}

async fn start(rcv: &Receiver, subscription_count: bool) -> TestServer {
    let hook = format!("url = \"{}\"", rcv.url("/hook"));
    TestServer::start_with_apps("", &app_toml(subscription_count, &[hook])).await
}

async fn connect(server: &TestServer) -> Client {
    server.connect_app(KEY, SECRET).await
}

async fn unsubscribe(c: &mut Client, channel: &str) {
    c.send_json(&json!({"event": "pusher:unsubscribe", "data": {"channel": channel}}))
        .await;
    c.ping_pong().await; // handled
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// PUSHER-SPEC 3.5 webhook vector, so the signature helper the tests use is checked.
#[test]
fn webhook_signature_vector() {
    let body = r#"{"time_ms":1403175510755,"events":[{"channel":"test_channel","name":"channel_vacated"}]}"#;
    assert_eq!(
        pushi::auth::webhook_signature("tofu", body.as_bytes()),
        "c17257e92037cd7de407ebc1ed174ceb7b2e518db127f44411b9ffc4f5b28cc5"
    );
}

#[tokio::test]
async fn occupied_then_vacated_three_seconds_after_the_last_leaves() {
    let mut rcv = receiver(0).await;
    let server = start(&rcv, false).await;
    let chan = "wh-life";

    let mut a = connect(&server).await;
    a.subscribe(chan).await;
    let h = rcv.next().await;
    assert_eq!(h.path, "/hook");
    assert_eq!(
        h.json["events"],
        json!([{"name": "channel_occupied", "channel": chan}])
    );

    // A second subscriber and its leaving: no webhook (the channel stays occupied).
    let mut b = connect(&server).await;
    b.subscribe(chan).await;
    unsubscribe(&mut b, chan).await;

    // The last subscriber leaves: vacated after ~3 s, not before 2.5 s.
    let left = Instant::now();
    unsubscribe(&mut a, chan).await;
    let (events, at) = rcv.events(1).await;
    let after = at.duration_since(left);
    assert_eq!(
        events,
        [json!({"name": "channel_vacated", "channel": chan})]
    );
    assert!(
        after >= Duration::from_millis(2500) && after < Duration::from_millis(5000),
        "channel_vacated came {after:?} after the last unsubscribe (want ~3 s)"
    );
    // Exactly once.
    rcv.expect_none(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn a_quick_rejoin_sends_neither_vacated_nor_a_second_occupied() {
    let mut rcv = receiver(0).await;
    let server = start(&rcv, false).await;
    let chan = "wh-flap";
    let mut a = connect(&server).await;
    a.subscribe(chan).await;
    assert_eq!(
        rcv.events(1).await.0,
        [json!({"name": "channel_occupied", "channel": chan})]
    );

    // Leave and come back within 3 s (a reconnect counts the same way).
    unsubscribe(&mut a, chan).await;
    a.subscribe(chan).await;
    drop(a);
    let mut a2 = connect(&server).await;
    a2.subscribe(chan).await;
    let rejoined = Instant::now();

    // Positive control after the vacated deadline (3 s + batching) has passed.
    let control = "wh-flap-control";
    tokio::time::sleep(Duration::from_millis(3600)).await;
    let mut c = connect(&server).await;
    c.subscribe(control).await;
    let (events, _) = rcv.events(1).await;
    assert_eq!(
        events,
        [json!({"name": "channel_occupied", "channel": control})],
        "nothing for {chan} within {:?} of the re-join",
        rejoined.elapsed()
    );
}

#[tokio::test]
async fn presence_member_added_and_removed() {
    let mut rcv = receiver(0).await;
    let server = start(&rcv, false).await;
    let chan = "presence-wh";
    let mut u1 = connect(&server).await;
    u1.subscribe_presence(chan, r#"{"user_id":"u1","user_info":{"name":"One"}}"#)
        .await;
    let (events, _) = rcv.events(2).await;
    assert_eq!(
        events,
        [
            json!({"name": "channel_occupied", "channel": chan}),
            json!({"name": "member_added", "channel": chan, "user_id": "u1"}),
        ],
        "member_added carries user_id and no user_info"
    );

    // A second tab of u1: no member_added. A numeric id is sent as a string.
    let mut u1b = connect(&server).await;
    u1b.subscribe_presence(chan, r#"{"user_id":"u1","user_info":{"name":"One"}}"#)
        .await;
    let mut u2 = connect(&server).await;
    u2.subscribe_presence(chan, r#"{"user_id":2,"user_info":{}}"#)
        .await;
    assert_eq!(
        rcv.events(1).await.0,
        [json!({"name": "member_added", "channel": chan, "user_id": "2"})]
    );

    // u1's second tab leaves (u1 still present), then u2 leaves.
    u1b.close().await;
    let left = Instant::now();
    u2.close().await;
    let (events, at) = rcv.events(1).await;
    assert_eq!(
        events,
        [json!({"name": "member_removed", "channel": chan, "user_id": "2"})]
    );
    let after = at.duration_since(left);
    assert!(
        after >= Duration::from_millis(2500) && after < Duration::from_millis(5000),
        "member_removed came {after:?} after u2 left (want ~3 s)"
    );
    // u1 saw 2 come and go, and nothing about its own second tab.
    assert_eq!(
        u1.recv_json().await,
        json!({"event": "pusher_internal:member_added", "channel": chan,
               "data": "{\"user_id\":\"2\",\"user_info\":{}}"})
    );
    assert_eq!(
        u1.recv_json().await,
        json!({"event": "pusher_internal:member_removed", "channel": chan,
               "data": "{\"user_id\":\"2\"}"})
    );
    u1.ping_pong().await;
    rcv.expect_none(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn client_events_are_reported_with_socket_and_user() {
    let mut rcv = receiver(0).await;
    let server = start(&rcv, false).await;
    let private = "private-wh-client";
    let presence = "presence-wh-client";
    let mut a = connect(&server).await;
    a.subscribe_private(private).await;
    a.subscribe_presence(presence, r#"{"user_id":"ua","user_info":{}}"#)
        .await;
    let mut b = connect(&server).await;
    b.subscribe_private(private).await;
    b.subscribe_presence(presence, r#"{"user_id":"ub","user_info":{}}"#)
        .await;
    assert_eq!(
        a.recv_event("pusher_internal:member_added").await["channel"],
        presence
    );
    // occupied x2, member_added x2.
    let (events, _) = rcv.events(4).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e["name"] == "channel_occupied")
            .count(),
        2,
        "{events:?}"
    );

    a.trigger("client-obj", private, json!({"a": 1})).await;
    assert_eq!(b.recv_json().await["event"], "client-obj");
    a.trigger("client-str", presence, json!("hello")).await;
    assert_eq!(b.recv_json().await["event"], "client-str");
    let (events, _) = rcv.events(2).await;
    assert_eq!(
        events,
        [
            json!({"name": "client_event", "channel": private, "event": "client-obj",
                   "data": "{\"a\":1}", "socket_id": a.socket_id}),
            json!({"name": "client_event", "channel": presence, "event": "client-str",
                   "data": "hello", "socket_id": a.socket_id, "user_id": "ua"}),
        ]
    );
}

#[tokio::test]
async fn cache_miss_is_reported() {
    let mut rcv = receiver(0).await;
    let server = start(&rcv, false).await;
    let chan = "cache-wh";
    let mut a = connect(&server).await;
    a.subscribe(chan).await;
    assert_eq!(a.recv_json().await["event"], "pusher:cache_miss");
    let (events, _) = rcv.events(2).await;
    assert_eq!(
        events,
        [
            json!({"name": "channel_occupied", "channel": chan}),
            json!({"name": "cache_miss", "channel": chan}),
        ]
    );
    // After a publish the cache is warm: no cache_miss for the next subscriber.
    server
        .api_for("17", KEY, SECRET)
        .publish(chan, "ev", "d")
        .await;
    assert_eq!(a.recv_json().await["event"], "ev");
    let mut b = connect(&server).await;
    b.subscribe(chan).await;
    assert_eq!(b.recv_json().await["event"], "ev");
    let control = "wh-cache-control";
    b.subscribe(control).await;
    assert_eq!(
        rcv.events(1).await.0,
        [json!({"name": "channel_occupied", "channel": control})]
    );
}

#[tokio::test]
async fn subscription_count_is_reported_when_enabled() {
    let mut rcv = receiver(0).await;
    let server = start(&rcv, true).await;
    let chan = "wh-count";
    let mut a = connect(&server).await;
    a.subscribe(chan).await;
    let (events, _) = rcv.events(2).await;
    assert_eq!(
        events,
        [
            json!({"name": "channel_occupied", "channel": chan}),
            json!({"name": "subscription_count", "channel": chan, "subscription_count": 1}),
        ]
    );
    let mut b = connect(&server).await;
    b.subscribe(chan).await;
    assert_eq!(
        rcv.events(1).await.0,
        [json!({"name": "subscription_count", "channel": chan, "subscription_count": 2})]
    );
    unsubscribe(&mut b, chan).await;
    assert_eq!(
        rcv.events(1).await.0,
        [json!({"name": "subscription_count", "channel": chan, "subscription_count": 1})]
    );
    // Presence channels: member events only, no subscription_count.
    let presence = "presence-wh-count";
    a.subscribe_presence(presence, r#"{"user_id":"p"}"#).await;
    let (events, _) = rcv.events(2).await;
    assert_eq!(
        events,
        [
            json!({"name": "channel_occupied", "channel": presence}),
            json!({"name": "member_added", "channel": presence, "user_id": "p"}),
        ]
    );
    let control = "wh-count-control";
    b.subscribe(control).await;
    assert_eq!(
        rcv.events(2).await.0,
        [
            json!({"name": "channel_occupied", "channel": control}),
            json!({"name": "subscription_count", "channel": control, "subscription_count": 1}),
        ]
    );
}

#[tokio::test]
async fn no_subscription_count_webhooks_when_disabled() {
    let mut rcv = receiver(0).await;
    let server = start(&rcv, false).await;
    let mut a = connect(&server).await;
    a.subscribe("wh-nocount").await;
    let mut b = connect(&server).await;
    b.subscribe("wh-nocount").await;
    b.subscribe("wh-nocount-2").await;
    let (events, _) = rcv.events(2).await;
    assert_eq!(
        events,
        [
            json!({"name": "channel_occupied", "channel": "wh-nocount"}),
            json!({"name": "channel_occupied", "channel": "wh-nocount-2"}),
        ]
    );
}

#[tokio::test]
async fn event_types_filter_per_webhook() {
    let mut rcv = receiver(0).await;
    let hooks = [
        format!("url = \"{}\"", rcv.url("/all")),
        format!(
            "url = \"{}\"\nevent_types = [\"channel_vacated\"]",
            rcv.url("/vacated")
        ),
    ];
    let server = TestServer::start_with_apps("", &app_toml(false, &hooks)).await;
    let chan = "wh-filter";
    let mut a = connect(&server).await;
    a.subscribe(chan).await;
    let h = rcv.next().await;
    assert_eq!(h.path, "/all");
    assert_eq!(
        h.json["events"],
        json!([{"name": "channel_occupied", "channel": chan}])
    );
    unsubscribe(&mut a, chan).await;
    // Both receive the vacated event (one request each), and /vacated nothing else.
    let mut by_path: HashMap<String, Value> = HashMap::new();
    for _ in 0..2 {
        let h = rcv.next().await;
        assert!(
            by_path
                .insert(h.path.clone(), h.json["events"].clone())
                .is_none(),
            "two requests to {}",
            h.path
        );
    }
    let vacated = json!([{"name": "channel_vacated", "channel": chan}]);
    assert_eq!(by_path.get("/all"), Some(&vacated));
    assert_eq!(by_path.get("/vacated"), Some(&vacated));
    rcv.expect_none(Duration::from_millis(400)).await;
}

#[tokio::test]
async fn a_failed_delivery_is_retried_after_about_a_second() {
    let mut rcv = receiver(1).await;
    let server = start(&rcv, false).await;
    let chan = "wh-retry";
    let mut a = connect(&server).await;
    a.subscribe(chan).await;
    let first = rcv.next().await;
    assert_eq!(first.status, 500);
    let second = rcv.next().await;
    assert_eq!(second.status, 200);
    let want = json!([{"name": "channel_occupied", "channel": chan}]);
    assert_eq!(first.json["events"], want);
    assert_eq!(second.json["events"], want, "the same events again");
    let gap = second.at.duration_since(first.at);
    assert!(
        gap >= Duration::from_millis(800) && gap < Duration::from_millis(3000),
        "retried after {gap:?} (want ~1 s)"
    );
    // Accepted: not sent a third time.
    rcv.expect_none(Duration::from_millis(1500)).await;
    // One failed attempt and one accepted batch, in the metrics.
    let metrics = server
        .ctx
        .metrics
        .render(&pushi::metrics::Gauges::default());
    for line in [
        "pushi_webhooks_failed_total 1",
        "pushi_webhooks_sent_total 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}

#[tokio::test]
async fn shutdown_still_delivers_pending_vacated_webhooks() {
    let mut rcv = receiver(0).await;
    let mut server = start(&rcv, false).await;
    let left = "wh-shutdown-left";
    let stayed = "wh-shutdown-stayed";
    let mut a = connect(&server).await;
    a.subscribe(left).await;
    a.subscribe(stayed).await;
    assert_eq!(rcv.events(2).await.0.len(), 2);
    // `left` is vacated now; its webhook waits for the 3 s delay.
    unsubscribe(&mut a, left).await;

    let start = Instant::now();
    let handle = server.begin_shutdown();
    a.expect_fatal(4200).await;
    tokio::time::timeout(Duration::from_secs(8), handle)
        .await
        .expect("run() returns")
        .expect("no panic");
    let took = start.elapsed();

    // Everything was received before run() returned: read without waiting.
    let mut events = Vec::new();
    while let Ok(h) = rcv.rx.try_recv() {
        events.extend(check_request(&h, KEY, SECRET));
    }
    let mut got: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["channel"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("channel_vacated".to_string(), left.to_string()),
            ("channel_vacated".to_string(), stayed.to_string()),
        ],
        "pending and shutdown-caused vacated webhooks are delivered before run() returns \
         (run took {took:?})"
    );
}
