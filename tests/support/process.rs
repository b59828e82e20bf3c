//! The real `pushi` binary as a child process: for tests that measure its memory, send it
//! signals, or must see a panic message on its stderr.
//!
//! [`ServerProcess::start`] writes the fixture (with overrides, see [`super::config_text`]) to
//! a temporary file, runs `pushi --config <file>` with `RUST_LOG=info` and `NO_COLOR=1`, and
//! reads the bound address from the "pushi listening" log line (`addr=127.0.0.1:PORT`). A
//! background thread drains the child's stderr into a shared buffer for the whole run, so the
//! pipe never fills and [`ServerProcess::stderr_text`] shows everything logged so far. Every
//! wait is bounded. Dropping the value kills the child and removes the config file.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Api, Client, APP_ID, KEY, SECRET, TIMEOUT};

/// How long the child may take to log its address.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// How often bounded waits poll.
const POLL: Duration = Duration::from_millis(10);

/// A running `pushi` binary.
pub(crate) struct ServerProcess {
    /// The address it listens on (WebSocket and HTTP).
    pub(crate) addr: SocketAddr,
    /// `GET /metrics` as the log names it (`metrics=<url>`); the main address when the log
    /// names none (servers that serve it there); None when it is `off`.
    pub(crate) metrics_url: Option<String>,
    child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
    config: PathBuf,
    /// The child's working directory (so the default `storage.data_dir` is its own).
    workdir: PathBuf,
    /// Whether the working directory is removed on drop.
    owns_workdir: bool,
}

impl ServerProcess {
    /// Starts the binary on the fixture with `overrides` (TOML, as for
    /// [`super::TestServer::start_with`]) and waits (bounded) until it logs its address.
    pub(crate) async fn start(overrides: &str) -> ServerProcess {
        ServerProcess::start_text(super::config_text(overrides)).await
    }

    /// Starts the binary on this exact config text.
    pub(crate) async fn start_text(text: String) -> ServerProcess {
        ServerProcess::spawn(text, None, None).await
    }

    /// Starts the binary on `text` in `workdir` (kept on drop), so that a second process
    /// finds the first one's stored data.
    pub(crate) async fn start_in(text: String, workdir: &std::path::Path) -> ServerProcess {
        ServerProcess::spawn(text, None, Some(workdir.to_path_buf())).await
    }

    /// Kills the child with SIGKILL and waits for it (no shutdown of any kind).
    pub(crate) fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The child's working directory.
    pub(crate) fn workdir(&self) -> &std::path::Path {
        &self.workdir
    }

    /// Starts the binary on `text`, through `prlimit <limit> --` when `prlimit` is set,
    /// and waits (bounded) until it logs its address.
    async fn spawn(
        text: String,
        prlimit: Option<String>,
        workdir: Option<PathBuf>,
    ) -> ServerProcess {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let config =
            std::env::temp_dir().join(format!("pushi-test-{}-{n}.toml", std::process::id()));
        let owns_workdir = workdir.is_none();
        let workdir = workdir.unwrap_or_else(|| {
            std::env::temp_dir().join(format!("pushi-test-{}-{n}.d", std::process::id()))
        });
        std::fs::create_dir_all(&workdir)
            .unwrap_or_else(|e| panic!("create {}: {e}", workdir.display()));
        std::fs::write(&config, &text)
            .unwrap_or_else(|e| panic!("write {}: {e}", config.display()));

        let mut cmd = match &prlimit {
            None => Command::new(env!("CARGO_BIN_EXE_pushi")),
            Some(limit) => {
                let mut prlimit = Command::new("prlimit");
                prlimit
                    .arg(limit)
                    .arg("--")
                    .arg(env!("CARGO_BIN_EXE_pushi"));
                prlimit
            }
        };
        cmd.arg("--config")
            .arg(&config)
            .current_dir(&workdir)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Config keys from the test's own environment must not leak into the child.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PUSHI_") {
                cmd.env_remove(&name);
            }
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "spawn {} (prlimit: {prlimit:?}): {e}",
                env!("CARGO_BIN_EXE_pushi")
            )
        });

        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut pipe = child.stderr.take().expect("stderr is piped");
        let sink = stderr.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend_from_slice(&buf[..n]),
                }
            }
        });

        let mut server = ServerProcess {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_url: None,
            child,
            stderr,
            reader: Some(reader),
            config,
            workdir,
            owns_workdir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let stderr = server.stderr_text();
            if let Some(addr) = listening_addr(&stderr) {
                server.addr = addr;
                server.metrics_url = match listening_field(&stderr, "metrics") {
                    None => Some(format!("http://{addr}/metrics")),
                    Some(url) if url.starts_with("http") => Some(url),
                    Some(_) => None,
                };
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                server.join_reader(Duration::from_secs(1)).await;
                panic!(
                    "pushi exited with {status} before listening; stderr:\n{}\nconfig:\n{text}",
                    server.stderr_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "pushi did not log its address within {START_TIMEOUT:?}; stderr:\n{}",
                server.stderr_text()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The child's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size (`VmRSS` of `/proc/<pid>/status`) in KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in {path}:\n{status}"))
    }

    /// Everything the child wrote to stderr so far (lossy UTF-8).
    pub(crate) fn stderr_text(&self) -> String {
        let buf = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Whether the child is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Polls (bounded by `limit`) until `what` shows in the log `times` times.
    pub(crate) async fn logged(&self, what: &str, times: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.stderr_text().matches(what).count() < times {
            assert!(
                Instant::now() < deadline,
                "log never said {what:?} ({times}x):\n{}",
                self.stderr_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The config file the process was started with (tests rewrite it before a SIGHUP).
    pub(crate) fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    /// Sends SIGHUP (through `kill -HUP <pid>`): the server re-reads its `[[apps]]`.
    pub(crate) fn hangup(&self) {
        let status = Command::new("kill")
            .arg("-HUP")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill -HUP");
        assert!(
            status.success(),
            "kill -HUP {} failed: {status}",
            self.pid()
        );
    }

    /// Sends SIGTERM (through `kill -TERM <pid>`).
    pub(crate) fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill -TERM");
        assert!(
            status.success(),
            "kill -TERM {} failed: {status}",
            self.pid()
        );
    }

    /// Waits up to `limit` for the child to exit; its exit status, or None if it still runs.
    /// After an exit, stderr is read to its end (bounded) so [`Self::stderr_text`] is complete.
    pub(crate) async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.join_reader(Duration::from_secs(2)).await;
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
                Ok(None) => return None,
                Err(e) => panic!("waiting for pushi: {e}"),
            }
        }
    }

    /// `ws://addr{path_and_query}`
    pub(crate) fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.addr, path_and_query)
    }

    /// `http://addr{path_and_query}`
    pub(crate) fn http_url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// Signed HTTP API client for app 1.
    pub(crate) fn api(&self) -> Api {
        api_at(self.addr, APP_ID, KEY, SECRET)
    }

    /// Connects to app 1 (protocol 7) and reads `pusher:connection_established`.
    pub(crate) async fn connect(&self) -> Client {
        connect_at(self.addr).await
    }

    /// Connects to app 1 and subscribes to the public `channel`.
    pub(crate) async fn subscriber(&self, channel: &str) -> Client {
        let mut c = self.connect().await;
        c.subscribe(channel).await;
        c
    }

    /// Waits (bounded) for the stderr reader to reach the end of the pipe.
    async fn join_reader(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.reader.as_ref().is_some_and(|r| !r.is_finished()) && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        if self.reader.as_ref().is_some_and(|r| r.is_finished()) {
            let _ = self.reader.take().map(JoinHandle::join);
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
        if self.owns_workdir {
            let _ = std::fs::remove_dir_all(&self.workdir);
        }
        // The pipe is closed once the child is gone, so the reader ends promptly.
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// A loopback port nobody listens on now.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Kills a helper process (SIGKILL, by PID) and waits for it; nothing when it is not running.
pub(crate) fn kill_and_wait(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A signed HTTP API client for app `app_id` of the server at `addr`.
pub(crate) fn api_at(addr: SocketAddr, app_id: &str, key: &str, secret: &str) -> Api {
    Api {
        base: format!("http://{addr}"),
        app_id: app_id.to_string(),
        key: key.to_string(),
        secret: secret.to_string(),
        http: reqwest::Client::new(),
    }
}

/// Publishes `name`/`data` on `channel` of app 1 at `addr` through the signed HTTP API;
/// asserts 200 `{}`.
pub(crate) async fn publish_at(addr: SocketAddr, channel: &str, name: &str, data: &str) {
    api_at(addr, APP_ID, KEY, SECRET)
        .publish(channel, name, data)
        .await;
}

/// Connects to app 1 at `addr` (protocol 7) and reads `pusher:connection_established`.
pub(crate) async fn connect_at(addr: SocketAddr) -> Client {
    connect_app_at(addr, KEY, SECRET).await
}

/// Opens a WebSocket to app 1 at `addr` and reads nothing (for refusals).
pub(crate) async fn connect_raw_at(addr: SocketAddr) -> Client {
    let url = format!("ws://{addr}/app/{KEY}?protocol=7&client=js&version=8.6.0");
    let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url.as_str()))
        .await
        .unwrap_or_else(|_| panic!("connect to {url} timed out"))
        .unwrap_or_else(|e| panic!("connect to {url} failed: {e}"));
    Client {
        ws,
        socket_id: String::new(),
        key: KEY.to_string(),
        secret: SECRET.to_string(),
    }
}

/// Connects to the app `key` (whose secret is `secret`) at `addr` and reads
/// `pusher:connection_established`.
pub(crate) async fn connect_app_at(addr: SocketAddr, key: &str, secret: &str) -> Client {
    let url = format!("ws://{addr}/app/{key}?protocol=7&client=js&version=8.6.0");
    let (ws, resp) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url.as_str()))
        .await
        .unwrap_or_else(|_| panic!("connect to {url} timed out"))
        .unwrap_or_else(|e| panic!("connect to {url} failed: {e}"));
    assert_eq!(resp.status().as_u16(), 101, "upgrade status for {url}");
    let mut c = Client {
        ws,
        socket_id: String::new(),
        key: key.to_string(),
        secret: secret.to_string(),
    };
    c.established().await;
    c
}

/// The `addr=` field of the "pushi listening" line.
pub(crate) fn listening_addr(stderr: &str) -> Option<SocketAddr> {
    listening_field(stderr, "addr")?.parse().ok()
}

/// Field `name` (`name=value`, a value without spaces) of the "pushi listening" line, ANSI
/// colour codes ignored.
pub(crate) fn listening_field(stderr: &str, name: &str) -> Option<String> {
    let line = stderr.lines().find(|l| l.contains("pushi listening"))?;
    // `[log] format = "json"`: the fields are an object.
    if let Ok(serde_json::Value::Object(obj)) = serde_json::from_str(line) {
        return obj.get("fields")?.get(name)?.as_str().map(str::to_string);
    }
    let plain = strip_ansi(line);
    let prefix = format!("{name}=");
    plain
        .split_whitespace()
        .find_map(|w| w.strip_prefix(prefix.as_str()))
        .map(str::to_string)
}

/// `text` without `ESC [ ... <letter>` sequences.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Added for tests/http_hardening.rs: the binary under a file-descriptor limit.
// ---------------------------------------------------------------------------------------

impl ServerProcess {
    /// Starts the binary on the fixture with `overrides` (as [`ServerProcess::start`]), run
    /// through `prlimit --nofile=N:N --` (util-linux), so that its soft and hard limits on
    /// open files are both `nofile`. prlimit sets the limit on itself and then execs the
    /// binary, so [`ServerProcess::pid`] is the server's own pid.
    pub(crate) async fn start_with_nofile(overrides: &str, nofile: u64) -> ServerProcess {
        ServerProcess::start_text_with_nofile(super::config_text(overrides), nofile).await
    }

    /// [`ServerProcess::start_text`] under `prlimit --nofile=N:N`.
    pub(crate) async fn start_text_with_nofile(text: String, nofile: u64) -> ServerProcess {
        ServerProcess::spawn(text, Some(format!("--nofile={nofile}:{nofile}")), None).await
    }

    /// [`ServerProcess::start_in`] under `prlimit --fsize=N:N`: files the server writes
    /// cannot grow past `bytes` (writes past it fail with EFBIG, as on a full disk).
    pub(crate) async fn start_in_with_fsize(
        text: String,
        workdir: &std::path::Path,
        bytes: u64,
    ) -> ServerProcess {
        let limit = format!("--fsize={bytes}:{bytes}");
        ServerProcess::spawn(text, Some(limit), Some(workdir.to_path_buf())).await
    }

    /// The child's (soft, hard) limit on open files, from `/proc/<pid>/limits`.
    pub(crate) fn nofile_limit(&self) -> Option<(u64, u64)> {
        let text = std::fs::read_to_string(format!("/proc/{}/limits", self.pid())).ok()?;
        let line = text.lines().find(|l| l.starts_with("Max open files"))?;
        let mut nums = line
            .trim_start_matches("Max open files")
            .split_whitespace()
            .map(|w| w.parse::<u64>().ok());
        Some((nums.next()??, nums.next()??))
    }

    /// Open file descriptors of the child (entries of `/proc/<pid>/fd`).
    pub(crate) fn open_fds(&self) -> Option<usize> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .ok()
            .map(|d| d.count())
    }
}
