//! What an operator sees: `/metrics` over the real metrics listener (what clients and API
//! callers do shows up in the counters, exactly, and gauges follow the registry), and log
//! lines as JSON with `[log] format = "json"`.

mod support;

use serde_json::json;
use std::collections::HashMap;
use support::process::ServerProcess;
use support::{unique, wait_until, TestServer, KEY, TIMEOUT};

/// Every sample of a scrape, keyed by `name{labels}` as printed.
async fn scrape(server: &TestServer) -> HashMap<String, f64> {
    let addr = server.metrics_addr.expect("metrics are on in the fixture");
    let res = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("scrape");
    assert_eq!(res.status(), 200);
    let ctype = res.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let body = res.text().await.expect("body");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("sample line");
            (k.to_string(), v.parse().expect("sample value"))
        })
        .collect()
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn connections_messages_and_api_calls_are_counted() {
    let server = TestServer::start().await;
    let channel = unique("metrics");
    let mut sub = server.subscriber(&channel).await;
    let other = server.connect().await;
    // Refused before admission: counted by code, with no app label.
    let mut stranger = server.connect_raw("/app/no-such-key?protocol=7").await;
    assert!(!stranger.expect_fatal(4001).await.is_empty());

    let before = scrape(&server).await;
    assert_eq!(get(&before, "pushi_connected{app_id=\"1\"}"), 2.0);
    assert_eq!(
        get(&before, "pushi_new_connections_total{app_id=\"1\"}"),
        2.0
    );
    assert_eq!(
        get(&before, "pushi_refused_connections_total{code=\"4001\"}"),
        1.0
    );
    assert!(get(&before, "pushi_subscriptions{app_id=\"1\"}") >= 1.0);

    // One API publish to one subscriber: one message, its frame's bytes, one histogram
    // observation, one 200 call on the events route.
    let reply = server
        .api()
        .post(
            "events",
            &json!({"name": "e", "channel": channel, "data": "{\"n\":1}"}),
        )
        .await;
    reply.ok();
    let got = sub.recv_event("e").await;
    assert_eq!(got["channel"], channel.as_str());
    let text = format!(r#"{{"event":"e","channel":"{channel}","data":"{{\"n\":1}}"}}"#);
    let after = scrape(&server).await;
    let sent = |m: &HashMap<String, f64>| get(m, "pushi_ws_messages_sent_total{app_id=\"1\"}");
    let bytes = |m: &HashMap<String, f64>| get(m, "pushi_socket_transmitted_bytes{app_id=\"1\"}");
    assert_eq!(sent(&after) - sent(&before), 1.0);
    // The frame: a 2-byte header (the text is under 126 bytes) and the text.
    assert_eq!(bytes(&after) - bytes(&before), (2 + text.len()) as f64);
    assert_eq!(get(&after, "pushi_publish_seconds_count"), 1.0);
    assert_eq!(
        get(&after, "pushi_publish_seconds_bucket{le=\"+Inf\"}"),
        1.0
    );
    assert_eq!(
        get(
            &after,
            "pushi_http_calls_received_total{app_id=\"1\",route=\"events\",status=\"200\"}"
        ),
        1.0
    );

    // A call with a bad signature: counted under its route and status.
    let bad = reqwest::get(server.http_url(&format!(
        "/apps/1/channels?auth_key={KEY}&auth_timestamp=1&auth_version=1.0&auth_signature=00"
    )))
    .await
    .expect("request");
    assert_eq!(bad.status(), 401);

    // A client message: counted with its bytes.
    let ping = r#"{"event":"pusher:ping","data":{}}"#;
    let received = |m: &HashMap<String, f64>| {
        (
            get(m, "pushi_ws_messages_received_total{app_id=\"1\"}"),
            get(m, "pushi_socket_received_bytes{app_id=\"1\"}"),
        )
    };
    let (msgs0, bytes0) = received(&after);
    sub.send_text(ping).await;
    sub.recv_event("pusher:pong").await;
    let m = scrape(&server).await;
    assert_eq!(received(&m), (msgs0 + 1.0, bytes0 + ping.len() as f64));
    assert_eq!(
        get(
            &m,
            "pushi_http_calls_received_total{app_id=\"1\",route=\"channels\",status=\"401\"}"
        ),
        1.0
    );

    // The client's own close, then one the server makes (an oversized frame: 1009).
    other.close().await;
    let big = "x".repeat(pushi::session::transport_cap(&server.ctx) + 1);
    sub.send_text(&big).await;
    sub.expect_fatal(1009).await;
    let registry = server.ctx.registry.clone();
    wait_until("both connections gone", TIMEOUT, || {
        registry.connection_count("1") == 0
    })
    .await;
    // A connection's end is counted before it leaves the registry.
    let last = scrape(&server).await;
    assert_eq!(
        get(
            &last,
            "pushi_new_disconnections_total{app_id=\"1\",code=\"client\"}"
        ),
        1.0,
        "{last:?}"
    );
    assert_eq!(
        get(
            &last,
            "pushi_new_disconnections_total{app_id=\"1\",code=\"1009\"}"
        ),
        1.0
    );
    assert_eq!(get(&last, "pushi_connected{app_id=\"1\"}"), 0.0);
    assert_eq!(get(&last, "pushi_connections"), 0.0);
    assert_eq!(
        get(&last, "pushi_queue_full_disconnections_total{app_id=\"1\"}"),
        0.0
    );
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_and_quiet_per_message() {
    let mut server = ServerProcess::start("[log]\nformat = \"json\"\n").await;
    let channel = unique("logs");
    let mut sub = server.subscriber(&channel).await;
    let lines_before = server.stderr_text().lines().count();
    for n in 0..20 {
        server
            .api()
            .post(
                "events",
                &json!({"name": "e", "channel": channel, "data": n.to_string()}),
            )
            .await
            .ok();
        sub.recv_event("e").await;
    }
    let text = server.stderr_text();
    // At info, messages leave no trace in the log.
    assert_eq!(text.lines().count(), lines_before, "{text}");
    let mut listening = false;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["timestamp"].is_string(), "{line}");
        let message = v["fields"]["message"].as_str().unwrap_or_default();
        if message.starts_with("pushi listening") {
            listening = true;
            assert_eq!(v["fields"]["addr"], server.addr.to_string().as_str());
        }
    }
    assert!(listening, "no listening line in\n{text}");
    server.terminate();
    server
        .wait_exit(TIMEOUT)
        .await
        .expect("pushi exits on SIGTERM");
}
