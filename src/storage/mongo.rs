//! The MongoDB store, used when `[mongodb]` is configured: three collections in the
//! registry's database, every write journaled (`j: true`), so a 200 means the journal holds it.
//!
//! Owns: the collections' shapes and indexes, the writer task (ordering and group commit),
//! pruning. Must not touch: anything above the storage traits.
//!
//! - `event_ids`: `{_id: app, next: <last id given>}`; a batch reserves its ids with one
//!   `$inc`, so ids strictly increase per app (a crash between the reservation and the insert
//!   leaves a gap, which is allowed).
//! - `stored_events`: `{app, channel, id, event, data: <JSON text>, user_id?, ts: <ms>}`,
//!   unique on `(app, channel, id)`, indexed on `ts` for the age pass.
//! - `offline_subscriptions`: `{app, user, channel, intervals: [[from, to|null], ...], open}`,
//!   unique on `(app, user, channel)`, indexed on `open` for startup.
//!
//! One writer task per process takes everything queued and writes it in order: appends of a
//! batch share one reservation per app and one `insert_many`. Subscribe and unsubscribe read
//! the counter in the same order, so an interval starts exactly after the last id given.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::{CollectionOptions, IndexOptions, ReturnDocument, WriteConcern};
use mongodb::{Collection, IndexModel};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::{
    ActiveSubscription, ChannelRange, EventStore, Interval, NewEvent, OnCommit, Op, Order,
    Retention, Storage, StoreError, StoreStatus, StoredEvent, SubscriptionStore, UserChannel,
    Writes,
};
use crate::apps::mongo::Connection;

const IDS: &str = "event_ids";
const EVENTS: &str = "stored_events";
const SUBS: &str = "offline_subscriptions";
const MAX_BATCH: usize = 1024;
const QUEUE: usize = 8192;

/// The MongoDB store.
#[derive(Debug)]
pub struct MongoStore {
    writes: Writes,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    ids: Collection<Document>,
    events: Collection<Document>,
    subs: Collection<Document>,
    connection: Connection,
    status: Arc<StoreStatus>,
}

/// BSON has no unsigned integers; ids and times stay far below `i64::MAX`.
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(b: Option<&Bson>) -> Option<u64> {
    match b? {
        Bson::Int64(n) => u64::try_from(*n).ok(),
        Bson::Int32(n) => u64::try_from(*n).ok(),
        Bson::Double(d) if d.fract() == 0.0 && *d >= 0.0 => Some(*d as u64),
        _ => None,
    }
}

impl MongoStore {
    /// The store on `connection`'s database; starts the writer task. Nothing is contacted
    /// until the first operation ([`MongoStore::ensure_indexes`] at startup).
    pub fn open(connection: &Connection) -> (Storage, Arc<MongoStore>) {
        let db = connection.client.database(&connection.database);
        let journaled = CollectionOptions::builder()
            .write_concern(WriteConcern::builder().journal(true).build())
            .build();
        let collection = |name: &str| db.collection_with_options(name, journaled.clone());
        let status = Arc::new(StoreStatus::default());
        let shared = Arc::new(Shared {
            ids: collection(IDS),
            events: collection(EVENTS),
            subs: collection(SUBS),
            connection: connection.clone(),
            status: status.clone(),
        });
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(writer(rx, shared.clone()));
        let store = Arc::new(MongoStore {
            writes: Writes(queue),
            shared,
        });
        (Storage::new(store.clone(), "mongodb", status), store)
    }

    /// Creates the collections' indexes (a no-op when they exist).
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        let s = &self.shared;
        let unique = IndexOptions::builder().unique(true).build();
        let indexes = [
            (
                &s.events,
                doc! {"app": 1, "channel": 1, "id": 1},
                Some(unique.clone()),
            ),
            (&s.events, doc! {"ts": 1}, None),
            (
                &s.subs,
                doc! {"app": 1, "user": 1, "channel": 1},
                Some(unique),
            ),
            (&s.subs, doc! {"open": 1}, None),
        ];
        for (collection, keys, options) in indexes {
            let model = IndexModel::builder().keys(keys).options(options).build();
            collection
                .create_index(model)
                .await
                .map_err(|e| s.error(e))?;
        }
        Ok(())
    }

    /// Runs a read, reporting failure and recovery to the status.
    async fn read<T>(
        &self,
        read: impl std::future::Future<Output = Result<T, mongodb::error::Error>>,
    ) -> Result<T, StoreError> {
        match read.await {
            Ok(v) => {
                self.shared.status.recovered("mongodb");
                Ok(v)
            }
            Err(e) => {
                let err = self.shared.error(e);
                self.shared.status.failed("mongodb", &err.to_string());
                Err(err)
            }
        }
    }
}

impl Shared {
    fn error(&self, e: mongodb::error::Error) -> StoreError {
        StoreError::Unavailable(format!(
            "MongoDB at {}: {}",
            self.connection.uri,
            self.connection.scrub(&e.kind.to_string())
        ))
    }

    /// The last id given for `app` (0 before the first).
    async fn last_id(&self, app: &str) -> Result<u64, mongodb::error::Error> {
        let found = self.ids.find_one(doc! {"_id": app}).await?;
        Ok(found.and_then(|d| to_u64(d.get("next"))).unwrap_or(0))
    }

    /// Reserves `n` ids for `app`; the first of them.
    async fn reserve(&self, app: &str, n: u64) -> Result<u64, mongodb::error::Error> {
        let after = self
            .ids
            .find_one_and_update(doc! {"_id": app}, doc! {"$inc": {"next": to_i64(n)}})
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await?;
        let last = after.and_then(|d| to_u64(d.get("next"))).unwrap_or(n);
        Ok(last + 1 - n)
    }

    async fn append_all(
        &self,
        appends: &[(&str, &[NewEvent])],
    ) -> Result<Vec<Vec<u64>>, mongodb::error::Error> {
        let mut per_app: HashMap<&str, u64> = HashMap::new();
        for (app, events) in appends {
            *per_app.entry(app).or_default() += events.len() as u64;
        }
        let mut next: HashMap<&str, u64> = HashMap::new();
        for (app, n) in per_app {
            next.insert(app, self.reserve(app, n).await?);
        }
        let mut docs = Vec::new();
        let mut out = Vec::with_capacity(appends.len());
        for (app, events) in appends {
            let mut ids = Vec::with_capacity(events.len());
            for event in events.iter() {
                let slot = next.get_mut(app).expect("reserved");
                let id = *slot;
                *slot += 1;
                ids.push(id);
                let mut d = doc! {
                    "app": *app,
                    "channel": &event.channel,
                    "id": to_i64(id),
                    "event": &event.event,
                    "data": event.data.get(),
                    "ts": to_i64(event.timestamp_ms),
                };
                if let Some(user) = &event.user_id {
                    d.insert("user_id", user.as_str());
                }
                docs.push(d);
            }
            out.push(ids);
        }
        if !docs.is_empty() {
            self.events.insert_many(docs).ordered(true).await?;
        }
        Ok(out)
    }

    async fn change(
        &self,
        app: &str,
        user: &str,
        channel: &str,
        subscribe: bool,
    ) -> Result<bool, mongodb::error::Error> {
        let filter = doc! {"app": app, "user": user, "channel": channel};
        let found = self.subs.find_one(filter.clone()).await?;
        let mut intervals = found.as_ref().map(intervals_of).unwrap_or_default();
        let at = self.last_id(app).await? + 1;
        let open = intervals.last().is_some_and(|i| i.to.is_none());
        match (subscribe, open) {
            (true, false) => match intervals.last_mut() {
                // Nothing was published since the unsubscribe: one interval.
                Some(last) if last.to == Some(at) => last.to = None,
                _ => intervals.push(Interval { from: at, to: None }),
            },
            (false, true) => {
                let last = intervals.last_mut().expect("open interval");
                if last.from == at {
                    intervals.pop();
                } else {
                    last.to = Some(at);
                }
            }
            _ => return Ok(false),
        }
        if intervals.is_empty() {
            self.subs.delete_one(filter).await?;
        } else {
            let mut d = filter.clone();
            d.insert("intervals", intervals_bson(&intervals));
            d.insert("open", intervals.last().is_some_and(|i| i.to.is_none()));
            self.subs.replace_one(filter, d).upsert(true).await?;
        }
        Ok(true)
    }

    async fn prune(&self, retention: Retention, now_ms: u64) -> Result<u64, mongodb::error::Error> {
        let cutoff = now_ms.saturating_sub(retention.max_age_ms);
        let mut removed = self
            .events
            .delete_many(doc! {"ts": {"$lt": to_i64(cutoff)}})
            .await?
            .deleted_count;
        let mut oldest: HashMap<(String, String), u64> = HashMap::new();
        for app in self.events.distinct("app", doc! {}).await? {
            let Bson::String(app) = app else { continue };
            for channel in self.events.distinct("channel", doc! {"app": &app}).await? {
                let Bson::String(channel) = channel else {
                    continue;
                };
                let filter = doc! {"app": &app, "channel": &channel};
                let count = self.events.count_documents(filter.clone()).await?;
                if count > retention.max_per_channel {
                    // The newest one past the count, and everything older.
                    let cut = self
                        .events
                        .find(filter.clone())
                        .sort(doc! {"id": -1})
                        .skip(retention.max_per_channel)
                        .limit(1)
                        .await?
                        .try_next()
                        .await?;
                    if let Some(id) = cut.and_then(|d| to_u64(d.get("id"))) {
                        let mut old = filter.clone();
                        old.insert("id", doc! {"$lte": to_i64(id)});
                        removed += self.events.delete_many(old).await?.deleted_count;
                    }
                }
                let first = self
                    .events
                    .find(filter)
                    .sort(doc! {"id": 1})
                    .limit(1)
                    .await?
                    .try_next()
                    .await?;
                if let Some(id) = first.and_then(|d| to_u64(d.get("id"))) {
                    oldest.insert((app.clone(), channel), id);
                }
            }
        }
        // Closed intervals at or below the oldest retained id select nothing any more.
        let mut cursor = self.subs.find(doc! {}).await?;
        while let Some(d) = cursor.try_next().await? {
            let (Ok(app), Ok(channel)) = (d.get_str("app"), d.get_str("channel")) else {
                continue;
            };
            let intervals = intervals_of(&d);
            let floor = match oldest.get(&(app.to_string(), channel.to_string())) {
                Some(id) => *id,
                None => self.last_id(app).await? + 1,
            };
            let kept: Vec<Interval> = intervals
                .iter()
                .copied()
                .filter(|i| i.to.is_none_or(|to| to > floor))
                .collect();
            if kept.len() == intervals.len() {
                continue;
            }
            let id = d.get("_id").cloned().unwrap_or(Bson::Null);
            if kept.is_empty() {
                self.subs.delete_one(doc! {"_id": id}).await?;
            } else {
                self.subs
                    .update_one(
                        doc! {"_id": id},
                        doc! {"$set": {"intervals": intervals_bson(&kept)}},
                    )
                    .await?;
            }
        }
        Ok(removed)
    }
}

fn intervals_of(d: &Document) -> Vec<Interval> {
    let Ok(list) = d.get_array("intervals") else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|i| {
            let pair = i.as_array()?;
            Some(Interval {
                from: to_u64(pair.first())?,
                to: match pair.get(1) {
                    Some(Bson::Null) | None => None,
                    other => Some(to_u64(other)?),
                },
            })
        })
        .collect()
}

fn intervals_bson(intervals: &[Interval]) -> Bson {
    Bson::Array(
        intervals
            .iter()
            .map(|i| {
                let to = i.to.map(|t| Bson::Int64(to_i64(t))).unwrap_or(Bson::Null);
                Bson::Array(vec![Bson::Int64(to_i64(i.from)), to])
            })
            .collect(),
    )
}

/// Takes everything queued and writes it in order; consecutive appends share one write.
async fn writer(mut rx: mpsc::Receiver<Op>, shared: Arc<Shared>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut ops = batch.into_iter().peekable();
        while let Some(op) = ops.next() {
            match op {
                Op::Subscription {
                    app,
                    user,
                    channel,
                    subscribe,
                    reply,
                } => {
                    let result = shared.change(&app, &user, &channel, subscribe).await;
                    let _ = reply.send(report(&shared, result));
                }
                Op::Prune {
                    retention,
                    now_ms,
                    reply,
                } => {
                    let result = shared.prune(retention, now_ms).await;
                    let _ = reply.send(report(&shared, result));
                }
                Op::Append {
                    app,
                    events,
                    on_commit,
                    reply,
                } => {
                    let mut appends = vec![(app, events, on_commit, reply)];
                    while let Some(Op::Append { .. }) = ops.peek() {
                        if let Some(Op::Append {
                            app,
                            events,
                            on_commit,
                            reply,
                        }) = ops.next()
                        {
                            appends.push((app, events, on_commit, reply));
                        }
                    }
                    let views: Vec<(&str, &[NewEvent])> = appends
                        .iter()
                        .map(|(app, events, _, _)| (app.as_str(), events.as_slice()))
                        .collect();
                    let result = shared.append_all(&views).await;
                    match report(&shared, result) {
                        Ok(all) => {
                            for ((_, _, on_commit, reply), ids) in appends.into_iter().zip(all) {
                                on_commit(&ids);
                                let _ = reply.send(Ok(ids));
                            }
                        }
                        Err(e) => {
                            for (_, _, _, reply) in appends {
                                let _ = reply.send(Err(e.clone()));
                            }
                        }
                    }
                }
            }
        }
    }
}

fn report<T>(shared: &Shared, result: Result<T, mongodb::error::Error>) -> Result<T, StoreError> {
    match result {
        Ok(v) => {
            shared.status.recovered("mongodb");
            Ok(v)
        }
        Err(e) => {
            let err = shared.error(e);
            shared.status.failed("mongodb", &err.to_string());
            Err(err)
        }
    }
}

fn stored_event(d: Document) -> Result<StoredEvent, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("stored event: {what}"));
    let data = d.get_str("data").map_err(|_| corrupt("no data"))?;
    let data = RawValue::from_string(data.to_string()).map_err(|_| corrupt("data not JSON"))?;
    Ok(StoredEvent {
        id: to_u64(d.get("id")).ok_or_else(|| corrupt("no id"))?,
        channel: d
            .get_str("channel")
            .map_err(|_| corrupt("no channel"))?
            .to_string(),
        event: d
            .get_str("event")
            .map_err(|_| corrupt("no event"))?
            .to_string(),
        data,
        user_id: d.get_str("user_id").ok().map(str::to_string),
        timestamp_ms: to_u64(d.get("ts")).unwrap_or(0),
    })
}

#[async_trait]
impl EventStore for MongoStore {
    async fn append(
        &self,
        app: &str,
        events: Vec<NewEvent>,
        on_commit: OnCommit,
    ) -> Result<Vec<u64>, StoreError> {
        self.writes.append(app, events, on_commit).await
    }

    async fn events(
        &self,
        app: &str,
        ranges: Vec<ChannelRange>,
        limit: usize,
        order: Order,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let ranges: Vec<Bson> = ranges
            .iter()
            .filter(|r| !r.ids.is_empty())
            .map(|r| {
                Bson::Document(doc! {
                    "channel": &r.channel,
                    "id": {"$gte": to_i64(r.ids.start), "$lt": to_i64(r.ids.end)},
                })
            })
            .collect();
        if ranges.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let sort = match order {
            Order::NewestFirst => -1,
            Order::OldestFirst => 1,
        };
        let events = &self.shared.events;
        let docs: Vec<Document> = self
            .read(async {
                events
                    .find(doc! {"app": app, "$or": ranges})
                    .sort(doc! {"id": sort})
                    .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                    .await?
                    .try_collect()
                    .await
            })
            .await?;
        docs.into_iter().map(stored_event).collect()
    }

    async fn prune(&self, retention: Retention, now_ms: u64) -> Result<u64, StoreError> {
        self.writes.prune(retention, now_ms).await
    }
}

#[async_trait]
impl SubscriptionStore for MongoStore {
    async fn subscribe(&self, app: &str, user: &str, channel: &str) -> Result<bool, StoreError> {
        self.writes.change(app, user, channel, true).await
    }

    async fn unsubscribe(&self, app: &str, user: &str, channel: &str) -> Result<bool, StoreError> {
        self.writes.change(app, user, channel, false).await
    }

    async fn user(&self, app: &str, user: &str) -> Result<Vec<UserChannel>, StoreError> {
        let subs = &self.shared.subs;
        let docs: Vec<Document> = self
            .read(async {
                subs.find(doc! {"app": app, "user": user})
                    .sort(doc! {"channel": 1})
                    .await?
                    .try_collect()
                    .await
            })
            .await?;
        Ok(docs
            .iter()
            .filter_map(|d| {
                Some(UserChannel {
                    channel: d.get_str("channel").ok()?.to_string(),
                    intervals: intervals_of(d),
                })
            })
            .collect())
    }

    async fn prepare(&self) -> Result<(), StoreError> {
        let result = self.ensure_indexes().await;
        match &result {
            Ok(()) => self.shared.status.recovered("mongodb"),
            Err(e) => self.shared.status.failed("mongodb", &e.to_string()),
        }
        result
    }

    async fn active(&self) -> Result<Vec<ActiveSubscription>, StoreError> {
        let subs = &self.shared.subs;
        let docs: Vec<Document> = self
            .read(async { subs.find(doc! {"open": true}).await?.try_collect().await })
            .await?;
        Ok(docs
            .iter()
            .filter_map(|d| {
                Some(ActiveSubscription {
                    app: d.get_str("app").ok()?.to_string(),
                    channel: d.get_str("channel").ok()?.to_string(),
                    user: d.get_str("user").ok()?.to_string(),
                })
            })
            .collect())
    }
}
