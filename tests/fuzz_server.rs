//! Fuzzes the real binary (a child process, so panics reach its stderr and its memory can be
//! measured) with bursts of random and mutated input over raw TCP:
//!
//! - WebSocket: after a handshake (mostly valid), frames with random opcodes, RSV bits,
//!   missing masks, non-minimal / wrong / huge / 64-bit lengths, fragmented and oversized
//!   control frames, broken fragmentation, invalid UTF-8, truncated frames, frames around
//!   the transport cap, Pusher JSON with mutated bytes, and `pusher:subscribe` /
//!   `pusher:signin` / client events with random names, auth (some validly signed for the
//!   socket), `channel_data` and `user_data`.
//! - HTTP: garbage request lines, bad methods and versions, huge and odd headers, signed API
//!   requests with random bodies and paths, mutated signed requests, chunked bodies with bad
//!   sizes, truncated bodies, pipelining, bad WebSocket handshakes, random paths under
//!   `/apps/1/`, `/app/`, `/users/`, `/up/`.
//!
//! Every case is bounded in time (reads stop after an idle gap or a deadline, then the
//! socket is dropped). Whatever the server sends back must be well-formed (HTTP responses
//! start with a status line and are never a 5xx other than 505; WebSocket frames from the
//! server are unmasked, RSV-free, and text frames are Pusher JSON). After every burst: the
//! process runs, its stderr has no "panicked", a witness subscribed before the fuzzing gets a
//! freshly published event (and nothing else), a new connection gets
//! `pusher:connection_established` and a pong, and the open connection count returns to the
//! witness alone. At the end RSS is back near the post-warm-up baseline and SIGTERM stops the
//! process cleanly.
//!
//! The seed is fixed. Every case draws from its own generator seeded from (seed, burst,
//! case), so a failing case replays alone: `PUSHI_FUZZ_ONLY=<burst>.<case> cargo test
//! --release --test fuzz_server -- --nocapture`. `PUSHI_FUZZ_SEED`, `PUSHI_FUZZ_BURSTS` and
//! `PUSHI_FUZZ_CASES` change the seed and the amount of work for exploring.

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use support::process::ServerProcess;
use support::{now_unix, APPS, KEY, SECRET};

/// The fixed seed CI runs with.
const SEED: u64 = 0x7075_7368_6920_f022;
/// Bursts after the warm-up burst.
const BURSTS: u64 = 30;
/// Concurrent cases per burst.
const CASES: u64 = 60;
/// Hard limit for one case (connect, write, read).
const CASE_LIMIT: Duration = Duration::from_secs(4);
/// A read ends after this long without bytes.
const READ_IDLE: Duration = Duration::from_millis(250);
/// A read ends after this long in any case.
const READ_TOTAL: Duration = Duration::from_millis(1500);
/// Most bytes read back per case.
const READ_MAX: usize = 1 << 20;
/// RSS may end at most this far above the post-warm-up baseline.
const RSS_SLACK_KIB: u64 = 20 * 1024;

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_mutated_input_never_hurts_the_server() {
    let started = Instant::now();
    let seed = env_u64("PUSHI_FUZZ_SEED").unwrap_or(SEED);
    let bursts = env_u64("PUSHI_FUZZ_BURSTS").unwrap_or(BURSTS);
    let cases = env_u64("PUSHI_FUZZ_CASES").unwrap_or(CASES);
    let only: Option<(u64, u64)> = std::env::var("PUSHI_FUZZ_ONLY").ok().map(|v| {
        let (b, c) = v.split_once('.').expect("PUSHI_FUZZ_ONLY=<burst>.<case>");
        (b.parse().expect("burst"), c.parse().expect("case"))
    });
    match only {
        Some((b, c)) => println!("fuzz: seed={seed:#x}, only case {b}.{c}"),
        None => println!(
            "fuzz: seed={seed:#x} bursts={bursts} (+1 warm-up) cases/burst={cases} total={}",
            (bursts + 1) * cases
        ),
    }

    let mut server = ServerProcess::start("").await;
    let addr = server.addr;
    let witness_channel = format!("witness-{seed:x}-{}", server.pid());
    let mut witness = server.subscriber(&witness_channel).await;
    let mut fuzz = Fuzz {
        addr,
        seed,
        stats: BTreeMap::new(),
        events: BTreeMap::new(),
    };

    let burst_list: Vec<(u64, Vec<u64>)> = match only {
        Some((b, c)) => vec![(b, vec![c])],
        None => (0..=bursts).map(|b| (b, (0..cases).collect())).collect(),
    };
    let mut baseline = None;
    let mut peak = 0;
    for (burst, case_ids) in burst_list {
        let t = Instant::now();
        let outcomes = fuzz.burst(burst, &case_ids).await;
        if only.is_some() {
            for o in &outcomes {
                println!(
                    "case {burst}.{} ({}): {}\n  sent: {}",
                    o.case, o.kind, o.answer, o.sent
                );
            }
        }
        let ran = t.elapsed();
        let rss = server.rss_kib();
        peak = peak.max(rss);
        let problems: Vec<&Outcome> = outcomes.iter().filter(|o| o.problem.is_some()).collect();
        let mut report = String::new();
        for o in &problems {
            let _ = writeln!(
                report,
                "case {burst}.{} ({}) seed {seed:#x}: {}\n  sent: {}",
                o.case,
                o.kind,
                o.problem.as_deref().unwrap_or(""),
                o.sent
            );
        }
        if !problems.is_empty() {
            // Printed first, in case the server checks below fail too.
            println!("{report}");
        }
        check_server(
            &mut server,
            &mut witness,
            &witness_channel,
            burst,
            &outcomes,
        )
        .await;
        assert!(
            problems.is_empty(),
            "{} fuzz case(s) got a bad answer (replay one with PUSHI_FUZZ_ONLY=<burst>.<case>):\n{report}",
            problems.len()
        );
        println!(
            "burst {burst:>2}: {} cases in {:>4} ms, checks {:>4} ms, rss {} KiB",
            outcomes.len(),
            ran.as_millis(),
            (t.elapsed() - ran).as_millis(),
            rss
        );
        if burst == 0 && baseline.is_none() {
            baseline = Some(server.rss_kib());
        }
    }

    // Memory: the sockets are closed; RSS must come back near the post-warm-up baseline.
    let baseline = baseline.unwrap_or_else(|| server.rss_kib());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut rss = server.rss_kib();
    while rss > baseline + RSS_SLACK_KIB && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rss = server.rss_kib();
    }
    println!("rss: baseline {baseline} KiB, peak {peak} KiB, final {rss} KiB");
    let mut kinds = String::new();
    for (kind, (n, answers)) in &fuzz.stats {
        let _ = write!(kinds, "\n  {kind:<22} {n:>4}  answers:");
        for (answer, m) in answers {
            let _ = write!(kinds, " {answer}×{m}");
        }
    }
    println!("cases by kind:{kinds}");
    let events: Vec<String> = fuzz
        .events
        .iter()
        .map(|(e, n)| format!("{e}×{n}"))
        .collect();
    println!("events received on fuzzed sockets: {}", events.join(", "));
    assert!(
        rss <= baseline + RSS_SLACK_KIB,
        "RSS grew from {baseline} KiB (after warm-up) to {rss} KiB (peak {peak} KiB) and did not \
         come back within 10 s (seed {seed:#x})"
    );

    // A clean stop after all that.
    witness.close().await;
    server.terminate();
    let status = server
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("pushi exits within 15 s of SIGTERM");
    let stderr = server.stderr_text();
    assert!(
        !stderr.contains("panicked"),
        "pushi panicked (seed {seed:#x}):\n{}",
        tail(&stderr)
    );
    assert!(
        status.success(),
        "pushi exit status {status}:\n{}",
        tail(&stderr)
    );
    assert!(
        !stderr.contains("shutdown timed out"),
        "shutdown left tasks running after the fuzzing:\n{}",
        tail(&stderr)
    );
    println!("fuzz: done in {:.1} s", started.elapsed().as_secs_f64());
}

/// The server is alive, did not panic, delivers to the witness, admits a new connection and
/// has no connection left over from the burst.
async fn check_server(
    server: &mut ServerProcess,
    witness: &mut support::Client,
    channel: &str,
    burst: u64,
    outcomes: &[Outcome],
) {
    let list = || {
        outcomes
            .iter()
            .map(|o| format!("{burst}.{} {}", o.case, o.kind))
            .collect::<Vec<_>>()
            .join(", ")
    };
    assert!(
        server.is_running(),
        "pushi exited during burst {burst} (cases: {})\n{}",
        list(),
        tail(&server.stderr_text())
    );
    let stderr = server.stderr_text();
    assert!(
        !stderr.contains("panicked"),
        "pushi panicked during burst {burst}; one of these cases did it (replay each with \
         PUSHI_FUZZ_ONLY=<burst>.<case>): {}\n{}",
        list(),
        tail(&stderr)
    );

    // The witness gets the next event, and nothing before it.
    let name = support::unique("fuzz-marker-");
    let data = format!("{{\"burst\":{burst}}}");
    server.api().publish(channel, &name, &data).await;
    let got = witness.recv_json().await;
    assert_eq!(
        got,
        json!({"event": name, "channel": channel, "data": data}),
        "witness after burst {burst}"
    );

    // A newcomer is admitted and served.
    let mut fresh = server.connect().await;
    fresh.ping_pong().await;
    fresh.close().await;

    // Every socket of the burst is gone from the server: only the witness remains.
    let url = server
        .metrics_url
        .clone()
        .expect("the fixture serves /metrics");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut open;
    loop {
        open = open_connections(&url).await;
        if open == Some(1) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        open,
        Some(1),
        "connections still open 10 s after burst {burst} ended (only the witness should be); \
         cases: {}",
        list()
    );
}

/// `pushi_connections` from `GET /metrics`.
async fn open_connections(url: &str) -> Option<u64> {
    let resp = tokio::time::timeout(support::TIMEOUT, reqwest::get(url))
        .await
        .ok()?
        .ok()?;
    let text = resp.text().await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("pushi_connections "))
        .and_then(|v| v.trim().parse().ok())
}

/// The last 60 lines of `text`.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// Bursts and cases
// ---------------------------------------------------------------------------------------

struct Fuzz {
    addr: SocketAddr,
    seed: u64,
    /// kind → (cases, answer → count)
    stats: BTreeMap<&'static str, (u64, BTreeMap<String, u64>)>,
    /// Events the server sent on the fuzzed WebSocket connections → count.
    events: BTreeMap<String, u64>,
}

/// What one case did and how the server answered.
struct Outcome {
    case: u64,
    kind: &'static str,
    /// What was sent, abbreviated.
    sent: String,
    /// Short description of the answer (status, close code, ...), for the statistics.
    answer: String,
    /// A wrong answer.
    problem: Option<String>,
    /// Pusher events received (WebSocket cases), with the `pusher:error` code.
    events: Vec<String>,
}

impl Fuzz {
    async fn burst(&mut self, burst: u64, cases: &[u64]) -> Vec<Outcome> {
        let mut set = JoinSet::new();
        for &case in cases {
            let mut rng = case_rng(self.seed, burst, case);
            let addr = self.addr;
            set.spawn(async move {
                let ws = rng.random_bool(0.55);
                let run = async {
                    if ws {
                        ws_case(&mut rng, addr).await
                    } else {
                        http_case(&mut rng, addr).await
                    }
                };
                let mut out = match tokio::time::timeout(CASE_LIMIT, run).await {
                    Ok(out) => out,
                    Err(_) => Outcome {
                        case,
                        kind: if ws { "ws" } else { "http" },
                        sent: String::new(),
                        answer: "case time limit".into(),
                        problem: None,
                        events: Vec::new(),
                    },
                };
                out.case = case;
                out
            });
        }
        let mut outcomes = Vec::new();
        while let Some(res) = set.join_next().await {
            let out = res.unwrap_or_else(|e| panic!("a fuzz case task failed (test bug): {e}"));
            let entry = self.stats.entry(out.kind).or_default();
            entry.0 += 1;
            *entry.1.entry(out.answer.clone()).or_default() += 1;
            for e in &out.events {
                *self.events.entry(e.clone()).or_default() += 1;
            }
            outcomes.push(out);
        }
        outcomes.sort_by_key(|o| o.case);
        outcomes
    }
}

/// The generator of one case: independent of every other case and of scheduling.
fn case_rng(seed: u64, burst: u64, case: u64) -> StdRng {
    let mut x =
        seed ^ burst.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ case.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    // splitmix64 finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    StdRng::seed_from_u64(x ^ (x >> 31))
}

/// How a bounded read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadEnd {
    Eof,
    Idle,
    Deadline,
    Full,
    Reset,
}

/// Reads until EOF, an idle gap, the deadline or `READ_MAX` bytes.
async fn read_bounded(stream: &mut TcpStream, into: &mut Vec<u8>, idle: Duration) -> ReadEnd {
    let deadline = tokio::time::Instant::now() + READ_TOTAL;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if into.len() >= READ_MAX {
            return ReadEnd::Full;
        }
        let wait = (tokio::time::Instant::now() + idle).min(deadline);
        match tokio::time::timeout_at(wait, stream.read(&mut buf)).await {
            Err(_) if tokio::time::Instant::now() >= deadline => return ReadEnd::Deadline,
            Err(_) => return ReadEnd::Idle,
            Ok(Ok(0)) => return ReadEnd::Eof,
            Ok(Ok(n)) => into.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => return ReadEnd::Reset,
        }
    }
}

/// Writes `parts` (bounded); false when the server stopped reading or closed.
async fn write_parts(stream: &mut TcpStream, parts: &[Vec<u8>]) -> bool {
    for p in parts {
        let w = tokio::time::timeout(Duration::from_millis(1500), stream.write_all(p)).await;
        if !matches!(w, Ok(Ok(()))) {
            return false;
        }
    }
    true
}

/// `bytes` as printable text, abbreviated to `max` bytes.
fn show(bytes: &[u8], max: usize) -> String {
    let mut s = String::new();
    for &b in bytes.iter().take(max) {
        match b {
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            _ => {
                let _ = write!(s, "\\x{b:02x}");
            }
        }
    }
    if bytes.len() > max {
        let _ = write!(s, "... ({} bytes)", bytes.len());
    }
    s
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn random_bytes(rng: &mut StdRng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    v
}

fn random_bytes_in(rng: &mut StdRng, len: std::ops::Range<usize>) -> Vec<u8> {
    let n = rng.random_range(len);
    random_bytes(rng, n)
}

// ---------------------------------------------------------------------------------------
// Random values: names, JSON, mutations
// ---------------------------------------------------------------------------------------

const NAME_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-=@,.;";
const CHANNEL_PREFIXES: &[&str] = &[
    "",
    "private-",
    "presence-",
    "private-encrypted-",
    "cache-",
    "private-cache-",
    "presence-cache-",
    "private-encrypted-cache-",
    "#server-to-user-",
];
/// Invalid (or, split across fragments, valid) UTF-8 sequences.
const BAD_UTF8: &[&[u8]] = &[
    b"\xff",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xe2\x82",
    b"\xf0\x9f\x98\x80",
];

/// Channels every case may pick, so cases of a burst meet on them.
const SHARED_CHANNELS: &[&str] = &[
    "fuzz-shared",
    "cache-fuzz-shared",
    "private-fuzz-shared",
    "presence-fuzz-shared",
    "presence-cache-fuzz-shared",
    "private-encrypted-fuzz-shared",
    "#server-to-user-fuzz-user",
];

fn name_chars(rng: &mut StdRng, len: usize) -> String {
    (0..len).map(|_| *pick(rng, NAME_CHARS) as char).collect()
}

fn weird_string(rng: &mut StdRng, max: usize) -> String {
    let len = rng.random_range(0..=max);
    match rng.random_range(0..5) {
        0 => (0..len)
            .map(|_| char::from_u32(rng.random_range(0..0x11_0000)).unwrap_or('\u{fffd}'))
            .collect(),
        1 => (0..len)
            .map(|_| rng.random_range(0u8..0x80) as char)
            .collect(),
        2 => (0..len)
            .map(|_| {
                *pick(
                    rng,
                    &['é', '€', '😀', '\u{0}', '"', '\\', '/', ' ', '#', ':', '\n'],
                )
            })
            .collect(),
        3 => String::from_utf8_lossy(&random_bytes(rng, len)).into_owned(),
        _ => name_chars(rng, len),
    }
}

fn channel_name(rng: &mut StdRng) -> String {
    match rng.random_range(0..12) {
        0..=3 => {
            let len = rng.random_range(1..24);
            format!(
                "{}fuzz-{}",
                pick(rng, CHANNEL_PREFIXES),
                name_chars(rng, len)
            )
        }
        4 | 5 => pick(rng, SHARED_CHANNELS).to_string(),
        6 => {
            // Around the 164-character limit.
            let len: usize = rng.random_range(160..=168);
            let p = *pick(rng, CHANNEL_PREFIXES);
            format!("{p}{}", name_chars(rng, len.saturating_sub(p.len()).max(1)))
        }
        7 => String::new(),
        8 => format!("{}{}", pick(rng, CHANNEL_PREFIXES), weird_string(rng, 20)),
        9 => pick(rng, CHANNEL_PREFIXES).to_string(),
        10 => format!("fuzz-{}", "a".repeat(rng.random_range(0..5000))),
        _ => weird_string(rng, 40),
    }
}

fn user_id_json(rng: &mut StdRng) -> String {
    match rng.random_range(0..14) {
        0 => rng.random::<u32>().to_string(),
        1 => "123456789012345678901".into(),
        2 => format!("-{}", rng.random::<u64>()),
        3 => "1.5".into(),
        4 => "1e400".into(),
        5 => "-0".into(),
        6 => json!(name_chars(rng, 128)).to_string(),
        7 => json!(name_chars(rng, 129)).to_string(),
        8 => json!("é".repeat(rng.random_range(120..140))).to_string(),
        9 => "\"\"".into(),
        10 => pick(
            rng,
            &[
                "null",
                "true",
                "[1]",
                "{}",
                "\"\\ud800\"",
                "0x10",
                "\"a\\u0000b\"",
            ],
        )
        .to_string(),
        11 => "9".repeat(rng.random_range(1..200)),
        12 => json!(weird_string(rng, 20)).to_string(),
        _ => json!(format!("fuzz-user-{}", rng.random_range(0..4))).to_string(),
    }
}

/// Random JSON text, usually valid.
fn json_text(rng: &mut StdRng, depth: u32) -> String {
    let leaf = depth == 0 || rng.random_bool(0.4);
    if leaf {
        return match rng.random_range(0..12) {
            0 => "null".into(),
            1 => "true".into(),
            2 => rng.random::<i64>().to_string(),
            3 => format!("{}e{}", rng.random::<i32>(), rng.random_range(-400..400)),
            4 => "1".repeat(rng.random_range(1..60)),
            5 => json!(weird_string(rng, 30)).to_string(),
            6 => format!(
                "\"{}\"",
                pick(rng, &["\\ud800", "\\u0000", "\\udfff\\ud800", "\\x", "\\"])
            ),
            7 => json!("x".repeat(rng.random_range(0..3000))).to_string(),
            8 => "[".repeat(rng.random_range(1..300)),
            9 => format!("{}{}", "[".repeat(200), "]".repeat(200)),
            10 => json!(name_chars(rng, 10)).to_string(),
            _ => rng.random::<f64>().to_string(),
        };
    }
    let n = rng.random_range(0..5);
    if rng.random_bool(0.5) {
        let items: Vec<String> = (0..n).map(|_| json_text(rng, depth - 1)).collect();
        format!("[{}]", items.join(","))
    } else {
        let keys = [
            "user_id",
            "user_info",
            "id",
            "watchlist",
            "channel",
            "auth",
            "data",
            "x",
        ];
        let items: Vec<String> = (0..n)
            .map(|_| {
                let k = if rng.random_bool(0.7) {
                    json!(pick(rng, &keys)).to_string()
                } else {
                    json!(weird_string(rng, 8)).to_string()
                };
                format!("{k}:{}", json_text(rng, depth - 1))
            })
            .collect();
        format!("{{{}}}", items.join(","))
    }
}

fn presence_data(rng: &mut StdRng) -> String {
    match rng.random_range(0..8) {
        0 => json_text(rng, 3),
        1 => format!("{{\"user_id\":{}}}", user_id_json(rng)),
        2 => format!(
            "{{\"user_id\":{},\"user_info\":{{\"pad\":\"{}\"}}}}",
            user_id_json(rng),
            "x".repeat(rng.random_range(990..1040))
        ),
        3 => weird_string(rng, 50),
        _ => format!(
            "{{\"user_id\":{},\"user_info\":{}}}",
            user_id_json(rng),
            json_text(rng, 2)
        ),
    }
}

fn signin_data(rng: &mut StdRng) -> String {
    match rng.random_range(0..6) {
        0 => json_text(rng, 3),
        1 => weird_string(rng, 40),
        _ => {
            let n = *pick(rng, &[0usize, 1, 3, 99, 100, 101, 150]);
            let list: Vec<String> = (0..n).map(|_| user_id_json(rng)).collect();
            let list = if rng.random_bool(0.8) {
                format!("[{}]", list.join(","))
            } else {
                json_text(rng, 1)
            };
            format!(
                "{{\"id\":{},\"user_info\":{},\"watchlist\":{list}}}",
                user_id_json(rng),
                json_text(rng, 1)
            )
        }
    }
}

/// Changes 1..=4 places of `bytes`: bit flips, byte replacements, insertions (of bytes or
/// interesting tokens), deletions, duplications, truncation.
fn mutate(rng: &mut StdRng, bytes: &mut Vec<u8>) {
    const TOKENS: &[&[u8]] = &[
        b"\"",
        b"{",
        b"}",
        b"[",
        b"]",
        b":",
        b",",
        b"\\",
        b"\\u0000",
        b"\\ud800",
        b"\xff",
        b"\xc3",
        b"\xed\xa0\x80",
        b"\x00",
        b"99999999999999999999999",
        b"null",
        b"-",
        b"\r\n",
        b"%",
        b"%00",
        b"&",
        b"=",
        b"+",
    ];
    for _ in 0..rng.random_range(1..=4) {
        let len = bytes.len();
        let at = if len == 0 {
            0
        } else {
            rng.random_range(0..len)
        };
        match rng.random_range(0..7) {
            0 if len > 0 => bytes[at] ^= 1 << rng.random_range(0..8),
            1 if len > 0 => bytes[at] = rng.random(),
            2 => bytes.insert(at, rng.random()),
            3 if len > 0 => {
                bytes.remove(at);
            }
            4 => {
                let t = *pick(rng, TOKENS);
                bytes.splice(at..at, t.iter().copied());
            }
            5 if len > 0 => {
                let end = rng.random_range(at..=len.min(at + 64));
                let copy = bytes[at..end].to_vec();
                bytes.splice(at..at, copy);
            }
            _ => bytes.truncate(at),
        }
    }
}

// ---------------------------------------------------------------------------------------
// WebSocket cases
// ---------------------------------------------------------------------------------------

/// How a frame's length is written.
#[derive(Clone, Copy)]
enum LenForm {
    Minimal,
    Ext16,
    Ext64,
}

/// A client frame. `declared` is the length written in the header (normally the payload's).
struct RawFrame {
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    form: LenForm,
    declared: u64,
    payload: Vec<u8>,
}

impl RawFrame {
    fn new(opcode: u8, payload: Vec<u8>, rng: &mut StdRng) -> RawFrame {
        RawFrame {
            fin: true,
            rsv: 0,
            opcode,
            mask: Some(rng.random()),
            form: LenForm::Minimal,
            declared: payload.len() as u64,
            payload,
        }
    }

    fn text(s: &str, rng: &mut StdRng) -> RawFrame {
        RawFrame::new(1, s.as_bytes().to_vec(), rng)
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len() + 14);
        out.push((u8::from(self.fin) << 7) | ((self.rsv & 7) << 4) | (self.opcode & 0x0f));
        let m = if self.mask.is_some() { 0x80 } else { 0 };
        let d = self.declared;
        match self.form {
            LenForm::Minimal if d < 126 => out.push(m | d as u8),
            LenForm::Minimal | LenForm::Ext16 if d <= 0xffff => {
                out.push(m | 126);
                out.extend_from_slice(&(d as u16).to_be_bytes());
            }
            _ => {
                out.push(m | 127);
                out.extend_from_slice(&d.to_be_bytes());
            }
        }
        match self.mask {
            Some(k) => {
                out.extend_from_slice(&k);
                out.extend(self.payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
            }
            None => out.extend_from_slice(&self.payload),
        }
        out
    }
}

/// What a WebSocket case knows about its connection.
struct WsCtx {
    socket_id: Option<String>,
    key: String,
    secret: String,
}

impl WsCtx {
    /// `key:signature` for `message`, or a broken token now and then.
    fn token(&self, rng: &mut StdRng, message: &str) -> String {
        let good = format!(
            "{}:{}",
            self.key,
            pushi::auth::sign(&self.secret, message.as_bytes())
        );
        match rng.random_range(0..10) {
            0 => String::new(),
            1 => format!("{}:{}", self.key, hex64(rng)),
            2 => format!("wrong-key:{}", &good[self.key.len() + 1..]),
            3 => {
                let mut b = good.into_bytes();
                mutate(rng, &mut b);
                String::from_utf8_lossy(&b).into_owned()
            }
            4 => weird_string(rng, 80),
            _ => good,
        }
    }
}

fn hex64(rng: &mut StdRng) -> String {
    random_bytes(rng, 32)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A Pusher frame a client could send, as JSON text.
fn pusher_text(rng: &mut StdRng, cx: &WsCtx) -> String {
    let sid = cx.socket_id.clone().unwrap_or_else(|| "1.1".into());
    let good = |msg: &str| {
        format!(
            "{}:{}",
            cx.key,
            pushi::auth::sign(&cx.secret, msg.as_bytes())
        )
    };
    match rng.random_range(0..14) {
        0 => json!({"event": "pusher:ping", "data": {}}).to_string(),
        10 | 11 => {
            // A valid, validly signed subscription to a shared channel, so that cases meet
            // as presence members and subscribers.
            let channel = *pick(rng, SHARED_CHANNELS);
            let mut data = json!({"channel": channel});
            let cd = channel.starts_with("presence-").then(|| {
                json!({"user_id": format!("fuzz-user-{}", rng.random_range(0..4)),
                       "user_info": {"n": rng.random::<u8>()}})
                .to_string()
            });
            if pushi::protocol::ChannelKind::of(channel).needs_auth() {
                data["auth"] = json!(good(&pushi::auth::channel_string(
                    &sid,
                    channel,
                    cd.as_deref()
                )));
            }
            if let Some(cd) = cd {
                data["channel_data"] = json!(cd);
            }
            json!({"event": "pusher:subscribe", "data": data}).to_string()
        }
        12 => {
            // A valid sign-in with a watchlist of the shared users.
            let n = rng.random_range(0..4);
            let user_data = json!({
                "id": format!("fuzz-user-{}", rng.random_range(0..4)),
                "watchlist": (0..n).map(|i| format!("fuzz-user-{i}")).collect::<Vec<_>>(),
            })
            .to_string();
            let auth = good(&pushi::auth::user_string(&sid, &user_data));
            json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}})
                .to_string()
        }
        13 => {
            // A client event on a shared channel.
            let channel = *pick(rng, SHARED_CHANNELS);
            json!({"event": "client-fuzz", "channel": channel, "data": {"n": rng.random::<u8>()}})
                .to_string()
        }
        1 | 2 => {
            let channel = channel_name(rng);
            let cd = (channel.starts_with("presence-") || rng.random_bool(0.2))
                .then(|| presence_data(rng));
            let auth = if pushi::protocol::ChannelKind::of(&channel).needs_auth() {
                let msg = pushi::auth::channel_string(&sid, &channel, cd.as_deref());
                cx.token(rng, &msg)
            } else {
                pick(rng, &["", "x:y", "app-key:"]).to_string()
            };
            let mut data = json!({"channel": channel, "auth": auth});
            if let Some(cd) = cd {
                data["channel_data"] = json!(cd);
            }
            if rng.random_bool(0.2) {
                data = json!(data.to_string()); // the old string-encoded form
            }
            json!({"event": "pusher:subscribe", "data": data}).to_string()
        }
        3 => json!({"event": "pusher:unsubscribe", "data": {"channel": channel_name(rng)}})
            .to_string(),
        4 => {
            let user_data = signin_data(rng);
            let auth = cx.token(rng, &pushi::auth::user_string(&sid, &user_data));
            json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}})
                .to_string()
        }
        5 | 6 => {
            let event = if rng.random_bool(0.8) {
                format!("client-{}", name_chars(rng, 8))
            } else {
                weird_string(rng, 20)
            };
            let data = if rng.random_bool(0.1) {
                json!({"pad": "y".repeat(rng.random_range(10_000..11_000))}).to_string()
            } else {
                json_text(rng, 3)
            };
            format!(
                "{{\"event\":{},\"channel\":{},\"data\":{data}}}",
                json!(event),
                json!(channel_name(rng))
            )
        }
        7 => format!(
            "{{\"event\":{},\"data\":{}}}",
            json!(format!("pusher:{}", weird_string(rng, 10))),
            json_text(rng, 2)
        ),
        8 => json_text(rng, 4),
        _ => format!(
            "{{\"event\":{},\"channel\":{},\"data\":{}}}",
            json_text(rng, 1),
            json_text(rng, 1),
            json_text(rng, 2)
        ),
    }
}

/// Raw bytes for one fuzz step on an open WebSocket; returns (what, bytes).
fn ws_step(rng: &mut StdRng, cx: &WsCtx) -> (&'static str, Vec<u8>) {
    match rng.random_range(0..17) {
        0 | 1 => (
            "pusher",
            RawFrame::text(&pusher_text(rng, cx), rng).encode(),
        ),
        2 | 3 => {
            let mut b = pusher_text(rng, cx).into_bytes();
            mutate(rng, &mut b);
            let op = if rng.random_bool(0.85) { 1 } else { 2 };
            ("mutated-pusher", RawFrame::new(op, b, rng).encode())
        }
        4 => {
            let n = rng.random_range(0..300);
            let f = RawFrame {
                fin: rng.random_bool(0.7),
                rsv: if rng.random_bool(0.5) {
                    0
                } else {
                    rng.random_range(0..8)
                },
                opcode: rng.random_range(0..16),
                mask: if rng.random_bool(0.9) {
                    Some(rng.random())
                } else {
                    None
                },
                form: *pick(rng, &[LenForm::Minimal, LenForm::Ext16, LenForm::Ext64]),
                declared: n as u64,
                payload: random_bytes(rng, n),
            };
            ("random-frame", f.encode())
        }
        5 => {
            // Control frames: oversized, fragmented, odd close payloads.
            let opcode = *pick(rng, &[8u8, 9, 10]);
            let payload = match rng.random_range(0..5) {
                0 => random_bytes_in(rng, 126..400),
                1 => vec![0x03],
                2 => {
                    let code: u16 =
                        *pick(rng, &[0, 999, 1004, 1005, 1006, 1015, 2999, 5000, 65535]);
                    code.to_be_bytes().to_vec()
                }
                3 => [&1000u16.to_be_bytes()[..], b"\xff\xfe bad utf-8"].concat(),
                _ => random_bytes_in(rng, 0..126),
            };
            let mut f = RawFrame::new(opcode, payload, rng);
            f.fin = rng.random_bool(0.5);
            ("control", f.encode())
        }
        6 => {
            // Fragmentation, right or wrong.
            let text = pusher_text(rng, cx).into_bytes();
            let mut out = Vec::new();
            let pieces = rng.random_range(1..12).min(text.len().max(1));
            let cut = text.len() / pieces;
            for i in 0..pieces {
                let end = if i + 1 == pieces {
                    text.len()
                } else {
                    (i + 1) * cut
                };
                let chunk = text[i * cut..end].to_vec();
                let mut f = RawFrame::new(if i == 0 { 1 } else { 0 }, chunk, rng);
                f.fin = i + 1 == pieces;
                match rng.random_range(0..12) {
                    0 => f.opcode = 0, // continuation first
                    1 => f.opcode = 1, // new message inside
                    2 => out.extend(RawFrame::new(9, b"p".to_vec(), rng).encode()), // ping between
                    3 => f.fin = false, // never finished
                    _ => {}
                }
                out.extend(f.encode());
            }
            ("fragments", out)
        }
        7 => {
            // Invalid UTF-8, whole or split across fragments.
            let bad = *pick(rng, BAD_UTF8);
            let mut p = br#"{"event":"pusher:ping","data":{"x":""#.to_vec();
            let at = p.len() - 1;
            p.splice(at..at, bad.iter().copied());
            if rng.random_bool(0.5) {
                let split = at + 1;
                let mut a = RawFrame::new(1, p[..split].to_vec(), rng);
                a.fin = false;
                let b = RawFrame::new(0, p[split..].to_vec(), rng);
                ("utf8-split", [a.encode(), b.encode()].concat())
            } else {
                ("utf8", RawFrame::new(1, p, rng).encode())
            }
        }
        8 => {
            // A huge declared length, then a little payload or none.
            let declared = *pick(
                rng,
                &[
                    65_537u64,
                    1 << 20,
                    1 << 32,
                    1 << 40,
                    (1 << 63) - 1,
                    1 << 63,
                    u64::MAX,
                ],
            );
            let payload = random_bytes_in(rng, 0..64);
            let mut f = RawFrame::new(*pick(rng, &[0u8, 1, 2, 9]), payload, rng);
            f.declared = declared;
            f.form = LenForm::Ext64;
            ("huge-length", f.encode())
        }
        9 => {
            // Declared length disagrees with the payload.
            let mut f = RawFrame::text(&pusher_text(rng, cx), rng);
            let n = f.payload.len() as u64;
            f.declared = match rng.random_range(0..3) {
                0 => n.saturating_sub(rng.random_range(1..=n.max(1))),
                1 => n + rng.random_range(1..100),
                _ => rng.random_range(0..200),
            };
            f.form = *pick(rng, &[LenForm::Minimal, LenForm::Ext16, LenForm::Ext64]);
            ("wrong-length", f.encode())
        }
        10 => {
            // Non-minimal length encodings of a valid frame.
            let mut f = RawFrame::text(&pusher_text(rng, cx), rng);
            f.form = *pick(rng, &[LenForm::Ext16, LenForm::Ext64]);
            ("long-length-form", f.encode())
        }
        11 => {
            let mut b = RawFrame::text(&pusher_text(rng, cx), rng).encode();
            let keep = rng.random_range(0..b.len());
            b.truncate(keep);
            ("truncated", b)
        }
        12 => {
            let mut f = RawFrame::text(&pusher_text(rng, cx), rng);
            f.mask = None;
            ("unmasked", f.encode())
        }
        13 => ("garbage", random_bytes_in(rng, 1..200)),
        14 => {
            // Around the transport cap (64 KiB).
            let size = (64 * 1024 + rng.random_range(-40i64..40)) as usize;
            let head = r#"{"event":"pusher:ping","data":{"pad":""#;
            let pad = size.saturating_sub(head.len() + 3);
            let text = format!("{head}{}\"}}}}", "z".repeat(pad));
            let mut f = RawFrame::text(&text, rng);
            if rng.random_bool(0.3) {
                // Same size in many fragments.
                let mut out = Vec::new();
                let chunks: Vec<Vec<u8>> = f.payload.chunks(4096).map(<[u8]>::to_vec).collect();
                let last = chunks.len() - 1;
                for (i, c) in chunks.into_iter().enumerate() {
                    let mut g = RawFrame::new(if i == 0 { 1 } else { 0 }, c, rng);
                    g.fin = i == last;
                    out.extend(g.encode());
                }
                return ("cap-fragments", out);
            }
            f.rsv = 0;
            ("cap", f.encode())
        }
        15 => {
            // Many tiny fragments.
            let text = pusher_text(rng, cx).into_bytes();
            let mut out = Vec::new();
            let last = text.len().saturating_sub(1);
            for (i, b) in text.iter().enumerate() {
                let mut g = RawFrame::new(if i == 0 { 1 } else { 0 }, vec![*b], rng);
                g.fin = i == last;
                out.extend(g.encode());
            }
            ("tiny-fragments", out)
        }
        _ => {
            let code = *pick(rng, &[1000u16, 1001, 1002, 3000, 4000, 4999]);
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice(weird_string(rng, 20).as_bytes());
            payload.truncate(125);
            ("close", RawFrame::new(8, payload, rng).encode())
        }
    }
}

/// The handshake request line and headers; mostly valid for app 1.
fn ws_handshake(rng: &mut StdRng, addr: SocketAddr) -> (bool, String, String, Vec<u8>) {
    let valid = rng.random_bool(0.85);
    let (key, path) = if valid {
        (
            KEY.to_string(),
            format!("/app/{KEY}?protocol=7&client=js&version=8.6.0"),
        )
    } else {
        let (_, k, _) = *pick(rng, APPS);
        let path = match rng.random_range(0..6) {
            0 => format!(
                "/app/{k}?protocol={}",
                pick(rng, &["4", "8", "x", "", "7&protocol=5", "%37"])
            ),
            1 => format!(
                "/app/{}",
                weird_string(rng, 20).replace(['?', '#', ' ', '\r', '\n'], "")
            ),
            2 => format!("/app/{k}/extra"),
            3 => "/app/".into(),
            4 => format!("/apps/1/{k}"),
            _ => format!("/app/{k}"),
        };
        (k.to_string(), path)
    };
    let secret = APPS
        .iter()
        .find(|(_, k, _)| *k == key)
        .map(|(_, _, s)| s.to_string())
        .unwrap_or_else(|| SECRET.to_string());
    let path: String = path.chars().filter(|c| c.is_ascii_graphic()).collect();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    (valid, key, secret, req.into_bytes())
}

async fn ws_case(rng: &mut StdRng, addr: SocketAddr) -> Outcome {
    let (valid, key, secret, handshake) = ws_handshake(rng, addr);
    let mut out = Outcome {
        case: 0,
        kind: if valid { "ws" } else { "ws-odd-handshake" },
        sent: show(&handshake, 120),
        answer: String::new(),
        problem: None,
        events: Vec::new(),
    };
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await
    else {
        out.answer = "connect failed".into();
        out.problem = Some("could not connect".into());
        return out;
    };
    let hs_line = String::from_utf8_lossy(&handshake)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    if !write_parts(&mut stream, &[handshake]).await {
        out.answer = "handshake write failed".into();
        return out;
    }
    // Response head, then whatever frames came with it.
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break Some(i + 4);
        }
        if Instant::now() >= deadline || !read_once(&mut stream, &mut buf).await {
            break None;
        }
    };
    let Some(head_end) = head_end else {
        out.answer = "no handshake answer".into();
        if valid {
            out.problem = Some(format!(
                "no answer to a valid handshake: {}",
                show(&buf, 200)
            ));
        }
        return out;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    if !head.starts_with("HTTP/1.1 101") {
        out.answer = head.lines().next().unwrap_or("").to_string();
        if valid {
            out.problem = Some(format!("valid handshake refused: {head}"));
        }
        return out;
    }
    let mut frames = buf[head_end..].to_vec();
    // The first frame: connection_established (or a refusal for odd handshakes).
    while parse_server_frames(&frames).0.is_empty()
        && Instant::now() < deadline
        && read_once(&mut stream, &mut frames).await
    {}
    let (first, _) = parse_server_frames(&frames);
    let socket_id = first.first().and_then(|f| {
        let v: Value = serde_json::from_slice(&f.payload).ok()?;
        let data: Value = serde_json::from_str(v["data"].as_str()?).ok()?;
        data["socket_id"].as_str().map(str::to_string)
    });
    if valid && socket_id.is_none() {
        out.answer = "no connection_established".into();
        out.problem = Some(format!(
            "valid handshake without connection_established: {}",
            show(&frames, 300)
        ));
        return out;
    }
    let cx = WsCtx {
        socket_id,
        key,
        secret,
    };

    // The fuzz: a few steps, in one write or several.
    let steps = rng.random_range(1..=6);
    let mut parts = Vec::new();
    let mut what = Vec::new();
    for _ in 0..steps {
        let (w, b) = ws_step(rng, &cx);
        what.push(w);
        parts.push(b);
    }
    if rng.random_bool(0.3) {
        parts = vec![parts.concat()];
    }
    if rng.random_bool(0.2) {
        // End with a proper close.
        parts.push(RawFrame::new(8, 1000u16.to_be_bytes().to_vec(), rng).encode());
        what.push("close-1000");
    }
    out.kind = if valid { pick_kind(&what) } else { out.kind };
    out.sent = format!(
        "{} | {} | {}",
        show(hs_line.as_bytes(), 100),
        what.join("+"),
        show(&parts.concat(), 400)
    );
    let wrote = write_parts(&mut stream, &parts).await;
    let end = read_bounded(&mut stream, &mut frames, READ_IDLE).await;
    let (frames, rest) = parse_server_frames(&frames);
    let close: Option<String> = frames.iter().find(|f| f.opcode == 8).map(|f| {
        if f.payload.len() >= 2 {
            u16::from_be_bytes([f.payload[0], f.payload[1]]).to_string()
        } else {
            "none".into()
        }
    });
    out.answer = match &close {
        Some(code) => format!("close {code}"),
        None if !wrote => "write stopped".into(),
        None => format!("{end:?}").to_lowercase(),
    };
    if let Some(p) = frames.iter().find_map(check_server_frame) {
        out.problem = Some(p);
    }
    for f in frames.iter().filter(|f| f.opcode == 1) {
        if let Ok(v) = serde_json::from_slice::<Value>(&f.payload) {
            let event = v["event"].as_str().unwrap_or("?");
            out.events.push(match event {
                "pusher:error" => format!("pusher:error {}", v["data"]["code"]),
                e if e.starts_with("pusher") => e.to_string(),
                _ => "(channel or client event)".to_string(),
            });
        }
    }
    if rest > 0 && end == ReadEnd::Eof && close.is_none() {
        // The server never truncates a frame before closing cleanly... unless it reset; keep
        // it as a note only.
        out.answer.push_str(" (partial frame)");
    }
    out
}

/// The most telling kind among the steps of a case.
fn pick_kind(what: &[&'static str]) -> &'static str {
    what.iter()
        .copied()
        .find(|w| *w != "pusher" && *w != "close-1000")
        .unwrap_or("pusher")
}

/// One read of what is there (waiting up to 1 s); false on EOF or error.
async fn read_once(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut tmp = vec![0u8; 16 * 1024];
    match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut tmp)).await {
        Err(_) => true,
        Ok(Ok(0)) | Ok(Err(_)) => false,
        Ok(Ok(n)) => {
            buf.extend_from_slice(&tmp[..n]);
            true
        }
    }
}

/// A frame from the server.
struct ServerFrame {
    fin: bool,
    rsv: u8,
    opcode: u8,
    masked: bool,
    payload: Vec<u8>,
}

/// Complete frames at the start of `buf`, and how many bytes are left over.
fn parse_server_frames(buf: &[u8]) -> (Vec<ServerFrame>, usize) {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        let b = &buf[at..];
        if b.len() < 2 {
            break;
        }
        let masked = b[1] & 0x80 != 0;
        let (len, mut off) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(n), 10)
            }
            126 | 127 => break,
            n => (u64::from(n), 2),
        };
        if masked {
            off += 4;
        }
        let Ok(len) = usize::try_from(len) else { break };
        if b.len() < off + len {
            break;
        }
        frames.push(ServerFrame {
            fin: b[0] & 0x80 != 0,
            rsv: (b[0] >> 4) & 7,
            opcode: b[0] & 0x0f,
            masked,
            payload: b[off..off + len].to_vec(),
        });
        at += off + len;
    }
    (frames, buf.len() - at)
}

/// What is wrong with a frame the server sent, if anything.
fn check_server_frame(f: &ServerFrame) -> Option<String> {
    if f.masked {
        return Some("server frame is masked".into());
    }
    if f.rsv != 0 {
        return Some(format!("server frame has RSV bits {:#b}", f.rsv));
    }
    match f.opcode {
        1 => {
            if !f.fin {
                return None;
            }
            let Ok(text) = std::str::from_utf8(&f.payload) else {
                return Some(format!(
                    "server text frame is not UTF-8: {}",
                    show(&f.payload, 200)
                ));
            };
            match serde_json::from_str::<Value>(text) {
                Ok(v) if v["event"].is_string() => None,
                _ => Some(format!("server text frame is not a Pusher event: {text}")),
            }
        }
        8 => match f.payload.len() {
            0 => None,
            1 => Some("server close frame with a 1-byte payload".into()),
            _ => {
                let code = u16::from_be_bytes([f.payload[0], f.payload[1]]);
                let ok = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
                if !ok {
                    return Some(format!("server close code {code} is not valid on the wire"));
                }
                std::str::from_utf8(&f.payload[2..])
                    .err()
                    .map(|_| "server close reason is not UTF-8".into())
            }
        },
        9 | 10 => (f.payload.len() > 125).then(|| "server control frame over 125 bytes".into()),
        op => Some(format!("server sent opcode {op}")),
    }
}

// ---------------------------------------------------------------------------------------
// HTTP cases
// ---------------------------------------------------------------------------------------

/// A signed query string for app 1 (or `key`/`secret`) per PUSHER-SPEC 2.1.
fn signed_query(
    method: &str,
    path: &str,
    extra: &[(String, String)],
    body: &[u8],
    creds: (&str, &str),
) -> String {
    let mut params = extra.to_vec();
    params.push(("auth_key".into(), creds.0.into()));
    params.push(("auth_timestamp".into(), now_unix().to_string()));
    params.push(("auth_version".into(), "1.0".into()));
    if !body.is_empty() {
        params.push(("body_md5".into(), pushi::auth::md5_hex(body)));
    }
    let to_sign = pushi::auth::request_string(method, path, &params);
    params.push((
        "auth_signature".into(),
        pushi::auth::sign(creds.1, to_sign.as_bytes()),
    ));
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter())
        .finish()
}

fn http_bytes(method: &str, target: &str, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
    for (k, v) in headers {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn std_headers(addr: SocketAddr, body: &[u8]) -> Vec<(String, String)> {
    let mut h = vec![("Host".to_string(), addr.to_string())];
    if !body.is_empty() {
        h.push(("Content-Type".into(), "application/json".into()));
        h.push(("Content-Length".into(), body.len().to_string()));
    }
    h
}

/// A random body for an events / batch_events request, usually well-formed JSON.
fn event_json(rng: &mut StdRng) -> Value {
    let mut ev = serde_json::Map::new();
    let name = match rng.random_range(0..6) {
        0 => json!(""),
        1 => json!("e".repeat(rng.random_range(190..210))),
        2 => serde_json::from_str(&json_text(rng, 1)).unwrap_or(Value::Null),
        _ => json!(format!("fuzz-{}", name_chars(rng, 6))),
    };
    ev.insert("name".into(), name);
    match rng.random_range(0..4) {
        0 => {
            ev.insert("channel".into(), json!(channel_name(rng)));
        }
        1 => {
            let n = *pick(rng, &[0usize, 1, 3, 100, 101]);
            let list: Vec<String> = (0..n).map(|_| channel_name(rng)).collect();
            ev.insert("channels".into(), json!(list));
        }
        2 => {
            ev.insert(
                "channels".into(),
                serde_json::from_str(&json_text(rng, 2)).unwrap_or(Value::Null),
            );
        }
        _ => {}
    }
    let data = match rng.random_range(0..5) {
        0 => json!("d".repeat(rng.random_range(10 * 1024 - 20..10 * 1024 + 20))),
        1 => serde_json::from_str(&json_text(rng, 2)).unwrap_or(Value::Null),
        _ => json!(json_text(rng, 2)),
    };
    ev.insert("data".into(), data);
    if rng.random_bool(0.3) {
        let sid = match rng.random_range(0..4) {
            0 => json!("1.2"),
            1 => json!("99999999999999999999999.1"),
            2 => json!(weird_string(rng, 10)),
            _ => json!(rng.random::<u32>()),
        };
        ev.insert("socket_id".into(), sid);
    }
    if rng.random_bool(0.3) {
        ev.insert(
            "info".into(),
            json!(pick(
                rng,
                &[
                    "user_count",
                    "subscription_count",
                    "x",
                    "",
                    "user_count,subscription_count"
                ]
            )),
        );
    }
    Value::Object(ev)
}

/// An API request before signing.
struct ApiReq {
    method: String,
    path: String,
    /// Query parameters besides the auth ones.
    extra: Vec<(String, String)>,
    body: Vec<u8>,
}

impl ApiReq {
    /// The request signed for app 1, as bytes on the wire.
    fn signed_bytes(&self, addr: SocketAddr) -> Vec<u8> {
        let q = signed_query(
            &self.method,
            &self.path,
            &self.extra,
            &self.body,
            (KEY, SECRET),
        );
        http_bytes(
            &self.method,
            &format!("{}?{q}", self.path),
            &std_headers(addr, &self.body),
            &self.body,
        )
    }
}

/// A random API request under `/apps/1/` (random endpoint, query and body).
fn signed_random(rng: &mut StdRng) -> ApiReq {
    let ch = percent_encoding::utf8_percent_encode(
        &channel_name(rng),
        percent_encoding::NON_ALPHANUMERIC,
    )
    .to_string();
    let (method, tail, body): (&str, String, Vec<u8>) = match rng.random_range(0..9) {
        0..=2 => (
            "POST",
            "events".into(),
            event_json(rng).to_string().into_bytes(),
        ),
        3 => {
            let n = *pick(rng, &[0usize, 1, 5, 10, 11]);
            let batch: Vec<Value> = (0..n).map(|_| event_json(rng)).collect();
            let body = if rng.random_bool(0.9) {
                json!({ "batch": batch })
            } else {
                serde_json::from_str(&json_text(rng, 3)).unwrap_or(Value::Null)
            };
            ("POST", "batch_events".into(), body.to_string().into_bytes())
        }
        4 => ("GET", "channels".into(), Vec::new()),
        5 => ("GET", format!("channels/{ch}"), Vec::new()),
        6 => ("GET", format!("channels/{ch}/users"), Vec::new()),
        7 => (
            "POST",
            format!("users/{}/terminate_connections", name_chars(rng, 5)),
            Vec::new(),
        ),
        _ => (
            *pick(rng, &["GET", "POST", "PUT", "DELETE"]),
            weird_string(rng, 30)
                .chars()
                .filter(|c| c.is_ascii_graphic() && *c != '?' && *c != '#')
                .collect(),
            random_bytes_in(rng, 0..100),
        ),
    };
    let method = if rng.random_bool(0.1) {
        *pick(rng, &["GET", "POST", "PATCH"])
    } else {
        method
    };
    let mut extra = Vec::new();
    if rng.random_bool(0.5) {
        extra.push((
            "info".to_string(),
            pick(
                rng,
                &[
                    "user_count",
                    "subscription_count",
                    "user_count,subscription_count",
                    "x,,",
                    "",
                ],
            )
            .to_string(),
        ));
    }
    if rng.random_bool(0.3) {
        extra.push((
            "filter_by_prefix".into(),
            pick(rng, &["presence-", "private-", "", "fuzz"]).to_string(),
        ));
    }
    if rng.random_bool(0.2) {
        extra.push((weird_string(rng, 8), weird_string(rng, 8)));
    }
    ApiReq {
        method: method.to_string(),
        path: format!("/apps/1/{tail}"),
        extra,
        body,
    }
}

/// One random HTTP request (as raw byte parts), and what kind it is.
fn http_request(rng: &mut StdRng, addr: SocketAddr) -> (&'static str, Vec<Vec<u8>>, bool) {
    let creds = (KEY, SECRET);
    match rng.random_range(0..14) {
        0 => {
            let mut line = random_bytes_in(rng, 1..300);
            if rng.random_bool(0.5) {
                line.extend_from_slice(b"\r\n");
            }
            line.extend_from_slice(b"\r\n\r\n");
            ("garbage", vec![line], false)
        }
        1 => {
            let method = pick(
                rng,
                &[
                    "GE T", "get", "FOO", "", "\x00GET", "GET GET", "CONNECT", "OPTIONS", "TRACE",
                    "PATCH", "DELETE", "HEAD", "PRI",
                ],
            );
            let method = if rng.random_bool(0.1) {
                "A".repeat(rng.random_range(100..20_000))
            } else {
                method.to_string()
            };
            let version = pick(
                rng,
                &[
                    "HTTP/1.1",
                    "HTTP/1.0",
                    "HTTP/2.0",
                    "HTTP/9.9",
                    "HTTP/1.1 extra",
                    "http/1.1",
                    "",
                ],
            );
            let path = pick(
                rng,
                &[
                    "/apps/1/events",
                    "/apps/1/channels",
                    "/up",
                    "/",
                    "*",
                    "/app/app-key",
                    "http://x/apps/1/channels",
                ],
            );
            let req = format!("{method} {path} {version}\r\nHost: {addr}\r\n\r\n");
            ("bad-method", vec![req.into_bytes()], false)
        }
        2 => {
            // Odd headers on a (signed) request.
            let ApiReq {
                method,
                path,
                extra,
                body,
            } = signed_random(rng);
            let q = signed_query(&method, &path, &extra, &body, creds);
            let mut headers = std_headers(addr, &body);
            match rng.random_range(0..10) {
                0 => headers.push(("X-Big".into(), "v".repeat(rng.random_range(8_000..200_000)))),
                1 => {
                    for i in 0..rng.random_range(50..400) {
                        headers.push((format!("X-H{i}"), "x".into()));
                    }
                }
                2 => headers.push(("Bad Name".into(), "x".into())),
                3 => headers.push(("X-Fold".into(), "a\r\n  folded".into())),
                4 => headers.push(("Content-Length".into(), (body.len() + 3).to_string())),
                5 => headers.push(("Transfer-Encoding".into(), "chunked".into())),
                6 => {
                    headers.retain(|(k, _)| k != "Content-Length");
                    headers.push((
                        "Content-Length".into(),
                        pick(
                            rng,
                            &["-1", "99999999999999999999999", "1,2", " 5", "0x10", ""],
                        )
                        .to_string(),
                    ));
                }
                7 => headers.push(("Expect".into(), "100-continue".into())),
                8 => headers.retain(|(k, _)| k != "Host"),
                _ => headers.push((
                    weird_string(rng, 10).replace(['\r', '\n', ':'], ""),
                    weird_string(rng, 30).replace(['\r', '\n'], ""),
                )),
            }
            let req = http_bytes(&method, &format!("{path}?{q}"), &headers, &body);
            ("odd-headers", vec![req], rng.random_bool(0.3))
        }
        3 | 4 => {
            let mut req = signed_random(rng).signed_bytes(addr);
            mutate(rng, &mut req);
            ("signed-mutated", vec![req], rng.random_bool(0.3))
        }
        5..=7 => {
            let req = signed_random(rng).signed_bytes(addr);
            ("signed-random", vec![req], false)
        }
        8 => {
            // Chunked bodies with bad sizes.
            let body = event_json(rng).to_string().into_bytes();
            let path = "/apps/1/events";
            let q = signed_query("POST", path, &[], &body, creds);
            let head = format!(
                "POST {path}?{q} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            let mut chunks = Vec::new();
            for piece in body.chunks(rng.random_range(1..200)) {
                chunks.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                chunks.extend_from_slice(piece);
                chunks.extend_from_slice(b"\r\n");
            }
            let size = pick(
                rng,
                &[
                    "zz",
                    "-1",
                    "ffffffffffffffffff",
                    "1;ext=1",
                    " 5",
                    "5 ",
                    "7fffffff",
                    "100000",
                ],
            );
            match rng.random_range(0..5) {
                0 => chunks.extend_from_slice(format!("{size}\r\nabc\r\n0\r\n\r\n").as_bytes()),
                1 => {} // no final chunk
                2 => chunks.extend_from_slice(b"0\r\nX-Trailer: 1\r\n\r\n"),
                3 => {
                    // Over the body limit.
                    for _ in 0..64 {
                        chunks.extend_from_slice(b"2000\r\n");
                        chunks.extend_from_slice(&[b' '; 0x2000]);
                        chunks.extend_from_slice(b"\r\n");
                    }
                    chunks.extend_from_slice(b"0\r\n\r\n");
                }
                _ => {
                    let at = rng.random_range(0..chunks.len().max(1));
                    chunks.truncate(at);
                }
            }
            (
                "chunked",
                vec![head.into_bytes(), chunks],
                rng.random_bool(0.5),
            )
        }
        9 => {
            // Truncated body.
            let mut r = signed_random(rng);
            if r.body.is_empty() {
                r.body = br#"{"name":"x","channel":"fuzz-t","data":"1"}"#.to_vec();
            }
            let mut req = r.signed_bytes(addr);
            let cut = rng.random_range(1..=r.body.len());
            req.truncate(req.len() - cut);
            ("truncated-body", vec![req], rng.random_bool(0.5))
        }
        10 => {
            let segs = [
                "events",
                "batch_events",
                "channels",
                "users",
                "terminate_connections",
                "..",
                "",
                "%00",
                "%ff",
                "%zz",
                "x",
            ];
            let n = rng.random_range(0..5);
            let tail: Vec<&str> = (0..n).map(|_| *pick(rng, &segs)).collect();
            let base = pick(
                rng,
                &[
                    "/apps/1/",
                    "/apps/",
                    "/apps/999/",
                    "/apps/3/",
                    "/app/",
                    "/app/app-key/",
                    "/users/",
                    "/up/",
                    "/metrics/",
                    "//",
                    "/",
                ],
            );
            let long = if rng.random_bool(0.05) {
                "p".repeat(rng.random_range(1000..70_000))
            } else {
                String::new()
            };
            let query = if rng.random_bool(0.5) {
                format!(
                    "?{}",
                    weird_string(rng, 40).replace([' ', '\r', '\n', '#'], "+")
                )
            } else {
                String::new()
            };
            let target: String = format!("{base}{}{long}{query}", tail.join("/"))
                .chars()
                .filter(|c| !c.is_control() && *c != ' ')
                .collect();
            let method = pick(rng, &["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"]);
            let body = if *method == "POST" {
                random_bytes_in(rng, 0..64)
            } else {
                Vec::new()
            };
            let req = http_bytes(method, &target, &std_headers(addr, &body), &body);
            ("random-path", vec![req], false)
        }
        11 => {
            let mut reqs = Vec::new();
            for _ in 0..rng.random_range(2..6) {
                let mut r = signed_random(rng).signed_bytes(addr);
                if rng.random_bool(0.2) {
                    mutate(rng, &mut r);
                }
                reqs.extend(r);
            }
            ("pipelined", vec![reqs], rng.random_bool(0.5))
        }
        12 => {
            let path = pick(
                rng,
                &[
                    "/app/app-key",
                    "/app/app-key?protocol=7",
                    "/apps/1/events",
                    "/x",
                    "/app/",
                ],
            );
            let key = pick(
                rng,
                &[
                    "",
                    "not base64!",
                    "dGhlIHNhbXBsZSBub25jZQ==",
                    "AAAA",
                    "dGhlIHNhbXBsZSBub25jZQ",
                ],
            );
            let version = pick(rng, &["13", "8", "14", "", "13, 8"]);
            let mut h = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n");
            if rng.random_bool(0.8) {
                h.push_str(&format!("Sec-WebSocket-Key: {key}\r\n"));
            }
            if rng.random_bool(0.8) {
                h.push_str(&format!("Sec-WebSocket-Version: {version}\r\n"));
            }
            h.push_str("\r\n");
            ("bad-upgrade", vec![h.into_bytes()], false)
        }
        _ => {
            let req = if rng.random_bool(0.5) {
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()
            } else {
                let mut r = format!("GET /up HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes();
                mutate(rng, &mut r);
                r
            };
            ("h2-or-mutated-up", vec![req], false)
        }
    }
}

async fn http_case(rng: &mut StdRng, addr: SocketAddr) -> Outcome {
    // A positive control now and then: a valid publish must succeed during the fuzzing.
    let control = rng.random_bool(0.06);
    let (kind, parts, half_close) = if control {
        let body = json!({"name": "fuzz-control", "channel": format!("fuzz-control-{}", rng.random::<u16>()), "data": "{}"})
            .to_string()
            .into_bytes();
        let req = ApiReq {
            method: "POST".into(),
            path: "/apps/1/events".into(),
            extra: Vec::new(),
            body,
        };
        ("http-control", vec![req.signed_bytes(addr)], false)
    } else {
        http_request(rng, addr)
    };
    let mut out = Outcome {
        case: 0,
        kind,
        sent: show(&parts.concat(), 400),
        answer: String::new(),
        problem: None,
        events: Vec::new(),
    };
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await
    else {
        out.answer = "connect failed".into();
        out.problem = Some("could not connect".into());
        return out;
    };
    let wrote = write_parts(&mut stream, &parts).await;
    if half_close {
        let _ = stream.shutdown().await;
    }
    let mut buf = Vec::new();
    let end = if control {
        // A valid request must be answered: wait (bounded) for its head, not for an idle gap.
        let deadline = Instant::now() + Duration::from_secs(3);
        while !buf.windows(4).any(|w| w == b"\r\n\r\n")
            && Instant::now() < deadline
            && read_once(&mut stream, &mut buf).await
        {}
        ReadEnd::Idle
    } else {
        read_bounded(&mut stream, &mut buf, READ_IDLE).await
    };
    let status: Option<u16> = buf
        .strip_prefix(b"HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok());
    out.answer = match status {
        Some(s) => s.to_string(),
        None if buf.is_empty() => format!(
            "no answer ({end:?}{})",
            if wrote { "" } else { ", write stopped" }
        )
        .to_lowercase(),
        None => "unparsable".into(),
    };
    if !buf.is_empty() && status.is_none() {
        out.problem = Some(format!(
            "answer is not an HTTP response: {}",
            show(&buf, 300)
        ));
    } else if let Some(s) = status.filter(|s| *s >= 500 && *s != 505) {
        out.problem = Some(format!("server error {s}: {}", show(&buf, 500)));
    } else if control && status != Some(200) {
        out.problem = Some(format!(
            "valid publish not answered 200 during the fuzzing: {}",
            show(&buf, 500)
        ));
    }
    out
}
