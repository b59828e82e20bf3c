//! The floor under a fan-out: what one small `send` per subscriber costs on this machine's
//! kernel, with nothing else around it, to set pushi's CPU per delivery against.
//!
//! Two processes, each pinned to its own core like the server and the load generator:
//!
//! ```sh
//! cargo build --release --example send_floor
//! taskset -c 1 target/release/examples/send_floor sink --addr 127.0.0.1:6301 &
//! taskset -c 0 target/release/examples/send_floor send --addr 127.0.0.1:6301 \
//!     --connections 1000 --rate 50 --seconds 5
//! ```
//!
//! `sink` accepts connections and reads and drops whatever comes, on one thread (epoll
//! through tokio, like the load generator). `send` opens `--connections` connections to it
//! and, `--rate` times a second, sends one 131-byte buffer (the size of a bench event's
//! WebSocket frame) to each of them with one non-blocking `send` apiece, as a fan-out of
//! one event to that many subscribers does when their queues are empty. It prints its own
//! CPU time per `send` (from `getrusage`) and how long a round of sends took.

use std::io::{self, ErrorKind};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nix::sys::resource::{getrusage, UsageWho};
use socket2::SockRef;
use tokio::io::AsyncReadExt;

/// Bytes of one bench event frame: 2-byte header, 129 bytes of JSON with 100 bytes of data.
const FRAME: usize = 131;

struct Args {
    mode: String,
    addr: String,
    connections: usize,
    rate: u64,
    seconds: u64,
}

fn parse_args() -> Args {
    let mut args = std::env::args().skip(1);
    let mut a = Args {
        mode: args
            .next()
            .expect("usage: send_floor sink|send [--addr A] ..."),
        addr: "127.0.0.1:6301".into(),
        connections: 1000,
        rate: 50,
        seconds: 5,
    };
    while let Some(flag) = args.next() {
        let v = args.next().unwrap_or_default();
        match flag.as_str() {
            "--addr" => a.addr = v,
            "--connections" => a.connections = v.parse().expect("--connections N"),
            "--rate" => a.rate = v.parse().expect("--rate rounds/s"),
            "--seconds" => a.seconds = v.parse().expect("--seconds N"),
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(a.rate > 0, "--rate must be at least 1");
    a
}

/// CPU seconds this process has used (user + system).
fn cpu_seconds() -> f64 {
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    secs(u.user_time()) + secs(u.system_time())
}

fn sink(addr: &str) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        loop {
            let (mut conn, _) = listener.accept().await?;
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    })
}

fn send(a: &Args) -> io::Result<()> {
    let conns: Vec<TcpStream> = (0..a.connections)
        .map(|_| {
            let s = TcpStream::connect(&a.addr)?;
            s.set_nodelay(true)?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .collect::<io::Result<_>>()?;
    let frame = [b'x'; FRAME];
    let period = Duration::from_secs_f64(1.0 / a.rate as f64);
    let rounds = a.rate * a.seconds;
    let (mut sends, mut full) = (0u64, 0u64);
    let mut round_time = Vec::with_capacity(rounds as usize);
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    for r in 0..rounds {
        let due = t0 + period * r as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let start = Instant::now();
        for c in &conns {
            match SockRef::from(c).send(&frame) {
                Ok(_) => sends += 1,
                Err(e) if e.kind() == ErrorKind::WouldBlock => full += 1,
                Err(e) => return Err(e),
            }
        }
        round_time.push(start.elapsed());
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    round_time.sort();
    let pct =
        |p: f64| round_time[((p * round_time.len() as f64) as usize).min(round_time.len() - 1)];
    println!(
        "{sends} sends ({full} refused, socket full) in {wall:.2} s: CPU {cpu:.2} s = {:.0}% of a \
         core, {:.2} µs per send; a round of {} sends took p50 {:.2} ms, p99 {:.2} ms",
        100.0 * cpu / wall,
        1e6 * cpu / sends.max(1) as f64,
        a.connections,
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
    );
    Ok(())
}

fn main() -> io::Result<()> {
    let a = parse_args();
    match a.mode.as_str() {
        "sink" => sink(&a.addr),
        "send" => send(&a),
        other => panic!("unknown mode {other}: sink or send"),
    }
}
