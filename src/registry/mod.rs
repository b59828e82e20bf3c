//! The local registry: which connections each app has, and who is subscribed to what.
//!
//! Owns: per-app connection counts, channel membership, presence members, local fan-out.
//! Must not touch: `.await` while a lock is held, Redis, Mongo, HTTP.
//!
//! Concurrency: apps and channels live in `DashMap`s, which shard their locks, so there is no
//! global lock on the hot path. A publish holds one channel's shard read lock while it does a
//! non-blocking `try_send` into each subscriber's bounded queue; nothing awaits under a lock.

mod channel;
mod conn;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

pub use channel::SubscribeError;
pub use conn::{Conn, Frame};

use crate::protocol::message::PresenceMember;
use crate::protocol::{Close, SocketId};
use channel::Channel;

/// Counts answered for one channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Connections subscribed.
    pub subscription_count: usize,
    /// Distinct presence users (0 on other channels).
    pub user_count: usize,
}

/// A cheap-to-clone handle to the registry.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    apps: Arc<DashMap<String, Arc<AppState>>>,
}

#[derive(Debug, Default)]
struct AppState {
    connections: AtomicUsize,
    channels: DashMap<String, Channel>,
}

impl Registry {
    fn app(&self, app_id: &str) -> Arc<AppState> {
        if let Some(app) = self.apps.get(app_id) {
            return app.clone();
        }
        self.apps.entry(app_id.to_string()).or_default().clone()
    }

    /// Counts a new connection, or refuses it when the app is at `max` (0 = unlimited).
    pub fn connect(&self, app_id: &str, max: usize) -> Result<(), Close> {
        let app = self.app(app_id);
        let admitted = app
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n + 1)
            });
        admitted.map(|_| ()).map_err(|_| Close::OVER_QUOTA)
    }

    /// Forgets a connection counted by [`Registry::connect`].
    pub fn disconnect(&self, app_id: &str) {
        self.app(app_id).connections.fetch_sub(1, Ordering::AcqRel);
    }

    /// Connections the app has on this node.
    pub fn connection_count(&self, app_id: &str) -> usize {
        self.app(app_id).connections.load(Ordering::Acquire)
    }

    /// Subscribes `conn`; returns the `subscription_succeeded` data (`{}` or presence data).
    pub fn subscribe(
        &self,
        app_id: &str,
        channel: &str,
        conn: &Arc<Conn>,
        member: Option<PresenceMember>,
        max_members: usize,
    ) -> Result<String, SubscribeError> {
        let app = self.app(app_id);
        let mut entry = app.channels.entry(channel.to_string()).or_default();
        entry.subscribe(channel, conn, member, max_members)
    }

    /// Unsubscribes a socket; returns whether it was subscribed. An empty channel is dropped.
    pub fn unsubscribe(&self, app_id: &str, channel: &str, socket_id: SocketId) -> bool {
        let app = self.app(app_id);
        let removed = match app.channels.get_mut(channel) {
            Some(mut c) => c.unsubscribe(channel, socket_id),
            None => false,
        };
        app.channels
            .remove_if(channel, |_, c| c.subscribers.is_empty());
        removed
    }

    /// Queues `frame` for every local subscriber of `channel` but `except`. Returns how many
    /// connections it was queued for.
    pub fn publish(
        &self,
        app_id: &str,
        channel: &str,
        frame: &Frame,
        except: Option<SocketId>,
    ) -> usize {
        let Some(app) = self.apps.get(app_id).map(|a| a.clone()) else {
            return 0;
        };
        let Some(c) = app.channels.get(channel) else {
            return 0;
        };
        let mut sent = 0;
        for (id, sub) in &c.subscribers {
            if Some(*id) != except {
                sub.conn.send(frame.clone());
                sent += 1;
            }
        }
        sent
    }

    /// Counts for one channel (zeros when nobody is subscribed).
    pub fn channel_stats(&self, app_id: &str, channel: &str) -> ChannelStats {
        let Some(app) = self.apps.get(app_id).map(|a| a.clone()) else {
            return ChannelStats::default();
        };
        app.channels
            .get(channel)
            .map(|c| ChannelStats {
                subscription_count: c.subscribers.len(),
                user_count: c.user_count(),
            })
            .unwrap_or_default()
    }

    /// Every occupied channel of the app with its counts.
    pub fn channels(&self, app_id: &str) -> Vec<(String, ChannelStats)> {
        let Some(app) = self.apps.get(app_id).map(|a| a.clone()) else {
            return Vec::new();
        };
        app.channels
            .iter()
            .filter(|c| !c.subscribers.is_empty())
            .map(|c| {
                let stats = ChannelStats {
                    subscription_count: c.subscribers.len(),
                    user_count: c.user_count(),
                };
                (c.key().clone(), stats)
            })
            .collect()
    }

    /// User ids present on a presence channel.
    pub fn presence_users(&self, app_id: &str, channel: &str) -> Vec<String> {
        let Some(app) = self.apps.get(app_id).map(|a| a.clone()) else {
            return Vec::new();
        };
        app.channels
            .get(channel)
            .map(|c| c.user_ids())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str) -> Option<PresenceMember> {
        PresenceMember::parse(&format!(r#"{{"user_id":"{id}","user_info":{{}}}}"#), 1024).ok()
    }

    #[test]
    fn presence_counts_users_not_sockets() {
        let reg = Registry::default();
        let (a1, mut rx_a1) = Conn::new(SocketId(1, 1), 8);
        let (a2, _rx_a2) = Conn::new(SocketId(1, 2), 8);
        let (b, mut rx_b) = Conn::new(SocketId(1, 3), 8);
        reg.subscribe("1", "presence-x", &b, member("b"), 100)
            .unwrap();
        reg.subscribe("1", "presence-x", &a1, member("a"), 100)
            .unwrap();
        assert!(rx_b.try_recv().unwrap().as_str().contains("member_added"));
        reg.subscribe("1", "presence-x", &a2, member("a"), 100)
            .unwrap();
        assert!(
            rx_b.try_recv().is_err(),
            "second tab of a is not a new member"
        );
        assert_eq!(
            reg.channel_stats("1", "presence-x"),
            ChannelStats {
                subscription_count: 3,
                user_count: 2
            }
        );
        assert!(reg.unsubscribe("1", "presence-x", a1.socket_id));
        assert!(rx_b.try_recv().is_err(), "a still has a tab open");
        assert!(reg.unsubscribe("1", "presence-x", a2.socket_id));
        assert!(rx_b.try_recv().unwrap().as_str().contains("member_removed"));
        assert!(rx_a1.try_recv().is_err());
        assert_eq!(
            reg.subscribe("1", "presence-x", &b, member("b"), 100),
            Err(SubscribeError::Existing("presence-x".into()))
        );
    }

    #[test]
    fn presence_limit() {
        let reg = Registry::default();
        let (a, _ra) = Conn::new(SocketId(1, 1), 8);
        let (b, _rb) = Conn::new(SocketId(1, 2), 8);
        reg.subscribe("1", "presence-x", &a, member("a"), 1)
            .unwrap();
        assert!(matches!(
            reg.subscribe("1", "presence-x", &b, member("b"), 1),
            Err(SubscribeError::Full(..))
        ));
    }

    #[test]
    fn quota_and_slow_consumers() {
        let reg = Registry::default();
        assert!(reg.connect("1", 1).is_ok());
        assert_eq!(reg.connect("1", 1), Err(Close::OVER_QUOTA));
        reg.disconnect("1");
        assert!(reg.connect("1", 1).is_ok());

        let (slow, _rx) = Conn::new(SocketId(1, 1), 1);
        reg.subscribe("1", "c", &slow, None, 100).unwrap();
        let frame = Frame::from("x");
        reg.publish("1", "c", &frame, None);
        reg.publish("1", "c", &frame, None);
        let reason = futures_util::FutureExt::now_or_never(slow.close_requested());
        assert_eq!(reason, Some(Close::TOO_SLOW));
    }

    #[test]
    fn empty_channels_are_dropped_and_except_is_honoured() {
        let reg = Registry::default();
        let (a, mut ra) = Conn::new(SocketId(1, 1), 8);
        let (b, mut rb) = Conn::new(SocketId(1, 2), 8);
        reg.subscribe("1", "c", &a, None, 100).unwrap();
        reg.subscribe("1", "c", &b, None, 100).unwrap();
        assert_eq!(
            reg.publish("1", "c", &Frame::from("x"), Some(a.socket_id)),
            1
        );
        assert!(ra.try_recv().is_err());
        assert_eq!(rb.try_recv().unwrap().as_str(), "x");
        assert_eq!(
            reg.publish("2", "c", &Frame::from("x"), None),
            0,
            "apps are isolated"
        );
        reg.unsubscribe("1", "c", a.socket_id);
        reg.unsubscribe("1", "c", b.socket_id);
        assert!(reg.channels("1").is_empty());
    }
}
