//! [`Context`]: what every session, request handler and background task shares (config,
//! apps, registry, adapter, publish pipeline, shutdown, task tracker, webhooks, metrics).
//!
//! Owns: building the shared state and socket ids. Must not touch: listeners, protocol rules.
//! It lives apart from `server` so that `session` and `http` depend on it without depending
//! on the server that depends on them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::adapter::{Adapter, LocalAdapter};
use crate::apps::AppStore;
use crate::cluster::Node;
use crate::config::Config;
use crate::feed::Feed;
use crate::membership::{LocalMembership, Membership};
use crate::metrics::Metrics;
use crate::protocol::SocketId;
use crate::publish::Publisher;
use crate::registry::Registry;
use crate::storage::Storage;
use crate::webhooks::Webhooks;

/// The two cluster seams: who is where, and how frames reach every node.
#[derive(Debug, Clone)]
pub(crate) struct Seams {
    pub(crate) membership: Arc<dyn Membership>,
    pub(crate) adapter: Arc<dyn Adapter>,
}

impl Seams {
    /// A cluster node: Redis behind both seams.
    pub(crate) fn cluster(node: &Arc<Node>) -> Seams {
        Seams {
            membership: node.clone(),
            adapter: node.clone(),
        }
    }

    /// One node: the registry is the whole truth.
    pub(crate) fn local(registry: &Registry) -> Seams {
        Seams {
            membership: Arc::new(LocalMembership::new(registry.clone())),
            adapter: Arc::new(LocalAdapter::new(registry.clone())),
        }
    }
}

/// Everything a session or request handler needs; cheap to clone.
#[derive(Debug, Clone)]
pub struct Context {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Where apps are found.
    pub apps: Arc<AppStore>,
    /// This node's connections and channels.
    pub registry: Registry,
    /// Cluster-wide joins, leaves and counts.
    pub membership: Arc<dyn Membership>,
    /// Cluster-wide delivery.
    pub adapter: Arc<dyn Adapter>,
    /// This node of a cluster (`[cluster]`), for `/ready` and the goodbye at shutdown.
    pub cluster: Option<Arc<Node>>,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// Every spawned task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// The webhook queue.
    pub webhooks: Webhooks,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The debug console's live records.
    pub feed: Feed,
    /// The publish pipeline and offline subscriptions (over the store).
    pub publisher: Publisher,
    node: u64,
    next_socket: Arc<AtomicU64>,
}

impl Context {
    /// A context over the config file's apps and the local adapter; starts the webhook
    /// worker (so it must be called inside a tokio runtime).
    pub fn new(config: Config) -> Context {
        Context::build(config, None, Registry::default(), None, None, None)
    }

    /// A context over `apps` (default: the config file's), `registry`, the cluster node
    /// (default: one node) and `storage` (default: in memory), cancelled by `shutdown`;
    /// starts the webhook worker.
    pub(crate) fn build(
        config: Config,
        apps: Option<Arc<AppStore>>,
        registry: Registry,
        cluster: Option<Arc<Node>>,
        storage: Option<Storage>,
        shutdown: Option<CancellationToken>,
    ) -> Context {
        let shutdown = shutdown.unwrap_or_default();
        let tracker = TaskTracker::new();
        // The registry counts deliveries; everything else counts into the same set.
        let metrics = registry.metrics().clone();
        let Seams {
            membership,
            adapter,
        } = match &cluster {
            Some(node) => Seams::cluster(node),
            None => Seams::local(&registry),
        };
        let config = Arc::new(config);
        let feed = Feed::default();
        let webhooks = Webhooks::start(&tracker, shutdown.clone(), metrics.clone(), feed.clone());
        let publisher = Publisher::new(
            storage.unwrap_or_else(Storage::in_memory),
            adapter.clone(),
            membership.clone(),
            webhooks.clone(),
            feed.clone(),
            config.clone(),
        );
        Context {
            apps: apps.unwrap_or_else(|| Arc::new(AppStore::new(&config.apps))),
            membership,
            adapter,
            cluster,
            registry,
            config,
            webhooks,
            publisher,
            metrics,
            feed,
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
