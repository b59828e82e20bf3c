//! The one publish pipeline, shared by the HTTP API and client events: find who is
//! offline-subscribed, store what must be stored (one commit per call), update the cache,
//! encode once per target, fan out through the adapter, emit webhooks. And the offline
//! subscriptions themselves ([`Publisher::subscribe`]), because they decide what a publish
//! stores.
//!
//! Owns: that order and its guarantees. Must not touch: HTTP, sockets, storage internals.
//!
//! Guarantees:
//! - All or nothing for storage: when storing fails, nothing is delivered and the caller
//!   gets the error (the API answers 503), so a publish is never half-done.
//! - A publish to a channel nobody is offline-subscribed to never reaches the store.
//! - A channel with many offline subscribers costs one stored event per publish; personal
//!   channels are reached only for subscribers whose personal channel is live.
//! - Delivery follows the commit, so ids arrive in increasing order on every socket.

mod index;

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::value::RawValue;

use crate::adapter::Adapter;
use crate::apps::App;
use crate::config::Config;
use crate::protocol::{message, personal_channel, ChannelName, SocketId};
use crate::registry::{Frame, Registry};
use crate::storage::{self, NewEvent, Storage, StoreError};
use crate::webhooks::{Event, Webhooks};
pub use index::SubIndex;

/// An event's `data`.
#[derive(Debug, Clone)]
pub enum Data {
    /// From the HTTP API: the publisher's string (a JSON string on the wire).
    Text(String),
    /// From a client: any JSON, passed on verbatim.
    Raw(Box<RawValue>),
}

impl Data {
    fn raw(&self) -> Box<RawValue> {
        match self {
            Data::Text(text) => {
                let json = serde_json::to_string(text).expect("strings serialize");
                RawValue::from_string(json).expect("a JSON string is JSON")
            }
            Data::Raw(raw) => raw.clone(),
        }
    }
}

/// Who sent a client event.
#[derive(Debug, Clone)]
pub struct Sender {
    /// The socket id as the client knows it (for the webhook).
    pub socket: String,
    /// The member's user id on presence channels.
    pub user_id: Option<Arc<str>>,
}

/// One event on one channel.
#[derive(Debug, Clone)]
pub struct Publication {
    /// A valid channel name.
    pub channel: String,
    /// The event name.
    pub event: String,
    /// The data.
    pub data: Data,
    /// A socket that must not receive it (the API's `socket_id`, a client event's sender).
    pub except: Option<SocketId>,
    /// Set for client events.
    pub sender: Option<Sender>,
}

/// Why an offline subscription was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The user is at `storage.max_subscriptions_per_user`.
    #[error("User {user:?} already has {max} offline subscriptions, the most allowed")]
    TooMany {
        /// The user.
        user: String,
        /// The limit.
        max: usize,
    },
    /// The store failed; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The pipeline; cheap to clone.
#[derive(Debug, Clone)]
pub struct Publisher {
    storage: Storage,
    index: Arc<SubIndex>,
    adapter: Arc<dyn Adapter>,
    registry: Registry,
    webhooks: Webhooks,
    config: Arc<Config>,
}

impl Publisher {
    /// A pipeline over these parts; the index starts empty (see [`Publisher::load`]).
    pub fn new(
        storage: Storage,
        adapter: Arc<dyn Adapter>,
        registry: Registry,
        webhooks: Webhooks,
        config: Arc<Config>,
    ) -> Publisher {
        Publisher {
            storage,
            index: Arc::new(SubIndex::default()),
            adapter,
            registry,
            webhooks,
            config,
        }
    }

    /// Fills the index from the store's open subscriptions (at startup).
    pub async fn load(&self) -> Result<usize, StoreError> {
        let active = self.storage.subscriptions.active().await?;
        let n = active.len();
        for a in active {
            self.index.add(&a.app, &a.channel, &a.user);
        }
        Ok(n)
    }

    /// The store.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Publishes `publications` of one app: one commit for all of them when any is stored.
    pub async fn publish(
        &self,
        app: &Arc<App>,
        publications: Vec<Publication>,
    ) -> Result<(), StoreError> {
        let subscribers: Vec<Option<Arc<HashSet<Arc<str>>>>> = publications
            .iter()
            .map(|p| self.index.subscribers(&app.id, &p.channel))
            .collect();
        let mut stored: Vec<Option<(u64, Box<RawValue>)>> = vec![None; publications.len()];
        let wanted: Vec<usize> = (0..publications.len())
            .filter(|i| subscribers[*i].is_some())
            .collect();
        if !wanted.is_empty() {
            let now = storage::now_ms();
            let mut new = Vec::with_capacity(wanted.len());
            for &i in &wanted {
                let p = &publications[i];
                new.push(NewEvent {
                    channel: p.channel.clone(),
                    event: p.event.clone(),
                    data: p.data.raw(),
                    user_id: p
                        .sender
                        .as_ref()
                        .and_then(|s| s.user_id.as_deref().map(str::to_string)),
                    timestamp_ms: now,
                });
            }
            let datas: Vec<Box<RawValue>> = new.iter().map(|e| e.data.clone()).collect();
            let ids = self.storage.events.append(&app.id, new).await?;
            for ((i, id), data) in wanted.into_iter().zip(ids).zip(datas) {
                stored[i] = Some((id, data));
            }
        }
        let ttl = std::time::Duration::from_secs(self.config.limits.cache_ttl);
        for ((p, subs), stored) in publications.into_iter().zip(subscribers).zip(stored) {
            let user_id = p.sender.as_ref().and_then(|s| s.user_id.clone());
            let frame = Frame::from(match &p.data {
                Data::Text(text) => message::channel_event(&p.event, &p.channel, text),
                Data::Raw(raw) => {
                    message::client_event(&p.event, &p.channel, raw, user_id.as_deref())
                }
            });
            if let Data::Text(text) = &p.data {
                if ChannelName::parse(&p.channel).is_ok_and(|c| c.is_cache()) {
                    self.registry
                        .cache_put(&app.id, &p.channel, frame.clone(), text, ttl);
                }
            }
            self.adapter
                .publish(&app.id, &p.channel, frame, p.except)
                .await;
            if let (Some(subs), Some((id, data))) = (subs, stored) {
                for user in self.registry.live_personal(&app.id, &subs) {
                    let personal = personal_channel(&user);
                    let frame = message::personal_event(
                        &p.event,
                        &personal,
                        &data,
                        &p.channel,
                        id,
                        user_id.as_deref(),
                    );
                    self.adapter
                        .publish(&app.id, &personal, Frame::from(frame), p.except)
                        .await;
                }
            }
            if let (Some(sender), Data::Raw(data)) = (p.sender, p.data) {
                let hook = Event::ClientEvent {
                    channel: p.channel,
                    event: p.event,
                    data,
                    socket_id: sender.socket,
                    user_id: sender.user_id.map(|u| u.to_string()),
                };
                self.webhooks.emit(app, hook);
            }
        }
        Ok(())
    }

    /// Subscribes (or, with `subscribe` false, unsubscribes) `user` to `channel` while
    /// offline. Durable on `Ok`; from then on publishes to the channel are stored for the
    /// user and reach the user's live personal channel. `Ok(false)`: nothing to change.
    pub async fn offline(
        &self,
        app: &str,
        user: &str,
        channel: &str,
        subscribe: bool,
    ) -> Result<bool, SubscribeError> {
        // One change per user at a time, so the index follows the store in commit order and
        // the per-user limit holds.
        let _turn = self.index.lock_user(app, user).await;
        let subs = &self.storage.subscriptions;
        if !subscribe {
            let changed = subs.unsubscribe(app, user, channel).await?;
            self.index.remove(app, channel, user);
            return Ok(changed);
        }
        let max = self.config.storage.max_subscriptions_per_user;
        let current = storage::user_channels(&self.storage, app, user).await?;
        if current.iter().any(|c| c == channel) {
            self.index.add(app, channel, user);
            return Ok(false);
        }
        if current.len() >= max {
            return Err(SubscribeError::TooMany {
                user: user.to_string(),
                max,
            });
        }
        let changed = subs.subscribe(app, user, channel).await?;
        self.index.add(app, channel, user);
        Ok(changed)
    }
}
