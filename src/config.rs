//! Typed configuration: defaults, the TOML file and `PUSHI_<SECTION>__<KEY>` environment
//! variables, layered with figment, then validated.
//!
//! Owns: the config structs, their defaults, loading and validation, secret redaction in `Debug`.
//! Must not touch: sockets, the registry, or the environment outside [`load`].
//!
//! Config fails closed: an unknown key, a value of the wrong type or an invalid value is an
//! error naming the key (`apps[0].max_connections`, `server.port`, ...), never a silent default.

use std::fmt;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Problems found while loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file named with `--config` / `PUSHI_CONFIG` does not exist.
    #[error("config file {0} does not exist")]
    Missing(String),
    /// figment could not parse or extract the configuration (its message names the key).
    #[error("{0}")]
    Parse(#[from] Box<figment::Error>),
    /// Values that parse but make no sense; one line per problem.
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listener and connection timing.
    pub server: ServerConfig,
    /// Pusher's documented limits.
    pub limits: LimitsConfig,
    /// Where `/metrics` is served.
    pub metrics: MetricsConfig,
    /// How log lines look.
    pub log: LogConfig,
    /// The debug console at `/console` (off by default).
    pub console: ConsoleConfig,
    /// The MongoDB app registry; without it, apps come from `[[apps]]` alone.
    pub mongodb: Option<MongoConfig>,
    /// Stored events and offline subscriptions.
    pub storage: StorageConfig,
    /// Several nodes joined through Redis; without it, pushi is one node.
    pub cluster: Option<ClusterConfig>,
    /// Apps declared in the config file (with `[mongodb]`, served beside the registry's).
    pub apps: Vec<AppConfig>,
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to bind.
    pub host: String,
    /// Port to bind (0 picks a free port, which the log then names).
    pub port: u16,
    /// Seconds of client silence before the server sends `pusher:ping`; advertised to clients
    /// in `pusher:connection_established`.
    pub activity_timeout: u64,
    /// Seconds to wait for any frame after a server `pusher:ping` before closing with 4201.
    pub pong_timeout: u64,
    /// Frames that may wait for one slow client before it is disconnected (4202... see
    /// `protocol::codes`).
    pub max_queued_messages: usize,
    /// Seconds that graceful shutdown may take before the process exits anyway.
    pub shutdown_timeout: u64,
    /// Seconds a connection of an `authorized_connections` app has to sign in (or subscribe
    /// to a private channel) before it is closed with 4009.
    pub authorization_timeout: u64,
    /// Seconds an HTTP connection has to send a complete request head, counted from the
    /// connect or from the end of the previous response (so it is also the keep-alive idle
    /// timeout). Slow and idle connections are closed after it.
    pub http_header_timeout: u64,
    /// Seconds an HTTP API request has to send its whole body (408 after it).
    pub http_body_timeout: u64,
    /// Most connections that have not yet completed a first request or upgrade; past it the
    /// oldest of them is closed, so idle connects cannot exhaust file descriptors.
    pub max_pending_connections: usize,
    /// Largest request head (request line and headers), in KiB (431 above it).
    pub max_request_head_kb: usize,
    /// Seconds a WebSocket may accept no bytes while frames wait for it before it is closed.
    pub write_timeout: u64,
    /// Native TLS on the same port (`wss://`, `https://`); without it the port speaks
    /// plain `ws://` and `http://`.
    pub tls: Option<TlsConfig>,
}

/// `[server.tls]`: the certificate chain and key, PEM files re-read when they change.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first (`fullchain.pem` from Let's Encrypt).
    pub cert: String,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 6001,
            activity_timeout: 120,
            pong_timeout: 30,
            max_queued_messages: 512,
            shutdown_timeout: 10,
            authorization_timeout: 30,
            http_header_timeout: 15,
            http_body_timeout: 15,
            max_pending_connections: 1024,
            max_request_head_kb: 16,
            write_timeout: 30,
            tls: None,
        }
    }
}

/// `[limits]`: defaults are Pusher's documented limits (PUSHER-SPEC 1.7).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest event `data`, in KiB (HTTP 413 / `pusher:error` above it).
    pub max_event_payload_kb: usize,
    /// Most channels one `POST /events` may name.
    pub max_channels_per_event: usize,
    /// Most events in one `POST /batch_events`.
    pub max_batch_size: usize,
    /// Most members in one presence channel.
    pub max_presence_members: usize,
    /// Largest presence `user_info`, in KiB.
    pub max_presence_user_info_kb: usize,
    /// Seconds a cache channel keeps its last event (Pusher: up to 30 minutes).
    pub cache_ttl: u64,
    /// Most channels one connection may be subscribed to at once (4300 above it).
    pub max_channels_per_connection: usize,
    /// Sustained `pusher:subscribe` requests per second per connection (4301 above it). A
    /// connection may burst up to `max_channels_per_connection` at once, so a reconnecting
    /// client can resubscribe all its channels.
    pub max_subscribes_per_second: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_event_payload_kb: 10,
            max_channels_per_event: 100,
            max_batch_size: 10,
            max_presence_members: 100,
            max_presence_user_info_kb: 1,
            cache_ttl: 1800,
            max_channels_per_connection: 1000,
            max_subscribes_per_second: 100,
        }
    }
}

/// `[metrics]`: the Prometheus endpoint, on its own listener so that it is not exposed with
/// the public port.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` at all.
    pub enabled: bool,
    /// Address to bind.
    pub host: String,
    /// Port to bind (0 picks a free one, which the log then names).
    pub port: u16,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            host: "127.0.0.1".into(),
            port: 9601,
        }
    }
}

/// `[log]`: the format of log lines on stderr. Which lines: `RUST_LOG` (default `info`;
/// `debug` adds one line per connection lifecycle event, never one per message).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (default) or `json` (one JSON object per line, for log shippers).
    pub format: LogFormat,
}

/// `[console]`: the debug console, a web page at `/console` on the server's port where
/// whoever has an app's id and secret watches that app live and publishes to it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Serve it at all (off by default: `/console` is then a 404 like any unknown path).
    pub enabled: bool,
}

/// [`LogConfig::format`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[storage]`: stored events and offline subscriptions (EXTENSIONS.md §1–2). With
/// `[mongodb]` they live in its database; otherwise in an embedded store under `data_dir`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Directory of the embedded store (`pushi.redb`), created when missing; relative paths
    /// are relative to the working directory. Unused with `[mongodb]`.
    pub data_dir: String,
    /// Most events kept per channel; the oldest go first.
    pub max_events_per_channel: u64,
    /// Seconds an event is kept.
    pub max_event_age: u64,
    /// Stored events a personal channel replays on subscribe.
    pub replay_last: usize,
    /// Most events a `since` recovery replays (the newest of them when more were missed).
    pub replay_max: usize,
    /// Most channels one user may be offline-subscribed to.
    pub max_subscriptions_per_user: usize,
    /// Seconds between two retention passes.
    pub prune_interval: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: "pushi-data".into(),
            max_events_per_channel: 1000,
            max_event_age: 7 * 24 * 3600,
            replay_last: 10,
            replay_max: 100,
            max_subscriptions_per_user: 100,
            prune_interval: 60,
        }
    }
}

impl StorageConfig {
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.data_dir.is_empty() {
            problems.push("storage.data_dir: must not be empty".to_string());
        }
        for (name, value) in [
            (
                "storage.max_events_per_channel",
                self.max_events_per_channel,
            ),
            ("storage.max_event_age", self.max_event_age),
            ("storage.replay_max", self.replay_max as u64),
            (
                "storage.max_subscriptions_per_user",
                self.max_subscriptions_per_user as u64,
            ),
            ("storage.prune_interval", self.prune_interval),
        ] {
            if value == 0 {
                problems.push(format!("{name}: must be at least 1"));
            }
        }
        // A replay is one frame; past 100 events of up to 10 KiB it would be megabytes.
        if self.replay_last > 100 {
            problems.push("storage.replay_last: at most 100".to_string());
        }
        if self.replay_max > 1000 {
            problems.push("storage.replay_max: at most 1000".to_string());
        }
        problems
    }
}

/// `[mongodb]`: the app registry. TLS and authentication go in the URI
/// (`mongodb://user:pass@host/?tls=true&authSource=admin`), as with every MongoDB driver.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoConfig {
    /// Connection string, `mongodb://` or `mongodb+srv://`. Its password is never logged.
    pub uri: String,
    /// Database holding the `apps` collection.
    #[serde(default = "default_database")]
    pub database: String,
    /// Seconds to open a connection to a server.
    #[serde(default = "five")]
    pub connect_timeout: u64,
    /// Seconds an operation waits for a reachable server before it fails.
    #[serde(default = "five")]
    pub server_selection_timeout: u64,
    /// Seconds startup keeps retrying an unreachable registry before pushi exits non-zero.
    #[serde(default = "thirty")]
    pub startup_timeout: u64,
    /// Follow changes through a change stream (needs a replica set or sharded cluster); when
    /// false, or when the server offers none, poll every `poll_interval` seconds instead.
    #[serde(default = "yes")]
    pub change_stream: bool,
    /// Seconds between two reads of the whole collection when polling.
    #[serde(default = "one")]
    pub poll_interval: u64,
}

fn default_database() -> String {
    "pushi".into()
}

fn one() -> u64 {
    1
}

fn five() -> u64 {
    5
}

fn thirty() -> u64 {
    30
}

impl fmt::Debug for MongoConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MongoConfig")
            .field("uri", &redact_uri(&self.uri))
            .field("database", &self.database)
            .field("connect_timeout", &self.connect_timeout)
            .field("server_selection_timeout", &self.server_selection_timeout)
            .field("startup_timeout", &self.startup_timeout)
            .field("change_stream", &self.change_stream)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

/// A connection string with its password replaced by `***`, for logs and errors.
pub fn redact_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_string();
    };
    // The userinfo ends at the last '@' before the first '/' (a password may contain '@'
    // only percent-encoded, but be generous).
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let user = authority[..at].split(':').next().unwrap_or("");
            let password = authority[..at].contains(':');
            format!(
                "{scheme}://{user}{}@{}",
                if password { ":***" } else { "" },
                &rest[at + 1..]
            )
        }
        None => uri.to_string(),
    }
}

/// `[cluster]`: nodes that serve the same apps share membership, counts and delivery
/// through one Redis.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port[/db]`. Its password is never logged. (`rediss://`,
    /// TLS to Redis, is refused for now: reach a remote Redis over a private network or a TLS
    /// tunnel.)
    pub redis_url: String,
    /// Prefix of every key and pub/sub channel, so several clusters can share one Redis.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Seconds after its last heartbeat that a silent node is declared dead and its members
    /// are removed by the others.
    #[serde(default = "ten_secs")]
    pub node_timeout: u64,
    /// Seconds a Redis command may take before the node counts Redis as unreachable.
    #[serde(default = "two")]
    pub command_timeout: u64,
    /// Seconds startup keeps retrying an unreachable Redis before pushi exits non-zero.
    #[serde(default = "thirty")]
    pub startup_timeout: u64,
}

fn default_prefix() -> String {
    "pushi".into()
}

fn ten_secs() -> u64 {
    10
}

fn two() -> u64 {
    2
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis_url", &redact_uri(&self.redis_url))
            .field("prefix", &self.prefix)
            .field("node_timeout", &self.node_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("startup_timeout", &self.startup_timeout)
            .finish()
    }
}

impl ClusterConfig {
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let url = &self.redis_url;
        if url.starts_with("rediss://") {
            problems.push(
                "cluster.redis_url: rediss:// (TLS to Redis) is not supported yet; use redis:// \
                 over a private network or a TLS tunnel"
                    .to_string(),
            );
        } else if !url.starts_with("redis://") {
            problems.push(format!(
                "cluster.redis_url: must start with redis:// (got {:?})",
                redact_uri(url)
            ));
        }
        if self.prefix.is_empty() || self.prefix.contains(char::is_whitespace) {
            problems.push("cluster.prefix: must be non-empty, without spaces".to_string());
        }
        for (name, value) in [
            ("cluster.node_timeout", self.node_timeout),
            ("cluster.command_timeout", self.command_timeout),
            ("cluster.startup_timeout", self.startup_timeout),
        ] {
            if value == 0 {
                problems.push(format!("{name}: must be at least 1"));
            }
        }
        // A node heartbeats every third of the timeout; a command that may take longer
        // than that would let a live node be declared dead.
        if self.node_timeout < 3 * self.command_timeout {
            problems.push(format!(
                "cluster.node_timeout: must be at least 3 x cluster.command_timeout ({} s)",
                3 * self.command_timeout
            ));
        }
        problems
    }
}

/// `[[apps]]`: one Pusher app.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// App id, used in HTTP API paths. A string; keep it numeric for the Python SDK.
    pub id: String,
    /// Public key, used in the WebSocket path and in signatures.
    pub key: String,
    /// Secret used to sign; never logged.
    pub secret: String,
    /// A disabled app refuses connections (4003) and API calls (403).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Allow `client-*` events on private and presence channels.
    #[serde(default)]
    pub client_events: bool,
    /// Send `pusher_internal:subscription_count` to subscribers.
    #[serde(default)]
    pub subscription_count: bool,
    /// Require a sign-in (or a private subscription) within a timeout.
    #[serde(default)]
    pub authorized_connections: bool,
    /// Most concurrent connections; 0 = unlimited.
    #[serde(default)]
    pub max_connections: usize,
    /// Client events one connection may send per second (Pusher: 10).
    #[serde(default = "ten")]
    pub max_client_events_per_second: u32,
    /// Webhook targets.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// Browser origins allowed to connect (`https://app.example.com`, `*.example.com`,
    /// `example.com:8080`, `*`); empty = any.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

fn yes() -> bool {
    true
}

fn ten() -> u32 {
    10
}

impl AppConfig {
    /// An app with these credentials and every other setting at its default (as an
    /// `[[apps]]` table with only `id`, `key` and `secret`).
    pub fn new(id: impl Into<String>, key: impl Into<String>, secret: impl Into<String>) -> Self {
        AppConfig {
            id: id.into(),
            key: key.into(),
            secret: secret.into(),
            enabled: true,
            client_events: false,
            subscription_count: false,
            authorized_connections: false,
            max_connections: 0,
            max_client_events_per_second: ten(),
            webhooks: Vec::new(),
            allowed_origins: Vec::new(),
        }
    }

    /// What is wrong with this app on its own, one `field: problem` line each (uniqueness
    /// across apps is the caller's to check). Used for `[[apps]]` and registry documents.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (field, value) in [
            ("id", &self.id),
            ("key", &self.key),
            ("secret", &self.secret),
        ] {
            if value.is_empty() {
                problems.push(format!("{field}: must not be empty"));
            }
        }
        for (field, value) in [("id", &self.id), ("key", &self.key)] {
            // Both appear in URL paths (`/apps/{id}`, `/app/{key}`) and in log lines.
            if !value.is_empty() && !value.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
                problems.push(format!(
                    "{field}: only printable ASCII without '/' is allowed"
                ));
            }
        }
        for (j, pattern) in self.allowed_origins.iter().enumerate() {
            if let Err(why) = crate::origin::OriginPattern::parse(pattern) {
                problems.push(format!("allowed_origins[{j}]: {why}"));
            }
        }
        for (j, hook) in self.webhooks.iter().enumerate() {
            if !(hook.url.starts_with("http://") || hook.url.starts_with("https://")) {
                problems.push(format!(
                    "webhooks[{j}].url: must start with http:// or https://"
                ));
            }
            for t in &hook.event_types {
                if !WEBHOOK_EVENT_TYPES.contains(&t.as_str()) {
                    problems.push(format!(
                        "webhooks[{j}].event_types: unknown type {t:?} (known: {})",
                        WEBHOOK_EVENT_TYPES.join(", ")
                    ));
                }
            }
        }
        problems
    }
}

impl MongoConfig {
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(self.uri.starts_with("mongodb://") || self.uri.starts_with("mongodb+srv://")) {
            problems.push(format!(
                "mongodb.uri: must start with mongodb:// or mongodb+srv:// (got {:?})",
                redact_uri(&self.uri)
            ));
        }
        // MongoDB's own rules for database names.
        if self.database.is_empty()
            || self.database.len() > 63
            || self
                .database
                .contains(['/', '\\', '.', ' ', '"', '$', '\0'])
        {
            problems.push(
                "mongodb.database: 1 to 63 characters, none of / \\ . space \" $".to_string(),
            );
        }
        for (name, value) in [
            ("mongodb.connect_timeout", self.connect_timeout),
            (
                "mongodb.server_selection_timeout",
                self.server_selection_timeout,
            ),
            ("mongodb.startup_timeout", self.startup_timeout),
            ("mongodb.poll_interval", self.poll_interval),
        ] {
            if value == 0 {
                problems.push(format!("{name}: must be at least 1"));
            }
        }
        problems
    }
}

impl fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppConfig")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .field("enabled", &self.enabled)
            .field("client_events", &self.client_events)
            .field("subscription_count", &self.subscription_count)
            .field("authorized_connections", &self.authorized_connections)
            .field("max_connections", &self.max_connections)
            .field(
                "max_client_events_per_second",
                &self.max_client_events_per_second,
            )
            .field("webhooks", &self.webhooks)
            .field("allowed_origins", &self.allowed_origins)
            .finish()
    }
}

/// `[[apps.webhooks]]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL that receives the POSTs.
    pub url: String,
    /// Event types to send; empty = all.
    #[serde(default)]
    pub event_types: Vec<String>,
}

/// The webhook event types Pusher defines.
pub const WEBHOOK_EVENT_TYPES: &[&str] = &[
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
    "subscription_count",
];

/// Loads the configuration: defaults, then `path` (which must exist), then the environment.
pub fn load(path: Option<&Path>) -> Result<Config, Error> {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = path {
        // `Toml::file` silently skips a missing file; a named config file must exist.
        if !path.is_file() {
            return Err(Error::Missing(path.display().to_string()));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    // Only `PUSHI_<SECTION>__<KEY>` names are config keys; names without a double underscore
    // (`PUSHI_CONFIG`, variables of tools that share the prefix) are not, and are left alone.
    let env = Env::prefixed("PUSHI_")
        .filter(|k| k.as_str().contains("__"))
        .split("__");
    extract(figment.merge(env))
}

/// Parses a configuration from TOML text alone (no environment); used by tests and tools.
pub fn from_toml(text: &str) -> Result<Config, Error> {
    extract(Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)))
}

fn extract(figment: Figment) -> Result<Config, Error> {
    let config: Config = figment.extract().map_err(|e| Box::new(redact_secrets(e)))?;
    config.validate()?;
    Ok(config)
}

/// Keys whose values are never printed, not even in an error about their own value.
const SECRET_KEYS: &[&str] = &["secret", "uri"];

/// figment's errors quote the offending value ("found unsigned int `12345`"); for a secret
/// key that value is the secret, so it is dropped from the message. TOML syntax errors quote
/// the source line, so a secret key's line is cut after its `=`.
fn redact_secrets(err: figment::Error) -> figment::Error {
    use figment::error::Kind;
    let mut out: Option<figment::Error> = None;
    let errors: Vec<figment::Error> = err.into_iter().collect();
    // `into_iter` yields the newest first; chain them back oldest first to keep the order.
    for mut e in errors.into_iter().rev() {
        let secret = e
            .path
            .last()
            .is_some_and(|k| SECRET_KEYS.contains(&k.as_str()));
        e.kind = match e.kind {
            Kind::InvalidType(_, expected) if secret => Kind::Message(format!(
                "invalid type (value not shown), expected {expected}"
            )),
            Kind::InvalidValue(_, expected) if secret => {
                Kind::Message(format!("invalid value (not shown), expected {expected}"))
            }
            Kind::Message(msg) => Kind::Message(redact_lines(&msg)),
            other => other,
        };
        out = Some(match out {
            None => e,
            Some(prev) => prev.chain(e),
        });
    }
    out.unwrap_or_else(|| figment::Error::from("invalid configuration"))
}

/// Cuts `secret = ...` source lines quoted in a message after the `=`.
fn redact_lines(msg: &str) -> String {
    msg.lines()
        .map(|line| {
            let is_secret = line.split_once('=').is_some_and(|(k, _)| {
                // Quoted source lines look like `4 | secret = "..."`.
                let key = k.rsplit('|').next().unwrap_or(k).trim();
                SECRET_KEYS.contains(&key)
            });
            match line.split_once('=') {
                Some((k, _)) if is_secret => format!("{k}= <redacted>"),
                _ => line.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Checks values that parse but are wrong; reports every problem at once.
    pub fn validate(&self) -> Result<(), Error> {
        let mut problems = Vec::new();
        let s = &self.server;
        if s.activity_timeout == 0 {
            problems.push("server.activity_timeout: must be at least 1 second".to_string());
        }
        if s.pong_timeout == 0 {
            problems.push("server.pong_timeout: must be at least 1 second".to_string());
        }
        for (name, value) in [
            ("server.max_queued_messages", s.max_queued_messages as u64),
            ("server.http_header_timeout", s.http_header_timeout),
            ("server.http_body_timeout", s.http_body_timeout),
            (
                "server.max_pending_connections",
                s.max_pending_connections as u64,
            ),
            ("server.write_timeout", s.write_timeout),
        ] {
            if value == 0 {
                problems.push(format!("{name}: must be at least 1"));
            }
        }
        if let Some(tls) = &s.tls {
            for (name, value) in [("server.tls.cert", &tls.cert), ("server.tls.key", &tls.key)] {
                if value.trim().is_empty() {
                    problems.push(format!("{name}: must name a PEM file"));
                }
            }
        }
        // hyper needs room for at least one 8 KiB read.
        if !(8..=1024).contains(&s.max_request_head_kb) {
            problems.push("server.max_request_head_kb: must be between 8 and 1024".to_string());
        }
        let m = &self.metrics;
        if m.enabled && m.port != 0 && m.port == s.port && m.host == s.host {
            problems.push(
                "metrics.port: must differ from server.port (metrics have their own listener)"
                    .to_string(),
            );
        }
        let l = &self.limits;
        for (name, value) in [
            ("limits.max_event_payload_kb", l.max_event_payload_kb),
            ("limits.max_channels_per_event", l.max_channels_per_event),
            ("limits.max_batch_size", l.max_batch_size),
            ("limits.max_presence_members", l.max_presence_members),
            (
                "limits.max_presence_user_info_kb",
                l.max_presence_user_info_kb,
            ),
            (
                "limits.max_channels_per_connection",
                l.max_channels_per_connection,
            ),
            (
                "limits.max_subscribes_per_second",
                l.max_subscribes_per_second as usize,
            ),
        ] {
            if value == 0 {
                problems.push(format!("{name}: must be at least 1"));
            }
        }
        let mut ids = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        if let Some(mongo) = &self.mongodb {
            problems.extend(mongo.problems());
        }
        problems.extend(self.storage.problems());
        if let Some(cluster) = &self.cluster {
            problems.extend(cluster.problems());
        }
        for (i, app) in self.apps.iter().enumerate() {
            problems.extend(app.problems().into_iter().map(|p| format!("apps[{i}].{p}")));
            if !ids.insert(app.id.as_str()) {
                problems.push(format!("apps[{i}].id: duplicate app id {:?}", app.id));
            }
            if !keys.insert(app.key.as_str()) {
                problems.push(format!("apps[{i}].key: duplicate app key {:?}", app.key));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_config_parses() {
        let text = include_str!("../config.toml");
        let config = from_toml(text).expect("config.toml is valid");
        assert_eq!(config.server.port, 6001);
        assert_eq!(config.apps[0].id, "1");
        assert_eq!(config.apps[0].key, "app-key");
    }

    #[test]
    fn cluster_section_fails_closed() {
        let ok = "[cluster]\nredis_url = \"redis://127.0.0.1:6379\"\n";
        let config = from_toml(ok).expect("a minimal [cluster]");
        let cluster = config.cluster.expect("cluster set");
        assert_eq!(
            (cluster.prefix.as_str(), cluster.node_timeout),
            ("pushi", 10)
        );
        for (text, key) in [
            ("[cluster]\nredis_url = \"http://x\"\n", "cluster.redis_url"),
            (
                "[cluster]\nredis_url = \"rediss://x\"\n",
                "not supported yet",
            ),
            (
                "[cluster]\nredis_url = \"redis://x\"\nprefix = \"\"\n",
                "cluster.prefix",
            ),
            (
                "[cluster]\nredis_url = \"redis://x\"\nnode_timeout = 3\n",
                "cluster.node_timeout",
            ),
            (
                "[cluster]\nredis_url = \"redis://x\"\nstartup_timeout = 0\n",
                "cluster.startup_timeout",
            ),
            (
                "[cluster]\nredis_url = \"redis://x\"\nnode_timout = 3\n",
                "node_timout",
            ),
            ("[cluster]\nprefix = \"p\"\n", "redis_url"),
        ] {
            let err = from_toml(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let debug = format!(
            "{:?}",
            from_toml("[cluster]\nredis_url = \"redis://u:secret@h/\"\n")
                .unwrap()
                .cluster
        );
        assert!(!debug.contains("secret"), "{debug}");
    }

    #[test]
    fn unknown_key_names_the_key() {
        let err = from_toml("[server]\nprot = 1\n").unwrap_err().to_string();
        assert!(err.contains("prot"), "{err}");
        let err = from_toml("[[apps]]\nid=\"1\"\nkey=\"k\"\nsecret=\"s\"\nclient_event = true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("client_event"), "{err}");
    }

    #[test]
    fn the_console_is_off_by_default_and_its_section_fails_closed() {
        assert!(!from_toml("").unwrap().console.enabled);
        assert!(
            from_toml("[console]\nenabled = true\n")
                .unwrap()
                .console
                .enabled
        );
        let err = from_toml("[console]\nenable = true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("enable"), "{err}");
        let err = from_toml("[console]\nenabled = \"yes\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("enabled"), "{err}");
    }

    #[test]
    fn log_format_is_text_or_json() {
        assert_eq!(from_toml("").unwrap().log.format, LogFormat::Text);
        let json = from_toml("[log]\nformat = \"json\"\n").unwrap();
        assert_eq!(json.log.format, LogFormat::Json);
        let err = from_toml("[log]\nformat = \"yaml\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("format") && err.contains("yaml"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = from_toml("[server]\nport = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("port"), "{err}");
    }

    #[test]
    fn invalid_values_are_all_reported() {
        let text = "[limits]\nmax_batch_size = 0\n[[apps]]\nid=\"1\"\nkey=\"k\"\nsecret=\"\"\n\
                    [[apps.webhooks]]\nurl=\"ftp://x\"\nevent_types=[\"nope\"]\n";
        let err = from_toml(text).unwrap_err().to_string();
        for needle in [
            "limits.max_batch_size",
            "apps[0].secret",
            "apps[0].webhooks[0].url",
            "apps[0].webhooks[0].event_types",
        ] {
            assert!(err.contains(needle), "{needle} missing from {err}");
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own large error
    fn env_overrides_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[server]\nport = 7000\n")?;
            jail.set_env("PUSHI_SERVER__PORT", "7001");
            jail.set_env("PUSHI_LIMITS__MAX_BATCH_SIZE", "5");
            let config = load(Some(Path::new("c.toml"))).expect("loads");
            assert_eq!(config.server.port, 7001);
            assert_eq!(config.limits.max_batch_size, 5);
            jail.set_env("PUSHI_SERVER__NOPE", "1");
            let err = load(Some(Path::new("c.toml"))).unwrap_err().to_string();
            assert!(err.contains("nope"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = load(Some(Path::new("/nonexistent/pushi.toml"))).unwrap_err();
        assert!(matches!(err, Error::Missing(_)));
    }

    #[test]
    fn errors_never_print_a_secret() {
        let err = from_toml("[[apps]]\nid=\"1\"\nkey=\"k\"\nsecret=987654321\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("secret"), "{err}");
        assert!(!err.contains("987654321"), "{err}");
        let err = from_toml("[[apps]]\nid=\"1\"\nkey=\"k\"\nsecret=\"hunter2\n")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        // Other values are still quoted, so the error stays useful.
        let err = from_toml("[server]\nport = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"x\""), "{err}");
    }

    #[test]
    fn secrets_are_redacted() {
        let config = from_toml("[[apps]]\nid=\"1\"\nkey=\"k\"\nsecret=\"hunter2\"\n").unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
