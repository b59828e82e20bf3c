//! The HTTP side: health checks, the signed Pusher HTTP API under `/apps/{app_id}/`, and
//! the debug console under `/console` (`console`).
//!
//! Owns: warp filters, request-body limits, signature checking at the door, dispatch to one
//! handler per endpoint (`api`). Must not touch: business rules beyond calling the registry,
//! adapter and auth.
//!
//! The API is one filter that takes the raw method, path, query and body (all four are
//! signed), checks the signature, then dispatches on the path. Separate warp routes would
//! each need the body, which warp hands out only once.

mod api;
mod console;
mod error;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use warp::http::{Method, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

pub use error::ApiError;

use crate::apps::App;
use crate::auth::RequestError;
use crate::context::Context;
use crate::metrics::Gauges;

/// All HTTP routes.
pub fn routes(ctx: Context) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    // Shared behind one pointer: warp clones the filters for every request, and a clone of
    // the context itself is a dozen reference counts.
    let ctx = Arc::new(ctx);
    let console = console::routes(ctx.clone());
    let with_ctx = warp::any().map(move || ctx.clone());

    let up = warp::path!("up")
        .and(warp::get())
        .map(|| warp::reply::json(&serde_json::json!({"ok": true})).into_response());

    let up_app = warp::path!("up" / String)
        .and(warp::get())
        .and(with_ctx.clone())
        .then(|id: String, ctx: Arc<Context>| async move {
            match ctx.apps.find_by_id(&id) {
                Some(app) if app.enabled => {
                    warp::reply::json(&serde_json::json!({"ok": true})).into_response()
                }
                Some(_) => error::error_response(StatusCode::NOT_FOUND, "Application disabled"),
                None => error::error_response(StatusCode::NOT_FOUND, "Unknown app id"),
            }
        });

    // Readiness: 503 until the app registry has been read once; afterwards 200, with the
    // registry's state (a registry outage is reported here but does not make the node
    // unready: it keeps serving the apps it has).
    let ready = warp::path!("ready")
        .and(warp::get())
        .and(with_ctx.clone())
        .map(|ctx: Arc<Context>| ready_response(&ctx));

    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();

    let api = warp::path("apps")
        .and(warp::path::param::<String>())
        .and(warp::path::tail())
        .and(warp::method())
        .and(warp::path::full())
        .and(raw_query)
        .and(warp::body::stream())
        .and(with_ctx.clone())
        .then(
            |app_id: String,
             tail: warp::path::Tail,
             method: Method,
             full: warp::path::FullPath,
             query: String,
             body,
             ctx: Arc<Context>| async move {
                // An unknown app costs a map lookup and nothing else: the body is not read.
                let Some(app) = ctx.apps.find_by_id(&app_id) else {
                    if !ctx.apps.is_loaded() {
                        return ApiError::NotReady.into_response();
                    }
                    return ApiError::AppNotFound(app_id).into_response();
                };
                let head = api::Head {
                    tail: tail.as_str(),
                    method: &method,
                    path: full.as_str(),
                    query: &query,
                };
                respond(&ctx, app, head, body).await
            },
        );

    // The Python server SDK (pusher 3.x) posts terminate_connections to
    // `/users/{id}/terminate_connections`, without the `/apps/{app_id}` prefix; the app is
    // the one whose key signed the request.
    let terminate_unprefixed = warp::path!("users" / String / "terminate_connections")
        .and(warp::path::full())
        .and(warp::method())
        .and(raw_query)
        .and(warp::body::stream())
        .and(with_ctx.clone())
        .then(
            |user: String,
             full: warp::path::FullPath,
             method: Method,
             query: String,
             body,
             ctx: Arc<Context>| async move {
                let key = form_urlencoded::parse(query.as_bytes())
                    .find(|(k, _)| k == "auth_key")
                    .map(|(_, v)| v.into_owned());
                let found = match &key {
                    Some(key) => ctx.apps.find_by_key(key),
                    None => None,
                };
                let Some(app) = found else {
                    if !ctx.apps.is_loaded() {
                        return ApiError::NotReady.into_response();
                    }
                    let err = match key {
                        Some(key) => RequestError::WrongKey(key),
                        None => RequestError::Missing("auth_key"),
                    };
                    return ApiError::Auth(err).into_response();
                };
                let tail = format!("users/{user}/terminate_connections");
                let head = api::Head {
                    tail: &tail,
                    method: &method,
                    path: full.as_str(),
                    query: &query,
                };
                respond(&ctx, app, head, body).await
            },
        );

    up.or(up_app)
        .unify()
        .or(ready)
        .unify()
        .or(api)
        .unify()
        .or(terminate_unprefixed)
        .unify()
        .or(console)
        .unify()
        .recover(error::recover)
        .unify()
}

/// The routes of the metrics listener: `/metrics` (Prometheus text) and `/up`.
pub fn metrics_routes(
    ctx: Context,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let metrics = warp::path!("metrics").and(warp::get()).map(move || {
        let gauges = Gauges {
            apps: ctx.registry.gauges(),
            cluster_up: ctx.cluster.as_ref().map(|node| node.status().state == "ok"),
        };
        let body = ctx.metrics.render(&gauges);
        warp::reply::with_header(body, "content-type", "text/plain; version=0.0.4").into_response()
    });
    let up = warp::path!("up")
        .and(warp::get())
        .map(|| warp::reply::json(&serde_json::json!({"ok": true})).into_response());
    metrics.or(up).unify().recover(error::recover).unify()
}

fn ready_response(ctx: &Context) -> Response {
    let health = ctx.apps.health();
    let stored = ctx.publisher.is_loaded();
    // A node cut off from its cluster is not ready: a load balancer sends new clients to
    // the others (never a silent standalone mode).
    let cluster = ctx.cluster.as_ref().map(|node| node.status());
    let joined = cluster.as_ref().is_none_or(|c| c.state == "ok");
    let ready = health.loaded && stored && joined;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let state = match (health.loaded, health.degraded_since.is_some()) {
        (false, _) => "loading",
        (true, true) => "degraded",
        (true, false) => "ok",
    };
    // A storage outage degrades (publishes to channels with offline subscribers answer
    // 503) but live traffic goes on, so the node stays ready.
    let storage = ctx.publisher.storage();
    let (storage_state, storage_error, storage_since) = match storage.status.degraded() {
        Some((why, since)) => (
            if stored { "degraded" } else { "loading" },
            Some(why),
            Some(since),
        ),
        None if !stored => ("loading", None, None),
        None => ("ok", None, None),
    };
    let mut body = serde_json::json!({
        "ready": ready,
        "registry": {
            "source": health.source,
            "state": state,
            "degraded_since": health.degraded_since,
            "error": health.error,
        },
        "storage": {
            "backend": storage.backend,
            "state": storage_state,
            "degraded_since": storage_since,
            "error": storage_error,
        },
    });
    if let Some(cluster) = cluster {
        body["cluster"] = serde_json::to_value(cluster).unwrap_or_default();
    }
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// Runs one API request: the head is checked first, then the body is read (within its
/// route's cap and `server.http_body_timeout`), then the endpoint runs; the outcome is a
/// JSON response.
async fn respond<S, B>(ctx: &Context, app: Arc<App>, head: api::Head<'_>, body: S) -> Response
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let route = api::route_label(&head);
    let counted = app.clone();
    let outcome = async {
        let authorized = api::authorize(app, head)?;
        let limit = authorized.body_limit(&ctx.config.limits);
        let body = read_body(ctx, body, limit).await.map_err(|err| match err {
            // No body_md5 was signed, so no body may come.
            ApiError::TooLarge(_) if limit == 0 => ApiError::Auth(RequestError::BodyMd5 {
                expected: "a signed body_md5 for a request with a body".into(),
                got: None,
            }),
            other => other,
        })?;
        let publish = authorized.is_publish();
        let started = std::time::Instant::now();
        let value = authorized.handle(ctx, &body).await?;
        if publish {
            ctx.metrics.published(started.elapsed());
        }
        Ok::<_, ApiError>(value)
    };
    let response = match outcome.await {
        Ok(value) => warp::reply::json(&value).into_response(),
        Err(err) => err.into_response(),
    };
    ctx.metrics
        .http_call(&counted.id, route, response.status().as_u16());
    response
}

/// Reads the body, refusing (413) past `limit` bytes whether or not a length was announced,
/// (408) when it takes longer than `server.http_body_timeout`, and (503) at shutdown.
async fn read_body<S, B>(ctx: &Context, body: S, limit: usize) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let wait = ctx.config.server.http_body_timeout;
    let reading = async {
        let mut body = std::pin::pin!(body);
        let mut out = BytesMut::new();
        while let Some(chunk) = body.next().await {
            let mut chunk =
                chunk.map_err(|e| ApiError::bad(format!("Could not read the body: {e}")))?;
            if out.len() + chunk.remaining() > limit {
                return Err(ApiError::TooLarge(format!(
                    "Request body too large: the limit is {limit} bytes"
                )));
            }
            while chunk.has_remaining() {
                let part = chunk.chunk();
                out.extend_from_slice(part);
                let n = part.len();
                chunk.advance(n);
            }
        }
        Ok(out.freeze())
    };
    tokio::select! {
        read = tokio::time::timeout(Duration::from_secs(wait), reading) => {
            read.unwrap_or(Err(ApiError::BodyTimeout(wait)))
        }
        _ = ctx.shutdown.cancelled() => Err(ApiError::ShuttingDown),
    }
}
