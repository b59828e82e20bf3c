//! Stored events and offline subscriptions (EXTENSIONS.md §1), behind two small traits with
//! one contract for every backend: [`embedded`] (redb, a file under `storage.data_dir`) and
//! [`mongo`] (when `[mongodb]` is configured).
//!
//! Owns: the traits, the shapes they exchange, the status a backend reports to `/ready`, and
//! the resolution of a user's events from channel logs and subscription intervals
//! ([`user_events`], [`replay`]). Must not touch: sockets, HTTP, frames.
//!
//! Cost model: an event is stored once per channel that has at least one offline subscriber,
//! whatever the number of subscribers. A user's events are resolved on read: the user's
//! subscription intervals (ids `[from, to)`) select ranges of the channels' logs. So an event
//! stored while the user was subscribed stays the user's after the unsubscribe, and an event
//! published before the subscribe or after the unsubscribe never is.

pub mod embedded;
pub mod mongo;
pub mod none;

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

/// An event to store, before it has an id.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The channel it was published on.
    pub channel: String,
    /// The event name.
    pub event: String,
    /// `data` as it goes on the wire: a JSON string for HTTP publishes, any JSON for client
    /// events.
    pub data: Box<RawValue>,
    /// The sender of a client event on a presence channel.
    pub user_id: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

/// A stored event, in the shape the `events` route and the personal-channel replay show it.
#[derive(Debug, Clone, Serialize)]
pub struct StoredEvent {
    /// Strictly increasing per app.
    pub id: u64,
    /// The channel it was published on.
    pub channel: String,
    /// The event name.
    pub event: String,
    /// As published.
    pub data: Box<RawValue>,
    /// The sender of a client event on a presence channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

impl PartialEq for StoredEvent {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.channel == other.channel
            && self.event == other.event
            && self.data.get() == other.data.get()
            && self.user_id == other.user_id
            && self.timestamp_ms == other.timestamp_ms
    }
}

/// A user's subscription to one channel, over time: ids in `[from, to)`, `to` open while the
/// user is subscribed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    /// First id that is the user's.
    pub from: u64,
    /// First id that is not the user's any more; `None` while subscribed.
    pub to: Option<u64>,
}

/// A user's intervals on one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserChannel {
    /// The channel.
    pub channel: String,
    /// Oldest first; at most the last one is open.
    pub intervals: Vec<Interval>,
}

impl UserChannel {
    /// Whether the user is subscribed now.
    pub fn is_open(&self) -> bool {
        self.intervals.last().is_some_and(|i| i.to.is_none())
    }
}

/// An open subscription, as loaded at startup into the in-memory index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveSubscription {
    /// The app.
    pub app: String,
    /// The channel.
    pub channel: String,
    /// The user.
    pub user: String,
}

/// Ids of one channel to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRange {
    /// The channel.
    pub channel: String,
    /// The ids.
    pub ids: Range<u64>,
}

/// Which end of the ranges a read starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Highest ids first.
    NewestFirst,
    /// Lowest ids first.
    OldestFirst,
}

/// What the stored events may keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Most events kept per channel (the oldest go first).
    pub max_per_channel: u64,
    /// Events older than this many milliseconds are removed.
    pub max_age_ms: u64,
}

/// A backend failure. Either way, nothing was half-written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be written or read now (disk full, I/O error, database unreachable).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The stored data is not what pushi wrote.
    #[error("storage corrupt: {0}")]
    Corrupt(String),
}

/// Runs once an append is durable, with its ids, before the caller hears of it.
pub type OnCommit = Box<dyn FnOnce(&[u64]) + Send>;

/// Stored events: one log per channel.
#[async_trait]
pub trait EventStore: Send + Sync + fmt::Debug {
    /// Stores `events` of one app and returns their ids, in order. On `Ok` every event is
    /// durable (a committed, synced transaction; a journaled write). Ids are strictly
    /// increasing per app, greater than every id given before (also across restarts), and
    /// increase in commit order. On `Err` none of the events is stored.
    ///
    /// `on_commit` runs once the events are durable, in commit order across all appends of
    /// the store (so in id order per app), and even when the caller has stopped waiting:
    /// what must happen in id order (delivery to personal channels, whose clients keep the
    /// highest id as their cursor) happens there. It must not block.
    async fn append(
        &self,
        app: &str,
        events: Vec<NewEvent>,
        on_commit: OnCommit,
    ) -> Result<Vec<u64>, StoreError>;

    /// The events in `ranges`, merged across channels by id: the first `limit` in `order`.
    async fn events(
        &self,
        app: &str,
        ranges: Vec<ChannelRange>,
        limit: usize,
        order: Order,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Removes what `retention` does not keep (`now_ms` is the current time), and the
    /// subscription intervals that no retained event falls in any more. Returns how many
    /// events were removed.
    async fn prune(&self, retention: Retention, now_ms: u64) -> Result<u64, StoreError>;
}

/// Offline subscriptions: per user and channel, the intervals of ids that are the user's.
#[async_trait]
pub trait SubscriptionStore: Send + Sync + fmt::Debug {
    /// Opens an interval at the app's next event id; `false` when already subscribed.
    /// Durable on `Ok`. Ordered with [`EventStore::append`]: an append that commits before
    /// it gets ids below the interval, one that commits after it ids inside.
    async fn subscribe(&self, app: &str, user: &str, channel: &str) -> Result<bool, StoreError>;

    /// Closes the open interval at the app's next event id; `false` when not subscribed.
    async fn unsubscribe(&self, app: &str, user: &str, channel: &str) -> Result<bool, StoreError>;

    /// Every channel the user has intervals on (subscribed now or before), by channel name.
    async fn user(&self, app: &str, user: &str) -> Result<Vec<UserChannel>, StoreError>;

    /// Every open subscription of every app.
    async fn active(&self) -> Result<Vec<ActiveSubscription>, StoreError>;

    /// Creates what the store needs before its first use (indexes); idempotent.
    async fn prepare(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Whether a backend works now; shared with `/ready`. A backend calls [`StoreStatus::failed`]
/// and [`StoreStatus::recovered`]; each logs only on the transition, so an outage is said
/// once.
#[derive(Debug, Default)]
pub struct StoreStatus {
    /// The failure, when it started (for the log) and its Unix time (for `/ready`).
    degraded: Mutex<Option<(String, Instant, u64)>>,
}

impl StoreStatus {
    /// Records a failure; logs it when the store was healthy.
    pub fn failed(&self, backend: &str, why: &str) {
        let mut degraded = self.degraded.lock().unwrap_or_else(|e| e.into_inner());
        if degraded.is_none() {
            tracing::error!(
                backend,
                error = %why,
                "store failed: publishes to channels with offline subscribers answer 503 until it \
                 recovers; live delivery continues"
            );
            *degraded = Some((why.to_string(), Instant::now(), now_ms() / 1000));
        }
    }

    /// Records a success; logs the recovery when the store was degraded.
    pub fn recovered(&self, backend: &str) {
        let mut degraded = self.degraded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, since, _)) = degraded.take() {
            tracing::info!(
                backend,
                after_ms = since.elapsed().as_millis() as u64,
                "store recovered"
            );
        }
    }

    /// The current failure and since when (Unix seconds), if any.
    pub fn degraded(&self) -> Option<(String, u64)> {
        let degraded = self.degraded.lock().unwrap_or_else(|e| e.into_inner());
        degraded
            .as_ref()
            .map(|(why, _, since)| (why.clone(), *since))
    }
}

/// A backend: both traits (one object implements them), its name and status.
#[derive(Clone)]
pub struct Storage {
    /// Stored events.
    pub events: Arc<dyn EventStore>,
    /// Offline subscriptions.
    pub subscriptions: Arc<dyn SubscriptionStore>,
    /// `embedded` or `mongodb`.
    pub backend: &'static str,
    /// Health, for `/ready`.
    pub status: Arc<StoreStatus>,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Storage {
    /// A backend that implements both traits.
    pub fn new<S: EventStore + SubscriptionStore + 'static>(
        store: Arc<S>,
        backend: &'static str,
        status: Arc<StoreStatus>,
    ) -> Storage {
        Storage {
            events: store.clone(),
            subscriptions: store,
            backend,
            status,
        }
    }

    /// An embedded store that lives in memory (library use and tests; the binary always
    /// opens the file under `storage.data_dir`).
    pub fn in_memory() -> Storage {
        embedded::Embedded::in_memory()
    }
}

/// Applies the retention of `[storage]` every `prune_interval` until `shutdown`. A failed
/// pass is the backend's to report (through its status); the next pass retries.
pub async fn retention(
    storage: Storage,
    config: crate::config::StorageConfig,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let retention = Retention {
        max_per_channel: config.max_events_per_channel,
        max_age_ms: config.max_event_age.saturating_mul(1000),
    };
    let every = std::time::Duration::from_secs(config.prune_interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match storage.events.prune(retention, now_ms()).await {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(removed, "stored events past retention removed"),
            Err(e) => tracing::debug!(error = %e, "retention pass failed"),
        }
    }
}

/// What a backend's single writer does, in the order it was queued (so ids, intervals and
/// pruning never race each other).
enum Op {
    Append {
        app: String,
        events: Vec<NewEvent>,
        on_commit: OnCommit,
        reply: oneshot::Sender<Result<Vec<u64>, StoreError>>,
    },
    Subscription {
        app: String,
        user: String,
        channel: String,
        subscribe: bool,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    Prune {
        retention: Retention,
        now_ms: u64,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
}

/// The queue of a backend's writer: the trait's writes, each queued and answered.
#[derive(Debug, Clone)]
struct Writes(mpsc::Sender<Op>);

impl Writes {
    async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Op,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let stopped = || StoreError::Unavailable("the storage writer has stopped".into());
        self.0.send(make(tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    async fn append(
        &self,
        app: &str,
        events: Vec<NewEvent>,
        on_commit: OnCommit,
    ) -> Result<Vec<u64>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let app = app.to_string();
        self.submit(|reply| Op::Append {
            app,
            events,
            on_commit,
            reply,
        })
        .await
    }

    async fn change(
        &self,
        app: &str,
        user: &str,
        channel: &str,
        subscribe: bool,
    ) -> Result<bool, StoreError> {
        let (app, user, channel) = (app.to_string(), user.to_string(), channel.to_string());
        self.submit(|reply| Op::Subscription {
            app,
            user,
            channel,
            subscribe,
            reply,
        })
        .await
    }

    async fn prune(&self, retention: Retention, now_ms: u64) -> Result<u64, StoreError> {
        self.submit(|reply| Op::Prune {
            retention,
            now_ms,
            reply,
        })
        .await
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The id ranges of `intervals` that fall in `window`.
fn clip<'a>(
    intervals: &'a [Interval],
    window: &Range<u64>,
) -> impl Iterator<Item = Range<u64>> + 'a {
    let window = window.clone();
    intervals.iter().filter_map(move |i| {
        let from = i.from.max(window.start);
        let to = i.to.unwrap_or(u64::MAX).min(window.end);
        (from < to).then_some(from..to)
    })
}

/// The ranges of every channel of `channels` within `window`.
fn ranges(channels: &[UserChannel], window: Range<u64>) -> Vec<ChannelRange> {
    channels
        .iter()
        .flat_map(|c| {
            clip(&c.intervals, &window).map(|ids| ChannelRange {
                channel: c.channel.clone(),
                ids,
            })
        })
        .collect()
}

/// A user's subscriptions now (open intervals), sorted by channel name.
pub async fn user_channels(
    storage: &Storage,
    app: &str,
    user: &str,
) -> Result<Vec<String>, StoreError> {
    let channels = storage.subscriptions.user(app, user).await?;
    Ok(channels
        .into_iter()
        .filter(UserChannel::is_open)
        .map(|c| c.channel)
        .collect())
}

/// A user's stored events with an id below `before` (all when `None`), newest first, at most
/// `limit`: the `events` route.
pub async fn user_events(
    storage: &Storage,
    app: &str,
    user: &str,
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<StoredEvent>, StoreError> {
    let channels = storage.subscriptions.user(app, user).await?;
    let window = 0..before.unwrap_or(u64::MAX);
    let ranges = ranges(&channels, window);
    if ranges.is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    storage
        .events
        .events(app, ranges, limit, Order::NewestFirst)
        .await
}

/// What a personal channel replays on subscribe.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    /// The user's subscriptions now, by channel name.
    pub channels: Vec<String>,
    /// Oldest first.
    pub events: Vec<StoredEvent>,
    /// More events after `since` were stored than the replay holds (the oldest were left out).
    pub truncated: bool,
}

/// The replay of a personal channel: with `since`, the events after it (the newest `max` of
/// them when there are more, with `truncated` set); else the last `last`. Oldest first.
pub async fn replay(
    storage: &Storage,
    app: &str,
    user: &str,
    since: Option<u64>,
    last: usize,
    max: usize,
) -> Result<Replay, StoreError> {
    let all = storage.subscriptions.user(app, user).await?;
    let (window, limit) = match since {
        Some(since) => (since.saturating_add(1)..u64::MAX, max),
        None => (0..u64::MAX, last),
    };
    let ranges = ranges(&all, window);
    let mut events = if ranges.is_empty() || limit == 0 {
        Vec::new()
    } else {
        // One more than asked tells whether the replay is cut.
        storage
            .events
            .events(app, ranges, limit + 1, Order::NewestFirst)
            .await?
    };
    let truncated = since.is_some() && events.len() > limit;
    events.truncate(limit);
    events.reverse();
    Ok(Replay {
        channels: all
            .into_iter()
            .filter(UserChannel::is_open)
            .map(|c| c.channel)
            .collect(),
        events,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_clip_to_the_window() {
        let intervals = [
            Interval {
                from: 1,
                to: Some(5),
            },
            Interval { from: 8, to: None },
        ];
        let got: Vec<_> = clip(&intervals, &(0..u64::MAX)).collect();
        assert_eq!(got, vec![1..5, 8..u64::MAX]);
        let got: Vec<_> = clip(&intervals, &(3..9)).collect();
        assert_eq!(got, vec![3..5, 8..9]);
        let got: Vec<_> = clip(&intervals, &(5..8)).collect();
        assert!(got.is_empty());
    }
}
