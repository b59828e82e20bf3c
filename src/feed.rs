//! The debug console's live feed: what happens to an app (connections, subscriptions,
//! publishes, client events, webhooks), as JSON records, for the consoles watching it.
//!
//! Owns: who watches which app, the records' shape, and the bounds. Must not touch: HTTP,
//! sockets, Redis (the cluster bridge is [`crate::cluster`]'s; it calls in here).
//!
//! Costs:
//! - Nobody watching anywhere: one relaxed atomic load per would-be record, and nothing is
//!   built (callers pass a closure).
//! - Watching: a lookup in a sharded map (no lock shared by all apps); a record is
//!   serialized once and shared (`Arc<str>`) by every console of the
//!   app. Each app has one broadcast ring of [`RING`] records; a console that falls that far
//!   behind (a slow browser) is dropped, never buffered for.
//! - In a cluster, records go to other nodes only for apps a console elsewhere watches (they
//!   announce it every few seconds), through a bounded queue that drops when Redis is slow.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, Notify};

use crate::storage::now_ms;

/// Records one app's ring holds for its slowest console.
pub const RING: usize = 512;

/// How long another node's announcement that it watches an app lasts; nodes re-announce
/// every third of it.
pub const REMOTE_WATCH: Duration = Duration::from_secs(15);

/// Records waiting for Redis, for every app together.
const OUTBOX: usize = 1024;

/// One thing that happened, as the console shows it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Record {
    /// `connected`, `disconnected`, `subscribed`, `unsubscribed`, `api_message`,
    /// `client_event`, `webhook_sent`, `webhook_failed`, `webhook_given_up`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Unix milliseconds.
    pub time_ms: u64,
    /// The socket concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_id: Option<String>,
    /// The channel concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The event name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// The event's data, as published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// A presence member's or signed-in user's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// A close code; a webhook's events or cause; other detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The node it happened on (filled in by [`Feed`]).
    pub node: String,
}

impl Record {
    /// A record of `kind`, now.
    pub fn new(kind: &'static str) -> Record {
        Record {
            kind,
            time_ms: now_ms(),
            ..Record::default()
        }
    }
}

#[derive(Debug)]
struct Watched {
    ring: broadcast::Sender<Arc<str>>,
    /// Consoles open on this node.
    local: usize,
    /// Until when a console on another node watches.
    remote_until: Option<Instant>,
}

impl Watched {
    fn new() -> Watched {
        Watched {
            ring: broadcast::channel(RING).0,
            local: 0,
            remote_until: None,
        }
    }

    fn remote(&self, now: Instant) -> bool {
        self.remote_until.is_some_and(|t| t > now)
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Apps watched (locally or from another node): zero means nothing is recorded.
    watched: AtomicUsize,
    /// Sharded: consoles of one app never contend with another app's records.
    apps: DashMap<String, Watched>,
    node: OnceLock<String>,
    /// Records for other nodes: (app, JSON).
    outbox: OnceLock<mpsc::Sender<(String, Arc<str>)>>,
    /// Told when a console opens or closes on this node (the cluster bridge follows).
    changed: Notify,
}

/// The feed; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Feed {
    inner: Arc<Inner>,
}

/// One open console: its records, and its place among the app's watchers until dropped.
#[derive(Debug)]
pub struct Watch {
    feed: Feed,
    app: String,
    /// The app's records from the moment the console opened.
    pub records: broadcast::Receiver<Arc<str>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let apps = &self.feed.inner.apps;
        if let Some(mut w) = apps.get_mut(&self.app) {
            w.local -= 1;
        }
        self.feed.forget_if_unwatched(&self.app, Instant::now());
        self.feed.inner.changed.notify_one();
    }
}

impl Feed {
    /// Removes `app` when no console watches it any more, here or elsewhere.
    fn forget_if_unwatched(&self, app: &str, now: Instant) {
        let gone = self
            .inner
            .apps
            .remove_if(app, |_, w| w.local == 0 && !w.remote(now));
        if gone.is_some() {
            self.inner.watched.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Drops other nodes' announcements that ran out (their consoles closed).
    pub fn sweep(&self) {
        let now = Instant::now();
        let expired: Vec<String> = self
            .inner
            .apps
            .iter()
            .filter(|w| w.local == 0 && !w.remote(now))
            .map(|w| w.key().clone())
            .collect();
        for app in expired {
            self.forget_if_unwatched(&app, now);
        }
    }

    /// Names this node in its records, and sends records other nodes watch to `outbox`
    /// (the cluster bridge; set once).
    pub fn attach_cluster(
        &self,
        node: String,
        outbox_size: Option<usize>,
    ) -> mpsc::Receiver<(String, Arc<str>)> {
        let _ = self.inner.node.set(node);
        let (tx, rx) = mpsc::channel(outbox_size.unwrap_or(OUTBOX));
        let _ = self.inner.outbox.set(tx);
        rx
    }

    /// Opens a console on `app`.
    pub fn watch(&self, app: &str) -> Watch {
        let records = {
            let mut w = self.inner.apps.entry(app.to_string()).or_insert_with(|| {
                self.inner.watched.fetch_add(1, Ordering::Relaxed);
                Watched::new()
            });
            w.local += 1;
            w.ring.subscribe()
        };
        self.inner.changed.notify_one();
        Watch {
            feed: self.clone(),
            app: app.to_string(),
            records,
        }
    }

    /// Resolves when a console opened or closed on this node since the last call.
    pub async fn changed(&self) {
        self.inner.changed.notified().await;
    }

    /// Apps with a console open on this node (for the cluster bridge's announcements).
    pub fn watched_here(&self) -> Vec<String> {
        self.inner
            .apps
            .iter()
            .filter(|w| w.local > 0)
            .map(|w| w.key().clone())
            .collect()
    }

    /// Whether a console on this node watches `app`.
    pub fn is_watched_here(&self, app: &str) -> bool {
        self.inner.watched.load(Ordering::Relaxed) != 0
            && self.inner.apps.get(app).is_some_and(|w| w.local > 0)
    }

    /// Whether a console anywhere (this node, or another that announced it) watches `app`.
    pub fn is_watched(&self, app: &str) -> bool {
        let now = Instant::now();
        self.inner
            .apps
            .get(app)
            .is_some_and(|w| w.local > 0 || w.remote(now))
    }

    /// Another node announced a console on `app`: its records go there for a while.
    pub fn remote_watch(&self, app: &str) {
        let mut w = self.inner.apps.entry(app.to_string()).or_insert_with(|| {
            self.inner.watched.fetch_add(1, Ordering::Relaxed);
            Watched::new()
        });
        w.remote_until = Some(Instant::now() + REMOTE_WATCH);
    }

    /// A record from another node, for this node's consoles.
    pub fn from_remote(&self, app: &str, json: Arc<str>) {
        if let Some(w) = self.inner.apps.get(app) {
            if w.local > 0 {
                let _ = w.ring.send(json);
            }
        }
    }

    /// Records what `make` builds for `app`'s consoles, if any console anywhere watches it;
    /// otherwise `make` is not called.
    pub fn emit(&self, app: &str, make: impl FnOnce() -> Record) {
        if self.inner.watched.load(Ordering::Relaxed) == 0 {
            return;
        }
        let Some(w) = self.inner.apps.get(app) else {
            return;
        };
        let now = Instant::now();
        let (local, remote) = (w.local > 0, w.remote(now));
        if !local && !remote {
            // Released first: forgetting takes the shard for writing.
            drop(w);
            self.forget_if_unwatched(app, now);
            return;
        }
        let mut record = make();
        if let Some(node) = self.inner.node.get() {
            record.node.clone_from(node);
        }
        let Ok(json) = serde_json::to_string(&record) else {
            return;
        };
        let json: Arc<str> = Arc::from(json);
        if remote {
            if let Some(outbox) = self.inner.outbox.get() {
                // Full: Redis is slow; the console view loses a record, nothing else does.
                let _ = outbox.try_send((app.to_string(), json.clone()));
            }
        }
        if local {
            let _ = w.ring.send(json);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_built_while_nobody_watches() {
        let feed = Feed::default();
        feed.emit("1", || panic!("built without a console"));
        let watch = feed.watch("1");
        feed.emit("2", || panic!("built for an app nobody watches"));
        drop(watch);
        feed.emit("1", || panic!("built after the console closed"));
        assert_eq!(feed.inner.watched.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn every_console_of_the_app_gets_the_record_once_serialized() {
        let feed = Feed::default();
        let mut a = feed.watch("1");
        let mut b = feed.watch("1");
        feed.emit("1", || Record {
            channel: Some("c".into()),
            ..Record::new("subscribed")
        });
        let ra = a.records.try_recv().unwrap();
        let rb = b.records.try_recv().unwrap();
        assert!(Arc::ptr_eq(&ra, &rb), "one serialization shared");
        let v: serde_json::Value = serde_json::from_str(&ra).unwrap();
        assert_eq!(v["type"], "subscribed");
        assert_eq!(v["channel"], "c");
        assert!(v.get("event").is_none());
    }

    #[test]
    fn a_console_that_falls_a_ring_behind_is_told_it_lagged() {
        let feed = Feed::default();
        let mut slow = feed.watch("1");
        for _ in 0..RING + 10 {
            feed.emit("1", || Record::new("api_message"));
        }
        assert!(matches!(
            slow.records.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(10))
        ));
    }

    #[test]
    fn records_go_to_other_nodes_only_for_apps_they_watch() {
        let feed = Feed::default();
        let mut out = feed.attach_cluster("n1".into(), Some(4));
        feed.remote_watch("1");
        feed.emit("1", || Record::new("connected"));
        feed.emit("2", || panic!("nobody watches app 2"));
        let (app, json) = out.try_recv().unwrap();
        assert_eq!(app, "1");
        assert!(json.contains(r#""node":"n1""#));
        // The outbox is bounded: beyond it records are dropped.
        for _ in 0..10 {
            feed.emit("1", || Record::new("connected"));
        }
        let mut n = 0;
        while out.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, 4);
    }
}
