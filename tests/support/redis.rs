//! A real Redis for cluster tests: `redis-server` (Debian's package, which `.ci/run` installs)
//! started on a free loopback port without persistence, stopped by PID when dropped (also when
//! the test fails). [`RedisServer::restart`] comes back empty on the same port (a Redis that
//! lost its data); [`RedisServer::pause`]/[`RedisServer::resume`] send SIGSTOP/SIGCONT (a Redis
//! that hangs without closing connections).
//!
//! The binary is `$REDIS_SERVER`, else `redis-server` on the PATH. A missing binary fails the
//! test with the command that installs it; it never skips.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long redis-server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// One redis-server process.
pub(crate) struct RedisServer {
    /// The port it listens on (kept across [`RedisServer::restart`]).
    pub(crate) port: u16,
    child: Option<Child>,
    dir: PathBuf,
}

fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("REDIS_SERVER") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("redis-server"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "redis-server is missing: install it with\n  apt-get install -y redis-server\n\
             (.ci/run does), or set REDIS_SERVER"
        )
    })
}

impl RedisServer {
    /// A fresh server with nothing persisted.
    pub(crate) fn start() -> RedisServer {
        let port = super::process::free_port();
        // The directory names the process for .ci/run's sweep of leftovers.
        let dir = std::env::temp_dir().join(format!("pushi-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the redis directory");
        let mut server = RedisServer {
            port,
            child: None,
            dir,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new(binary())
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            // Keep the command line (with --dir) visible, for .ci/run's sweep.
            .args(["--set-proc-title", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary().display()));
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.try_command(&["PING"]).is_ok_and(|r| r == "+PONG") {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "redis-server exited with {status} before listening on {}",
                    self.port
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on {} within {START_TIMEOUT:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:<port>/`
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The process id (while running).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process (by PID) and waits for it.
    pub(crate) fn stop(&mut self) {
        super::process::kill_and_wait(&mut self.child);
    }

    /// Starts it again on the same port, empty.
    pub(crate) fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// SIGSTOP: connections stay open, nothing is answered.
    pub(crate) fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub(crate) fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let pid = self.pid().expect("redis-server is running");
        let status = Command::new("kill")
            .arg(which)
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {which} {pid}: {status}");
    }

    /// Runs one command over a fresh connection (RESP) and returns the reply's first line
    /// (`+OK`, `$3` then the value for bulk strings, `:1`, `-ERR ...`); panics on I/O errors.
    pub(crate) fn command(&self, args: &[&str]) -> String {
        self.try_command(args)
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    /// [`RedisServer::command`], with I/O errors (and a 1 s timeout) returned.
    pub(crate) fn try_command(&self, args: &[&str]) -> std::io::Result<String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut request = format!("*{}\r\n", args.len());
        for a in args {
            request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        stream.write_all(request.as_bytes())?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end().to_string();
        // A bulk string: its value follows.
        if let Some(len) = line.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
            let mut value = vec![0; len + 2];
            reader.read_exact(&mut value)?;
            value.truncate(len);
            return Ok(String::from_utf8_lossy(&value).into_owned());
        }
        Ok(line)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            // A paused server would not die of SIGKILL any later, but make sure it runs.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(pid.to_string())
                .status();
        }
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
