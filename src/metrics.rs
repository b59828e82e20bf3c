//! Counters and one histogram, rendered in the Prometheus text format at `GET /metrics` (on
//! the metrics listener only).
//!
//! Owns: the numbers and their rendering. Must not touch: decisions or control flow.
//!
//! Cost on the hot path: per-app counters are plain atomics in an [`AppMetrics`] that a
//! session looks up once when it connects and a fan-out once per publish (adding the whole
//! fan-out's count in one step), never per delivery; nothing here takes a lock per message.
//! Gauges (connections, channels, subscriptions) are not counted at all: the scrape reads
//! them from the registry.
//!
//! Names follow soketi's and sockudo's (`soketi_connected`, `soketi_new_connections_total`,
//! `soketi_socket_transmitted_bytes`, ...) with the `pushi_` prefix, so their Grafana
//! dashboards work after a prefix change. Per-app series carry `app_id`; they exist only for
//! apps that had traffic, and app ids come from the registry, never from a request.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;

use crate::protocol::Close;

/// How a connection ended: the close pushi sent, or the client's own end (its close frame,
/// or the socket going away).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// pushi closed the connection.
    Closed(Close),
    /// The client closed it or went away.
    Client,
}

/// One app's counters.
#[derive(Debug, Default)]
pub struct AppMetrics {
    new_connections: AtomicU64,
    ws_messages_received: AtomicU64,
    socket_received_bytes: AtomicU64,
    ws_messages_sent: AtomicU64,
    socket_transmitted_bytes: AtomicU64,
    /// Closed for a full queue (4200 also ends terminated and drained connections).
    queue_full: AtomicU64,
    /// HTTP API calls by (route, status): found without allocating, per request.
    http: DashMap<(&'static str, u16), AtomicU64>,
    /// By close code (`None`: the client's end); touched once per connection, at its end.
    disconnections: Mutex<BTreeMap<Option<u16>, u64>>,
}

impl AppMetrics {
    /// A connection was admitted.
    pub fn connected(&self) {
        self.new_connections.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection ended.
    pub fn disconnected(&self, how: Ended) {
        let code = match how {
            Ended::Closed(close) => {
                if close == Close::TOO_SLOW {
                    self.queue_full.fetch_add(1, Ordering::Relaxed);
                }
                Some(close.code)
            }
            Ended::Client => None,
        };
        let mut d = self
            .disconnections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *d.entry(code).or_default() += 1;
    }

    /// A client message of `bytes` arrived.
    pub fn received(&self, bytes: usize) {
        self.ws_messages_received.fetch_add(1, Ordering::Relaxed);
        self.socket_received_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// `messages` frames totalling `bytes` were handed to connections.
    pub fn sent(&self, messages: usize, bytes: usize) {
        self.ws_messages_sent
            .fetch_add(messages as u64, Ordering::Relaxed);
        self.socket_transmitted_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// Upper bounds of the publish histogram's buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A fixed-bucket histogram of durations.
#[derive(Debug, Default)]
struct Histogram {
    /// Per bucket, not cumulative; the last one is +Inf.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

/// What the registry and the cluster say at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Per app with connections on this node: (app id, connections, occupied channels,
    /// subscriptions).
    pub apps: Vec<(String, usize, usize, usize)>,
    /// In a cluster: whether this node is joined through Redis.
    pub cluster_up: Option<bool>,
}

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    apps: DashMap<String, Arc<AppMetrics>>,
    /// Connections refused before admission, by close code (no app label: the app id of a
    /// refused connection is whatever the client put in the URL).
    refused: DashMap<u16, AtomicU64>,
    publish: Histogram,
    webhooks_sent: AtomicU64,
    webhooks_failed: AtomicU64,
    webhooks_given_up: AtomicU64,
}

impl Metrics {
    /// The counters of `app_id`, created on first use.
    pub fn app(&self, app_id: &str) -> Arc<AppMetrics> {
        if let Some(m) = self.apps.get(app_id) {
            return m.clone();
        }
        self.apps.entry(app_id.to_string()).or_default().clone()
    }

    /// A connection was refused with `code` before it was admitted.
    pub fn refused(&self, code: u16) {
        self.refused
            .entry(code)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// An HTTP API call to an existing app was answered with `status`.
    pub fn http_call(&self, app_id: &str, route: &'static str, status: u16) {
        let app = self.app(app_id);
        if let Some(c) = app.http.get(&(route, status)) {
            c.fetch_add(1, Ordering::Relaxed);
            return;
        }
        app.http
            .entry((route, status))
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// An API publish took `d` from its verified body to its frames on every local
    /// subscriber's socket (or queue).
    pub fn published(&self, d: Duration) {
        self.publish.observe(d);
    }

    /// A webhook batch was accepted (2xx).
    pub fn webhook_sent(&self) {
        self.webhooks_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// A webhook attempt failed and will be retried.
    pub fn webhook_failed(&self) {
        self.webhooks_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// A webhook event was dropped (queue full) or a delivery was given up after its retries.
    pub fn webhook_given_up(&self) {
        self.webhooks_given_up.fetch_add(1, Ordering::Relaxed);
    }

    /// Webhooks given up so far.
    pub fn webhooks_given_up(&self) -> u64 {
        self.webhooks_given_up.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition (format 0.0.4).
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        let total: usize = gauges.apps.iter().map(|a| a.1).sum();
        head(
            &mut out,
            "pushi_connections",
            "gauge",
            "Open WebSocket connections on this node.",
        );
        let _ = writeln!(out, "pushi_connections {total}");
        head(
            &mut out,
            "pushi_connected",
            "gauge",
            "Open WebSocket connections per app.",
        );
        for (app, conns, _, _) in &gauges.apps {
            let _ = writeln!(out, "pushi_connected{{app_id=\"{}\"}} {conns}", esc(app));
        }
        head(
            &mut out,
            "pushi_channels",
            "gauge",
            "Occupied channels per app on this node.",
        );
        for (app, _, channels, _) in &gauges.apps {
            let _ = writeln!(out, "pushi_channels{{app_id=\"{}\"}} {channels}", esc(app));
        }
        head(
            &mut out,
            "pushi_subscriptions",
            "gauge",
            "Channel subscriptions per app on this node.",
        );
        for (app, _, _, subs) in &gauges.apps {
            let _ = writeln!(out, "pushi_subscriptions{{app_id=\"{}\"}} {subs}", esc(app));
        }

        let mut apps: Vec<(String, Arc<AppMetrics>)> = self
            .apps
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        apps.sort_by(|a, b| a.0.cmp(&b.0));
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        type Field = fn(&AppMetrics) -> &AtomicU64;
        let per_app: [(&str, &str, Field); 6] = [
            (
                "pushi_new_connections_total",
                "WebSocket connections admitted.",
                |m| &m.new_connections,
            ),
            (
                "pushi_ws_messages_received_total",
                "Pusher messages received from clients.",
                |m| &m.ws_messages_received,
            ),
            (
                "pushi_socket_received_bytes",
                "Bytes of Pusher messages received from clients.",
                |m| &m.socket_received_bytes,
            ),
            (
                "pushi_ws_messages_sent_total",
                "Pusher messages handed to client connections (events and replies).",
                |m| &m.ws_messages_sent,
            ),
            (
                "pushi_socket_transmitted_bytes",
                "Bytes of WebSocket frames handed to client connections.",
                |m| &m.socket_transmitted_bytes,
            ),
            (
                "pushi_queue_full_disconnections_total",
                "Connections closed because their queue of unsent events was full (4200).",
                |m| &m.queue_full,
            ),
        ];
        for (name, help, field) in per_app {
            head(&mut out, name, "counter", help);
            for (id, m) in &apps {
                let _ = writeln!(out, "{name}{{app_id=\"{}\"}} {}", esc(id), load(field(m)));
            }
        }
        head(
            &mut out,
            "pushi_new_disconnections_total",
            "counter",
            "WebSocket connections ended, by the close code pushi sent (code=\"client\": the client closed or went away).",
        );
        for (id, m) in &apps {
            let d = m.disconnections.lock().unwrap_or_else(|e| e.into_inner());
            for (code, n) in d.iter() {
                let code = code.map_or("client".to_string(), |c| c.to_string());
                let _ = writeln!(
                    out,
                    "pushi_new_disconnections_total{{app_id=\"{}\",code=\"{code}\"}} {n}",
                    esc(id)
                );
            }
        }
        head(
            &mut out,
            "pushi_refused_connections_total",
            "counter",
            "WebSocket connections refused before admission, by close code.",
        );
        let mut refused: Vec<(u16, u64)> = self
            .refused
            .iter()
            .map(|e| (*e.key(), load(e.value())))
            .collect();
        refused.sort();
        for (code, n) in refused {
            let _ = writeln!(
                out,
                "pushi_refused_connections_total{{code=\"{code}\"}} {n}"
            );
        }

        head(
            &mut out,
            "pushi_http_calls_received_total",
            "counter",
            "HTTP API calls to existing apps, by route and status.",
        );
        for (app, m) in &apps {
            let mut calls: Vec<((&str, u16), u64)> =
                m.http.iter().map(|e| (*e.key(), load(e.value()))).collect();
            calls.sort();
            for ((route, status), n) in calls {
                let _ = writeln!(
                    out,
                    "pushi_http_calls_received_total{{app_id=\"{}\",route=\"{route}\",status=\"{status}\"}} {n}",
                    esc(app)
                );
            }
        }

        head(
            &mut out,
            "pushi_publish_seconds",
            "histogram",
            "API publishes: from the verified body to the event on every local subscriber's socket or queue.",
        );
        let mut cumulative = 0;
        for (i, c) in self.publish.counts.iter().enumerate() {
            cumulative += load(c);
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                out,
                "pushi_publish_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "pushi_publish_seconds_sum {}\npushi_publish_seconds_count {cumulative}",
            load(&self.publish.sum_micros) as f64 / 1e6
        );

        for (name, help, value) in [
            (
                "pushi_webhooks_sent_total",
                "Webhook batches accepted by their endpoint.",
                &self.webhooks_sent,
            ),
            (
                "pushi_webhooks_failed_total",
                "Webhook attempts that failed and were retried.",
                &self.webhooks_failed,
            ),
            (
                "pushi_webhooks_given_up_total",
                "Webhook events dropped or given up after retries.",
                &self.webhooks_given_up,
            ),
        ] {
            head(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", load(value));
        }
        if let Some(up) = gauges.cluster_up {
            head(
                &mut out,
                "pushi_cluster_redis_up",
                "gauge",
                "1 while this node is joined to its cluster through Redis, 0 while cut off.",
            );
            let _ = writeln!(out, "pushi_cluster_redis_up {}", u8::from(up));
        }
        out
    }
}

/// A label value escaped for the text format (backslash, quote, newline).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix} in\n{text}"))
    }

    #[test]
    fn app_counters_render_with_their_app_label() {
        let m = Metrics::default();
        let a = m.app("a1");
        a.connected();
        a.connected();
        a.received(10);
        a.sent(3, 300);
        a.disconnected(Ended::Closed(Close::TOO_SLOW));
        a.disconnected(Ended::Closed(Close::TERMINATED));
        a.disconnected(Ended::Client);
        assert!(Arc::ptr_eq(&a, &m.app("a1")), "one counter set per app");
        let text = m.render(&Gauges {
            apps: vec![("a1".into(), 2, 1, 5)],
            cluster_up: None,
        });
        assert_eq!(line(&text, "pushi_connections "), "pushi_connections 2");
        assert_eq!(
            line(&text, "pushi_subscriptions{"),
            "pushi_subscriptions{app_id=\"a1\"} 5"
        );
        assert_eq!(
            line(&text, "pushi_new_connections_total{"),
            "pushi_new_connections_total{app_id=\"a1\"} 2"
        );
        assert_eq!(
            line(&text, "pushi_socket_transmitted_bytes{"),
            "pushi_socket_transmitted_bytes{app_id=\"a1\"} 300"
        );
        assert_eq!(
            line(&text, "pushi_queue_full_disconnections_total{"),
            "pushi_queue_full_disconnections_total{app_id=\"a1\"} 1"
        );
        assert!(text.contains("pushi_new_disconnections_total{app_id=\"a1\",code=\"client\"} 1"));
        // Both 4200s count by code; only the full queue counts as queue-full.
        assert!(text.contains("pushi_new_disconnections_total{app_id=\"a1\",code=\"4200\"} 2"));
        assert!(
            !text.contains("pushi_cluster_redis_up"),
            "no cluster, no cluster gauge"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_the_count() {
        let m = Metrics::default();
        m.published(Duration::from_micros(50));
        m.published(Duration::from_millis(3));
        m.published(Duration::from_secs(10));
        let text = m.render(&Gauges::default());
        assert_eq!(
            line(&text, "pushi_publish_seconds_bucket{le=\"0.0001\"}"),
            "pushi_publish_seconds_bucket{le=\"0.0001\"} 1"
        );
        assert_eq!(
            line(&text, "pushi_publish_seconds_bucket{le=\"0.005\"}"),
            "pushi_publish_seconds_bucket{le=\"0.005\"} 2"
        );
        assert_eq!(
            line(&text, "pushi_publish_seconds_bucket{le=\"2.5\"}"),
            "pushi_publish_seconds_bucket{le=\"2.5\"} 2"
        );
        assert_eq!(
            line(&text, "pushi_publish_seconds_bucket{le=\"+Inf\"}"),
            "pushi_publish_seconds_bucket{le=\"+Inf\"} 3"
        );
        assert_eq!(
            line(&text, "pushi_publish_seconds_count"),
            "pushi_publish_seconds_count 3"
        );
        assert_eq!(
            line(&text, "pushi_publish_seconds_sum"),
            "pushi_publish_seconds_sum 10.00305"
        );
    }

    #[test]
    fn labels_are_escaped_and_every_series_has_help_and_type() {
        let m = Metrics::default();
        m.app("we\"ird\\id").connected();
        m.http_call("a", "events", 200);
        m.http_call("a", "events", 200);
        m.refused(4001);
        let text = m.render(&Gauges {
            apps: vec![],
            cluster_up: Some(false),
        });
        assert!(text.contains("pushi_new_connections_total{app_id=\"we\\\"ird\\\\id\"} 1"));
        assert!(text.contains(
            "pushi_http_calls_received_total{app_id=\"a\",route=\"events\",status=\"200\"} 2"
        ));
        assert!(text.contains("pushi_refused_connections_total{code=\"4001\"} 1"));
        assert!(text.contains("pushi_cluster_redis_up 0"));
        // Every sample's metric has a TYPE line before it.
        let mut typed = std::collections::HashSet::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_string());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                let base = name
                    .trim_end_matches("_bucket")
                    .trim_end_matches("_sum")
                    .trim_end_matches("_count");
                assert!(typed.contains(name) || typed.contains(base), "untyped: {l}");
            }
        }
    }
}
