//! WebSocket sessions: the upgrade of `/app/{key}` requests, then one task per connection.
//!
//! The upgrade is done here rather than with warp's `ws()` filter because warp fixes
//! tungstenite's buffer sizes (128 KiB read + 128 KiB write per socket) and copies every
//! outbound text frame into a new `String`; pushi sizes the buffers itself and sends shared,
//! reference-counted frames (see `handler`).
//!
//! Owns: handshake checks, WebSocket configuration, spawning the tracked session task.
//! Must not touch: HTTP API routes.

mod handler;

use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

pub use handler::run;

use crate::server::Context;

/// Initial size of tungstenite's read buffer, allocated per connection. Pusher frames are
/// small; a larger frame grows the buffer as needed, so a small initial size costs nothing in
/// correctness and saves ~127 KiB per idle connection against tungstenite's default.
const READ_BUFFER: usize = 1024;

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

/// The tungstenite configuration for one connection, sized from the app limits.
pub fn ws_config(ctx: &Context) -> WebSocketConfig {
    let cap = transport_cap(ctx);
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // Frames are written through at once; the queue in front of the socket is ours.
        .write_buffer_size(0)
        .max_write_buffer_size(cap * 4)
        .max_message_size(Some(cap))
        .max_frame_size(Some(cap))
}

/// Largest frame accepted from a client: room for the largest event plus its envelope.
pub fn transport_cap(ctx: &Context) -> usize {
    (ctx.config.limits.max_event_payload_kb * 1024 * 4).max(64 * 1024)
}

/// Answers the upgrade and spawns the session. The app and protocol are checked inside the
/// session so that refusals reach the client as `pusher:error` plus a close code.
pub fn upgrade(req: Request<Incoming>, ctx: Context) -> warp::reply::Response {
    let version_ok = req
        .headers()
        .get(SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY).filter(|_| version_ok) else {
        let mut res = warp::reply::Response::new(
            r#"{"error":"Bad WebSocket handshake: Sec-WebSocket-Key and version 13 are required"}"#
                .into(),
        );
        *res.status_mut() = StatusCode::BAD_REQUEST;
        return res;
    };
    let accept = derive_accept_key(key.as_bytes());
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let config = ws_config(&ctx);
    let tracker = ctx.tracker.clone();
    let fut = async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                run(ws, ctx, &path, query.as_deref()).await;
            }
            Err(err) => tracing::debug!(cause = %err, "websocket upgrade failed"),
        }
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
