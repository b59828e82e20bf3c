//! [`Reader`]: client-to-server WebSocket frames (RFC 6455 5) parsed from the bytes a socket
//! delivered, into whole messages.
//!
//! Untrusted input: every rule a server must enforce is checked here, before any payload is
//! buffered where a length allows it (a 2 GiB length in a header fails at once, it does not
//! wait for the bytes). `tests/prop_wire.rs` runs this parser against tungstenite's on
//! random frames, fragmentations and read boundaries.
//!
//! Memory: the reader holds bytes only while a frame or a fragmented message is incomplete;
//! an idle connection's reader owns no buffer at all.

use std::fmt;

/// Opcodes (RFC 6455 5.2).
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// One whole message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A text message (valid UTF-8).
    Text(String),
    /// A binary message (pushi refuses those; its content is not kept).
    Binary,
    /// A ping, with the payload the pong must echo.
    Ping(Vec<u8>),
    /// A pong.
    Pong,
    /// A close frame, with its status code when it had one.
    Close(Option<u16>),
}

/// Why the client's bytes are not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// A violation of RFC 6455 (close with 1002).
    Protocol(&'static str),
    /// A frame or message larger than the limit (close with 1009).
    TooBig,
    /// A text message that is not UTF-8 (close with 1007).
    Utf8,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Protocol(why) => write!(f, "protocol error: {why}"),
            ReadError::TooBig => f.write_str("message too big"),
            ReadError::Utf8 => f.write_str("text message is not UTF-8"),
        }
    }
}

/// A fragmented message being assembled (RFC 6455 5.4).
#[derive(Debug)]
struct Fragmented {
    text: bool,
    data: Vec<u8>,
}

/// Incremental parser of one connection's client frames.
#[derive(Debug)]
pub struct Reader {
    /// Bytes received and not parsed yet: empty, with no capacity, between messages.
    buf: Vec<u8>,
    /// The message whose first fragment arrived and whose last has not.
    fragmented: Option<Box<Fragmented>>,
    /// Largest frame payload, and largest message, accepted.
    max: usize,
}

impl Reader {
    /// A reader accepting messages up to `max` bytes.
    pub fn new(max: usize) -> Reader {
        Reader {
            buf: Vec::new(),
            fragmented: None,
            max,
        }
    }

    /// Adds bytes read from the socket. Call [`Reader::message`] until it returns `Ok(None)`.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole message from the bytes fed so far, `Ok(None)` when more bytes are
    /// needed. After an error the connection must be closed: the stream is out of step.
    pub fn message(&mut self) -> Result<Option<Inbound>, ReadError> {
        loop {
            let Some((frame, used)) = self.frame()? else {
                return Ok(None);
            };
            let Frame {
                fin,
                opcode,
                payload,
            } = frame;
            self.consume(used);
            match opcode {
                PING => return Ok(Some(Inbound::Ping(payload))),
                PONG => return Ok(Some(Inbound::Pong)),
                CLOSE => return close(&payload).map(Some),
                CONTINUATION => {
                    let Some(mut message) = self.fragmented.take() else {
                        return Err(ReadError::Protocol("continuation frame with no message"));
                    };
                    message.data.extend_from_slice(&payload);
                    if !fin {
                        self.fragmented = Some(message);
                        continue;
                    }
                    return whole(message.text, message.data).map(Some);
                }
                // TEXT or BINARY: `frame` refused every other opcode.
                _ => {
                    if self.fragmented.is_some() {
                        return Err(ReadError::Protocol(
                            "new data frame inside a fragmented message",
                        ));
                    }
                    let text = opcode == TEXT;
                    if !fin {
                        self.fragmented = Some(Box::new(Fragmented {
                            text,
                            data: payload,
                        }));
                        continue;
                    }
                    return whole(text, payload).map(Some);
                }
            }
        }
    }

    /// Drops `used` parsed bytes; frees the buffer when nothing is left in it.
    fn consume(&mut self, used: usize) {
        if used >= self.buf.len() {
            self.buf = Vec::new();
        } else {
            self.buf.drain(..used);
        }
    }

    /// Parses the frame at the start of the buffer: the frame and the bytes it took, or
    /// `None` when it is not complete yet.
    fn frame(&self) -> Result<Option<(Frame, usize)>, ReadError> {
        let buf = &self.buf[..];
        let [b0, b1, ..] = *buf else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        // No extension is ever negotiated, so the RSV bits must be clear (RFC 6455 5.2).
        if b0 & 0x70 != 0 {
            return Err(ReadError::Protocol("reserved bits set"));
        }
        let opcode = b0 & 0x0F;
        let control = opcode & 0x08 != 0;
        match opcode {
            CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG => {}
            _ => return Err(ReadError::Protocol("reserved opcode")),
        }
        // RFC 6455 5.1: a server must close the connection on an unmasked client frame.
        if b1 & 0x80 == 0 {
            return Err(ReadError::Protocol("unmasked client frame"));
        }
        let (len, at) = match b1 & 0x7F {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => {
                    let len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                    if len >> 63 != 0 {
                        return Err(ReadError::Protocol("frame length has its top bit set"));
                    }
                    (len, 10)
                }
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        if control {
            // RFC 6455 5.5: control frames are not fragmented and carry at most 125 bytes.
            if !fin {
                return Err(ReadError::Protocol("fragmented control frame"));
            }
            if len > 125 {
                return Err(ReadError::Protocol("control frame longer than 125 bytes"));
            }
        } else {
            // Checked before the payload arrives, so a huge length costs nothing.
            let so_far = self.fragmented.as_ref().map_or(0, |m| m.data.len());
            if len > self.max as u64 || so_far as u64 + len > self.max as u64 {
                return Err(ReadError::TooBig);
            }
        }
        let len = len as usize;
        let Some(mask) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        let mask = [mask[0], mask[1], mask[2], mask[3]];
        let start = at + 4;
        let Some(masked) = buf.get(start..start + len) else {
            return Ok(None);
        };
        let payload = masked
            .iter()
            .zip(mask.iter().cycle())
            .map(|(b, m)| b ^ m)
            .collect();
        Ok(Some((
            Frame {
                fin,
                opcode,
                payload,
            },
            start + len,
        )))
    }
}

/// One parsed frame.
struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// A complete data message.
fn whole(text: bool, data: Vec<u8>) -> Result<Inbound, ReadError> {
    if !text {
        return Ok(Inbound::Binary);
    }
    String::from_utf8(data)
        .map(Inbound::Text)
        .map_err(|_| ReadError::Utf8)
}

/// A close frame's payload: empty, or a valid status code and a UTF-8 reason (RFC 6455
/// 5.5.1, 7.4).
fn close(payload: &[u8]) -> Result<Inbound, ReadError> {
    match payload {
        [] => Ok(Inbound::Close(None)),
        [_] => Err(ReadError::Protocol("close frame with a 1-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !sendable_close_code(code) {
                return Err(ReadError::Protocol("invalid close code"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(ReadError::Utf8);
            }
            Ok(Inbound::Close(Some(code)))
        }
    }
}

/// Codes an endpoint may put in a close frame (RFC 6455 7.4.1, 7.4.2): 1000–1003,
/// 1007–1014 and 3000–4999. 1004–1006 and 1015 are reserved for other uses.
fn sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    pub(crate) fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut out = vec![b0];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        out
    }

    fn parse_all(bytes: &[u8], max: usize) -> Vec<Result<Inbound, ReadError>> {
        let mut r = Reader::new(max);
        r.feed(bytes);
        let mut out = Vec::new();
        loop {
            match r.message() {
                Ok(Some(m)) => out.push(Ok(m)),
                Ok(None) => return out,
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }

    #[test]
    fn text_byte_by_byte_then_buffer_freed() {
        let frame = client_frame(0x81, b"{\"event\":\"pusher:ping\",\"data\":{}}");
        let mut r = Reader::new(1024);
        for (i, b) in frame.iter().enumerate() {
            r.feed(std::slice::from_ref(b));
            let got = r.message().unwrap();
            if i + 1 < frame.len() {
                assert_eq!(got, None);
            } else {
                assert_eq!(
                    got,
                    Some(Inbound::Text(
                        "{\"event\":\"pusher:ping\",\"data\":{}}".into()
                    ))
                );
            }
        }
        assert!(r.fragmented.is_none());
        assert_eq!(r.buf.capacity(), 0);
    }

    #[test]
    fn fragments_with_a_ping_between() {
        let mut bytes = client_frame(0x01, b"hel");
        bytes.extend(client_frame(0x89, b"p"));
        bytes.extend(client_frame(0x80, b"lo"));
        assert_eq!(
            parse_all(&bytes, 1024),
            vec![
                Ok(Inbound::Ping(b"p".to_vec())),
                Ok(Inbound::Text("hello".into()))
            ]
        );
    }

    #[test]
    fn violations() {
        let unmasked = vec![0x81, 0x01, b'x'];
        assert_eq!(
            parse_all(&unmasked, 1024),
            vec![Err(ReadError::Protocol("unmasked client frame"))]
        );
        assert!(matches!(
            parse_all(&client_frame(0xC1, b"x"), 1024)[0],
            Err(ReadError::Protocol(_))
        ));
        assert!(matches!(
            parse_all(&client_frame(0x83, b"x"), 1024)[0],
            Err(ReadError::Protocol(_))
        ));
        assert!(matches!(
            parse_all(&client_frame(0x09, b"x"), 1024)[0],
            Err(ReadError::Protocol(_))
        ));
        assert!(matches!(
            parse_all(&client_frame(0x89, &[0; 126]), 1024)[0],
            Err(ReadError::Protocol(_))
        ));
        assert!(matches!(
            parse_all(&client_frame(0x80, b"x"), 1024)[0],
            Err(ReadError::Protocol(_))
        ));
        assert_eq!(
            parse_all(&client_frame(0x81, &[0xFF]), 1024),
            vec![Err(ReadError::Utf8)]
        );
        assert_eq!(
            parse_all(&client_frame(0x88, &[0x03]), 1024),
            vec![Err(ReadError::Protocol(
                "close frame with a 1-byte payload"
            ))]
        );
        assert_eq!(
            parse_all(&client_frame(0x88, &1005u16.to_be_bytes()), 1024),
            vec![Err(ReadError::Protocol("invalid close code"))]
        );
    }

    #[test]
    fn too_big_is_refused_from_the_header() {
        // Only the header of a 1 GiB frame: refused without waiting for the payload.
        let mut header = vec![0x81, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 30).to_be_bytes());
        assert_eq!(parse_all(&header, 1024), vec![Err(ReadError::TooBig)]);
        // Fragments adding up past the limit.
        let mut bytes = client_frame(0x01, &[b'a'; 600]);
        bytes.extend(client_frame(0x80, &[b'a'; 600]));
        assert_eq!(parse_all(&bytes, 1024), vec![Err(ReadError::TooBig)]);
    }

    #[test]
    fn close_with_and_without_code() {
        assert_eq!(
            parse_all(&client_frame(0x88, b""), 1024),
            vec![Ok(Inbound::Close(None))]
        );
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        assert_eq!(
            parse_all(&client_frame(0x88, &payload), 1024),
            vec![Ok(Inbound::Close(Some(1000)))]
        );
    }
}
