//! Webhooks: a bounded queue that sessions push into without waiting, and one tracked worker
//! that debounces, batches, signs and POSTs, retrying with exponential backoff for 5 minutes.
//!
//! Owns: webhook payloads, the worker, deliveries and their retries.
//! Must not touch: the registry, or a session's progress: `emit` never blocks, and a full
//! queue drops the event with a log line and a metric.

mod batcher;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::{sleep, sleep_until, timeout, Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use batcher::{
    backoff, Batcher, Delivery, BATCH_MAX, BATCH_WINDOW, REMOVAL_DELAY, RETRY_WINDOW,
};

use crate::apps::App;
use crate::auth;
use crate::feed::{Feed, Record};
use crate::metrics::Metrics;
use crate::registry::Change;

/// Events waiting for the worker; past this, new events are dropped (and counted).
const QUEUE: usize = 16 * 1024;
/// How long one POST may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// During shutdown, the worker stops once no event arrived for this long.
const DRAIN_IDLE: Duration = Duration::from_millis(500);

/// One webhook event (PUSHER-SPEC 4).
#[derive(Debug, Clone)]
pub enum Event {
    /// First subscriber.
    ChannelOccupied {
        /// Channel.
        channel: String,
    },
    /// Last subscriber gone.
    ChannelVacated {
        /// Channel.
        channel: String,
    },
    /// A user's first connection joined a presence channel.
    MemberAdded {
        /// Channel.
        channel: String,
        /// User.
        user_id: String,
    },
    /// A user's last connection left a presence channel.
    MemberRemoved {
        /// Channel.
        channel: String,
        /// User.
        user_id: String,
    },
    /// A client event was sent.
    ClientEvent {
        /// Channel.
        channel: String,
        /// Event name.
        event: String,
        /// Data as sent.
        data: Box<RawValue>,
        /// Sender.
        socket_id: String,
        /// Sender's presence user id.
        user_id: Option<String>,
    },
    /// A subscriber found a cache channel empty.
    CacheMiss {
        /// Channel.
        channel: String,
    },
    /// A channel's subscriber count changed.
    SubscriptionCount {
        /// Channel.
        channel: String,
        /// Subscribers now.
        count: usize,
    },
}

impl Event {
    /// The webhook type name.
    pub fn name(&self) -> &'static str {
        match self {
            Event::ChannelOccupied { .. } => "channel_occupied",
            Event::ChannelVacated { .. } => "channel_vacated",
            Event::MemberAdded { .. } => "member_added",
            Event::MemberRemoved { .. } => "member_removed",
            Event::ClientEvent { .. } => "client_event",
            Event::CacheMiss { .. } => "cache_miss",
            Event::SubscriptionCount { .. } => "subscription_count",
        }
    }

    fn user_id(&self) -> Option<&str> {
        match self {
            Event::MemberAdded { user_id, .. } | Event::MemberRemoved { user_id, .. } => {
                Some(user_id)
            }
            _ => None,
        }
    }

    /// The event as it appears in the `events` array.
    pub fn to_json(&self) -> Value {
        let name = self.name();
        match self {
            Event::ChannelOccupied { channel }
            | Event::ChannelVacated { channel }
            | Event::CacheMiss { channel } => json!({"name": name, "channel": channel}),
            Event::MemberAdded { channel, user_id } | Event::MemberRemoved { channel, user_id } => {
                json!({"name": name, "channel": channel, "user_id": user_id})
            }
            Event::ClientEvent {
                channel,
                event,
                data,
                socket_id,
                user_id,
            } => {
                // Pusher sends the client's data as a string.
                let data = match serde_json::from_str::<Value>(data.get()) {
                    Ok(Value::String(s)) => s,
                    _ => data.get().to_string(),
                };
                let mut v = json!({"name": name, "channel": channel, "event": event,
                                   "data": data, "socket_id": socket_id});
                if let Some(user_id) = user_id {
                    v["user_id"] = json!(user_id);
                }
                v
            }
            Event::SubscriptionCount { channel, count } => {
                json!({"name": name, "channel": channel, "subscription_count": count})
            }
        }
    }
}

/// The sending side, held in the server context.
#[derive(Debug, Clone)]
pub struct Webhooks {
    tx: mpsc::Sender<(Arc<App>, Event)>,
    metrics: Arc<Metrics>,
}

/// Where a delivery's outcome is counted and shown.
#[derive(Clone)]
struct Report {
    metrics: Arc<Metrics>,
    feed: Feed,
}

impl Report {
    /// The console's record of an attempt: the URL without its query or credentials (they
    /// may hold a receiver's token), and the events' names.
    fn show(&self, d: &Delivery, kind: &'static str, cause: Option<&str>) {
        self.feed.emit(&d.app_id, || {
            let names: Vec<&str> = d
                .events
                .iter()
                .filter_map(|e| e.get("name").and_then(|n| n.as_str()))
                .collect();
            let url = match reqwest::Url::parse(&d.url) {
                Ok(u) => format!(
                    "{}://{}{}",
                    u.scheme(),
                    u.host_str().unwrap_or(""),
                    u.path()
                ),
                Err(_) => String::new(),
            };
            let mut detail = format!("{url} [{}]", names.join(", "));
            if let Some(cause) = cause {
                detail.push_str(": ");
                detail.push_str(cause);
            }
            Record {
                detail: Some(detail),
                ..Record::new(kind)
            }
        });
    }
}

impl Webhooks {
    /// Starts the worker on `tracker`; it drains and stops after `shutdown`.
    pub fn start(
        tracker: &TaskTracker,
        shutdown: CancellationToken,
        metrics: Arc<Metrics>,
        feed: Feed,
    ) -> Webhooks {
        let (tx, rx) = mpsc::channel(QUEUE);
        let worker = Worker {
            rx,
            batcher: Batcher::default(),
            client: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .unwrap_or_default(),
            tracker: tracker.clone(),
            report: Report {
                metrics: metrics.clone(),
                feed,
            },
            shutdown: shutdown.clone(),
        };
        tracker.spawn(worker.run());
        Webhooks { tx, metrics }
    }

    /// Turns a membership change on `channel` into its webhooks: occupied, member added or
    /// removed, vacated, and (with `counted`) the subscription count.
    pub fn report(&self, app: &Arc<App>, channel: &str, change: &Change, counted: bool) {
        let ch = || channel.to_string();
        if change.occupied {
            self.emit(app, Event::ChannelOccupied { channel: ch() });
        }
        if let Some(user) = &change.member_added {
            let user_id = user.to_string();
            self.emit(
                app,
                Event::MemberAdded {
                    channel: ch(),
                    user_id,
                },
            );
        }
        if let Some(user) = &change.member_removed {
            let user_id = user.to_string();
            self.emit(
                app,
                Event::MemberRemoved {
                    channel: ch(),
                    user_id,
                },
            );
        }
        if change.vacated {
            self.emit(app, Event::ChannelVacated { channel: ch() });
        }
        if counted {
            let count = change.subscription_count;
            self.emit(
                app,
                Event::SubscriptionCount {
                    channel: ch(),
                    count,
                },
            );
        }
    }

    /// Queues an event for the app's webhooks, if it has any. Never waits.
    pub fn emit(&self, app: &Arc<App>, event: Event) {
        if app.webhooks.is_empty() {
            return;
        }
        if self.tx.try_send((app.clone(), event)).is_err() {
            self.metrics.webhook_given_up();
            tracing::warn!(app = %app.id, "webhook queue full: event dropped");
        }
    }
}

struct Worker {
    rx: mpsc::Receiver<(Arc<App>, Event)>,
    batcher: Batcher,
    client: reqwest::Client,
    tracker: TaskTracker,
    report: Report,
    shutdown: CancellationToken,
}

impl Worker {
    async fn run(mut self) {
        loop {
            let deadline = self.batcher.next_deadline();
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                item = self.rx.recv() => match item {
                    Some((app, event)) => {
                        let full = self.batcher.push(app, event, Instant::now());
                        self.send(full);
                    }
                    None => break,
                },
                _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {}
            }
            let due = self.batcher.due(Instant::now());
            self.send(due);
        }
        // Shutdown: sessions are closing and report their last channel changes; take them
        // until the queue stays quiet, then send everything without waiting for windows.
        while let Ok(Some((app, event))) = timeout(DRAIN_IDLE, self.rx.recv()).await {
            let full = self.batcher.push(app, event, Instant::now());
            self.send(full);
        }
        let rest = self.batcher.flush_all(Instant::now());
        self.send(rest);
    }

    fn send(&self, deliveries: Vec<Delivery>) {
        for d in deliveries {
            let client = self.client.clone();
            let report = self.report.clone();
            let shutdown = self.shutdown.clone();
            self.tracker.spawn(deliver(client, d, report, shutdown));
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Wait between retries once the server is shutting down: the process is about to exit
/// (within `server.shutdown_timeout`), so retries go faster instead of being lost.
const SHUTDOWN_RETRY: Duration = Duration::from_millis(250);

/// POSTs one batch until it is accepted (2xx) or [`RETRY_WINDOW`] has passed.
async fn deliver(
    client: reqwest::Client,
    d: Delivery,
    report: Report,
    shutdown: CancellationToken,
) {
    let metrics = &report.metrics;
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        // time_ms is set per attempt: receivers reject stale bodies (the Python SDK: 300 s).
        let body = json!({"time_ms": now_ms(), "events": d.events}).to_string();
        let signature = auth::webhook_signature(&d.secret, body.as_bytes());
        let result = client
            .post(&d.url)
            .header("Content-Type", "application/json")
            .header("X-Pusher-Key", &d.key)
            .header("X-Pusher-Signature", signature)
            .body(body)
            .send()
            .await;
        let problem = match result {
            Ok(res) if res.status().is_success() => {
                metrics.webhook_sent();
                report.show(&d, "webhook_sent", None);
                return;
            }
            Ok(res) => format!("status {}", res.status()),
            // The URL is logged beside it; the console shows it without its query.
            Err(err) => err.without_url().to_string(),
        };
        let wait = backoff(attempt);
        if started.elapsed() + wait > RETRY_WINDOW {
            metrics.webhook_given_up();
            report.show(&d, "webhook_given_up", Some(&problem));
            tracing::error!(url = %d.url, events = d.events.len(), attempts = attempt, cause = %problem,
                            "webhook given up after retrying for 5 minutes");
            return;
        }
        metrics.webhook_failed();
        report.show(&d, "webhook_failed", Some(&problem));
        tracing::warn!(url = %d.url, attempt, cause = %problem, retry_in = ?wait, "webhook failed");
        if shutdown.is_cancelled() {
            sleep(SHUTDOWN_RETRY).await;
        } else {
            tokio::select! {
                _ = sleep(wait) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }
}
