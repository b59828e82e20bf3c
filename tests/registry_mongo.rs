//! The MongoDB app registry, end to end: the real `pushi` binary (server and `pushi apps`)
//! against SecantusDB, a MongoDB-wire server, through the official driver over TCP.
//!
//! CLI CRUD and exit codes; a created app connects; a rotated secret refuses old signatures
//! within 2 s while live sockets stay; disable closes live sockets with 4003, delete with
//! 4001; invalid documents keep the last good version; the server keeps serving through a
//! database outage and catches up after it; polling when change streams are off; startup
//! that cannot load the registry, or finds a duplicate with `[[apps]]`, exits non-zero.

mod support;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use serde_json::{json, Value};
use support::mongo::MongoServer;
use support::process::{api_at, ServerProcess};
use support::{config_text, Api, Client, TIMEOUT};

/// Changes must reach a node within this (the registry's promise).
const PROPAGATION: Duration = Duration::from_secs(2);

fn mongo_section(mongo: &MongoServer, db: &str, extra: &str) -> String {
    format!(
        "[mongodb]\nuri = \"{}\"\ndatabase = \"{db}\"\nstartup_timeout = 10\n{extra}",
        mongo.uri()
    )
}

/// The fixture (with its `[[apps]]`) plus a `[mongodb]` section.
fn config_with(mongo: &MongoServer, db: &str, extra: &str) -> String {
    let mut text = config_text(&mongo_section(mongo, db, extra));
    text.push('\n');
    text
}

/// Runs `pushi --config <file> apps <args>`.
fn cli(config: &std::path::Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_pushi"))
        .arg("--config")
        .arg(config)
        .arg("apps")
        .args(args)
        .env_remove("PUSHI_CONFIG")
        .output()
        .expect("run pushi apps");
    out
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs an action with `--json`, asserts exit 0 and returns the JSON printed.
fn cli_json(config: &std::path::Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = cli(config, &all);
    assert_eq!(code(&out), 0, "pushi apps {args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "pushi apps {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Writes `text` to a fresh file for the CLI.
fn config_file(text: &str) -> tempfile_path::Path {
    tempfile_path::Path::new(text)
}

mod tempfile_path {
    /// A config file removed on drop.
    pub(crate) struct Path(std::path::PathBuf);

    impl Path {
        pub(crate) fn new(text: &str) -> Path {
            use std::sync::atomic::{AtomicU64, Ordering};
            static N: AtomicU64 = AtomicU64::new(0);
            let path = std::env::temp_dir().join(format!(
                "pushi-cli-{}-{}.toml",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, text).expect("write the config");
            Path(path)
        }
    }

    impl std::ops::Deref for Path {
        type Target = std::path::Path;
        fn deref(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for Path {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn api_for(server: &ServerProcess, app: &Value, secret: &str) -> Api {
    api_at(
        server.addr,
        app["id"].as_str().unwrap(),
        app["key"].as_str().unwrap(),
        secret,
    )
}

async fn connect_app(server: &ServerProcess, app: &Value) -> Client {
    let key = app["key"].as_str().unwrap();
    let url = server.ws_url(&format!("/app/{key}?protocol=7"));
    let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url.as_str()))
        .await
        .expect("connect in time")
        .expect("connect");
    Client {
        ws,
        socket_id: String::new(),
        key: key.to_string(),
        secret: app["secret"].as_str().unwrap().to_string(),
    }
}

async fn get(server: &ServerProcess, path: &str) -> (u16, Value) {
    let resp = reqwest::get(server.http_url(path)).await.expect("GET");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Polls (bounded by `limit`) until `GET path` answers `status`; returns how long it took.
async fn until_status(
    server: &ServerProcess,
    path: &str,
    status: u16,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let (got, _) = get(server, path).await;
        if got == status {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "GET {path} still {got}, not {status}, after {limit:?}; log:\n{}",
            server.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts pushi on `text` and waits until `/ready` says 200.
async fn ready_server(text: String) -> ServerProcess {
    let server = ServerProcess::start_text(text).await;
    until_status(&server, "/ready", 200, Duration::from_secs(15)).await;
    server
}

fn event(channel: &str, name: &str) -> Value {
    json!({"name": name, "channel": channel, "data": "{}"})
}

#[test]
fn cli_manages_apps_with_exit_codes_scripts_can_trust() {
    let mongo = MongoServer::start();
    let config = config_file(&config_with(&mongo, "cli", ""));

    let app = cli_json(
        &config,
        &["create", "--name", "Shop", "--client-events", "true"],
    );
    let id = app["id"].as_str().unwrap().to_string();
    assert!(
        id.len() == 7 && id.bytes().all(|b| b.is_ascii_digit()),
        "{app}"
    );
    assert_eq!(app["key"].as_str().unwrap().len(), 20);
    assert_eq!(app["secret"].as_str().unwrap().len(), 32);
    assert_eq!(app["name"], "Shop");
    assert_eq!(app["enabled"], true);
    assert_eq!(app["client_events"], true);
    let other = cli_json(&config, &["create", "--name", "Blog"]);
    assert_ne!(other["key"], app["key"]);
    assert_ne!(other["secret"], app["secret"]);

    let list = cli_json(&config, &["list"]);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{list}");
    assert!(ids.contains(&id.as_str()));
    // The text list shows no secrets.
    let text = cli(&config, &["list"]);
    assert_eq!(code(&text), 0);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&id) && text.contains("Shop"), "{text}");
    assert!(!text.contains(app["secret"].as_str().unwrap()), "{text}");

    let updated = cli_json(
        &config,
        &[
            "update",
            &id,
            "--name",
            "Shop 2",
            "--max-connections",
            "50",
            "--webhook",
            "https://hooks.example.com/p channel_occupied,channel_vacated",
            "--allowed-origin",
            "*.example.com",
        ],
    );
    assert_eq!(updated["name"], "Shop 2");
    assert_eq!(updated["max_connections"], 50);
    assert_eq!(updated["client_events"], true, "settings not given stay");
    assert_eq!(
        updated["webhooks"],
        json!([{"url": "https://hooks.example.com/p", "event_types": ["channel_occupied", "channel_vacated"]}])
    );
    assert_eq!(updated["allowed_origins"], json!(["*.example.com"]));
    assert_eq!(updated["secret"], app["secret"]);

    let rotated = cli_json(&config, &["rotate-secret", &id]);
    assert_ne!(rotated["secret"], app["secret"]);
    assert_eq!(
        cli_json(&config, &["show", &id])["secret"],
        rotated["secret"]
    );
    assert_eq!(cli_json(&config, &["disable", &id])["enabled"], false);
    assert_eq!(cli_json(&config, &["enable", &id])["enabled"], true);
    assert_eq!(cli_json(&config, &["delete", &id])["deleted"], true);

    // Unknown ids: 3, with the id named.
    for action in ["show", "delete", "disable", "rotate-secret"] {
        let out = cli(&config, &[action, &id]);
        assert_eq!(code(&out), 3, "{action}: {}", stderr(&out));
        assert!(stderr(&out).contains(&id), "{}", stderr(&out));
    }
    // Unknown settings and invalid values: 2, naming them; nothing is written.
    let other_id = other["id"].as_str().unwrap();
    let refusals: [(&[&str], &str); 3] = [
        (
            &["update", other_id, "--client-event", "true"],
            "--client-event",
        ),
        (
            &["update", other_id, "--webhook", "ftp://x"],
            "webhooks[0].url",
        ),
        (&["create", "--name", "x", "--max-connections", "-1"], "-1"),
    ];
    for (args, named) in refusals {
        let out = cli(&config, args);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(named), "{args:?}: {}", stderr(&out));
        // The refused update read the whole app: its secret must not be in the message.
        assert!(!stderr(&out).contains(other["secret"].as_str().unwrap()));
    }
    assert_eq!(cli_json(&config, &["list"]).as_array().unwrap().len(), 1);

    // Without [mongodb]: 4, naming the config file.
    let plain = config_file(&config_text(""));
    let out = cli(&plain, &["list"]);
    assert_eq!(code(&out), 4);
    assert!(
        stderr(&out).contains(&plain.display().to_string()),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("[[apps]]"), "{}", stderr(&out));

    // An unreachable registry: 1, with the URI (password redacted).
    let mut gone = MongoServer::start();
    let port = gone.port;
    gone.stop();
    let unreachable = config_file(&config_text(&format!(
        "[mongodb]\nuri = \"mongodb://pushi:hunter2@127.0.0.1:{port}/?directConnection=true\"\nserver_selection_timeout = 1\n"
    )));
    let out = cli(&unreachable, &["list"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("127.0.0.1:{port}")),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("hunter2"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_changes_reach_live_sockets_within_two_seconds() {
    let mongo = MongoServer::start();
    let server = ready_server(config_with(&mongo, "live", "")).await;
    let config = server.config_path().to_path_buf();

    // A created app is served within 2 s and connects.
    let app = cli_json(&config, &["create", "--name", "Live"]);
    let id = app["id"].as_str().unwrap().to_string();
    let took = until_status(&server, &format!("/up/{id}"), 200, PROPAGATION).await;
    eprintln!("create reached the node in {took:?}");
    let mut live = connect_app(&server, &app).await;
    live.established().await;
    live.subscribe_private("private-news").await;
    let old = api_for(&server, &app, app["secret"].as_str().unwrap());
    assert_eq!(
        old.post("events", &event("private-news", "one"))
            .await
            .status,
        200
    );
    assert_eq!(live.recv_json().await["event"], "one");

    // Rotate: old signatures are refused within 2 s (HTTP and channel auth); the live
    // socket stays and gets events published with the new secret.
    let rotated = cli_json(&config, &["rotate-secret", &id]);
    let new = api_for(&server, &app, rotated["secret"].as_str().unwrap());
    let start = Instant::now();
    while old
        .post("events", &event("private-news", "stale"))
        .await
        .status
        != 401
    {
        assert!(start.elapsed() < PROPAGATION, "old secret still accepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("rotation reached the node in {:?}", start.elapsed());
    assert_eq!(
        new.post("events", &event("private-news", "two"))
            .await
            .status,
        200
    );
    // Events published before the rotation took effect may arrive first; "two" must come.
    loop {
        if live.recv_json().await["event"] == "two" {
            break;
        }
    }
    let stale = live.auth_for("private-old", None);
    live.send_subscribe("private-old", &stale, None).await;
    live.expect_subscription_error("private-old", 401).await;
    live.secret = rotated["secret"].as_str().unwrap().to_string();
    live.subscribe_private("private-new").await;

    // Disable: the live socket gets 4003 within 2 s; new connections are refused with 4003.
    cli_json(&config, &["disable", &id]);
    tokio::time::timeout(PROPAGATION + TIMEOUT, live.expect_fatal(4003))
        .await
        .expect("4003 in time");
    let mut refused = connect_app(&server, &app).await;
    refused.expect_fatal(4003).await;
    new.post("events", &event("x", "y")).await.assert_error(403);

    // Enable, reconnect, delete: 4001 and the API's 404.
    cli_json(&config, &["enable", &id]);
    until_status(&server, &format!("/up/{id}"), 200, PROPAGATION).await;
    let mut again = connect_app(&server, &app).await;
    again.secret = rotated["secret"].as_str().unwrap().to_string();
    again.established().await;
    cli_json(&config, &["delete", &id]);
    again.expect_fatal(4001).await;
    new.post("events", &event("x", "y")).await.assert_error(404);

    // The fixture's [[apps]] were never touched.
    let mut witness = support::process::connect_at(server.addr).await;
    witness.subscribe("w").await;
    support::process::publish_at(server.addr, "w", "ok", "{}").await;
    assert_eq!(witness.recv_json().await["event"], "ok");
}

async fn apps_collection(mongo: &MongoServer, db: &str) -> mongodb::Collection<Document> {
    mongo.client().await.database(db).collection("apps")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_document_is_named_and_the_last_good_version_stays() {
    let mongo = MongoServer::start();
    let server = ready_server(config_with(&mongo, "invalid", "")).await;
    let apps = apps_collection(&mongo, "invalid").await;
    apps.insert_one(
        doc! {"id": "4242", "key": "hand-key", "secret": "hand-secret", "name": "by hand"},
    )
    .await
    .unwrap();
    until_status(&server, "/up/4242", 200, PROPAGATION).await;
    let api = api_at(server.addr, "4242", "hand-key", "hand-secret");
    assert_eq!(api.post("events", &event("c", "e")).await.status, 200);

    // A wrong-typed field: logged with the id and the field; the app keeps working.
    apps.update_one(
        doc! {"id": "4242"},
        doc! {"$set": {"enabled": "no", "secret": "other"}},
    )
    .await
    .unwrap();
    server
        .logged(
            "apps document id \"4242\": enabled: expected true or false",
            1,
            PROPAGATION,
        )
        .await;
    assert_eq!(api.post("events", &event("c", "e")).await.status, 200);
    assert!(
        !server.stderr_text().contains("other"),
        "the secret is not logged"
    );

    // A document that takes a key of the config file's apps is refused, naming both.
    apps.insert_one(doc! {"id": "4343", "key": "app-key", "secret": "s"})
        .await
        .unwrap();
    server
        .logged("app key \"app-key\" is claimed twice", 1, PROPAGATION)
        .await;
    let log = server.stderr_text();
    assert!(
        log.contains("config file") && log.contains("MongoDB document id \"4343\""),
        "{log}"
    );
    let (status, _) = get(&server, "/up/4343").await;
    assert_eq!(status, 404);
    support::process::publish_at(server.addr, "w", "ok", "{}").await;

    // A fixed document applies.
    apps.update_one(doc! {"id": "4242"}, doc! {"$set": {"enabled": false}})
        .await
        .unwrap();
    until_status(&server, "/up/4242", 404, PROPAGATION).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_keeps_serving_through_a_database_outage_and_catches_up() {
    let mut mongo = MongoServer::start_on_disk();
    let server = ready_server(config_with(&mongo, "outage", "")).await;
    let config = server.config_path().to_path_buf();
    let app = cli_json(&config, &["create", "--name", "Outage"]);
    let id = app["id"].as_str().unwrap().to_string();
    until_status(&server, &format!("/up/{id}"), 200, PROPAGATION).await;
    let mut live = connect_app(&server, &app).await;
    live.established().await;
    live.subscribe("news").await;

    mongo.stop();
    server
        .logged("app registry unreachable", 1, Duration::from_secs(15))
        .await;
    let (status, ready) = get(&server, "/ready").await;
    assert_eq!(
        status, 200,
        "a node serving its snapshot stays ready: {ready}"
    );
    assert_eq!(ready["registry"]["state"], "degraded", "{ready}");
    // Still serving the app from the snapshot.
    let api = api_for(&server, &app, app["secret"].as_str().unwrap());
    assert_eq!(
        api.post("events", &event("news", "during")).await.status,
        200
    );
    assert_eq!(live.recv_json().await["event"], "during");

    mongo.restart();
    server
        .logged("app registry reachable again", 1, Duration::from_secs(20))
        .await;
    let (_, ready) = get(&server, "/ready").await;
    assert_eq!(ready["registry"]["state"], "ok", "{ready}");
    cli_json(&config, &["disable", &id]);
    tokio::time::timeout(PROPAGATION + TIMEOUT, live.expect_fatal(4003))
        .await
        .expect("the change after the outage reaches the node");
    let log = server.stderr_text();
    assert_eq!(
        log.matches("app registry unreachable").count(),
        1,
        "logged once:\n{log}"
    );
    assert_eq!(
        log.matches("app registry reachable again").count(),
        1,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_change_streams_the_registry_is_polled() {
    let mongo = MongoServer::start();
    let server = ready_server(config_with(
        &mongo,
        "poll",
        "change_stream = false\npoll_interval = 1\n",
    ))
    .await;
    let config = server.config_path().to_path_buf();
    let app = cli_json(&config, &["create", "--name", "Polled"]);
    let id = app["id"].as_str().unwrap().to_string();
    until_status(&server, &format!("/up/{id}"), 200, PROPAGATION).await;
    cli_json(&config, &["delete", &id]);
    until_status(&server, &format!("/up/{id}"), 404, PROPAGATION).await;
}

/// Waits (bounded) for the server to exit; asserts a failure status; returns its log.
async fn failed_exit(server: &mut ServerProcess) -> String {
    let exit = server
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("pushi exits");
    assert!(!exit.success(), "{exit}");
    server.stderr_text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_fails_loudly_when_the_registry_cannot_be_loaded() {
    // Unreachable: /ready is 503 and connections are asked to come back (4100) while pushi
    // retries; then it exits non-zero naming the URI, password redacted.
    let mut gone = MongoServer::start();
    let port = gone.port;
    gone.stop();
    let text = config_text(&format!(
        "[mongodb]\nuri = \"mongodb://pushi:hunter2@127.0.0.1:{port}/?directConnection=true\"\n\
         startup_timeout = 3\nserver_selection_timeout = 1\nconnect_timeout = 1\n"
    ));
    let mut server = ServerProcess::start_text(text).await;
    let (status, ready) = get(&server, "/ready").await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["ready"], false);
    let mut early = connect_app(
        &server,
        &json!({"id": "999", "key": "not-loaded-yet", "secret": "s"}),
    )
    .await;
    early.expect_fatal(4100).await;
    api_at(server.addr, "999", "k", "s")
        .post("events", &event("c", "e"))
        .await
        .assert_error(503);
    // The Python SDK's unprefixed terminate route finds the app by key: not known yet either.
    let url = server.http_url("/users/u1/terminate_connections?auth_key=not-loaded-yet");
    let resp = reqwest::Client::new().post(url).send().await.expect("POST");
    assert_eq!(resp.status().as_u16(), 503);
    let log = failed_exit(&mut server).await;
    assert!(
        log.contains(&format!("127.0.0.1:{port}")) && log.contains("startup_timeout"),
        "{log}"
    );
    assert!(!log.contains("hunter2"), "{log}");

    // A key claimed by both [[apps]] and the registry: exits non-zero naming both.
    let mongo = MongoServer::start();
    apps_collection(&mongo, "dup")
        .await
        .insert_one(doc! {"id": "77", "key": "app-key", "secret": "s"})
        .await
        .unwrap();
    let mut server = ServerProcess::start_text(config_with(&mongo, "dup", "")).await;
    let log = failed_exit(&mut server).await;
    assert!(
        log.contains("app key \"app-key\" is claimed twice"),
        "{log}"
    );
    assert!(
        log.contains("[[apps]] id \"1\" in the config file")
            && log.contains("MongoDB document id \"77\""),
        "{log}"
    );

    // A URI that does not parse: exits non-zero, naming the key.
    let bad = config_file(&config_text("[mongodb]\nuri = \"http://u:hunter2@x\"\n"));
    let out = Command::new(env!("CARGO_BIN_EXE_pushi"))
        .arg("--config")
        .arg(&*bad)
        .output()
        .expect("run pushi");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("mongodb.uri"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("hunter2"), "{}", stderr(&out));
}
