//! The Pusher HTTP API endpoints (PUSHER-SPEC 2.2), one function each. [`authorize`] checks
//! the head (signature, app, route) before the body is read; [`Authorized::handle`] checks
//! the body against its signed MD5 and runs the endpoint.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use warp::http::Method;

use super::ApiError;
use crate::apps::App;
use crate::auth;
use crate::config::LimitsConfig;
use crate::context::Context;
use crate::protocol::{
    ChannelKind, ChannelName, SocketId, MAX_EVENT_NAME_LEN, MAX_USER_ID_LEN, PERSONAL_PREFIX,
};
use crate::publish::{Data, Publication, SubscribeError};
use crate::registry::ChannelStats;
use crate::storage;

/// A request head as received, before any check (all of it is signed).
#[derive(Debug, Clone, Copy)]
pub(super) struct Head<'a> {
    /// Path after `/apps/{app_id}/`.
    pub(super) tail: &'a str,
    pub(super) method: &'a Method,
    /// Full path as sent (signed).
    pub(super) path: &'a str,
    pub(super) query: &'a str,
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What a request asks for, known from its head.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Events,
    BatchEvents,
    Channels,
    Channel(String),
    Users(String),
    Terminate(String),
    /// `POST /subscribe` (true) and `/unsubscribe` (false): offline subscriptions.
    Offline(bool),
    UserSubscriptions(String),
    UserEvents(String),
}

/// The route a request asks for, as a metrics label (a fixed set: never the path itself).
pub(super) fn route_label(head: &Head<'_>) -> &'static str {
    // Four segments at most are looked at, without collecting them (one call per request).
    let mut parts = head.tail.split('/');
    let seg = [parts.next(), parts.next(), parts.next(), parts.next()];
    match seg {
        [Some("events"), None, ..] => "events",
        [Some("batch_events"), None, ..] => "batch_events",
        [Some("channels"), None, ..] => "channels",
        [Some("channels"), Some(_), None, _] => "channel",
        [Some("channels"), Some(_), Some("users"), None] => "channel_users",
        [Some("users"), Some(_), Some("terminate_connections"), None] => "terminate_connections",
        [Some("subscribe"), None, ..] => "subscribe",
        [Some("unsubscribe"), None, ..] => "unsubscribe",
        [Some("users"), Some(_), Some("subscriptions"), None] => "user_subscriptions",
        [Some("users"), Some(_), Some("events"), None] => "user_events",
        _ => "other",
    }
}

/// A request whose head passed every check; its body is still unread.
#[derive(Debug)]
pub(super) struct Authorized {
    app: Arc<App>,
    params: Vec<(String, String)>,
    route: Route,
}

/// Checks everything the head can prove (signature over the query, which covers
/// `body_md5`; app enabled; a known route) before any body byte is read, so a client without
/// credentials never makes the server buffer a body.
pub(super) fn authorize(app: Arc<App>, head: Head<'_>) -> Result<Authorized, ApiError> {
    let params = auth::verify_request_head(
        head.method.as_str(),
        head.path,
        head.query,
        &app.key,
        &app.secret,
        now_unix(),
    )?;
    if !app.enabled {
        return Err(ApiError::AppDisabled);
    }
    let segments: Vec<String> = head
        .tail
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let get = head.method == Method::GET;
    let post = head.method == Method::POST;
    let route = match segments.as_slice() {
        ["events"] if post => Route::Events,
        ["batch_events"] if post => Route::BatchEvents,
        ["channels"] if get => Route::Channels,
        ["channels", channel] if get => Route::Channel(channel.to_string()),
        ["channels", channel, "users"] if get => Route::Users(channel.to_string()),
        ["users", user, "terminate_connections"] if post => Route::Terminate(user.to_string()),
        ["subscribe"] if post => Route::Offline(true),
        ["unsubscribe"] if post => Route::Offline(false),
        ["users", user, "subscriptions"] if get => Route::UserSubscriptions(user.to_string()),
        ["users", user, "events"] if get => Route::UserEvents(user.to_string()),
        ["events"]
        | ["batch_events"]
        | ["channels"]
        | ["channels", _]
        | ["channels", _, "users"]
        | ["users", _, "terminate_connections"]
        | ["subscribe"]
        | ["unsubscribe"]
        | ["users", _, "subscriptions"]
        | ["users", _, "events"] => return Err(ApiError::MethodNotAllowed),
        _ => return Err(ApiError::NotFound(head.path.to_string())),
    };
    Ok(Authorized { app, params, route })
}

impl Authorized {
    /// Whether the request publishes events (`/events`, `/batch_events`).
    pub(super) fn is_publish(&self) -> bool {
        matches!(self.route, Route::Events | Route::BatchEvents)
    }

    /// The largest body a valid request to this route can have: 0 when the head signs no
    /// `body_md5` (a body would fail the check anyway), else room for the events the limits
    /// allow, each with data escaped at the worst case of JSON (`\u00XX`, 6 bytes a byte).
    pub(super) fn body_limit(&self, limits: &LimitsConfig) -> usize {
        if auth::param(&self.params, "body_md5").is_none() {
            return 0;
        }
        // Name (200), 100 channel names of up to 164 characters, socket id, info.
        const ENVELOPE: usize = 24 * 1024;
        let event = limits.max_event_payload_kb * 1024 * 6 + ENVELOPE;
        match self.route {
            Route::Events => event,
            Route::BatchEvents => event * limits.max_batch_size + 1024,
            // A user id and a channel name, escaped at worst.
            Route::Offline(_) => 4096,
            // `{}` at most; the SDKs send an empty body or `{}`.
            _ => 1024,
        }
    }

    /// Checks the body against the signed `body_md5`, then runs the endpoint.
    pub(super) async fn handle(self, ctx: &Context, body: &[u8]) -> Result<Value, ApiError> {
        auth::verify_body_md5(&self.params, body)?;
        let app = &*self.app;
        let param = |name: &str| auth::param(&self.params, name);
        match &self.route {
            Route::Events => events(ctx, &self.app, body).await,
            Route::BatchEvents => batch_events(ctx, &self.app, body).await,
            Route::Channels => channels(ctx, app, param("filter_by_prefix"), param("info")).await,
            Route::Channel(channel) => channel_info(ctx, app, channel, param("info")).await,
            Route::Users(channel) => users(ctx, app, channel).await,
            Route::Terminate(user) => {
                ctx.adapter.terminate_user(&app.id, user).await?;
                Ok(json!({}))
            }
            Route::Offline(subscribe) => offline(ctx, app, body, *subscribe).await,
            Route::UserSubscriptions(user) => {
                let user = offline_user(user)?;
                let storage = ctx.publisher.storage();
                let channels = storage::user_channels(storage, &app.id, user).await?;
                Ok(json!({ "channels": channels }))
            }
            Route::UserEvents(user) => {
                let user = offline_user(user)?;
                let limit = match param("limit") {
                    None => DEFAULT_EVENTS_LIMIT,
                    Some(text) => match text.parse::<usize>() {
                        Ok(n) if (1..=MAX_EVENTS_LIMIT).contains(&n) => n,
                        _ => {
                            return Err(ApiError::bad(format!(
                            "'limit' must be an integer from 1 to {MAX_EVENTS_LIMIT}, not {text:?}"
                        )))
                        }
                    },
                };
                let before = match param("before") {
                    None => None,
                    Some(text) => Some(text.parse::<u64>().map_err(|_| {
                        ApiError::bad(format!("'before' must be an event id, not {text:?}"))
                    })?),
                };
                let storage = ctx.publisher.storage();
                let events = storage::user_events(storage, &app.id, user, before, limit).await?;
                Ok(json!({ "events": events }))
            }
        }
    }
}

/// `events` route: how many events without `limit`, and the most with it (EXTENSIONS.md §1).
const DEFAULT_EVENTS_LIMIT: usize = 10;
const MAX_EVENTS_LIMIT: usize = 100;

/// A user id of the offline-subscription routes: like a presence user id (at most
/// [`MAX_USER_ID_LEN`] characters), and within the channel-name characters, because the
/// user's personal channel `private-personal-<user_id>` must be a valid channel name.
fn offline_user(user: &str) -> Result<&str, ApiError> {
    if user.is_empty() {
        return Err(ApiError::bad("'user_id' must be a non-empty string"));
    }
    if user.chars().count() > MAX_USER_ID_LEN {
        return Err(ApiError::bad(format!(
            "'user_id' is longer than {MAX_USER_ID_LEN} characters"
        )));
    }
    if !user
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-=@,.;".contains(&b))
    {
        return Err(ApiError::bad(format!(
            "Invalid user_id {user:?}: only A-Z a-z 0-9 _ - = @ , . ; are allowed \
             (the personal channel private-personal-<user_id> must be a valid channel name)"
        )));
    }
    Ok(user)
}

/// `POST /subscribe` and `/unsubscribe`: `{"user_id": "...", "event": "<channel>"}`
/// (`channel` is accepted for `event`, the original pushi's name for it).
async fn offline(
    ctx: &Context,
    app: &App,
    body: &[u8],
    subscribe: bool,
) -> Result<Value, ApiError> {
    let body = parse_body(body)?;
    let user = match body.get("user_id") {
        Some(Value::String(u)) => offline_user(u)?,
        Some(_) => return Err(ApiError::bad("'user_id' must be a string")),
        None => return Err(ApiError::bad("Missing 'user_id'")),
    };
    let channel = match (body.get("event"), body.get("channel")) {
        (Some(Value::String(c)), None) | (None, Some(Value::String(c))) => c,
        (Some(_), Some(_)) => {
            return Err(ApiError::bad(
                "Give 'event' or 'channel' (the channel name), not both",
            ))
        }
        (None, None) => return Err(ApiError::bad("Missing 'event' (the channel name)")),
        _ => return Err(ApiError::bad("'event' must be a channel name")),
    };
    let channel = channel_name(channel)?;
    if channel.as_str().starts_with(PERSONAL_PREFIX) || channel.kind() == ChannelKind::ServerToUser
    {
        return Err(ApiError::bad(format!(
            "{channel} delivers to one user already; offline subscriptions take other channels"
        )));
    }
    ctx.publisher
        .offline(&app.id, user, channel.as_str(), subscribe)
        .await
        .map_err(|e| match e {
            SubscribeError::TooMany { .. } => ApiError::bad(e.to_string()),
            SubscribeError::Store(e) => ApiError::Storage(e),
            SubscribeError::Cluster(e) => ApiError::from(e),
        })?;
    Ok(json!({}))
}

fn parse_body(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad("Request body must be a JSON object")),
        Err(e) => Err(ApiError::bad(format!(
            "Request body is not valid JSON: {e}"
        ))),
    }
}

/// One event of `events` or `batch_events`, checked.
struct Event {
    name: String,
    data: String,
    channels: Vec<ChannelName>,
    except: Option<SocketId>,
    info: Vec<String>,
}

fn parse_event(ctx: &Context, obj: &Map<String, Value>, batch: bool) -> Result<Event, ApiError> {
    let limits = &ctx.config.limits;
    let name = match obj.get("name") {
        Some(Value::String(n)) if !n.is_empty() => n.clone(),
        Some(_) => return Err(ApiError::bad("'name' must be a non-empty string")),
        None => return Err(ApiError::bad("Missing 'name'")),
    };
    if name.len() > MAX_EVENT_NAME_LEN {
        return Err(ApiError::bad(format!(
            "Event name too long: at most {MAX_EVENT_NAME_LEN} characters"
        )));
    }
    let data = match obj.get("data") {
        Some(Value::String(d)) => d.clone(),
        Some(_) => {
            return Err(ApiError::bad(
                "'data' must be a string (JSON-encode objects)",
            ))
        }
        None => return Err(ApiError::bad("Missing 'data'")),
    };
    let limit = limits.max_event_payload_kb * 1024;
    if data.len() > limit {
        return Err(ApiError::TooLarge(format!(
            "Event data too large: {} bytes, the limit is {limit} bytes",
            data.len()
        )));
    }
    let names: Vec<&str> = match (obj.get("channels"), obj.get("channel")) {
        (Some(_), _) if batch => {
            return Err(ApiError::bad(
                "Batch events take a single 'channel', not 'channels'",
            ))
        }
        (Some(Value::Array(list)), None) => list
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| ApiError::bad("'channels' must be strings"))
            })
            .collect::<Result<_, _>>()?,
        (None, Some(Value::String(c))) => vec![c.as_str()],
        (Some(_), Some(_)) => return Err(ApiError::bad("Give 'channels' or 'channel', not both")),
        (None, None) => return Err(ApiError::bad("Missing 'channels' (or 'channel')")),
        _ => {
            return Err(ApiError::bad(
                "'channels' must be an array, 'channel' a string",
            ))
        }
    };
    if names.is_empty() {
        return Err(ApiError::bad("'channels' must not be empty"));
    }
    if names.len() > limits.max_channels_per_event {
        return Err(ApiError::bad(format!(
            "Too many channels: {}, at most {} per event",
            names.len(),
            limits.max_channels_per_event
        )));
    }
    let channels = names
        .iter()
        .map(|n| ChannelName::parse(n).map_err(|e| ApiError::bad(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let except = match obj.get("socket_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => SocketId::parse(s).map_err(|_| {
            ApiError::bad(format!(
                "Invalid socket_id {s:?}: expected <digits>.<digits>"
            ))
        })?,
        Some(_) => return Err(ApiError::bad("'socket_id' must be a string")),
    };
    let info = match obj.get("info") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => parse_info(s, &["user_count", "subscription_count"])?,
        Some(_) => return Err(ApiError::bad("'info' must be a comma-separated string")),
    };
    if info.iter().any(|a| a == "user_count") {
        if let Some(c) = channels.iter().find(|c| c.kind() != ChannelKind::Presence) {
            return Err(ApiError::bad(format!(
                "info=user_count is only available for presence channels, not {c}"
            )));
        }
    }
    Ok(Event {
        name,
        data,
        channels,
        except,
        info,
    })
}

fn parse_info(text: &str, allowed: &[&str]) -> Result<Vec<String>, ApiError> {
    let mut out = Vec::new();
    for attr in text.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        if !allowed.contains(&attr) {
            return Err(ApiError::bad(format!(
                "Unknown info attribute {attr:?} (allowed: {})",
                allowed.join(", ")
            )));
        }
        out.push(attr.to_string());
    }
    Ok(out)
}

/// The `info` attributes asked for, for one channel; `user_count` only on presence channels.
fn attributes(kind: ChannelKind, stats: ChannelStats, info: &[String]) -> Map<String, Value> {
    let mut out = Map::new();
    for attr in info {
        match attr.as_str() {
            "user_count" if kind == ChannelKind::Presence => {
                out.insert(attr.clone(), json!(stats.user_count));
            }
            "subscription_count" => {
                out.insert(attr.clone(), json!(stats.subscription_count));
            }
            _ => {}
        }
    }
    out
}

fn publications(event: &Event) -> impl Iterator<Item = Publication> + '_ {
    let data: Arc<str> = Arc::from(event.data.as_str());
    event.channels.iter().map(move |channel| Publication {
        channel: channel.to_string(),
        event: event.name.clone(),
        data: Data::Text(data.clone()),
        except: event.except,
        sender: None,
    })
}

/// The `info` attributes an event asked for, per channel, read after it was published.
async fn infos(ctx: &Context, app: &App, event: &Event) -> Result<Map<String, Value>, ApiError> {
    let mut infos = Map::new();
    if !event.info.is_empty() {
        for channel in &event.channels {
            let stats = ctx.membership.stats(&app.id, channel.as_str()).await?;
            let attrs = attributes(channel.kind(), stats, &event.info);
            infos.insert(channel.to_string(), Value::Object(attrs));
        }
    }
    Ok(infos)
}

/// `POST /apps/{id}/events` without the request signature: the debug console's event
/// creator, whose caller the console checked.
pub(super) async fn publish_event(
    ctx: &Context,
    app: &Arc<App>,
    body: &[u8],
) -> Result<Value, ApiError> {
    events(ctx, app, body).await
}

async fn events(ctx: &Context, app: &Arc<App>, body: &[u8]) -> Result<Value, ApiError> {
    let event = parse_event(ctx, &parse_body(body)?, false)?;
    ctx.publisher
        .publish(app, publications(&event).collect())
        .await?;
    let infos = infos(ctx, app, &event).await?;
    if event.info.is_empty() {
        Ok(json!({}))
    } else {
        Ok(json!({ "channels": infos }))
    }
}

async fn batch_events(ctx: &Context, app: &Arc<App>, body: &[u8]) -> Result<Value, ApiError> {
    let body = parse_body(body)?;
    let Some(Value::Array(batch)) = body.get("batch") else {
        return Err(ApiError::bad("Missing 'batch' array"));
    };
    let max = ctx.config.limits.max_batch_size;
    if batch.len() > max {
        return Err(ApiError::bad(format!(
            "Batch too large: {} events, at most {max}",
            batch.len()
        )));
    }
    // Check every event before publishing any, so a bad batch publishes nothing.
    let mut events = Vec::with_capacity(batch.len());
    for (i, item) in batch.iter().enumerate() {
        let obj = item
            .as_object()
            .ok_or_else(|| ApiError::bad(format!("batch[{i}] must be an object")))?;
        let event = parse_event(ctx, obj, true).map_err(|e| match e {
            ApiError::BadRequest(m) => ApiError::BadRequest(format!("batch[{i}]: {m}")),
            ApiError::TooLarge(m) => ApiError::TooLarge(format!("batch[{i}]: {m}")),
            other => other,
        })?;
        events.push(event);
    }
    // One call, so the whole batch is stored in one commit (or not at all).
    ctx.publisher
        .publish(app, events.iter().flat_map(publications).collect())
        .await?;
    let mut results = Vec::with_capacity(events.len());
    for event in &events {
        let infos = infos(ctx, app, event).await?;
        results.push(
            infos
                .into_iter()
                .next()
                .map(|(_, v)| v)
                .unwrap_or(json!({})),
        );
    }
    if events.iter().any(|e| !e.info.is_empty()) {
        Ok(json!({ "batch": results }))
    } else {
        Ok(json!({}))
    }
}

async fn channels(
    ctx: &Context,
    app: &App,
    prefix: Option<&str>,
    info: Option<&str>,
) -> Result<Value, ApiError> {
    let info = parse_info(info.unwrap_or(""), &["user_count", "subscription_count"])?;
    let prefix = prefix.unwrap_or("");
    if info.iter().any(|a| a == "user_count") && !prefix.starts_with("presence-") {
        return Err(ApiError::bad(
            "info=user_count is only available with filter_by_prefix=presence-",
        ));
    }
    let mut out = BTreeMap::new();
    for (name, stats) in ctx.membership.channels(&app.id).await? {
        if !name.starts_with(prefix) {
            continue;
        }
        let kind = ChannelKind::of(&name);
        out.insert(name, Value::Object(attributes(kind, stats, &info)));
    }
    Ok(json!({ "channels": out }))
}

fn channel_name(name: &str) -> Result<ChannelName, ApiError> {
    ChannelName::parse(name).map_err(|e| ApiError::bad(e.to_string()))
}

async fn channel_info(
    ctx: &Context,
    app: &App,
    name: &str,
    info: Option<&str>,
) -> Result<Value, ApiError> {
    let channel = channel_name(name)?;
    let allowed = ["user_count", "subscription_count", "cache"];
    let info = parse_info(info.unwrap_or(""), &allowed)?;
    if info.iter().any(|a| a == "user_count") && channel.kind() != ChannelKind::Presence {
        return Err(ApiError::bad(
            "info=user_count is only available for presence channels",
        ));
    }
    let want_cache = info.iter().any(|a| a == "cache");
    if want_cache && !channel.is_cache() {
        return Err(ApiError::bad(
            "info=cache is only available for cache channels",
        ));
    }
    let stats = ctx.membership.stats(&app.id, name).await?;
    let mut out = Map::new();
    out.insert("occupied".into(), json!(stats.subscription_count > 0));
    out.extend(attributes(channel.kind(), stats, &info));
    if want_cache {
        let cache = ctx
            .adapter
            .cache_get(&app.id, name)
            .await?
            .map(|c| json!({"data": c.data, "ttl": c.ttl}));
        out.insert("cache".into(), cache.unwrap_or(Value::Null));
    }
    Ok(Value::Object(out))
}

async fn users(ctx: &Context, app: &App, name: &str) -> Result<Value, ApiError> {
    let channel = channel_name(name)?;
    if channel.kind() != ChannelKind::Presence {
        return Err(ApiError::bad(
            "Users are only available for presence channels",
        ));
    }
    let mut ids = ctx.membership.presence_users(&app.id, name).await?;
    ids.sort();
    let users: Vec<Value> = ids.into_iter().map(|id| json!({ "id": id })).collect();
    Ok(json!({ "users": users }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_are_a_fixed_set() {
        let label = |tail: &str| {
            route_label(&Head {
                tail,
                method: &Method::GET,
                path: "",
                query: "",
            })
        };
        for (tail, want) in [
            ("events", "events"),
            ("batch_events", "batch_events"),
            ("channels", "channels"),
            ("channels/presence-x", "channel"),
            ("channels/presence-x/users", "channel_users"),
            ("users/u1/terminate_connections", "terminate_connections"),
            ("subscribe", "subscribe"),
            ("unsubscribe", "unsubscribe"),
            ("users/u1/subscriptions", "user_subscriptions"),
            ("users/u1/events", "user_events"),
            ("events/extra", "other"),
            ("channels/a/b/c", "other"),
            ("anything-a-client-sends", "other"),
            ("", "other"),
        ] {
            assert_eq!(label(tail), want, "{tail}");
        }
    }
}
