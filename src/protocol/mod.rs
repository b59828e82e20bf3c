//! The Pusher wire protocol, with no I/O: channel and event names, socket ids, close and error
//! codes, client frames parsed into typed messages, server frames built as JSON text.
//!
//! Owns: every `pusher:*` / `pusher_internal:*` string and every naming rule.
//! Must not touch: tokio, sockets, clocks, randomness, the registry.

pub mod channel;
pub mod codes;
pub mod message;
pub mod socket_id;

pub use channel::{
    parse_peer, peer_channel, peer_eligible, personal_channel, ChannelKind, ChannelName,
    PEER_PREFIX, PERSONAL_PREFIX,
};
pub use codes::Close;
pub use message::{ClientMessage, ProtocolError};
pub use socket_id::SocketId;

/// Longest event name the HTTP API accepts (the server SDKs' own check).
pub const MAX_EVENT_NAME_LEN: usize = 200;

/// Longest presence `user_id` (Pusher: 128 characters).
pub const MAX_USER_ID_LEN: usize = 128;

/// The protocol versions this server speaks (Pusher protocol 5, 6 and 7).
pub const PROTOCOLS: std::ops::RangeInclusive<u32> = 5..=7;

/// Reads the `protocol` query parameter of a connection URL: a missing value means 7
/// (what pusher-js sends); anything else must be an integer in [`PROTOCOLS`].
pub fn protocol_version(query: Option<&str>) -> Result<u32, Close> {
    let value = query
        .into_iter()
        .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
        .find(|(k, _)| k == "protocol")
        .map(|(_, v)| v.into_owned());
    match value {
        None => Ok(7),
        Some(v) => match v.parse::<u32>() {
            Ok(n) if PROTOCOLS.contains(&n) => Ok(n),
            _ => Err(Close::UNSUPPORTED_PROTOCOL),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_versions() {
        assert_eq!(protocol_version(None), Ok(7));
        assert_eq!(protocol_version(Some("client=js&version=8")), Ok(7));
        assert_eq!(protocol_version(Some("protocol=5")), Ok(5));
        assert_eq!(protocol_version(Some("protocol=7&client=js")), Ok(7));
        assert_eq!(
            protocol_version(Some("protocol=4")),
            Err(Close::UNSUPPORTED_PROTOCOL)
        );
        assert_eq!(
            protocol_version(Some("protocol=abc")),
            Err(Close::UNSUPPORTED_PROTOCOL)
        );
        assert_eq!(
            protocol_version(Some("protocol=8")),
            Err(Close::UNSUPPORTED_PROTOCOL)
        );
    }
}
