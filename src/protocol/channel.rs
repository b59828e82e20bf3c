//! Channel names: Pusher's character set and length, and the kind a prefix gives.

use std::fmt;

/// Longest channel name (Pusher: 164 characters, prefix included).
pub const MAX_CHANNEL_NAME_LEN: usize = 164;

/// Prefix of the channels that deliver to one signed-in user.
pub const SERVER_TO_USER_PREFIX: &str = "#server-to-user-";

/// Prefix of a user's personal channel (EXTENSIONS.md §2): `private-personal-<user_id>`
/// aggregates the user's offline subscriptions. It is a private channel to pusher-js.
pub const PERSONAL_PREFIX: &str = "private-personal-";

/// The personal channel of `user`.
pub fn personal_channel(user: &str) -> String {
    format!("{PERSONAL_PREFIX}{user}")
}

/// Prefix of a peer channel (EXTENSIONS.md §3): `peer-<base>;<a>,<b>` is the private line of
/// users `a` and `b` (byte order) of `presence-<base>`.
pub const PEER_PREFIX: &str = "peer-";

/// Whether a presence user can be paired: its id goes into a channel name, so it must use
/// the channel characters, and `;` and `,` separate the parts of the name.
pub fn peer_eligible(user: &str) -> bool {
    !user.is_empty()
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-=@.".contains(&b))
}

/// The peer channel of users `x` and `y` on `presence-<base>`, when both can be paired and
/// the name fits [`MAX_CHANNEL_NAME_LEN`].
pub fn peer_channel(base: &str, x: &str, y: &str) -> Option<String> {
    if x == y || !peer_eligible(x) || !peer_eligible(y) {
        return None;
    }
    let (a, b) = if x.as_bytes() < y.as_bytes() {
        (x, y)
    } else {
        (y, x)
    };
    let name = format!("{PEER_PREFIX}{base};{a},{b}");
    (name.len() <= MAX_CHANNEL_NAME_LEN).then_some(name)
}

/// The presence channel and the two users of a peer channel name; `None` when the name is
/// not one [`peer_channel`] makes.
pub fn parse_peer(name: &str) -> Option<(String, &str, &str)> {
    let rest = name.strip_prefix(PEER_PREFIX)?;
    let (base, users) = rest.rsplit_once(';')?;
    let (a, b) = users.split_once(',')?;
    (peer_channel(base, a, b).as_deref() == Some(name)).then(|| (format!("presence-{base}"), a, b))
}

/// Whether a (valid) name is a cache channel's: `cache-`, `private-cache-`,
/// `presence-cache-` or `private-encrypted-cache-`.
pub fn is_cache(name: &str) -> bool {
    let rest = ["private-encrypted-", "private-", "presence-"]
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name);
    rest.starts_with("cache-")
}

/// What a channel's prefix makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// Anyone may subscribe.
    Public,
    /// `private-`: needs a `socket_id:channel` signature.
    Private,
    /// `private-encrypted-`: signed like private; payloads are end-to-end encrypted.
    PrivateEncrypted,
    /// `presence-`: signed with the member's `channel_data`.
    Presence,
    /// `#server-to-user-<id>`: only the user's signed-in sockets receive it.
    ServerToUser,
    /// `peer-<base>;<a>,<b>`: only the pair's sockets on `presence-<base>` may subscribe.
    Peer,
}

impl ChannelKind {
    /// The kind a name's prefix gives, without validating the rest of the name (for names
    /// already validated, such as those in the registry).
    pub fn of(name: &str) -> ChannelKind {
        if name.starts_with("private-encrypted-") {
            ChannelKind::PrivateEncrypted
        } else if name.starts_with("private-") {
            ChannelKind::Private
        } else if name.starts_with("presence-") {
            ChannelKind::Presence
        } else if name.starts_with(SERVER_TO_USER_PREFIX) {
            ChannelKind::ServerToUser
        } else if name.starts_with(PEER_PREFIX) {
            ChannelKind::Peer
        } else {
            ChannelKind::Public
        }
    }

    /// Private, encrypted and presence channels need a signature to subscribe.
    pub fn needs_auth(self) -> bool {
        matches!(
            self,
            ChannelKind::Private | ChannelKind::PrivateEncrypted | ChannelKind::Presence
        )
    }
}

/// A channel name that passed [`ChannelName::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChannelName(String);

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty name.
    #[error("Channel name must not be empty")]
    Empty,
    /// Over [`MAX_CHANNEL_NAME_LEN`].
    #[error("Channel name too long: {0} characters, at most {MAX_CHANNEL_NAME_LEN} are allowed")]
    TooLong(usize),
    /// A character outside `[A-Za-z0-9_\-=@,.;]`.
    #[error("Invalid channel name {0:?}: only A-Z a-z 0-9 _ - = @ , . ; are allowed")]
    BadCharacter(String),
}

impl ChannelName {
    /// Checks length and character set. `#server-to-user-` names are accepted here; who may
    /// use them is the caller's rule.
    pub fn parse(name: &str) -> Result<ChannelName, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_CHANNEL_NAME_LEN {
            return Err(NameError::TooLong(name.len()));
        }
        let body = name.strip_prefix(SERVER_TO_USER_PREFIX).unwrap_or(name);
        let ok = !body.is_empty()
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-=@,.;".contains(&b));
        if !ok {
            return Err(NameError::BadCharacter(name.to_string()));
        }
        Ok(ChannelName(name.to_string()))
    }

    /// The kind the prefix gives.
    pub fn kind(&self) -> ChannelKind {
        ChannelKind::of(&self.0)
    }

    /// Cache channels (`cache-`, `private-cache-`, `presence-cache-`,
    /// `private-encrypted-cache-`) keep their last event for new subscribers.
    pub fn is_cache(&self) -> bool {
        is_cache(&self.0)
    }

    /// The user a `#server-to-user-<id>` channel belongs to.
    pub fn server_to_user_id(&self) -> Option<&str> {
        self.0.strip_prefix(SERVER_TO_USER_PREFIX)
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_names() {
        assert_eq!(
            peer_channel("room", "bob", "alice").as_deref(),
            Some("peer-room;alice,bob")
        );
        assert_eq!(peer_channel("room", "alice", "alice"), None);
        assert_eq!(peer_channel("room", "a;b", "c"), None);
        assert_eq!(peer_channel("room", "a,b", "c"), None);
        assert_eq!(peer_channel("room", "a b", "c"), None);
        assert_eq!(peer_channel("room", &"x".repeat(80), &"y".repeat(80)), None);
        assert_eq!(
            parse_peer("peer-room;alice,bob"),
            Some(("presence-room".to_string(), "alice", "bob"))
        );
        assert_eq!(
            parse_peer("peer-a;b;alice,bob").map(|p| p.0),
            Some("presence-a;b".into())
        );
        assert_eq!(parse_peer("peer-room;bob,alice"), None, "not in byte order");
        assert_eq!(parse_peer("peer-room;alice"), None);
        assert_eq!(parse_peer("peer-room"), None);
        assert_eq!(ChannelKind::of("peer-room;alice,bob"), ChannelKind::Peer);
    }

    #[test]
    fn kinds() {
        let kind = |n: &str| ChannelName::parse(n).unwrap().kind();
        assert_eq!(kind("news"), ChannelKind::Public);
        assert_eq!(kind("private-a"), ChannelKind::Private);
        assert_eq!(kind("private-encrypted-a"), ChannelKind::PrivateEncrypted);
        assert_eq!(kind("presence-a"), ChannelKind::Presence);
        assert_eq!(kind("#server-to-user-42"), ChannelKind::ServerToUser);
        assert_eq!(kind("privatea"), ChannelKind::Public);
    }

    #[test]
    fn cache_channels() {
        let cache = |n: &str| ChannelName::parse(n).unwrap().is_cache();
        assert!(cache("cache-a"));
        assert!(cache("private-cache-a"));
        assert!(cache("presence-cache-a"));
        assert!(cache("private-encrypted-cache-a"));
        assert!(!cache("cachea"));
        assert!(!cache("private-a"));
        assert!(!cache("presence-private-cache-a"));
    }

    #[test]
    fn charset_and_length() {
        assert!(ChannelName::parse("a-Z_0=@,.;").is_ok());
        assert_eq!(ChannelName::parse(""), Err(NameError::Empty));
        assert!(matches!(
            ChannelName::parse("a b"),
            Err(NameError::BadCharacter(_))
        ));
        assert!(matches!(
            ChannelName::parse("#foo"),
            Err(NameError::BadCharacter(_))
        ));
        assert!(matches!(
            ChannelName::parse("#server-to-user-"),
            Err(NameError::BadCharacter(_))
        ));
        assert!(matches!(
            ChannelName::parse("é"),
            Err(NameError::BadCharacter(_))
        ));
        assert!(ChannelName::parse(&"a".repeat(164)).is_ok());
        assert_eq!(
            ChannelName::parse(&"a".repeat(165)),
            Err(NameError::TooLong(165))
        );
    }
}
