//! Re-asserting a node's state: after Redis lost it (a restart, a flush) or declared the
//! node dead while it was only stalled, and after every reconnection (leaves that failed
//! while cut off are still in Redis). Everything the registry holds is joined again (the
//! scripts are idempotent: what Redis still has changes nothing, what it lost comes back
//! with its notices and webhooks), and what Redis holds for the node that the registry does
//! not is undone.
//!
//! Runs holding the node's gate alone, so no session's join or leave interleaves with it;
//! its scripts run 64 at a time.
//!
//! Owns: that reconciliation. Must not touch: topics (the supervisor resubscribes first).

use futures_util::future::BoxFuture;
use futures_util::{stream, FutureExt, StreamExt};
use std::collections::{HashMap, HashSet};

use super::Node;
use crate::protocol::{message, SocketId};
use crate::registry::{AppSnapshot, Change, Frame, LocalSubscription};

/// One script call of a re-assert (boxed: the calls of one phase are run together).
type Call<'a> = BoxFuture<'a, Result<bool, redis::RedisError>>;

/// Scripts in flight at once while re-asserting: the multiplexed connection pipelines
/// them, so a node's state goes back in a few round trips' time per 64 entries rather
/// than one round trip per entry.
const IN_FLIGHT: usize = 64;

/// Runs `calls` with at most [`IN_FLIGHT`] at once; the first error stops them. Returns
/// how many answered `true`.
async fn all(calls: Vec<Call<'_>>) -> Result<usize, redis::RedisError> {
    let mut done = stream::iter(calls).buffer_unordered(IN_FLIGHT);
    let mut n = 0;
    while let Some(result) = done.next().await {
        n += usize::from(result?);
    }
    Ok(n)
}

/// A node-set entry as the scripts write it: fields joined by NUL.
fn entry(fields: &[&str]) -> Vec<u8> {
    fields.join("\0").into_bytes()
}

impl Node {
    /// Makes Redis hold exactly what the registry holds for this node. With `lost` (Redis
    /// did not know the node: its state, and maybe other nodes', is gone), every local
    /// presence subscriber is then sent the channel's members afresh.
    pub(super) async fn reassert(&self, lost: bool) -> Result<(), redis::RedisError> {
        let _alone = self.gate.write().await;
        let held: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
            .arg(format!("{}:node:{}", self.prefix, self.id))
            .query_async(&mut self.conn.clone())
            .await?;
        let snapshot = self.registry.snapshot();
        let mut wanted: HashSet<Vec<u8>> = HashSet::new();
        for app in &snapshot {
            for s in &app.sockets {
                wanted.insert(entry(&["a", &app.app_id, &s.to_string()]));
            }
            for s in &app.subscriptions {
                wanted.insert(entry(&[
                    "c",
                    &app.app_id,
                    &s.channel,
                    &s.socket.to_string(),
                ]));
            }
            for (u, s) in &app.users {
                wanted.insert(entry(&["u", &app.app_id, u, &s.to_string()]));
            }
        }
        let stale: Vec<Vec<String>> = held
            .iter()
            .filter(|e| !wanted.contains(*e))
            .map(|e| {
                e.split(|b| *b == 0)
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .collect()
            })
            .collect();
        let undone = all(stale.iter().map(|f| self.undo(f).boxed()).collect()).await?;
        let mut rejoined = 0;
        for app in &snapshot {
            let id = app.app_id.as_str();
            let connects = app
                .sockets
                .iter()
                .map(|s| async move { self.run_connect(id, *s, 0).await.map(|_| false) }.boxed());
            all(connects.collect()).await?;
            let joins = app.subscriptions.iter().map(|s| self.rejoin(id, s).boxed());
            rejoined += all(joins.collect()).await?;
            let sign_ins = app.users.iter().map(|(u, s)| {
                async move {
                    let socket = s.to_string();
                    self.run_sign_in(id, u, &socket, &[]).await.map(|_| false)
                }
                .boxed()
            });
            all(sign_ins.collect()).await?;
        }
        if undone > 0 || rejoined > 0 {
            tracing::info!(node = %self.id, undone, rejoined, "cluster: state re-asserted");
        }
        if lost {
            self.resend_members(&snapshot).await?;
        }
        Ok(())
    }

    /// Undoes one entry Redis holds for this node that the registry does not; `true` when
    /// it was one.
    async fn undo(&self, fields: &[String]) -> Result<bool, redis::RedisError> {
        let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        match fields.as_slice() {
            ["c", app, channel, socket] => {
                if let Some(left) = self.run_leave(app, channel, socket).await? {
                    if left.removed {
                        self.peer_notices(app, channel, &left.user, &left.peers, false)
                            .await;
                    }
                    self.transition(app, channel, left.change());
                }
            }
            ["a", app, socket] => self.run_disconnect(app, socket).await?,
            ["u", app, user, socket] => self.run_sign_out(app, user, socket).await?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Joins one local subscription again; `true` when Redis had lost it (a transition).
    async fn rejoin(&self, app_id: &str, s: &LocalSubscription) -> Result<bool, redis::RedisError> {
        let member = s
            .member
            .as_ref()
            .map(|m| (&*m.user_id, m.info.as_str(), m.peer));
        let counted = self.registry.counted(app_id, &s.channel);
        let socket = s.socket.to_string();
        // Limit 0: a member that is there already is never refused.
        let joined = self
            .run_join(app_id, &s.channel, &socket, member, 0, counted)
            .await?;
        let Some(joined) = joined else {
            return Ok(false);
        };
        if !(joined.occupied || joined.added) {
            return Ok(false);
        }
        let user = member.map(|m| m.0).unwrap_or("");
        if joined.added {
            self.peer_notices(app_id, &s.channel, user, &joined.peers, true)
                .await;
        }
        let change = Change {
            occupied: joined.occupied,
            vacated: false,
            member_added: joined.added.then(|| user.into()),
            member_removed: None,
            subscription_count: joined.count,
            notice_floor: None,
        };
        self.transition(app_id, &s.channel, change);
        Ok(true)
    }

    /// Sends each local presence subscriber `pusher_internal:subscription_succeeded` with
    /// the members Redis holds now. After Redis lost its state, the members that left while
    /// it was away were never announced as removed; pusher-js replaces its member list on a
    /// repeated `subscription_succeeded`, so no ghost stays in a client's list. Members
    /// other nodes re-assert later reach the client as `member_added`.
    async fn resend_members(&self, snapshot: &[AppSnapshot]) -> Result<(), redis::RedisError> {
        for app in snapshot {
            let mut channels: HashMap<&str, Vec<SocketId>> = HashMap::new();
            for s in app.subscriptions.iter().filter(|s| s.member.is_some()) {
                channels.entry(&s.channel).or_default().push(s.socket);
            }
            for (channel, sockets) in channels {
                let members: Vec<(String, String)> = redis::cmd("HGETALL")
                    .arg(format!("{}:{}:pi:{channel}", self.prefix, app.app_id))
                    .query_async(&mut self.conn.clone())
                    .await?;
                let data = super::membership::presence_data(&members);
                let frame = Frame::from(message::subscription_succeeded(channel, &data));
                for socket in sockets {
                    if let Some(conn) = self.registry.connection(&app.app_id, socket) {
                        conn.send(&frame);
                    }
                }
            }
        }
        Ok(())
    }
}
