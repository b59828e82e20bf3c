//! Shared helpers for the integration tests: an in-process server started from
//! `fixtures/compat.toml` (port 0), a small WebSocket client and a signed HTTP API client.
//!
//! Every wait is bounded: `recv_*` give up after [`TIMEOUT`], `expect_nothing` waits a fixed
//! time and is only used after a positive control.
#![allow(dead_code)] // each test file uses a subset of the helpers

pub(crate) mod hooks;
pub(crate) mod mongo;
pub(crate) mod process;
pub(crate) mod redis;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The fixture every test server starts from.
pub(crate) const FIXTURE: &str = include_str!("../../fixtures/compat.toml");

/// How long any single expected frame or reply may take.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(5);

/// App 1 of the fixture: every feature on.
pub(crate) const APP_ID: &str = "1";
pub(crate) const KEY: &str = "app-key";
pub(crate) const SECRET: &str = "app-secret";

/// The fixture's apps: (id, key, secret).
pub(crate) const APPS: &[(&str, &str, &str)] = &[
    ("1", "app-key", "app-secret"),
    ("2", "app-key-2", "app-secret-2"),
    ("3", "disabled-key", "disabled-secret"),
    ("4", "limited-key", "limited-secret"),
    ("5", "quiet-key", "quiet-secret"),
    ("7", "origin-key", "origin-secret"),
];

/// The secret of a fixture app key ("" for unknown keys).
pub(crate) fn secret_of(key: &str) -> &'static str {
    APPS.iter()
        .find(|(_, k, _)| *k == key)
        .map(|(_, _, s)| *s)
        .unwrap_or("")
}

/// A name nobody else uses in this process (channels, events, markers).
pub(crate) fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}{}", N.fetch_add(1, Ordering::Relaxed))
}

pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

// ---------------------------------------------------------------------------------------
// Config overrides
// ---------------------------------------------------------------------------------------

/// The fixture text with `overrides` merged in. `overrides` is TOML made of `[server]` /
/// `[limits]` tables (e.g. "[server]\nactivity_timeout = 1\n"); each `key = value` line
/// replaces the fixture's line for that key in the same table, or is added to the table.
/// `server.port` and `metrics.port` are always forced to 0.
pub(crate) fn config_text(overrides: &str) -> String {
    // Blocks of the base text: (header line, body lines).
    let mut blocks: Vec<(String, Vec<String>)> = vec![(String::new(), Vec::new())];
    for line in FIXTURE.lines() {
        if line.trim_start().starts_with('[') {
            blocks.push((line.trim().to_string(), Vec::new()));
        } else {
            blocks
                .last_mut()
                .expect("one block")
                .1
                .push(line.to_string());
        }
    }
    let mut wanted = String::from("[server]\nport = 0\n[metrics]\nport = 0\n");
    wanted.push_str(overrides);
    let mut header = String::new();
    for line in wanted.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if t.starts_with('[') {
            assert!(
                !t.starts_with("[["),
                "only single tables can be overridden: {t}"
            );
            header = t.to_string();
            continue;
        }
        let key = t.split('=').next().expect("key = value").trim().to_string();
        let block = match blocks.iter().position(|(h, _)| *h == header) {
            Some(i) => &mut blocks[i],
            None => {
                // New tables go before the first [[apps]] so keys stay in their table.
                let at = blocks
                    .iter()
                    .position(|(h, _)| h.starts_with("[["))
                    .unwrap_or(blocks.len());
                blocks.insert(at, (header.clone(), Vec::new()));
                &mut blocks[at]
            }
        };
        let same_key = |l: &String| l.split('=').next().map(str::trim) == Some(key.as_str());
        match block.1.iter().position(same_key) {
            Some(i) => block.1[i] = t.to_string(),
            None => block.1.insert(0, t.to_string()),
        }
    }
    let mut out = String::new();
    for (h, lines) in blocks {
        if !h.is_empty() {
            out.push_str(&h);
            out.push('\n');
        }
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------

/// An in-process pushi server on a free port; shut down when dropped.
pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    /// Where `/metrics` is served (`None` with `[metrics] enabled = false`).
    pub(crate) metrics_addr: Option<SocketAddr>,
    /// The server's shared context (registry counts for assertions).
    pub(crate) ctx: pushi::server::Context,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl TestServer {
    /// The fixture as is (port 0).
    pub(crate) async fn start() -> TestServer {
        TestServer::start_with("").await
    }

    /// The fixture with TOML overrides, e.g. `"[server]\nactivity_timeout = 1\npong_timeout = 1\n"`.
    pub(crate) async fn start_with(overrides: &str) -> TestServer {
        TestServer::start_text(config_text(overrides)).await
    }

    /// The fixture with `overrides` (as [`TestServer::start_with`]) and `extra` TOML appended
    /// verbatim after the fixture's apps: more `[[apps]]`, with `[[apps.webhooks]]` tables.
    pub(crate) async fn start_with_apps(overrides: &str, extra: &str) -> TestServer {
        let mut text = config_text(overrides);
        text.push('\n');
        text.push_str(extra);
        TestServer::start_text(text).await
    }

    async fn start_text(text: String) -> TestServer {
        TestServer::start_full(text, None).await
    }

    /// The fixture with `overrides`, storing events in `storage` (default: in memory).
    pub(crate) async fn start_with_storage(
        overrides: &str,
        storage: pushi::storage::Storage,
    ) -> TestServer {
        TestServer::start_full(config_text(overrides), Some(storage)).await
    }

    async fn start_full(text: String, storage: Option<pushi::storage::Storage>) -> TestServer {
        let config = pushi::config::from_toml(&text)
            .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{text}"));
        let mut builder = pushi::Server::builder(config);
        if let Some(storage) = storage {
            builder = builder.storage(storage);
        }
        let server = builder.bind().await.expect("bind port 0");
        let addr = server.local_addr();
        let metrics_addr = server.metrics_addr();
        let ctx = server.context().clone();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            metrics_addr,
            ctx,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    pub(crate) fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.addr, path_and_query)
    }

    pub(crate) fn http_url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// Connects to app 1 with protocol 7 and reads `pusher:connection_established`.
    pub(crate) async fn connect(&self) -> Client {
        self.connect_key(KEY).await
    }

    /// Connects with `key` (protocol 7) and reads `pusher:connection_established`.
    pub(crate) async fn connect_key(&self, key: &str) -> Client {
        let path = format!("/app/{key}?protocol=7&client=js&version=8.6.0");
        let mut c = self.connect_raw(&path).await;
        c.key = key.to_string();
        c.secret = secret_of(key).to_string();
        c.established().await;
        c
    }

    /// Connects to an app that is not in [`APPS`] (extra apps) with its key and secret.
    pub(crate) async fn connect_app(&self, key: &str, secret: &str) -> Client {
        let path = format!("/app/{key}?protocol=7&client=js&version=8.6.0");
        let mut c = self.connect_raw(&path).await;
        c.key = key.to_string();
        c.secret = secret.to_string();
        c.established().await;
        c
    }

    /// Connects to app 1 and signs in with `user_data` (asserts `pusher:signin_success`).
    pub(crate) async fn signed_in(&self, user_data: &str) -> Client {
        let mut c = self.connect().await;
        c.signin(user_data).await;
        c
    }

    /// Opens the WebSocket at `path_and_query` and reads nothing.
    pub(crate) async fn connect_raw(&self, path_and_query: &str) -> Client {
        let url = self.ws_url(path_and_query);
        let (ws, resp) =
            tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url.as_str()))
                .await
                .unwrap_or_else(|_| panic!("connect to {url} timed out"))
                .unwrap_or_else(|e| panic!("connect to {url} failed: {e}"));
        assert_eq!(resp.status().as_u16(), 101, "upgrade status for {url}");
        Client {
            ws,
            socket_id: String::new(),
            key: KEY.to_string(),
            secret: SECRET.to_string(),
        }
    }

    /// Connects to app 1 and subscribes to the public `channel`.
    pub(crate) async fn subscriber(&self, channel: &str) -> Client {
        let mut c = self.connect().await;
        c.subscribe(channel).await;
        c
    }

    /// A socket that will send bad input and a witness, both subscribed to a fresh public
    /// channel named with `prefix`.
    pub(crate) async fn bad_and_witness(&self, prefix: &str) -> (Client, Client, String) {
        let ch = unique(prefix);
        let bad = self.subscriber(&ch).await;
        let witness = self.subscriber(&ch).await;
        (bad, witness, ch)
    }

    /// After bad input: the socket answers ping, and it, the witness and a subscriber that
    /// joins now all get the next event (and nothing before it).
    pub(crate) async fn still_fine(&self, bad: &mut Client, witness: &mut Client, ch: &str) {
        bad.ping_pong().await;
        let mut late = self.late_subscriber(ch).await;
        self.assert_delivers(ch, &mut [bad, witness, &mut late])
            .await;
    }

    /// A connection that subscribes to `channel` now (public or private-), for checking
    /// that the server still admits subscribers after bad input elsewhere.
    pub(crate) async fn late_subscriber(&self, channel: &str) -> Client {
        let mut c = self.connect().await;
        if channel.starts_with("private-") {
            c.subscribe_private(channel).await;
        } else {
            c.subscribe(channel).await;
        }
        c
    }

    /// Signed HTTP API client for app 1.
    pub(crate) fn api(&self) -> Api {
        self.api_for(APP_ID, KEY, SECRET)
    }

    /// Signed HTTP API client for any app id / key / secret.
    pub(crate) fn api_for(&self, app_id: &str, key: &str, secret: &str) -> Api {
        Api {
            base: format!("http://{}", self.addr),
            app_id: app_id.to_string(),
            key: key.to_string(),
            secret: secret.to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// Publishes a fresh marker event on `channel` of app 1 and asserts that each client's
    /// next frame is exactly that event: proves the clients still work and that nothing
    /// else was queued for them before it.
    pub(crate) async fn assert_delivers(&self, channel: &str, clients: &mut [&mut Client]) {
        let name = unique("marker-");
        let data = format!("{{\"marker\":\"{name}\"}}");
        self.api().publish(channel, &name, &data).await;
        for c in clients.iter_mut() {
            let got = c.recv_json().await;
            assert_eq!(
                got,
                json!({"event": name, "channel": channel, "data": data}),
                "expected only the marker event on {channel}"
            );
        }
    }

    /// Signals shutdown and waits for `run()` to return; returns how long it took.
    pub(crate) async fn shutdown(mut self, limit: Duration) -> Duration {
        let start = Instant::now();
        let _ = self.shutdown.take().expect("not shut down yet").send(());
        let handle = self.handle.take().expect("running");
        tokio::time::timeout(limit, handle)
            .await
            .unwrap_or_else(|_| panic!("Server::run did not return within {limit:?}"))
            .expect("server task did not panic");
        start.elapsed()
    }

    /// Sends the shutdown signal without waiting; returns the `run()` task.
    pub(crate) fn begin_shutdown(&mut self) -> JoinHandle<()> {
        let _ = self.shutdown.take().expect("not shut down yet").send(());
        self.handle.take().expect("running")
    }

    /// Connections app `app_id` has, as counted by the server.
    pub(crate) fn connection_count(&self, app_id: &str) -> usize {
        self.ctx.registry.connection_count(app_id)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Waits (bounded) until `cond` holds, polling every 10 ms; panics with `what` otherwise.
pub(crate) async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------------------

/// What arrived on a socket.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A text frame, parsed (or `Value::String` of the raw text if it is not JSON).
    Json(Value),
    /// A binary frame.
    Binary(Vec<u8>),
    /// A close frame with its code (None when the frame has no code).
    Close(Option<u16>),
    /// The stream ended or failed without a close frame.
    Ended(String),
}

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub(crate) struct Client {
    pub(crate) ws: Ws,
    /// Set by `established()`.
    pub(crate) socket_id: String,
    pub(crate) key: String,
    pub(crate) secret: String,
}

/// Frames the helpers skip: opt-in `subscription_count` notices (app 1 enables them).
fn ignored(v: &Value) -> bool {
    v["event"] == "pusher_internal:subscription_count"
}

impl Client {
    /// Next frame (text, binary, close or end); WebSocket ping/pong frames are skipped.
    /// `None` when nothing arrived within `wait`.
    pub(crate) async fn next_within(&mut self, wait: Duration) -> Option<Incoming> {
        self.next_frame(wait, true).await
    }

    /// Like [`Client::next_within`], but `subscription_count` notices are returned too.
    pub(crate) async fn next_any_within(&mut self, wait: Duration) -> Option<Incoming> {
        self.next_frame(wait, false).await
    }

    /// Next text frame as JSON, `subscription_count` notices included; panics otherwise.
    pub(crate) async fn recv_any_json(&mut self) -> Value {
        match self.next_any_within(TIMEOUT).await {
            Some(Incoming::Json(v)) => v,
            None => panic!("no frame within {TIMEOUT:?}"),
            Some(other) => panic!("expected a JSON text frame, got {other:?}"),
        }
    }

    async fn next_frame(&mut self, wait: Duration, skip_counts: bool) -> Option<Incoming> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(m) => m,
            };
            let inc = match msg {
                None => Incoming::Ended("stream ended".into()),
                Some(Err(e)) => Incoming::Ended(e.to_string()),
                Some(Ok(Message::Text(t))) => {
                    let v = serde_json::from_str::<Value>(t.as_str())
                        .unwrap_or_else(|_| Value::String(t.as_str().to_string()));
                    if skip_counts && ignored(&v) {
                        continue;
                    }
                    Incoming::Json(v)
                }
                Some(Ok(Message::Binary(b))) => Incoming::Binary(b.to_vec()),
                Some(Ok(Message::Close(frame))) => {
                    Incoming::Close(frame.map(|f| u16::from(f.code)))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            };
            return Some(inc);
        }
    }

    /// Next text frame as JSON; panics on timeout, close or anything else.
    pub(crate) async fn recv_json(&mut self) -> Value {
        match self.next_within(TIMEOUT).await {
            Some(Incoming::Json(v)) => v,
            None => panic!("no frame within {TIMEOUT:?}"),
            Some(other) => panic!("expected a JSON text frame, got {other:?}"),
        }
    }

    /// Next frame, which must be `event`.
    pub(crate) async fn recv_event(&mut self, event: &str) -> Value {
        let v = self.recv_json().await;
        assert_eq!(v["event"], event, "expected {event}, got {v}");
        v
    }

    /// Asserts nothing at all (no frame, no close) arrives within `ms`.
    pub(crate) async fn expect_nothing(&mut self, ms: u64) {
        if let Some(got) = self.next_within(Duration::from_millis(ms)).await {
            panic!("expected nothing within {ms} ms, got {got:?}");
        }
    }

    /// Reads the close frame that must come next; returns its code.
    pub(crate) async fn recv_close(&mut self) -> Option<u16> {
        match self.next_within(TIMEOUT).await {
            Some(Incoming::Close(code)) => code,
            None => panic!("no close within {TIMEOUT:?}"),
            Some(other) => panic!("expected a close frame, got {other:?}"),
        }
    }

    /// Reads a fatal error: `pusher:error` with `code` (data is an object), then close `code`.
    /// Returns the error message.
    pub(crate) async fn expect_fatal(&mut self, code: u16) -> String {
        let msg = self.expect_error(Some(code)).await;
        assert_eq!(self.recv_close().await, Some(code), "close code");
        msg
    }

    /// Reads the `pusher:connection_established` frame and remembers the socket id.
    pub(crate) async fn established(&mut self) -> Value {
        let v = self.recv_event("pusher:connection_established").await;
        let data = v["data"]
            .as_str()
            .unwrap_or_else(|| panic!("data must be a string: {v}"));
        let data: Value = serde_json::from_str(data).expect("data is JSON text");
        self.socket_id = data["socket_id"]
            .as_str()
            .expect("socket_id string")
            .to_string();
        data
    }

    pub(crate) async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_string()))
            .await
            .expect("send text");
    }

    pub(crate) async fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await;
    }

    pub(crate) async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(Message::binary(bytes))
            .await
            .expect("send binary");
    }

    /// Sends pusher:ping and expects exactly `{"event":"pusher:pong","data":"{}"}` next.
    pub(crate) async fn ping_pong(&mut self) {
        self.send_json(&json!({"event": "pusher:ping", "data": {}}))
            .await;
        let v = self.recv_json().await;
        assert_eq!(v, json!({"event": "pusher:pong", "data": "{}"}));
    }

    /// Reads a non-fatal `pusher:error` (data object) with `code` (None = null); returns message.
    pub(crate) async fn expect_error(&mut self, code: Option<u16>) -> String {
        let v = self.recv_event("pusher:error").await;
        assert!(
            v["data"].is_object(),
            "pusher:error data must be an object: {v}"
        );
        assert_eq!(v["data"]["code"], json!(code), "pusher:error code: {v}");
        let msg = v["data"]["message"].as_str().unwrap_or("").to_string();
        assert!(!msg.is_empty(), "pusher:error without message: {v}");
        msg
    }

    /// `<key>:<signature>` for `channel` (and presence `channel_data`) on this socket.
    pub(crate) fn auth_for(&self, channel: &str, channel_data: Option<&str>) -> String {
        let msg = pushi::auth::channel_string(&self.socket_id, channel, channel_data);
        format!(
            "{}:{}",
            self.key,
            pushi::auth::sign(&self.secret, msg.as_bytes())
        )
    }

    /// `<key>:<signature>` over `socket_id::user::user_data` for this socket.
    pub(crate) fn signin_auth(&self, user_data: &str) -> String {
        let msg = pushi::auth::user_string(&self.socket_id, user_data);
        format!(
            "{}:{}",
            self.key,
            pushi::auth::sign(&self.secret, msg.as_bytes())
        )
    }

    /// Sends `pusher:signin` as pusher-js does.
    pub(crate) async fn send_signin(&mut self, auth: &str, user_data: &str) {
        self.send_json(&json!({"event": "pusher:signin",
                               "data": {"auth": auth, "user_data": user_data}}))
            .await;
    }

    /// Signs in with a valid signature and expects exactly
    /// `{"event":"pusher:signin_success","data":"{\"user_data\":<user_data>}"}`.
    pub(crate) async fn signin(&mut self, user_data: &str) {
        let auth = self.signin_auth(user_data);
        self.send_signin(&auth, user_data).await;
        let v = self.recv_event("pusher:signin_success").await;
        let obj = v.as_object().expect("frame is an object");
        assert_eq!(obj.len(), 2, "signin_success has only event and data: {v}");
        let data = v["data"]
            .as_str()
            .unwrap_or_else(|| panic!("signin_success data must be a JSON string: {v}"));
        let data: Value = serde_json::from_str(data).expect("data is JSON text");
        assert_eq!(data, json!({ "user_data": user_data }), "{v}");
    }

    /// Sends `pusher:subscribe` as pusher-js does.
    pub(crate) async fn send_subscribe(
        &mut self,
        channel: &str,
        auth: &str,
        channel_data: Option<&str>,
    ) {
        let mut data = json!({"auth": auth, "channel": channel});
        if let Some(cd) = channel_data {
            data["channel_data"] = json!(cd);
        }
        self.send_json(&json!({"event": "pusher:subscribe", "data": data}))
            .await;
    }

    /// Expects `subscription_succeeded` for `channel`; returns its data parsed.
    pub(crate) async fn expect_subscribed(&mut self, channel: &str) -> Value {
        let v = self
            .recv_event("pusher_internal:subscription_succeeded")
            .await;
        assert_eq!(v["channel"], channel, "{v}");
        let data = v["data"]
            .as_str()
            .unwrap_or_else(|| panic!("data must be a string: {v}"));
        serde_json::from_str(data).unwrap_or_else(|_| panic!("data must be JSON text: {v}"))
    }

    /// Subscribes to a public channel.
    pub(crate) async fn subscribe(&mut self, channel: &str) {
        self.send_subscribe(channel, "", None).await;
        let data = self.expect_subscribed(channel).await;
        assert_eq!(data, json!({}), "public subscription data");
    }

    /// Subscribes to a private channel with a valid signature.
    pub(crate) async fn subscribe_private(&mut self, channel: &str) {
        let auth = self.auth_for(channel, None);
        self.send_subscribe(channel, &auth, None).await;
        let data = self.expect_subscribed(channel).await;
        assert_eq!(data, json!({}), "private subscription data");
    }

    /// Subscribes to a presence channel; returns the `presence` object.
    pub(crate) async fn subscribe_presence(&mut self, channel: &str, channel_data: &str) -> Value {
        let auth = self.auth_for(channel, Some(channel_data));
        self.send_subscribe(channel, &auth, Some(channel_data))
            .await;
        let data = self.expect_subscribed(channel).await;
        data["presence"].clone()
    }

    /// Expects the refusal of a subscription to `channel`: `pusher:error` (code null) and
    /// `pusher:subscription_error` with `status`, in either order. Returns the error message.
    pub(crate) async fn expect_subscription_error(&mut self, channel: &str, status: u16) -> String {
        self.expect_subscription_refusal(channel, None, status)
            .await
    }

    /// [`Client::expect_subscription_error`] with the `pusher:error` code (limits: 4300, 4301).
    pub(crate) async fn expect_subscription_refusal(
        &mut self,
        channel: &str,
        code: Option<u16>,
        status: u16,
    ) -> String {
        let a = self.recv_json().await;
        assert_ne!(
            a["event"], "pusher_internal:subscription_succeeded",
            "subscription to {channel} should have been refused: {a}"
        );
        let b = self.recv_json().await;
        let (err, sub) = if a["event"] == "pusher:error" {
            (a, b)
        } else {
            (b, a)
        };
        assert_eq!(err["event"], "pusher:error", "{err}");
        assert!(
            err["data"].is_object(),
            "pusher:error data must be an object: {err}"
        );
        assert_eq!(err["data"]["code"], json!(code), "{err}");
        let msg = err["data"]["message"].as_str().unwrap_or("").to_string();
        assert!(!msg.is_empty(), "{err}");
        assert_eq!(sub["event"], "pusher:subscription_error", "{sub}");
        assert_eq!(sub["channel"], channel, "{sub}");
        let data = sub["data"]
            .as_str()
            .unwrap_or_else(|| panic!("data must be a string: {sub}"));
        let data: Value = serde_json::from_str(data).expect("JSON text");
        assert_eq!(data["status"], json!(status), "{sub}");
        assert!(data["type"].is_string(), "{sub}");
        assert!(
            data["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{sub}"
        );
        if status == 401 {
            assert_eq!(data["type"], "AuthError", "{sub}");
        }
        msg
    }

    /// Sends a client event.
    pub(crate) async fn trigger(&mut self, event: &str, channel: &str, data: Value) {
        self.send_json(&json!({"event": event, "channel": channel, "data": data}))
            .await;
    }

    /// Closes cleanly and waits (bounded) for the server's side to end.
    pub(crate) async fn close(mut self) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        };
        let _ = self.ws.send(Message::Close(Some(frame))).await;
        let end = async { while let Some(Ok(_)) = self.ws.next().await {} };
        tokio::time::timeout(TIMEOUT, end)
            .await
            .expect("server ends the connection after the client's close");
    }
}

// ---------------------------------------------------------------------------------------
// Signed HTTP API client
// ---------------------------------------------------------------------------------------

/// A signed HTTP API client for one app.
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) base: String,
    pub(crate) app_id: String,
    pub(crate) key: String,
    pub(crate) secret: String,
    pub(crate) http: reqwest::Client,
}

/// An HTTP reply: status, body text and body parsed (Null when not JSON).
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) text: String,
    pub(crate) json: Value,
}

impl Reply {
    /// Asserts `status` and a body of exactly `{"error": "<non-empty>"}`; returns the message.
    pub(crate) fn assert_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "status; body {}", self.text);
        let obj = self
            .json
            .as_object()
            .unwrap_or_else(|| panic!("error body must be a JSON object: {}", self.text));
        assert_eq!(
            obj.len(),
            1,
            "error body must be {{\"error\": ...}}: {}",
            self.text
        );
        let msg = obj["error"].as_str().unwrap_or("").to_string();
        assert!(
            !msg.is_empty(),
            "error body must be {{\"error\": \"...\"}}: {}",
            self.text
        );
        msg
    }

    /// Asserts 200 and returns the JSON body.
    pub(crate) fn ok(&self) -> &Value {
        assert_eq!(self.status, 200, "status; body {}", self.text);
        &self.json
    }
}

/// How `body_md5` is sent.
#[derive(Debug, Clone)]
pub(crate) enum Md5 {
    /// The body's MD5 when the body is non-empty (what the SDKs do).
    Correct,
    /// Not sent.
    Omit,
    /// This value.
    Value(String),
}

/// Ways to break a request's signing.
#[derive(Debug, Clone)]
pub(crate) struct Signing {
    /// `auth_key` sent (default: the app key).
    pub(crate) auth_key: Option<String>,
    /// `auth_timestamp` sent; None = omitted. Default: now.
    pub(crate) timestamp: Option<String>,
    pub(crate) body_md5: Md5,
    /// Secret used to sign (default: the app secret).
    pub(crate) secret: Option<String>,
    /// Sent instead of the computed signature.
    pub(crate) signature: Option<String>,
}

impl Default for Signing {
    fn default() -> Self {
        Signing {
            auth_key: None,
            timestamp: Some(now_unix().to_string()),
            body_md5: Md5::Correct,
            secret: None,
            signature: None,
        }
    }
}

impl Api {
    /// The path of an endpoint of this app: `/apps/{id}/{tail}`.
    pub(crate) fn path(&self, tail: &str) -> String {
        format!("/apps/{}/{}", self.app_id, tail)
    }

    /// Signed POST of a JSON value to `/apps/{id}/{tail}`.
    pub(crate) async fn post(&self, tail: &str, body: &Value) -> Reply {
        self.post_bytes(tail, body.to_string().as_bytes()).await
    }

    /// Signed POST of raw bytes.
    pub(crate) async fn post_bytes(&self, tail: &str, body: &[u8]) -> Reply {
        self.request("POST", &self.path(tail), &[], body, Signing::default())
            .await
    }

    /// Signed GET of `/apps/{id}/{tail}` with extra query parameters.
    pub(crate) async fn get(&self, tail: &str, query: &[(&str, &str)]) -> Reply {
        self.request("GET", &self.path(tail), query, b"", Signing::default())
            .await
    }

    /// A request signed per PUSHER-SPEC 2.1, with `signing` deciding what to tamper with.
    pub(crate) async fn request(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: &[u8],
        signing: Signing,
    ) -> Reply {
        let mut params: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        params.push((
            "auth_key".into(),
            signing.auth_key.clone().unwrap_or_else(|| self.key.clone()),
        ));
        if let Some(ts) = &signing.timestamp {
            params.push(("auth_timestamp".into(), ts.clone()));
        }
        params.push(("auth_version".into(), "1.0".into()));
        match &signing.body_md5 {
            Md5::Correct if !body.is_empty() => {
                params.push(("body_md5".into(), pushi::auth::md5_hex(body)))
            }
            Md5::Correct | Md5::Omit => {}
            Md5::Value(v) => params.push(("body_md5".into(), v.clone())),
        }
        let to_sign = pushi::auth::request_string(method, path, &params);
        let secret = signing.secret.as_deref().unwrap_or(&self.secret);
        let signature = signing
            .signature
            .clone()
            .unwrap_or_else(|| pushi::auth::sign(secret, to_sign.as_bytes()));
        params.push(("auth_signature".into(), signature));
        let query: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter())
            .finish();
        let url = format!("{}{}?{}", self.base, path, query);
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, &url);
        if !body.is_empty() {
            req = req
                .header("content-type", "application/json")
                .body(body.to_vec());
        }
        let resp = tokio::time::timeout(TIMEOUT, req.send())
            .await
            .unwrap_or_else(|_| panic!("{url} timed out"))
            .unwrap_or_else(|e| panic!("{url} failed: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, text, json }
    }

    /// POST /events to one channel; asserts 200 `{}`.
    pub(crate) async fn publish(&self, channel: &str, name: &str, data: &str) {
        let r = self
            .post(
                "events",
                &json!({"name": name, "channel": channel, "data": data}),
            )
            .await;
        assert_eq!(r.ok(), &json!({}), "publish reply");
    }
}
