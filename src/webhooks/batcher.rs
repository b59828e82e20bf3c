//! The timing rules of webhooks, with no I/O: `channel_vacated` and `member_removed` wait
//! [`REMOVAL_DELAY`] and are cancelled (together with the matching `channel_occupied` /
//! `member_added`) when the channel or member comes back in time; events are batched per
//! target for at most [`BATCH_WINDOW`] or [`BATCH_MAX`] events.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use tokio::time::{Duration, Instant};

use super::Event;
use crate::apps::App;

/// How long `channel_vacated` and `member_removed` wait for a quick re-join.
pub const REMOVAL_DELAY: Duration = Duration::from_secs(3);
/// Longest an event waits for others to share its request.
pub const BATCH_WINDOW: Duration = Duration::from_millis(250);
/// Most events in one request.
pub const BATCH_MAX: usize = 20;

/// One POST to make.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The app it is for (the console's feed).
    pub app_id: String,
    /// Target URL.
    pub url: String,
    /// The app's key (`X-Pusher-Key`).
    pub key: String,
    /// The app's secret (signs the body).
    pub secret: String,
    /// The events, in order.
    pub events: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RemovalKey {
    app_id: String,
    channel: String,
    /// `None` for `channel_vacated`, the user for `member_removed`.
    user_id: Option<String>,
}

#[derive(Debug)]
struct Batch {
    delivery: Delivery,
    started: Instant,
}

/// Pending removals and open batches.
#[derive(Debug, Default)]
pub struct Batcher {
    removals: HashMap<RemovalKey, (Instant, Arc<App>, Event)>,
    /// Keyed by (app id, webhook index).
    batches: HashMap<(String, usize), Batch>,
}

impl Batcher {
    /// Takes one event at `now`; returns the deliveries that became full.
    pub fn push(&mut self, app: Arc<App>, event: Event, now: Instant) -> Vec<Delivery> {
        match &event {
            Event::ChannelVacated { channel } | Event::MemberRemoved { channel, .. } => {
                let key = RemovalKey {
                    app_id: app.id.clone(),
                    channel: channel.clone(),
                    user_id: event.user_id().map(str::to_string),
                };
                self.removals.insert(key, (now + REMOVAL_DELAY, app, event));
                Vec::new()
            }
            Event::ChannelOccupied { channel } | Event::MemberAdded { channel, .. } => {
                let key = RemovalKey {
                    app_id: app.id.clone(),
                    channel: channel.clone(),
                    user_id: event.user_id().map(str::to_string),
                };
                if self.removals.remove(&key).is_some() {
                    // Left and came back within the delay: neither webhook is sent.
                    Vec::new()
                } else {
                    self.add(&app, &event, now)
                }
            }
            _ => self.add(&app, &event, now),
        }
    }

    fn add(&mut self, app: &App, event: &Event, now: Instant) -> Vec<Delivery> {
        let mut full = Vec::new();
        for (i, hook) in app.webhooks.iter().enumerate() {
            if !hook.event_types.is_empty() && !hook.event_types.iter().any(|t| t == event.name()) {
                continue;
            }
            let batch = self
                .batches
                .entry((app.id.clone(), i))
                .or_insert_with(|| Batch {
                    delivery: Delivery {
                        app_id: app.id.clone(),
                        url: hook.url.clone(),
                        key: app.key.clone(),
                        secret: app.secret.clone(),
                        events: Vec::new(),
                    },
                    started: now,
                });
            let json = event.to_json();
            // Pusher de-duplicates cache_miss when many clients find a cache empty at once.
            if matches!(event, Event::CacheMiss { .. }) && batch.delivery.events.contains(&json) {
                continue;
            }
            batch.delivery.events.push(json);
            if batch.delivery.events.len() >= BATCH_MAX {
                if let Some(b) = self.batches.remove(&(app.id.clone(), i)) {
                    full.push(b.delivery);
                }
            }
        }
        full
    }

    /// Moves due removals into batches and returns the batches whose window has closed.
    pub fn due(&mut self, now: Instant) -> Vec<Delivery> {
        let mut out = self.release_removals(|due| due <= now, now);
        let ready: Vec<_> = self
            .batches
            .iter()
            .filter(|(_, b)| now >= b.started + BATCH_WINDOW)
            .map(|(k, _)| k.clone())
            .collect();
        for key in ready {
            if let Some(b) = self.batches.remove(&key) {
                out.push(b.delivery);
            }
        }
        out
    }

    fn release_removals(&mut self, take: impl Fn(Instant) -> bool, now: Instant) -> Vec<Delivery> {
        let mut due: Vec<_> = self
            .removals
            .iter()
            .filter(|(_, (at, _, _))| take(*at))
            .map(|(k, (at, _, _))| (*at, k.clone()))
            .collect();
        due.sort_by_key(|(at, _)| *at);
        let mut out = Vec::new();
        for (_, key) in due {
            if let Some((_, app, event)) = self.removals.remove(&key) {
                out.extend(self.add(&app, &event, now));
            }
        }
        out
    }

    /// Everything now, pending removals included (graceful shutdown).
    pub fn flush_all(&mut self, now: Instant) -> Vec<Delivery> {
        let mut out = self.release_removals(|_| true, now);
        out.extend(self.batches.drain().map(|(_, b)| b.delivery));
        out
    }

    /// When [`Batcher::due`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let removals = self.removals.values().map(|(at, _, _)| *at);
        let batches = self.batches.values().map(|b| b.started + BATCH_WINDOW);
        removals.chain(batches).min()
    }
}

/// The delay before retry `attempt` (1-based): 1 s, 2 s, 4 s, ... capped at 60 s.
pub fn backoff(attempt: u32) -> Duration {
    let secs = 1u64 << attempt.saturating_sub(1).min(6);
    Duration::from_secs(secs.min(60))
}

/// How long a delivery is retried before it is given up (Pusher: 5 minutes).
pub const RETRY_WINDOW: Duration = Duration::from_secs(300);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AppConfig, WebhookConfig};

    fn app(types: &[&str]) -> Arc<App> {
        let mut config = AppConfig::new("1", "k", "s");
        config.webhooks = vec![WebhookConfig {
            url: "http://127.0.0.1:1/hook".into(),
            event_types: types.iter().map(|t| t.to_string()).collect(),
        }];
        Arc::new(App::from(&config))
    }

    fn occupied(c: &str) -> Event {
        Event::ChannelOccupied { channel: c.into() }
    }

    fn vacated(c: &str) -> Event {
        Event::ChannelVacated { channel: c.into() }
    }

    #[tokio::test(start_paused = true)]
    async fn batches_close_after_250ms_or_20_events() {
        let mut b = Batcher::default();
        let a = app(&[]);
        let t0 = Instant::now();
        assert!(b.push(a.clone(), occupied("x"), t0).is_empty());
        assert_eq!(b.next_deadline(), Some(t0 + BATCH_WINDOW));
        assert!(b.due(t0 + Duration::from_millis(249)).is_empty());
        let out = b.due(t0 + BATCH_WINDOW);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].events.len(), 1);

        let mut full = Vec::new();
        for i in 0..20 {
            full.extend(b.push(a.clone(), occupied(&format!("c{i}")), t0));
        }
        assert_eq!(full.len(), 1, "the 20th event closes the batch at once");
        assert_eq!(full[0].events.len(), 20);
        assert!(b.next_deadline().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn removals_wait_3s_and_a_quick_rejoin_cancels_both() {
        let mut b = Batcher::default();
        let a = app(&[]);
        let t0 = Instant::now();
        b.push(a.clone(), vacated("x"), t0);
        assert!(b.due(t0 + Duration::from_millis(2999)).is_empty());
        b.push(a.clone(), occupied("x"), t0 + Duration::from_secs(1));
        assert!(b.next_deadline().is_none(), "both cancelled");
        assert!(b.due(t0 + Duration::from_secs(10)).is_empty());

        b.push(a.clone(), vacated("y"), t0);
        let moved = b.due(t0 + REMOVAL_DELAY);
        assert!(
            moved.is_empty(),
            "moved into a batch, which then waits its window"
        );
        let out = b.due(t0 + REMOVAL_DELAY + BATCH_WINDOW);
        assert_eq!(out[0].events[0]["name"], "channel_vacated");

        let removed = Event::MemberRemoved {
            channel: "presence-a".into(),
            user_id: "u".into(),
        };
        let added = Event::MemberAdded {
            channel: "presence-a".into(),
            user_id: "u".into(),
        };
        b.push(a.clone(), removed, t0);
        b.push(a.clone(), added, t0 + Duration::from_secs(2));
        assert!(b.next_deadline().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn event_types_filter_and_flush_all() {
        let mut b = Batcher::default();
        let a = app(&["channel_vacated"]);
        let t0 = Instant::now();
        b.push(a.clone(), occupied("x"), t0);
        assert!(b.next_deadline().is_none(), "filtered out");
        b.push(a.clone(), vacated("x"), t0);
        let out = b.flush_all(t0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].events[0]["channel"], "x");
    }

    #[tokio::test(start_paused = true)]
    async fn cache_misses_are_deduplicated_within_a_batch() {
        let mut b = Batcher::default();
        let a = app(&[]);
        let t0 = Instant::now();
        let miss = |c: &str| Event::CacheMiss { channel: c.into() };
        for _ in 0..5 {
            b.push(a.clone(), miss("cache-x"), t0);
        }
        b.push(a.clone(), miss("cache-y"), t0);
        let out = b.due(t0 + BATCH_WINDOW);
        assert_eq!(out[0].events.len(), 2);
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let secs: Vec<u64> = (1..=9).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
