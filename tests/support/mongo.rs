//! A MongoDB-wire server for tests: SecantusDB (`secantusd-py`, from PyPI), started on a
//! free port and stopped by PID when dropped (also when the test fails). It advertises a
//! single-node replica set, so change streams work (never pass `--standalone`).
//!
//! The binary is `$SECANTUSD`, else `.venv-mongo/bin/secantusd-py` in the repository (what
//! `.ci/run` installs). A missing binary fails the test with the command that installs it.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long SecantusDB may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One SecantusDB process.
pub(crate) struct MongoServer {
    /// The port it listens on (kept across [`MongoServer::restart`]).
    pub(crate) port: u16,
    storage: String,
    child: Option<Child>,
    dir: Option<PathBuf>,
}

fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SECANTUSD") {
        return PathBuf::from(path);
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-mongo/bin/secantusd-py");
    assert!(
        path.is_file(),
        "SecantusDB is missing ({}): install it with\n  python3 -m venv .venv-mongo && \
         .venv-mongo/bin/pip install SecantusDB==0.7.0b3\n(.ci/run does), or set SECANTUSD",
        path.display()
    );
    path
}

impl MongoServer {
    /// An in-memory server (gone when stopped).
    pub(crate) fn start() -> MongoServer {
        MongoServer::launch(":memory:".into(), None)
    }

    /// A server keeping its data in a fresh directory, so that it survives a restart.
    pub(crate) fn start_on_disk() -> MongoServer {
        let dir = std::env::temp_dir().join(format!(
            "pushi-secantus-{}-{}",
            std::process::id(),
            super::process::free_port()
        ));
        std::fs::create_dir_all(&dir).expect("create the storage directory");
        MongoServer::launch(dir.display().to_string(), Some(dir))
    }

    fn launch(storage: String, dir: Option<PathBuf>) -> MongoServer {
        let mut server = MongoServer {
            port: super::process::free_port(),
            storage,
            child: None,
            dir,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(binary());
        cmd.args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--storage-path", &self.storage, "--log-level", "WARNING"]);
        if self.dir.is_some() {
            // What was acknowledged must survive the kill in the outage test.
            cmd.arg("--sync-on-commit");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary().display()));
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("SecantusDB exited with {status} before listening on {addr}");
            }
            assert!(
                Instant::now() < deadline,
                "SecantusDB did not listen on {addr} within {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The connection string for the official driver.
    pub(crate) fn uri(&self) -> String {
        format!(
            "mongodb://127.0.0.1:{}/?directConnection=true&serverSelectionTimeoutMS=2000",
            self.port
        )
    }

    /// Kills the process (by PID) and waits for it.
    pub(crate) fn stop(&mut self) {
        super::process::kill_and_wait(&mut self.child);
    }

    /// Starts it again on the same port and storage.
    pub(crate) fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// A client of the official driver, for writes made behind pushi's back.
    pub(crate) async fn client(&self) -> mongodb::Client {
        mongodb::Client::with_uri_str(self.uri())
            .await
            .expect("a driver client")
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
