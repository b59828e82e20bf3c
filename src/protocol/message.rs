//! Client frames parsed into [`ClientMessage`], and server frames built as JSON text.
//!
//! Server frames follow Pusher's "double encoding": the `data` of `pusher:*` and
//! `pusher_internal:*` frames is a JSON-encoded string, except `pusher:error`, whose `data` is
//! an object as in Pusher's documentation. Channel events carry the publisher's string as is,
//! and client events forward the sender's `data` verbatim (object or string).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::MAX_USER_ID_LEN;

/// A frame sent by a client.
#[derive(Debug)]
pub enum ClientMessage {
    /// `pusher:ping`
    Ping,
    /// `pusher:pong`
    Pong,
    /// `pusher:subscribe`
    Subscribe {
        /// Channel name, not validated yet.
        channel: String,
        /// `<app_key>:<signature>`; pusher-js sends `""` for public channels.
        auth: Option<String>,
        /// Presence member data: the exact string that was signed.
        channel_data: Option<String>,
    },
    /// `pusher:unsubscribe`
    Unsubscribe {
        /// Channel name.
        channel: String,
    },
    /// `pusher:signin`
    Signin {
        /// `<app_key>:<signature>` over `socket_id::user::user_data`.
        auth: String,
        /// The exact user data string that was signed.
        user_data: String,
    },
    /// A `client-*` event.
    ClientEvent {
        /// Event name, starts with `client-`.
        event: String,
        /// Target channel.
        channel: String,
        /// The `data` exactly as received (`null` when absent).
        data: Box<RawValue>,
    },
}

/// Why a client frame was refused. The message is sent back in `pusher:error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Not JSON, or not a JSON object.
    #[error("Invalid message: frames must be JSON objects ({0})")]
    NotJson(String),
    /// No string `event` field.
    #[error("Invalid message: missing or non-string 'event' field")]
    NoEvent,
    /// A `pusher:` or `pusher_internal:` event this server does not take from clients.
    #[error("Unsupported event received: {0}")]
    UnknownEvent(String),
    /// An event that is neither `pusher:` nor `client-`.
    #[error("Invalid event name {0:?}: clients may only send pusher: and client- events")]
    NotClientEvent(String),
    /// A field is missing or of the wrong type.
    #[error("Invalid {event} message: {problem}")]
    BadField {
        /// The event.
        event: &'static str,
        /// What is wrong.
        problem: &'static str,
    },
}

#[derive(Deserialize)]
struct Envelope<'a> {
    event: Option<Value>,
    channel: Option<Value>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

impl ClientMessage {
    /// Parses one text frame.
    pub fn parse(text: &str) -> Result<ClientMessage, ProtocolError> {
        // serde would also read a 3-element JSON array into the envelope; a frame is an object.
        if !text.trim_start().starts_with('{') {
            return Err(ProtocolError::NotJson(
                "a Pusher frame is a JSON object".to_string(),
            ));
        }
        let env: Envelope<'_> =
            serde_json::from_str(text).map_err(|e| ProtocolError::NotJson(e.to_string()))?;
        let event = match env.event {
            Some(Value::String(s)) => s,
            _ => return Err(ProtocolError::NoEvent),
        };
        match event.as_str() {
            "pusher:ping" => Ok(ClientMessage::Ping),
            "pusher:pong" => Ok(ClientMessage::Pong),
            "pusher:subscribe" => {
                let data = object_data(env.data, "pusher:subscribe")?;
                let field = |name: &str| -> Result<Option<String>, ProtocolError> {
                    match data.get(name) {
                        None | Some(Value::Null) => Ok(None),
                        Some(Value::String(s)) => Ok(Some(s.clone())),
                        Some(_) => Err(ProtocolError::BadField {
                            event: "pusher:subscribe",
                            problem: "'auth' and 'channel_data' must be strings",
                        }),
                    }
                };
                let channel = field("channel")?.ok_or(ProtocolError::BadField {
                    event: "pusher:subscribe",
                    problem: "'data.channel' is required",
                })?;
                Ok(ClientMessage::Subscribe {
                    channel,
                    auth: field("auth")?,
                    channel_data: field("channel_data")?,
                })
            }
            "pusher:unsubscribe" => {
                let data = object_data(env.data, "pusher:unsubscribe")?;
                match data.get("channel") {
                    Some(Value::String(c)) => Ok(ClientMessage::Unsubscribe { channel: c.clone() }),
                    _ => Err(ProtocolError::BadField {
                        event: "pusher:unsubscribe",
                        problem: "'data.channel' is required",
                    }),
                }
            }
            "pusher:signin" => {
                let data = object_data(env.data, "pusher:signin")?;
                match (data.get("auth"), data.get("user_data")) {
                    (Some(Value::String(a)), Some(Value::String(u))) => Ok(ClientMessage::Signin {
                        auth: a.clone(),
                        user_data: u.clone(),
                    }),
                    _ => Err(ProtocolError::BadField {
                        event: "pusher:signin",
                        problem: "'data.auth' and 'data.user_data' must be strings",
                    }),
                }
            }
            e if e.starts_with("client-") => {
                let channel = match env.channel {
                    Some(Value::String(c)) => c,
                    _ => {
                        return Err(ProtocolError::BadField {
                            event: "client event",
                            problem: "'channel' is required",
                        })
                    }
                };
                let data = match env.data {
                    Some(raw) => raw.to_owned(),
                    None => null(),
                };
                Ok(ClientMessage::ClientEvent {
                    event,
                    channel,
                    data,
                })
            }
            e if e.starts_with("pusher:") || e.starts_with("pusher_internal:") => {
                Err(ProtocolError::UnknownEvent(event))
            }
            _ => Err(ProtocolError::NotClientEvent(event)),
        }
    }
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".to_string()).expect("null is valid JSON")
}

/// `data` of a `pusher:` event: an object, or (older clients) a string holding one.
fn object_data(
    data: Option<&RawValue>,
    event: &'static str,
) -> Result<serde_json::Map<String, Value>, ProtocolError> {
    let bad = ProtocolError::BadField {
        event,
        problem: "'data' must be an object",
    };
    let value: Value = match data {
        Some(raw) => serde_json::from_str(raw.get()).map_err(|_| bad.clone())?,
        None => return Err(bad),
    };
    match value {
        Value::Object(map) => Ok(map),
        Value::String(s) => match serde_json::from_str(&s) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(bad),
        },
        _ => Err(bad),
    }
}

/// A user id as its text: a non-empty string as is, a number as the JSON text it was sent
/// as (`123456789012345678901` stays exact; going through `f64` would round it and make
/// distinct users collide). Anything else is not a user id.
fn user_id_text(raw: &RawValue) -> Option<String> {
    let text = raw.get();
    match text.as_bytes().first()? {
        b'"' => serde_json::from_str::<String>(text)
            .ok()
            .filter(|s| !s.is_empty()),
        b'-' | b'0'..=b'9' => Some(text.to_string()),
        _ => None,
    }
}

/// A presence member as announced in the signed `channel_data`.
#[derive(Debug, Clone)]
pub struct PresenceMember {
    /// The user id, numbers turned into strings.
    pub user_id: String,
    /// `user_info` as sent (`null` when absent).
    pub user_info: Box<RawValue>,
    /// `"peer": true` at top level or in `user_info` (EXTENSIONS.md §3): pair this user with
    /// the channel's other peer members.
    pub peer: bool,
}

/// Why presence `channel_data` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceDataError {
    /// Missing.
    #[error("Presence subscription requires channel_data")]
    Missing,
    /// Not a JSON object.
    #[error("Invalid presence channel_data: not a JSON object")]
    NotJson,
    /// No usable `user_id`.
    #[error("Invalid presence channel_data: 'user_id' must be a non-empty string or a number")]
    NoUserId,
    /// `user_id` too long.
    #[error(
        "Invalid presence channel_data: 'user_id' is longer than {MAX_USER_ID_LEN} characters"
    )]
    UserIdTooLong,
    /// `user_info` over the limit.
    #[error("Presence user_info is {0} bytes, the limit is {1} bytes")]
    InfoTooLarge(usize, usize),
}

impl PresenceMember {
    /// Reads `{"user_id": ..., "user_info": {...}}`; `user_info` may be at most `max_info` bytes.
    pub fn parse(channel_data: &str, max_info: usize) -> Result<PresenceMember, PresenceDataError> {
        #[derive(Deserialize)]
        struct Data<'a> {
            #[serde(borrow)]
            user_id: Option<&'a RawValue>,
            #[serde(borrow)]
            user_info: Option<&'a RawValue>,
            #[serde(default)]
            peer: Option<Value>,
        }
        #[derive(Deserialize)]
        struct Info {
            #[serde(default)]
            peer: Option<Value>,
        }
        // serde would also read a JSON array into the struct; only an object is valid here.
        if !channel_data.trim_start().starts_with('{') {
            return Err(PresenceDataError::NotJson);
        }
        let data: Data<'_> =
            serde_json::from_str(channel_data).map_err(|_| PresenceDataError::NotJson)?;
        let user_id = data
            .user_id
            .and_then(user_id_text)
            .ok_or(PresenceDataError::NoUserId)?;
        if user_id.chars().count() > MAX_USER_ID_LEN {
            return Err(PresenceDataError::UserIdTooLong);
        }
        let user_info = match data.user_info {
            Some(raw) => {
                if raw.get().len() > max_info {
                    return Err(PresenceDataError::InfoTooLarge(raw.get().len(), max_info));
                }
                raw.to_owned()
            }
            None => null(),
        };
        let flag = |v: Option<Value>| v == Some(Value::Bool(true));
        let peer = flag(data.peer)
            || serde_json::from_str::<Info>(user_info.get()).is_ok_and(|i| flag(i.peer));
        Ok(PresenceMember {
            user_id,
            user_info,
            peer,
        })
    }
}

// ---- server frames ----

#[derive(Serialize)]
struct Frame<'a, D: Serialize> {
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    data: D,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
}

fn frame<D: Serialize>(event: &str, channel: Option<&str>, data: D) -> String {
    let f = Frame {
        event,
        channel,
        data,
        user_id: None,
    };
    serde_json::to_string(&f).expect("frames serialize")
}

/// `pusher:connection_established`
pub fn connection_established(socket_id: &str, activity_timeout: u64) -> String {
    let data = serde_json::json!({"socket_id": socket_id, "activity_timeout": activity_timeout});
    frame("pusher:connection_established", None, data.to_string())
}

/// `pusher:error`; `code` is `None` for errors Pusher reports without one.
pub fn error(code: Option<u16>, message: &str) -> String {
    frame(
        "pusher:error",
        None,
        serde_json::json!({"code": code, "message": message}),
    )
}

/// `pusher:pong`
pub fn pong() -> String {
    frame("pusher:pong", None, "{}")
}

/// `pusher:ping`
pub fn ping() -> String {
    frame("pusher:ping", None, "{}")
}

/// `pusher_internal:subscription_succeeded` with `data` (a JSON text, sent as a string).
pub fn subscription_succeeded(channel: &str, data: &str) -> String {
    frame(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        data,
    )
}

/// The `data` of a presence `subscription_succeeded`: `{"presence":{"ids","hash","count"}}`.
pub fn presence_data<'a>(members: impl Iterator<Item = (&'a str, &'a RawValue)>) -> String {
    #[derive(Serialize)]
    struct Presence<'a> {
        ids: Vec<&'a str>,
        // Each member's user_info is written as received: no re-parsing per subscription.
        hash: std::collections::BTreeMap<&'a str, &'a RawValue>,
        count: usize,
    }
    let hash: std::collections::BTreeMap<&str, &RawValue> = members.collect();
    let presence = Presence {
        ids: hash.keys().copied().collect(),
        count: hash.len(),
        hash,
    };
    #[derive(Serialize)]
    struct Data<'a> {
        presence: Presence<'a>,
    }
    serde_json::to_string(&Data { presence }).expect("serializes")
}

/// `pusher_internal:member_added`
pub fn member_added(channel: &str, user_id: &str, user_info: &RawValue) -> String {
    #[derive(Serialize)]
    struct D<'a> {
        user_id: &'a str,
        user_info: &'a RawValue,
    }
    let data = serde_json::to_string(&D { user_id, user_info }).expect("serializes");
    frame("pusher_internal:member_added", Some(channel), data)
}

/// `pusher_internal:member_removed`
pub fn member_removed(channel: &str, user_id: &str) -> String {
    let data = serde_json::json!({ "user_id": user_id }).to_string();
    frame("pusher_internal:member_removed", Some(channel), data)
}

/// `pusher:subscription_error`, delivered to the channel's listeners in pusher-js.
pub fn subscription_error(channel: &str, kind: &str, message: &str, status: u16) -> String {
    let data = serde_json::json!({"type": kind, "error": message, "status": status}).to_string();
    frame("pusher:subscription_error", Some(channel), data)
}

/// `pusher:signin_success`, echoing the signed user data.
pub fn signin_success(user_data: &str) -> String {
    let data = serde_json::json!({ "user_data": user_data }).to_string();
    frame("pusher:signin_success", None, data)
}

/// `pusher_internal:watchlist_events` with one entry per non-empty list.
pub fn watchlist_events(online: &[&str], offline: &[&str]) -> String {
    let mut events = Vec::new();
    for (name, ids) in [("online", online), ("offline", offline)] {
        if !ids.is_empty() {
            events.push(serde_json::json!({"name": name, "user_ids": ids}));
        }
    }
    let data = serde_json::json!({ "events": events }).to_string();
    frame("pusher_internal:watchlist_events", None, data)
}

/// `pusher:cache_miss`: a cache channel had nothing to replay.
pub fn cache_miss(channel: &str) -> String {
    frame("pusher:cache_miss", Some(channel), "{}")
}

/// `pusher_internal:subscription_count`
pub fn subscription_count(channel: &str, count: usize) -> String {
    let data = serde_json::json!({ "subscription_count": count }).to_string();
    frame("pusher_internal:subscription_count", Some(channel), data)
}

/// A signed-in user as announced in the signed `user_data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigninUser {
    /// Non-empty string id (pusher-js tears the sign-in down otherwise).
    pub id: String,
    /// Watched user ids, at most [`super::codes::MAX_WATCHLIST`].
    pub watchlist: Vec<String>,
    /// Whether the watchlist had to be cut to the limit.
    pub watchlist_truncated: bool,
}

impl SigninUser {
    /// Reads `{"id": "...", "user_info": {...}, "watchlist": [...]}`.
    pub fn parse(user_data: &str) -> Result<SigninUser, &'static str> {
        #[derive(Deserialize)]
        struct Data<'a> {
            #[serde(borrow)]
            id: Option<&'a RawValue>,
            #[serde(borrow)]
            watchlist: Option<&'a RawValue>,
        }
        if !user_data.trim_start().starts_with('{') {
            return Err("user_data is not a JSON object");
        }
        let value: Data<'_> =
            serde_json::from_str(user_data).map_err(|_| "user_data is not a JSON object")?;
        let id = match value.id.map(RawValue::get) {
            Some(text) if text.starts_with('"') => serde_json::from_str::<String>(text)
                .ok()
                .filter(|s| !s.is_empty()),
            _ => None,
        }
        .ok_or("user_data must have a non-empty string 'id'")?;
        if id.chars().count() > MAX_USER_ID_LEN {
            return Err("user_data 'id' is too long");
        }
        let mut watchlist = Vec::new();
        match value.watchlist.map(RawValue::get) {
            None | Some("null") => {}
            Some(text) => {
                let ids: Vec<&RawValue> = serde_json::from_str(text)
                    .map_err(|_| "user_data 'watchlist' must be an array")?;
                for raw in ids {
                    let id = user_id_text(raw).ok_or("user_data 'watchlist' must hold user ids")?;
                    watchlist.push(id);
                }
            }
        }
        let max = super::codes::MAX_WATCHLIST;
        let watchlist_truncated = watchlist.len() > max;
        watchlist.truncate(max);
        Ok(SigninUser {
            id,
            watchlist,
            watchlist_truncated,
        })
    }
}

/// A channel event published through the HTTP API (`data` is the publisher's string).
pub fn channel_event(event: &str, channel: &str, data: &str) -> String {
    frame(event, Some(channel), data)
}

/// A client event as delivered to the other subscribers: `data` verbatim, `user_id` on presence.
pub fn client_event(event: &str, channel: &str, data: &RawValue, user_id: Option<&str>) -> String {
    let f = Frame {
        event,
        channel: Some(channel),
        data,
        user_id,
    };
    serde_json::to_string(&f).expect("frames serialize")
}

/// `pushi:peer_added` / `pushi:peer_removed` on a presence channel (EXTENSIONS.md §3): the
/// pair's peer channel and the other user.
pub fn peer_event(added: bool, presence: &str, peer: &str, other: &str) -> String {
    let event = if added {
        "pushi:peer_added"
    } else {
        "pushi:peer_removed"
    };
    let data = serde_json::json!({ "channel": peer, "user_id": other }).to_string();
    frame(event, Some(presence), data)
}

/// An event delivered on a personal channel (EXTENSIONS.md §2): relabelled to the personal
/// channel, with the channel it was published on and, when it was stored, its id (the
/// client's cursor for `since`).
pub fn personal_event(
    event: &str,
    personal: &str,
    data: &RawValue,
    origin: &str,
    id: u64,
    user_id: Option<&str>,
) -> String {
    #[derive(Serialize)]
    struct Personal<'a> {
        event: &'a str,
        channel: &'a str,
        data: &'a RawValue,
        origin_channel: &'a str,
        id: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<&'a str>,
    }
    let f = Personal {
        event,
        channel: personal,
        data,
        origin_channel: origin,
        id,
        user_id,
    };
    serde_json::to_string(&f).expect("frames serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pusher_js_frames() {
        assert!(matches!(
            ClientMessage::parse(r#"{"event":"pusher:ping","data":{}}"#),
            Ok(ClientMessage::Ping)
        ));
        match ClientMessage::parse(
            r#"{"event":"pusher:subscribe","data":{"auth":"","channel":"foo"}}"#,
        ) {
            Ok(ClientMessage::Subscribe {
                channel,
                auth,
                channel_data,
            }) => {
                assert_eq!(channel, "foo");
                assert_eq!(auth.as_deref(), Some(""));
                assert_eq!(channel_data, None);
            }
            other => panic!("{other:?}"),
        }
        // Older clients send data as a JSON string.
        match ClientMessage::parse(
            r#"{"event":"pusher:unsubscribe","data":"{\"channel\":\"foo\"}"}"#,
        ) {
            Ok(ClientMessage::Unsubscribe { channel }) => assert_eq!(channel, "foo"),
            other => panic!("{other:?}"),
        }
        match ClientMessage::parse(r#"{"event":"client-x","channel":"private-a","data":{"a" : 1}}"#)
        {
            Ok(ClientMessage::ClientEvent { data, .. }) => assert_eq!(data.get(), r#"{"a" : 1}"#),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_bad_frames() {
        assert!(matches!(
            ClientMessage::parse("not json"),
            Err(ProtocolError::NotJson(_))
        ));
        assert!(matches!(
            ClientMessage::parse("[1]"),
            Err(ProtocolError::NotJson(_))
        ));
        assert_eq!(
            ClientMessage::parse(r#"{"event":1}"#).unwrap_err(),
            ProtocolError::NoEvent
        );
        assert_eq!(
            ClientMessage::parse(r#"{"event":"pusher:nope","data":{}}"#).unwrap_err(),
            ProtocolError::UnknownEvent("pusher:nope".into())
        );
        assert_eq!(
            ClientMessage::parse(r#"{"event":"hello","data":{}}"#).unwrap_err(),
            ProtocolError::NotClientEvent("hello".into())
        );
        assert!(matches!(
            ClientMessage::parse(r#"{"event":"pusher:subscribe","data":{}}"#),
            Err(ProtocolError::BadField { .. })
        ));
        assert!(matches!(
            ClientMessage::parse(
                r#"{"event":"pusher:subscribe","data":{"channel":"a","channel_data":{}}}"#
            ),
            Err(ProtocolError::BadField { .. })
        ));
        assert!(matches!(
            ClientMessage::parse(r#"{"event":"client-a","data":{}}"#),
            Err(ProtocolError::BadField { .. })
        ));
    }

    #[test]
    fn shared_frame_vectors() {
        let fixture: Value =
            serde_json::from_str(include_str!("../../fixtures/protocol/client_frames.json"))
                .unwrap();
        for case in fixture["frames"].as_array().unwrap() {
            let frame = case["frame"].as_str().unwrap();
            let got = match ClientMessage::parse(frame) {
                Ok(ClientMessage::Ping) => "ping",
                Ok(ClientMessage::Pong) => "pong",
                Ok(ClientMessage::Subscribe { .. }) => "subscribe",
                Ok(ClientMessage::Unsubscribe { .. }) => "unsubscribe",
                Ok(ClientMessage::Signin { .. }) => "signin",
                Ok(ClientMessage::ClientEvent { .. }) => "client_event",
                Err(ProtocolError::NotJson(_)) => "not_json",
                Err(ProtocolError::NoEvent) => "no_event",
                Err(ProtocolError::UnknownEvent(_)) => "unknown_event",
                Err(ProtocolError::NotClientEvent(_)) => "not_client_event",
                Err(ProtocolError::BadField { .. }) => "bad_field",
            };
            let want = case["kind"].as_str().or(case["error"].as_str()).unwrap();
            assert_eq!(got, want, "{frame}");
        }
    }

    #[test]
    fn presence_member() {
        let m = PresenceMember::parse(r#"{"user_id":10,"user_info":{"name":"Mr. Pusher"}}"#, 1024)
            .unwrap();
        assert_eq!(m.user_id, "10");
        assert_eq!(m.user_info.get(), r#"{"name":"Mr. Pusher"}"#);
        // 20-digit ids stay exact: through f64 these two would both be 1.2345678901234567e20.
        for id in [
            "123456789012345678901",
            "123456789012345678902",
            "-5",
            "1.5",
        ] {
            let data = format!(r#"{{"user_id":{id}}}"#);
            assert_eq!(PresenceMember::parse(&data, 1024).unwrap().user_id, id);
        }
        for bad in ["null", "true", "\"\"", "[1]", "{}"] {
            let data = format!(r#"{{"user_id":{bad}}}"#);
            assert_eq!(
                PresenceMember::parse(&data, 1024).unwrap_err(),
                PresenceDataError::NoUserId,
                "{bad}"
            );
        }
        assert_eq!(
            PresenceMember::parse("{}", 1024).unwrap_err(),
            PresenceDataError::NoUserId
        );
        assert_eq!(
            PresenceMember::parse("nope", 1024).unwrap_err(),
            PresenceDataError::NotJson
        );
        assert_eq!(
            PresenceMember::parse("[1,2]", 1024).unwrap_err(),
            PresenceDataError::NotJson
        );
        let big = format!(r#"{{"user_id":"1","user_info":"{}"}}"#, "x".repeat(2000));
        assert!(matches!(
            PresenceMember::parse(&big, 1024),
            Err(PresenceDataError::InfoTooLarge(..))
        ));
    }

    #[test]
    fn signin_user() {
        let u = SigninUser::parse(r#"{"id":"1","watchlist":["2",3]}"#).unwrap();
        assert_eq!(u.id, "1");
        assert_eq!(u.watchlist, vec!["2", "3"]);
        assert!(SigninUser::parse(r#"{"id":1}"#).is_err());
        assert!(SigninUser::parse(r#"{"id":""}"#).is_err());
        let ids: Vec<String> = (0..150).map(|i| i.to_string()).collect();
        let big = serde_json::json!({"id": "1", "watchlist": ids}).to_string();
        let u = SigninUser::parse(&big).unwrap();
        assert_eq!(u.watchlist.len(), 100);
        assert!(u.watchlist_truncated);
    }

    #[test]
    fn frames_are_double_encoded() {
        let v: Value = serde_json::from_str(&connection_established("1.2", 120)).unwrap();
        assert_eq!(v["event"], "pusher:connection_established");
        let data: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["socket_id"], "1.2");
        assert_eq!(data["activity_timeout"], 120);

        let v: Value = serde_json::from_str(&error(Some(4001), "x")).unwrap();
        assert_eq!(v["data"]["code"], 4001);

        let info = RawValue::from_string(r#"{"n":1}"#.into()).unwrap();
        let v: Value = serde_json::from_str(&member_added("presence-a", "7", &info)).unwrap();
        assert_eq!(v["data"], r#"{"user_id":"7","user_info":{"n":1}}"#);

        let members = [("1", &*info)];
        let d: Value = serde_json::from_str(&presence_data(members.into_iter())).unwrap();
        assert_eq!(d["presence"]["ids"][0], "1");
        assert_eq!(d["presence"]["hash"]["1"]["n"], 1);
        assert_eq!(d["presence"]["count"], 1);

        let raw = RawValue::from_string(r#""text""#.into()).unwrap();
        assert_eq!(
            client_event("client-a", "presence-a", &raw, Some("7")),
            r#"{"event":"client-a","channel":"presence-a","data":"text","user_id":"7"}"#
        );
    }
}
