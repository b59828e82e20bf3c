//! What travels through Redis pub/sub between nodes, and the topics it travels on.
//!
//! A channel's topic `P:m:A:C` carries `kind␀origin␀except␀id␀frame`: `kind` is `f`; `origin`
//! is the publishing node (empty for a script's notice, which every node delivers, its own
//! included, so notices keep the order of their transitions); `except` a socket id or
//! empty; `id` a stored event's id or empty; `frame` the Pusher frame, as sockets get it.
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
}

impl Topic {
    /// The Redis channel name.
    pub(crate) fn name(&self, prefix: &str) -> String {
        match self {
            Topic::Channel(app, channel) => format!("{prefix}:m:{app}:{channel}"),
            Topic::App(app) => format!("{prefix}:a:{app}"),
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
