//! A cluster survives its failures without ghosts and without a silent split, with the real
//! binary as nodes and a real Redis:
//! - a node killed with SIGKILL: its presence members leave within `cluster.node_timeout`,
//!   with `member_removed` to the other nodes' subscribers and the webhooks, once;
//! - Redis stopped (and back empty): `/ready` answers 503, new connections get 4100, local
//!   delivery goes on, publishes say they reached this node only; once Redis is back the
//!   nodes re-assert their members and channels and cross-node delivery resumes, with the
//!   outage logged once down and once up;
//! - a hung Redis (SIGSTOP) is detected within the command timeout;
//! - Redis unreachable at startup: retried for `cluster.startup_timeout`, then a clear error.
//!
//! Fails (never skips) when redis-server is missing.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::hooks::{receiver, sorted, HOOK_KEY, HOOK_SECRET};
use support::process::{api_at, connect_app_at, ServerProcess};
use support::redis::RedisServer;
use support::{config_text, unique};

fn cluster_text(redis: &RedisServer, extra_apps: &str) -> String {
    let mut text = config_text(&format!(
        "[cluster]\nredis_url = \"{}\"\nnode_timeout = 3\ncommand_timeout = 1\nstartup_timeout = 5\n",
        redis.url()
    ));
    text.push('\n');
    text.push_str(extra_apps);
    text
}

fn member(user: &str) -> String {
    json!({"user_id": user, "user_info": {"name": user}}).to_string()
}

async fn ready_status(node: &ServerProcess) -> (u16, Value) {
    let r = reqwest::get(node.http_url("/ready")).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The sample lines of `node`'s `/metrics`.
async fn metrics(node: &ServerProcess) -> Vec<String> {
    let url = node.metrics_url.as_deref().expect("metrics on");
    let body = reqwest::get(url).await.unwrap().text().await.unwrap();
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Polls `/ready` until it answers `want` (bounded).
async fn wait_ready(node: &ServerProcess, want: u16, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (status, body) = ready_status(node).await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/ready never answered {want}: {status} {body}\n{}",
            node.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn users(node: &ServerProcess, channel: &str) -> Vec<String> {
    let r = node
        .api()
        .get(&format!("channels/{channel}/users"), &[])
        .await;
    let mut ids: Vec<String> = r.ok()["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_members_leave_within_the_timeout_once() {
    let redis = RedisServer::start();
    let mut hooks = receiver().await;
    let app = format!(
        "[[apps]]\nid = \"17\"\nkey = \"{HOOK_KEY}\"\nsecret = \"{HOOK_SECRET}\"\n\n\
         [[apps.webhooks]]\nurl = \"{}\"\n",
        hooks.url("/hook")
    );
    let text = cluster_text(&redis, &app);
    let survivor = ServerProcess::start_text(text.clone()).await;
    let mut doomed = ServerProcess::start_text(text).await;
    let presence = unique("presence-crash-");
    let public = unique("crash-");

    let mut watcher = connect_app_at(survivor.addr, HOOK_KEY, HOOK_SECRET).await;
    watcher
        .subscribe_presence(&presence, &member("stays"))
        .await;
    let mut victim = connect_app_at(doomed.addr, HOOK_KEY, HOOK_SECRET).await;
    victim.subscribe_presence(&presence, &member("goes")).await;
    victim.subscribe(&public).await;
    watcher.recv_event("pusher_internal:member_added").await;
    assert_eq!(
        hooks.events(4).await,
        sorted(vec![
            json!({"name": "channel_occupied", "channel": presence}),
            json!({"name": "channel_occupied", "channel": public}),
            json!({"name": "member_added", "channel": presence, "user_id": "stays"}),
            json!({"name": "member_added", "channel": presence, "user_id": "goes"}),
        ])
    );
    let api = api_at(survivor.addr, "17", HOOK_KEY, HOOK_SECRET);

    // No goodbye: the node is gone mid-flight.
    let killed_at = Instant::now();
    doomed.kill9();
    let removed = watcher
        .next_within(Duration::from_secs(3 + 2 + 2))
        .await
        .expect("member_removed within node_timeout plus a heartbeat");
    let waited = killed_at.elapsed();
    let support::Incoming::Json(removed) = removed else {
        panic!("expected member_removed, got {removed:?}");
    };
    assert_eq!(
        removed["event"], "pusher_internal:member_removed",
        "{removed}"
    );
    assert_eq!(
        removed["data"]
            .as_str()
            .map(|d| serde_json::from_str::<Value>(d).unwrap()),
        Some(json!({"user_id": "goes"}))
    );
    assert!(
        waited >= Duration::from_secs(2),
        "not before the deadline: {waited:?}"
    );

    let r = api.get(&format!("channels/{presence}/users"), &[]).await;
    assert_eq!(r.ok()["users"], json!([{"id": "stays"}]));
    let r = api
        .get(
            &format!("channels/{presence}"),
            &[("info", "subscription_count,user_count")],
        )
        .await;
    assert_eq!(r.ok()["subscription_count"], 1, "{}", r.text);
    assert_eq!(r.ok()["user_count"], 1, "{}", r.text);
    let r = api.get(&format!("channels/{public}"), &[]).await;
    assert_eq!(r.ok()["occupied"], false, "{}", r.text);
    // The webhooks of the reaped state, once (only one survivor reaps).
    assert_eq!(
        hooks.events(2).await,
        sorted(vec![
            json!({"name": "member_removed", "channel": presence, "user_id": "goes"}),
            json!({"name": "channel_vacated", "channel": public}),
        ])
    );
    hooks.expect_none(Duration::from_millis(1500)).await;
    watcher.expect_nothing(100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_degrades_each_node_and_recovers_by_itself() {
    let mut redis = RedisServer::start();
    let text = cluster_text(&redis, "");
    let a = ServerProcess::start_text(text.clone()).await;
    let b = ServerProcess::start_text(text).await;
    let channel = unique("outage-");
    let presence = unique("presence-outage-");
    let mut on_a = a.subscriber(&channel).await;
    let mut on_b = b.subscriber(&channel).await;
    let mut member_a = a.connect().await;
    member_a.subscribe_presence(&presence, &member("ua")).await;
    let mut member_b = b.connect().await;
    member_b.subscribe_presence(&presence, &member("ub")).await;
    member_a.recv_event("pusher_internal:member_added").await;
    // uc leaves while Redis is away: nobody can announce it then.
    let mut member_c = b.connect().await;
    member_c.subscribe_presence(&presence, &member("uc")).await;
    member_a.recv_event("pusher_internal:member_added").await;
    a.api().publish(&channel, "before", "x").await;
    for c in [&mut on_a, &mut on_b] {
        assert_eq!(c.recv_json().await["event"], "before");
    }

    redis.stop();
    let body = wait_ready(&a, 503, Duration::from_secs(10)).await;
    assert_eq!(body["cluster"]["state"], "disconnected", "{body}");
    assert!(body["cluster"]["error"].is_string(), "{body}");

    // Cut off, a node still delivers to its own sockets, and says the rest did not get it.
    let r = a
        .api()
        .post(
            "events",
            &json!({"name": "local", "channel": channel, "data": "x"}),
        )
        .await;
    let err = r.assert_error(503);
    assert!(err.contains("this node only"), "{err}");
    assert_eq!(on_a.recv_json().await["event"], "local");
    // New connections go elsewhere: 4100, reconnect after a back-off.
    let mut late = support::process::connect_raw_at(a.addr).await;
    let why = late.expect_fatal(4100).await;
    assert!(why.contains("cluster"), "{why}");
    // The same state at /metrics, with the refusal counted.
    let m = metrics(&a).await;
    for line in [
        "pushi_cluster_redis_up 0",
        "pushi_refused_connections_total{code=\"4100\"} 1",
    ] {
        assert!(m.iter().any(|l| l == line), "{line} in {m:?}");
    }
    // Presence needs the cluster's members: refused with 503; the connection stays.
    let other = unique("presence-x-");
    let data = member("ua");
    let auth = member_a.auth_for(&other, Some(&data));
    member_a.send_subscribe(&other, &auth, Some(&data)).await;
    member_a.expect_subscription_error(&other, 503).await;
    member_c.close().await;

    // Redis comes back empty: both nodes re-assert what they hold.
    redis.restart();
    wait_ready(&a, 200, Duration::from_secs(15)).await;
    wait_ready(&b, 200, Duration::from_secs(15)).await;
    assert!(metrics(&a)
        .await
        .iter()
        .any(|l| l == "pushi_cluster_redis_up 1"));
    a.logged("cluster: cut off from Redis", 1, Duration::from_secs(1))
        .await;
    a.logged("cluster: rejoined", 1, Duration::from_secs(1))
        .await;
    assert_eq!(
        a.stderr_text()
            .matches("cluster: cut off from Redis")
            .count(),
        1,
        "the outage is logged once:\n{}",
        a.stderr_text()
    );
    assert_eq!(users(&a, &presence).await, ["ua", "ub"]);
    let r = b
        .api()
        .get(
            &format!("channels/{channel}"),
            &[("info", "subscription_count")],
        )
        .await;
    assert_eq!(r.ok()["subscription_count"], 2, "{}", r.text);
    // Cross-node delivery resumes, without the clients doing anything.
    b.api().publish(&channel, "after", "y").await;
    for c in [&mut on_a, &mut on_b] {
        assert_eq!(c.recv_json().await["event"], "after");
    }
    // And membership is live again across nodes. Redis lost the members: the client was
    // sent them afresh (subscription_succeeded) and/or as re-added (member_added); either
    // way its list ends right (no uc ghost), and ub's departure reaches it.
    drop(member_b);
    let mut view: BTreeSet<String> = ["ua", "ub", "uc"].map(String::from).into();
    loop {
        let f = member_a.recv_json().await;
        assert_eq!(f["channel"], presence.as_str(), "{f}");
        let data: Value = serde_json::from_str(f["data"].as_str().unwrap()).unwrap();
        match f["event"].as_str().unwrap() {
            "pusher_internal:subscription_succeeded" => {
                view = data["presence"]["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect();
            }
            "pusher_internal:member_added" => {
                view.insert(data["user_id"].as_str().unwrap().to_string());
            }
            "pusher_internal:member_removed" => {
                view.remove(data["user_id"].as_str().unwrap());
                break;
            }
            other => panic!("unexpected {other}: {f}"),
        }
    }
    assert_eq!(view, BTreeSet::from(["ua".to_string()]));
    member_a.expect_nothing(300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_is_noticed_and_forgotten_when_it_answers_again() {
    let redis = RedisServer::start();
    let text = cluster_text(&redis, "");
    let a = ServerProcess::start_text(text.clone()).await;
    let b = ServerProcess::start_text(text).await;
    let channel = unique("hang-");
    let mut on_b = b.subscriber(&channel).await;
    redis.pause();
    // Nothing is closed: only the command timeout (1 s) and the heartbeat can tell.
    wait_ready(&a, 503, Duration::from_secs(10)).await;
    redis.resume();
    wait_ready(&a, 200, Duration::from_secs(15)).await;
    wait_ready(&b, 200, Duration::from_secs(15)).await;
    a.api().publish(&channel, "again", "z").await;
    assert_eq!(on_b.recv_json().await["event"], "again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_at_startup_is_retried_then_a_clear_error() {
    let port = support::process::free_port();
    let text = config_text(&format!(
        "[cluster]\nredis_url = \"redis://127.0.0.1:{port}\"\nnode_timeout = 3\n\
         command_timeout = 1\nstartup_timeout = 2\n"
    ));
    let dir = std::env::temp_dir().join(unique(&format!("pushi-cluster-{}-", std::process::id())));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("pushi.toml");
    std::fs::write(&config, &text).unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_pushi"))
        .arg("--config")
        .arg(&config)
        .current_dir(&dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run pushi");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "pushi ran without its cluster:\n{stderr}"
    );
    assert!(
        stderr.contains("could not reach Redis") && stderr.contains("cluster.startup_timeout"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("pushi listening"),
        "never serves alone:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        took >= Duration::from_secs(1),
        "retried for a while: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "bounded: {took:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
