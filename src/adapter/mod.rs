//! The transport seam: what must reach sockets on *every* node — an event for a channel, a
//! stored event for a personal channel, a terminate for a user — and the cache channels'
//! last events, which every node must see. [`LocalAdapter`] is one node; the cluster's
//! adapter (`cluster::Node`) delivers locally at once and through Redis to the others.
//!
//! Fallible: when the cluster is cut off, local delivery still happens and the error says
//! the other nodes were not reached (the API answers 503, never a silent standalone mode).
//!
//! Owns: the trait and the single-node implementation. Must not touch: WebSocket frames
//! beyond passing them on, membership, HTTP, app lookup.

use async_trait::async_trait;
use tokio::time::Duration;

use crate::membership::Unavailable;
use crate::protocol::{Close, SocketId};
use crate::registry::{CacheEntry, Frame, Registry};

/// Cluster-wide delivery. Implementations are held as `Arc<dyn Adapter>`.
#[async_trait]
pub trait Adapter: Send + Sync + std::fmt::Debug {
    /// Delivers `frame` to every subscriber of `channel` on every node, except `except`.
    /// On `Err`, this node's subscribers got it and the other nodes' did not.
    async fn publish(
        &self,
        app_id: &str,
        channel: &str,
        frame: Frame,
        except: Option<SocketId>,
    ) -> Result<(), Unavailable>;

    /// Delivers a stored event's `frame` to every subscriber of the personal `channel` on
    /// every node, except `except`, tagged with its id so that a subscribe racing the
    /// publish delivers it once.
    async fn publish_stored(
        &self,
        app_id: &str,
        channel: &str,
        id: u64,
        frame: Frame,
        except: Option<SocketId>,
    ) -> Result<(), Unavailable>;

    /// Closes every connection signed in as `user_id`, on every node.
    async fn terminate_user(&self, app_id: &str, user_id: &str) -> Result<(), Unavailable>;

    /// Keeps the last event of a cache channel for `ttl`, for every node.
    async fn cache_put(
        &self,
        app_id: &str,
        channel: &str,
        frame: Frame,
        data: &str,
        ttl: Duration,
    ) -> Result<(), Unavailable>;

    /// The unexpired last event of a cache channel.
    async fn cache_get(
        &self,
        app_id: &str,
        channel: &str,
    ) -> Result<Option<CacheEntry>, Unavailable>;

    /// An offline (un)subscription was committed on this node: every node must know it
    /// before the API answers, so that a publish entering any node stores what it must.
    /// Returns once the other nodes applied it (or could not be waited for any longer; a
    /// node that missed it reloads the subscriptions when it rejoins).
    async fn offline_changed(&self, _app_id: &str, _channel: &str, _user: &str, _on: bool) {}

    /// `Err` while the node is cut off from its cluster (what must reach every node cannot).
    fn check_connected(&self) -> Result<(), Unavailable> {
        Ok(())
    }
}

/// The single-node adapter: the local registry is the whole truth.
#[derive(Debug, Clone)]
pub struct LocalAdapter {
    registry: Registry,
}

impl LocalAdapter {
    /// Wraps the node's registry.
    pub fn new(registry: Registry) -> LocalAdapter {
        LocalAdapter { registry }
    }
}

#[async_trait]
impl Adapter for LocalAdapter {
    async fn publish(
        &self,
        app_id: &str,
        channel: &str,
        frame: Frame,
        except: Option<SocketId>,
    ) -> Result<(), Unavailable> {
        self.registry.fan_out(app_id, channel, &frame, except).await;
        Ok(())
    }

    async fn publish_stored(
        &self,
        app_id: &str,
        channel: &str,
        id: u64,
        frame: Frame,
        except: Option<SocketId>,
    ) -> Result<(), Unavailable> {
        self.registry
            .publish_stored(app_id, channel, id, &frame, except);
        Ok(())
    }

    async fn terminate_user(&self, app_id: &str, user_id: &str) -> Result<(), Unavailable> {
        terminate_local(&self.registry, app_id, user_id);
        Ok(())
    }

    async fn cache_put(
        &self,
        app_id: &str,
        channel: &str,
        frame: Frame,
        data: &str,
        ttl: Duration,
    ) -> Result<(), Unavailable> {
        self.registry.cache_put(app_id, channel, frame, data, ttl);
        Ok(())
    }

    async fn cache_get(
        &self,
        app_id: &str,
        channel: &str,
    ) -> Result<Option<CacheEntry>, Unavailable> {
        Ok(self.registry.cache_get(app_id, channel))
    }
}

/// Closes this node's connections signed in as `user_id`.
pub(crate) fn terminate_local(registry: &Registry, app_id: &str, user_id: &str) {
    for conn in registry.user_connections(app_id, user_id) {
        conn.request_close(Close::TERMINATED);
    }
}
