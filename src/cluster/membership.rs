//! The membership seam on Redis. The registry keeps this node's sockets (for local fan-out
//! and for re-asserting them); every cluster-wide decision is a script's.
//!
//! Script runs hold the node's gate shared, so re-asserting the node's state (which holds it
//! alone) never re-adds what a session removed meanwhile. A join registers the socket
//! locally and makes sure the node listens on the channel's topic *before* its script runs,
//! so no notice the script publishes is missed here.
//!
//! Cut off from Redis: new connections are refused (4100), presence subscriptions too
//! (503: the members live in Redis); public and private subscriptions work locally and are
//! re-asserted when Redis is back; leaves are applied locally and re-asserting removes them
//! from Redis.
//!
//! Owns: `impl Membership for Node`. Must not touch: delivery of published events.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use redis::Value;
use serde_json::value::RawValue;

use super::calls;
use super::envelope::Topic;
use super::Node;
use crate::apps::App;
use crate::membership::{Membership, Unavailable};
use crate::protocol::message::{self, PresenceMember};
use crate::protocol::{peer_channel, Close, SocketId};
use crate::registry::{Change, ChannelStats, Conn, Control, Frame, SubscribeError};

impl Node {
    /// Tells a joining socket of peer member `user` about each of its pairs and subscribes
    /// it to them (the server subscribes, as on one node: EXTENSIONS.md §3).
    fn join_pairs(&self, presence: &str, user: &str, conn: &Conn, peers: &[String]) {
        let Some(base) = presence.strip_prefix("presence-") else {
            return;
        };
        for other in peers {
            let Some(peer) = peer_channel(base, user, other) else {
                continue;
            };
            conn.send(&Frame::from(message::peer_event(
                true, presence, &peer, other,
            )));
            conn.control(Control::Subscribe {
                channel: peer,
                user_id: Arc::from(user),
            });
        }
    }

    /// The socket leaving `presence` leaves its pairs; when it was its user's last, it is
    /// told the pairs ended.
    fn leave_pairs(
        &self,
        app_id: &str,
        presence: &str,
        socket: SocketId,
        user: &str,
        peers: &[String],
        last: bool,
    ) {
        let Some(base) = presence.strip_prefix("presence-") else {
            return;
        };
        let Some(conn) = self.registry.connection(app_id, socket) else {
            return;
        };
        for other in peers {
            let Some(peer) = peer_channel(base, user, other) else {
                continue;
            };
            if last {
                conn.send(&Frame::from(message::peer_event(
                    false, presence, &peer, other,
                )));
            }
            conn.control(Control::Unsubscribe { channel: peer });
        }
    }

    async fn disconnect_redis(&self, app_id: &str, socket: SocketId) {
        if let Err(err) = self.run_disconnect(app_id, &socket.to_string()).await {
            self.failed(&err);
        }
    }
}

/// The `subscription_succeeded` data of a presence channel: (user id, `user_info`) pairs.
pub(super) fn presence_data(members: &[(String, String)]) -> String {
    let members: Vec<(&str, Box<RawValue>)> = members
        .iter()
        .map(|(id, info)| {
            let info = RawValue::from_string(info.clone())
                .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("null is JSON"));
            (id.as_str(), info)
        })
        .collect();
    message::presence_data(members.iter().map(|(id, info)| (*id, &**info)))
}

#[async_trait]
impl Membership for Node {
    async fn connect(&self, app: &App, conn: &Arc<Conn>) -> Result<(), Close> {
        // A node cut off from the cluster cannot enforce cluster-wide limits or show this
        // socket to the others: the client backs off and the load balancer moves it.
        if !self.is_up() {
            return Err(Close::CLUSTER_UNAVAILABLE);
        }
        {
            // Counted in Redis and in the registry together, so a re-assert sees both or
            // neither.
            let _shared = self.gate.read().await;
            match self
                .run_connect(&app.id, conn.socket_id, app.max_connections)
                .await
            {
                Ok(true) => {}
                Ok(false) => return Err(Close::OVER_QUOTA),
                Err(err) => {
                    self.failed(&err);
                    return Err(Close::CLUSTER_UNAVAILABLE);
                }
            }
            self.registry.connect(&app.id, 0, conn)?;
        }
        // Never while holding the gate: the topic keeper is the task that re-asserts, and
        // it takes the gate alone.
        if let Err(err) = self.want(Topic::App(app.id.clone())).await {
            self.registry.disconnect(&app.id, conn.socket_id);
            self.unwant(Topic::App(app.id.clone()));
            self.disconnect_redis(&app.id, conn.socket_id).await;
            tracing::debug!(error = %err, "connection refused: cluster unavailable");
            return Err(Close::CLUSTER_UNAVAILABLE);
        }
        Ok(())
    }

    async fn disconnect(&self, app_id: &str, socket: SocketId) {
        self.registry.disconnect(app_id, socket);
        self.unwant(Topic::App(app_id.to_string()));
        let _shared = self.gate.read().await;
        self.disconnect_redis(app_id, socket).await;
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
        let presence = member.is_some();
        if presence && self.registry.is_subscribed(app_id, channel, conn.socket_id) {
            return Err(SubscribeError::Existing(channel.to_string()));
        }
        if presence && !self.is_up() {
            return Err(SubscribeError::Unavailable(self.cut_off().0));
        }
        let (user, info, peer) = match &member {
            Some(m) => (m.user_id.clone(), m.user_info.get().to_string(), m.peer),
            None => (String::new(), String::new(), false),
        };
        let local = member.map(|m| (Arc::<str>::from(m.user_id.as_str()), m.user_info, m.peer));
        let (added, _) = self.registry.attach(app_id, channel, conn, local);
        self.registry.set_counted(app_id, channel, count);
        let topic = Topic::Channel(app_id.to_string(), channel.to_string());
        let socket = conn.socket_id.to_string();
        let joining = presence.then_some((user.as_str(), info.as_str(), peer));
        // Listening before the script runs (so its notices reach this node), and without the
        // gate (the topic keeper is the task that re-asserts, taking the gate alone). A
        // re-assert in between joins this socket itself; the script then changes nothing.
        let result = match self.want(topic).await {
            Err(err) => Err(err),
            Ok(()) => {
                let _shared = self.gate.read().await;
                self.run_join(app_id, channel, &socket, joining, max_members, count)
                    .await
                    .map_err(|e| self.failed(&e))
            }
        };
        let undo = || {
            if added {
                self.registry.detach(app_id, channel, conn.socket_id);
                self.unwant(Topic::Channel(app_id.to_string(), channel.to_string()));
            }
        };
        let joined = match result {
            Ok(Some(joined)) => joined,
            Ok(None) => {
                undo();
                return Err(SubscribeError::Full(channel.to_string(), max_members));
            }
            // Cut off: a public or private subscription works locally and is re-asserted
            // when Redis is back; presence needs the members, which only Redis has.
            Err(err) if presence => {
                undo();
                return Err(SubscribeError::Unavailable(err.0));
            }
            Err(_) => return Ok(("{}".to_string(), Change::default())),
        };
        let change = Change {
            occupied: joined.occupied,
            vacated: false,
            member_added: joined.added.then(|| Arc::from(user.as_str())),
            member_removed: None,
            subscription_count: joined.count,
            notice_floor: presence.then_some(joined.version),
        };
        if !presence {
            return Ok(("{}".to_string(), change));
        }
        self.join_pairs(channel, &user, conn, &joined.peers);
        if joined.added {
            self.peer_notices(app_id, channel, &user, &joined.peers, true)
                .await;
        }
        Ok((presence_data(&joined.members), change))
    }

    async fn leave(
        &self,
        app_id: &str,
        channel: &str,
        socket: SocketId,
        _count: bool,
    ) -> Option<Change> {
        let (user, last_local) = self.registry.detach(app_id, channel, socket)?;
        if last_local {
            self.unwant(Topic::Channel(app_id.to_string(), channel.to_string()));
        }
        let _shared = self.gate.read().await;
        match self.run_leave(app_id, channel, &socket.to_string()).await {
            Ok(Some(left)) => {
                if let Some(user) = &user {
                    self.leave_pairs(app_id, channel, socket, user, &left.peers, left.removed);
                    if left.removed {
                        self.peer_notices(app_id, channel, user, &left.peers, false)
                            .await;
                    }
                }
                Some(left.change())
            }
            // Redis did not have it (it was re-asserted without it, or lost it).
            Ok(None) => Some(Change::default()),
            // Cut off: re-asserting the node's state removes it from Redis later.
            Err(err) => {
                self.failed(&err);
                Some(Change::default())
            }
        }
    }

    async fn sign_in(
        &self,
        app_id: &str,
        user_id: &str,
        conn: &Arc<Conn>,
        watchlist: &[String],
    ) -> (Vec<String>, Vec<String>) {
        self.registry
            .sign_in(app_id, user_id, conn, watchlist, false);
        let _shared = self.gate.read().await;
        let socket = conn.socket_id.to_string();
        let online = match self.run_sign_in(app_id, user_id, &socket, watchlist).await {
            Ok(online) => online,
            Err(err) => {
                self.failed(&err);
                // Cut off: only this node's users are known.
                watchlist
                    .iter()
                    .map(|w| !self.registry.user_connections(app_id, w).is_empty())
                    .collect()
            }
        };
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for (w, online) in watchlist.iter().zip(online) {
            match online {
                true => on.push(w.clone()),
                false => off.push(w.clone()),
            }
        }
        (on, off)
    }

    async fn sign_out(&self, app_id: &str, user_id: &str, socket: SocketId, watchlist: &[String]) {
        self.registry
            .sign_out(app_id, user_id, socket, watchlist, false);
        let _shared = self.gate.read().await;
        if let Err(err) = self
            .run_sign_out(app_id, user_id, &socket.to_string())
            .await
        {
            self.failed(&err);
        }
    }

    async fn stats(&self, app_id: &str, channel: &str) -> Result<ChannelStats, Unavailable> {
        self.check_up()?;
        let (subs, users): (usize, usize) = redis::pipe()
            .cmd("HLEN")
            .arg(format!("{}:{app_id}:ch:{channel}", self.prefix))
            .cmd("HLEN")
            .arg(format!("{}:{app_id}:pm:{channel}", self.prefix))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(&e))?;
        Ok(ChannelStats {
            subscription_count: subs,
            user_count: users,
        })
    }

    async fn channels(&self, app_id: &str) -> Result<Vec<(String, ChannelStats)>, Unavailable> {
        self.check_up()?;
        let flat: Vec<Value> = self
            .scripts
            .channels
            .arg(&self.prefix)
            .arg(app_id)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(&e))?;
        Ok(flat
            .chunks_exact(3)
            .filter_map(|c| {
                let stats = ChannelStats {
                    subscription_count: calls::int(&c[1])?.max(0) as usize,
                    user_count: calls::int(&c[2])?.max(0) as usize,
                };
                Some((calls::string(&c[0])?, stats))
            })
            .collect())
    }

    async fn presence_users(
        &self,
        app_id: &str,
        channel: &str,
    ) -> Result<Vec<String>, Unavailable> {
        self.check_up()?;
        redis::cmd("HKEYS")
            .arg(format!("{}:{app_id}:pm:{channel}", self.prefix))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(&e))
    }

    async fn is_pair(&self, app_id: &str, presence: &str, a: &str, b: &str) -> bool {
        let pair: Result<i64, _> = self
            .scripts
            .is_pair
            .arg(&self.prefix)
            .arg(app_id)
            .arg(presence)
            .arg(a)
            .arg(b)
            .invoke_async(&mut self.conn.clone())
            .await;
        match pair {
            Ok(pair) => pair == 1,
            Err(err) => {
                self.failed(&err);
                false
            }
        }
    }

    async fn live_personal(&self, app_id: &str, users: &HashSet<Arc<str>>) -> Vec<Arc<str>> {
        if users.is_empty() {
            return Vec::new();
        }
        let mut invocation = self.scripts.live_personal.prepare_invoke();
        invocation.arg(&self.prefix).arg(app_id);
        for u in users {
            invocation.arg(&**u);
        }
        match invocation
            .invoke_async::<Vec<String>>(&mut self.conn.clone())
            .await
        {
            Ok(live) => live.into_iter().map(Arc::from).collect(),
            Err(err) => {
                self.failed(&err);
                // Cut off: this node's personal subscribers still get their events.
                self.registry.live_personal(app_id, users)
            }
        }
    }
}
