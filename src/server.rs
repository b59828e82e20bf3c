//! The server: shared [`Context`], the listener, and the ordered shutdown.
//!
//! Owns: binding, accepting, routing a connection to the WebSocket session or the warp API,
//! task tracking and cancellation. Must not touch: protocol or Pusher rules.
//!
//! Shutdown order: stop accepting; cancel the token, so every session sends 4200 and every
//! HTTP connection finishes its request; wait for all tracked tasks, at most
//! `server.shutdown_timeout` seconds.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::adapter::{Adapter, LocalAdapter};
use crate::apps::{AppStore, StaticAppStore};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::SocketId;
use crate::registry::Registry;
use crate::webhooks::Webhooks;

/// Everything a session or request handler needs; cheap to clone.
#[derive(Debug, Clone)]
pub struct Context {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Where apps are found.
    pub apps: Arc<dyn AppStore>,
    /// This node's connections and channels.
    pub registry: Registry,
    /// Cluster-wide fan-out and counts.
    pub adapter: Arc<dyn Adapter>,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// Every spawned task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// The webhook queue.
    pub webhooks: Webhooks,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    node: u64,
    next_socket: Arc<AtomicU64>,
}

impl Context {
    /// A context over the static app store and the local adapter; starts the webhook
    /// worker (so it must be called inside a tokio runtime).
    pub fn new(config: Config) -> Context {
        let registry = Registry::default();
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let metrics = Arc::new(Metrics::default());
        Context {
            apps: Arc::new(StaticAppStore::new(&config.apps)),
            adapter: Arc::new(LocalAdapter::new(registry.clone())),
            registry,
            config: Arc::new(config),
            webhooks: Webhooks::start(&tracker, shutdown.clone(), metrics.clone()),
            metrics,
            shutdown,
            tracker,
            // Random per process so that socket ids from different nodes do not collide.
            node: u64::from(rand::random::<u32>()),
            next_socket: Arc::new(AtomicU64::new(1)),
        }
    }

    /// A fresh socket id.
    pub fn next_socket_id(&self) -> SocketId {
        SocketId(self.node, self.next_socket.fetch_add(1, Ordering::Relaxed))
    }
}

/// A bound, not yet running server.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    ctx: Context,
}

impl Server {
    /// Binds `server.host:server.port` (port 0 picks a free one).
    pub async fn bind(config: Config) -> std::io::Result<Server> {
        let addr = format!("{}:{}", config.server.host, config.server.port);
        let listener = TcpListener::bind(&addr).await?;
        Ok(Server {
            listener,
            ctx: Context::new(config),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The shared context (tests inspect the registry through it).
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Serves until `signal` resolves, then shuts down in order.
    pub async fn run(self, signal: impl Future<Output = ()>) {
        let Server { listener, ctx } = self;
        let api = warp::service(crate::http::routes(ctx.clone()));
        tokio::pin!(signal);
        let mut backoff = Duration::from_millis(10);
        loop {
            let accepted = tokio::select! {
                _ = &mut signal => break,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => {
                    backoff = Duration::from_millis(10);
                    stream
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(cause = %err, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let conn_ctx = ctx.clone();
            let api = api.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                let ctx = conn_ctx.clone();
                let mut api = api.clone();
                async move {
                    // Every WebSocket upgrade goes to the session, which refuses paths other
                    // than /app/{key} with 4005 as Pusher does.
                    if crate::session::is_upgrade(&req) {
                        Ok::<_, Infallible>(crate::session::upgrade(req, ctx))
                    } else {
                        api.call(req).await
                    }
                }
            });
            let token = ctx.shutdown.clone();
            ctx.tracker.spawn(async move {
                let conn = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades();
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = token.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
        drop(listener);
        tracing::info!("shutting down: closing connections with 4200");
        ctx.shutdown.cancel();
        ctx.tracker.close();
        let limit = Duration::from_secs(ctx.config.server.shutdown_timeout);
        if tokio::time::timeout(limit, ctx.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = ctx.tracker.len(),
                "shutdown timed out; exiting with tasks still running"
            );
        }
        tracing::info!("stopped");
    }
}

/// Resolves on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
