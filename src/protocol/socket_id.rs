//! Socket ids: `<u64>.<u64>`, the format Pusher clients and server SDKs check (`^\d+\.\d+$`).

use std::fmt;

/// A string that is not `<digits>.<digits>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid socket id: expected <digits>.<digits>")]
pub struct BadSocketId;

/// A connection's id, unique within a process (the second half is a counter) and random
/// across processes (the first half), so ids from different nodes do not collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId(pub u64, pub u64);

impl SocketId {
    /// Parses `<digits>.<digits>`. `Err` for anything else; `Ok(None)` for a well-formed id
    /// whose numbers do not fit in u64 (it cannot name any connection of ours).
    pub fn parse(text: &str) -> Result<Option<SocketId>, BadSocketId> {
        let (a, b) = text.split_once('.').ok_or(BadSocketId)?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
        if !digits(a) || !digits(b) {
            return Err(BadSocketId);
        }
        Ok(match (a.parse(), b.parse()) {
            (Ok(a), Ok(b)) => Some(SocketId(a, b)),
            _ => None,
        })
    }
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let id = SocketId(123, 456);
        assert_eq!(id.to_string(), "123.456");
        assert_eq!(SocketId::parse("123.456"), Ok(Some(id)));
    }

    #[test]
    fn rejects_bad_formats() {
        for bad in ["", "1", "1.", ".1", "a.1", "1.2.3", "-1.2", "1.2 ", "1,2"] {
            assert_eq!(SocketId::parse(bad), Err(BadSocketId), "{bad:?}");
        }
        assert_eq!(SocketId::parse("99999999999999999999999.1"), Ok(None));
    }
}
