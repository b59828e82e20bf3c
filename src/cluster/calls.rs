//! Typed calls of the Lua scripts (see `scripts`): arguments in, Rust values out. Used by
//! the membership implementation, by re-asserting a node's state and by reaping.
//!
//! Owns: argument order and the decoding of script replies. Must not touch: sockets,
//! health (callers decide what a failed call means).

use std::sync::Arc;

use redis::{RedisResult, Value};

use super::Node;
use crate::protocol::SocketId;
use crate::registry::Change;

/// What a JOIN changed.
#[derive(Debug, Clone, Default)]
pub(super) struct Joined {
    /// First socket of the channel, cluster-wide.
    pub(super) occupied: bool,
    /// First socket of this presence user on the channel, cluster-wide.
    pub(super) added: bool,
    /// Subscribers after the join.
    pub(super) count: usize,
    /// Presence members: (user id, `user_info` JSON).
    pub(super) members: Vec<(String, String)>,
    /// The other peer members, when the user is one (its pairs).
    pub(super) peers: Vec<String>,
    /// The version of the channel's last member notice, which `members` reflects.
    pub(super) version: u64,
}

/// What a LEAVE changed.
#[derive(Debug, Clone, Default)]
pub(super) struct Left {
    /// Last socket of the channel, cluster-wide.
    pub(super) vacated: bool,
    /// Last socket of the presence user on the channel, cluster-wide.
    pub(super) removed: bool,
    /// Subscribers after the leave.
    pub(super) count: usize,
    /// The socket's presence user (`""` elsewhere).
    pub(super) user: String,
    /// The pairs the socket leaves (the other peer members, when its user was one).
    pub(super) peers: Vec<String>,
}

/// A presence member joining: user id, `user_info` JSON, asked to be paired.
pub(super) type JoiningMember<'a> = Option<(&'a str, &'a str, bool)>;

pub(super) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

pub(super) fn string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items.iter().filter_map(string).collect(),
        _ => Vec::new(),
    }
}

fn flag(v: Option<&Value>) -> bool {
    v.and_then(int) == Some(1)
}

/// Decodes a LEAVE reply (also one element of a reaping's list).
pub(super) fn parse_left(out: &[Value]) -> Left {
    Left {
        vacated: flag(out.first()),
        removed: flag(out.get(1)),
        count: out.get(2).and_then(int).unwrap_or(0).max(0) as usize,
        user: out.get(3).and_then(string).unwrap_or_default(),
        peers: strings(out.get(4)),
    }
}

/// Decodes a reaping's `{{A, C, left}, ...}`.
pub(super) fn parse_reaped(v: Option<&Value>) -> Vec<(String, String, Left)> {
    let Some(Value::Array(items)) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| match item {
            Value::Array(t) if t.len() == 3 => {
                let Value::Array(left) = &t[2] else {
                    return None;
                };
                Some((string(&t[0])?, string(&t[1])?, parse_left(left)))
            }
            _ => None,
        })
        .collect()
}

impl Node {
    fn conn(&self) -> redis::aio::ConnectionManager {
        self.conn.clone()
    }

    /// Counts a connection; `false` when the app is at `max` (0: unlimited).
    pub(super) async fn run_connect(
        &self,
        app: &str,
        socket: SocketId,
        max: usize,
    ) -> RedisResult<bool> {
        let admitted: i64 = self
            .scripts
            .connect
            .arg(&self.prefix)
            .arg(&self.id)
            .arg(app)
            .arg(socket.to_string())
            .arg(max)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(admitted == 1)
    }

    pub(super) async fn run_disconnect(&self, app: &str, socket: &str) -> RedisResult<()> {
        let _: Value = self
            .scripts
            .disconnect
            .arg(&self.prefix)
            .arg(&self.id)
            .arg(app)
            .arg(socket)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Joins a socket; `None` when the presence channel is full.
    pub(super) async fn run_join(
        &self,
        app: &str,
        channel: &str,
        socket: &str,
        member: JoiningMember<'_>,
        max_members: usize,
        counted: bool,
    ) -> RedisResult<Option<Joined>> {
        let (user, info, peer) = member.unwrap_or(("", "", false));
        let out: Vec<Value> = self
            .scripts
            .join
            .arg(&self.prefix)
            .arg(&self.id)
            .arg(app)
            .arg(channel)
            .arg(socket)
            .arg(user)
            .arg(info)
            .arg(max_members)
            .arg(if counted { "1" } else { "0" })
            .arg(if peer { "1" } else { "0" })
            .invoke_async(&mut self.conn())
            .await?;
        if out.first().and_then(int) == Some(-1) {
            return Ok(None);
        }
        let flat = strings(out.get(3));
        let members = flat
            .chunks_exact(2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect();
        Ok(Some(Joined {
            occupied: flag(out.first()),
            added: flag(out.get(1)),
            count: out.get(2).and_then(int).unwrap_or(0).max(0) as usize,
            members,
            peers: strings(out.get(4)),
            version: out.get(5).and_then(int).unwrap_or(0).max(0) as u64,
        }))
    }

    /// Leaves; `None` when Redis did not have the socket there.
    pub(super) async fn run_leave(
        &self,
        app: &str,
        channel: &str,
        socket: &str,
    ) -> RedisResult<Option<Left>> {
        let out: Option<Vec<Value>> = self
            .scripts
            .leave
            .arg(&self.prefix)
            .arg(&self.id)
            .arg(app)
            .arg(channel)
            .arg(socket)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(out.map(|out| parse_left(&out)))
    }

    /// Signs a socket in; returns, per watched user, whether it is online.
    pub(super) async fn run_sign_in(
        &self,
        app: &str,
        user: &str,
        socket: &str,
        watchlist: &[String],
    ) -> RedisResult<Vec<bool>> {
        let mut invocation = self.scripts.sign_in.prepare_invoke();
        invocation
            .arg(&self.prefix)
            .arg(&self.id)
            .arg(app)
            .arg(user)
            .arg(socket);
        for w in watchlist {
            invocation.arg(w);
        }
        let online: Vec<i64> = invocation.invoke_async(&mut self.conn()).await?;
        Ok(online.into_iter().map(|o| o == 1).collect())
    }

    pub(super) async fn run_sign_out(
        &self,
        app: &str,
        user: &str,
        socket: &str,
    ) -> RedisResult<()> {
        let _: Value = self
            .scripts
            .sign_out
            .arg(&self.prefix)
            .arg(&self.id)
            .arg(app)
            .arg(user)
            .arg(socket)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }
}

impl Left {
    /// The membership change (for webhooks).
    pub(super) fn change(&self) -> Change {
        Change {
            occupied: false,
            vacated: self.vacated,
            member_added: None,
            member_removed: self.removed.then(|| Arc::from(self.user.as_str())),
            subscription_count: self.count,
            notice_floor: None,
        }
    }
}
