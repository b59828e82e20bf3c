//! The HTTP side: health checks and the signed Pusher HTTP API under `/apps/{app_id}/`.
//!
//! Owns: warp filters, request-body limits, signature checking at the door, dispatch to one
//! handler per endpoint (`api`). Must not touch: business rules beyond calling the registry,
//! adapter and auth.
//!
//! The API is one filter that takes the raw method, path, query and body (all four are
//! signed), checks the signature, then dispatches on the path. Separate warp routes would
//! each need the body, which warp hands out only once.

mod api;
mod error;

use std::convert::Infallible;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use warp::http::{Method, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

pub use error::ApiError;

use crate::auth::RequestError;
use crate::server::Context;

/// All HTTP routes.
pub fn routes(ctx: Context) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let with_ctx = warp::any().map(move || ctx.clone());

    let up = warp::path!("up")
        .and(warp::get())
        .map(|| warp::reply::json(&serde_json::json!({"ok": true})).into_response());

    let up_app = warp::path!("up" / String)
        .and(warp::get())
        .and(with_ctx.clone())
        .then(|id: String, ctx: Context| async move {
            match ctx.apps.find_by_id(&id).await {
                Some(app) if app.enabled => {
                    warp::reply::json(&serde_json::json!({"ok": true})).into_response()
                }
                Some(_) => error::error_response(StatusCode::NOT_FOUND, "Application disabled"),
                None => error::error_response(StatusCode::NOT_FOUND, "Unknown app id"),
            }
        });

    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_ctx.clone())
        .map(|ctx: Context| {
            let body = ctx.metrics.render(ctx.registry.total_connections());
            warp::reply::with_header(body, "content-type", "text/plain; version=0.0.4")
                .into_response()
        });

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
             ctx: Context| async move {
                let limit = body_limit(&ctx);
                let body = match read_body(body, limit).await {
                    Ok(body) => body,
                    Err(err) => return err.into_response(),
                };
                let req = api::Request {
                    app_id: &app_id,
                    tail: tail.as_str(),
                    method: &method,
                    path: full.as_str(),
                    query: &query,
                    body: &body,
                };
                respond(&ctx, req).await
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
             ctx: Context| async move {
                let body = match read_body(body, body_limit(&ctx)).await {
                    Ok(body) => body,
                    Err(err) => return err.into_response(),
                };
                let key = form_urlencoded::parse(query.as_bytes())
                    .find(|(k, _)| k == "auth_key")
                    .map(|(_, v)| v.into_owned());
                let found = match &key {
                    Some(key) => ctx.apps.find_by_key(key).await,
                    None => None,
                };
                let Some(app) = found else {
                    let err = match key {
                        Some(key) => RequestError::WrongKey(key),
                        None => RequestError::Missing("auth_key"),
                    };
                    return ApiError::Auth(err).into_response();
                };
                let tail = format!("users/{user}/terminate_connections");
                let req = api::Request {
                    app_id: &app.id,
                    tail: &tail,
                    method: &method,
                    path: full.as_str(),
                    query: &query,
                    body: &body,
                };
                respond(&ctx, req).await
            },
        );

    up.or(up_app)
        .unify()
        .or(metrics)
        .unify()
        .or(api)
        .unify()
        .or(terminate_unprefixed)
        .unify()
        .recover(error::recover)
        .unify()
}

/// Runs one API request and turns its outcome into a JSON response.
async fn respond(ctx: &Context, req: api::Request<'_>) -> Response {
    match api::handle(ctx, req).await {
        Ok(value) => warp::reply::json(&value).into_response(),
        Err(err) => err.into_response(),
    }
}

/// Largest request body: a full batch of maximum-size events plus their envelopes.
fn body_limit(ctx: &Context) -> usize {
    let l = &ctx.config.limits;
    (l.max_event_payload_kb * 1024 * 2 + 16 * 1024) * l.max_batch_size.max(1) + 64 * 1024
}

/// Reads the body, refusing (413) past `limit` bytes whether or not a length was announced.
async fn read_body<S, B>(body: S, limit: usize) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
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
}
