//! pushi: a Pusher-compatible real-time server.
//!
//! # Layout
//!
//! Dependencies point one way: `protocol` ← `wire` ← `auth` ← {`apps`, `registry`, `storage`} ←
//! {`membership`, `adapter`, `webhooks`} ← `cluster` ← `publish` ← `context` ← {`session`,
//! `http`, `reload`} ← `server` ← `cli`/`main`. `config` is passed in, never read globally.
//!
//! - [`config`]: TOML + environment, layered with figment, validated (fails closed).
//! - [`context`]: the shared state every task gets, built apart from the server.
//! - [`protocol`]: Pusher wire types and rules; no I/O.
//! - [`auth`]: channel, user, API-request and webhook signatures.
//! - [`apps`]: the `App` record, the `AppStore` snapshot merged from `[[apps]]` and the
//!   MongoDB registry (`apps::mongo`, followed live by `apps::sync`).
//! - [`cli`]: argument parsing and `pushi apps`.
//! - [`origin`]: `allowed_origins` patterns and the handshake's `Origin` check.
//! - [`wire`]: WebSocket frames after the handshake: encoded once and shared, written
//!   straight to sockets by the fan-out, client frames parsed (the hot path).
//! - [`registry`]: this node's connections, channels and presence members.
//! - [`membership`]: the membership seam (joins and leaves, their cluster-wide transitions,
//!   counts and presence).
//! - [`adapter`]: the transport seam (delivery to every node, shared cache).
//! - [`cluster`]: both seams on Redis, node liveness and recovery.
//! - [`storage`]: stored events and offline subscriptions behind two traits; the embedded
//!   (redb) and MongoDB stores.
//! - [`publish`]: the one publish pipeline (HTTP and client events), offline subscriptions,
//!   delivery to personal channels.
//! - [`session`]: one task per WebSocket connection.
//! - [`http`]: health checks and the signed HTTP API (warp).
//! - [`webhooks`]: debounced, batched, signed webhook deliveries with retries.
//! - [`metrics`]: counters for `/metrics`.
//! - [`feed`]: the debug console's live records of an app, at no cost while none is open.
//! - [`tls`]: the server certificate, reloaded when its files change.
//! - [`reload`]: live app changes applied to sockets; SIGHUP reload of `[[apps]]`.
//! - [`server`]: the listener, shared context and ordered shutdown.

pub mod adapter;
pub mod apps;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod context;
pub mod feed;
pub mod http;
pub mod membership;
pub mod metrics;
pub mod origin;
pub mod protocol;
pub mod publish;
pub mod registry;
pub mod reload;
pub mod server;
pub mod session;
pub mod storage;
pub mod tls;
pub mod webhooks;
pub mod wire;

pub use config::Config;
pub use server::Server;
