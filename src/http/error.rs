//! [`ApiError`]: every way an HTTP API request fails, each with its status and a JSON body
//! `{"error": "<what is wrong>"}`; and the one `recover` for warp's own rejections.

use std::convert::Infallible;

use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use crate::auth::RequestError;
use crate::membership::Unavailable;
use crate::publish::PublishError;
use crate::storage::StoreError;

/// A failed API request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No app with this id (404).
    #[error("Unknown app id {0:?}")]
    AppNotFound(String),
    /// The app is disabled (403).
    #[error("Application disabled")]
    AppDisabled,
    /// Signature, key, timestamp or body_md5 problem (401).
    #[error(transparent)]
    Auth(#[from] RequestError),
    /// The request is malformed or breaks a limit (400).
    #[error("{0}")]
    BadRequest(String),
    /// Event data over the payload limit, or a body over the request cap (413).
    #[error("{0}")]
    TooLarge(String),
    /// No such route (404).
    #[error("Not found: {0}")]
    NotFound(String),
    /// Route exists with another method (405).
    #[error("Method not allowed")]
    MethodNotAllowed,
    /// The body did not arrive within `server.http_body_timeout` (408).
    #[error("Request body not received within {0} s")]
    BodyTimeout(u64),
    /// The server is shutting down (503).
    #[error("Server is shutting down")]
    ShuttingDown,
    /// The app registry has not been read yet (503).
    #[error("Apps are still loading from the registry; try again shortly")]
    NotReady,
    /// Stored events or offline subscriptions could not be written or read; nothing was
    /// delivered or changed (503).
    #[error("Could not store: {0}")]
    Storage(#[from] StoreError),
    /// The cluster could not be reached: a publish reached this node's subscribers only,
    /// or cluster-wide state could not be read (503).
    #[error("{0}")]
    Cluster(String),
}

impl From<Unavailable> for ApiError {
    fn from(err: Unavailable) -> ApiError {
        ApiError::Cluster(format!("The cluster is unreachable: {err}"))
    }
}

impl From<PublishError> for ApiError {
    fn from(err: PublishError) -> ApiError {
        match err {
            PublishError::Store(err) => ApiError::Storage(err),
            PublishError::Cluster(err) => ApiError::Cluster(PublishError::Cluster(err).to_string()),
        }
    }
}

impl ApiError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::AppNotFound(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::AppDisabled => StatusCode::FORBIDDEN,
            ApiError::Auth(_) => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::ShuttingDown
            | ApiError::NotReady
            | ApiError::Storage(_)
            | ApiError::Cluster(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Shorthand for a 400.
    pub fn bad(msg: impl Into<String>) -> ApiError {
        ApiError::BadRequest(msg.into())
    }
}

/// `{"error": msg}` with `status`.
pub(super) fn error_response(status: StatusCode, msg: &str) -> Response {
    let body = warp::reply::json(&serde_json::json!({ "error": msg }));
    warp::reply::with_status(body, status).into_response()
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        error_response(self.status(), &self.to_string())
    }
}

/// Maps warp's rejections (unknown path, wrong method, ...) to JSON errors.
pub(super) async fn recover(rejection: warp::Rejection) -> Result<Response, Infallible> {
    let (status, msg) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "Not found".to_string())
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed".to_string(),
        )
    } else {
        (
            StatusCode::BAD_REQUEST,
            format!("Bad request: {rejection:?}"),
        )
    };
    Ok(error_response(status, &msg))
}
