//! Pusher close and error codes (PUSHER-SPEC 1.5) with their messages.
//!
//! 4000–4099: refused, the client must not reconnect as is; 4100–4199: reconnect after backing
//! off; 4200–4299: reconnect at once; 4300–4399: errors reported on a live socket.

/// A fatal error: sent as `pusher:error` and then as the WebSocket close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    /// The close code.
    pub code: u16,
    /// The message, Pusher's wording where Pusher has one.
    pub message: &'static str,
}

impl Close {
    /// Unknown app key.
    pub const APP_NOT_FOUND: Close = Close {
        code: 4001,
        message: "Application does not exist",
    };
    /// The app is disabled.
    pub const APP_DISABLED: Close = Close {
        code: 4003,
        message: "Application disabled",
    };
    /// The app is at `max_connections`.
    pub const OVER_QUOTA: Close = Close {
        code: 4004,
        message: "Application is over connection quota",
    };
    /// The app registry has not been read yet (startup): come back after a back-off.
    pub const NOT_READY: Close = Close {
        code: 4100,
        message: "Apps are still loading, try again shortly",
    };
    /// A cluster node cut off from Redis: come back after a back-off (and, behind a load
    /// balancer, most likely to another node).
    pub const CLUSTER_UNAVAILABLE: Close = Close {
        code: 4100,
        message: "This node is cut off from its cluster, try again shortly",
    };
    /// The URL is not `/app/{key}`.
    pub const PATH_NOT_FOUND: Close = Close {
        code: 4005,
        message: "Path not found",
    };
    /// `protocol` is not 5, 6 or 7.
    pub const UNSUPPORTED_PROTOCOL: Close = Close {
        code: 4007,
        message: "Unsupported protocol version",
    };
    /// `authorized_connections` apps: no sign-in or private subscription in time.
    pub const UNAUTHORIZED: Close = Close {
        code: 4009,
        message: "Connection not authorized within timeout",
    };
    /// The handshake's `Origin` is not in the app's `allowed_origins` (the code soketi and
    /// sockudo use; pusher-js does not retry a 40xx refusal).
    pub const ORIGIN_NOT_ALLOWED: Close = Close {
        code: 4009,
        message: "Origin not allowed",
    };
    /// `POST /users/{id}/terminate_connections`. Pusher documents that a terminated user may
    /// reconnect "if nothing else is done", so this is a 42xx code (pusher-js reconnects and
    /// signs in again only if the app still authorizes it); 4009 would stop pusher-js for good.
    pub const TERMINATED: Close = Close {
        code: 4200,
        message: "Connection terminated by the app",
    };
    /// Graceful shutdown: reconnect at once (to another node).
    pub const SHUTTING_DOWN: Close = Close {
        code: 4200,
        message: "Server is shutting down, please reconnect",
    };
    /// The client did not read its frames fast enough and its queue filled up. A 42xx code so
    /// that pusher-js reconnects at once and starts from a clean slate.
    pub const TOO_SLOW: Close = Close {
        code: 4200,
        message: "Client is not reading its messages fast enough",
    };
    /// No frame came back after a server `pusher:ping`.
    pub const PONG_TIMEOUT: Close = Close {
        code: 4201,
        message: "Pong reply not received: ping was sent to the client, but no reply was received",
    };
    /// The socket accepted no bytes for `server.write_timeout` while frames waited for it.
    pub const WRITE_TIMEOUT: Close = Close {
        code: 4200,
        message: "Client stopped reading: no data was accepted within the write timeout",
    };
    /// A frame larger than the transport accepts (WebSocket "message too big").
    pub const MESSAGE_TOO_BIG: Close = Close {
        code: 1009,
        message: "Message too big",
    };
    /// A WebSocket protocol violation (RFC 6455 7.4.1: 1002): unmasked, reserved bits,
    /// fragmented or oversized control frames, unknown opcodes.
    pub const PROTOCOL_ERROR: Close = Close {
        code: 1002,
        message: "WebSocket protocol error",
    };
    /// A text frame that is not UTF-8 (RFC 6455 7.4.1: 1007).
    pub const INVALID_PAYLOAD: Close = Close {
        code: 1007,
        message: "Invalid frame payload: text frames must be UTF-8",
    };

    /// Whether a `pusher:error` is sent ahead of the close frame: always, except for a normal
    /// 1000/1001 close, so that clients see why they were cut off.
    pub fn announces(&self) -> bool {
        !matches!(self.code, 1000 | 1001)
    }
}

/// Non-fatal error code for a subscription over `limits.max_channels_per_connection`.
pub const SUBSCRIPTION_LIMIT: u16 = 4300;

/// Non-fatal error code for `pusher:subscribe` requests over
/// `limits.max_subscribes_per_second`.
pub const SUBSCRIBE_RATE_LIMIT: u16 = 4301;

/// Non-fatal error code for a client event over the rate limit.
pub const CLIENT_EVENT_RATE_LIMIT: u16 = 4301;

/// Non-fatal error code for a watchlist over [`MAX_WATCHLIST`] ids.
pub const WATCHLIST_LIMIT: u16 = 4302;

/// Most user ids a watchlist may hold (Pusher: 100).
pub const MAX_WATCHLIST: usize = 100;
