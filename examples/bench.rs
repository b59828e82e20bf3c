//! A load generator for pushi (or any Pusher-compatible server): opens WebSocket
//! subscribers, publishes through the signed HTTP API, and reports the connect + subscribe
//! rate, delivery throughput, end-to-end latency percentiles, the CPU the server and the
//! generator itself used, and (given the server's pid) memory per idle connection.
//!
//! It is built to measure a server that delivers hundreds of thousands of events per second
//! while the generator has one core of its own. Everything runs on one thread (tokio's
//! current_thread runtime); subscribers are minimal WebSocket clients over raw TCP that
//! share one 64 KiB read buffer and find each event's send time by a marker instead of
//! parsing JSON; publishes go over a pool of raw HTTP/1.1 keep-alive connections, one
//! request in flight on each. Pin the server and the generator to different cores:
//!
//! ```sh
//! cargo build --release --example bench
//! taskset -c 0 target/release/pushi --config bench.toml &
//! taskset -c 1 target/release/examples/bench --addr 127.0.0.1:6101 --connections 2000 \
//!     --channels 20 --rate 1000 --seconds 10 --pid $(pgrep -x pushi)
//! ```
//!
//! Flags, with their defaults:
//!
//! - `--addr 127.0.0.1:6001`, `--app-id 1`, `--key app-key`, `--secret app-secret`
//! - `--connections 1000` subscribers, subscriber i on channel `bench-{i % channels}`
//! - `--channels 10`
//! - `--rate 500` publishes/s, spread round-robin over the channels, for `--seconds 10`;
//!   `--rate 0` or `--capacity`: as fast as the publisher pool allows, for `--seconds`
//! - `--payload 100` bytes of event data
//! - `--publishers 32` HTTP connections, one request in flight on each
//! - `--connect-concurrency 200` connections being set up (connect, upgrade, subscribe)
//!   at once
//! - `--pid P` the server's pid: its RSS per idle connection and its CPU time
//! - `--subscribe-addrs A,B,C`: subscriber i connects to the i-th address round-robin (the
//!   nodes of a cluster) while publishes still enter `--addr`
//! - `--offline-subscribers N`: N users are offline-subscribed (pushi's
//!   `POST /apps/{id}/subscribe`) to every channel first, so each publish is stored
//!
//! What it prints: the connect + subscribe rate (first connect to last
//! `subscription_succeeded`); publishes accepted and per second; deliveries received
//! against those the accepted publishes owe, per second over the time they took; end-to-end
//! latency percentiles (publish built to frame read, one monotonic clock, every delivery
//! counted in a histogram) and the same at arrival (to the moment the subscriber's kernel
//! received the frame, by `SO_TIMESTAMPNS`: what the server's side of the latency is, free
//! of the queueing of a generator that reads thousands of sockets on one core); the publish
//! round trip; with `--pid`, RSS and the server's CPU
//! as a share of a core and per delivery; the generator's own CPU the same way. Deliveries
//! count only inside the measured window, which ends when every expected delivery has
//! arrived or 2 s after the last publish was answered. The last line, `RESULT {json}`, has
//! every figure for scripts. The exit status is 1 when deliveries are missing or no publish
//! was accepted.
//!
//! `NOTE: the generator is the limit (…)` appears when the generator used 90 % of its core
//! or published more than 5 % below `--rate` while the server had room (below 90 % of its
//! core, or no `--pid`): its figures are then a floor for the server. A rate short because
//! the server is saturated says `NOTE: the server is the limit (…)` instead.
//! Its cost per delivery depends on how many frames one read returns: about 3 µs when every
//! frame arrives alone (a server that writes each frame on its own cannot go much faster
//! either), well under 1 µs when the server coalesces frames under load.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io::{self, Write};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone)]
struct Args {
    addr: String,
    app_id: String,
    key: String,
    secret: String,
    connections: usize,
    channels: usize,
    /// Publishes per second; 0 = as fast as the publisher pool allows.
    rate: u64,
    seconds: u64,
    payload: usize,
    pid: Option<u32>,
    offline: usize,
    subscribe_addrs: Vec<String>,
    publishers: usize,
    connect_concurrency: usize,
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
        publishers: 32,
        connect_concurrency: 200,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        // The one flag without a value.
        if args[i] == "--capacity" {
            a.rate = 0;
            i += 1;
            continue;
        }
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--addr" => a.addr = v,
            "--subscribe-addrs" => a.subscribe_addrs = v.split(',').map(str::to_string).collect(),
            "--app-id" => a.app_id = v,
            "--key" => a.key = v,
            "--secret" => a.secret = v,
            "--connections" => a.connections = v.parse().expect("--connections N"),
            "--channels" => a.channels = v.parse().expect("--channels N"),
            "--rate" => a.rate = v.parse().expect("--rate publishes/s (0 = capacity)"),
            "--seconds" => a.seconds = v.parse().expect("--seconds N"),
            "--payload" => a.payload = v.parse().expect("--payload bytes"),
            "--pid" => a.pid = Some(v.parse().expect("--pid N")),
            "--offline-subscribers" => a.offline = v.parse().expect("--offline-subscribers N"),
            "--publishers" => a.publishers = v.parse().expect("--publishers N"),
            "--connect-concurrency" => {
                a.connect_concurrency = v.parse().expect("--connect-concurrency N")
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    assert!(a.channels > 0, "--channels must be at least 1");
    assert!(a.publishers > 0, "--publishers must be at least 1");
    assert!(
        a.connect_concurrency > 0,
        "--connect-concurrency must be at least 1"
    );
    a
}

// ---- /proc ----

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime in clock ticks, from `/proc/{who}/stat` (`who` = a pid or `self`).
fn cpu_ticks(who: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{who}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; the fields after its
    // closing parenthesis start at field 3, so utime (14) and stime (15) are the 12th and
    // 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second for `/proc/*/stat`. Without libc there is no sysconf, so ask
/// `getconf`; 100 is what Linux uses nearly everywhere.
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// The host's count of connections dropped because a listener's accept queue was full
/// (`TcpExt: ListenOverflows`): each such SYN is retried by the client after a second,
/// which shows up as a slow connect rate that is the backlog's doing, not the server's
/// speed.
fn listen_overflows() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut tcp_ext = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (tcp_ext.next()?, tcp_ext.next()?);
    let at = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// The CPU the server and the generator have used so far, at one instant.
#[derive(Clone, Copy)]
struct CpuSample {
    at: Instant,
    server: Option<u64>,
    generator: Option<u64>,
}

fn cpu_sample(pid: Option<u32>) -> CpuSample {
    CpuSample {
        at: Instant::now(),
        server: pid.and_then(|p| cpu_ticks(&p.to_string())),
        generator: cpu_ticks("self"),
    }
}

// ---- latency histogram ----

/// Values below 2^SUB_BITS are exact; above, each power of two is cut into
/// 2^(SUB_BITS-1) buckets, so a bucket is at most 0.2 % wide. Bounded memory at any rate
/// and a few instructions per recorded event.
const SUB_BITS: u32 = 10;

struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            counts: vec![0; Self::index(u64::MAX) + 1],
            total: 0,
            max: 0,
        }
    }

    fn index(v: u64) -> usize {
        let bits = 64 - v.leading_zeros();
        if bits <= SUB_BITS {
            v as usize
        } else {
            let shift = bits - SUB_BITS;
            ((shift as usize) << (SUB_BITS - 1)) + (v >> shift) as usize
        }
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> f64 {
        let half = 1usize << (SUB_BITS - 1);
        if i < 2 * half {
            return i as f64;
        }
        let shift = i / half - 1;
        let low = ((i - shift * half) as u64) << shift;
        low as f64 + ((1u64 << shift) as f64 - 1.0) / 2.0
    }

    fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// The p-quantile (nearest rank) in milliseconds of values recorded in microseconds.
    fn percentile_ms(&self, p: f64) -> f64 {
        if self.total == 0 {
            return f64::NAN;
        }
        if p >= 1.0 {
            return self.max as f64 / 1000.0;
        }
        let rank = ((p * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(i).min(self.max as f64) / 1000.0;
            }
        }
        self.max as f64 / 1000.0
    }
}

// ---- shared state (one thread: Cell and RefCell, no atomics or locks) ----

struct Shared {
    /// The epoch of the microsecond timestamps events carry: one monotonic clock for send
    /// and receive.
    start: Instant,
    /// Deliveries count only while this is set (the measured window).
    counting: Cell<bool>,
    deliveries: Cell<u64>,
    last_delivery: Cell<Option<Instant>>,
    latency: RefCell<Histogram>,
    /// Publish to the moment the subscriber's kernel received the frame (see `recv_stamped`).
    wire_latency: RefCell<Histogram>,
    /// `start` on the wall clock, which kernel receive timestamps use.
    start_wall: SystemTime,
    /// Subscribers whose `subscription_succeeded` arrived, per channel.
    subscribed: RefCell<Vec<u64>>,
    ready: Cell<usize>,
    failed: Cell<usize>,
    last_ready: Cell<Option<Instant>>,
    /// Subscribed connections the server closed (or that broke) afterwards.
    lost: Cell<usize>,
    /// Deliveries the accepted publishes owe: the subscribers of each one's channel.
    expected: Cell<u64>,
    errors_shown: Cell<usize>,
}

impl Shared {
    fn micros(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Prints the first few errors only: 10,000 failing connections would drown the report.
    fn error(&self, what: std::fmt::Arguments<'_>) {
        let n = self.errors_shown.get();
        if n < 5 {
            eprintln!("{what}");
        } else if n == 5 {
            eprintln!("(further errors not shown)");
        }
        self.errors_shown.set(n + 1);
    }
}

// ---- raw socket helpers ----

async fn read_some(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    poll_fn(|cx| {
        let mut rb = ReadBuf::new(&mut *buf);
        match Pin::new(&mut *stream).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Asks the kernel to stamp every segment this socket receives with the wall-clock time it
/// arrived (`SO_TIMESTAMPNS`), so latency can be measured up to the subscriber's socket,
/// without the time a busy one-core generator takes to get round to reading it.
fn stamp_arrivals(stream: &TcpStream) -> io::Result<()> {
    setsockopt(stream, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)
}

thread_local! {
    /// Room for one `SCM_TIMESTAMPNS` control message, shared by every read.
    static CMSG: RefCell<Vec<u8>> = RefCell::new(nix::cmsg_space!(nix::sys::time::TimeSpec));
}

/// One `recvmsg` into `buf`: the bytes read and, when the kernel stamped them, when the
/// last of them arrived (TCP reports the newest segment's stamp, so a read holding several
/// frames stamps the earlier ones late, never early).
fn recv_stamped(stream: &TcpStream, buf: &mut [u8]) -> io::Result<(usize, Option<SystemTime>)> {
    use std::os::fd::AsRawFd;
    CMSG.with_borrow_mut(|cmsg| {
        let mut iov = [io::IoSliceMut::new(buf)];
        let msg = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(cmsg), MsgFlags::empty())
            .map_err(io::Error::from)?;
        let mut at = None;
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmTimestampns(ts) = c {
                at = Some(UNIX_EPOCH + Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32));
            }
        }
        Ok((msg.bytes, at))
    })
}

async fn write_all(stream: &mut TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *stream).poll_write(cx, data)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
    }
    Ok(())
}

/// Where `needle` starts in `haystack`. Runs once per delivered frame: skipping to the
/// needle's first byte is several times cheaper than comparing a window at every offset.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(i) = haystack[from..].iter().position(|&b| b == first) {
        let at = from + i;
        if haystack[at + 1..].starts_with(rest) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

// ---- WebSocket subscriber ----

/// What an event's data starts with: `{"ts":<µs since start>,"pad":"xxx"}`. The data is a
/// JSON string inside the frame's JSON, so its quotes arrive escaped; the unescaped form is
/// accepted too, for servers that would deliver data as an object.
const TS_ESCAPED: &[u8] = br#"{\"ts\":"#;
const TS_PLAIN: &[u8] = br#"{"ts":"#;

/// The send time an event carries, or None for any other message. `hint` is where the
/// marker was in the previous event: a channel's events all have the same prefix, so after
/// the first one this is a single comparison instead of a search.
fn event_ts(payload: &[u8], hint: &mut usize) -> Option<u64> {
    let marker = |at: usize| {
        let p = payload.get(at..)?;
        [TS_ESCAPED, TS_PLAIN]
            .into_iter()
            .find(|m| p.starts_with(m))
            .map(|m| at + m.len())
    };
    let at = match marker(*hint) {
        Some(at) => at,
        None => {
            let i = find(payload, TS_ESCAPED).or_else(|| find(payload, TS_PLAIN))?;
            *hint = i;
            marker(i)?
        }
    };
    let digits = payload[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut v = 0u64;
    let mut n = 0;
    for d in digits {
        v = v * 10 + u64::from(d - b'0');
        n += 1;
    }
    (n > 0).then_some(v)
}

/// A client frame: masked, as RFC 6455 requires of clients.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask: [u8; 4] = rand::random();
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Connects and upgrades; returns the stream and whatever followed the 101 response head
/// (the server may send its first frame in the same segment).
async fn ws_connect(addr: &str, key: &str) -> io::Result<(TcpStream, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let ws_key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let request = format!(
        "GET /app/{key}?protocol=7&client=bench&version=1 HTTP/1.1\r\nHost: {addr}\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {ws_key}\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    write_all(&mut stream, request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut buf = vec![0u8; 2048];
    loop {
        let n = read_some(&mut stream, &mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = find(&head, b"\r\n\r\n") {
            if !head.starts_with(b"HTTP/1.1 101") {
                let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
                return Err(other(format!(
                    "upgrade refused: {}",
                    String::from_utf8_lossy(line)
                )));
            }
            return Ok((stream, head.split_off(end + 4)));
        }
        if head.len() > 16 * 1024 {
            return Err(other("upgrade response head too long".into()));
        }
    }
}

thread_local! {
    /// The one read buffer every subscriber reads into, in turn: the runtime has one thread
    /// and a subscriber holds it only between a read and the end of parsing what it got, so
    /// 10,000 connections cost one 64 KiB buffer instead of 10,000.
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_SIZE]);
}

const READ_SIZE: usize = 64 * 1024;

/// One subscriber connection's state between reads.
struct Subscriber {
    channel: usize,
    /// The start of a frame that the last read cut in two.
    carry: Vec<u8>,
    /// A fragmented message being collected (servers rarely fragment, but may).
    fragments: Vec<u8>,
    /// Frames to send back (pongs).
    out: Vec<u8>,
    /// Where the send-time marker was in the last event (see `event_ts`).
    ts_at: usize,
    /// Held until the subscription succeeds, so that at most `--connect-concurrency`
    /// connections are being set up at once.
    permit: Option<OwnedSemaphorePermit>,
    subscribed: bool,
    closed: bool,
}

impl Subscriber {
    /// Walks the complete frames at the front of `data`; returns how many bytes they took.
    fn frames(&mut self, data: &[u8], arrived: Option<SystemTime>, sh: &Shared) -> usize {
        let mut at = 0;
        // One clock read per socket read: the frames in it arrived together.
        let mut now = None;
        let arrived = arrived.and_then(|t| t.duration_since(sh.start_wall).ok());
        while data.len() - at >= 2 {
            let (b0, b1) = (data[at], data[at + 1]);
            let (len, mut head) = match b1 & 0x7f {
                126 if data.len() - at >= 4 => {
                    (u16::from_be_bytes([data[at + 2], data[at + 3]]) as usize, 4)
                }
                127 if data.len() - at >= 10 => {
                    let mut l = [0u8; 8];
                    l.copy_from_slice(&data[at + 2..at + 10]);
                    (u64::from_be_bytes(l) as usize, 10)
                }
                126 | 127 => break,
                l => (l as usize, 2),
            };
            let masked = b1 & 0x80 != 0;
            if masked {
                head += 4;
            }
            let available = data.len() - at;
            if available < head || available - head < len {
                break;
            }
            let payload = &data[at + head..at + head + len];
            at += head + len;
            if masked {
                // Servers must not mask; a server that does is broken, not slow.
                sh.error(format_args!("masked frame from the server; closing"));
                self.closed = true;
                break;
            }
            let fin = b0 & 0x80 != 0;
            match b0 & 0x0f {
                0x1 | 0x2 if fin => self.message(payload, &mut now, arrived, sh),
                0x1 | 0x2 => self.fragments = payload.to_vec(),
                0x0 => {
                    self.fragments.extend_from_slice(payload);
                    if fin {
                        let whole = std::mem::take(&mut self.fragments);
                        self.message(&whole, &mut now, arrived, sh);
                    }
                }
                0x8 => {
                    let code = payload
                        .get(..2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .unwrap_or(1005);
                    let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
                    sh.error(format_args!("server closed a subscriber: {code} {reason}"));
                    self.closed = true;
                    break;
                }
                0x9 => self.out.extend(client_frame(0xA, payload)),
                _ => {}
            }
        }
        at
    }

    fn message(
        &mut self,
        payload: &[u8],
        now: &mut Option<(Instant, u64)>,
        arrived: Option<Duration>,
        sh: &Shared,
    ) {
        // The hot path: a bench event. Found by its timestamp marker, no JSON parsing.
        if let Some(sent) = event_ts(payload, &mut self.ts_at) {
            if sh.counting.get() {
                let (now, us) = *now.get_or_insert_with(|| {
                    let now = Instant::now();
                    (now, (now - sh.start).as_micros() as u64)
                });
                sh.latency.borrow_mut().record(us.saturating_sub(sent));
                if let Some(arrived) = arrived {
                    let arrived = arrived.as_micros() as u64;
                    sh.wire_latency
                        .borrow_mut()
                        .record(arrived.saturating_sub(sent));
                }
                sh.deliveries.set(sh.deliveries.get() + 1);
                sh.last_delivery.set(Some(now));
            }
            return;
        }
        if contains(payload, b"\"pusher:ping\"") {
            self.out
                .extend(client_frame(0x1, br#"{"event":"pusher:pong","data":{}}"#));
        } else if contains(payload, b"\"pusher_internal:subscription_succeeded\"") {
            if !self.subscribed {
                self.subscribed = true;
                self.permit = None;
                sh.ready.set(sh.ready.get() + 1);
                sh.subscribed.borrow_mut()[self.channel] += 1;
                sh.last_ready.set(Some(Instant::now()));
            }
        } else if contains(payload, b"\"pusher:subscription_error\"") {
            // This connection will never be ready: end it so that it counts as failed.
            sh.error(format_args!(
                "subscription refused: {}",
                String::from_utf8_lossy(payload)
            ));
            self.closed = true;
        } else if contains(payload, b"\"pusher:error\"") {
            sh.error(format_args!(
                "server error: {}",
                String::from_utf8_lossy(payload)
            ));
        }
    }

    /// One read into the shared buffer and the frames it completes. Ready(Ok(false)) when
    /// the connection is over.
    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut TcpStream,
        sh: &Shared,
    ) -> Poll<io::Result<bool>> {
        READ_BUF.with_borrow_mut(|buf| {
            let c = self.carry.len();
            if buf.len() < c + READ_SIZE {
                buf.resize(c + READ_SIZE, 0);
            }
            // Read after where the carried bytes will go: they are copied in only when data
            // came, since another subscriber uses the buffer while this one waits.
            let (n, arrived) = loop {
                match stream.poll_read_ready(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                }
                match stream.try_io(Interest::READABLE, || recv_stamped(stream, &mut buf[c..])) {
                    Ok(read) => break read,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            };
            if n == 0 {
                return Poll::Ready(Ok(false));
            }
            buf[..c].copy_from_slice(&self.carry);
            let used = self.frames(&buf[..c + n], arrived, sh);
            self.carry.clear();
            self.carry.extend_from_slice(&buf[used..c + n]);
            Poll::Ready(Ok(!self.closed))
        })
    }
}

async fn subscriber(
    sh: Rc<Shared>,
    addr: String,
    key: Rc<str>,
    channel: usize,
    permit: OwnedSemaphorePermit,
) {
    let (mut stream, first) = match ws_connect(&addr, &key).await {
        Ok(s) => s,
        Err(e) => {
            sh.error(format_args!("connect to {addr} failed: {e}"));
            sh.failed.set(sh.failed.get() + 1);
            return;
        }
    };
    if let Err(e) = stamp_arrivals(&stream) {
        sh.error(format_args!(
            "SO_TIMESTAMPNS refused ({e}): no arrival latency"
        ));
    }
    // Subscribe without waiting for connection_established: it needs no socket id, and the
    // server has it in order after the upgrade either way.
    let sub = format!(r#"{{"event":"pusher:subscribe","data":{{"channel":"bench-{channel}"}}}}"#);
    if let Err(e) = write_all(&mut stream, &client_frame(0x1, sub.as_bytes())).await {
        sh.error(format_args!("subscribe failed: {e}"));
        sh.failed.set(sh.failed.get() + 1);
        return;
    }
    let mut s = Subscriber {
        channel,
        carry: first,
        fragments: Vec::new(),
        out: Vec::new(),
        ts_at: 0,
        permit: Some(permit),
        subscribed: false,
        closed: false,
    };
    // Bytes that came with the 101 are parsed like any later read.
    if !s.carry.is_empty() {
        let first = std::mem::take(&mut s.carry);
        let used = s.frames(&first, None, &sh);
        s.carry = first[used..].to_vec();
    }
    loop {
        let more = match poll_fn(|cx| s.poll_read(cx, &mut stream, &sh)).await {
            Ok(more) => more,
            Err(e) => {
                sh.error(format_args!("subscriber read failed: {e}"));
                false
            }
        };
        if !s.out.is_empty() {
            let out = std::mem::take(&mut s.out);
            if write_all(&mut stream, &out).await.is_err() {
                break;
            }
        }
        if !more || s.closed {
            break;
        }
    }
    if s.subscribed {
        sh.lost.set(sh.lost.get() + 1);
    } else {
        sh.failed.set(sh.failed.get() + 1);
    }
}

// ---- signed HTTP publishing over raw keep-alive connections ----

/// Signs Pusher HTTP API requests: HMAC-SHA256 of "POST\n{path}\n{sorted query}". The
/// keyed MAC is built once and cloned per request.
struct Signer {
    mac: Hmac<Sha256>,
    key: String,
    app_id: String,
    host: String,
}

impl Signer {
    fn new(args: &Args) -> Self {
        Signer {
            mac: Hmac::<Sha256>::new_from_slice(args.secret.as_bytes())
                .expect("HMAC takes any key"),
            key: args.key.clone(),
            app_id: args.app_id.clone(),
            host: args.addr.clone(),
        }
    }

    /// Writes a complete signed `POST /apps/{id}/{tail}` request with `body` into `out`.
    fn request(&self, out: &mut Vec<u8>, tail: &str, body: &[u8]) {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut md5 = [0u8; 32];
        hex::encode_to_slice(Md5::digest(body), &mut md5).expect("32 hex digits");
        let md5 = std::str::from_utf8(&md5).expect("hex is ASCII");
        // The parameters are already in sorted order, as the signature wants them.
        let query = format!(
            "auth_key={}&auth_timestamp={ts}&auth_version=1.0&body_md5={md5}",
            self.key
        );
        let path = format!("/apps/{}/{tail}", self.app_id);
        let mut mac = self.mac.clone();
        mac.update(b"POST\n");
        mac.update(path.as_bytes());
        mac.update(b"\n");
        mac.update(query.as_bytes());
        let mut sig = [0u8; 64];
        hex::encode_to_slice(mac.finalize().into_bytes(), &mut sig).expect("64 hex digits");
        let sig = std::str::from_utf8(&sig).expect("hex is ASCII");
        out.clear();
        write!(
            out,
            "POST {path}?{query}&auth_signature={sig} HTTP/1.1\r\nHost: {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        )
        .expect("writing to a Vec");
        out.extend_from_slice(body);
    }
}

/// One HTTP/1.1 keep-alive connection with one request in flight at a time.
struct HttpConn {
    addr: String,
    stream: Option<TcpStream>,
    request: Vec<u8>,
    response: Vec<u8>,
}

impl HttpConn {
    async fn open(addr: &str) -> io::Result<Self> {
        let mut c = HttpConn {
            addr: addr.to_string(),
            stream: None,
            request: Vec::with_capacity(1024),
            response: Vec::with_capacity(4096),
        };
        c.connect().await?;
        Ok(c)
    }

    async fn connect(&mut self) -> io::Result<()> {
        let stream = TcpStream::connect(&self.addr).await?;
        stream.set_nodelay(true)?;
        self.stream = Some(stream);
        Ok(())
    }

    /// Sends a signed POST and reads the whole response; returns its status. On an I/O
    /// error the connection is dropped and the next call reconnects.
    async fn post(&mut self, signer: &Signer, tail: &str, body: &[u8]) -> io::Result<u16> {
        let reused = self.stream.is_some();
        if !reused {
            self.connect().await?;
        }
        signer.request(&mut self.request, tail, body);
        let mut result = self.round_trip().await;
        // A kept-alive connection the server closed while it was idle (its keep-alive
        // timeout, during a long setup) fails before any answer: once more on a new one.
        if reused && matches!(&result, Err(e) if is_closed(e)) {
            self.connect().await?;
            result = self.round_trip().await;
        }
        if !matches!(result, Ok((_, true))) {
            self.stream = None;
        }
        result.map(|(status, _)| status)
    }

    /// Returns the status and whether the connection may be reused.
    async fn round_trip(&mut self) -> io::Result<(u16, bool)> {
        let stream = self.stream.as_mut().expect("connected");
        write_all(stream, &self.request).await?;
        self.response.clear();
        let mut filled = 0;
        loop {
            if let Some(done) = parse_response(&self.response[..filled])? {
                return Ok(done);
            }
            if self.response.len() < filled + 4096 {
                self.response.resize(filled + 4096, 0);
            }
            let n = read_some(stream, &mut self.response[filled..]).await?;
            if n == 0 && filled == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if n == 0 {
                return Err(other(
                    "connection closed in the middle of a response".into(),
                ));
            }
            filled += n;
        }
    }
}

fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

/// A complete response's status and keep-alive, or None while more bytes are needed.
fn parse_response(data: &[u8]) -> io::Result<Option<(u16, bool)>> {
    let Some(end) = find(data, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&data[..end]).map_err(|_| other("response head".into()))?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| other(format!("bad status line in {head:?}")))?;
    let (mut length, mut chunked, mut keep) = (0usize, false, true);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().map_err(|_| other("content-length".into()))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            keep = !value.eq_ignore_ascii_case("close");
        }
    }
    let body = &data[end + 4..];
    let complete = if chunked {
        // Enough for the short answers the API gives: the body ends with the last chunk.
        body.ends_with(b"0\r\n\r\n")
    } else {
        body.len() >= length
    };
    Ok(complete.then_some((status, keep)))
}

/// The publishers' shared schedule and tallies.
struct Publishing {
    t0: Instant,
    rate: u64,
    /// Fixed rate: rate × seconds publishes. Capacity: none, publish until `deadline`.
    total: Option<u64>,
    deadline: Instant,
    next: Cell<u64>,
    ok: Cell<u64>,
    refused: Cell<u64>,
    failed: Cell<u64>,
    last_answer: Cell<Instant>,
    round_trip: RefCell<Histogram>,
}

/// Builds a publish body whose event data is `payload` bytes where possible:
/// `{"ts":<µs>,"pad":"xxx"}`, sent as a JSON string (so its quotes are escaped here).
fn event_body(out: &mut Vec<u8>, channel: usize, ts: u64, payload: usize) {
    out.clear();
    write!(
        out,
        r#"{{"name":"bench","channel":"bench-{channel}","data":"{{\"ts\":{ts},\"pad\":\""#
    )
    .expect("writing to a Vec");
    let digits = ts.checked_ilog10().unwrap_or(0) as usize + 1;
    // `{"ts":` + digits + `,"pad":"` + pad + `"}`, counted unescaped.
    let pad = payload.saturating_sub(6 + digits + 8 + 2);
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(br#"\"}"}"#);
}

async fn publisher(
    sh: Rc<Shared>,
    p: Rc<Publishing>,
    signer: Rc<Signer>,
    mut conn: HttpConn,
    payload: usize,
) {
    let mut body = Vec::with_capacity(256);
    let channels = sh.subscribed.borrow().len();
    loop {
        let n = p.next.get();
        match p.total {
            Some(total) if n >= total => break,
            None if Instant::now() >= p.deadline => break,
            _ => {}
        }
        p.next.set(n + 1);
        if p.rate > 0 {
            let due = p.t0 + Duration::from_secs_f64(n as f64 / p.rate as f64);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let channel = n as usize % channels;
        let sent = Instant::now();
        event_body(&mut body, channel, sh.micros(), payload);
        match conn.post(&signer, "events", &body).await {
            Ok(status) if (200..300).contains(&status) => {
                let answered = Instant::now();
                p.ok.set(p.ok.get() + 1);
                p.last_answer.set(answered);
                p.round_trip
                    .borrow_mut()
                    .record((answered - sent).as_micros() as u64);
                sh.expected
                    .set(sh.expected.get() + sh.subscribed.borrow()[channel]);
            }
            Ok(status) => {
                p.refused.set(p.refused.get() + 1);
                sh.error(format_args!("publish answered {status}"));
            }
            Err(e) => {
                p.failed.set(p.failed.get() + 1);
                sh.error(format_args!("publish failed: {e}"));
            }
        }
    }
}

// ---- the run ----

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "n/a".into(),
    }
}

/// Rounds for the RESULT line: 0.001 of a ms or a percent is below any noise.
fn round3(v: f64) -> Option<f64> {
    v.is_finite().then(|| (v * 1000.0).round() / 1000.0)
}

/// Opens and subscribes every subscriber, at most `--connect-concurrency` in setup at once;
/// returns the time from the first connect to the last `subscription_succeeded`.
async fn connect_all(sh: &Rc<Shared>, args: &Args) -> f64 {
    let key: Rc<str> = args.key.as_str().into();
    let setup = Arc::new(Semaphore::new(args.connect_concurrency));
    let connect_start = Instant::now();
    let give_up = connect_start + Duration::from_secs(120);
    for i in 0..args.connections {
        let permit =
            match tokio::time::timeout_at(give_up.into(), setup.clone().acquire_owned()).await {
                Ok(p) => p.expect("semaphore open"),
                Err(_) => break,
            };
        let addr = match args.subscribe_addrs.len() {
            0 => args.addr.clone(),
            n => args.subscribe_addrs[i % n].clone(),
        };
        let (sh, key) = (sh.clone(), key.clone());
        tokio::task::spawn_local(subscriber(sh, addr, key, i % args.channels, permit));
    }
    while sh.ready.get() + sh.failed.get() < args.connections && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if sh.ready.get() < args.connections {
        eprintln!(
            "only {} of {} subscribers ready ({} failed)",
            sh.ready.get(),
            args.connections,
            sh.failed.get()
        );
    }
    sh.last_ready
        .get()
        .map(|t| (t - connect_start).as_secs_f64())
        .unwrap_or(f64::NAN)
}

/// Offline-subscribes `--offline-subscribers` users to every channel, over the pool.
async fn offline_subscribe(pool: Vec<HttpConn>, signer: &Rc<Signer>, args: &Args) -> Vec<HttpConn> {
    let t = Instant::now();
    let jobs = Rc::new(Cell::new(0usize));
    let (total, offline) = (args.channels * args.offline, args.offline);
    let tasks: Vec<_> = pool
        .into_iter()
        .map(|mut conn| {
            let (jobs, signer) = (jobs.clone(), signer.clone());
            tokio::task::spawn_local(async move {
                loop {
                    let j = jobs.get();
                    if j >= total {
                        break;
                    }
                    jobs.set(j + 1);
                    let (c, u) = (j / offline, j % offline);
                    let body = serde_json::json!({"user_id": format!("bench-user-{u}"), "event": format!("bench-{c}")});
                    let status = conn
                        .post(&signer, "subscribe", body.to_string().as_bytes())
                        .await;
                    assert!(
                        matches!(status, Ok(200..=299)),
                        "POST /subscribe failed: {status:?}"
                    );
                }
                conn
            })
        })
        .collect();
    let mut pool = Vec::with_capacity(tasks.len());
    for task in tasks {
        pool.push(task.await.expect("offline subscribe task"));
    }
    println!(
        "offline subscribers: {offline} per channel, subscribed in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    pool
}

/// What the measured window saw, besides the counters in `Shared` and `Publishing`.
struct Window {
    t0: Instant,
    publish_secs: f64,
    start_cpu: CpuSample,
    end_cpu: CpuSample,
    peak_rss: Option<u64>,
}

/// How long deliveries still count after the last publish was answered.
const STRAGGLER_WAIT: Duration = Duration::from_secs(2);

/// Publishes for the window, then waits for stragglers: until every expected delivery
/// arrived, or `STRAGGLER_WAIT` passed.
async fn measure(
    sh: &Rc<Shared>,
    p: &Rc<Publishing>,
    pool: Vec<HttpConn>,
    signer: &Rc<Signer>,
    args: &Args,
) -> Window {
    sh.counting.set(true);
    let start_cpu = cpu_sample(args.pid);
    let publishers: Vec<_> = pool
        .into_iter()
        .map(|c| {
            let (sh, p, signer) = (sh.clone(), p.clone(), signer.clone());
            tokio::task::spawn_local(publisher(sh, p, signer, c, args.payload))
        })
        .collect();
    for task in publishers {
        task.await.expect("publisher task");
    }
    let publish_secs = (p.last_answer.get() - p.t0).as_secs_f64();
    // At most 2 s, even while deliveries still trickle in: a server that acknowledges
    // publishes before fanning them out can be minutes behind, and what it has not delivered
    // by then is reported as missing. The CPU figures come from the last moment deliveries
    // were still arriving, so waiting for lost events does not water them down.
    let mut end_cpu = cpu_sample(args.pid);
    let mut seen = sh.deliveries.get();
    let stragglers = Instant::now() + STRAGGLER_WAIT;
    while sh.deliveries.get() < sh.expected.get() && Instant::now() < stragglers {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if sh.deliveries.get() != seen {
            seen = sh.deliveries.get();
            end_cpu = cpu_sample(args.pid);
        }
    }
    sh.counting.set(false);
    Window {
        t0: p.t0,
        publish_secs,
        start_cpu,
        end_cpu,
        peak_rss: args.pid.and_then(rss_kib),
    }
}

async fn run(args: Args, ticks: f64) -> bool {
    let args = Rc::new(args);
    let sh = Rc::new(Shared {
        start: Instant::now(),
        counting: Cell::new(false),
        deliveries: Cell::new(0),
        last_delivery: Cell::new(None),
        latency: RefCell::new(Histogram::new()),
        wire_latency: RefCell::new(Histogram::new()),
        start_wall: SystemTime::now(),
        subscribed: RefCell::new(vec![0; args.channels]),
        ready: Cell::new(0),
        failed: Cell::new(0),
        last_ready: Cell::new(None),
        lost: Cell::new(0),
        expected: Cell::new(0),
        errors_shown: Cell::new(0),
    });
    let before = args.pid.and_then(rss_kib);
    let overflows_before = listen_overflows();
    let connect_secs = connect_all(&sh, &args).await;
    let overflows = listen_overflows()
        .zip(overflows_before)
        .map(|(a, b)| a.saturating_sub(b));
    let ready = sh.ready.get();
    let connect_per_s = ready as f64 / connect_secs;
    println!("connections: {ready} subscribed in {connect_secs:.2} s");
    println!(
        "connect + subscribe: {ready} connections in {connect_secs:.2} s = {connect_per_s:.0}/s \
         ({} at once)",
        args.connect_concurrency
    );
    if let Some(n) = overflows.filter(|n| *n > 0) {
        println!(
            "NOTE: {n} connects overflowed a listen backlog on this host (retried after 1 s): \
             the connect rate above is the backlog's, lower --connect-concurrency or raise the \
             server's backlog"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = args.pid.and_then(rss_kib);
    let mut rss_per_conn = None;
    if let (Some(b), Some(a)) = (before, idle) {
        let per = a.saturating_sub(b) as f64 / ready.max(1) as f64;
        rss_per_conn = Some(per);
        println!("server RSS: {b} KiB before, {a} KiB with idle connections = {per:.1} KiB per idle connection");
    }

    // The publisher pool, connected before the window opens.
    let signer = Rc::new(Signer::new(&args));
    let mut pool = Vec::with_capacity(args.publishers);
    for _ in 0..args.publishers {
        match HttpConn::open(&args.addr).await {
            Ok(c) => pool.push(c),
            Err(e) => panic!("cannot connect a publisher to {}: {e}", args.addr),
        }
    }
    if args.offline > 0 {
        pool = offline_subscribe(pool, &signer, &args).await;
    }

    let t0 = Instant::now();
    let p = Rc::new(Publishing {
        t0,
        rate: args.rate,
        total: (args.rate > 0).then_some(args.rate * args.seconds),
        deadline: t0 + Duration::from_secs(args.seconds),
        next: Cell::new(0),
        ok: Cell::new(0),
        refused: Cell::new(0),
        failed: Cell::new(0),
        last_answer: Cell::new(t0),
        round_trip: RefCell::new(Histogram::new()),
    });
    let w = measure(&sh, &p, pool, &signer, &args).await;

    let ok = p.ok.get();
    let attempted = p.next.get().min(p.total.unwrap_or(u64::MAX));
    let got = sh.deliveries.get();
    let expected = sh.expected.get();
    // Over the time the deliveries took: longer than the publishing when the server (or
    // the generator) fell behind.
    let delivery_secs = sh
        .last_delivery
        .get()
        .map(|t| (t - w.t0).as_secs_f64())
        .unwrap_or(f64::NAN);
    let publishes_per_s = ok as f64 / w.publish_secs;
    let deliveries_per_s = got as f64 / delivery_secs;
    let lat = sh.latency.borrow();
    let wire = sh.wire_latency.borrow();
    let rt = p.round_trip.borrow();

    let mode = if args.rate > 0 {
        format!("{} asked", args.rate)
    } else {
        format!("capacity, {} publishers", args.publishers)
    };
    println!(
        "publishes: {ok} accepted of {attempted} in {:.2} s ({publishes_per_s:.0}/s, {mode})",
        w.publish_secs
    );
    if p.refused.get() + p.failed.get() > 0 {
        println!(
            "publishes refused: {}, failed: {}",
            p.refused.get(),
            p.failed.get()
        );
    }
    println!(
        "deliveries: {got} of {expected} expected ({deliveries_per_s:.0}/s over {delivery_secs:.2} s)"
    );
    println!(
        "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        lat.percentile_ms(0.5),
        lat.percentile_ms(0.9),
        lat.percentile_ms(0.99),
        lat.percentile_ms(1.0)
    );
    println!(
        "latency ms at arrival: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        wire.percentile_ms(0.5),
        wire.percentile_ms(0.9),
        wire.percentile_ms(0.99),
        wire.percentile_ms(1.0)
    );
    println!(
        "publish round trip ms (request to 200): p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        rt.percentile_ms(0.5),
        rt.percentile_ms(0.9),
        rt.percentile_ms(0.99),
        rt.percentile_ms(1.0)
    );
    if let Some(p) = w.peak_rss {
        println!("server RSS under load: {p} KiB");
    }
    if sh.lost.get() > 0 {
        println!(
            "subscribers lost during the run: {} (closed by the server or broken)",
            sh.lost.get()
        );
    }

    let window = (w.end_cpu.at - w.start_cpu.at).as_secs_f64();
    let cpu = |a: Option<u64>, b: Option<u64>| b.zip(a).map(|(b, a)| (b - a) as f64 / ticks);
    let server_cpu = cpu(w.start_cpu.server, w.end_cpu.server);
    let generator_cpu = cpu(w.start_cpu.generator, w.end_cpu.generator);
    let pct = |c: Option<f64>| c.map(|c| 100.0 * c / window);
    let per_delivery = |c: Option<f64>| c.filter(|_| got > 0).map(|c| 1e6 * c / got as f64);
    let cpu_line = |who: &str, c: Option<f64>| {
        if let Some(c) = c {
            println!(
                "{who} CPU: {c:.2} s in {window:.2} s = {:.0}% of a core, {} µs per delivery",
                100.0 * c / window,
                fmt_opt(per_delivery(Some(c)), 2)
            );
        }
    };
    cpu_line("server", server_cpu);
    cpu_line("generator", generator_cpu);

    let gen_pct = pct(generator_cpu);
    let server_pct = pct(server_cpu);
    let mut limits = Vec::new();
    if let Some(g) = gen_pct.filter(|g| *g >= 90.0) {
        limits.push(format!(
            "it used {g:.0}% of its core: latency includes its own queueing, and the server \
             may deliver more"
        ));
    }
    let short = args.rate > 0 && publishes_per_s < 0.95 * args.rate as f64;
    let shortfall = format!(
        "{publishes_per_s:.0} publishes/s of the {} asked, {} connections at a round trip p50 \
         of {:.2} ms",
        args.rate,
        args.publishers,
        rt.percentile_ms(0.5)
    );
    // A short rate is the generator's fault only if the server had room: a saturated server
    // answers slowly, and more connections would only queue more.
    let server_saturated = server_pct.is_some_and(|c| c >= 90.0);
    if short && !server_saturated {
        limits.push(format!("{shortfall}: raise --publishers"));
    }
    if !limits.is_empty() {
        println!("NOTE: the generator is the limit ({})", limits.join("; "));
    }
    if short && server_saturated {
        println!(
            "NOTE: the server is the limit ({shortfall}, the server at {:.0}% of its core)",
            server_pct.unwrap_or_default()
        );
    }

    let result = serde_json::json!({
        "connections": ready,
        "channels": args.channels,
        "rate": args.rate,
        "seconds": args.seconds,
        "publishes": ok,
        "publishes_per_s": round3(publishes_per_s),
        "deliveries": got,
        "expected_deliveries": expected,
        "deliveries_per_s": round3(deliveries_per_s),
        "p50_ms": round3(lat.percentile_ms(0.5)),
        "p90_ms": round3(lat.percentile_ms(0.9)),
        "p99_ms": round3(lat.percentile_ms(0.99)),
        "max_ms": round3(lat.percentile_ms(1.0)),
        "arrival_p50_ms": round3(wire.percentile_ms(0.5)),
        "arrival_p90_ms": round3(wire.percentile_ms(0.9)),
        "arrival_p99_ms": round3(wire.percentile_ms(0.99)),
        "arrival_max_ms": round3(wire.percentile_ms(1.0)),
        "publish_rtt_p50_ms": round3(rt.percentile_ms(0.5)),
        "publish_rtt_p99_ms": round3(rt.percentile_ms(0.99)),
        "connect_per_s": round3(connect_per_s),
        "listen_overflows": overflows,
        "rss_per_conn_kib": rss_per_conn.and_then(round3),
        "server_cpu_pct": server_pct.and_then(round3),
        "server_us_per_delivery": per_delivery(server_cpu).and_then(round3),
        "generator_cpu_pct": gen_pct.and_then(round3),
        "generator_us_per_delivery": per_delivery(generator_cpu).and_then(round3),
        "generator_limited": !limits.is_empty(),
        "subscribers_lost": sh.lost.get(),
    });
    println!("RESULT {result}");
    ok > 0 && got >= expected
}

fn main() {
    let args = parse_args();
    // Before the runtime starts: a child process inside it would wake its signal driver.
    let ticks = clock_ticks();
    // Each subscriber is a socket; the soft limit is often 1024 while the hard one is not.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("could not raise the open-file limit: {e}");
    }
    // One thread: the generator gets one core, and a single thread lets the subscribers
    // share one read buffer and plain Cells instead of atomics.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let all_delivered = rt.block_on(tokio::task::LocalSet::new().run_until(run(args, ticks)));
    // Dropping thousands of sockets and tasks one by one adds nothing to the report.
    std::process::exit(if all_delivered { 0 } else { 1 });
}
