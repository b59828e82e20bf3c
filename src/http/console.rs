//! The debug console (`[console] enabled = true`): the page, its login, the live feed, the
//! app's state and the event creator, under `/console`.
//!
//! Owns: those routes and their access rule. Must not touch: what is recorded (`feed`),
//! how events are published (the API's own `events` handler does it).
//!
//! Access is per app, with the app's id and secret, rather than one console token in the
//! config: with the MongoDB registry one pushi serves many apps, often of different
//! teams, and each should see only its own; the secret is what already lets its holder
//! publish to the app, so the console grants nothing new; there is no extra credential to
//! deploy or rotate, and rotating the secret ends every console session. The secret is
//! sent once, to `POST /console/login`, which answers with a token (signed with the
//! secret, 12 hours) that the page uses from then on; nothing the console serves contains
//! a secret. Serve it over TLS (`[server.tls]` or a proxy) beyond localhost.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::api;
use super::error::error_response;
use crate::apps::App;
use crate::auth;
use crate::context::Context;
use crate::protocol::ChannelKind;

/// How long a console login lasts.
const SESSION: Duration = Duration::from_secs(12 * 3600);

/// Largest login or event-creator body.
const MAX_BODY: u64 = 64 * 1024;

const PAGE: &str = include_str!("console/console.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// The console's routes (served only when `[console] enabled`).
pub(super) fn routes(
    ctx: Arc<Context>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let enabled = ctx.config.console.enabled;
    let with_ctx = warp::any().map(move || ctx.clone());
    let on = warp::any()
        .and_then(move || async move {
            if enabled {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one();

    let page = warp::path!("console")
        .and(warp::get())
        .map(|| asset(PAGE, "text/html; charset=utf-8"));
    let script = warp::path!("console" / "console.js")
        .and(warp::get())
        .map(|| asset(SCRIPT, "text/javascript; charset=utf-8"));
    let style = warp::path!("console" / "console.css")
        .and(warp::get())
        .map(|| asset(STYLE, "text/css; charset=utf-8"));

    let login = warp::path!("console" / "login")
        .and(warp::post())
        .and(warp::body::content_length_limit(MAX_BODY))
        .and(warp::body::bytes())
        .and(with_ctx.clone())
        .map(|body: Bytes, ctx: Arc<Context>| login(&ctx, &body));

    let token = warp::header::optional::<String>("authorization");
    let state = warp::path!("console" / "apps" / String / "state")
        .and(warp::get())
        .and(token)
        .and(with_ctx.clone())
        .then(
            |id: String, token: Option<String>, ctx: Arc<Context>| async move {
                match authorized(&ctx, &id, bearer(token.as_deref())) {
                    Some(app) => state(&ctx, &app).await,
                    None => denied(),
                }
            },
        );

    let publish = warp::path!("console" / "apps" / String / "events")
        .and(warp::post())
        .and(token)
        .and(warp::body::content_length_limit(MAX_BODY))
        .and(warp::body::bytes())
        .and(with_ctx.clone())
        .then(
            |id: String, token: Option<String>, body: Bytes, ctx: Arc<Context>| async move {
                match authorized(&ctx, &id, bearer(token.as_deref())) {
                    // The HTTP API's own handler: same checks, same pipeline.
                    Some(app) => match api::publish_event(&ctx, &app, &body).await {
                        Ok(value) => warp::reply::json(&value).into_response(),
                        Err(err) => err.into_response(),
                    },
                    None => denied(),
                }
            },
        );

    // EventSource cannot send headers: the token comes in the query.
    let feed = warp::path!("console" / "apps" / String / "feed")
        .and(warp::get())
        .and(warp::query::<FeedQuery>())
        .and(with_ctx)
        .map(|id: String, q: FeedQuery, ctx: Arc<Context>| {
            match authorized(&ctx, &id, q.token.as_deref()) {
                Some(app) => feed(&ctx, &app),
                None => denied(),
            }
        });

    on.and(
        page.or(script)
            .unify()
            .or(style)
            .unify()
            .or(login)
            .unify()
            .or(state)
            .unify()
            .or(publish)
            .unify()
            .or(feed)
            .unify(),
    )
}

/// A file of the page, with headers that keep it to itself: no framing, no referrer, no
/// scripts or connections but its own.
fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut res = warp::reply::with_header(body, "content-type", content_type).into_response();
    let h = res.headers_mut();
    h.insert(
        "content-security-policy",
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
            .parse()
            .expect("a valid header value"),
    );
    h.insert(
        "x-frame-options",
        "DENY".parse().expect("a valid header value"),
    );
    h.insert(
        "referrer-policy",
        "no-referrer".parse().expect("a valid header value"),
    );
    h.insert(
        "cache-control",
        "no-store".parse().expect("a valid header value"),
    );
    res
}

fn unix_now() -> u64 {
    crate::storage::now_ms() / 1000
}

#[derive(Deserialize)]
struct Login {
    app_id: String,
    secret: String,
}

#[derive(Deserialize)]
struct FeedQuery {
    token: Option<String>,
}

fn login(ctx: &Context, body: &[u8]) -> Response {
    let Ok(login) = serde_json::from_slice::<Login>(body) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "Send JSON {\"app_id\": \"...\", \"secret\": \"...\"}",
        );
    };
    // One answer for an unknown app and a wrong secret: the console does not tell which
    // app ids exist.
    let app = ctx
        .apps
        .find_by_id(&login.app_id)
        .filter(|app| auth::is_secret(&app.secret, &login.secret));
    let Some(app) = app else {
        return error_response(StatusCode::UNAUTHORIZED, "Wrong app id or secret");
    };
    let expires = unix_now() + SESSION.as_secs();
    let token = auth::console_token(&app.secret, &app.id, expires);
    warp::reply::json(&json!({
        "app_id": app.id,
        "token": token,
        "expires_at": expires,
    }))
    .into_response()
}

fn bearer(header: Option<&str>) -> Option<&str> {
    header?.strip_prefix("Bearer ")
}

/// The app, when `token` is a live console token for it.
fn authorized(ctx: &Context, app_id: &str, token: Option<&str>) -> Option<Arc<App>> {
    let app = ctx.apps.find_by_id(app_id)?;
    auth::verify_console_token(&app.secret, &app.id, token?, unix_now()).then_some(app)
}

/// The answer without a valid token.
fn denied() -> Response {
    error_response(
        StatusCode::UNAUTHORIZED,
        "Log in to the console again: the token is missing, expired or not for this app",
    )
}

/// The app as it is now: its connections and occupied channels (with their subscriber
/// and presence-user counts), cluster-wide in a cluster.
async fn state(ctx: &Context, app: &App) -> Response {
    let channels = match ctx.membership.channels(&app.id).await {
        Ok(channels) => channels,
        Err(err) => return error_response(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
    };
    let mut list: Vec<_> = channels
        .into_iter()
        .map(|(name, stats)| {
            let presence = ChannelKind::of(&name) == ChannelKind::Presence;
            json!({
                "name": name,
                "subscription_count": stats.subscription_count,
                "user_count": presence.then_some(stats.user_count),
            })
        })
        .collect();
    list.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let connections = match &ctx.cluster {
        Some(node) => match node.connection_count(&app.id).await {
            Some(n) => n,
            None => {
                return error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The cluster's Redis does not answer: connection counts are unavailable",
                )
            }
        },
        None => ctx.registry.connection_count(&app.id),
    };
    warp::reply::json(&json!({
        "app_id": app.id,
        "enabled": app.enabled,
        "client_events": app.client_events,
        "node": ctx.cluster.as_ref().map(|n| n.id().to_string()),
        "connections": connections,
        "channels": list,
    }))
    .into_response()
}

/// The app's live records as server-sent events (`record`), until the client goes, the
/// server shuts down, or the client falls [`crate::feed::RING`] records behind: then a
/// `dropped` event ends the stream (the browser's EventSource opens a new one).
fn feed(ctx: &Context, app: &App) -> Response {
    let watch = ctx.feed.watch(&app.id);
    let records = stream::unfold(Some(watch), |watch| async move {
        let mut watch = watch?;
        match watch.records.recv().await {
            Ok(json) => Some((
                warp::sse::Event::default().event("record").data(&*json),
                Some(watch),
            )),
            Err(RecvError::Lagged(n)) => Some((
                warp::sse::Event::default().event("dropped").data(format!(
                    "{n} records were dropped: this console read too slowly"
                )),
                None,
            )),
            Err(RecvError::Closed) => None,
        }
    })
    .map(Ok::<_, Infallible>)
    .take_until(ctx.shutdown.clone().cancelled_owned());
    let opened = stream::once(async { Ok(warp::sse::Event::default().event("open").data("{}")) });
    let events = opened.chain(records);
    let mut res = warp::sse::reply(
        warp::sse::keep_alive()
            .interval(Duration::from_secs(15))
            .stream(events),
    )
    .into_response();
    res.headers_mut().insert(
        "cache-control",
        "no-store".parse().expect("a valid header value"),
    );
    res
}
