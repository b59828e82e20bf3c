//! The transport seam on Redis: a frame is delivered to this node's subscribers at once and
//! published to the channel's topic for the other nodes (which skip their own); cache
//! channels keep their last event in a Redis key with the event's TTL.
//!
//! Owns: `impl Adapter for Node`. Must not touch: membership.

use async_trait::async_trait;
use redis::Value;
use tokio::time::{Duration, Instant};

use super::envelope::{AppNotice, Envelope, OfflineNotice, Topic};
use super::Node;
use crate::adapter::{terminate_local, Adapter};
use crate::membership::Unavailable;
use crate::protocol::SocketId;
use crate::registry::{CacheEntry, Frame};

impl Node {
    async fn publish_envelope(
        &self,
        app_id: &str,
        channel: &str,
        env: Vec<u8>,
    ) -> Result<(), Unavailable> {
        self.check_up()?;
        let topic = Topic::Channel(app_id.to_string(), channel.to_string()).name(&self.prefix);
        let sent: Result<Value, _> = redis::cmd("PUBLISH")
            .arg(topic)
            .arg(env)
            .query_async(&mut self.conn.clone())
            .await;
        sent.map(|_| ()).map_err(|e| self.failed(&e))
    }

    fn cache_key(&self, app_id: &str, channel: &str) -> String {
        format!("{}:{app_id}:cache:{channel}", self.prefix)
    }
}

#[async_trait]
impl Adapter for Node {
    async fn publish(
        &self,
        app_id: &str,
        channel: &str,
        frame: Frame,
        except: Option<SocketId>,
    ) -> Result<(), Unavailable> {
        self.registry.fan_out(app_id, channel, &frame, except).await;
        let env = Envelope::frame(&self.id, except, None, frame.as_str());
        self.publish_envelope(app_id, channel, env).await
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
        let env = Envelope::frame(&self.id, except, Some(id), frame.as_str());
        self.publish_envelope(app_id, channel, env).await
    }

    async fn terminate_user(&self, app_id: &str, user_id: &str) -> Result<(), Unavailable> {
        terminate_local(&self.registry, app_id, user_id);
        self.check_up()?;
        let notice = AppNotice::Terminate {
            origin: self.id.clone(),
            user: user_id.to_string(),
        };
        let sent: Result<Value, _> = redis::cmd("PUBLISH")
            .arg(Topic::App(app_id.to_string()).name(&self.prefix))
            .arg(notice.encode())
            .query_async(&mut self.conn.clone())
            .await;
        sent.map(|_| ()).map_err(|e| self.failed(&e))
    }

    async fn cache_put(
        &self,
        app_id: &str,
        channel: &str,
        frame: Frame,
        data: &str,
        ttl: Duration,
    ) -> Result<(), Unavailable> {
        self.check_up()?;
        let value = serde_json::json!({ "frame": frame.as_str(), "data": data }).to_string();
        let set: Result<Value, _> = redis::cmd("SET")
            .arg(self.cache_key(app_id, channel))
            .arg(value)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut self.conn.clone())
            .await;
        set.map(|_| ()).map_err(|e| self.failed(&e))
    }

    fn check_connected(&self) -> Result<(), Unavailable> {
        self.check_up()
    }

    async fn offline_changed(&self, app_id: &str, channel: &str, user: &str, on: bool) {
        let notice = OfflineNotice {
            subscribed: on,
            origin: self.id.clone(),
            nonce: format!("{:016x}", rand::random::<u64>()),
            app: app_id.to_string(),
            channel: channel.to_string(),
            user: user.to_string(),
        };
        let sent: Result<Value, _> = redis::cmd("PUBLISH")
            .arg(Topic::Offline.name(&self.prefix))
            .arg(notice.encode())
            .query_async(&mut self.conn.clone())
            .await;
        if let Err(err) = sent {
            self.failed(&err);
            return;
        }
        // Until every live node applied it, a publish entering another node might not store
        // the event for this user; a node that never confirms reloads when it rejoins.
        let deadline = Instant::now() + Duration::from_secs(self.config.command_timeout);
        loop {
            let acked: Result<i64, _> = self
                .scripts
                .acked
                .arg(&self.prefix)
                .arg(&notice.nonce)
                .invoke_async(&mut self.conn.clone())
                .await;
            match acked {
                Ok(1) => return,
                Ok(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(2)).await
                }
                Ok(_) => {
                    tracing::warn!(app = app_id, channel, user, "cluster: not every node confirmed an offline subscription change in time; they catch up when they reconnect");
                    return;
                }
                Err(err) => {
                    self.failed(&err);
                    return;
                }
            }
        }
    }

    async fn cache_get(
        &self,
        app_id: &str,
        channel: &str,
    ) -> Result<Option<CacheEntry>, Unavailable> {
        self.check_up()?;
        let key = self.cache_key(app_id, channel);
        let (value, pttl): (Option<String>, i64) = redis::pipe()
            .cmd("GET")
            .arg(&key)
            .cmd("PTTL")
            .arg(&key)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(&e))?;
        let Some(value) = value else {
            return Ok(None);
        };
        #[derive(serde::Deserialize)]
        struct Cached {
            frame: String,
            data: String,
        }
        let Ok(cached) = serde_json::from_str::<Cached>(&value) else {
            return Ok(None);
        };
        Ok(Some(CacheEntry {
            frame: Frame::from(cached.frame),
            data: cached.data,
            ttl: (pttl.max(0) as u64).div_ceil(1000),
        }))
    }
}
