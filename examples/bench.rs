//! A load generator for pushi (or any Pusher-compatible server): opens WebSocket
//! subscribers, publishes through the signed HTTP API at a fixed rate, and reports delivery
//! throughput, end-to-end latency percentiles and (given the server's pid) memory per idle
//! connection.
//!
//! ```sh
//! cargo run --release --example bench -- --addr 127.0.0.1:6001 --connections 2000 \
//!     --channels 20 --rate 1000 --seconds 10 --pid $(pgrep -x pushi)
//! ```
//!
//! With `--subscribe-addrs A,B,C`, subscriber i connects to the i-th address round-robin
//! (the nodes of a cluster) while publishes still enter `--addr`.
//!
//! With `--offline-subscribers N`, N users are offline-subscribed (pushi's
//! `POST /apps/{id}/subscribe`) to every channel first, so each publish is stored.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone)]
struct Args {
    addr: String,
    app_id: String,
    key: String,
    secret: String,
    connections: usize,
    channels: usize,
    rate: u64,
    seconds: u64,
    payload: usize,
    pid: Option<u32>,
    offline: usize,
    subscribe_addrs: Vec<String>,
}

fn parse_args() -> Args {
    let mut a = Args {
        addr: "127.0.0.1:6001".into(),
        app_id: "1".into(),
        key: "app-key".into(),
        secret: "app-secret".into(),
        connections: 1000,
        channels: 10,
        rate: 500,
        seconds: 10,
        payload: 100,
        pid: None,
        offline: 0,
        subscribe_addrs: Vec::new(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--addr" => a.addr = v,
            "--subscribe-addrs" => a.subscribe_addrs = v.split(',').map(str::to_string).collect(),
            "--app-id" => a.app_id = v,
            "--key" => a.key = v,
            "--secret" => a.secret = v,
            "--connections" => a.connections = v.parse().expect("--connections N"),
            "--channels" => a.channels = v.parse().expect("--channels N"),
            "--rate" => a.rate = v.parse().expect("--rate publishes/s"),
            "--seconds" => a.seconds = v.parse().expect("--seconds N"),
            "--payload" => a.payload = v.parse().expect("--payload bytes"),
            "--pid" => a.pid = Some(v.parse().expect("--pid N")),
            "--offline-subscribers" => a.offline = v.parse().expect("--offline-subscribers N"),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

async fn subscriber(
    args: Arc<Args>,
    addr: String,
    channel: String,
    ready: Arc<AtomicU64>,
    latencies: Arc<Mutex<Vec<u64>>>,
    received: Arc<AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
) {
    let url = format!(
        "ws://{addr}/app/{}?protocol=7&client=bench&version=1",
        args.key
    );
    let (mut ws, _) = match tokio_tungstenite::connect_async(&url).await {
        Ok(ws) => ws,
        Err(e) => {
            eprintln!("connect failed: {e}");
            return;
        }
    };
    let _ = ws.next().await; // connection_established
    let sub = serde_json::json!({"event": "pusher:subscribe", "data": {"channel": channel}});
    if ws
        .send(Message::Text(sub.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    let _ = ws.next().await; // subscription_succeeded
    ready.fetch_add(1, Ordering::Relaxed);
    let mut mine = Vec::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: serde_json::Value = match serde_json::from_str(t.as_str()) { Ok(v) => v, Err(_) => continue };
                    if v["event"] == "bench" {
                        let data: serde_json::Value = serde_json::from_str(v["data"].as_str().unwrap_or("{}")).unwrap_or_default();
                        if let Some(sent) = data["t"].as_u64() {
                            mine.push(now_us().saturating_sub(sent));
                        }
                        received.fetch_add(1, Ordering::Relaxed);
                    } else if v["event"] == "pusher:ping" {
                        let _ = ws.send(Message::Text(r#"{"event":"pusher:pong","data":{}}"#.into())).await;
                    }
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
    }
    latencies.lock().expect("latency lock").extend(mine);
}

async fn publish(client: &reqwest::Client, args: &Args, channel: &str, pad: &str) -> bool {
    let data = serde_json::json!({"t": now_us(), "pad": pad}).to_string();
    let body = serde_json::json!({"name": "bench", "channel": channel, "data": data}).to_string();
    signed_post(client, args, "events", body).await
}

/// A POST to `/apps/{id}/{tail}` signed like the Pusher HTTP API; whether it answered 2xx.
async fn signed_post(client: &reqwest::Client, args: &Args, tail: &str, body: String) -> bool {
    let path = format!("/apps/{}/{tail}", args.app_id);
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let md5 = pushi::auth::md5_hex(body.as_bytes());
    let query = format!(
        "auth_key={}&auth_timestamp={ts}&auth_version=1.0&body_md5={md5}",
        args.key
    );
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let sig = pushi::auth::sign(
        &args.secret,
        pushi::auth::request_string("POST", &path, &params).as_bytes(),
    );
    let url = format!("http://{}{path}?{query}&auth_signature={sig}", args.addr);
    match client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
    {
        Ok(r) => r.status().is_success(),
        Err(_) => false,
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let args = Arc::new(parse_args());
    let before = args.pid.and_then(rss_kib);
    let ready = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    let started = Instant::now();
    for i in 0..args.connections {
        let channel = format!("bench-{}", i % args.channels);
        let addr = match args.subscribe_addrs.len() {
            0 => args.addr.clone(),
            n => args.subscribe_addrs[i % n].clone(),
        };
        tasks.push(tokio::spawn(subscriber(
            args.clone(),
            addr,
            channel,
            ready.clone(),
            latencies.clone(),
            received.clone(),
            stop.clone(),
        )));
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    while ready.load(Ordering::Relaxed) < args.connections as u64 {
        if started.elapsed() > Duration::from_secs(120) {
            eprintln!(
                "only {} of {} subscribers ready",
                ready.load(Ordering::Relaxed),
                args.connections
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = args.pid.and_then(rss_kib);
    println!(
        "connections: {} subscribed in {connect_secs:.2} s",
        ready.load(Ordering::Relaxed)
    );
    if let (Some(b), Some(a)) = (before, idle) {
        let per = (a.saturating_sub(b)) as f64 / args.connections as f64;
        println!("server RSS: {b} KiB before, {a} KiB with idle connections = {per:.1} KiB per idle connection");
    }

    let client = reqwest::Client::new();
    if args.offline > 0 {
        let t = Instant::now();
        for c in 0..args.channels {
            for u in 0..args.offline {
                let body = serde_json::json!({"user_id": format!("bench-user-{u}"), "event": format!("bench-{c}")});
                assert!(
                    signed_post(&client, &args, "subscribe", body.to_string()).await,
                    "POST /subscribe failed"
                );
            }
        }
        println!(
            "offline subscribers: {} per channel, subscribed in {:.2} s",
            args.offline,
            t.elapsed().as_secs_f64()
        );
    }
    let pad = "x".repeat(args.payload.saturating_sub(30));
    let total = args.rate * args.seconds;
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let mut ok = 0u64;
    let t0 = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(64));
    let oks = Arc::new(AtomicU64::new(0));
    let round_trips = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let mut pubs = Vec::new();
    for n in 0..total {
        ticker.tick().await;
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        let (client, args, pad, oks) = (client.clone(), args.clone(), pad.clone(), oks.clone());
        let round_trips = round_trips.clone();
        let channel = format!("bench-{}", n as usize % args.channels);
        pubs.push(tokio::spawn(async move {
            let sent = Instant::now();
            if publish(&client, &args, &channel, &pad).await {
                let us = sent.elapsed().as_micros() as u64;
                round_trips.lock().expect("round-trip lock").push(us);
                oks.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        }));
    }
    for p in pubs {
        let _ = p.await;
    }
    ok += oks.load(Ordering::Relaxed);
    let publish_secs = t0.elapsed().as_secs_f64();
    let expected = ok * (args.connections / args.channels) as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total_secs = t0.elapsed().as_secs_f64();
    let peak = args.pid.and_then(rss_kib);
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let mut lat = latencies.lock().expect("latency lock").clone();
    lat.sort_unstable();
    let got = received.load(Ordering::Relaxed);
    println!(
        "publishes: {ok} accepted of {total} in {publish_secs:.2} s ({:.0}/s)",
        ok as f64 / publish_secs
    );
    println!(
        "deliveries: {got} of {expected} expected ({:.0}/s)",
        got as f64 / total_secs
    );
    println!(
        "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0)
    );
    let mut rt = round_trips.lock().expect("round-trip lock").clone();
    rt.sort_unstable();
    println!(
        "publish round trip ms (request to 200): p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        percentile(&rt, 0.5),
        percentile(&rt, 0.9),
        percentile(&rt, 0.99),
        percentile(&rt, 1.0)
    );
    if let Some(p) = peak {
        println!("server RSS under load: {p} KiB");
    }
    if got < expected {
        std::process::exit(1);
    }
}
