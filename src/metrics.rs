//! Counters, rendered in the Prometheus text format at `GET /metrics`.
//!
//! Owns: the counters. Must not touch: decisions or control flow.

use std::sync::atomic::{AtomicU64, Ordering};

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    webhooks_given_up: AtomicU64,
}

impl Metrics {
    /// A webhook event was dropped (queue full) or a delivery was given up after its retries.
    pub fn webhook_given_up(&self) {
        self.webhooks_given_up.fetch_add(1, Ordering::Relaxed);
    }

    /// Webhooks given up so far.
    pub fn webhooks_given_up(&self) -> u64 {
        self.webhooks_given_up.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition; `connections` is the current connection count.
    pub fn render(&self, connections: usize) -> String {
        format!(
            "# HELP pushi_connections Open WebSocket connections.\n\
             # TYPE pushi_connections gauge\n\
             pushi_connections {connections}\n\
             # HELP pushi_webhooks_given_up_total Webhook events dropped or given up after retries.\n\
             # TYPE pushi_webhooks_given_up_total counter\n\
             pushi_webhooks_given_up_total {}\n",
            self.webhooks_given_up()
        )
    }
}
