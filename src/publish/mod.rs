//! The one publish pipeline, shared by the HTTP API and client events: find who is
//! offline-subscribed, store what must be stored (one commit per call), update the cache,
//! encode once per target, fan out through the adapter, emit webhooks. And the offline
//! subscriptions themselves ([`Publisher::offline`]), because they decide what a publish
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
//! - Stored events reach personal channels from the commit, in commit order, so every
//!   personal socket sees ids increasing (clients keep the highest as their cursor).

mod index;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::adapter::Adapter;
use crate::apps::App;
use crate::config::Config;
use crate::feed::{Feed, Record};
use crate::membership::Membership;
use crate::membership::Unavailable;
use crate::protocol::channel::is_cache;
use crate::protocol::{message, personal_channel, SocketId};
use crate::registry::Frame;
use crate::storage::{self, NewEvent, OnCommit, Storage, StoreError};
use crate::webhooks::{Event, Webhooks};
pub use index::SubIndex;

/// An event's `data`.
#[derive(Debug, Clone)]
pub enum Data {
    /// From the HTTP API: the publisher's string (a JSON string on the wire). Shared, so
    /// an event published to many channels is not copied per channel.
    Text(Arc<str>),
    /// From a client: any JSON, passed on verbatim.
    Raw(Box<RawValue>),
}

impl Data {
    fn raw(&self) -> Box<RawValue> {
        match self {
            Data::Text(text) => {
                let json = serde_json::to_string(&**text).expect("strings serialize");
                RawValue::from_string(json).expect("a JSON string is JSON")
            }
            Data::Raw(raw) => raw.clone(),
        }
    }
}

/// A stored event for the personal channels of its channel's offline subscribers.
struct Personal {
    app: String,
    id: u64,
    channel: String,
    event: String,
    data: Box<RawValue>,
    user_id: Option<Arc<str>>,
    users: Arc<HashSet<Arc<str>>>,
    except: Option<SocketId>,
}

/// Delivers stored events to the live personal channels of their users, one at a time in
/// commit order; one frame per personal channel (it names the channel).
async fn deliver_personal(
    mut lane: mpsc::UnboundedReceiver<Personal>,
    adapter: Arc<dyn Adapter>,
    membership: Arc<dyn Membership>,
) {
    while let Some(job) = lane.recv().await {
        for user in membership.live_personal(&job.app, &job.users).await {
            let personal = personal_channel(&user);
            let frame = message::personal_event(
                &job.event,
                &personal,
                &job.data,
                &job.channel,
                job.id,
                job.user_id.as_deref(),
            );
            let sent = adapter
                .publish_stored(&job.app, &personal, job.id, Frame::from(frame), job.except)
                .await;
            // The cluster's own log says it is cut off; the event is stored either way and
            // the personal channel's next subscribe replays it.
            if let Err(err) = sent {
                tracing::debug!(channel = %personal, error = %err, "stored event not sent to other nodes");
            }
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
    /// This cluster node is cut off: the other nodes could not learn of the change, so
    /// nothing changed.
    #[error(transparent)]
    Cluster(#[from] Unavailable),
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Storing failed; nothing was delivered.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Delivered on this node only: the cluster is cut off.
    #[error("Delivered on this node only, the cluster is unreachable: {0}")]
    Cluster(#[from] Unavailable),
}

/// The pipeline; cheap to clone.
#[derive(Debug, Clone)]
pub struct Publisher {
    storage: Storage,
    index: Arc<SubIndex>,
    /// Stored events on their way to personal channels, in commit order.
    lane: mpsc::UnboundedSender<Personal>,
    /// The index holds the store's open subscriptions; until then nothing is published
    /// (a publish could not know what to store).
    loaded: Arc<AtomicBool>,
    adapter: Arc<dyn Adapter>,
    webhooks: Webhooks,
    feed: Feed,
    config: Arc<Config>,
}

impl Publisher {
    /// A pipeline over these parts; the index starts empty (see [`Publisher::load`]).
    pub fn new(
        storage: Storage,
        adapter: Arc<dyn Adapter>,
        membership: Arc<dyn Membership>,
        webhooks: Webhooks,
        feed: Feed,
        config: Arc<Config>,
    ) -> Publisher {
        let (lane, rx) = mpsc::unbounded_channel();
        tokio::spawn(deliver_personal(rx, adapter.clone(), membership));
        Publisher {
            storage,
            index: Arc::new(SubIndex::default()),
            lane,
            loaded: Arc::new(AtomicBool::new(false)),
            adapter,
            webhooks,
            feed,
            config,
        }
    }

    /// Prepares the store and fills the index from its open subscriptions (at startup);
    /// publishing starts once it succeeded.
    pub async fn load(&self) -> Result<usize, StoreError> {
        self.storage.subscriptions.prepare().await?;
        let active = self.storage.subscriptions.active().await?;
        let n = active.len();
        self.index
            .extend(active.into_iter().map(|a| (a.app, a.channel, a.user)));
        self.loaded.store(true, Ordering::Release);
        Ok(n)
    }

    /// [`Publisher::load`] until it succeeds (backing off from 0.25 s to 5 s) or `shutdown`.
    pub async fn load_until_ready(self, shutdown: CancellationToken) {
        let mut wait = Duration::from_millis(250);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            match self.load().await {
                Ok(n) => {
                    tracing::info!(
                        subscriptions = n,
                        backend = self.storage.backend,
                        "offline subscriptions loaded; publishing"
                    );
                    return;
                }
                Err(_) => wait = (wait * 2).min(Duration::from_secs(5)),
            }
        }
    }

    /// Reads the open subscriptions again and makes the index hold exactly them (a cluster
    /// node back from an outage may have missed other nodes' changes).
    pub async fn reload(&self) -> Result<usize, StoreError> {
        let active = self.storage.subscriptions.active().await?;
        let n = active.len();
        self.index
            .replace_all(active.into_iter().map(|a| (a.app, a.channel, a.user)));
        Ok(n)
    }

    /// Applies an offline (un)subscription another cluster node made (and committed).
    pub fn apply_remote(&self, app: &str, channel: &str, user: &str, subscribed: bool) {
        match subscribed {
            true => self.index.add(app, channel, user),
            false => self.index.remove(app, channel, user),
        }
    }

    /// Whether the offline subscriptions are loaded (publishing works).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    fn check_loaded(&self) -> Result<(), StoreError> {
        match self.is_loaded() {
            true => Ok(()),
            false => Err(StoreError::Unavailable(
                "offline subscriptions are still loading from the store; try again shortly".into(),
            )),
        }
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
    ) -> Result<(), PublishError> {
        self.check_loaded()?;
        let subscribers: Vec<Option<Arc<HashSet<Arc<str>>>>> = publications
            .iter()
            .map(|p| self.index.subscribers(&app.id, &p.channel))
            .collect();
        let wanted: Vec<usize> = (0..publications.len())
            .filter(|i| subscribers[*i].is_some())
            .collect();
        if !wanted.is_empty() {
            let now = storage::now_ms();
            let mut new = Vec::with_capacity(wanted.len());
            let mut personal = Vec::with_capacity(wanted.len());
            for &i in &wanted {
                let p = &publications[i];
                let user_id = p.sender.as_ref().and_then(|s| s.user_id.clone());
                let data = p.data.raw();
                new.push(NewEvent {
                    channel: p.channel.clone(),
                    event: p.event.clone(),
                    data: data.clone(),
                    user_id: user_id.as_deref().map(str::to_string),
                    timestamp_ms: now,
                });
                personal.push(Personal {
                    app: app.id.clone(),
                    id: 0,
                    channel: p.channel.clone(),
                    event: p.event.clone(),
                    data,
                    user_id,
                    users: subscribers[i].clone().expect("wanted"),
                    except: p.except,
                });
            }
            // Personal channels hear of stored events in id order (their clients' cursor),
            // so delivery there runs from the commit, not from this task.
            let lane = self.lane.clone();
            let on_commit: OnCommit = Box::new(move |ids: &[u64]| {
                for (mut job, id) in personal.into_iter().zip(ids) {
                    job.id = *id;
                    let _ = lane.send(job);
                }
            });
            self.storage.events.append(&app.id, new, on_commit).await?;
        }
        let ttl = std::time::Duration::from_secs(self.config.limits.cache_ttl);
        // Every publication is delivered; the first cluster error is reported after.
        let mut cut_off = None;
        for p in publications {
            self.feed.emit(&app.id, || Record {
                channel: Some(p.channel.clone()),
                event: Some(p.event.clone()),
                data: Some(match &p.data {
                    Data::Text(text) => text.to_string(),
                    Data::Raw(raw) => raw.get().to_string(),
                }),
                socket_id: p.sender.as_ref().map(|s| s.socket.clone()),
                user_id: p
                    .sender
                    .as_ref()
                    .and_then(|s| s.user_id.as_deref().map(str::to_string)),
                ..Record::new(match p.sender {
                    Some(_) => "client_event",
                    None => "api_message",
                })
            });
            let user_id = p.sender.as_ref().and_then(|s| s.user_id.clone());
            let frame = Frame::from(match &p.data {
                Data::Text(text) => message::channel_event(&p.event, &p.channel, text),
                Data::Raw(raw) => {
                    message::client_event(&p.event, &p.channel, raw, user_id.as_deref())
                }
            });
            if let Data::Text(text) = &p.data {
                // Publications carry names already validated by their caller.
                if is_cache(&p.channel) {
                    let put = self
                        .adapter
                        .cache_put(&app.id, &p.channel, frame.clone(), text, ttl)
                        .await;
                    if let Err(err) = put {
                        cut_off.get_or_insert(err);
                    }
                }
            }
            let sent = self
                .adapter
                .publish(&app.id, &p.channel, frame, p.except)
                .await;
            if let Err(err) = sent {
                cut_off.get_or_insert(err);
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
        match cut_off {
            Some(err) => Err(PublishError::Cluster(err)),
            None => Ok(()),
        }
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
        self.check_loaded()?;
        // One change per user at a time, so the index follows the store in commit order and
        // the per-user limit holds.
        let _turn = self.index.lock_user(app, user).await;
        self.adapter.check_connected()?;
        let subs = &self.storage.subscriptions;
        if !subscribe {
            let changed = subs.unsubscribe(app, user, channel).await?;
            self.index.remove(app, channel, user);
            self.adapter
                .offline_changed(app, channel, user, false)
                .await;
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
        self.adapter.offline_changed(app, channel, user, true).await;
        Ok(changed)
    }
}
