//! Signatures: channel authorization, user sign-in, HTTP API request signing and webhook
//! signing, all HMAC-SHA256 with the app secret (PUSHER-SPEC 2.1, 3, 4).
//!
//! Owns: the strings that get signed, hex encoding, constant-time comparison (through
//! `Mac::verify_slice`), the 600 s timestamp window with `now` passed in, `body_md5`.
//! Must not touch: app lookup, HTTP types, clocks, I/O.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How far an API request's `auth_timestamp` may be from the server clock, in seconds.
pub const TIMESTAMP_WINDOW: i64 = 600;

fn mac(secret: &str) -> HmacSha256 {
    // HMAC takes keys of any length; this cannot fail.
    HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length")
}

/// Lowercase hex HMAC-SHA256 of `message`.
pub fn sign(secret: &str, message: &[u8]) -> String {
    let mut m = mac(secret);
    m.update(message);
    hex::encode(m.finalize().into_bytes())
}

/// Checks a hex signature in constant time. Malformed hex is simply a wrong signature.
pub fn verify(secret: &str, message: &[u8], signature_hex: &str) -> bool {
    let Ok(sig) = hex::decode(signature_hex) else {
        return false;
    };
    let mut m = mac(secret);
    m.update(message);
    m.verify_slice(&sig).is_ok()
}

/// What a debug console token signs: the app and the expiry (unix seconds).
fn console_message(app_id: &str, expires: u64) -> String {
    format!("pushi-console\n{app_id}\n{expires}")
}

/// A debug console token for `app_id`, valid until `expires` (unix seconds):
/// `expires.signature`, signed with the app secret, so any node with the app can check it
/// and rotating the secret ends every console session.
pub fn console_token(secret: &str, app_id: &str, expires: u64) -> String {
    let sig = sign(secret, console_message(app_id, expires).as_bytes());
    format!("{expires}.{sig}")
}

/// Whether `token` is a console token for `app_id` that has not expired at `now`.
pub fn verify_console_token(secret: &str, app_id: &str, token: &str, now: u64) -> bool {
    let Some((expires, sig)) = token.split_once('.') else {
        return false;
    };
    let Ok(expires) = expires.parse::<u64>() else {
        return false;
    };
    expires > now && verify(secret, console_message(app_id, expires).as_bytes(), sig)
}

/// Whether `given` is the app secret, compared in constant time (both are turned into a
/// MAC first, so neither their contents nor their lengths show in the timing).
pub fn is_secret(secret: &str, given: &str) -> bool {
    let probe = b"pushi-console-login";
    verify(secret, probe, &sign(given, probe))
}

/// Lowercase hex MD5 of a request body.
pub fn md5_hex(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// What a channel subscription signs: `socket_id:channel[:channel_data]`.
pub fn channel_string(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// What a user sign-in signs: `socket_id::user::user_data`.
pub fn user_string(socket_id: &str, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

/// Why a WebSocket `auth` token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token, or not `<key>:<signature>`.
    #[error("Invalid auth: expected \"<app_key>:<signature>\"")]
    Malformed,
    /// The key part is not this app's key.
    #[error("Invalid key in auth token")]
    WrongKey,
    /// The signature does not match.
    #[error("Invalid signature: Expected HMAC SHA256 hex digest of {0}, but got {1}")]
    BadSignature(String, String),
}

/// Verifies a `<app_key>:<hex signature>` token over `message`.
pub fn verify_token(
    app_key: &str,
    secret: &str,
    token: &str,
    message: &str,
) -> Result<(), TokenError> {
    let (key, sig) = token.split_once(':').ok_or(TokenError::Malformed)?;
    if key != app_key {
        return Err(TokenError::WrongKey);
    }
    if verify(secret, message.as_bytes(), sig) {
        Ok(())
    } else {
        Err(TokenError::BadSignature(
            message.to_string(),
            sig.to_string(),
        ))
    }
}

/// Why a signed HTTP API request was refused (HTTP 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A required query parameter is missing.
    #[error("Missing parameter: {0}")]
    Missing(&'static str),
    /// `auth_key` is not the app's key.
    #[error("Unknown auth_key {0:?}")]
    WrongKey(String),
    /// `auth_version` is not 1.0.
    #[error("Version not supported: auth_version must be 1.0")]
    Version,
    /// `auth_timestamp` is not a number.
    #[error("Invalid auth_timestamp {0:?}")]
    BadTimestamp(String),
    /// Too far from the server clock.
    #[error("Timestamp expired: Given timestamp ({given}) not within {TIMESTAMP_WINDOW}s of server time ({now})")]
    Expired {
        /// The request's timestamp.
        given: i64,
        /// Server time.
        now: i64,
    },
    /// `body_md5` missing for a body, or not the body's MD5.
    #[error("Invalid body_md5: expected {expected}, got {got:?}")]
    BodyMd5 {
        /// The body's MD5.
        expected: String,
        /// What the request said.
        got: Option<String>,
    },
    /// The signature is wrong.
    #[error("Invalid signature: you should have sent HmacSHA256Hex({to_sign:?}, your_secret_key), but you sent {got:?}")]
    Signature {
        /// The string the server signed.
        to_sign: String,
        /// The signature that came.
        got: String,
    },
}

/// A request as it came over the wire, for signature checking.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    /// HTTP method, any case.
    pub method: &'a str,
    /// The path exactly as sent.
    pub path: &'a str,
    /// The raw query string (without `?`).
    pub query: &'a str,
    /// The raw body.
    pub body: &'a [u8],
}

/// The canonical string to sign: `METHOD\npath\nsorted lowercased unescaped query`.
pub fn request_string(method: &str, path: &str, params: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, &str)> = params
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("auth_signature"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{}\n{}\n{}",
        method.to_ascii_uppercase(),
        path,
        query.join("&")
    )
}

/// Verifies a signed HTTP API request against the app's key and secret at `now` (Unix
/// seconds). Returns the decoded query parameters.
pub fn verify_request(
    req: SignedRequest<'_>,
    app_key: &str,
    secret: &str,
    now: i64,
) -> Result<Vec<(String, String)>, RequestError> {
    let params = verify_request_head(req.method, req.path, req.query, app_key, secret, now)?;
    verify_body_md5(&params, req.body)?;
    Ok(params)
}

/// Everything that can be checked before the body is read: key, version, timestamp and the
/// signature over method, path and query. The query carries `body_md5`, so a request that
/// passes has a signed promise of its body. Returns the decoded query parameters.
pub fn verify_request_head(
    method: &str,
    path: &str,
    query: &str,
    app_key: &str,
    secret: &str,
    now: i64,
) -> Result<Vec<(String, String)>, RequestError> {
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let get = |name: &str| param(&params, name);
    let key = get("auth_key").ok_or(RequestError::Missing("auth_key"))?;
    let timestamp = get("auth_timestamp").ok_or(RequestError::Missing("auth_timestamp"))?;
    let version = get("auth_version").ok_or(RequestError::Missing("auth_version"))?;
    let signature = get("auth_signature").ok_or(RequestError::Missing("auth_signature"))?;
    if key != app_key {
        return Err(RequestError::WrongKey(key.to_string()));
    }
    if version != "1.0" {
        return Err(RequestError::Version);
    }
    let given: i64 = timestamp
        .parse()
        .map_err(|_| RequestError::BadTimestamp(timestamp.to_string()))?;
    // abs_diff: `given - now` overflows for timestamps near i64::MIN.
    if given.abs_diff(now) >= TIMESTAMP_WINDOW.unsigned_abs() {
        return Err(RequestError::Expired { given, now });
    }
    let to_sign = request_string(method, path, &params);
    if !verify(secret, to_sign.as_bytes(), signature) {
        return Err(RequestError::Signature {
            to_sign,
            got: signature.to_string(),
        });
    }
    Ok(params)
}

/// The body check that follows [`verify_request_head`]: a non-empty body (or a request
/// that names one) must match the signed `body_md5`.
pub fn verify_body_md5(params: &[(String, String)], body: &[u8]) -> Result<(), RequestError> {
    let body_md5 = param(params, "body_md5");
    if !body.is_empty() || body_md5.is_some() {
        let expected = md5_hex(body);
        if body_md5 != Some(expected.as_str()) {
            return Err(RequestError::BodyMd5 {
                expected,
                got: body_md5.map(str::to_string),
            });
        }
    }
    Ok(())
}

/// The first value of query parameter `name`.
pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `X-Pusher-Signature` of a webhook body.
pub fn webhook_signature(secret: &str, body: &[u8]) -> String {
    sign(secret, body)
}

#[cfg(test)]
mod tests {
    //! The vectors live in `fixtures/auth/vectors.json`, shared with compat-tests.
    use super::*;
    use serde_json::Value;

    fn vectors() -> Value {
        serde_json::from_str(include_str!("../fixtures/auth/vectors.json")).unwrap()
    }

    fn s<'a>(v: &'a Value, k: &str) -> &'a str {
        v[k].as_str().unwrap_or_else(|| panic!("missing {k}"))
    }

    #[test]
    fn channel_vectors() {
        for v in vectors()["channel"].as_array().unwrap() {
            let msg = channel_string(
                s(v, "socket_id"),
                s(v, "channel"),
                v["channel_data"].as_str(),
            );
            assert_eq!(
                sign(s(v, "secret"), msg.as_bytes()),
                s(v, "signature"),
                "{v}"
            );
            let token = format!("{}:{}", s(v, "key"), s(v, "signature"));
            assert_eq!(
                verify_token(s(v, "key"), s(v, "secret"), &token, &msg),
                Ok(())
            );
            assert_eq!(
                verify_token("other", s(v, "secret"), &token, &msg),
                Err(TokenError::WrongKey)
            );
        }
    }

    #[test]
    fn user_vector() {
        let v = &vectors()["user"];
        let msg = user_string(s(v, "socket_id"), s(v, "user_data"));
        assert_eq!(sign(s(v, "secret"), msg.as_bytes()), s(v, "signature"));
    }

    #[test]
    fn api_vectors() {
        for v in vectors()["api"].as_array().unwrap() {
            let body = s(v, "body").as_bytes();
            if !body.is_empty() {
                assert_eq!(md5_hex(body), s(v, "body_md5"), "{v}");
            }
            let params: Vec<(String, String)> = form_urlencoded::parse(s(v, "query").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let to_sign = request_string(s(v, "method"), s(v, "path"), &params);
            assert_eq!(to_sign, s(v, "string_to_sign"));
            assert_eq!(sign(s(v, "secret"), to_sign.as_bytes()), s(v, "signature"));
            let query = format!("{}&auth_signature={}", s(v, "query"), s(v, "signature"));
            let req = SignedRequest {
                method: s(v, "method"),
                path: s(v, "path"),
                query: &query,
                body,
            };
            let now = v["timestamp"].as_i64().unwrap() + 10;
            assert!(
                verify_request(req, s(v, "key"), s(v, "secret"), now).is_ok(),
                "{v}"
            );
            // Outside the window.
            assert!(matches!(
                verify_request(req, s(v, "key"), s(v, "secret"), now + 600),
                Err(RequestError::Expired { .. })
            ));
            // Wrong secret.
            assert!(matches!(
                verify_request(req, s(v, "key"), "nope", now),
                Err(RequestError::Signature { .. })
            ));
            // Wrong key.
            assert!(matches!(
                verify_request(req, "nope", s(v, "secret"), now),
                Err(RequestError::WrongKey(_))
            ));
            // Tampered body.
            if !body.is_empty() {
                let req = SignedRequest {
                    body: b"{\"tampered\":1}",
                    ..req
                };
                assert!(matches!(
                    verify_request(req, s(v, "key"), s(v, "secret"), now),
                    Err(RequestError::BodyMd5 { .. })
                ));
            }
        }
    }

    #[test]
    fn timestamps_far_from_now_never_overflow() {
        let now = 1_700_000_000;
        for given in [i64::MIN, i64::MIN + now, i64::MAX, -now] {
            let query =
                format!("auth_key=k&auth_timestamp={given}&auth_version=1.0&auth_signature=00");
            let got = verify_request_head("GET", "/x", &query, "k", "s", now);
            assert!(
                matches!(got, Err(RequestError::Expired { .. })),
                "{given}: {got:?}"
            );
        }
    }

    #[test]
    fn query_values_are_signed_unescaped() {
        let params = vec![
            ("auth_key".to_string(), "foo".to_string()),
            ("Name".to_string(), "Something else".to_string()),
        ];
        assert_eq!(
            request_string("get", "/x", &params),
            "GET\n/x\nauth_key=foo&name=Something else"
        );
    }

    #[test]
    fn webhook_vector() {
        let v = &vectors()["webhook"];
        assert_eq!(
            webhook_signature(s(v, "secret"), s(v, "body").as_bytes()),
            s(v, "signature")
        );
    }

    #[test]
    fn malformed_signatures_are_just_wrong() {
        assert!(!verify("s", b"m", "zz"));
        assert!(!verify("s", b"m", ""));
        assert_eq!(
            verify_token("k", "s", "no-colon", "m"),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn console_tokens_are_bound_to_app_secret_and_time() {
        let t = console_token("s", "1", 100);
        assert!(verify_console_token("s", "1", &t, 99));
        assert!(!verify_console_token("s", "1", &t, 100), "expired");
        assert!(!verify_console_token("s", "2", &t, 99), "another app");
        assert!(
            !verify_console_token("rotated", "1", &t, 99),
            "another secret"
        );
        let later = t.replacen("100.", "200.", 1);
        assert!(
            !verify_console_token("s", "1", &later, 99),
            "expiry is signed"
        );
        assert!(!verify_console_token("s", "1", "garbage", 0));
        assert!(is_secret("s3cret", "s3cret"));
        assert!(!is_secret("s3cret", "s3cre"));
    }
}
