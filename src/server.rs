//! The server: shared [`Context`], the listener, and the ordered shutdown.
//!
//! Owns: binding, accepting, routing a connection to the WebSocket session or the warp API,
//! HTTP connection limits (head timeout and size, pending connections), the metrics
//! listener, task tracking and cancellation. Must not touch: protocol or Pusher rules.
//!
//! Shutdown order: stop accepting; cancel the token, so every session sends 4200, idle and
//! half-received HTTP connections close at once and the others finish their request; wait
//! for all tracked tasks, at most `server.shutdown_timeout` seconds.
//!
//! Pending connections (accepted, no complete request head yet) are bounded by
//! `server.max_pending_connections`: past it the oldest is closed. Without that bound, idle
//! connects could hold every file descriptor until `server.http_header_timeout`, locking
//! legitimate clients out.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use crate::apps::AppStore;
use crate::cluster::{Node, StartError, Transition};
use crate::config::Config;
pub use crate::context::Context;
use crate::protocol::Close;
use crate::registry::Registry;
use crate::storage::Storage;
use crate::tls::{self, Certs, TlsError};

/// A bound, not yet running server.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    metrics: Option<TcpListener>,
    /// `[server.tls]`: the certificate every handshake gets.
    tls: Option<Arc<Certs>>,
    ctx: Context,
}

/// Builds a [`Server`]: by default the apps of the config file and the local adapter.
#[must_use]
pub struct ServerBuilder {
    config: Config,
    apps: Option<Arc<AppStore>>,
    storage: Option<Storage>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder").finish_non_exhaustive()
    }
}

impl ServerBuilder {
    /// Serves these apps instead of the config file's `[[apps]]`.
    pub fn apps(mut self, apps: Arc<AppStore>) -> ServerBuilder {
        self.apps = Some(apps);
        self
    }

    /// Stores events and offline subscriptions in `storage` (default: in memory; the
    /// binary opens the embedded store or MongoDB).
    pub fn storage(mut self, storage: Storage) -> ServerBuilder {
        self.storage = Some(storage);
        self
    }

    /// Loads the open offline subscriptions (when the store cannot be read yet, it keeps
    /// trying in the background and publishes answer 503 meanwhile), then binds the
    /// listeners (see [`Server::bind`]).
    pub async fn bind(self) -> Result<Server, BindError> {
        let registry = Registry::default();
        let shutdown = CancellationToken::new();
        let mut storage = self.storage;
        let (cluster, transitions) = match &self.config.cluster {
            Some(config) => {
                let (node, rx) = Node::start(config, registry.clone(), shutdown.clone()).await?;
                // Stored events must be one set for the whole cluster: MongoDB, or none.
                if self.config.mongodb.is_none() && storage.is_none() {
                    tracing::warn!(
                        "cluster without [mongodb]: {}; the routes that need stored events \
                         answer 503",
                        crate::storage::none::CLUSTER_NEEDS_MONGODB
                    );
                    storage = Some(crate::storage::none::none());
                }
                (Some(node), Some(rx))
            }
            None => (None, None),
        };
        let ctx = Context::build(
            self.config,
            self.apps,
            registry,
            cluster,
            storage,
            Some(shutdown),
        );
        if let Some(node) = &ctx.cluster {
            node.attach_publisher(ctx.publisher.clone());
            node.attach_feed(ctx.feed.clone(), ctx.shutdown.clone());
        }
        if let Some(rx) = transitions {
            tokio::spawn(report_transitions(rx, ctx.clone()));
        }
        // A local store answers at once; a remote one that does not answer within a second
        // is waited for in the background rather than delaying the listeners.
        let first = tokio::time::timeout(Duration::from_secs(1), ctx.publisher.load()).await;
        match first.unwrap_or_else(|_| {
            Err(crate::storage::StoreError::Unavailable(
                "the store did not answer within 1 s".into(),
            ))
        }) {
            Ok(subscriptions) => tracing::debug!(subscriptions, "offline subscriptions loaded"),
            Err(err) => {
                tracing::warn!(
                    error = %err,
                    "offline subscriptions not loaded yet; retrying, publishes answer 503 meanwhile"
                );
                ctx.tracker
                    .spawn(ctx.publisher.clone().load_until_ready(ctx.shutdown.clone()));
            }
        }
        ctx.tracker.spawn(crate::storage::retention(
            ctx.publisher.storage().clone(),
            ctx.config.storage.clone(),
            ctx.shutdown.clone(),
        ));
        Server::bind_context(ctx).await
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A listener could not be bound.
    #[error("could not bind {key} {addr}: {source}")]
    Listen {
        /// The config keys that name the address.
        key: &'static str,
        /// The address.
        addr: String,
        /// The system's reason.
        source: std::io::Error,
    },
    /// The node could not join its cluster.
    #[error(transparent)]
    Cluster(#[from] StartError),
    /// `[server.tls]` names files that do not make a usable certificate.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Pending connections the kernel queues for `accept`. The default (128) drops connects
/// when many clients arrive at once (after a deploy or a network blip, every client
/// reconnects together); the kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind_one(key: &'static str, host: &str, port: u16) -> Result<TcpListener, BindError> {
    let addr = format!("{host}:{port}");
    let listen = async {
        let mut last = None;
        for resolved in tokio::net::lookup_host(&addr).await? {
            let socket = match resolved {
                std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            // As `TcpListener::bind` does: a restart must not wait for TIME_WAIT sockets.
            socket.set_reuseaddr(true)?;
            match socket.bind(resolved) {
                Ok(()) => return socket.listen(LISTEN_BACKLOG),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to listen on")
        }))
    };
    listen
        .await
        .map_err(|source| BindError::Listen { key, addr, source })
}

/// Sends the webhooks of transitions the cluster node learnt outside sessions (a dead
/// node's members reaped, state re-asserted after an outage).
async fn report_transitions(mut rx: mpsc::UnboundedReceiver<Transition>, ctx: Context) {
    loop {
        let t = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            t = rx.recv() => match t {
                Some(t) => t,
                None => return,
            },
        };
        let Some(app) = ctx.apps.find_by_id(&t.app_id) else {
            continue;
        };
        let counted = app.subscription_count
            && crate::protocol::ChannelKind::of(&t.channel)
                != crate::protocol::ChannelKind::Presence;
        ctx.webhooks.report(&app, &t.channel, &t.change, counted);
    }
}

impl Server {
    /// Binds `server.host:server.port` and, when enabled, `metrics.host:metrics.port`
    /// (port 0 picks a free one), over the config file's apps and the local adapter.
    pub async fn bind(config: Config) -> Result<Server, BindError> {
        Server::builder(config).bind().await
    }

    /// A server whose app store and adapter can be chosen (tests and other app sources
    /// inject them).
    pub fn builder(config: Config) -> ServerBuilder {
        ServerBuilder {
            apps: None,
            storage: None,
            config,
        }
    }

    async fn bind_context(ctx: Context) -> Result<Server, BindError> {
        let config = &ctx.config;
        let s = &config.server;
        let listener = bind_one("server.host:server.port", &s.host, s.port).await?;
        let m = &config.metrics;
        let metrics = match m.enabled {
            true => Some(bind_one("metrics.host:metrics.port", &m.host, m.port).await?),
            false => None,
        };
        let tls = match &s.tls {
            Some(t) => Some(Certs::load(Path::new(&t.cert), Path::new(&t.key))?),
            None => None,
        };
        Ok(Server {
            listener,
            metrics,
            tls,
            ctx,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The shared context (tests inspect the registry through it).
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Serves until `signal` resolves, then shuts down in order.
    pub async fn run(self, signal: impl Future<Output = ()>) {
        let Server {
            listener,
            metrics,
            tls,
            ctx,
        } = self;
        let acceptor = tls.as_ref().map(|certs| {
            ctx.tracker
                .spawn(watch_certificates(certs.clone(), ctx.shutdown.clone()));
            TlsAcceptor::from(certs.server_config())
        });
        if let Some(metrics) = metrics {
            let routes = crate::http::metrics_routes(ctx.clone());
            ctx.tracker
                .spawn(serve_metrics(metrics, warp::service(routes), ctx.clone()));
        }
        let api = warp::service(crate::http::routes(ctx.clone()));
        // One context shared by every session (a pointer each, not a copy of every handle).
        let shared = Arc::new(ctx.clone());
        let pending = Pending::new(ctx.config.server.max_pending_connections);
        let http = http_builder(&ctx);
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
            let conn_ctx = shared.clone();
            let api = api.clone();
            let (evicted, started) = pending.admit();
            let first = started.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                let ctx = conn_ctx.clone();
                let mut api = api.clone();
                first.complete();
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
            let http = http.clone();
            let acceptor = acceptor.clone();
            let handshake_timeout = Duration::from_secs(ctx.config.server.http_header_timeout);
            ctx.tracker.spawn(async move {
                let Some(acceptor) = acceptor else {
                    let io = TokioIo::new(stream);
                    return serve_http(http, io, svc, evicted, token, started).await;
                };
                // The handshake counts against the head timeout and the pending bound.
                let accepting = async {
                    if !starts_tls(&stream).await {
                        refuse_plain(stream).await;
                        return None;
                    }
                    acceptor.accept(stream).await.ok()
                };
                let tls = tokio::select! {
                    tls = tokio::time::timeout(handshake_timeout, accepting) => tls.ok().flatten(),
                    _ = evicted.cancelled() => None,
                    _ = token.cancelled() => None,
                };
                if let Some(tls) = tls {
                    serve_http(http, TokioIo::new(tls), svc, evicted, token, started).await;
                }
            });
        }
        drop(listener);
        tracing::info!("shutting down: closing connections with 4200");
        ctx.shutdown.cancel();
        // Sessions do not each wait on the token (that would cost every idle connection a
        // waiter): they are asked here, and one that registers after this sees the token.
        ctx.registry.close_all(Close::SHUTTING_DOWN);
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
        // Every session has left its channels; whatever Redis still holds for this node
        // goes now, not after cluster.node_timeout.
        if let Some(node) = &ctx.cluster {
            node.goodbye().await;
        }
        tracing::info!("stopped");
    }
}

/// Serves one HTTP/1 connection (plain or TLS) until it ends, is evicted as the oldest
/// pending one, or shutdown closes it.
async fn serve_http<I, S>(
    http: http1::Builder,
    io: I,
    svc: S,
    evicted: CancellationToken,
    token: CancellationToken,
    started: Arc<PendingGuard>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = warp::reply::Response,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = http.serve_connection(io, svc).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        // Too many pending connections: this one was the oldest.
        _ = evicted.cancelled() => {}
        // A connection still without a complete first head is dropped: hyper would wait
        // for the rest of it. Idle keep-alive connections close at once in
        // graceful_shutdown; a request being answered finishes first.
        _ = token.cancelled() => {
            if started.is_done() {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }
    drop(started);
}

/// Whether the client's first byte opens a TLS handshake (a record of type 22). Anything
/// else on the TLS port is a plain-text client.
async fn starts_tls(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(stream.peek(&mut first).await, Ok(1) if first[0] == 0x16)
}

/// Answers a plain-text request on the TLS port with a 400 that says what to use instead
/// (a browser or SDK pointed at `ws://`/`http://` by mistake sees why), then closes.
async fn refuse_plain(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = r#"{"error":"This port speaks TLS: connect with wss:// or https://"}"#;
    let reply = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Re-reads the certificate files when they change (checked every [`tls::CHECK_EVERY`])
/// and on SIGHUP, until shutdown. A broken renewal is logged and the running certificate
/// stays.
async fn watch_certificates(certs: Arc<Certs>, shutdown: CancellationToken) {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut every = tokio::time::interval(tls::CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<Option<()>>();
        let forced = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => false,
            _ = hangup => true,
        };
        let result = if forced {
            certs.reload().map(|()| true)
        } else {
            certs.reload_if_changed()
        };
        match result {
            Ok(true) => tracing::info!("TLS certificate reloaded"),
            Ok(false) => {}
            Err(err) => {
                tracing::error!("TLS certificate not reloaded, the running one stays: {err}")
            }
        }
    }
}

/// The HTTP/1 settings every connection gets: the head timeout (which hyper also applies
/// between keep-alive requests) and the largest request head.
fn http_builder(ctx: &Context) -> http1::Builder {
    let s = &ctx.config.server;
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(s.http_header_timeout))
        .max_buf_size(s.max_request_head_kb * 1024);
    http
}

/// Serves `/metrics` on its own listener until shutdown.
async fn serve_metrics<S>(listener: TcpListener, svc: S, ctx: Context)
where
    S: Service<Request<Incoming>, Response = warp::reply::Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let http = http_builder(&ctx);
    loop {
        let stream = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(cause = %err, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let svc = svc.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let mut svc = svc.clone();
            async move { svc.call(req).await }
        });
        let conn = http.serve_connection(TokioIo::new(stream), svc);
        let token = ctx.shutdown.clone();
        ctx.tracker.spawn(async move {
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
}

/// Connections accepted that have not completed a first request head yet, oldest first.
#[derive(Debug, Clone)]
struct Pending {
    inner: Arc<PendingInner>,
}

#[derive(Debug)]
struct PendingInner {
    max: usize,
    next: AtomicU64,
    open: Mutex<BTreeMap<u64, CancellationToken>>,
}

/// One pending connection's place in [`Pending`]; leaves it on its first request or on drop.
#[derive(Debug)]
struct PendingGuard {
    id: u64,
    done: AtomicBool,
    pending: Pending,
}

impl Pending {
    fn new(max: usize) -> Pending {
        Pending {
            inner: Arc::new(PendingInner {
                max,
                next: AtomicU64::new(0),
                open: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Registers a new connection; returns the token cancelled if it is evicted, and its
    /// guard. When over the bound, the oldest pending connection is evicted.
    fn admit(&self) -> (CancellationToken, Arc<PendingGuard>) {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let evict = {
            let mut open = self.inner.open.lock().unwrap_or_else(|e| e.into_inner());
            open.insert(id, token.clone());
            if open.len() > self.inner.max {
                open.pop_first().map(|(_, t)| t)
            } else {
                None
            }
        };
        if let Some(oldest) = evict {
            tracing::debug!("too many pending connections: closing the oldest");
            oldest.cancel();
        }
        let guard = PendingGuard {
            id,
            done: AtomicBool::new(false),
            pending: self.clone(),
        };
        (token, Arc::new(guard))
    }
}

impl PendingGuard {
    /// Whether the connection has sent a complete request head.
    fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// The connection sent a complete request head: it is no longer pending.
    fn complete(&self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            let mut open = self
                .pending
                .inner
                .open
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            open.remove(&self.id);
        }
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.complete();
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
