//! pushi's client-frame parser (`wire::Reader`) against tungstenite's, on random input:
//! messages of every kind, fragmented at random with control frames between fragments, cut
//! into random read boundaries, with one frame broken in one of the ways RFC 6455 forbids.
//! Both must yield the same messages and then fail the same way.

use std::collections::VecDeque;
use std::io::{self, Read, Write};

use proptest::prelude::*;
use pushi::wire::{Inbound, ReadError, Reader};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const MAX: usize = 4096;

/// One message before framing.
#[derive(Debug, Clone)]
enum Msg {
    Text(String, usize),
    Binary(Vec<u8>, usize),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

/// A way to break one frame.
#[derive(Debug, Clone, Copy)]
enum Breakage {
    None,
    Rsv,
    Unmasked,
    ReservedOpcode,
    LongControl,
    FragmentedControl,
    StrayContinuation,
    BadUtf8,
    TooBig,
}

fn frame(b0: u8, payload: &[u8], masked: bool, mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![b0];
    let m = if masked { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(m | n as u8),
        n @ 126..=65535 => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&mask);
        out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, k)| b ^ k));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// The client's bytes for `msgs`, data messages cut into `parts` fragments with a ping
/// between fragments.
fn encode(msgs: &[Msg], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    for msg in msgs {
        let (opcode, data, parts) = match msg {
            Msg::Text(t, p) => (1u8, t.as_bytes().to_vec(), *p),
            Msg::Binary(b, p) => (2u8, b.clone(), *p),
            Msg::Ping(p) => {
                out.extend(frame(0x89, p, true, mask));
                continue;
            }
            Msg::Pong(p) => {
                out.extend(frame(0x8A, p, true, mask));
                continue;
            }
        };
        let parts = parts.clamp(1, data.len().max(1));
        let size = data.len().div_ceil(parts).max(1);
        let chunks: Vec<&[u8]> = if data.is_empty() {
            vec![&[][..]]
        } else {
            data.chunks(size).collect()
        };
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.iter().enumerate() {
            let fin = if i == last { 0x80 } else { 0 };
            let op = if i == 0 { opcode } else { 0 };
            out.extend(frame(fin | op, chunk, true, mask));
            if i != last {
                out.extend(frame(0x89, b"mid", true, mask));
            }
        }
    }
    out
}

fn breakage(b: Breakage, mask: [u8; 4]) -> Vec<u8> {
    match b {
        Breakage::None => Vec::new(),
        Breakage::Rsv => frame(0x81 | 0x40, b"x", true, mask),
        Breakage::Unmasked => frame(0x81, b"x", false, mask),
        Breakage::ReservedOpcode => frame(0x83, b"x", true, mask),
        Breakage::LongControl => frame(0x89, &[7; 126], true, mask),
        Breakage::FragmentedControl => frame(0x09, b"x", true, mask),
        Breakage::StrayContinuation => frame(0x80, b"x", true, mask),
        Breakage::BadUtf8 => frame(0x81, &[b'a', 0xC3, 0x28], true, mask),
        Breakage::TooBig => frame(0x82, &vec![1; MAX + 1], true, mask),
    }
}

/// What a parser made of the input: messages, then how it stopped.
#[derive(Debug, PartialEq)]
struct Outcome {
    messages: Vec<String>,
    error: Option<&'static str>,
}

fn show(msg: &Inbound) -> String {
    match msg {
        Inbound::Text(t) => format!("text {t}"),
        Inbound::Binary => "binary".into(),
        Inbound::Ping(p) => format!("ping {p:?}"),
        Inbound::Pong => "pong".into(),
        Inbound::Close(c) => format!("close {c:?}"),
    }
}

fn ours(chunks: &[Vec<u8>]) -> Outcome {
    let mut reader = Reader::new(MAX);
    let mut messages = Vec::new();
    for chunk in chunks {
        reader.feed(chunk);
        loop {
            match reader.message() {
                Ok(Some(m)) => messages.push(show(&m)),
                Ok(None) => break,
                Err(e) => {
                    let class = match e {
                        ReadError::Protocol(_) => "protocol",
                        ReadError::TooBig => "too big",
                        ReadError::Utf8 => "utf8",
                    };
                    return Outcome {
                        messages,
                        error: Some(class),
                    };
                }
            }
        }
    }
    Outcome {
        messages,
        error: None,
    }
}

/// A socket that returns the chunks one read at a time, then "would block".
struct Chunks {
    chunks: VecDeque<Vec<u8>>,
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(chunk) = self.chunks.front_mut() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        chunk.drain(..n);
        if chunk.is_empty() {
            self.chunks.pop_front();
        }
        Ok(n)
    }
}

impl Write for Chunks {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn theirs(chunks: &[Vec<u8>]) -> Outcome {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX))
        .max_frame_size(Some(MAX));
    let stream = Chunks {
        chunks: chunks.iter().filter(|c| !c.is_empty()).cloned().collect(),
    };
    let mut ws = WebSocket::from_raw_socket(stream, Role::Server, Some(config));
    let mut messages = Vec::new();
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => messages.push(format!("text {}", t.as_str())),
            Ok(Message::Binary(_)) => messages.push("binary".into()),
            Ok(Message::Ping(p)) => messages.push(format!("ping {:?}", p.to_vec())),
            Ok(Message::Pong(_)) => messages.push("pong".into()),
            Ok(Message::Close(c)) => {
                messages.push(format!("close {:?}", c.map(|c| u16::from(c.code))))
            }
            Ok(Message::Frame(_)) => unreachable!("not returned by read"),
            // Input used up, or the close handshake done (the close was the last frame).
            Err(WsError::ConnectionClosed) => {
                return Outcome {
                    messages,
                    error: None,
                }
            }
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                return Outcome {
                    messages,
                    error: None,
                }
            }
            Err(e) => {
                let class = match e {
                    WsError::Protocol(_) => "protocol",
                    WsError::Capacity(_) => "too big",
                    WsError::Utf8(_) => "utf8",
                    other => panic!("unexpected error {other:?}"),
                };
                return Outcome {
                    messages,
                    error: Some(class),
                };
            }
        }
    }
}

fn msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        ("\\PC{0,300}", 1usize..5).prop_map(|(t, p)| Msg::Text(t, p)),
        (proptest::collection::vec(any::<u8>(), 0..300), 1usize..5)
            .prop_map(|(b, p)| Msg::Binary(b, p)),
        proptest::collection::vec(any::<u8>(), 0..126).prop_map(Msg::Ping),
        proptest::collection::vec(any::<u8>(), 0..126).prop_map(Msg::Pong),
        // Long enough for the 16-bit length form.
        ("[a-z]{126,2000}", 1usize..3).prop_map(|(t, p)| Msg::Text(t, p)),
    ]
}

fn breakage_kind() -> impl Strategy<Value = Breakage> {
    prop_oneof![
        4 => Just(Breakage::None),
        1 => Just(Breakage::Rsv),
        1 => Just(Breakage::Unmasked),
        1 => Just(Breakage::ReservedOpcode),
        1 => Just(Breakage::LongControl),
        1 => Just(Breakage::FragmentedControl),
        1 => Just(Breakage::StrayContinuation),
        1 => Just(Breakage::BadUtf8),
        1 => Just(Breakage::TooBig),
    ]
}

/// Cuts `bytes` at the given fractions.
fn cut(bytes: &[u8], cuts: &[u16]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|c| usize::from(*c) * bytes.len() / usize::from(u16::MAX))
        .collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn same_messages_and_same_failure_as_tungstenite(
        msgs in proptest::collection::vec(msg(), 0..8),
        broken in breakage_kind(),
        tail in proptest::collection::vec(msg(), 0..3),
        mask in any::<[u8; 4]>(),
        cuts in proptest::collection::vec(any::<u16>(), 0..12),
        close in prop_oneof![Just(None), Just(Some(1000u16)), Just(Some(4001u16))],
    ) {
        let mut bytes = encode(&msgs, mask);
        bytes.extend(breakage(broken, mask));
        bytes.extend(encode(&tail, mask));
        // A close ends the conversation: nothing after it is compared.
        if let (Breakage::None, Some(code)) = (broken, close) {
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice(b"bye");
            bytes.extend(frame(0x88, &payload, true, mask));
        }
        let chunks = cut(&bytes, &cuts);
        let ours = ours(&chunks);
        let theirs = theirs(&chunks);
        prop_assert_eq!(&ours, &theirs);
        if !matches!(broken, Breakage::None) {
            prop_assert!(ours.error.is_some(), "a broken frame must fail: {:?}", broken);
        }
    }
}
