//! The local registry: which connections each app has, and who is subscribed to what.
//!
//! Owns: per-app connection counts, channel membership, presence members, local fan-out.
//! Must not touch: `.await` while a lock is held, Redis, Mongo, HTTP.
//!
//! Concurrency: apps and channels live in `DashMap`s, which shard their locks, so there is no
//! global lock on the hot path. A publish holds one channel's shard read lock only to collect
//! the subscribers, then writes to each (see `wire::Outlet`); nothing awaits under a lock.

mod channel;
mod conn;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use tokio::time::{Duration, Instant};

pub use channel::{Change, SubscribeError};
pub use conn::{Conn, Control, Frame, Special};

use crate::metrics::Metrics;
use crate::protocol::message::{self, PresenceMember};
use crate::protocol::{Close, SocketId, PERSONAL_PREFIX};
use channel::Channel;

/// Counts answered for one channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Connections subscribed.
    pub subscription_count: usize,
    /// Distinct presence users (0 on other channels).
    pub user_count: usize,
}

/// One subscription held on this node.
#[derive(Debug, Clone)]
pub struct LocalSubscription {
    /// The channel.
    pub channel: String,
    /// The socket.
    pub socket: SocketId,
    /// On presence channels, the member.
    pub member: Option<LocalMember>,
}

/// A presence member held on this node.
#[derive(Debug, Clone)]
pub struct LocalMember {
    /// The user id.
    pub user_id: Arc<str>,
    /// Its `user_info` JSON.
    pub info: String,
    /// It asked to be paired.
    pub peer: bool,
}

/// What one app holds on this node (see [`Registry::snapshot`]).
#[derive(Debug, Clone, Default)]
pub struct AppSnapshot {
    /// The app.
    pub app_id: String,
    /// Its connections.
    pub sockets: Vec<SocketId>,
    /// Its subscriptions.
    pub subscriptions: Vec<LocalSubscription>,
    /// (signed-in user, socket).
    pub users: Vec<(Arc<str>, SocketId)>,
}

/// Subscribers per worker thread below which a fan-out is not split (see
/// [`Registry::fan_out`]).
const SPLIT_AT: usize = 256;

/// Delivers `frame` to `targets` in two passes: queue it everywhere, let the other ready
/// tasks run (publishes arriving together queue theirs), then write each connection once
/// with everything it has waiting. Under load one `send` carries several events (the
/// kernel's cost per send, not per byte, is what a delivery costs); when idle the pause
/// is one turn of the scheduler.
async fn deliver_batched(targets: &[Arc<Conn>], frame: &Frame) {
    let mut staged = Staged(Vec::new());
    for conn in targets {
        if conn.out.stage(frame) {
            staged.0.push(conn.clone());
        }
    }
    tokio::task::yield_now().await;
    drop(staged);
}

/// Connections with staged frames: flushed when dropped, so that a publish abandoned
/// between its two passes (its HTTP client went away) still writes what it queued.
struct Staged(Vec<Arc<Conn>>);

impl Drop for Staged {
    fn drop(&mut self) {
        for conn in &self.0 {
            conn.out.flush();
        }
    }
}

/// A cheap-to-clone handle to the registry.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    apps: Arc<DashMap<String, Arc<AppState>>>,
    /// Where deliveries are counted (once per fan-out, not per connection).
    metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct AppState {
    connections: AtomicUsize,
    /// Every connection of the app on this node, so the app's sockets can all be closed.
    conns: DashMap<SocketId, Arc<Conn>>,
    channels: DashMap<String, Channel>,
    /// Signed-in connections per user id.
    users: DashMap<Arc<str>, Vec<Arc<Conn>>>,
    /// Connections watching a user id (their watchlist holds it).
    watchers: DashMap<Arc<str>, Vec<Arc<Conn>>>,
    /// Last event of each cache channel.
    cache: DashMap<String, Cached>,
    /// Users whose personal channel has a subscriber on this node.
    personal: DashMap<Arc<str>, ()>,
}

#[derive(Debug, Clone)]
struct Cached {
    frame: Frame,
    data: String,
    expires: Instant,
}

/// A cache channel's last event, as `GET /channels/{c}?info=cache` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// The frame to replay.
    pub frame: Frame,
    /// The event's data.
    pub data: String,
    /// Seconds left.
    pub ttl: u64,
}

impl Registry {
    fn app(&self, app_id: &str) -> Arc<AppState> {
        if let Some(app) = self.apps.get(app_id) {
            return app.clone();
        }
        self.apps.entry(app_id.to_string()).or_default().clone()
    }

    /// Counts and indexes a new connection, or refuses it when the app is at `max`
    /// (0 = unlimited).
    pub fn connect(&self, app_id: &str, max: usize, conn: &Arc<Conn>) -> Result<(), Close> {
        let app = self.app(app_id);
        let admitted = app
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n + 1)
            });
        admitted.map_err(|_| Close::OVER_QUOTA)?;
        app.conns.insert(conn.socket_id, conn.clone());
        Ok(())
    }

    /// Forgets a connection admitted by [`Registry::connect`].
    pub fn disconnect(&self, app_id: &str, socket_id: SocketId) {
        let app = self.app(app_id);
        app.conns.remove(&socket_id);
        app.connections.fetch_sub(1, Ordering::AcqRel);
    }

    /// Asks every connection of the app on this node to close with `reason` (the app was
    /// disabled or deleted); returns how many were asked.
    pub fn close_app(&self, app_id: &str, reason: Close) -> usize {
        let Some(app) = self.apps.get(app_id).map(|a| a.clone()) else {
            return 0;
        };
        let conns: Vec<Arc<Conn>> = app.conns.iter().map(|c| c.value().clone()).collect();
        for conn in &conns {
            conn.request_close(reason);
        }
        conns.len()
    }

    /// Asks every connection on this node to close with `reason` (shutdown); returns how
    /// many were asked.
    pub fn close_all(&self, reason: Close) -> usize {
        let apps: Vec<String> = self.apps.iter().map(|a| a.key().clone()).collect();
        apps.iter().map(|app| self.close_app(app, reason)).sum()
    }

    /// Connections of all apps on this node.
    pub fn total_connections(&self) -> usize {
        self.apps
            .iter()
            .map(|a| a.connections.load(Ordering::Acquire))
            .sum()
    }

    /// The process's counters (the registry counts what it delivers).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Per app with state on this node: (app id, connections, occupied channels,
    /// subscriptions), for `/metrics`.
    pub fn gauges(&self) -> Vec<(String, usize, usize, usize)> {
        self.apps
            .iter()
            .map(|a| {
                let subscriptions = a.channels.iter().map(|c| c.subscribers.len()).sum();
                (
                    a.key().clone(),
                    a.connections.load(Ordering::Acquire),
                    a.channels.len(),
                    subscriptions,
                )
            })
            .collect()
    }

    fn count_sent(&self, app_id: &str, n: usize, frame: &Frame) {
        if n > 0 {
            self.metrics.app(app_id).sent(n, n * frame.len());
        }
    }

    /// Connections the app has on this node.
    pub fn connection_count(&self, app_id: &str) -> usize {
        self.app(app_id).connections.load(Ordering::Acquire)
    }

    /// Subscribes `conn`; returns the `subscription_succeeded` data (`{}` or presence data)
    /// and what changed. With `count`, subscribers are sent the new subscription count.
    pub fn subscribe(
        &self,
        app_id: &str,
        channel: &str,
        conn: &Arc<Conn>,
        member: Option<PresenceMember>,
        max_members: usize,
        count: bool,
    ) -> Result<(String, Change), SubscribeError> {
        let app = self.app(app_id);
        let mut entry = app.channels.entry(channel.to_string()).or_default();
        let result = entry.subscribe(channel, conn, member, max_members)?;
        if count {
            entry.broadcast_count(channel, Instant::now());
        }
        // Under the channel's lock, so that a concurrent last unsubscribe cannot undo it.
        if result.1.occupied {
            if let Some(user) = channel.strip_prefix(PERSONAL_PREFIX) {
                app.personal.insert(Arc::from(user), ());
            }
        }
        Ok(result)
    }

    /// Unsubscribes a socket; `None` when it was not subscribed. An empty channel is dropped.
    pub fn unsubscribe(
        &self,
        app_id: &str,
        channel: &str,
        socket_id: SocketId,
        count: bool,
    ) -> Option<Change> {
        let app = self.app(app_id);
        let change = match app.channels.get_mut(channel) {
            Some(mut c) => {
                let change = c.unsubscribe(channel, socket_id);
                if count && change.is_some() {
                    c.broadcast_count(channel, Instant::now());
                }
                change
            }
            None => None,
        };
        app.channels.remove_if(channel, |_, c| {
            let empty = c.subscribers.is_empty();
            if empty {
                if let Some(user) = channel.strip_prefix(PERSONAL_PREFIX) {
                    app.personal.remove(user);
                }
            }
            empty
        });
        change
    }

    /// In a cluster: records a local subscriber (and its presence member) without presence
    /// rules or notices, which the cluster applies. Returns (newly subscribed, first local
    /// subscriber of the channel).
    pub fn attach(
        &self,
        app_id: &str,
        channel: &str,
        conn: &Arc<Conn>,
        member: Option<(Arc<str>, Box<serde_json::value::RawValue>, bool)>,
    ) -> (bool, bool) {
        let app = self.app(app_id);
        let mut entry = app.channels.entry(channel.to_string()).or_default();
        let first = entry.subscribers.is_empty();
        let added = entry.attach(conn, member);
        if added && first {
            if let Some(user) = channel.strip_prefix(PERSONAL_PREFIX) {
                app.personal.insert(Arc::from(user), ());
            }
        }
        (added, added && first)
    }

    /// Undoes [`Registry::attach`]: the socket's presence user id, and whether the channel
    /// has no local subscriber left. `None` when the socket was not subscribed.
    pub fn detach(
        &self,
        app_id: &str,
        channel: &str,
        socket_id: SocketId,
    ) -> Option<(Option<Arc<str>>, bool)> {
        let app = self.app(app_id);
        let user = {
            let mut c = app.channels.get_mut(channel)?;
            c.subscribers.remove(&socket_id)?.user_id
        };
        let mut last = false;
        app.channels.remove_if(channel, |_, c| {
            last = c.subscribers.is_empty();
            if last {
                if let Some(user) = channel.strip_prefix(PERSONAL_PREFIX) {
                    app.personal.remove(user);
                }
            }
            last
        });
        Some((user, last))
    }

    /// In a cluster: records whether the channel's subscribers are sent counts.
    pub fn set_counted(&self, app_id: &str, channel: &str, counted: bool) {
        if let Some(app) = self.apps.get(app_id) {
            if let Some(mut c) = app.channels.get_mut(channel) {
                c.counted = counted;
            }
        }
    }

    /// See [`Registry::set_counted`].
    pub fn counted(&self, app_id: &str, channel: &str) -> bool {
        self.apps
            .get(app_id)
            .is_some_and(|a| a.channels.get(channel).is_some_and(|c| c.counted))
    }

    /// In a cluster: sends `frame` and `control` to this node's sockets of presence member
    /// `user` on `channel`.
    pub fn to_member(
        &self,
        app_id: &str,
        channel: &str,
        user: &str,
        frame: &Frame,
        control: &Control,
    ) {
        if let Some(app) = self.apps.get(app_id) {
            if let Some(c) = app.channels.get(channel) {
                c.to_member(user, frame, control);
            }
        }
    }

    /// This node's connection `socket_id` of the app.
    pub fn connection(&self, app_id: &str, socket_id: SocketId) -> Option<Arc<Conn>> {
        self.apps
            .get(app_id)
            .and_then(|a| a.conns.get(&socket_id).map(|c| c.clone()))
    }

    /// Whether `channel` has a subscriber on this node.
    pub fn has_subscribers(&self, app_id: &str, channel: &str) -> bool {
        self.apps.get(app_id).is_some_and(|a| {
            a.channels
                .get(channel)
                .is_some_and(|c| !c.subscribers.is_empty())
        })
    }

    /// Whether the app has a connection on this node.
    pub fn has_connections(&self, app_id: &str) -> bool {
        self.apps.get(app_id).is_some_and(|a| !a.conns.is_empty())
    }

    /// Whether `socket_id` is subscribed to `channel` on this node.
    pub fn is_subscribed(&self, app_id: &str, channel: &str, socket_id: SocketId) -> bool {
        self.apps.get(app_id).is_some_and(|a| {
            a.channels
                .get(channel)
                .is_some_and(|c| c.subscribers.contains_key(&socket_id))
        })
    }

    /// Everything this node holds, for a cluster node to re-assert after Redis lost it.
    pub fn snapshot(&self) -> Vec<AppSnapshot> {
        let apps: Vec<(String, Arc<AppState>)> = self
            .apps
            .iter()
            .map(|a| (a.key().clone(), a.value().clone()))
            .collect();
        let mut out = Vec::with_capacity(apps.len());
        for (id, app) in apps {
            let sockets: Vec<SocketId> = app.conns.iter().map(|c| *c.key()).collect();
            let mut subscriptions = Vec::new();
            for c in app.channels.iter() {
                for (socket, sub) in &c.subscribers {
                    let member = match (&sub.user_id, &sub.info) {
                        (Some(user), Some(info)) => Some(LocalMember {
                            user_id: user.clone(),
                            info: info.get().to_string(),
                            peer: sub.peer,
                        }),
                        _ => None,
                    };
                    subscriptions.push(LocalSubscription {
                        channel: c.key().clone(),
                        socket: *socket,
                        member,
                    });
                }
            }
            let mut users = Vec::new();
            for u in app.users.iter() {
                for conn in u.value() {
                    users.push((u.key().clone(), conn.socket_id));
                }
            }
            if !sockets.is_empty() || !subscriptions.is_empty() || !users.is_empty() {
                out.push(AppSnapshot {
                    app_id: id,
                    sockets,
                    subscriptions,
                    users,
                });
            }
        }
        out
    }

    /// The users of `users` whose personal channel has a subscriber on this node (walking
    /// the smaller of the two sets, so a channel with many offline subscribers and few of
    /// them online costs little).
    pub fn live_personal(&self, app_id: &str, users: &HashSet<Arc<str>>) -> Vec<Arc<str>> {
        let Some(app) = self.apps.get(app_id).map(|a| a.clone()) else {
            return Vec::new();
        };
        if app.personal.is_empty() {
            return Vec::new();
        }
        if app.personal.len() < users.len() {
            app.personal
                .iter()
                .filter(|u| users.contains(u.key()))
                .map(|u| u.key().clone())
                .collect()
        } else {
            users
                .iter()
                .filter(|u| app.personal.contains_key(&***u))
                .cloned()
                .collect()
        }
    }

    /// Records a signed-in connection. When it is the user's first, everyone watching the
    /// user hears `online`. Registers `conn` as a watcher of `watchlist` and returns which of
    /// those users are online and offline now.
    pub fn sign_in(
        &self,
        app_id: &str,
        user_id: &str,
        conn: &Arc<Conn>,
        watchlist: &[String],
        notify: bool,
    ) -> (Vec<String>, Vec<String>) {
        let app = self.app(app_id);
        let user: Arc<str> = Arc::from(user_id);
        let first = {
            let mut conns = app.users.entry(user.clone()).or_default();
            conns.push(conn.clone());
            conns.len() == 1
        };
        if first && notify {
            notify_watchers(&app, &user, true);
        }
        let (mut online, mut offline) = (Vec::new(), Vec::new());
        for id in watchlist {
            let id: Arc<str> = Arc::from(id.as_str());
            app.watchers
                .entry(id.clone())
                .or_default()
                .push(conn.clone());
            if app.users.contains_key(&id) {
                online.push(id.to_string());
            } else {
                offline.push(id.to_string());
            }
        }
        (online, offline)
    }

    /// Undoes [`Registry::sign_in`]; when it was the user's last connection (and with
    /// `notify`), watchers hear `offline`. Returns whether it was the last.
    pub fn sign_out(
        &self,
        app_id: &str,
        user_id: &str,
        socket_id: SocketId,
        watchlist: &[String],
        notify: bool,
    ) -> bool {
        let app = self.app(app_id);
        let last = match app.users.get_mut(user_id) {
            Some(mut conns) => {
                conns.retain(|c| c.socket_id != socket_id);
                conns.is_empty()
            }
            None => false,
        };
        if last {
            app.users.remove_if(user_id, |_, conns| conns.is_empty());
            if notify {
                notify_watchers(&app, &Arc::from(user_id), false);
            }
        }
        for id in watchlist {
            if let Some(mut conns) = app.watchers.get_mut(id.as_str()) {
                conns.retain(|c| c.socket_id != socket_id);
            }
            app.watchers
                .remove_if(id.as_str(), |_, conns| conns.is_empty());
        }
        last
    }

    /// Tells this node's watchers of `user_id` that it went online or offline (the
    /// cluster decided it).
    pub fn notify_watchers(&self, app_id: &str, user_id: &str, online: bool) {
        if let Some(app) = self.apps.get(app_id).map(|a| a.clone()) {
            notify_watchers(&app, &Arc::from(user_id), online);
        }
    }

    /// The connections signed in as `user_id`.
    pub fn user_connections(&self, app_id: &str, user_id: &str) -> Vec<Arc<Conn>> {
        self.app(app_id)
            .users
            .get(user_id)
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    /// Stores the last event of a cache channel for `ttl`.
    pub fn cache_put(&self, app_id: &str, channel: &str, frame: Frame, data: &str, ttl: Duration) {
        let cached = Cached {
            frame,
            data: data.to_string(),
            expires: Instant::now() + ttl,
        };
        self.app(app_id).cache.insert(channel.to_string(), cached);
    }

    /// The unexpired last event of a cache channel.
    pub fn cache_get(&self, app_id: &str, channel: &str) -> Option<CacheEntry> {
        let app = self.app(app_id);
        let now = Instant::now();
        let entry = app.cache.get(channel).and_then(|c| {
            (c.expires > now).then(|| CacheEntry {
                frame: c.frame.clone(),
                data: c.data.clone(),
                ttl: c.expires.duration_since(now).as_secs(),
            })
        });
        if entry.is_none() {
            app.cache.remove_if(channel, |_, c| c.expires <= now);
        }
        entry
    }

    /// Delivers `frame` to every local subscriber of `channel` but `except`. Returns how
    /// many connections it went to.
    ///
    /// The subscribers are collected under the channel's shard lock and written to after
    /// it is released: a write is a syscall, and subscribes to other channels of the shard
    /// must not wait for a whole fan-out.
    pub fn publish(
        &self,
        app_id: &str,
        channel: &str,
        frame: &Frame,
        except: Option<SocketId>,
    ) -> usize {
        let targets = self.subscribers(app_id, channel, except);
        for conn in &targets {
            conn.send(frame);
        }
        self.count_sent(app_id, targets.len(), frame);
        targets.len()
    }

    /// [`Registry::publish`], with a large fan-out split across the runtime's worker
    /// threads (one `send` per subscriber is the cost: 10,000 subscribers keep one core busy
    /// for tens of milliseconds). Returns after every part is done, so that publishes one
    /// after the other reach each subscriber in that order.
    pub async fn fan_out(
        &self,
        app_id: &str,
        channel: &str,
        frame: &Frame,
        except: Option<SocketId>,
    ) -> usize {
        let targets = self.subscribers(app_id, channel, except);
        let n = targets.len();
        self.count_sent(app_id, n, frame);
        let workers = tokio::runtime::Handle::try_current()
            .map(|h| h.metrics().num_workers())
            .unwrap_or(1);
        let parts = workers.min(n / SPLIT_AT);
        if parts < 2 {
            deliver_batched(&targets, frame).await;
            return n;
        }
        let targets = Arc::new(targets);
        let size = n.div_ceil(parts);
        // Every part is a task (none run inline): a task spawned from a worker waits in its
        // not-stealable next-task slot, so a lone spawn would not reach the other thread.
        let tasks: Vec<_> = (0..parts)
            .map(|i| {
                let (targets, frame) = (targets.clone(), frame.clone());
                tokio::spawn(async move {
                    let end = ((i + 1) * size).min(targets.len());
                    deliver_batched(&targets[i * size..end], &frame).await;
                })
            })
            .collect();
        for task in tasks {
            let _ = task.await;
        }
        n
    }

    /// The local subscribers of `channel` but `except`.
    fn subscribers(&self, app_id: &str, channel: &str, except: Option<SocketId>) -> Vec<Arc<Conn>> {
        let Some(app) = self.apps.get(app_id).map(|a| a.clone()) else {
            return Vec::new();
        };
        let Some(c) = app.channels.get(channel) else {
            return Vec::new();
        };
        c.subscribers
            .iter()
            .filter(|(id, _)| Some(**id) != except)
            .map(|(_, sub)| sub.conn.clone())
            .collect()
    }

    /// Queues a stored event for every local subscriber of the personal `channel` but
    /// `except`, with its id (see [`Special::Stored`]).
    pub fn publish_stored(
        &self,
        app_id: &str,
        channel: &str,
        id: u64,
        frame: &Frame,
        except: Option<SocketId>,
    ) {
        let targets = self.subscribers(app_id, channel, except);
        self.count_sent(app_id, targets.len(), frame);
        for conn in targets {
            conn.send_stored(id, frame.clone());
        }
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

    /// Whether `a` and `b` are both peer members of the presence channel (so
    /// `peer-<base>;<a>,<b>` is theirs).
    pub fn is_pair(&self, app_id: &str, presence: &str, a: &str, b: &str) -> bool {
        let Some(app) = self.apps.get(app_id).map(|a| a.clone()) else {
            return false;
        };
        app.channels
            .get(presence)
            .is_some_and(|c| c.is_peer(a) && c.is_peer(b))
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

fn notify_watchers(app: &AppState, user: &Arc<str>, online: bool) {
    let Some(watchers) = app.watchers.get(user).map(|w| w.clone()) else {
        return;
    };
    let ids = [&**user];
    let frame = if online {
        message::watchlist_events(&ids, &[])
    } else {
        message::watchlist_events(&[], &ids)
    };
    let frame = Frame::from(frame);
    for conn in watchers {
        conn.send(&frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Queued;

    fn conn(id: SocketId, capacity: usize) -> Arc<Conn> {
        Conn::new(id, None, capacity)
    }

    /// The texts queued for `c` since the last call.
    fn recv(c: &Conn) -> Vec<String> {
        c.out
            .take_queued()
            .into_iter()
            .map(|q| match q {
                Queued::Frame(f) => f.as_str().to_string(),
                Queued::Special(s) => format!("{s:?}"),
            })
            .collect()
    }

    fn member(id: &str) -> Option<PresenceMember> {
        PresenceMember::parse(&format!(r#"{{"user_id":"{id}","user_info":{{}}}}"#), 1024).ok()
    }

    #[test]
    fn presence_counts_users_not_sockets() {
        let reg = Registry::default();
        let a1 = conn(SocketId(1, 1), 8);
        let a2 = conn(SocketId(1, 2), 8);
        let b = conn(SocketId(1, 3), 8);
        reg.subscribe("1", "presence-x", &b, member("b"), 100, false)
            .unwrap();
        reg.subscribe("1", "presence-x", &a1, member("a"), 100, false)
            .unwrap();
        let got = recv(&b);
        assert!(got.len() == 1 && got[0].contains("member_added"), "{got:?}");
        reg.subscribe("1", "presence-x", &a2, member("a"), 100, false)
            .unwrap();
        assert!(recv(&b).is_empty(), "second tab of a is not a new member");
        assert_eq!(
            reg.channel_stats("1", "presence-x"),
            ChannelStats {
                subscription_count: 3,
                user_count: 2
            }
        );
        let change = reg
            .unsubscribe("1", "presence-x", a1.socket_id, false)
            .unwrap();
        assert_eq!(change.member_removed, None);
        assert!(recv(&b).is_empty(), "a still has a tab open");
        let change = reg
            .unsubscribe("1", "presence-x", a2.socket_id, false)
            .unwrap();
        assert_eq!(change.member_removed.as_deref(), Some("a"));
        let got = recv(&b);
        assert!(
            got.len() == 1 && got[0].contains("member_removed"),
            "{got:?}"
        );
        assert!(recv(&a1).iter().all(|f| !f.contains("member_")));
        assert_eq!(
            reg.subscribe("1", "presence-x", &b, member("b"), 100, false),
            Err(SubscribeError::Existing("presence-x".into()))
        );
    }

    #[test]
    fn presence_limit() {
        let reg = Registry::default();
        let a = conn(SocketId(1, 1), 8);
        let b = conn(SocketId(1, 2), 8);
        reg.subscribe("1", "presence-x", &a, member("a"), 1, false)
            .unwrap();
        assert!(matches!(
            reg.subscribe("1", "presence-x", &b, member("b"), 1, false),
            Err(SubscribeError::Full(..))
        ));
    }

    #[test]
    fn quota_and_slow_consumers() {
        let reg = Registry::default();
        let c1 = conn(SocketId(9, 1), 1);
        let c2 = conn(SocketId(9, 2), 1);
        assert!(reg.connect("1", 1, &c1).is_ok());
        assert_eq!(reg.connect("1", 1, &c2), Err(Close::OVER_QUOTA));
        reg.disconnect("1", c1.socket_id);
        assert!(reg.connect("1", 1, &c2).is_ok());
        // Closing the app reaches every connection it has, and only those.
        assert_eq!(reg.close_app("1", Close::APP_DISABLED), 1);
        assert_eq!(c2.out.close_requested(), Some(Close::APP_DISABLED));
        assert_eq!(reg.close_app("2", Close::APP_DISABLED), 0);

        let slow = conn(SocketId(1, 1), 1);
        reg.subscribe("1", "c", &slow, None, 100, false).unwrap();
        let frame = Frame::from("x");
        reg.publish("1", "c", &frame, None);
        reg.publish("1", "c", &frame, None);
        assert_eq!(slow.out.close_requested(), Some(Close::TOO_SLOW));
    }

    #[test]
    fn empty_channels_are_dropped_and_except_is_honoured() {
        let reg = Registry::default();
        let a = conn(SocketId(1, 1), 8);
        let b = conn(SocketId(1, 2), 8);
        let (_, change) = reg.subscribe("1", "c", &a, None, 100, false).unwrap();
        assert!(change.occupied);
        let (_, change) = reg.subscribe("1", "c", &b, None, 100, false).unwrap();
        assert!(!change.occupied);
        assert_eq!(
            reg.publish("1", "c", &Frame::from("x"), Some(a.socket_id)),
            1
        );
        assert!(recv(&a).is_empty());
        assert_eq!(recv(&b), ["x"]);
        assert_eq!(
            reg.publish("2", "c", &Frame::from("x"), None),
            0,
            "apps are isolated"
        );
        assert!(
            !reg.unsubscribe("1", "c", a.socket_id, false)
                .unwrap()
                .vacated
        );
        assert!(
            reg.unsubscribe("1", "c", b.socket_id, false)
                .unwrap()
                .vacated
        );
        assert!(reg.unsubscribe("1", "c", b.socket_id, false).is_none());
        assert!(reg.channels("1").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn subscription_count_is_throttled_on_busy_channels() {
        let reg = Registry::default();
        let mut conns = Vec::new();
        for i in 0..102 {
            conns.push(conn(SocketId(1, i), 1024));
        }
        for c in &conns {
            reg.subscribe("1", "c", c, None, 100, true).unwrap();
        }
        let received = |c: &Arc<Conn>| recv(c).len();
        // One count per change up to 100 subscribers; past 100, none within 30 s of the last.
        assert_eq!(received(&conns[0]), 100);
        tokio::time::advance(Duration::from_secs(31)).await;
        reg.unsubscribe("1", "c", conns[101].socket_id, true);
        assert_eq!(received(&conns[0]), 1, "sent again after 30 s");
        reg.unsubscribe("1", "c", conns[100].socket_id, true);
        assert_eq!(received(&conns[0]), 1, "100 subscribers: not busy any more");
    }

    #[test]
    fn watchlist_online_offline() {
        let reg = Registry::default();
        let watcher = conn(SocketId(1, 1), 8);
        let bob = conn(SocketId(1, 2), 8);
        let bob2 = conn(SocketId(1, 3), 8);
        let (online, offline) = reg.sign_in(
            "1",
            "alice",
            &watcher,
            &["bob".into(), "carol".into()],
            true,
        );
        assert!(online.is_empty());
        assert_eq!(offline, vec!["bob", "carol"]);
        reg.sign_in("1", "bob", &bob, &[], true);
        let got = recv(&watcher);
        assert!(
            got.len() == 1 && got[0].contains(r#"\"online\""#),
            "{got:?}"
        );
        reg.sign_in("1", "bob", &bob2, &[], true);
        assert!(recv(&watcher).is_empty(), "bob was online already");
        reg.sign_out("1", "bob", bob.socket_id, &[], true);
        assert!(recv(&watcher).is_empty(), "bob still has a connection");
        reg.sign_out("1", "bob", bob2.socket_id, &[], true);
        let got = recv(&watcher);
        assert!(
            got.len() == 1 && got[0].contains(r#"\"offline\""#),
            "{got:?}"
        );
        assert_eq!(reg.user_connections("1", "bob").len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn cache_entries_expire() {
        let reg = Registry::default();
        reg.cache_put(
            "1",
            "cache-a",
            Frame::from("f"),
            "d",
            Duration::from_secs(60),
        );
        assert_eq!(reg.cache_get("1", "cache-a").unwrap().ttl, 60);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(reg.cache_get("1", "cache-a").is_none());
    }
}
