//! HTTP hardening over real sockets: slow and idle connections are closed after
//! `server.http_header_timeout`, pending connections are bounded (oldest closed first, so
//! idle connects cannot exhaust file descriptors), API requests are authenticated before
//! their body is read, bodies are capped and timed, oversized heads get 431, shutdown does
//! not wait for half-received requests, malformed WebSocket handshakes get a JSON 400,
//! `/metrics` lives on its own listener and far-off timestamps are refused without
//! overflow.
//!
//! The attacks use raw `TcpStream`s. Every test also has a positive control: a legitimate
//! client (a WebSocket subscriber receiving a freshly published event, a signed publish
//! answered 200) keeps working throughout. Every wait is bounded; the only fixed sleeps are
//! the deliberate drip intervals of the attackers and "is it still open at half the
//! timeout" checkpoints.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::process::{publish_at, ServerProcess};
use support::{now_unix, unique, Client, Signing, TestServer, KEY, SECRET};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

// ---------------------------------------------------------------------------------------
// Raw HTTP helpers
// ---------------------------------------------------------------------------------------

/// One HTTP response read off a raw socket.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    head: String,
    body: String,
}

impl RawResponse {
    /// Asserts `status` and a JSON body of exactly `{"error": "<non-empty>"}`; returns the
    /// message.
    fn assert_json_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "status; response {self:?}");
        let v: Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|_| panic!("error body must be JSON: {self:?}"));
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("error body must be an object: {self:?}"));
        assert_eq!(
            obj.len(),
            1,
            "error body must be {{\"error\": ...}}: {self:?}"
        );
        let msg = obj["error"].as_str().unwrap_or("").to_string();
        assert!(!msg.is_empty(), "empty error message: {self:?}");
        msg
    }

    /// The value of header `name` (case-insensitive), if present.
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// A complete response at the start of `buf` (head, then a `Content-Length` body; no
/// length means no body, as for 101 and hyper's own error replies).
fn parse_response(buf: &[u8]) -> Option<RawResponse> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let len = head
        .lines()
        .skip(1)
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    let body = buf.get(end + 4..end + 4 + len)?;
    Some(RawResponse {
        status,
        head,
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

/// Reads one response within `limit`; Err describes what came instead.
async fn read_response<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: Duration,
) -> Result<RawResponse, String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(resp) = parse_response(&buf) {
            return Ok(resp);
        }
        let so_far = |buf: &[u8]| String::from_utf8_lossy(buf).into_owned();
        match tokio::time::timeout_at(deadline, r.read(&mut chunk)).await {
            Err(_) => {
                return Err(format!(
                    "no complete response within {limit:?}; got {:?}",
                    so_far(&buf)
                ))
            }
            Ok(Ok(0)) => return Err(format!("closed before a response; got {:?}", so_far(&buf))),
            Ok(Err(e)) => return Err(format!("read failed ({e}); got {:?}", so_far(&buf))),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Writes `request` on a fresh connection to `addr` and reads the response.
async fn roundtrip(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write request");
    read_response(&mut s, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Reads (discarding anything that comes) until the peer closes the connection (EOF or an
/// error such as a reset); returns when, or None if it is still open at `deadline`.
async fn closed_by(stream: &mut TcpStream, deadline: Instant) -> Option<Instant> {
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(Instant::now()),
            Ok(Ok(_)) => continue,
        }
    }
}

/// True when the connection is open and nothing arrives on it for 50 ms.
async fn open_and_silent(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf))
        .await
        .is_err()
}

/// `GET /up` on a keep-alive connection; asserts 200.
async fn get_up(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /up HTTP/1.1\r\nHost: pushi\r\n\r\n")
        .await
        .expect("write GET /up");
    let r = read_response(stream, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("GET /up: {e}"));
    assert_eq!(r.status, 200, "{r:?}");
}

/// A query string signed for app 1 (PUSHER-SPEC 2.1), optionally with `body_md5`.
fn signed_query(method: &str, path: &str, body_md5: Option<&str>, timestamp: i64) -> String {
    let mut params: Vec<(String, String)> = vec![
        ("auth_key".into(), KEY.into()),
        ("auth_timestamp".into(), timestamp.to_string()),
        ("auth_version".into(), "1.0".into()),
    ];
    if let Some(md5) = body_md5 {
        params.push(("body_md5".into(), md5.into()));
    }
    let to_sign = pushi::auth::request_string(method, path, &params);
    let signature = pushi::auth::sign(SECRET, to_sign.as_bytes());
    params.push(("auth_signature".into(), signature));
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter())
        .finish()
}

/// A POST head announcing `content_length` body bytes.
fn post_head(path_and_query: &str, content_length: usize) -> String {
    format!(
        "POST {path_and_query} HTTP/1.1\r\nHost: pushi\r\nContent-Type: application/json\r\n\
         Content-Length: {content_length}\r\n\r\n"
    )
}

/// The head of a correctly signed `POST /apps/1/events` whose body is `body`.
fn signed_events_head(body: &[u8]) -> String {
    let path = "/apps/1/events";
    let md5 = pushi::auth::md5_hex(body);
    let query = signed_query("POST", path, Some(&md5), now_unix());
    post_head(&format!("{path}?{query}"), body.len())
}

/// Publishes a fresh marker on `channel` through the signed API at `addr` and asserts that
/// it is the next thing `sub` receives.
async fn delivers(addr: SocketAddr, sub: &mut Client, channel: &str) {
    let name = unique("marker-");
    let data = format!("{{\"marker\":\"{name}\"}}");
    publish_at(addr, channel, &name, &data).await;
    assert_eq!(
        sub.recv_json().await,
        json!({"event": name, "channel": channel, "data": data}),
        "the subscriber gets the fresh event"
    );
}

/// `VmRSS` of process `pid` in KiB.
fn rss_kib_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

// ---------------------------------------------------------------------------------------
// 1. Slowloris
// ---------------------------------------------------------------------------------------

/// A slowloris connection: a partial request head, then one more header byte every 500 ms,
/// never finishing. Returns the time from connect to the server closing it, or why not.
async fn slowloris(
    addr: SocketAddr,
    give_up: Duration,
    started: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
) -> Result<Duration, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let t0 = Instant::now();
    s.write_all(b"GET /up HTTP/1.1\r\nHost: pushi\r\nX-Slow: ")
        .await
        .map_err(|e| format!("first write: {e}"))?;
    started.fetch_add(1, Ordering::SeqCst);
    let mut buf = [0u8; 1024];
    let mut next_drip = tokio::time::Instant::now() + Duration::from_millis(500);
    loop {
        if t0.elapsed() > give_up {
            return Err(format!("still open after {give_up:?}"));
        }
        tokio::select! {
            read = s.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {} // an error reply may precede the close
            },
            _ = tokio::time::sleep_until(next_drip) => {
                next_drip += Duration::from_millis(500);
                if s.write_all(b"a").await.is_err() {
                    break; // reset by the server
                }
            }
        }
    }
    closed.fetch_add(1, Ordering::SeqCst);
    Ok(t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_after_the_header_timeout() {
    let test_start = Instant::now();
    let server = TestServer::start_with("[server]\nhttp_header_timeout = 2\n").await;
    let ch = unique("slowloris-");
    const ATTACKERS: usize = 200;
    let started = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..ATTACKERS {
        set.spawn(slowloris(
            server.addr,
            Duration::from_secs(10),
            started.clone(),
            closed.clone(),
        ));
    }
    support::wait_until(
        "every slowloris connection has sent its partial head",
        Duration::from_secs(5),
        || started.load(Ordering::SeqCst) == ATTACKERS,
    )
    .await;

    // Positive control during the attack: a WebSocket client connects, subscribes and
    // receives a freshly published event.
    let t = Instant::now();
    let mut sub = server.subscriber(&ch).await;
    let ws_connected = Instant::now();
    server.assert_delivers(&ch, &mut [&mut sub]).await;
    let control_took = t.elapsed();
    let still_attacking = ATTACKERS - closed.load(Ordering::SeqCst);
    assert!(
        still_attacking >= ATTACKERS / 2,
        "the control should run during the attack; only {still_attacking} attackers left"
    );
    assert!(
        control_took < Duration::from_secs(1),
        "connect + subscribe + publish took {control_took:?} during the attack"
    );

    // Every attacker is closed by the server, within the header timeout plus slack.
    let mut times = Vec::new();
    let mut failures = Vec::new();
    while let Some(res) = set.join_next().await {
        match res.expect("attacker task") {
            Ok(d) => times.push(d),
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {ATTACKERS} slowloris connections were not closed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let max = times.iter().max().copied().unwrap_or_default();
    let min = times.iter().min().copied().unwrap_or_default();
    assert!(
        max <= Duration::from_millis(4000),
        "slowloris connections must close within header timeout (2 s) + 2 s; slowest {max:?}"
    );
    assert!(
        min >= Duration::from_millis(1500),
        "drips must not be closed long before the header timeout (2 s); fastest {min:?}"
    );

    // The upgraded WebSocket is not subject to the header timeout: past it, it still works.
    tokio::time::sleep_until((ws_connected + Duration::from_millis(2500)).into()).await;
    server.assert_delivers(&ch, &mut [&mut sub]).await;
    eprintln!(
        "slowloris: {ATTACKERS} closed after {:.2}..{:.2} s; control took {control_took:?}; \
         test took {:.1} s",
        secs(min),
        secs(max),
        secs(test_start.elapsed())
    );
}

// ---------------------------------------------------------------------------------------
// 2. Idle connections
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_keep_alive_connections_close_after_the_header_timeout() {
    let test_start = Instant::now();
    let server = TestServer::start_with("[server]\nhttp_header_timeout = 2\n").await;
    let ch = unique("idle-");
    let mut sub = server.subscriber(&ch).await;

    // 20 connects that never send a byte.
    let mut idle = Vec::new();
    for _ in 0..20 {
        let s = TcpStream::connect(server.addr).await.expect("connect");
        idle.push((Instant::now(), s));
    }
    // A keep-alive connection after one complete request.
    let mut ka = TcpStream::connect(server.addr).await.expect("connect");
    get_up(&mut ka).await;
    let ka_idle_since = Instant::now();
    // A keep-alive connection that sends a second request before the timeout: its clock
    // restarts after each response.
    let mut again = TcpStream::connect(server.addr).await.expect("connect");
    get_up(&mut again).await;
    let again_first = Instant::now();

    // At half the timeout, every one of them is still open.
    tokio::time::sleep_until((ka_idle_since + Duration::from_millis(1000)).into()).await;
    let open =
        futures_util::future::join_all(idle.iter_mut().map(|(_, s)| open_and_silent(s))).await;
    for (i, open) in open.iter().enumerate() {
        assert!(
            open,
            "idle connection {i} was closed before half the header timeout"
        );
    }
    assert!(
        open_and_silent(&mut ka).await,
        "keep-alive connection closed before half the header timeout"
    );
    tokio::time::sleep_until((again_first + Duration::from_millis(1200)).into()).await;
    get_up(&mut again).await;
    let again_second = Instant::now();

    // Watch them all close.
    let mut set = JoinSet::new();
    for (i, (opened, mut s)) in idle.into_iter().enumerate() {
        set.spawn(async move {
            let at = closed_by(&mut s, opened + Duration::from_secs(6)).await;
            (format!("idle {i}"), opened, at)
        });
    }
    set.spawn(async move {
        let at = closed_by(&mut ka, ka_idle_since + Duration::from_secs(6)).await;
        ("keep-alive".to_string(), ka_idle_since, at)
    });
    // Past the point where the first response's timer would have fired, the connection
    // with a second request is still open; then it closes on the second timer.
    tokio::time::sleep_until((again_first + Duration::from_millis(2600)).into()).await;
    assert!(
        open_and_silent(&mut again).await,
        "a keep-alive connection was closed {:?} after its second response (timeout 2 s)",
        again_second.elapsed()
    );
    set.spawn(async move {
        let at = closed_by(&mut again, again_second + Duration::from_secs(6)).await;
        ("keep-alive, second request".to_string(), again_second, at)
    });

    let mut report = Vec::new();
    while let Some(res) = set.join_next().await {
        let (what, since, at) = res.expect("watcher task");
        let at = at.unwrap_or_else(|| panic!("{what}: still open 6 s after going idle"));
        let after = at - since;
        assert!(
            after >= Duration::from_millis(1500) && after <= Duration::from_millis(4000),
            "{what}: closed {after:?} after going idle; the header timeout is 2 s"
        );
        report.push(after);
    }

    // Positive control: the subscriber (open for longer than the timeout) still receives.
    server.assert_delivers(&ch, &mut [&mut sub]).await;
    eprintln!(
        "idle: {} connections closed after {:.2}..{:.2} s idle; test took {:.1} s",
        report.len(),
        secs(report.iter().min().copied().unwrap_or_default()),
        secs(report.iter().max().copied().unwrap_or_default()),
        secs(test_start.elapsed())
    );
}

// ---------------------------------------------------------------------------------------
// 3. Pending-connection bound
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_pending_bound_the_oldest_idle_connections_are_closed() {
    let test_start = Instant::now();
    let server = TestServer::start_with(
        "[server]\nhttp_header_timeout = 30\nmax_pending_connections = 50\n",
    )
    .await;
    let ch = unique("pending-");
    let mut conns = Vec::new();
    for _ in 0..120 {
        conns.push(TcpStream::connect(server.addr).await.expect("connect"));
    }

    // A legitimate client is served at once, far within the 30 s header timeout.
    let t = Instant::now();
    let mut sub = tokio::time::timeout(Duration::from_secs(3), server.subscriber(&ch))
        .await
        .expect("WebSocket subscriber served within 3 s");
    server.assert_delivers(&ch, &mut [&mut sub]).await;
    let served_in = t.elapsed();
    assert!(
        served_in < Duration::from_secs(2),
        "connect + subscribe + publish took {served_in:?} with 120 idle connections"
    );

    // 120 idle + 2 legitimate connections over a bound of 50: at least the 70 oldest were
    // closed, promptly (not at the 30 s header timeout).
    let deadline = Instant::now() + Duration::from_secs(2);
    let closed = futures_util::future::join_all(
        conns[..70]
            .iter_mut()
            .map(|s| async move { closed_by(s, deadline).await.is_some() }),
    )
    .await;
    let open: Vec<usize> = closed
        .iter()
        .enumerate()
        .filter(|(_, c)| !**c)
        .map(|(i, _)| i)
        .collect();
    assert!(
        open.is_empty(),
        "the oldest idle connections must be closed past max_pending_connections = 50; \
         still open: {open:?}"
    );
    // The newest ones are still pending (they were not the oldest).
    for (i, s) in conns.iter_mut().enumerate().skip(90) {
        assert!(
            open_and_silent(s).await,
            "idle connection {i} (one of the 30 newest) was closed"
        );
    }
    server.assert_delivers(&ch, &mut [&mut sub]).await;
    eprintln!(
        "pending: legit client served in {served_in:?}; test took {:.1} s",
        secs(test_start.elapsed())
    );
}

// ---------------------------------------------------------------------------------------
// 4. File-descriptor exhaustion
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connects_cannot_exhaust_file_descriptors() {
    let test_start = Instant::now();
    const NOFILE: u64 = 256;
    let mut server = ServerProcess::start_with_nofile(
        "[server]\nmax_pending_connections = 64\nhttp_header_timeout = 30\n",
        NOFILE,
    )
    .await;
    assert_eq!(
        server.nofile_limit(),
        Some((NOFILE, NOFILE)),
        "the server runs under prlimit --nofile={NOFILE}:{NOFILE}"
    );
    let addr = server.addr;
    let ch = unique("fds-");

    // More idle connections than the server has file descriptors.
    let mut idle = Vec::new();
    for i in 0..300 {
        let s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connect {i} timed out"))
            .unwrap_or_else(|e| panic!("connect {i}: {e}"));
        idle.push(s);
    }

    // A legitimate WebSocket client gets pusher:connection_established within a few
    // seconds, far less than the 30 s header timeout; a signed publish reaches it.
    let t = Instant::now();
    let mut sub = tokio::time::timeout(Duration::from_secs(3), server.subscriber(&ch))
        .await
        .expect("WebSocket client established and subscribed within 3 s");
    let established_in = t.elapsed();
    delivers(addr, &mut sub, &ch).await;
    let fds = server.open_fds();

    // The oldest idle connections were closed by the server to make room.
    let deadline = Instant::now() + Duration::from_secs(1);
    let closed = futures_util::future::join_all(
        idle.iter_mut()
            .map(|s| async move { closed_by(s, deadline).await.is_some() }),
    )
    .await
    .iter()
    .filter(|c| **c)
    .count();
    assert!(
        closed >= 300 - 64 - 4,
        "only {closed} of 300 idle connections were closed (max_pending_connections = 64)"
    );
    assert!(
        fds.is_some_and(|n| (n as u64) < NOFILE),
        "server fds {fds:?} of {NOFILE}"
    );
    assert!(server.is_running(), "the server is still running");
    delivers(addr, &mut sub, &ch).await;
    assert!(
        !server.stderr_text().contains("accept failed"),
        "the server ran out of descriptors:\n{}",
        server.stderr_text()
    );
    eprintln!(
        "fds: established in {established_in:?}; {closed} of 300 idle closed; server fds \
         {fds:?}; test took {:.1} s",
        secs(test_start.elapsed())
    );
}

// ---------------------------------------------------------------------------------------
// 5. Bodies: authenticated before read, capped, timed
// ---------------------------------------------------------------------------------------

/// Sends `head` and `body` on a fresh connection (the body from its own task, so a server
/// that answers early does not block the writer) and reads the response. The connection
/// is returned open.
async fn send_and_read(
    addr: SocketAddr,
    head: String,
    body: Vec<u8>,
    limit: Duration,
) -> (Result<RawResponse, String>, Duration, TcpStream) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let t0 = Instant::now();
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(head.as_bytes()).await.expect("write head");
    let writer = tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(10), wr.write_all(&body)).await;
        wr
    });
    let resp = read_response(&mut rd, limit).await;
    let took = t0.elapsed();
    let wr = writer.await.expect("writer task");
    let stream = rd.reunite(wr).expect("halves of one stream");
    (resp, took, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_unauthenticated_partial_bodies_cost_no_memory() {
    let test_start = Instant::now();
    // A server that read the body before checking the signature would wait for it here
    // for 30 s (then 408) and hold up to 433 KB per request.
    let server = ServerProcess::start("[server]\nhttp_body_timeout = 30\n").await;
    let addr = server.addr;
    let pid = server.pid();
    let ch = unique("bodies-");
    let mut sub = server.subscriber(&ch).await;
    delivers(addr, &mut sub, &ch).await;
    let baseline = server.rss_kib();

    let peak = Arc::new(AtomicUsize::new(baseline as usize));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::SeqCst) {
                peak.fetch_max(rss_kib_of(pid) as usize, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    const N: usize = 1000;
    let permits = Arc::new(tokio::sync::Semaphore::new(200));
    let mut set = JoinSet::new();
    for i in 0..N {
        let permits = permits.clone();
        set.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore");
            let path = "/apps/1/events";
            // Half sign with a wrong signature, half send none.
            let mut query = format!(
                "auth_key={KEY}&auth_timestamp={}&auth_version=1.0&body_md5={}",
                now_unix(),
                "0".repeat(32)
            );
            if i % 2 == 0 {
                query.push_str(&format!("&auth_signature={}", "ab".repeat(32)));
            }
            let head = post_head(&format!("{path}?{query}"), 433_000);
            let body = vec![b'x'; 64 * 1024];
            send_and_read(addr, head, body, Duration::from_secs(10)).await
        });
    }
    let mut streams = Vec::new();
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    while let Some(res) = set.join_next().await {
        let (resp, took, stream) = res.expect("attacker task");
        streams.push(stream); // kept open, silent, until the end of the test
        latencies.push(took);
        match resp {
            Ok(r) if r.status == 401 => {
                let msg = r.assert_json_error(401);
                assert!(
                    msg.contains("signature"),
                    "401 should name the signature: {msg}"
                );
            }
            Ok(r) => failures.push(format!("status {}: {}", r.status, r.body)),
            Err(e) => failures.push(e),
        }
    }
    // While every attacking connection is still open on our side: a legitimate publish
    // still reaches the subscriber.
    delivers(addr, &mut sub, &ch).await;
    peak.fetch_max(server.rss_kib() as usize, Ordering::SeqCst);
    sampling.store(false, Ordering::SeqCst);
    sampler.await.expect("sampler");
    let peak = peak.load(Ordering::SeqCst) as u64;

    assert!(
        failures.is_empty(),
        "{} of {N} unauthenticated requests did not get a 401: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let slowest = latencies.iter().max().copied().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(3),
        "every 401 must come without waiting for the body; slowest {slowest:?}"
    );
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < 10 * 1024,
        "server RSS grew {growth} KiB (baseline {baseline} KiB, peak {peak} KiB) for {N} \
         unauthenticated partial bodies"
    );
    assert_eq!(streams.len(), N);
    eprintln!(
        "bodies: {N} x 401, slowest {slowest:?}; RSS baseline {baseline} KiB, peak {peak} KiB \
         (+{growth} KiB); test took {:.1} s",
        secs(test_start.elapsed())
    );
}

/// Sends a POST head announcing 433,000 bytes and only 64 KiB of them: the server must answer
/// `status` within 2 s, without waiting for the rest. Returns the error message.
async fn refused_before_the_body(
    server: &TestServer,
    path: &str,
    query: &str,
    status: u16,
) -> String {
    let head = post_head(&format!("{path}?{query}"), 433_000);
    let (resp, took, _socket) = send_and_read(
        server.addr,
        head,
        vec![b'x'; 64 * 1024],
        Duration::from_secs(5),
    )
    .await;
    let msg = resp
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .assert_json_error(status);
    assert!(took < Duration::from_secs(2), "{status} took {took:?}");
    msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_app_and_bad_signature_are_answered_before_the_body() {
    let server = TestServer::start_with("[server]\nhttp_body_timeout = 30\n").await;
    let ch = unique("early-");
    let mut sub = server.subscriber(&ch).await;
    let md5 = "0".repeat(32);

    // Unknown app id: 404 without reading the (never completed) body.
    let path = "/apps/999/events";
    let query = signed_query("POST", path, Some(&md5), now_unix());
    let msg = refused_before_the_body(&server, path, &query, 404).await;
    assert!(msg.contains("999"), "{msg}");

    // Known app, signature for another body_md5: 401 without reading the body.
    let path = "/apps/1/events";
    let query = signed_query("POST", path, Some(&md5), now_unix()).replace(&md5, &"1".repeat(32));
    let msg = refused_before_the_body(&server, path, &query, 401).await;
    assert!(msg.contains("signature"), "{msg}");

    server.assert_delivers(&ch, &mut [&mut sub]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_body_that_drips_gets_408_after_the_body_timeout() {
    let server = TestServer::start_with("[server]\nhttp_body_timeout = 2\n").await;
    let ch = unique("drip-");
    let mut sub = server.subscriber(&ch).await;
    let body = json!({"name": "dripped", "channel": ch, "data": "x".repeat(200)})
        .to_string()
        .into_bytes();
    let head = signed_events_head(&body);

    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("head");
    s.write_all(&body[..10]).await.expect("first bytes");
    let t0 = Instant::now();
    let mut rest = body[10..].iter();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut next_drip = tokio::time::Instant::now() + Duration::from_millis(500);
    let resp = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(8),
            "no reply 8 s into a dripping body (body timeout 2 s); got {:?}",
            String::from_utf8_lossy(&buf)
        );
        tokio::select! {
            read = s.read(&mut chunk) => match read {
                Ok(0) | Err(_) => panic!(
                    "closed without a reply after {:?}; got {:?}",
                    t0.elapsed(),
                    String::from_utf8_lossy(&buf)
                ),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(r) = parse_response(&buf) {
                        break r;
                    }
                }
            },
            _ = tokio::time::sleep_until(next_drip) => {
                next_drip += Duration::from_millis(500);
                if let Some(b) = rest.next() {
                    s.write_all(&[*b]).await.expect("drip");
                }
            }
        }
    };
    let took = t0.elapsed();
    let msg = resp.assert_json_error(408);
    assert!(msg.contains("2 s"), "{msg}");
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(4),
        "408 came after {took:?}; the body timeout is 2 s"
    );
    // The event was not published; the next thing the subscriber gets is a fresh one.
    server.assert_delivers(&ch, &mut [&mut sub]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_without_signed_md5_is_401_and_over_the_cap_is_413() {
    let server = TestServer::start().await;
    let ch = unique("cap-");
    let mut sub = server.subscriber(&ch).await;
    let api = server.api();

    // A signed request with a body but no body_md5 in the query: 401.
    let body = json!({"name": "unsigned-body", "channel": ch, "data": "x"}).to_string();
    let signing = Signing {
        body_md5: support::Md5::Omit,
        ..Signing::default()
    };
    let r = api
        .request("POST", &api.path("events"), &[], body.as_bytes(), signing)
        .await;
    let msg = r.assert_error(401);
    assert!(msg.contains("body_md5"), "{msg}");

    // The same without body_md5, raw, on a route with an empty-body contract (GET).
    let path = "/apps/1/channels";
    let query = signed_query("GET", path, None, now_unix());
    let req =
        format!("GET {path}?{query} HTTP/1.1\r\nHost: pushi\r\nContent-Length: 5\r\n\r\nhello");
    let msg = roundtrip(server.addr, req.as_bytes())
        .await
        .assert_json_error(401);
    assert!(msg.contains("body_md5"), "{msg}");

    // A correctly signed body over the /events cap (10 KiB * 6 + 24 KiB = 86016 bytes): 413
    // once the cap is passed.
    let big = vec![b' '; 200_000];
    let head = signed_events_head(&big);
    let (resp, took, _s) = send_and_read(server.addr, head, big, Duration::from_secs(5)).await;
    let msg = resp
        .unwrap_or_else(|e| panic!("over the cap: {e}"))
        .assert_json_error(413);
    assert!(msg.contains("86016"), "{msg}");
    assert!(took < Duration::from_secs(3), "413 took {took:?}");

    // Positive control: a signed body within the cap is accepted.
    server.assert_delivers(&ch, &mut [&mut sub]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_the_limit_gets_431() {
    let server = TestServer::start_with("[server]\nmax_request_head_kb = 16\n").await;
    let big = format!(
        "GET /up HTTP/1.1\r\nHost: pushi\r\nX-Big: {}\r\n\r\n",
        "a".repeat(24 * 1024)
    );
    let (resp, _, _s) = send_and_read(server.addr, big, Vec::new(), Duration::from_secs(5)).await;
    let resp = resp.unwrap_or_else(|e| panic!("oversized head: {e}"));
    assert_eq!(resp.status, 431, "{resp:?}");

    // Positive control: a head under the limit (12 KiB) is served.
    let fine = format!(
        "GET /up HTTP/1.1\r\nHost: pushi\r\nX-Big: {}\r\n\r\n",
        "a".repeat(12 * 1024)
    );
    let resp = roundtrip(server.addr, fine.as_bytes()).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let ch = unique("head-");
    let mut sub = server.subscriber(&ch).await;
    server.assert_delivers(&ch, &mut [&mut sub]).await;
}

// ---------------------------------------------------------------------------------------
// 6. Shutdown with half-received requests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_half_received_requests() {
    let test_start = Instant::now();
    let mut server = ServerProcess::start(
        "[server]\nhttp_header_timeout = 30\nhttp_body_timeout = 30\nshutdown_timeout = 5\n",
    )
    .await;
    let addr = server.addr;
    let ch = unique("shutdown-");
    let mut sub = server.subscriber(&ch).await;

    // 25 partial heads.
    let mut heads = Vec::new();
    for _ in 0..25 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"POST /apps/1/events?auth_key=app-key HTTP/1.1\r\nHost: pu")
            .await
            .expect("partial head");
        heads.push(s);
    }
    // 25 correctly signed requests with half of their body.
    let mut bodies = Vec::new();
    for _ in 0..25 {
        let body = json!({"name": "half", "channel": ch, "data": "y".repeat(1000)})
            .to_string()
            .into_bytes();
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(signed_events_head(&body).as_bytes())
            .await
            .expect("head");
        s.write_all(&body[..body.len() / 2])
            .await
            .expect("half body");
        bodies.push(s);
    }
    // The server has taken all of them in: it answers a publish made after them.
    delivers(addr, &mut sub, &ch).await;

    let mut set = JoinSet::new();
    for (i, mut s) in heads.into_iter().enumerate() {
        set.spawn(async move {
            let at = closed_by(&mut s, Instant::now() + Duration::from_secs(8)).await;
            (
                format!("partial head {i}"),
                at.ok_or("still open 8 s after SIGTERM"),
            )
        });
    }
    for (i, mut s) in bodies.into_iter().enumerate() {
        set.spawn(async move {
            let got = match read_response(&mut s, Duration::from_secs(8)).await {
                Ok(r) if r.status == 503 => {
                    r.assert_json_error(503);
                    Ok(Instant::now())
                }
                Ok(_) => Err("not a 503"),
                Err(_) => Err("no response within 8 s of SIGTERM"),
            };
            (format!("partial body {i}"), got)
        });
    }

    let t0 = Instant::now();
    server.terminate();
    sub.expect_fatal(4200).await;
    let ws_closed = Instant::now();
    let status = server
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("still running 10 s after SIGTERM"));
    let exited = Instant::now();
    let total = exited - t0;
    let after_ws = exited - ws_closed;

    let mut problems = Vec::new();
    while let Some(res) = set.join_next().await {
        let (what, got) = res.expect("watcher task");
        match got {
            Ok(at) if at - t0 <= Duration::from_millis(2500) => {}
            Ok(at) => problems.push(format!(
                "{what}: answered/closed {:?} after SIGTERM",
                at - t0
            )),
            Err(e) => problems.push(format!("{what}: {e}")),
        }
    }
    let stderr = server.stderr_text();
    let summary = format!(
        "exit {status} {total:?} after SIGTERM ({after_ws:?} after the WebSocket's 4200); \
         {} of 50 half-received connections not answered/closed within 2.5 s: {:#?}\n\
         stderr:\n{stderr}",
        problems.len(),
        &problems[..problems.len().min(4)]
    );
    assert!(status.success(), "{summary}");
    assert!(
        !stderr.contains("shutdown timed out"),
        "shutdown waited for half-received requests: {summary}"
    );
    assert!(total < Duration::from_millis(2500), "{summary}");
    assert!(problems.is_empty(), "{summary}");
    eprintln!(
        "shutdown: exited {total:?} after SIGTERM, {after_ws:?} after the WebSocket's 4200; \
         test took {:.1} s",
        secs(test_start.elapsed())
    );
}

// ---------------------------------------------------------------------------------------
// 7. Malformed WebSocket handshakes
// ---------------------------------------------------------------------------------------

/// An upgrade request to app 1 with the given method, version, key and WebSocket version.
fn handshake(method: &str, http: &str, key: Option<&str>, ws_version: Option<&str>) -> String {
    let mut req = format!(
        "{method} /app/{KEY}?protocol=7&client=js&version=8.6.0 {http}\r\nHost: pushi\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\n"
    );
    if let Some(k) = key {
        req.push_str(&format!("Sec-WebSocket-Key: {k}\r\n"));
    }
    if let Some(v) = ws_version {
        req.push_str(&format!("Sec-WebSocket-Version: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_handshakes_get_a_json_400() {
    let server = TestServer::start().await;
    const GOOD_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    let cases = [
        (
            "POST upgrade",
            handshake("POST", "HTTP/1.1", Some(GOOD_KEY), Some("13")),
        ),
        (
            "HTTP/1.0",
            handshake("GET", "HTTP/1.0", Some(GOOD_KEY), Some("13")),
        ),
        (
            "missing key",
            handshake("GET", "HTTP/1.1", None, Some("13")),
        ),
        (
            "short key",
            handshake("GET", "HTTP/1.1", Some("AAAAAAAAAAA="), Some("13")),
        ),
        (
            "non-base64 key",
            handshake(
                "GET",
                "HTTP/1.1",
                Some("!!!!!!!!!!!!!!!!!!!!!!=="),
                Some("13"),
            ),
        ),
        (
            "empty key",
            handshake("GET", "HTTP/1.1", Some(""), Some("13")),
        ),
        (
            "version 8",
            handshake("GET", "HTTP/1.1", Some(GOOD_KEY), Some("8")),
        ),
        (
            "no version",
            handshake("GET", "HTTP/1.1", Some(GOOD_KEY), None),
        ),
    ];
    for (what, req) in &cases {
        let resp = roundtrip(server.addr, req.as_bytes()).await;
        assert_eq!(resp.status, 400, "{what}: {resp:?}");
        let msg = resp.assert_json_error(400);
        assert!(msg.contains("handshake"), "{what}: {msg}");
        assert_eq!(
            resp.header("content-type").as_deref(),
            Some("application/json"),
            "{what}: {resp:?}"
        );
    }
    assert_eq!(
        server.connection_count("1"),
        0,
        "no session may start from a refused handshake"
    );

    // Positive control: the same request done right upgrades, with the RFC 6455 accept key.
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    s.write_all(handshake("GET", "HTTP/1.1", Some(GOOD_KEY), Some("13")).as_bytes())
        .await
        .expect("write");
    let resp = read_response(&mut s, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("good handshake: {e}"));
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(
        resp.header("sec-websocket-accept").as_deref(),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{resp:?}"
    );
    let ch = unique("handshake-");
    let mut sub = server.subscriber(&ch).await;
    server.assert_delivers(&ch, &mut [&mut sub]).await;
}

// ---------------------------------------------------------------------------------------
// 8. Metrics on their own listener
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn metrics_are_served_only_on_the_metrics_listener() {
    let config = pushi::config::from_toml(&support::config_text("")).expect("config");
    let server = pushi::Server::bind(config).await.expect("bind");
    let addr = server.local_addr();
    let metrics = server
        .metrics_addr()
        .expect("metrics are enabled by default");
    assert_ne!(addr, metrics);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));

    let public = roundtrip(addr, b"GET /metrics HTTP/1.1\r\nHost: pushi\r\n\r\n").await;
    public.assert_json_error(404);
    let up = roundtrip(addr, b"GET /up HTTP/1.1\r\nHost: pushi\r\n\r\n").await;
    assert_eq!(up.status, 200, "{up:?}");

    // Positive control: one WebSocket connection, counted on the metrics listener.
    let url = format!("ws://{addr}/app/{KEY}?protocol=7&client=js&version=8.6.0");
    let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("WebSocket connects");
    let mut client = Client {
        ws,
        socket_id: String::new(),
        key: KEY.into(),
        secret: SECRET.into(),
    };
    client.established().await;
    let private = roundtrip(metrics, b"GET /metrics HTTP/1.1\r\nHost: pushi\r\n\r\n").await;
    assert_eq!(private.status, 200, "{private:?}");
    assert!(
        private.body.lines().any(|l| l == "pushi_connections 1"),
        "metrics body: {}",
        private.body
    );
    client.close().await;
    let _ = tx.send(());
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("server stops")
        .expect("no panic");
}

// ---------------------------------------------------------------------------------------
// 9. Timestamps that would overflow
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn far_off_timestamps_are_expired_without_overflow() {
    let server = TestServer::start().await;
    let ch = unique("ts-");
    let mut sub = server.subscriber(&ch).await;
    let api = server.api();
    let body = json!({"name": "never", "channel": ch, "data": "x"}).to_string();
    for ts in [
        i64::MIN + now_unix(),
        i64::MIN,
        i64::MAX,
        now_unix() + 601,
        now_unix() - 601,
    ] {
        let signing = Signing {
            timestamp: Some(ts.to_string()),
            ..Signing::default()
        };
        let r = api
            .request("POST", &api.path("events"), &[], body.as_bytes(), signing)
            .await;
        let msg = r.assert_error(401);
        assert!(msg.contains("Timestamp expired"), "timestamp {ts}: {msg}");
    }
    // Positive control: the server still runs, nothing was published, a fresh event arrives.
    server.assert_delivers(&ch, &mut [&mut sub]).await;
}
