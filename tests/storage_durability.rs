//! The embedded store under the real binary: what a 200 acknowledged survives `kill -9`;
//! ids keep increasing across restarts; a full disk answers 503 and loses nothing already
//! acknowledged while live traffic goes on; a `data_dir` that cannot be used, a corrupt or
//! foreign file, or a store in use by another process stops startup with an error naming it.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use support::process::ServerProcess;
use support::{config_text, unique};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(&format!(
        "pushi-durability-{}-{name}-",
        std::process::id()
    )));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn events(server: &ServerProcess, user: &str) -> Vec<Value> {
    let r = server
        .api()
        .get(&format!("users/{user}/events"), &[("limit", "100")])
        .await;
    r.ok()["events"].as_array().unwrap().clone()
}

async fn subscribe(server: &ServerProcess, user: &str, channel: &str) {
    let r = server
        .api()
        .post("subscribe", &json!({"user_id": user, "event": channel}))
        .await;
    assert_eq!(r.ok(), &json!({}));
}

/// Publishes `e0`..`e{n-1}` on `news` concurrently (they share commits); each answered 200.
async fn publish_concurrently(server: &ServerProcess, n: usize) {
    let api = server.api();
    let mut tasks = Vec::new();
    for i in 0..n {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            api.publish("news", &format!("e{i}"), "x").await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// After a restart: `reader` holds exactly `e0`..`e{n-1}` (every acknowledged publish of
/// [`publish_concurrently`]) with distinct ids, its subscription survived, and ids go on
/// increasing.
async fn all_survived(server: &ServerProcess, n: usize) {
    let stored = events(server, "reader").await;
    let mut names: Vec<String> = stored
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    let mut want: Vec<String> = (0..n).map(|i| format!("e{i}")).collect();
    want.sort();
    assert_eq!(names, want, "every acknowledged event is there");
    let ids: Vec<u64> = stored.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "distinct, newest first"
    );
    server.api().publish("news", "later", "x").await;
    let after = events(server, "reader").await;
    assert_eq!(after[0]["event"], "later");
    assert!(after[0]["id"].as_u64().unwrap() > ids[0]);
}

/// Runs the binary on `text` in `workdir`, expecting it to exit non-zero before listening;
/// returns its stderr.
fn failed_start(text: &str, workdir: &Path) -> String {
    let config = workdir.join("pushi.toml");
    std::fs::write(&config, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pushi"))
        .arg("--config")
        .arg(&config)
        .current_dir(workdir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run pushi");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "pushi started:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9() {
    let dir = scratch("kill");
    let mut server = ServerProcess::start_in(config_text(""), &dir).await;
    subscribe(&server, "reader", "news").await;
    publish_concurrently(&server, 40).await;
    server.kill9();

    let server = ServerProcess::start_in(config_text(""), &dir).await;
    all_survived(&server, 40).await;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9_with_mongodb() {
    // SecantusDB on disk, syncing every commit; pushi is killed, the database is not.
    let mongo = support::mongo::MongoServer::start_on_disk();
    let text = config_text(&format!(
        "[mongodb]\nuri = \"{}\"\ndatabase = \"durability\"\n",
        mongo.uri()
    ));
    let dir = scratch("kill-mongo");
    let mut server = ServerProcess::start_in(text.clone(), &dir).await;
    wait_ready(&server).await;
    subscribe(&server, "reader", "news").await;
    publish_concurrently(&server, 40).await;
    server.kill9();

    let server = ServerProcess::start_in(text, &dir).await;
    wait_ready(&server).await;
    all_survived(&server, 40).await;
    assert!(
        !dir.join("pushi-data").exists(),
        "with [mongodb], nothing is stored on local disk"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits (bounded) until `/ready` answers 200.
async fn wait_ready(server: &ServerProcess) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = reqwest::get(server.http_url("/ready")).await.unwrap();
        if r.status().as_u16() == 200 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not ready: {}\n{}",
            r.text().await.unwrap_or_default(),
            server.stderr_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_loses_nothing_and_live_traffic_goes_on() {
    let dir = scratch("full");
    // The store's file may not grow past 1 MiB; each event is ~10 KB.
    let server = ServerProcess::start_in_with_fsize(config_text(""), &dir, 1 << 20).await;
    subscribe(&server, "reader", "big").await;
    let api = server.api();
    let data = "d".repeat(10_000);
    let mut acknowledged = Vec::new();
    let mut refusal = None;
    for i in 0..400 {
        let name = format!("e{i}");
        let r = api
            .post(
                "events",
                &json!({"name": name, "channel": "big", "data": data}),
            )
            .await;
        match r.status {
            200 => acknowledged.push(name),
            _ => {
                refusal = Some((name, r));
                break;
            }
        }
    }
    let (refused, reply) = refusal.expect("the file size limit is reached");
    let msg = reply.assert_error(503);
    assert!(
        msg.contains("File too large") || msg.contains("No space") || msg.contains("storage"),
        "{msg}"
    );
    assert!(
        acknowledged.len() > 10,
        "{} stored first",
        acknowledged.len()
    );
    // Live traffic (channels nobody is offline-subscribed to) goes on.
    let mut live = server.subscriber("live").await;
    api.publish("live", "still", "here").await;
    assert_eq!(live.recv_json().await["event"], "still");
    // And the outage is reported, once.
    let ready = reqwest::get(server.http_url("/ready")).await.unwrap();
    assert_eq!(
        ready.status().as_u16(),
        200,
        "live traffic keeps the node ready"
    );
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["storage"]["state"], "degraded", "{ready}");
    assert!(ready["storage"]["error"].is_string(), "{ready}");
    server.logged("store failed", 1, support::TIMEOUT).await;
    assert_eq!(
        server.stderr_text().matches("store failed").count(),
        1,
        "{}",
        server.stderr_text()
    );
    // The store reopens by itself: a write that fits in the space the failed commit left is
    // taken (and then reported as a recovery); one that does not is refused again.
    let r = api
        .post(
            "events",
            &json!({"name": "again", "channel": "big", "data": data}),
        )
        .await;
    match r.status {
        200 => {
            acknowledged.push("again".into());
            server.logged("store recovered", 1, support::TIMEOUT).await;
        }
        _ => drop(r.assert_error(503)),
    }
    assert!(!server.stderr_text().contains("panicked"));
    drop(server);

    // Without the limit: everything acknowledged is there, the refused events are not.
    let server = ServerProcess::start_in(config_text(""), &dir).await;
    let stored = events(&server, "reader").await;
    let names: Vec<&str> = stored
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = acknowledged
        .iter()
        .rev()
        .take(100)
        .map(String::as_str)
        .collect();
    assert_eq!(names, want);
    assert!(!names.contains(&refused.as_str()));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unusable_data_dirs_stop_startup_with_an_error_naming_them() {
    // A data_dir below a regular file cannot be created (root included).
    let dir = scratch("notdir");
    std::fs::write(dir.join("file"), "x").unwrap();
    let text = config_text("[storage]\ndata_dir = \"file/data\"\n");
    let err = failed_start(&text, &dir);
    assert!(err.contains("storage.data_dir file/data"), "{err}");
    assert!(err.contains("cannot create"), "{err}");

    // Garbage where the store should be.
    let dir = scratch("garbage");
    std::fs::create_dir_all(dir.join("pushi-data")).unwrap();
    let garbage: Vec<u8> = (0..100_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(dir.join("pushi-data/pushi.redb"), garbage).unwrap();
    let err = failed_start(&config_text(""), &dir);
    assert!(err.contains("pushi.redb"), "{err}");

    // A redb database that is not a pushi store.
    let dir = scratch("foreign");
    std::fs::create_dir_all(dir.join("pushi-data")).unwrap();
    {
        let db = redb::Database::create(dir.join("pushi-data/pushi.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("someone");
            txn.open_table(def).unwrap().insert("x", 1).unwrap();
        }
        txn.commit().unwrap();
    }
    let err = failed_start(&config_text(""), &dir);
    assert!(err.contains("not a pushi store"), "{err}");

    // A store whose file was damaged after pushi wrote it.
    let dir = scratch("damaged");
    {
        let storage =
            pushi::storage::embedded::Embedded::open(&dir.join("pushi-data"), 1000).expect("open");
        drop(storage);
    }
    let path = dir.join("pushi-data/pushi.redb");
    let deadline = std::time::Instant::now() + support::TIMEOUT;
    // The writer thread lets go of the file when it sees its queue closed.
    while redb::Database::open(&path).is_err() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    for b in &mut bytes[len / 2..len / 2 + 4096.min(len / 2)] {
        *b ^= 0xa5;
    }
    std::fs::write(&path, bytes).unwrap();
    let err = failed_start(&config_text(""), &dir);
    assert!(err.contains("pushi.redb"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_in_use_by_another_pushi_is_refused() {
    let dir = scratch("twice");
    let first = ServerProcess::start_in(config_text(""), &dir).await;
    let err = failed_start(&config_text(""), &dir);
    assert!(err.contains("another process"), "{err}");
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mongodb_outage_answers_503_for_stored_publishes_and_recovers_by_itself() {
    let mut mongo = support::mongo::MongoServer::start_on_disk();
    let text = config_text(&format!(
        "[mongodb]\nuri = \"{}\"\ndatabase = \"outage\"\nserver_selection_timeout = 1\n",
        mongo.uri()
    ));
    let server = ServerProcess::start_text(text).await;
    wait_ready(&server).await;
    subscribe(&server, "reader", "news").await;
    let api = server.api();
    api.publish("news", "before", "x").await;
    let mut live = server.subscriber("live").await;

    mongo.stop();
    for name in ["lost-1", "lost-2"] {
        let r = api
            .post(
                "events",
                &json!({"name": name, "channel": "news", "data": "x"}),
            )
            .await;
        let msg = r.assert_error(503);
        assert!(msg.contains("MongoDB"), "{msg}");
    }
    // Live traffic goes on; the node stays ready and says the store is degraded, once.
    api.publish("live", "still", "here").await;
    assert_eq!(live.recv_json().await["event"], "still");
    let ready = reqwest::get(server.http_url("/ready")).await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["storage"]["state"], "degraded", "{ready}");
    assert_eq!(server.stderr_text().matches("store failed").count(), 1);

    mongo.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = api
            .post(
                "events",
                &json!({"name": "after", "channel": "news", "data": "x"}),
            )
            .await;
        if r.status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", r.text);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    server.logged("store recovered", 1, support::TIMEOUT).await;
    let names: Vec<String> = events(&server, "reader")
        .await
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        ["after", "before"],
        "the refused publishes left nothing"
    );
}
