//! One channel's subscribers and, for presence channels, its members counted per user, so
//! that `member_added` goes out on a user's first connection and `member_removed` on the last.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::value::RawValue;
use tokio::time::{Duration, Instant};

use super::conn::{Conn, Control, Frame};
use crate::protocol::message::{self, PresenceMember};
use crate::protocol::{peer_channel, SocketId};

/// A subscribed connection; `user_id` is set on presence channels.
#[derive(Debug)]
pub(super) struct Subscriber {
    pub(super) conn: Arc<Conn>,
    pub(super) user_id: Option<Arc<str>>,
    /// In a cluster, the member's `user_info` (the cluster keeps the members; the node
    /// keeps what it needs to re-assert them after Redis lost them).
    pub(super) info: Option<Box<RawValue>>,
    /// In a cluster: the member asked to be paired.
    pub(super) peer: bool,
}

#[derive(Debug)]
struct Member {
    info: Box<RawValue>,
    sockets: usize,
    /// Set by the member's first socket's `channel_data` (`"peer": true`).
    peer: bool,
}

/// Why a subscription was refused by the channel itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The socket is already a member of this presence channel.
    #[error("Existing subscription to channel {0}")]
    Existing(String),
    /// The presence channel has `max_presence_members` users.
    #[error("Presence channel {0} is full: at most {1} members are allowed")]
    Full(String, usize),
    /// The cluster's members cannot be read (the node is cut off from Redis).
    #[error("Presence is unavailable: {0}")]
    Unavailable(String),
}

/// What a subscribe or unsubscribe changed, for webhooks and counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// The channel got its first subscriber.
    pub occupied: bool,
    /// The channel lost its last subscriber.
    pub vacated: bool,
    /// A presence user's first connection joined.
    pub member_added: Option<Arc<str>>,
    /// A presence user's last connection left.
    pub member_removed: Option<Arc<str>>,
    /// Subscribers after the change.
    pub subscription_count: usize,
    /// In a cluster, on a presence channel the socket joined: the version of the last
    /// member notice its member list reflects. Notices at or below it are stale for it.
    pub notice_floor: Option<u64>,
}

/// Subscribers and presence members of one channel.
#[derive(Debug, Default)]
pub(super) struct Channel {
    pub(super) subscribers: HashMap<SocketId, Subscriber>,
    members: HashMap<Arc<str>, Member>,
    /// When `pusher_internal:subscription_count` was last sent (throttled on busy channels).
    count_sent_at: Option<Instant>,
    /// In a cluster: its subscribers are sent counts (kept to re-assert the channel).
    pub(super) counted: bool,
}

/// Above this many subscribers, `subscription_count` goes out at most every
/// [`COUNT_INTERVAL`] (Pusher's documented throttle).
const BUSY_CHANNEL: usize = 100;
const COUNT_INTERVAL: Duration = Duration::from_secs(30);

impl Channel {
    /// Adds a subscriber. For presence, returns the `subscription_succeeded` data and tells
    /// the other subscribers about a new user.
    pub(super) fn subscribe(
        &mut self,
        name: &str,
        conn: &Arc<Conn>,
        member: Option<PresenceMember>,
        max_members: usize,
    ) -> Result<(String, Change), SubscribeError> {
        let mut change = Change {
            occupied: self.subscribers.is_empty(),
            ..Change::default()
        };
        let Some(member) = member else {
            self.subscribers.insert(
                conn.socket_id,
                Subscriber {
                    conn: conn.clone(),
                    user_id: None,
                    info: None,
                    peer: false,
                },
            );
            change.subscription_count = self.subscribers.len();
            return Ok(("{}".to_string(), change));
        };
        if self.subscribers.contains_key(&conn.socket_id) {
            return Err(SubscribeError::Existing(name.to_string()));
        }
        let user_id: Arc<str> = Arc::from(member.user_id.as_str());
        let is_new = !self.members.contains_key(&user_id);
        if is_new && self.members.len() >= max_members {
            return Err(SubscribeError::Full(name.to_string(), max_members));
        }
        if is_new {
            let frame = Frame::from(message::member_added(name, &user_id, &member.user_info));
            for sub in self.subscribers.values() {
                sub.conn.send(&frame);
            }
            self.members.insert(
                user_id.clone(),
                Member {
                    info: member.user_info,
                    sockets: 0,
                    peer: member.peer,
                },
            );
            change.member_added = Some(user_id.clone());
        }
        // Pairs: a new peer member pairs with every other one (both sides hear of it); a
        // further socket of a peer member joins the pairs its user already has.
        for (other, peer) in self.pairs_of(name, &user_id) {
            if is_new {
                let added = Frame::from(message::peer_event(true, name, &peer, &user_id));
                for sub in self.subscribers.values() {
                    if sub.user_id.as_deref() == Some(&*other) {
                        sub.conn.send(&added);
                        sub.conn.control(Control::Subscribe {
                            channel: peer.clone(),
                            user_id: other.clone(),
                        });
                    }
                }
            }
            conn.send(&Frame::from(message::peer_event(true, name, &peer, &other)));
            conn.control(Control::Subscribe {
                channel: peer,
                user_id: user_id.clone(),
            });
        }
        if let Some(m) = self.members.get_mut(&user_id) {
            m.sockets += 1;
        }
        self.subscribers.insert(
            conn.socket_id,
            Subscriber {
                conn: conn.clone(),
                user_id: Some(user_id),
                info: None,
                peer: false,
            },
        );
        change.subscription_count = self.subscribers.len();
        let data = message::presence_data(self.members.iter().map(|(id, m)| (&**id, &*m.info)));
        Ok((data, change))
    }

    /// In a cluster: records a local subscriber and its member without presence rules (the
    /// cluster applies them). `false` when the socket was subscribed already.
    pub(super) fn attach(
        &mut self,
        conn: &Arc<Conn>,
        member: Option<(Arc<str>, Box<RawValue>, bool)>,
    ) -> bool {
        if self.subscribers.contains_key(&conn.socket_id) {
            return false;
        }
        let (user_id, info, peer) = match member {
            Some((user, info, peer)) => (Some(user), Some(info), peer),
            None => (None, None, false),
        };
        self.subscribers.insert(
            conn.socket_id,
            Subscriber {
                conn: conn.clone(),
                user_id,
                info,
                peer,
            },
        );
        true
    }

    /// In a cluster: sends `frame` and `control` to the local sockets of presence member
    /// `user` (a peer pair of theirs formed or ended on another node).
    pub(super) fn to_member(&self, user: &str, frame: &Frame, control: &Control) {
        for sub in self.subscribers.values() {
            if sub.user_id.as_deref() == Some(user) {
                sub.conn.send(frame);
                sub.conn.control(control.clone());
            }
        }
    }

    /// Removes a subscriber; on a presence channel, tells the others when its user's last
    /// connection leaves. `None` when the socket was not subscribed.
    pub(super) fn unsubscribe(&mut self, name: &str, socket_id: SocketId) -> Option<Change> {
        let sub = self.subscribers.remove(&socket_id)?;
        let mut change = Change {
            vacated: self.subscribers.is_empty(),
            subscription_count: self.subscribers.len(),
            ..Change::default()
        };
        if let Some(user_id) = sub.user_id {
            let gone = match self.members.get_mut(&user_id) {
                Some(m) => {
                    m.sockets -= 1;
                    m.sockets == 0
                }
                None => false,
            };
            // This socket leaves its user's pairs; when it was the user's last, the pairs end
            // for both sides.
            for (other, peer) in self.pairs_of(name, &user_id) {
                if gone {
                    sub.conn.send(&Frame::from(message::peer_event(
                        false, name, &peer, &other,
                    )));
                    let removed = Frame::from(message::peer_event(false, name, &peer, &user_id));
                    for s in self.subscribers.values() {
                        if s.user_id.as_deref() == Some(&*other) {
                            s.conn.send(&removed);
                            s.conn.control(Control::Unsubscribe {
                                channel: peer.clone(),
                            });
                        }
                    }
                }
                sub.conn.control(Control::Unsubscribe { channel: peer });
            }
            if gone {
                self.members.remove(&user_id);
                let frame = Frame::from(message::member_removed(name, &user_id));
                for sub in self.subscribers.values() {
                    sub.conn.send(&frame);
                }
                change.member_removed = Some(user_id);
            }
        }
        Some(change)
    }

    /// Sends `pusher_internal:subscription_count` to every subscriber, at most every 30 s on
    /// channels with more than 100 subscribers. Returns whether it was sent.
    pub(super) fn broadcast_count(&mut self, name: &str, now: Instant) -> bool {
        let count = self.subscribers.len();
        if count == 0 {
            return false;
        }
        if count > BUSY_CHANNEL {
            if let Some(at) = self.count_sent_at {
                if now.duration_since(at) < COUNT_INTERVAL {
                    return false;
                }
            }
        }
        self.count_sent_at = Some(now);
        let frame = Frame::from(message::subscription_count(name, count));
        for sub in self.subscribers.values() {
            sub.conn.send(&frame);
        }
        true
    }

    /// Whether `user` is a member that asked to be paired.
    pub(super) fn is_peer(&self, user: &str) -> bool {
        self.members.get(user).is_some_and(|m| m.peer)
    }

    /// The other peer members `user` is paired with, each with the pair's channel (none when
    /// `user` is not a peer member, or an id cannot be paired).
    fn pairs_of(&self, name: &str, user: &str) -> Vec<(Arc<str>, String)> {
        let Some(base) = name.strip_prefix("presence-") else {
            return Vec::new();
        };
        if !self.is_peer(user) {
            return Vec::new();
        }
        self.members
            .iter()
            .filter(|(id, m)| m.peer && &***id != user)
            .filter_map(|(id, _)| Some((id.clone(), peer_channel(base, user, id)?)))
            .collect()
    }

    /// Number of distinct presence users.
    pub(super) fn user_count(&self) -> usize {
        self.members.len()
    }

    /// Presence user ids.
    pub(super) fn user_ids(&self) -> Vec<String> {
        self.members.keys().map(|id| id.to_string()).collect()
    }
}
