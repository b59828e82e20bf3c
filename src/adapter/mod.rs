//! The fan-out seam. Everything that must reach *every* node of a cluster — publishing an
//! event, counting a channel's subscribers, listing presence users — goes through [`Adapter`].
//! [`LocalAdapter`] answers from this node's [`Registry`]; a Redis pub/sub adapter plugs in
//! behind the same trait.
//!
//! Owns: the trait and the single-node implementation. Must not touch: WebSocket frames
//! beyond passing them on, HTTP, app lookup.

use async_trait::async_trait;

use crate::protocol::{Close, SocketId};
use crate::registry::{ChannelStats, Frame, Registry};

/// Cluster-wide operations. Implementations are held as `Arc<dyn Adapter>`.
#[async_trait]
pub trait Adapter: Send + Sync + std::fmt::Debug {
    /// Delivers `frame` to every subscriber of `channel` on every node, except `except`.
    async fn publish(&self, app_id: &str, channel: &str, frame: Frame, except: Option<SocketId>);
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
    );
    /// Counts for one channel across the cluster.
    async fn channel_stats(&self, app_id: &str, channel: &str) -> ChannelStats;
    /// Every occupied channel across the cluster.
    async fn channels(&self, app_id: &str) -> Vec<(String, ChannelStats)>;
    /// Presence user ids across the cluster.
    async fn presence_users(&self, app_id: &str, channel: &str) -> Vec<String>;
    /// Closes every connection signed in as `user_id`, on every node.
    async fn terminate_user(&self, app_id: &str, user_id: &str);
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
    async fn publish(&self, app_id: &str, channel: &str, frame: Frame, except: Option<SocketId>) {
        self.registry.publish(app_id, channel, &frame, except);
    }

    async fn publish_stored(
        &self,
        app_id: &str,
        channel: &str,
        id: u64,
        frame: Frame,
        except: Option<SocketId>,
    ) {
        self.registry
            .publish_stored(app_id, channel, id, &frame, except);
    }

    async fn channel_stats(&self, app_id: &str, channel: &str) -> ChannelStats {
        self.registry.channel_stats(app_id, channel)
    }

    async fn channels(&self, app_id: &str) -> Vec<(String, ChannelStats)> {
        self.registry.channels(app_id)
    }

    async fn presence_users(&self, app_id: &str, channel: &str) -> Vec<String> {
        self.registry.presence_users(app_id, channel)
    }

    async fn terminate_user(&self, app_id: &str, user_id: &str) {
        for conn in self.registry.user_connections(app_id, user_id) {
            conn.request_close(Close::TERMINATED);
        }
    }
}
