//! The debug console across a cluster: a node with a console open on an app announces it
//! on `P:cw` (at once, then every third of [`REMOTE_WATCH`]) and subscribes to the app's
//! `P:c:A`; every node sends that app's records there while the announcement lasts. So a
//! console sees what happens on every node, and no node publishes records nobody reads.
//!
//! Owns: the announcements, the records' way through Redis. Must not touch: what a record
//! holds (`feed`). Records are a view: when Redis is slow or away they are dropped (the
//! feed's outbox is bounded), never retried.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::envelope::Topic;
use super::Node;
use crate::feed::{Feed, REMOTE_WATCH};

/// Records sent to Redis in one pipeline, at most.
const BATCH: usize = 64;

impl Node {
    /// Carries `feed`'s records between this node and the others, until shutdown.
    pub fn attach_feed(self: &Arc<Self>, feed: Feed, shutdown: CancellationToken) {
        if self.feed.set(feed.clone()).is_err() {
            return;
        }
        let outbox = feed.attach_cluster(self.id.clone(), None);
        tokio::spawn(self.clone().send_records(outbox, shutdown.clone()));
        tokio::spawn(self.clone().follow_consoles(feed, shutdown));
    }

    /// The app's connections on every node (the counts `max_connections` is checked
    /// against); `None` while Redis does not answer.
    pub async fn connection_count(&self, app: &str) -> Option<usize> {
        let key = format!("{}:{app}:conns", self.prefix);
        let timeout = Duration::from_secs(self.config.command_timeout);
        let counts: Vec<i64> = tokio::time::timeout(
            timeout,
            redis::cmd("HVALS")
                .arg(key)
                .query_async(&mut self.conn.clone()),
        )
        .await
        .ok()?
        .ok()?;
        Some(counts.iter().sum::<i64>().max(0) as usize)
    }

    /// `origin␀rest` from another node: `rest`, or `None` for this node's own messages.
    pub(super) fn others<'a>(&self, payload: &'a [u8]) -> Option<&'a str> {
        let text = std::str::from_utf8(payload).ok()?;
        let (origin, rest) = text.split_once('\0')?;
        (origin != self.id).then_some(rest)
    }

    async fn send_records(
        self: Arc<Self>,
        mut outbox: mpsc::Receiver<(String, Arc<str>)>,
        shutdown: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                n = outbox.recv_many(&mut batch, BATCH) => if n == 0 { return },
            }
            let mut pipe = redis::pipe();
            for (app, json) in batch.drain(..) {
                let payload = format!("{}\0{json}", self.id);
                pipe.cmd("PUBLISH")
                    .arg(Topic::Console(app).name(&self.prefix))
                    .arg(payload)
                    .ignore();
            }
            let _: Result<Value, _> = pipe.query_async(&mut self.conn.clone()).await;
        }
    }

    /// Follows the consoles open on this node: subscribes to their apps' records and
    /// announces them to the other nodes.
    async fn follow_consoles(self: Arc<Self>, feed: Feed, shutdown: CancellationToken) {
        let mut followed: HashSet<String> = HashSet::new();
        let mut every = tokio::time::interval(REMOTE_WATCH / 3);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let renew = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => true,
                _ = feed.changed() => false,
            };
            if renew {
                feed.sweep();
            }
            let now: HashSet<String> = feed.watched_here().into_iter().collect();
            for gone in followed.difference(&now) {
                self.unwant(Topic::Console(gone.clone()));
            }
            let mut announce = Vec::new();
            for app in &now {
                let new = !followed.contains(app);
                if new {
                    // Subscribed before announcing, so the first records are not missed.
                    let _ = self.want(Topic::Console(app.clone())).await;
                }
                if new || renew {
                    announce.push(app.clone());
                }
            }
            followed = now;
            if announce.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for app in announce {
                pipe.cmd("PUBLISH")
                    .arg(Topic::ConsoleWatch.name(&self.prefix))
                    .arg(format!("{}\0{app}", self.id))
                    .ignore();
            }
            let timeout = Duration::from_secs(self.config.command_timeout);
            let _ = tokio::time::timeout(timeout, async {
                let _: Result<Value, _> = pipe.query_async(&mut self.conn.clone()).await;
            })
            .await;
        }
    }
}
