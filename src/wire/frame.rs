//! [`Frame`]: one complete server-to-client WebSocket frame, header included, built once and
//! shared by every connection it goes to.
//!
//! RFC 6455 5.1: a server never masks its frames, so every subscriber of a channel receives
//! the very same bytes. Encoding the frame once per event (rather than once per connection
//! in a per-socket encoder) is what lets the fan-out write shared bytes straight to each
//! socket (see `outlet`).

use bytes::Bytes;

/// FIN bit: every frame pushi sends is a whole message (no fragmentation).
const FIN: u8 = 0x80;
/// Opcodes (RFC 6455 5.2).
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PONG: u8 = 0xA;

/// A complete, unmasked WebSocket frame. Cloning shares the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    /// A text frame carrying `payload`.
    pub fn text(payload: &str) -> Frame {
        Frame::encode(TEXT, payload.as_bytes())
    }

    /// A close frame with `code` and `reason` (RFC 6455 5.5.1). The reason is cut to fit
    /// the 125-byte limit of control frames, on a character boundary.
    pub fn close(code: u16, reason: &str) -> Frame {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut payload = Vec::with_capacity(2 + end);
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(&reason.as_bytes()[..end]);
        Frame::encode(CLOSE, &payload)
    }

    /// A pong answering a ping that carried `payload` (at most 125 bytes, as the reader
    /// guarantees for pings).
    pub fn pong(payload: &[u8]) -> Frame {
        Frame::encode(PONG, &payload[..payload.len().min(125)])
    }

    /// Header (2, 4 or 10 bytes: RFC 6455 5.2's 7-bit, 16-bit and 64-bit lengths) and
    /// payload in one allocation.
    fn encode(opcode: u8, payload: &[u8]) -> Frame {
        let len = payload.len();
        let mut out = Vec::with_capacity(header_len(len) + len);
        out.push(FIN | opcode);
        if len < 126 {
            out.push(len as u8);
        } else if len <= usize::from(u16::MAX) {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(payload);
        Frame(Bytes::from(out))
    }

    /// The whole frame as it goes on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Length on the wire, header included.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true: a frame has at least its 2-byte header.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The payload, without the header.
    pub fn payload(&self) -> &[u8] {
        let len7 = self.0.get(1).map_or(0, |b| b & 0x7F);
        let head = match len7 {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        self.0.get(head..).unwrap_or_default()
    }

    /// The payload of a text frame (empty for the rare frame that is not UTF-8 text).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.payload()).unwrap_or_default()
    }
}

/// Header length for a payload of `len` bytes.
fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

impl From<String> for Frame {
    fn from(payload: String) -> Frame {
        Frame::text(&payload)
    }
}

impl From<&str> for Frame {
    fn from(payload: &str) -> Frame {
        Frame::text(payload)
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Frame").field(&self.as_str()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_for_each_length_class() {
        for (len, head) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let payload = "x".repeat(len);
            let frame = Frame::text(&payload);
            assert_eq!(frame.len(), head + len, "{len}");
            assert_eq!(frame.as_bytes()[0], 0x81);
            assert_eq!(frame.payload().len(), len);
            assert_eq!(frame.as_str(), payload);
        }
    }

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let reason = "é".repeat(100);
        let frame = Frame::close(4200, &reason);
        assert!(frame.payload().len() <= 125);
        assert_eq!(&frame.payload()[..2], &4200u16.to_be_bytes());
        assert!(std::str::from_utf8(&frame.payload()[2..]).is_ok());
    }
}
