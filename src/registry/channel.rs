//! One channel's subscribers and, for presence channels, its members counted per user, so
//! that `member_added` goes out on a user's first connection and `member_removed` on the last.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::value::RawValue;

use super::conn::{Conn, Frame};
use crate::protocol::message::{self, PresenceMember};
use crate::protocol::SocketId;

/// A subscribed connection; `user_id` is set on presence channels.
#[derive(Debug)]
pub(super) struct Subscriber {
    pub(super) conn: Arc<Conn>,
    pub(super) user_id: Option<Arc<str>>,
}

#[derive(Debug)]
struct Member {
    info: Box<RawValue>,
    sockets: usize,
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
}

/// Subscribers and presence members of one channel.
#[derive(Debug, Default)]
pub(super) struct Channel {
    pub(super) subscribers: HashMap<SocketId, Subscriber>,
    members: HashMap<Arc<str>, Member>,
}

impl Channel {
    /// Adds a subscriber. For presence, returns the `subscription_succeeded` data and tells
    /// the other subscribers about a new user.
    pub(super) fn subscribe(
        &mut self,
        name: &str,
        conn: &Arc<Conn>,
        member: Option<PresenceMember>,
        max_members: usize,
    ) -> Result<String, SubscribeError> {
        let Some(member) = member else {
            self.subscribers.insert(
                conn.socket_id,
                Subscriber {
                    conn: conn.clone(),
                    user_id: None,
                },
            );
            return Ok("{}".to_string());
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
                sub.conn.send(frame.clone());
            }
            self.members.insert(
                user_id.clone(),
                Member {
                    info: member.user_info,
                    sockets: 0,
                },
            );
        }
        if let Some(m) = self.members.get_mut(&user_id) {
            m.sockets += 1;
        }
        self.subscribers.insert(
            conn.socket_id,
            Subscriber {
                conn: conn.clone(),
                user_id: Some(user_id),
            },
        );
        Ok(message::presence_data(
            self.members.iter().map(|(id, m)| (&**id, &*m.info)),
        ))
    }

    /// Removes a subscriber; on a presence channel, tells the others when its user's last
    /// connection leaves. Returns whether the socket was subscribed.
    pub(super) fn unsubscribe(&mut self, name: &str, socket_id: SocketId) -> bool {
        let Some(sub) = self.subscribers.remove(&socket_id) else {
            return false;
        };
        if let Some(user_id) = sub.user_id {
            let gone = match self.members.get_mut(&user_id) {
                Some(m) => {
                    m.sockets -= 1;
                    m.sockets == 0
                }
                None => false,
            };
            if gone {
                self.members.remove(&user_id);
                let frame = Frame::from(message::member_removed(name, &user_id));
                for sub in self.subscribers.values() {
                    sub.conn.send(frame.clone());
                }
            }
        }
        true
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
