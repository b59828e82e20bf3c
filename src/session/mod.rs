//! WebSocket sessions: the upgrade of `/app/{key}` requests, then one task per connection.
//!
//! The upgrade is done here rather than with warp's `ws()` filter: after the handshake the
//! session takes the TCP socket itself, so that the fan-out can write shared, pre-framed
//! events straight to it (`wire`), and an idle connection holds no read or write buffer.
//!
//! Owns: handshake checks, taking the socket from hyper, spawning the tracked session task.
//! Must not touch: HTTP API routes.

mod handler;

use std::sync::Arc;

use base64::Engine as _;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use hyper::{Method, Request, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

pub use handler::run;

use crate::context::Context;

/// Whether the request asks for a WebSocket upgrade.
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    let has = |name, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    has(UPGRADE, "websocket") && has(CONNECTION, "upgrade")
}

/// Largest frame accepted from a client: room for the largest event plus its envelope.
pub fn transport_cap(ctx: &Context) -> usize {
    (ctx.config.limits.max_event_payload_kb * 1024 * 4).max(64 * 1024)
}

/// The connection under a WebSocket: a plain socket, or a socket and its TLS state (the
/// handshake done).
pub enum Link {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://` (boxed: rustls's state is over a kilobyte).
    Tls(TcpStream, Box<rustls::ServerConnection>),
}

/// What the session needs from the upgrade request.
#[derive(Debug, Clone, Default)]
pub struct Handshake {
    /// The request path (`/app/{key}`).
    pub path: String,
    /// The raw query (`protocol=7&client=js...`).
    pub query: Option<String>,
    /// The `Origin` header, sent by browsers.
    pub origin: Option<String>,
}

/// Checks what RFC 6455 4.2.1 requires of an opening handshake: a GET over HTTP/1.1,
/// version 13 and a `Sec-WebSocket-Key` that is the base64 of 16 bytes.
fn check_handshake<B>(req: &Request<B>) -> Result<&HeaderValue, &'static str> {
    if req.method() != Method::GET {
        return Err("Bad WebSocket handshake: the method must be GET");
    }
    if req.version() != Version::HTTP_11 {
        return Err("Bad WebSocket handshake: HTTP/1.1 is required");
    }
    if req
        .headers()
        .get(SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v != "13")
    {
        return Err("Bad WebSocket handshake: Sec-WebSocket-Version must be 13");
    }
    let key = req
        .headers()
        .get(SEC_WEBSOCKET_KEY)
        .ok_or("Bad WebSocket handshake: Sec-WebSocket-Key is required")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(key.as_bytes());
    if !decoded.is_ok_and(|k| k.len() == 16) {
        return Err("Bad WebSocket handshake: Sec-WebSocket-Key must be 16 bytes in base64");
    }
    Ok(key)
}

/// Answers the upgrade and spawns the session. The app and protocol are checked inside the
/// session so that refusals reach the client as `pusher:error` plus a close code.
pub fn upgrade(req: Request<Incoming>, ctx: Arc<Context>) -> warp::reply::Response {
    let key = match check_handshake(&req) {
        Ok(key) => key,
        Err(why) => {
            let body = serde_json::json!({ "error": why }).to_string();
            let mut res = warp::reply::Response::new(body.into());
            *res.status_mut() = StatusCode::BAD_REQUEST;
            res.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return res;
        }
    };
    let accept = derive_accept_key(key.as_bytes());
    let handshake = Handshake {
        path: req.uri().path().to_string(),
        query: req.uri().query().map(str::to_string),
        origin: req
            .headers()
            .get(hyper::header::ORIGIN)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
    };
    let on_upgrade = hyper::upgrade::on(req);
    let handshake = Box::new(handshake);
    let tracker = ctx.tracker.clone();
    let fut = async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => return tracing::debug!(cause = %err, "websocket upgrade failed"),
        };
        // The server serves every connection as `TokioIo<TcpStream>` or, with TLS, as
        // `TokioIo<TlsStream<TcpStream>>` (see `server`), so the upgraded connection is that
        // socket (and its rustls state), plus any bytes hyper read past the request head.
        let (link, initial) = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => (Link::Plain(parts.io.into_inner()), parts.read_buf),
            Err(upgraded) => match upgraded.downcast::<TokioIo<TlsStream<TcpStream>>>() {
                Ok(parts) => {
                    let (socket, tls) = parts.io.into_inner().into_inner();
                    (Link::Tls(socket, Box::new(tls)), parts.read_buf)
                }
                Err(_) => {
                    return tracing::error!("websocket upgrade on a connection that is not TCP")
                }
            },
        };
        run(link, initial, ctx, handshake).await;
    };
    tracker.spawn(fut);
    let mut res = warp::reply::Response::default();
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = res.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, key: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri("/app/k")
            .header(SEC_WEBSOCKET_VERSION, "13")
            .header(SEC_WEBSOCKET_KEY, key)
            .body(())
            .unwrap()
    }

    #[test]
    fn handshake_rules() {
        assert!(check_handshake(&req(Method::GET, "dGhlIHNhbXBsZSBub25jZQ==")).is_ok());
        for key in [
            "",
            "x",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZWVl",
            "!!!!",
        ] {
            assert!(check_handshake(&req(Method::GET, key)).is_err(), "{key:?}");
        }
        assert!(check_handshake(&req(Method::POST, "dGhlIHNhbXBsZSBub25jZQ==")).is_err());
    }
}
