//! The membership seam: who is connected, subscribed and signed in, *cluster-wide*.
//!
//! Every join and leave goes through [`Membership`], which answers the transitions that
//! Pusher events and webhooks are made of: the first and last socket in a channel
//! (`channel_occupied`/`channel_vacated`), the first and last socket of a user in a presence
//! channel (`member_added`/`member_removed`), the first and last socket of a signed-in user
//! (watchlist `online`/`offline`), and the channel's subscription count. The implementation
//! that decides a transition also delivers its notice to the channel's subscribers, so that
//! notices reach every socket in the order the transitions happened; the caller turns the
//! returned [`Change`] into webhooks, which are therefore sent once per cluster.
//!
//! [`LocalMembership`] is one node: the registry is the whole truth. The cluster's
//! implementation (`cluster::Node`) keeps the state in Redis.
//!
//! Owns: the trait and the single-node implementation. Must not touch: frames beyond the
//! notices, HTTP, storage.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;

use crate::apps::App;
use crate::protocol::message::PresenceMember;
use crate::protocol::{Close, SocketId};
use crate::registry::{Change, ChannelStats, Conn, Registry, SubscribeError};

/// The shared state could not be read (the cluster lost Redis).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// Joins and leaves, with the cluster-wide transitions they caused.
#[async_trait]
pub trait Membership: Send + Sync + std::fmt::Debug {
    /// Admits a connection, or refuses it with the close code to send (the app is at its
    /// `max_connections`, or the node cannot reach the cluster).
    async fn connect(&self, app: &App, conn: &Arc<Conn>) -> Result<(), Close>;

    /// Forgets a connection admitted by [`Membership::connect`].
    async fn disconnect(&self, app_id: &str, socket: SocketId);

    /// Subscribes `conn` to `channel`; returns the `subscription_succeeded` data (`{}` or
    /// the presence members) and what changed. With `count`, subscribers hear the new
    /// subscription count.
    async fn join(
        &self,
        app_id: &str,
        channel: &str,
        conn: &Arc<Conn>,
        member: Option<PresenceMember>,
        max_members: usize,
        count: bool,
    ) -> Result<(String, Change), SubscribeError>;

    /// Unsubscribes a socket; `None` when it was not subscribed.
    async fn leave(
        &self,
        app_id: &str,
        channel: &str,
        socket: SocketId,
        count: bool,
    ) -> Option<Change>;

    /// Records a signed-in connection; on the user's first, watchers hear `online`.
    /// Registers `conn` as a watcher of `watchlist`; returns which of those users are
    /// online and which offline.
    async fn sign_in(
        &self,
        app_id: &str,
        user_id: &str,
        conn: &Arc<Conn>,
        watchlist: &[String],
    ) -> (Vec<String>, Vec<String>);

    /// Undoes [`Membership::sign_in`]; on the user's last connection, watchers hear
    /// `offline`.
    async fn sign_out(&self, app_id: &str, user_id: &str, socket: SocketId, watchlist: &[String]);

    /// Counts for one channel.
    async fn stats(&self, app_id: &str, channel: &str) -> Result<ChannelStats, Unavailable>;

    /// Every occupied channel with its counts.
    async fn channels(&self, app_id: &str) -> Result<Vec<(String, ChannelStats)>, Unavailable>;

    /// User ids on a presence channel.
    async fn presence_users(&self, app_id: &str, channel: &str)
        -> Result<Vec<String>, Unavailable>;

    /// Whether `a` and `b` are both peer members of `presence` (so their peer channel
    /// exists).
    async fn is_pair(&self, app_id: &str, presence: &str, a: &str, b: &str) -> bool;

    /// The users of `users` whose personal channel has a subscriber (for delivering a
    /// stored event to it).
    async fn live_personal(&self, app_id: &str, users: &HashSet<Arc<str>>) -> Vec<Arc<str>>;
}

/// One node: the registry decides every transition under its channel locks.
#[derive(Debug, Clone)]
pub struct LocalMembership {
    registry: Registry,
}

impl LocalMembership {
    /// Membership over this node's registry.
    pub fn new(registry: Registry) -> LocalMembership {
        LocalMembership { registry }
    }
}

#[async_trait]
impl Membership for LocalMembership {
    async fn connect(&self, app: &App, conn: &Arc<Conn>) -> Result<(), Close> {
        self.registry.connect(&app.id, app.max_connections, conn)
    }

    async fn disconnect(&self, app_id: &str, socket: SocketId) {
        self.registry.disconnect(app_id, socket);
    }

    async fn join(
        &self,
        app_id: &str,
        channel: &str,
        conn: &Arc<Conn>,
        member: Option<PresenceMember>,
        max_members: usize,
        count: bool,
    ) -> Result<(String, Change), SubscribeError> {
        self.registry
            .subscribe(app_id, channel, conn, member, max_members, count)
    }

    async fn leave(
        &self,
        app_id: &str,
        channel: &str,
        socket: SocketId,
        count: bool,
    ) -> Option<Change> {
        self.registry.unsubscribe(app_id, channel, socket, count)
    }

    async fn sign_in(
        &self,
        app_id: &str,
        user_id: &str,
        conn: &Arc<Conn>,
        watchlist: &[String],
    ) -> (Vec<String>, Vec<String>) {
        self.registry
            .sign_in(app_id, user_id, conn, watchlist, true)
    }

    async fn sign_out(&self, app_id: &str, user_id: &str, socket: SocketId, watchlist: &[String]) {
        self.registry
            .sign_out(app_id, user_id, socket, watchlist, true);
    }

    async fn stats(&self, app_id: &str, channel: &str) -> Result<ChannelStats, Unavailable> {
        Ok(self.registry.channel_stats(app_id, channel))
    }

    async fn channels(&self, app_id: &str) -> Result<Vec<(String, ChannelStats)>, Unavailable> {
        Ok(self.registry.channels(app_id))
    }

    async fn presence_users(
        &self,
        app_id: &str,
        channel: &str,
    ) -> Result<Vec<String>, Unavailable> {
        Ok(self.registry.presence_users(app_id, channel))
    }

    async fn is_pair(&self, app_id: &str, presence: &str, a: &str, b: &str) -> bool {
        self.registry.is_pair(app_id, presence, a, b)
    }

    async fn live_personal(&self, app_id: &str, users: &HashSet<Arc<str>>) -> Vec<Arc<str>> {
        self.registry.live_personal(app_id, users)
    }
}
