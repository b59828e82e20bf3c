//! The embedded store: one redb file, `<storage.data_dir>/pushi.redb`.
//!
//! Owns: the file format, the writer thread and its group commit, reads on snapshots,
//! pruning, reopening after an I/O error. Must not touch: anything above the storage traits.
//!
//! redb because it is pure Rust, ACID, and a commit with `Durability::Immediate` (its
//! default) returns only once the data is synced, which is what a 200 to a publish promises;
//! with `set_check_integrity_on_open` a file altered behind its back is refused at startup
//! with an error instead of trusted (a plain open may panic on such a file).
//!
//! Group commit: one thread owns every write. It takes everything queued, applies it in one
//! transaction, commits once and then answers every caller, so concurrent publishes share
//! one fsync and ids come out in commit order. A failed commit answers every caller of the
//! batch with an error and nothing of the batch is stored (the ids it handed out are burned;
//! only strict increase is promised). After an I/O error redb refuses every later write, so
//! the thread drops the database and reopens it (at most every `REOPEN_EVERY`), which is how
//! a full disk recovers by itself once space is freed.
//!
//! Tables:
//! - `meta`: `format` → `pushi-store/1` (a redb file without it is not pushi's)
//! - `next_id`: app → the id the next stored event gets (ids start at 1)
//! - `events`: (app, channel, id) → timestamp (8 bytes LE) then `{"e":event,"d":data,"u":user}`
//! - `counts`: (app, channel) → events stored for the channel
//! - `subs`: (app, user, channel) → intervals, (from, to) pairs of LE u64, `to = MAX` while open

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::backends::InMemoryBackend;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::{
    ActiveSubscription, ChannelRange, EventStore, Interval, NewEvent, OnCommit, Op, Order,
    Retention, Storage, StoreError, StoreStatus, StoredEvent, SubscriptionStore, UserChannel,
    Writes,
};

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const NEXT_ID: TableDefinition<&str, u64> = TableDefinition::new("next_id");
const EVENTS: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("events");
const COUNTS: TableDefinition<(&str, &str), u64> = TableDefinition::new("counts");
const SUBS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("subs");

/// The value of `meta.format` this code reads and writes.
const FORMAT: &str = "pushi-store/1";
/// The file inside `storage.data_dir`.
pub const FILE_NAME: &str = "pushi.redb";
/// Most operations one commit takes.
const MAX_BATCH: usize = 1024;
/// Operations that may wait for the writer before callers wait to queue.
const QUEUE: usize = 8192;
/// How often a broken database is reopened at most.
const REOPEN_EVERY: Duration = Duration::from_millis(500);
const OPEN: u64 = u64::MAX;

/// Why the store could not be opened at startup.
#[derive(Debug, thiserror::Error)]
#[error("storage.data_dir {path}: {reason}")]
pub struct OpenError {
    /// The file or directory.
    pub path: String,
    /// What is wrong, in words.
    pub reason: String,
}

/// The embedded store.
#[derive(Debug)]
pub struct Embedded {
    writes: Writes,
    slot: Arc<Slot>,
    status: Arc<StoreStatus>,
}

/// The open database, shared by the writer and the readers; empty while broken.
#[derive(Debug)]
struct Slot {
    db: RwLock<Option<Arc<Database>>>,
    /// Where to reopen it; `None` in memory.
    path: Option<PathBuf>,
}

impl Slot {
    fn get(&self) -> Option<Arc<Database>> {
        self.db.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

enum Outcome {
    Ids(Vec<u64>),
    Changed(bool),
    Removed(u64),
}

impl Op {
    fn answer(self, outcome: Result<Outcome, StoreError>) {
        // A caller that went away (request cancelled) no longer needs its answer.
        match (self, outcome) {
            (
                Op::Append {
                    reply, on_commit, ..
                },
                Ok(Outcome::Ids(ids)),
            ) => {
                on_commit(&ids);
                drop(reply.send(Ok(ids)))
            }
            (Op::Subscription { reply, .. }, Ok(Outcome::Changed(c))) => drop(reply.send(Ok(c))),
            (Op::Prune { reply, .. }, Ok(Outcome::Removed(n))) => drop(reply.send(Ok(n))),
            (op, Ok(_)) => op.answer(Err(StoreError::Corrupt("mismatched outcome".into()))),
            (Op::Append { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
            (Op::Subscription { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
            (Op::Prune { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn from_redb(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Corrupted(why) => StoreError::Corrupt(why),
        other => StoreError::Unavailable(other.to_string()),
    }
}

impl Embedded {
    /// Opens (or creates) the store under `dir`. The directory is created when missing. A
    /// file that is not a pushi store, is corrupt, or is open in another process is an error
    /// naming the path.
    pub fn open(dir: &Path, max_per_channel: u64) -> Result<Storage, OpenError> {
        let fail = |path: &Path, reason: String| OpenError {
            path: path.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| fail(dir, format!("cannot create the directory: {e}")))?;
        let path = dir.join(FILE_NAME);
        let db = open_file(&path).map_err(|reason| fail(&path, reason))?;
        Ok(Embedded::start(db, Some(path), max_per_channel))
    }

    /// A store in memory (lost with the process).
    pub fn in_memory() -> Storage {
        let db = redb::Builder::new()
            .create_with_backend(InMemoryBackend::new())
            .map_err(from_redb)
            .and_then(|db| init(&db).map(|()| db))
            .expect("an in-memory database opens");
        Embedded::start(db, None, 1000)
    }

    fn start(db: Database, path: Option<PathBuf>, max_per_channel: u64) -> Storage {
        let (queue, rx) = mpsc::channel(QUEUE);
        let slot = Arc::new(Slot {
            db: RwLock::new(Some(Arc::new(db))),
            path,
        });
        let status = Arc::new(StoreStatus::default());
        let writer = Writer {
            slot: slot.clone(),
            status: status.clone(),
            max_per_channel,
            last_reopen: None,
        };
        std::thread::Builder::new()
            .name("pushi-store".into())
            .spawn(move || writer.run(rx))
            .expect("the storage thread starts");
        let store = Arc::new(Embedded {
            writes: Writes(queue),
            slot,
            status: status.clone(),
        });
        Storage::new(store, "embedded", status)
    }

    /// Runs `read` on a snapshot, off the async workers.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let Some(db) = self.slot.get() else {
            let why = self
                .status
                .degraded()
                .map(|(why, _)| why)
                .unwrap_or_else(|| "the database is being reopened".into());
            return Err(StoreError::Unavailable(why));
        };
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(from_redb)?;
            read(&txn)
        })
        .await
        .map_err(unavailable)?
    }
}

/// Opens the file with the integrity check and verifies it is a pushi store; the reason in
/// words otherwise.
fn open_file(path: &Path) -> Result<Database, String> {
    let db = redb::Builder::new()
        .set_check_integrity_on_open(true)
        .create(path)
        .map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                "the store is open in another process (is another pushi using this data_dir?)"
                    .to_string()
            }
            redb::DatabaseError::Storage(redb::StorageError::Io(io))
                if io.kind() == std::io::ErrorKind::InvalidData =>
            {
                format!("{FILE_NAME} is not a pushi store (not a redb database: {io})")
            }
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(why)) => {
                format!("{FILE_NAME} is corrupt ({why}); restore it from a backup or move it away")
            }
            other => format!("cannot open {FILE_NAME}: {other}"),
        })?;
    init(&db).map_err(|e| match e {
        StoreError::Corrupt(why) => why,
        other => other.to_string(),
    })?;
    Ok(db)
}

/// Creates the tables of a new store; refuses a redb file that is not pushi's.
fn init(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(from_redb)?;
    let tables: Vec<String> = txn
        .list_tables()
        .map_err(from_redb)?
        .map(|t| redb::TableHandle::name(&t).to_string())
        .collect();
    {
        let mut meta = txn.open_table(META).map_err(from_redb)?;
        let format = meta
            .get("format")
            .map_err(from_redb)?
            .map(|v| v.value().to_string());
        match format {
            Some(f) if f == FORMAT => {}
            Some(other) => {
                return Err(StoreError::Corrupt(format!(
                    "{FILE_NAME} has format {other:?}, this pushi reads {FORMAT:?}"
                )))
            }
            None if !tables.is_empty() => {
                return Err(StoreError::Corrupt(format!(
                    "{FILE_NAME} is a redb database but not a pushi store (tables: {})",
                    tables.join(", ")
                )))
            }
            None => {
                meta.insert("format", FORMAT).map_err(from_redb)?;
            }
        }
    }
    txn.open_table(NEXT_ID).map_err(from_redb)?;
    txn.open_table(EVENTS).map_err(from_redb)?;
    txn.open_table(COUNTS).map_err(from_redb)?;
    txn.open_table(SUBS).map_err(from_redb)?;
    txn.commit().map_err(from_redb)
}

#[derive(Serialize)]
struct EventOut<'a> {
    e: &'a str,
    d: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    u: Option<&'a str>,
}

#[derive(Deserialize)]
struct EventIn {
    e: String,
    d: Box<RawValue>,
    #[serde(default)]
    u: Option<String>,
}

fn encode_event(event: &NewEvent) -> Vec<u8> {
    let mut out = event.timestamp_ms.to_le_bytes().to_vec();
    let body = EventOut {
        e: &event.event,
        d: &event.data,
        u: event.user_id.as_deref(),
    };
    serde_json::to_writer(&mut out, &body).expect("events serialize");
    out
}

fn timestamp(value: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = value
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| StoreError::Corrupt("stored event shorter than its timestamp".into()))?;
    Ok(u64::from_le_bytes(bytes))
}

fn decode_event(id: u64, channel: &str, value: &[u8]) -> Result<StoredEvent, StoreError> {
    let timestamp_ms = timestamp(value)?;
    let body: EventIn = serde_json::from_slice(&value[8..])
        .map_err(|e| StoreError::Corrupt(format!("stored event {id}: {e}")))?;
    Ok(StoredEvent {
        id,
        channel: channel.to_string(),
        event: body.e,
        data: body.d,
        user_id: body.u,
        timestamp_ms,
    })
}

fn encode_intervals(intervals: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(intervals.len() * 16);
    for (from, to) in intervals {
        out.extend_from_slice(&from.to_le_bytes());
        out.extend_from_slice(&to.to_le_bytes());
    }
    out
}

fn decode_intervals(value: &[u8]) -> Result<Vec<(u64, u64)>, StoreError> {
    if !value.len().is_multiple_of(16) {
        return Err(StoreError::Corrupt(
            "subscription intervals of a bad length".into(),
        ));
    }
    Ok(value
        .chunks_exact(16)
        .map(|c| {
            let from = u64::from_le_bytes(c[..8].try_into().expect("8 bytes"));
            let to = u64::from_le_bytes(c[8..].try_into().expect("8 bytes"));
            (from, to)
        })
        .collect())
}

struct Writer {
    slot: Arc<Slot>,
    status: Arc<StoreStatus>,
    max_per_channel: u64,
    last_reopen: Option<Instant>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let result = self.database().and_then(|db| self.commit(&db, &batch));
            match result {
                Ok(outcomes) => {
                    self.status.recovered("embedded");
                    for (op, outcome) in batch.into_iter().zip(outcomes) {
                        op.answer(Ok(outcome));
                    }
                }
                Err(e) => {
                    self.status.failed("embedded", &e.to_string());
                    // redb refuses every write after an I/O error until reopened.
                    self.close();
                    for op in batch {
                        op.answer(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// The open database, reopening a broken one when it is time to try again.
    fn database(&mut self) -> Result<Arc<Database>, StoreError> {
        if let Some(db) = self.slot.get() {
            return Ok(db);
        }
        let Some(path) = self.slot.path.clone() else {
            return Err(StoreError::Unavailable("the in-memory store failed".into()));
        };
        if self.last_reopen.is_some_and(|t| t.elapsed() < REOPEN_EVERY) {
            let why = self.status.degraded().map(|(w, _)| w).unwrap_or_default();
            return Err(StoreError::Unavailable(why));
        }
        self.last_reopen = Some(Instant::now());
        let db = Arc::new(open_file(&path).map_err(StoreError::Unavailable)?);
        *self.slot.db.write().unwrap_or_else(|e| e.into_inner()) = Some(db.clone());
        Ok(db)
    }

    /// Drops the database so that it can be reopened (readers still holding it finish first).
    fn close(&mut self) {
        if self.slot.path.is_none() {
            return;
        }
        let taken = self
            .slot
            .db
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut db) = taken {
            let deadline = Instant::now() + Duration::from_secs(5);
            // The file lock goes with the last handle; reads are short.
            loop {
                match Arc::try_unwrap(db) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(shared) if Instant::now() < deadline => {
                        db = shared;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => break,
                }
            }
        }
        self.last_reopen = None;
    }

    fn commit(&self, db: &Database, batch: &[Op]) -> Result<Vec<Outcome>, StoreError> {
        let txn = db.begin_write().map_err(from_redb)?;
        let mut outcomes = Vec::with_capacity(batch.len());
        {
            let mut next_ids = txn.open_table(NEXT_ID).map_err(from_redb)?;
            let mut events = txn.open_table(EVENTS).map_err(from_redb)?;
            let mut counts = txn.open_table(COUNTS).map_err(from_redb)?;
            let mut subs = txn.open_table(SUBS).map_err(from_redb)?;
            let mut next: HashMap<String, u64> = HashMap::new();
            let mut next_id = |app: &str, take: u64| -> Result<u64, StoreError> {
                let current = match next.get(app) {
                    Some(n) => *n,
                    None => next_ids
                        .get(app)
                        .map_err(from_redb)?
                        .map(|v| v.value())
                        .unwrap_or(1),
                };
                next.insert(app.to_string(), current + take);
                Ok(current)
            };
            for op in batch {
                let outcome = match op {
                    Op::Append {
                        app, events: new, ..
                    } => {
                        let first = next_id(app, new.len() as u64)?;
                        let mut touched: HashMap<&str, u64> = HashMap::new();
                        for (i, event) in new.iter().enumerate() {
                            let key = (app.as_str(), event.channel.as_str(), first + i as u64);
                            events
                                .insert(key, encode_event(event).as_slice())
                                .map_err(from_redb)?;
                            *touched.entry(event.channel.as_str()).or_default() += 1;
                        }
                        for (channel, added) in touched {
                            let count = counts
                                .get((app.as_str(), channel))
                                .map_err(from_redb)?
                                .map(|v| v.value())
                                .unwrap_or(0)
                                + added;
                            let kept =
                                trim(&mut events, app, channel, count, self.max_per_channel)?;
                            counts
                                .insert((app.as_str(), channel), kept)
                                .map_err(from_redb)?;
                        }
                        Outcome::Ids((first..first + new.len() as u64).collect())
                    }
                    Op::Subscription {
                        app,
                        user,
                        channel,
                        subscribe,
                        ..
                    } => {
                        let key = (app.as_str(), user.as_str(), channel.as_str());
                        let mut intervals = match subs.get(key).map_err(from_redb)? {
                            Some(v) => decode_intervals(v.value())?,
                            None => Vec::new(),
                        };
                        let at = next_id(app, 0)?;
                        let open = intervals.last().is_some_and(|(_, to)| *to == OPEN);
                        let changed = match (*subscribe, open) {
                            (true, false) => {
                                match intervals.last_mut() {
                                    // Nothing was published since the unsubscribe: one interval.
                                    Some(last) if last.1 == at => last.1 = OPEN,
                                    _ => intervals.push((at, OPEN)),
                                }
                                true
                            }
                            (false, true) => {
                                let last = intervals.last_mut().expect("open interval");
                                if last.0 == at {
                                    intervals.pop();
                                } else {
                                    last.1 = at;
                                }
                                true
                            }
                            _ => false,
                        };
                        if changed {
                            if intervals.is_empty() {
                                subs.remove(key).map_err(from_redb)?;
                            } else {
                                let value = encode_intervals(&intervals);
                                subs.insert(key, value.as_slice()).map_err(from_redb)?;
                            }
                        }
                        Outcome::Changed(changed)
                    }
                    Op::Prune {
                        retention, now_ms, ..
                    } => Outcome::Removed(prune(
                        &mut events,
                        &mut counts,
                        &mut subs,
                        &mut next_id,
                        *retention,
                        *now_ms,
                    )?),
                };
                outcomes.push(outcome);
            }
            for (app, id) in &next {
                next_ids.insert(app.as_str(), *id).map_err(from_redb)?;
            }
        }
        txn.commit().map_err(from_redb)?;
        Ok(outcomes)
    }
}

/// (app, user, channel, intervals) of one `subs` row.
type SubRow = (String, String, String, Vec<(u64, u64)>);
type EventsTable<'t> = redb::Table<'t, (&'static str, &'static str, u64), &'static [u8]>;
type CountsTable<'t> = redb::Table<'t, (&'static str, &'static str), u64>;
type SubsTable<'t> = redb::Table<'t, (&'static str, &'static str, &'static str), &'static [u8]>;

/// Removes the oldest events of a channel past `max`; returns how many are left.
fn trim(
    events: &mut EventsTable<'_>,
    app: &str,
    channel: &str,
    count: u64,
    max: u64,
) -> Result<u64, StoreError> {
    if count <= max {
        return Ok(count);
    }
    let excess = (count - max) as usize;
    let ids = oldest(events, app, channel, excess, |_| true)?;
    for id in &ids {
        events.remove((app, channel, *id)).map_err(from_redb)?;
    }
    Ok(count - ids.len() as u64)
}

/// Ids of the oldest events of a channel, at most `n`, while `keep_going` holds for the
/// event's timestamp.
fn oldest(
    events: &EventsTable<'_>,
    app: &str,
    channel: &str,
    n: usize,
    mut keep_going: impl FnMut(u64) -> bool,
) -> Result<Vec<u64>, StoreError> {
    let mut ids = Vec::new();
    let range = events
        .range((app, channel, 0u64)..=(app, channel, u64::MAX))
        .map_err(from_redb)?;
    for entry in range.take(n) {
        let (key, value) = entry.map_err(from_redb)?;
        if !keep_going(timestamp(value.value())?) {
            break;
        }
        ids.push(key.value().2);
    }
    Ok(ids)
}

fn prune(
    events: &mut EventsTable<'_>,
    counts: &mut CountsTable<'_>,
    subs: &mut SubsTable<'_>,
    next_id: &mut impl FnMut(&str, u64) -> Result<u64, StoreError>,
    retention: Retention,
    now_ms: u64,
) -> Result<u64, StoreError> {
    let cutoff = now_ms.saturating_sub(retention.max_age_ms);
    let channels: Vec<(String, String, u64)> = counts
        .iter()
        .map_err(from_redb)?
        .map(|e| {
            let (k, v) = e.map_err(from_redb)?;
            let (app, channel) = k.value();
            Ok((app.to_string(), channel.to_string(), v.value()))
        })
        .collect::<Result<_, StoreError>>()?;
    let mut removed = 0;
    // The oldest id each channel still holds; closed intervals that end at or before it
    // select nothing any more.
    let mut oldest_kept: HashMap<(String, String), u64> = HashMap::new();
    for (app, channel, count) in channels {
        let mut left = trim(events, &app, &channel, count, retention.max_per_channel)?;
        removed += count - left;
        let old = oldest(events, &app, &channel, left as usize, |t| t < cutoff)?;
        for id in &old {
            events
                .remove((app.as_str(), channel.as_str(), *id))
                .map_err(from_redb)?;
        }
        left -= old.len() as u64;
        removed += old.len() as u64;
        if left == 0 {
            counts
                .remove((app.as_str(), channel.as_str()))
                .map_err(from_redb)?;
        } else {
            counts
                .insert((app.as_str(), channel.as_str()), left)
                .map_err(from_redb)?;
            let first = oldest(events, &app, &channel, 1, |_| true)?;
            oldest_kept.insert((app, channel), first.first().copied().unwrap_or(0));
        }
    }
    let rows: Vec<SubRow> = subs
        .iter()
        .map_err(from_redb)?
        .map(|e| {
            let (k, v) = e.map_err(from_redb)?;
            let (app, user, channel) = k.value();
            Ok((
                app.to_string(),
                user.to_string(),
                channel.to_string(),
                decode_intervals(v.value())?,
            ))
        })
        .collect::<Result<_, StoreError>>()?;
    for (app, user, channel, intervals) in rows {
        // A channel without events: every closed interval is empty, whatever its ids.
        let floor = match oldest_kept.get(&(app.clone(), channel.clone())) {
            Some(id) => *id,
            None => next_id(&app, 0)?,
        };
        let kept: Vec<(u64, u64)> = intervals
            .iter()
            .copied()
            .filter(|(_, to)| *to == OPEN || *to > floor)
            .collect();
        if kept.len() == intervals.len() {
            continue;
        }
        let key = (app.as_str(), user.as_str(), channel.as_str());
        if kept.is_empty() {
            subs.remove(key).map_err(from_redb)?;
        } else {
            subs.insert(key, encode_intervals(&kept).as_slice())
                .map_err(from_redb)?;
        }
    }
    Ok(removed)
}

#[async_trait]
impl EventStore for Embedded {
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
        let app = app.to_string();
        self.read(move |txn| {
            let table = txn.open_table(EVENTS).map_err(from_redb)?;
            let mut found: Vec<(u64, usize, Vec<u8>)> = Vec::new();
            for (i, r) in ranges.iter().enumerate() {
                if r.ids.is_empty() {
                    continue;
                }
                let range = table
                    .range(
                        (app.as_str(), r.channel.as_str(), r.ids.start)
                            ..(app.as_str(), r.channel.as_str(), r.ids.end),
                    )
                    .map_err(from_redb)?;
                let mut take = |entry: Result<_, redb::StorageError>| -> Result<(), StoreError> {
                    let (k, v): (
                        redb::AccessGuard<'_, (&str, &str, u64)>,
                        redb::AccessGuard<'_, &[u8]>,
                    ) = entry.map_err(from_redb)?;
                    found.push((k.value().2, i, v.value().to_vec()));
                    Ok(())
                };
                match order {
                    Order::OldestFirst => {
                        for entry in range.take(limit) {
                            take(entry)?;
                        }
                    }
                    Order::NewestFirst => {
                        for entry in range.rev().take(limit) {
                            take(entry)?;
                        }
                    }
                }
            }
            match order {
                Order::OldestFirst => found.sort_by_key(|(id, _, _)| *id),
                Order::NewestFirst => found.sort_by_key(|(id, _, _)| std::cmp::Reverse(*id)),
            }
            found.truncate(limit);
            found
                .into_iter()
                .map(|(id, i, value)| decode_event(id, &ranges[i].channel, &value))
                .collect()
        })
        .await
    }

    async fn prune(&self, retention: Retention, now_ms: u64) -> Result<u64, StoreError> {
        self.writes.prune(retention, now_ms).await
    }
}

#[async_trait]
impl SubscriptionStore for Embedded {
    async fn subscribe(&self, app: &str, user: &str, channel: &str) -> Result<bool, StoreError> {
        self.writes.change(app, user, channel, true).await
    }

    async fn unsubscribe(&self, app: &str, user: &str, channel: &str) -> Result<bool, StoreError> {
        self.writes.change(app, user, channel, false).await
    }

    async fn user(&self, app: &str, user: &str) -> Result<Vec<UserChannel>, StoreError> {
        let (app, user) = (app.to_string(), user.to_string());
        self.read(move |txn| {
            let table = txn.open_table(SUBS).map_err(from_redb)?;
            let mut out = Vec::new();
            let range = table
                .range((app.as_str(), user.as_str(), "")..)
                .map_err(from_redb)?;
            for entry in range {
                let (k, v) = entry.map_err(from_redb)?;
                let (a, u, channel) = k.value();
                if a != app || u != user {
                    break;
                }
                let intervals = decode_intervals(v.value())?
                    .into_iter()
                    .map(|(from, to)| Interval {
                        from,
                        to: (to != OPEN).then_some(to),
                    })
                    .collect();
                out.push(UserChannel {
                    channel: channel.to_string(),
                    intervals,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn active(&self) -> Result<Vec<ActiveSubscription>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(SUBS).map_err(from_redb)?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(from_redb)? {
                let (k, v) = entry.map_err(from_redb)?;
                let (app, user, channel) = k.value();
                let open = decode_intervals(v.value())?
                    .last()
                    .is_some_and(|(_, to)| *to == OPEN);
                if open {
                    out.push(ActiveSubscription {
                        app: app.to_string(),
                        channel: channel.to_string(),
                        user: user.to_string(),
                    });
                }
            }
            Ok(out)
        })
        .await
    }
}
