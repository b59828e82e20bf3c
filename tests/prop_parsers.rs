//! Property tests for the pure parsers and builders of `pushi::protocol` and the signatures of
//! `pushi::auth`: no input makes them panic, each parser agrees with a small model of its
//! documented rule, and round trips hold (a socket id formatted then parsed, a server frame
//! built then read back, a request signed then verified).
//!
//! The runs are bounded (`CASES` per property) and seeded with a fixed seed so CI is
//! repeatable; `PROPTEST_RNG_SEED=<u64>` explores another seed and `PROPTEST_CASES=<n>` runs
//! more cases. Failing inputs are printed (shrunk), not persisted to files.
//!
//! The HTTP API request properties are in one section at the end ("Auth: signed HTTP API
//! requests"), and every call of `verify_request` goes through [`verify_api`] there.

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};
use serde_json::{json, Map, Value};

use pushi::auth::{self, RequestError, SignedRequest, TokenError};
use pushi::protocol::channel::{NameError, MAX_CHANNEL_NAME_LEN, SERVER_TO_USER_PREFIX};
use pushi::protocol::codes::MAX_WATCHLIST;
use pushi::protocol::message::{self, PresenceDataError, PresenceMember, SigninUser};
use pushi::protocol::socket_id::BadSocketId;
use pushi::protocol::{
    protocol_version, ChannelKind, ChannelName, ClientMessage, Close, ProtocolError, SocketId,
    MAX_USER_ID_LEN,
};

/// Cases per property.
const CASES: u32 = 512;
/// The seed CI runs with (unless `PROPTEST_RNG_SEED` is set).
const SEED: u64 = 0x7072_6f70_5f70_7573;

fn config(cases: u32) -> ProptestConfig {
    let base = ProptestConfig::default();
    let rng_seed = if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
        base.rng_seed
    } else {
        RngSeed::Fixed(SEED)
    };
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() {
        base.cases
    } else {
        cases
    };
    ProptestConfig {
        cases,
        rng_seed,
        failure_persistence: None,
        ..base
    }
}

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

/// Any string, control characters included.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        vec(any::<u8>(), 0..64).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        "[{}\\[\\]\":,a-z0-9\\\\ -]{0,40}",
    ]
}

/// Object keys the parsers look at, and others.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "event", "channel", "data", "auth", "channel_data", "user_data", "user_id",
            "user_info", "id", "watchlist",
        ])
        .prop_map(str::to_string),
        1 => any::<String>(),
    ]
}

/// Any JSON value (numbers as serde_json holds them).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        // Floats with a short decimal form: they read back exactly (serde_json without
        // `float_roundtrip` may be one ULP off for long ones).
        (any::<i16>(), 0..6i32).prop_map(|(m, e)| json!(f64::from(m) / 2f64.powi(e))),
        any::<String>().prop_map(Value::String),
        "(pusher:|client-|private-|presence-)?[a-z]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(key(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// JSON number text, including forms serde's `f64` would round or refuse.
fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        "-?[1-9][0-9]{15,40}",
        "-?(0|[1-9][0-9]{0,5})\\.[0-9]{1,8}([eE][+-]?[0-9]{1,3})?",
        Just("1e400".to_string()),
        Just("-0".to_string()),
    ]
}

/// JSON text, valid or nearly: values, raw numbers, and texts with a few characters
/// inserted, removed or replaced.
fn json_ish() -> impl Strategy<Value = String> {
    let valid = prop_oneof![
        json_value().prop_map(|v| v.to_string()),
        number_text(),
        (key(), json_value(), number_text())
            .prop_map(|(k, v, n)| format!("{{{}:{n},\"x\":{v}}}", json!(k))),
    ];
    (valid, vec((any::<Index>(), any::<char>(), 0..3u8), 0..4)).prop_map(|(text, edits)| {
        let mut chars: Vec<char> = text.chars().collect();
        for (at, c, op) in edits {
            let i = at.index(chars.len() + 1);
            match op {
                0 => chars.insert(i, c),
                1 if i < chars.len() => {
                    chars.remove(i);
                }
                _ if i < chars.len() => chars[i] = c,
                _ => {}
            }
        }
        chars.into_iter().collect()
    })
}

/// Characters a channel name may hold.
const NAME_CHARS: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-=@,.;";

fn name_char() -> impl Strategy<Value = char> {
    prop::sample::select(NAME_CHARS.chars().collect::<Vec<_>>())
}

fn allowed(c: char) -> bool {
    NAME_CHARS.contains(c)
}

const PREFIXES: &[&str] = &[
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

/// Channel-looking names: valid ones, too long ones, odd prefixes, any text.
fn channel_like() -> impl Strategy<Value = String> {
    prop_oneof![
        (prop::sample::select(PREFIXES), vec(name_char(), 0..180))
            .prop_map(|(p, b)| format!("{p}{}", b.into_iter().collect::<String>())),
        any_text(),
        ("[#a-z-]{0,20}", any::<char>(), "[a-z]{0,5}").prop_map(|(a, c, b)| format!("{a}{c}{b}")),
    ]
}

/// A user id as JSON text with the id the server must keep: strings as their value, numbers
/// as their exact text.
fn user_id() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        "[^\u{0}]{1,140}".prop_map(|s| (json!(s).to_string(), s)),
        any::<u64>().prop_map(|n| (n.to_string(), n.to_string())),
        "-?[1-9][0-9]{0,140}".prop_map(|s| (s.clone(), s)),
        number_text().prop_map(|s| (s.clone(), s)),
    ]
}

// ---------------------------------------------------------------------------------------
// ClientMessage::parse
// ---------------------------------------------------------------------------------------

/// What a client frame parses to, comparable.
#[derive(Debug, PartialEq)]
enum Parsed {
    Ping,
    Pong,
    Subscribe(String, Option<String>, Option<String>),
    Unsubscribe(String),
    Signin(String, String),
    Client(String, String, String),
    NotJson,
    NoEvent,
    Unknown(String),
    NotClient(String),
    BadField,
}

fn parsed(text: &str) -> Parsed {
    match ClientMessage::parse(text) {
        Ok(ClientMessage::Ping) => Parsed::Ping,
        Ok(ClientMessage::Pong) => Parsed::Pong,
        Ok(ClientMessage::Subscribe {
            channel,
            auth,
            channel_data,
        }) => Parsed::Subscribe(channel, auth, channel_data),
        Ok(ClientMessage::Unsubscribe { channel }) => Parsed::Unsubscribe(channel),
        Ok(ClientMessage::Signin { auth, user_data }) => Parsed::Signin(auth, user_data),
        Ok(ClientMessage::ClientEvent {
            event,
            channel,
            data,
        }) => Parsed::Client(event, channel, data.get().to_string()),
        Err(ProtocolError::NotJson(_)) => Parsed::NotJson,
        Err(ProtocolError::NoEvent) => Parsed::NoEvent,
        Err(ProtocolError::UnknownEvent(e)) => Parsed::Unknown(e),
        Err(ProtocolError::NotClientEvent(e)) => Parsed::NotClient(e),
        Err(ProtocolError::BadField { .. }) => Parsed::BadField,
    }
}

/// The `data` object of a `pusher:` event: an object, or a string holding one.
fn data_object(data: Option<&Value>) -> Option<Map<String, Value>> {
    match data? {
        Value::Object(m) => Some(m.clone()),
        Value::String(s) => match serde_json::from_str(s) {
            Ok(Value::Object(m)) => Some(m),
            _ => None,
        },
        _ => None,
    }
}

/// The documented rules of client frames, for an envelope `{event?, channel?, data?}`.
fn model(event: Option<&Value>, channel: Option<&Value>, data: Option<&Value>) -> Parsed {
    let Some(Value::String(event)) = event else {
        return Parsed::NoEvent;
    };
    let string_field = |m: &Map<String, Value>, k: &str| -> Result<Option<String>, ()> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(()),
        }
    };
    match event.as_str() {
        "pusher:ping" => Parsed::Ping,
        "pusher:pong" => Parsed::Pong,
        "pusher:subscribe" => {
            let Some(m) = data_object(data) else {
                return Parsed::BadField;
            };
            match (
                string_field(&m, "channel"),
                string_field(&m, "auth"),
                string_field(&m, "channel_data"),
            ) {
                (Ok(Some(c)), Ok(a), Ok(cd)) => Parsed::Subscribe(c, a, cd),
                _ => Parsed::BadField,
            }
        }
        "pusher:unsubscribe" => match data_object(data).as_ref().and_then(|m| m.get("channel")) {
            Some(Value::String(c)) => Parsed::Unsubscribe(c.clone()),
            _ => Parsed::BadField,
        },
        "pusher:signin" => {
            let m = data_object(data).unwrap_or_default();
            match (m.get("auth"), m.get("user_data")) {
                (Some(Value::String(a)), Some(Value::String(u))) => {
                    Parsed::Signin(a.clone(), u.clone())
                }
                _ => Parsed::BadField,
            }
        }
        e if e.starts_with("client-") => match channel {
            Some(Value::String(c)) => Parsed::Client(
                e.to_string(),
                c.clone(),
                data.map(Value::to_string).unwrap_or_else(|| "null".into()),
            ),
            _ => Parsed::BadField,
        },
        e if e.starts_with("pusher:") || e.starts_with("pusher_internal:") => {
            Parsed::Unknown(e.to_string())
        }
        e => Parsed::NotClient(e.to_string()),
    }
}

fn event_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "pusher:ping",
            "pusher:pong",
            "pusher:subscribe",
            "pusher:unsubscribe",
            "pusher:signin",
            "pusher:nope",
            "pusher_internal:subscription_succeeded",
            "client-",
            "client-x",
            "hello",
            "",
        ])
        .prop_map(|s| json!(s)),
        2 => "(pusher:|pusher_internal:|client-|Pusher:)?[a-z:_-]{0,10}".prop_map(Value::String),
        1 => json_value(),
    ]
}

/// `data` for envelopes: objects with the fields the events read (of any type), as an
/// object or string-encoded, or any value.
fn data_value() -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        3 => any::<String>().prop_map(Value::String),
        1 => json_value(),
    ];
    let fields = btree_map(
        prop::sample::select(vec![
            "channel",
            "auth",
            "channel_data",
            "user_data",
            "other",
        ]),
        field,
        0..5,
    )
    .prop_map(|m| {
        Value::Object(
            m.into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<Map<_, _>>(),
        )
    });
    prop_oneof![
        3 => fields.clone(),
        1 => fields.prop_map(|v| Value::String(v.to_string())),
        1 => json_value(),
    ]
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn client_message_never_panics(text in prop_oneof![any_text(), json_ish()]) {
        let p = parsed(&text);
        // Text that is not JSON at all is always NotJson.
        if serde_json::from_str::<serde::de::IgnoredAny>(&text).is_err() {
            prop_assert_eq!(p, Parsed::NotJson);
        }
    }

    #[test]
    fn client_message_follows_the_rules(
        event in prop::option::weighted(0.95, event_value()),
        channel in prop::option::of(prop_oneof![
            3 => "[a-z-]{0,10}".prop_map(Value::String),
            1 => json_value(),
        ]),
        data in prop::option::weighted(0.9, data_value()),
        extra in prop::option::of((key(), json_value())),
    ) {
        let mut text = String::from("{");
        let mut put = |k: &str, v: &Value| {
            if text.len() > 1 {
                text.push(',');
            }
            text.push_str(&format!("{}:{}", json!(k), v));
        };
        if let Some((k, v)) = &extra {
            if !["event", "channel", "data"].contains(&k.as_str()) {
                put(k, v);
            }
        }
        if let Some(v) = &event { put("event", v); }
        if let Some(v) = &channel { put("channel", v); }
        if let Some(v) = &data { put("data", v); }
        text.push('}');
        prop_assert_eq!(
            parsed(&text),
            model(event.as_ref(), channel.as_ref(), data.as_ref()),
            "frame {}", text
        );
    }

    /// Frames must be JSON objects: an array is refused as not JSON even when its elements
    /// line up with the envelope's fields (serde reads a struct from a sequence too).
    #[test]
    fn client_message_arrays_are_not_frames(
        items in vec(prop_oneof![
            event_value(),
            data_value(),
        ], 0..5)
    ) {
        let text = Value::Array(items).to_string();
        prop_assert_eq!(parsed(&text), Parsed::NotJson, "frame {}", text);
    }
}

// ---------------------------------------------------------------------------------------
// ChannelName
// ---------------------------------------------------------------------------------------

/// The documented rule: non-empty, at most 164 bytes, optional `#server-to-user-` prefix,
/// then one or more of `[A-Za-z0-9_\-=@,.;]`.
fn channel_model(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_CHANNEL_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    let body = name.strip_prefix(SERVER_TO_USER_PREFIX).unwrap_or(name);
    if body.is_empty() || !body.chars().all(allowed) {
        return Err(NameError::BadCharacter(name.to_string()));
    }
    Ok(())
}

fn kind_model(name: &str) -> ChannelKind {
    if name.starts_with("private-encrypted-") {
        ChannelKind::PrivateEncrypted
    } else if name.starts_with("private-") {
        ChannelKind::Private
    } else if name.starts_with("presence-") {
        ChannelKind::Presence
    } else if name.starts_with("#server-to-user-") {
        ChannelKind::ServerToUser
    } else {
        ChannelKind::Public
    }
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn channel_names_follow_the_rule(name in channel_like()) {
        let got = ChannelName::parse(&name);
        prop_assert_eq!(got.as_ref().map(|_| ()).map_err(Clone::clone), channel_model(&name));
        if let Ok(c) = got {
            prop_assert_eq!(c.as_str(), name.as_str());
            prop_assert_eq!(c.to_string(), name.clone());
            prop_assert_eq!(c.kind(), kind_model(&name));
            prop_assert_eq!(c.kind(), ChannelKind::of(&name));
            let rest = ["private-encrypted-", "private-", "presence-"]
                .iter()
                .find_map(|p| name.strip_prefix(p))
                .unwrap_or(&name);
            prop_assert_eq!(c.is_cache(), rest.starts_with("cache-"));
            prop_assert_eq!(c.server_to_user_id(), name.strip_prefix(SERVER_TO_USER_PREFIX));
            prop_assert_eq!(
                c.kind().needs_auth(),
                matches!(
                    c.kind(),
                    ChannelKind::Private | ChannelKind::PrivateEncrypted | ChannelKind::Presence
                )
            );
        }
    }

    #[test]
    fn valid_channel_names_are_accepted(
        prefix in prop::sample::select(PREFIXES),
        body in vec(name_char(), 1..=MAX_CHANNEL_NAME_LEN),
    ) {
        let mut name = format!("{prefix}{}", body.into_iter().collect::<String>());
        name.truncate(MAX_CHANNEL_NAME_LEN);
        prop_assume!(name != SERVER_TO_USER_PREFIX);
        prop_assert!(ChannelName::parse(&name).is_ok(), "{:?} refused", name);
    }

    #[test]
    fn long_channel_names_are_refused(
        body in vec(name_char(), MAX_CHANNEL_NAME_LEN + 1..400),
    ) {
        let name: String = body.into_iter().collect();
        prop_assert_eq!(ChannelName::parse(&name), Err(NameError::TooLong(name.len())));
    }

    #[test]
    fn one_bad_character_is_refused(
        body in vec(name_char(), 0..MAX_CHANNEL_NAME_LEN),
        bad in any::<char>().prop_filter("outside the set", |c| !allowed(*c)),
        at in any::<Index>(),
    ) {
        let mut chars = body;
        chars.insert(at.index(chars.len() + 1), bad);
        let name: String = chars.into_iter().collect();
        // Only '#' can start the one allowed prefix; a name that became exactly that is fine.
        prop_assume!(!(name.starts_with(SERVER_TO_USER_PREFIX) && channel_model(&name).is_ok()));
        let want = if name.len() > MAX_CHANNEL_NAME_LEN {
            NameError::TooLong(name.len())
        } else {
            NameError::BadCharacter(name.clone())
        };
        prop_assert_eq!(ChannelName::parse(&name), Err(want));
    }
}

// ---------------------------------------------------------------------------------------
// SocketId and protocol_version
// ---------------------------------------------------------------------------------------

/// Whether a run of ASCII digits is a u64.
fn fits_u64(digits: &str) -> bool {
    let d = digits.trim_start_matches('0');
    d.len() < 20 || (d.len() == 20 && d <= "18446744073709551615")
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn socket_ids_round_trip(a in any::<u64>(), b in any::<u64>()) {
        let id = SocketId(a, b);
        let text = id.to_string();
        prop_assert_eq!(&text, &format!("{a}.{b}"));
        prop_assert_eq!(SocketId::parse(&text), Ok(Some(id)));
    }

    #[test]
    fn socket_ids_follow_the_rule(
        text in prop_oneof![
            any_text(),
            "[0-9]{0,25}\\.[0-9]{0,25}",
            "[0-9.+ a-]{0,12}",
            (any::<u64>(), any::<u64>(), "0{0,3}").prop_map(|(a, b, z)| format!("{z}{a}.{z}{b}")),
        ]
    ) {
        let well_formed = text.split_once('.').filter(|(a, b)| {
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
            digits(a) && digits(b)
        });
        let got = SocketId::parse(&text);
        match well_formed {
            None => prop_assert_eq!(got, Err(BadSocketId)),
            Some((a, b)) if fits_u64(a) && fits_u64(b) => {
                prop_assert_eq!(got, Ok(Some(SocketId(a.parse().unwrap(), b.parse().unwrap()))));
            }
            Some(_) => prop_assert_eq!(got, Ok(None)),
        }
    }

    #[test]
    fn protocol_versions_follow_the_rule(
        query in prop_oneof![
            vec(
                (
                    prop::sample::select(vec!["protocol", "client", "version", "Protocol", "x", ""]),
                    prop::sample::select(vec![
                        "5", "6", "7", "4", "8", "07", "%2B7", "+7", " 7", "abc", "", "%37",
                        "99999999999", "-7", "7.0",
                    ]),
                ),
                0..4,
            )
            .prop_map(|ps| {
                ps.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
            }),
            any_text(),
        ],
        absent in any::<bool>(),
    ) {
        let q = (!absent || !query.is_empty()).then_some(query.as_str());
        let first = q
            .into_iter()
            .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
            .find(|(k, _)| k == "protocol")
            .map(|(_, v)| v.into_owned());
        let want = match first {
            None => Ok(7),
            Some(v) => match v.parse::<u32>() {
                Ok(n) if (5..=7).contains(&n) => Ok(n),
                _ => Err(Close::UNSUPPORTED_PROTOCOL),
            },
        };
        prop_assert_eq!(protocol_version(q), want, "query {:?}", q);
    }
}

// ---------------------------------------------------------------------------------------
// PresenceMember and SigninUser
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn presence_data_never_panics(text in prop_oneof![any_text(), json_ish()], max in 0usize..2048) {
        if let Ok(m) = PresenceMember::parse(&text, max) {
            prop_assert!(!m.user_id.is_empty());
            prop_assert!(m.user_id.chars().count() <= MAX_USER_ID_LEN);
            prop_assert!(m.user_info.get().len() <= max || m.user_info.get() == "null");
        }
    }

    #[test]
    fn presence_members_keep_their_ids(
        (id_json, id) in user_id(),
        info in prop::option::of(json_value()),
        max in 0usize..4096,
    ) {
        let mut text = format!("{{\"user_id\":{id_json}");
        if let Some(info) = &info {
            text.push_str(&format!(",\"user_info\":{info}"));
        }
        text.push('}');
        // `"user_info": null` reads as no user_info (null, and no size check).
        let info_text = info.as_ref().filter(|v| !v.is_null()).map(Value::to_string);
        let got = PresenceMember::parse(&text, max);
        if id.chars().count() > MAX_USER_ID_LEN {
            prop_assert_eq!(got.unwrap_err(), PresenceDataError::UserIdTooLong, "{}", text);
        } else if let Some(info) = info_text.as_ref().filter(|i| i.len() > max) {
            prop_assert_eq!(
                got.unwrap_err(),
                PresenceDataError::InfoTooLarge(info.len(), max),
                "{}", text
            );
        } else {
            let m = got.unwrap_or_else(|e| panic!("{text}: {e}"));
            prop_assert_eq!(m.user_id, id);
            prop_assert_eq!(m.user_info.get(), info_text.as_deref().unwrap_or("null"));
        }
    }

    #[test]
    fn presence_data_without_a_user_id_is_refused(
        user_id in prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            Just(json!("")),
            vec(json_value(), 0..3).prop_map(Value::Array),
            btree_map(key(), json_value(), 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ],
        top in prop_oneof![json_value(), number_text().prop_map(|n| json!(n))],
    ) {
        let data = json!({"user_id": user_id, "user_info": {}}).to_string();
        prop_assert_eq!(
            PresenceMember::parse(&data, 1024).unwrap_err(),
            PresenceDataError::NoUserId
        );
        // Whatever is not an object is not channel_data.
        if !top.is_object() {
            prop_assert_eq!(
                PresenceMember::parse(&top.to_string(), 1024).unwrap_err(),
                PresenceDataError::NotJson
            );
        }
    }

    #[test]
    fn signin_user_data_never_panics(text in prop_oneof![any_text(), json_ish()]) {
        if let Ok(u) = SigninUser::parse(&text) {
            prop_assert!(!u.id.is_empty());
            prop_assert!(u.id.chars().count() <= MAX_USER_ID_LEN);
            prop_assert!(u.watchlist.len() <= MAX_WATCHLIST);
        }
    }

    #[test]
    fn signin_users_keep_their_ids_and_watchlists(
        id in "[^\u{0}]{1,140}",
        watch in vec(user_id(), 0..(MAX_WATCHLIST + 20)),
        info in prop::option::of(json_value()),
        null_watchlist in any::<bool>(),
    ) {
        let list: Vec<&str> = watch.iter().map(|(j, _)| j.as_str()).collect();
        let watchlist = if null_watchlist && watch.is_empty() {
            "null".to_string()
        } else {
            format!("[{}]", list.join(","))
        };
        let mut text = format!("{{\"id\":{},\"watchlist\":{watchlist}", json!(id));
        if let Some(info) = &info {
            text.push_str(&format!(",\"user_info\":{info}"));
        }
        text.push('}');
        let got = SigninUser::parse(&text);
        if id.chars().count() > MAX_USER_ID_LEN {
            prop_assert!(got.is_err(), "{}", text);
        } else {
            let u = got.unwrap_or_else(|e| panic!("{text}: {e}"));
            prop_assert_eq!(&u.id, &id);
            let want: Vec<String> = watch.iter().take(MAX_WATCHLIST).map(|(_, i)| i.clone()).collect();
            prop_assert_eq!(u.watchlist, want);
            prop_assert_eq!(u.watchlist_truncated, watch.len() > MAX_WATCHLIST);
        }
    }

    #[test]
    fn signin_user_data_needs_a_string_id_and_a_list_of_ids(
        bad_id in prop_oneof![
            Just(Value::Null),
            Just(json!("")),
            any::<i64>().prop_map(|n| json!(n)),
            vec(json_value(), 0..2).prop_map(Value::Array),
        ],
        bad_entry in prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            Just(json!("")),
            btree_map(key(), json_value(), 0..2).prop_map(|m| Value::Object(m.into_iter().collect())),
        ],
        bad_list in prop_oneof![
            any::<String>().prop_map(Value::String),
            any::<i64>().prop_map(|n| json!(n)),
            btree_map(key(), json_value(), 0..2).prop_map(|m| Value::Object(m.into_iter().collect())),
        ],
    ) {
        let cases = [
            json!({"id": bad_id}),
            json!({"id": "u", "watchlist": ["1", bad_entry]}),
            json!({"id": "u", "watchlist": bad_list}),
            json!([{"id": "u"}]),
        ];
        for case in cases {
            let text = case.to_string();
            prop_assert!(SigninUser::parse(&text).is_err(), "accepted {}", text);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Server frames: built, then read back
// ---------------------------------------------------------------------------------------

fn read(frame: &str) -> Value {
    serde_json::from_str(frame).unwrap_or_else(|e| panic!("frame is not JSON ({e}): {frame}"))
}

/// `data` of a double-encoded frame.
fn inner(frame: &Value) -> Value {
    let text = frame["data"]
        .as_str()
        .unwrap_or_else(|| panic!("data is not a string: {frame}"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("data is not JSON text ({e}): {frame}"))
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn server_frames_carry_their_fields(
        event in any::<String>(),
        channel in any::<String>(),
        data in any::<String>(),
        socket in any::<String>(),
        timeout in any::<u64>(),
        code in prop::option::of(any::<u16>()),
        count in any::<usize>(),
        user in any::<String>(),
    ) {
        prop_assert_eq!(
            read(&message::channel_event(&event, &channel, &data)),
            json!({"event": event, "channel": channel, "data": data})
        );
        let v = read(&message::connection_established(&socket, timeout));
        prop_assert_eq!(&v["event"], "pusher:connection_established");
        prop_assert_eq!(inner(&v), json!({"socket_id": socket, "activity_timeout": timeout}));
        prop_assert_eq!(
            read(&message::error(code, &data)),
            json!({"event": "pusher:error", "data": {"code": code, "message": data}})
        );
        let v = read(&message::subscription_error(&channel, &event, &data, 401));
        prop_assert_eq!(&v["channel"], &json!(channel));
        prop_assert_eq!(inner(&v), json!({"type": event, "error": data, "status": 401}));
        let v = read(&message::member_removed(&channel, &user));
        prop_assert_eq!(inner(&v), json!({ "user_id": user }));
        let v = read(&message::signin_success(&data));
        prop_assert_eq!(inner(&v), json!({ "user_data": data }));
        let v = read(&message::subscription_count(&channel, count));
        prop_assert_eq!(inner(&v), json!({ "subscription_count": count }));
        let v = read(&message::cache_miss(&channel));
        prop_assert_eq!(v, json!({"event": "pusher:cache_miss", "channel": channel, "data": "{}"}));
    }

    #[test]
    fn client_events_are_forwarded_verbatim(
        event in any::<String>(),
        channel in any::<String>(),
        data in json_value(),
        user in prop::option::of(any::<String>()),
    ) {
        let raw = serde_json::value::RawValue::from_string(data.to_string()).unwrap();
        let frame = message::client_event(&event, &channel, &raw, user.as_deref());
        let mut want = json!({"event": event, "channel": channel, "data": data});
        if let Some(u) = &user {
            want["user_id"] = json!(u);
        }
        prop_assert_eq!(read(&frame), want);
        // The data is written as received, not re-encoded.
        prop_assert!(frame.contains(raw.get()));
    }

    #[test]
    fn presence_data_lists_every_member_once(
        members in vec((any::<String>(), json_value()), 0..12),
    ) {
        let raws: Vec<(String, Box<serde_json::value::RawValue>)> = members
            .iter()
            .map(|(id, info)| {
                (id.clone(), serde_json::value::RawValue::from_string(info.to_string()).unwrap())
            })
            .collect();
        let text = message::presence_data(raws.iter().map(|(id, raw)| (id.as_str(), &**raw)));
        let v = read(&text);
        let mut ids: Vec<&str> = members.iter().map(|(id, _)| id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        prop_assert_eq!(&v["presence"]["ids"], &json!(ids));
        prop_assert_eq!(&v["presence"]["count"], &json!(ids.len()));
        // The last entry for an id wins (a map), and each user_info is as given.
        for id in &ids {
            let last = &members.iter().rev().find(|(i, _)| i == id).unwrap().1;
            prop_assert_eq!(&v["presence"]["hash"][*id], last);
        }
    }

    #[test]
    fn watchlist_events_list_the_ids(
        online in vec(any::<String>(), 0..5),
        offline in vec(any::<String>(), 0..5),
    ) {
        let on: Vec<&str> = online.iter().map(String::as_str).collect();
        let off: Vec<&str> = offline.iter().map(String::as_str).collect();
        let v = read(&message::watchlist_events(&on, &off));
        let mut want = Vec::new();
        if !on.is_empty() {
            want.push(json!({"name": "online", "user_ids": on}));
        }
        if !off.is_empty() {
            want.push(json!({"name": "offline", "user_ids": off}));
        }
        prop_assert_eq!(inner(&v), json!({ "events": want }));
    }
}

// ---------------------------------------------------------------------------------------
// Auth: signatures and tokens
// ---------------------------------------------------------------------------------------

/// `sig` with the character at `at` replaced by a different hex digit value (not a mere
/// change of case, which decodes to the same bytes) or by a non-hex character.
fn change_hex(sig: &str, at: Index, to: u8) -> String {
    let mut b = sig.as_bytes().to_vec();
    let i = at.index(b.len());
    let old = b[i].to_ascii_lowercase();
    let hex = b"0123456789abcdef";
    let mut new = hex[usize::from(to) % 16];
    if new == old {
        new = hex[(usize::from(to) + 1) % 16];
    }
    if to >= 200 {
        new = b"gz:+ %"[usize::from(to) % 6];
    }
    b[i] = new;
    String::from_utf8(b).unwrap()
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn signatures_verify_and_any_change_breaks_them(
        secret in any::<String>(),
        other in any::<String>(),
        msg in vec(any::<u8>(), 0..200),
        at in any::<Index>(),
        to in any::<u8>(),
    ) {
        let sig = auth::sign(&secret, &msg);
        prop_assert_eq!(sig.len(), 64);
        prop_assert!(sig.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        prop_assert!(auth::verify(&secret, &msg, &sig));
        prop_assert!(auth::verify(&secret, &msg, &sig.to_ascii_uppercase()));
        prop_assert!(!auth::verify(&secret, &msg, &change_hex(&sig, at, to)));
        prop_assert!(!auth::verify(&secret, &msg, &sig[..62]));
        let longer = format!("{sig}00");
        prop_assert!(!auth::verify(&secret, &msg, &longer));
        if other != secret {
            prop_assert!(!auth::verify(&other, &msg, &sig));
        }
    }

    #[test]
    fn verify_accepts_only_the_signature(
        secret in any::<String>(),
        msg in vec(any::<u8>(), 0..64),
        sig in prop_oneof![any_text(), "[0-9a-fA-F]{0,70}"],
    ) {
        let right = auth::sign(&secret, &msg);
        prop_assert_eq!(auth::verify(&secret, &msg, &sig), sig.to_ascii_lowercase() == right);
    }

    #[test]
    fn tokens_follow_the_rule(
        key in "[a-z0-9-]{0,12}",
        secret in any::<String>(),
        msg in any::<String>(),
        token in prop_oneof![
            any_text(),
            "[a-z0-9-]{0,12}:[0-9a-f]{0,70}",
            Just(String::new()),
        ],
        signed in any::<bool>(),
    ) {
        let token = if signed {
            format!("{key}:{}", auth::sign(&secret, msg.as_bytes()))
        } else {
            token
        };
        let want = match token.split_once(':') {
            None => Err(TokenError::Malformed),
            Some((k, _)) if k != key => Err(TokenError::WrongKey),
            Some((_, s)) if auth::verify(&secret, msg.as_bytes(), s) => Ok(()),
            Some((_, s)) => Err(TokenError::BadSignature(msg.clone(), s.to_string())),
        };
        prop_assert_eq!(auth::verify_token(&key, &secret, &token, &msg), want);
        if signed {
            prop_assert_eq!(auth::verify_token(&key, &secret, &token, &msg), Ok(()));
        }
    }

    #[test]
    fn signed_strings_are_joined_with_colons(
        socket in any::<String>(),
        channel in any::<String>(),
        data in prop::option::of(any::<String>()),
    ) {
        let s = auth::channel_string(&socket, &channel, data.as_deref());
        match &data {
            Some(d) => prop_assert_eq!(s, format!("{socket}:{channel}:{d}")),
            None => prop_assert_eq!(s, format!("{socket}:{channel}")),
        }
        prop_assert_eq!(
            auth::user_string(&socket, &channel),
            format!("{socket}::user::{channel}")
        );
    }
}

// ---------------------------------------------------------------------------------------
// Auth: signed HTTP API requests
//
// Everything about `verify_request` is here. Functions used: `auth::request_string`,
// `auth::sign`, `auth::md5_hex`, `auth::verify_request(SignedRequest { method, path, query,
// body }, key, secret, now) -> Result<Vec<(String, String)>, RequestError>` and the variants
// of `RequestError` (`Missing`, `WrongKey`, `Signature`, `BodyMd5`, `Expired { given, now }`).
// If `verify_request` goes away in favour of its parts (`verify_request_head(method, path,
// query, key, secret, now)` then `verify_body_md5(&params, body)`), only `verify_api` needs to
// change: it must run every check.
// ---------------------------------------------------------------------------------------

/// All checks of a signed API request, in the order the server runs them.
fn verify_api(
    req: SignedRequest<'_>,
    key: &str,
    secret: &str,
    now: i64,
) -> Result<Vec<(String, String)>, RequestError> {
    auth::verify_request(req, key, secret, now)
}

const API_KEY: &str = "278d425bdf160c739803";
const API_SECRET: &str = "7ad3773142a6692b25b8";

/// A signed query string (as the SDKs build it): `params` plus the auth parameters, then
/// `auth_signature`. Returns the query and the string that was signed.
fn sign_query(
    method: &str,
    path: &str,
    params: &[(String, String)],
    body: &[u8],
    timestamp: i64,
) -> (String, String) {
    let mut all = params.to_vec();
    all.push(("auth_key".into(), API_KEY.into()));
    all.push(("auth_timestamp".into(), timestamp.to_string()));
    all.push(("auth_version".into(), "1.0".into()));
    if !body.is_empty() {
        all.push(("body_md5".into(), auth::md5_hex(body)));
    }
    let to_sign = auth::request_string(method, path, &all);
    all.push((
        "auth_signature".into(),
        auth::sign(API_SECRET, to_sign.as_bytes()),
    ));
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(all.iter())
        .finish();
    (query, to_sign)
}

fn decode(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Plain parameters: lowercase keys that are not auth parameters, non-empty alphanumeric
/// values (`k=` and `k` decode alike, so a changed `=` could be harmless with empty ones).
fn plain_params() -> impl Strategy<Value = Vec<(String, String)>> {
    btree_map("[a-z][a-z_]{0,8}", "[a-z0-9]{1,12}", 0..4).prop_map(|m| {
        m.into_iter()
            .filter(|(k, _)| !k.starts_with("auth_") && k != "body_md5")
            .collect()
    })
}

/// Any parameters: unicode keys and values, percent-encoded on the wire.
fn any_params() -> impl Strategy<Value = Vec<(String, String)>> {
    vec((any::<String>(), any::<String>()), 0..4).prop_map(|ps| {
        ps.into_iter()
            .filter(|(k, _)| {
                let k = k.to_ascii_lowercase();
                !k.starts_with("auth_") && k != "body_md5"
            })
            .collect()
    })
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["GET", "POST", "get", "Post", "DELETE"]).prop_map(str::to_string),
        "[A-Za-z]{1,8}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "/apps/1/events",
            "/apps/1/batch_events",
            "/apps/1/channels",
            "/apps/1/channels/presence-a/users",
            "/users/7/terminate_connections",
        ])
        .prop_map(str::to_string),
        "/[a-zA-Z0-9/%._-]{0,40}",
    ]
}

/// Replaces byte `at` of `text` by a printable ASCII byte that differs from it other than
/// by case (a case change of a hex digit or of a signed key can legitimately verify).
fn change_byte(text: &str, at: Index, to: u8) -> String {
    let mut b = text.as_bytes().to_vec();
    let i = at.index(b.len());
    let mut new = b' ' + to % 95;
    if new.eq_ignore_ascii_case(&b[i]) {
        new = if b[i] == b'~' {
            b'!'
        } else {
            b[i].to_ascii_lowercase() + 1
        };
        if new.eq_ignore_ascii_case(&b[i]) {
            new = b'&';
        }
    }
    b[i] = new;
    String::from_utf8(b).expect("ASCII query")
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn request_string_is_canonical(
        m in method(),
        p in path(),
        params in btree_map("[a-zA-Z_]{1,10}", any::<String>(), 0..6),
        sig in any::<String>(),
        seed in any::<u64>(),
    ) {
        // Distinct lowercase keys: their order on the wire must not matter.
        let mut seen = std::collections::BTreeSet::new();
        let mut ps: Vec<(String, String)> = params
            .into_iter()
            .filter(|(k, _)| seen.insert(k.to_ascii_lowercase()))
            .filter(|(k, _)| !k.eq_ignore_ascii_case("auth_signature"))
            .collect();
        let s = auth::request_string(&m, &p, &ps);
        let mut sorted: Vec<(String, String)> = ps
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        sorted.sort();
        let q: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}={v}")).collect();
        prop_assert_eq!(&s, &format!("{}\n{}\n{}", m.to_ascii_uppercase(), p, q.join("&")));
        // Any order, and auth_signature (any case) is not signed.
        let n = ps.len();
        if n > 1 {
            ps.rotate_left((seed as usize) % n);
            ps.swap(0, (seed as usize / 7) % n);
        }
        ps.insert((seed as usize) % (n + 1), ("Auth_Signature".into(), sig));
        prop_assert_eq!(auth::request_string(&m, &p, &ps), s);
    }

    #[test]
    fn signed_requests_verify(
        m in method(),
        p in path(),
        params in prop_oneof![plain_params(), any_params()],
        body in prop_oneof![Just(Vec::new()), vec(any::<u8>(), 1..300)],
        now in 1_000_000_000i64..4_000_000_000,
        skew in -599i64..=599,
    ) {
        let (query, _) = sign_query(&m, &p, &params, &body, now + skew);
        let req = SignedRequest { method: &m, path: &p, query: &query, body: &body };
        let got = verify_api(req, API_KEY, API_SECRET, now);
        prop_assert!(got.is_ok(), "{:?} for {} {}?{}", got, m, p, query);
        let got = got.unwrap();
        for kv in &params {
            prop_assert!(got.contains(kv), "{:?} missing from {:?}", kv, got);
        }
        // Another key or secret, a body, no body.
        let got = verify_api(req, "other-key", API_SECRET, now);
        prop_assert!(matches!(got, Err(RequestError::WrongKey(_))), "{:?}", got);
        let got = verify_api(req, API_KEY, "other-secret", now);
        prop_assert!(matches!(got, Err(RequestError::Signature { .. })), "{:?}", got);
        let other_body = if body.is_empty() { b"{}".to_vec() } else { Vec::new() };
        let changed = SignedRequest { body: &other_body, ..req };
        let got = verify_api(changed, API_KEY, API_SECRET, now);
        prop_assert!(matches!(got, Err(RequestError::BodyMd5 { .. })), "{:?}", got);
    }

    #[test]
    fn a_changed_signature_fails(
        m in method(),
        p in path(),
        params in plain_params(),
        body in vec(any::<u8>(), 0..100),
        now in 1_000_000_000i64..4_000_000_000,
        at in any::<Index>(),
        to in any::<u8>(),
    ) {
        let (query, to_sign) = sign_query(&m, &p, &params, &body, now);
        let sig = auth::sign(API_SECRET, to_sign.as_bytes());
        let bad = change_hex(&sig, at, to);
        let bad_enc: String = form_urlencoded::byte_serialize(bad.as_bytes()).collect();
        let query = query.replace(&format!("auth_signature={sig}"), &format!("auth_signature={bad_enc}"));
        let req = SignedRequest { method: &m, path: &p, query: &query, body: &body };
        let got = verify_api(req, API_KEY, API_SECRET, now);
        prop_assert!(matches!(got, Err(RequestError::Signature { .. })), "{:?}", got);
    }

    #[test]
    fn any_single_byte_change_to_a_plain_query_fails(
        m in method(),
        p in path(),
        params in plain_params(),
        body in vec(any::<u8>(), 0..100),
        now in 1_000_000_000i64..4_000_000_000,
        at in any::<Index>(),
        to in any::<u8>(),
    ) {
        let (query, _) = sign_query(&m, &p, &params, &body, now);
        let changed = change_byte(&query, at, to);
        let req = SignedRequest { method: &m, path: &p, query: &changed, body: &body };
        let got = verify_api(req, API_KEY, API_SECRET, now);
        prop_assert!(got.is_err(), "{} verified after changing {} to {}", query, query, changed);
    }

    /// With arbitrary parameters some single-byte changes are harmless (`%4a` vs `%4A`,
    /// `+` vs a space, the case of a key): a changed query may verify only if it decodes to
    /// the same signed string and signature.
    #[test]
    fn a_changed_query_verifies_only_if_it_means_the_same(
        m in method(),
        p in path(),
        params in any_params(),
        body in vec(any::<u8>(), 0..50),
        now in 1_000_000_000i64..4_000_000_000,
        at in any::<Index>(),
        to in any::<u8>(),
    ) {
        let (query, to_sign) = sign_query(&m, &p, &params, &body, now);
        let changed = change_byte(&query, at, to);
        let req = SignedRequest { method: &m, path: &p, query: &changed, body: &body };
        if verify_api(req, API_KEY, API_SECRET, now).is_ok() {
            let got = decode(&changed);
            prop_assert_eq!(auth::request_string(&m, &p, &got), to_sign);
            let sig = |ps: &[(String, String)]| {
                ps.iter()
                    .find(|(k, _)| k == "auth_signature")
                    .map(|(_, v)| v.to_ascii_lowercase())
            };
            prop_assert_eq!(sig(&got), sig(&decode(&query)));
        }
    }

    #[test]
    fn a_changed_body_fails(
        p in path(),
        body in vec(any::<u8>(), 1..300),
        at in any::<Index>(),
        to in 1u8..=255,
        now in 1_000_000_000i64..4_000_000_000,
    ) {
        let (query, _) = sign_query("POST", &p, &[], &body, now);
        let mut changed = body.clone();
        let i = at.index(changed.len());
        changed[i] ^= to;
        let req = SignedRequest { method: "POST", path: &p, query: &query, body: &changed };
        let got = verify_api(req, API_KEY, API_SECRET, now);
        prop_assert!(matches!(got, Err(RequestError::BodyMd5 { .. })), "{:?}", got);
        let mut longer = body.clone();
        longer.push(to);
        let req = SignedRequest { body: &longer, ..req };
        let got = verify_api(req, API_KEY, API_SECRET, now);
        prop_assert!(matches!(got, Err(RequestError::BodyMd5 { .. })), "{:?}", got);
    }

    #[test]
    fn timestamps_are_checked_without_overflow(
        given in prop_oneof![any::<i64>(), Just(i64::MIN), Just(i64::MAX), 1_700_000_000i64..1_700_002_000],
        now in prop_oneof![any::<i64>(), Just(i64::MIN), Just(i64::MAX), 1_700_000_000i64..1_700_002_000],
    ) {
        let (query, _) = sign_query("GET", "/apps/1/channels", &[], b"", given);
        let req = SignedRequest { method: "GET", path: "/apps/1/channels", query: &query, body: b"" };
        let got = verify_api(req, API_KEY, API_SECRET, now);
        let within = (i128::from(given) - i128::from(now)).abs() < 600;
        if within {
            prop_assert!(got.is_ok(), "{:?}", got);
        } else {
            prop_assert_eq!(got.unwrap_err(), RequestError::Expired { given, now });
        }
    }

    #[test]
    fn verify_request_never_panics(
        m in any_text(),
        p in any_text(),
        query in prop_oneof![
            any_text(),
            (any_text(), any_text(), any_text(), any_text()).prop_map(|(k, t, v, s)| format!(
                "auth_key={k}&auth_timestamp={t}&auth_version={v}&auth_signature={s}"
            )),
            (any::<i64>(), any_text()).prop_map(|(t, s)| format!(
                "auth_key={API_KEY}&auth_timestamp={t}&auth_version=1.0&auth_signature={s}&body_md5={s}"
            )),
        ],
        body in vec(any::<u8>(), 0..64),
        key in any_text(),
        now in any::<i64>(),
    ) {
        let req = SignedRequest { method: &m, path: &p, query: &query, body: &body };
        let _ = verify_api(req, &key, API_SECRET, now);
        let _ = verify_api(req, API_KEY, API_SECRET, now);
    }

    #[test]
    fn missing_auth_parameters_are_named(
        missing in prop::sample::select(vec!["auth_key", "auth_timestamp", "auth_version", "auth_signature"]),
        now in 1_000_000_000i64..4_000_000_000,
    ) {
        let (query, _) = sign_query("GET", "/apps/1/channels", &[], b"", now);
        let kept: Vec<(String, String)> = decode(&query).into_iter().filter(|(k, _)| k != missing).collect();
        let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(kept.iter()).finish();
        let req = SignedRequest { method: "GET", path: "/apps/1/channels", query: &query, body: b"" };
        prop_assert_eq!(verify_api(req, API_KEY, API_SECRET, now).unwrap_err(), RequestError::Missing(missing));
    }
}

// ---------------------------------------------------------------------------------------
// Peer channel names (EXTENSIONS.md §3)
// ---------------------------------------------------------------------------------------

/// A user id a peer channel can hold (the channel characters without `;` and `,`).
fn pairable_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_=@.-]{1,40}"
}

proptest! {
    #![proptest_config(config(CASES))]

    /// Two pairable users get one name whatever their order; it parses back to them, sorted.
    #[test]
    fn peer_names_round_trip(base in "[a-z0-9-]{1,40}", x in pairable_id(), y in pairable_id()) {
        prop_assume!(x != y);
        let name = pushi::protocol::peer_channel(&base, &x, &y).expect("short enough");
        prop_assert_eq!(Some(name.clone()), pushi::protocol::peer_channel(&base, &y, &x));
        prop_assert!(ChannelName::parse(&name).is_ok(), "{} is a valid channel name", name);
        prop_assert_eq!(ChannelName::parse(&name).unwrap().kind(), ChannelKind::Peer);
        let (presence, a, b) = pushi::protocol::parse_peer(&name).expect("parses");
        prop_assert_eq!(presence, format!("presence-{base}"));
        prop_assert!(a.as_bytes() < b.as_bytes());
        prop_assert_eq!(
            {
                let mut both = [x.as_str(), y.as_str()];
                both.sort();
                both
            },
            [a, b]
        );
    }

    /// Any text: parsing never panics, and whatever parses is exactly a name the builder makes.
    #[test]
    fn peer_parse_accepts_only_built_names(text in "peer-[a-z;,.]{0,20}|.{0,40}") {
        if let Some((presence, a, b)) = pushi::protocol::parse_peer(&text) {
            let base = presence.strip_prefix("presence-").expect("a presence channel");
            prop_assert_eq!(pushi::protocol::peer_channel(base, a, b), Some(text.clone()));
        }
    }

    /// Ids holding `;` or `,` (or nothing) are never paired.
    #[test]
    fn unpairable_ids_get_no_channel(x in "[a-z]{0,5}[;,][a-z]{0,5}", y in pairable_id()) {
        prop_assert_eq!(pushi::protocol::peer_channel("room", &x, &y), None);
        prop_assert_eq!(pushi::protocol::peer_channel("room", "", &y), None);
    }
}
