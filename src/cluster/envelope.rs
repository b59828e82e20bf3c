//! What travels through Redis pub/sub between nodes, and the topics it travels on.
//!
//! A channel's topic `P:m:A:C` carries `f␀origin␀except␀id␀frame`: `origin` is the
//! publishing node (empty for a script's notice, which every node delivers, its own
//! included, so notices keep the order of their transitions); `except` a socket id or
//! empty; `id` a stored event's id or empty; `frame` the Pusher frame, as sockets get it.
//! A presence channel's topic also carries peer pairs formed or ended for one member:
//! `a␀␀user␀peer-channel␀frame` (added) and `r␀␀user␀peer-channel␀frame` (removed); the
//! member's sockets get the frame and are subscribed to (or unsubscribed from) the pair.
//! `P:cw` carries `origin␀app` (a console on that node watches the app) and `P:c:A` carries
//! `origin␀record` (one debug-console record of app A, JSON).
//! An app's topic `P:a:A` carries `on␀␀user`, `off␀␀user` (watchlists) and
//! `term␀origin␀user` (`terminate_connections`).
//!
//! NUL separates fields because JSON text never contains a raw NUL: the frame, last, may be
//! anything else.

use crate::protocol::SocketId;

/// A pub/sub topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Topic {
    /// One channel of one app: (app, channel).
    Channel(String, String),
    /// One app's notices.
    App(String),
    /// Offline (un)subscriptions, for every node's index.
    Offline,
    /// Which apps a debug console watches, announced by the nodes that have one open.
    ConsoleWatch,
    /// One app's debug console records, for the nodes that have a console open on it.
    Console(String),
}

impl Topic {
    /// The Redis channel name.
    pub(crate) fn name(&self, prefix: &str) -> String {
        match self {
            Topic::Channel(app, channel) => format!("{prefix}:m:{app}:{channel}"),
            Topic::App(app) => format!("{prefix}:a:{app}"),
            Topic::Offline => format!("{prefix}:s"),
            Topic::ConsoleWatch => format!("{prefix}:cw"),
            Topic::Console(app) => format!("{prefix}:c:{app}"),
        }
    }

    /// Reads a Redis channel name back. Pusher channel names never contain `:`, so the
    /// last one separates the app id (which might) from the channel.
    pub(crate) fn parse(prefix: &str, name: &str) -> Option<Topic> {
        let rest = name.strip_prefix(prefix)?.strip_prefix(':')?;
        if let Some(rest) = rest.strip_prefix("m:") {
            let (app, channel) = rest.rsplit_once(':')?;
            return Some(Topic::Channel(app.to_string(), channel.to_string()));
        }
        if rest == "s" {
            return Some(Topic::Offline);
        }
        if rest == "cw" {
            return Some(Topic::ConsoleWatch);
        }
        if let Some(app) = rest.strip_prefix("c:") {
            return Some(Topic::Console(app.to_string()));
        }
        rest.strip_prefix("a:")
            .map(|app| Topic::App(app.to_string()))
    }
}

/// A frame for a channel's subscribers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Envelope<'a> {
    pub(crate) origin: &'a [u8],
    pub(crate) except: Option<SocketId>,
    pub(crate) stored_id: Option<u64>,
    pub(crate) frame: String,
}

/// A peer pair formed or ended, for one member's sockets on a presence channel.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PeerNotice {
    pub(crate) added: bool,
    pub(crate) user: String,
    pub(crate) peer: String,
    pub(crate) frame: String,
}

impl PeerNotice {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let kind = if self.added { "a" } else { "r" };
        format!("{kind}\0\0{}\0{}\0{}", self.user, self.peer, self.frame).into_bytes()
    }

    /// `None` unless the payload is a peer notice.
    pub(crate) fn parse(payload: &[u8]) -> Option<PeerNotice> {
        let mut fields = payload.splitn(5, |b| *b == 0);
        let added = match fields.next()? {
            b"a" => true,
            b"r" => false,
            _ => return None,
        };
        fields.next()?;
        let mut text = || String::from_utf8(fields.next()?.to_vec()).ok();
        Some(PeerNotice {
            added,
            user: text()?,
            peer: text()?,
            frame: text()?,
        })
    }
}

impl<'a> Envelope<'a> {
    /// Encodes a frame published by node `origin`.
    pub(crate) fn frame(
        origin: &str,
        except: Option<SocketId>,
        stored_id: Option<u64>,
        frame: &str,
    ) -> Vec<u8> {
        let except = except.map(|s| s.to_string()).unwrap_or_default();
        let id = stored_id.map(|i| i.to_string()).unwrap_or_default();
        let mut out = Vec::with_capacity(frame.len() + origin.len() + except.len() + 8);
        for field in ["f", origin, &except, &id] {
            out.extend_from_slice(field.as_bytes());
            out.push(0);
        }
        out.extend_from_slice(frame.as_bytes());
        out
    }

    /// Decodes one; `None` for anything malformed (dropped, never delivered half-read).
    pub(crate) fn parse(payload: &'a [u8]) -> Option<Envelope<'a>> {
        let mut fields = payload.splitn(5, |b| *b == 0);
        if fields.next()? != b"f" {
            return None;
        }
        let origin = fields.next()?;
        let except = std::str::from_utf8(fields.next()?).ok()?;
        let id = std::str::from_utf8(fields.next()?).ok()?;
        let frame = std::str::from_utf8(fields.next()?).ok()?.to_string();
        let except = match except {
            "" => None,
            except => SocketId::parse(except).ok()?,
        };
        let stored_id = match id {
            "" => None,
            id => Some(id.parse().ok()?),
        };
        Some(Envelope {
            origin,
            except,
            stored_id,
            frame,
        })
    }
}

/// An offline (un)subscription committed by node `origin`, acknowledged by each other node
/// under `nonce`: `s|u␀origin␀nonce␀app␀channel␀user`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct OfflineNotice {
    pub(crate) subscribed: bool,
    pub(crate) origin: String,
    pub(crate) nonce: String,
    pub(crate) app: String,
    pub(crate) channel: String,
    pub(crate) user: String,
}

impl OfflineNotice {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let kind = if self.subscribed { "s" } else { "u" };
        let fields = [
            kind,
            &self.origin,
            &self.nonce,
            &self.app,
            &self.channel,
            &self.user,
        ];
        fields.join("\0").into_bytes()
    }

    pub(crate) fn parse(payload: &[u8]) -> Option<OfflineNotice> {
        let text = std::str::from_utf8(payload).ok()?;
        let mut f = text.splitn(6, '\0');
        let subscribed = match f.next()? {
            "s" => true,
            "u" => false,
            _ => return None,
        };
        let mut next = || f.next().map(str::to_string);
        Some(OfflineNotice {
            subscribed,
            origin: next()?,
            nonce: next()?,
            app: next()?,
            channel: next()?,
            user: next()?,
        })
    }
}

/// A notice for an app's sockets.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AppNotice {
    /// The user's first socket signed in.
    Online(String),
    /// The user's last socket left.
    Offline(String),
    /// Close the user's sockets (sent by `origin`, which closed its own).
    Terminate { origin: String, user: String },
}

impl AppNotice {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let (kind, origin, user) = match self {
            AppNotice::Online(u) => ("on", "", u),
            AppNotice::Offline(u) => ("off", "", u),
            AppNotice::Terminate { origin, user } => ("term", origin.as_str(), user),
        };
        format!("{kind}\0{origin}\0{user}").into_bytes()
    }

    pub(crate) fn parse(payload: &[u8]) -> Option<AppNotice> {
        let mut fields = payload.splitn(3, |b| *b == 0);
        let kind = fields.next()?;
        let origin = String::from_utf8(fields.next()?.to_vec()).ok()?;
        let user = String::from_utf8(fields.next()?.to_vec()).ok()?;
        match kind {
            b"on" => Some(AppNotice::Online(user)),
            b"off" => Some(AppNotice::Offline(user)),
            b"term" => Some(AppNotice::Terminate { origin, user }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_even_with_colons_in_app_ids() {
        for topic in [
            Topic::Channel("1".into(), "presence-a;b".into()),
            Topic::Channel("a:b".into(), "private-x".into()),
            Topic::App("a:b".into()),
        ] {
            assert_eq!(Topic::parse("p:x", &topic.name("p:x")), Some(topic));
        }
        assert_eq!(Topic::parse("p", "q:m:1:c"), None);
        assert_eq!(Topic::parse("p", "p:z:1"), None);
    }

    #[test]
    fn envelopes_round_trip_and_refuse_garbage() {
        let sid = SocketId(12, 34);
        let bytes = Envelope::frame("n1", Some(sid), Some(7), r#"{"event":"e"}"#);
        let env = Envelope::parse(&bytes).unwrap();
        assert_eq!(env.origin, b"n1");
        assert_eq!(env.except, Some(sid));
        assert_eq!(env.stored_id, Some(7));
        assert_eq!(env.frame, r#"{"event":"e"}"#);
        let notice = b"f\0\0\0\0{}";
        let env = Envelope::parse(notice).unwrap();
        assert_eq!(
            (env.origin, env.except, env.stored_id),
            (&b""[..], None, None)
        );
        for bad in [
            &b""[..],
            b"x\0\0\0\0{}",
            b"f\0\0nope\0\0{}",
            b"f\0\0\0x\0{}",
            b"f\0\0",
        ] {
            assert_eq!(Envelope::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn peer_notices_round_trip() {
        for added in [true, false] {
            let n = PeerNotice {
                added,
                user: "u-1".into(),
                peer: "peer-x;a,b".into(),
                frame: "{}".into(),
            };
            assert_eq!(PeerNotice::parse(&n.encode()), Some(n));
        }
        assert_eq!(PeerNotice::parse(b"f\0\0\0\0{}"), None);
        assert_eq!(PeerNotice::parse(b"a\0\0u"), None);
    }

    #[test]
    fn offline_notices_round_trip() {
        for subscribed in [true, false] {
            let n = OfflineNotice {
                subscribed,
                origin: "n".into(),
                nonce: "7".into(),
                app: "a:1".into(),
                channel: "c".into(),
                user: "u".into(),
            };
            assert_eq!(OfflineNotice::parse(&n.encode()), Some(n));
        }
        assert_eq!(OfflineNotice::parse(b"s\0n\0x"), None);
        assert_eq!(Topic::parse("p", "p:s"), Some(Topic::Offline));
        assert_eq!(Topic::parse("p", "p:cw"), Some(Topic::ConsoleWatch));
        assert_eq!(
            Topic::parse("p", "p:c:a:1"),
            Some(Topic::Console("a:1".into()))
        );
        assert_eq!(Topic::Console("7".into()).name("p"), "p:c:7");
    }

    #[test]
    fn app_notices_round_trip() {
        for n in [
            AppNotice::Online("u:1".into()),
            AppNotice::Offline("u".into()),
            AppNotice::Terminate {
                origin: "n".into(),
                user: "a\0b".into(),
            },
        ] {
            assert_eq!(AppNotice::parse(&n.encode()), Some(n));
        }
        assert_eq!(AppNotice::parse(b"zz\0\0u"), None);
    }
}
