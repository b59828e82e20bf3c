//! Following the MongoDB registry: the first load, then every change, into the
//! [`AppStore`] snapshot.
//!
//! Owns: the change stream and its resume token, the polling fallback, backoff, and the
//! outage and recovery log lines (each once per transition). Must not touch: sockets (changes
//! are handed to a callback, which closes a disabled or deleted app's connections).
//!
//! Each round opens the change stream first and then reads the whole collection, so that
//! nothing written between the two is missed; events are applied idempotently (whole
//! documents by id, deletes by `_id`). After an outage the round starts again from the
//! stream's resume token and a fresh full read, which catches up on everything that changed
//! meanwhile. A document that is not a valid app is logged with its id and field, and the
//! last good version of that app stays.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use mongodb::bson::{Bson, Document};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType, ResumeToken};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::mongo::{Loaded, Registry, RegistryError};
use super::{AppChanges, AppStore};
use crate::config::MongoConfig;

/// Called with every change applied to the snapshot.
pub type OnChange = Arc<dyn Fn(&AppChanges) + Send + Sync>;

/// Shortest and longest wait between two attempts to reach the registry.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why a round ended.
enum Interrupt {
    /// The server is shutting down.
    Shutdown,
    /// The stream was invalidated (collection dropped or renamed): start afresh at once.
    Restart,
    /// The registry failed; retry after backoff.
    Failed(RegistryError),
    /// The first load found something that must stop startup.
    Fatal(String),
}

impl From<RegistryError> for Interrupt {
    fn from(err: RegistryError) -> Interrupt {
        Interrupt::Failed(err)
    }
}

/// The follower's state across rounds.
struct Follower {
    registry: Registry,
    store: Arc<AppStore>,
    on_change: OnChange,
    config: MongoConfig,
    shutdown: CancellationToken,
    /// `_id` (as text) → app id, for delete events, which carry only the `_id`.
    oids: HashMap<String, String>,
    resume: Option<ResumeToken>,
    use_stream: bool,
    /// The first load is still pending: its outcome goes here.
    first: Option<oneshot::Sender<Result<usize, String>>>,
    /// Problems already logged, so that polling does not repeat them every interval.
    reported: HashSet<String>,
}

/// Follows the registry until `shutdown`. The outcome of the first load (the number of apps,
/// or why startup must stop: a conflict with `[[apps]]`, a duplicate that blocks the
/// indexes, or no success within `startup_timeout`) is sent on `first`.
pub async fn run(
    registry: Registry,
    store: Arc<AppStore>,
    config: MongoConfig,
    on_change: OnChange,
    shutdown: CancellationToken,
    first: oneshot::Sender<Result<usize, String>>,
) {
    let deadline = Instant::now() + Duration::from_secs(config.startup_timeout);
    let mut follower = Follower {
        registry,
        store,
        on_change,
        use_stream: config.change_stream,
        config,
        shutdown,
        oids: HashMap::new(),
        resume: None,
        first: Some(first),
        reported: HashSet::new(),
    };
    let mut backoff = BACKOFF_MIN;
    loop {
        let err = match follower.round(&mut backoff).await {
            Interrupt::Shutdown => return,
            Interrupt::Restart => continue,
            Interrupt::Fatal(why) => {
                if let Some(first) = follower.first.take() {
                    let _ = first.send(Err(why));
                }
                return;
            }
            Interrupt::Failed(err) => err,
        };
        if follower.first.is_some() {
            if Instant::now() >= deadline {
                let why = format!(
                    "could not load the apps from MongoDB at {} within mongodb.startup_timeout ({} s): {err}",
                    follower.registry.uri(),
                    follower.config.startup_timeout
                );
                let _ = follower.first.take().map(|f| f.send(Err(why)));
                return;
            }
            tracing::warn!("app registry not reachable yet, retrying: {err}");
        } else if follower.store.set_degraded(Some(err.to_string())) {
            tracing::error!(
                apps = follower.store.registry_apps().len(),
                "app registry unreachable; serving the apps loaded last and retrying: {err}"
            );
        }
        tokio::select! {
            _ = follower.shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

impl Follower {
    /// One round: open the stream, read everything, then follow until something fails.
    async fn round(&mut self, backoff: &mut Duration) -> Interrupt {
        if self.first.is_some() {
            if let Err(err) = self.registry.ensure_indexes().await {
                return match err {
                    RegistryError::Duplicate(why) => Interrupt::Fatal(format!(
                        "the apps collection at {} holds duplicates: {why}",
                        self.registry.uri()
                    )),
                    other => Interrupt::Failed(other),
                };
            }
        }
        let mut stream = None;
        if self.use_stream {
            match self.registry.watch(self.resume.clone()).await {
                Ok(s) => stream = Some(s),
                Err(err) if err.no_change_streams() => {
                    tracing::warn!(
                        "MongoDB offers no change streams here (a standalone server?); \
                         polling the apps every {} s instead: {err}",
                        self.config.poll_interval
                    );
                    self.use_stream = false;
                }
                Err(err) if self.resume.is_some() => {
                    // The token may have left the oplog: the full read below catches up.
                    tracing::warn!("could not resume the apps change stream, reopening: {err}");
                    self.resume = None;
                    return Interrupt::Restart;
                }
                Err(err) => return err.into(),
            }
        }
        if let Err(interrupt) = self.full_read().await {
            return interrupt;
        }
        *backoff = BACKOFF_MIN;
        if self.store.set_degraded(None) {
            tracing::info!(
                apps = self.store.registry_apps().len(),
                "app registry reachable again; caught up"
            );
        }
        match stream {
            Some(mut stream) => loop {
                let event = tokio::select! {
                    _ = self.shutdown.cancelled() => return Interrupt::Shutdown,
                    event = stream.next() => event,
                };
                match event {
                    Some(Ok(event)) => {
                        self.resume = Some(event.id.clone());
                        if let Some(interrupt) = self.apply_event(event) {
                            return interrupt;
                        }
                    }
                    Some(Err(err)) => {
                        self.resume = stream.resume_token().or(self.resume.take());
                        return self.registry.stream_error(err).into();
                    }
                    None => return Interrupt::Restart,
                }
            },
            None => loop {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return Interrupt::Shutdown,
                    _ = tokio::time::sleep(Duration::from_secs(self.config.poll_interval)) => {}
                }
                if let Err(interrupt) = self.full_read().await {
                    return interrupt;
                }
            },
        }
    }

    /// Reads the whole collection and makes it the registry's part of the snapshot.
    async fn full_read(&mut self) -> Result<(), Interrupt> {
        let loaded = self.registry.load().await?;
        let previous = self.store.registry_apps();
        let mut next = BTreeMap::new();
        let mut oids = HashMap::new();
        let mut problems = Vec::new();
        for Loaded { oid, id, record } in loaded {
            let (id, config) = match record {
                Ok(record) => (record.config.id.clone(), record.config),
                Err(err) => {
                    problems.push(format!("{err}; the last good version stays"));
                    match id.and_then(|id| previous.get(&id).cloned().map(|c| (id, c))) {
                        Some(kept) => kept,
                        None => continue,
                    }
                }
            };
            if next.contains_key(&id) {
                problems.push(format!(
                    "app id {id:?} is claimed twice: by two MongoDB documents (_id {oid} is ignored)"
                ));
                continue;
            }
            oids.insert(oid.to_string(), id.clone());
            next.insert(id, config);
        }
        self.oids = oids;
        let (changes, conflicts) = self.store.set_registry(next);
        if let Some(first) = self.first.take() {
            let fatal: Vec<String> = conflicts
                .iter()
                .filter(|c| c.with_file)
                .map(|c| c.message.clone())
                .collect();
            if !fatal.is_empty() {
                let _ = first.send(Err(fatal.join("; ")));
                return Err(Interrupt::Shutdown);
            }
            let _ = first.send(Ok(self.store.registry_apps().len()));
        } else {
            (self.on_change)(&changes);
        }
        problems.extend(conflicts.into_iter().map(|c| c.message));
        self.report(problems, true);
        Ok(())
    }

    /// Logs each problem once; with `all`, forgets the ones that are gone (a full read saw
    /// every document), so that a problem that comes back is logged again.
    fn report(&mut self, problems: Vec<String>, all: bool) {
        if all {
            self.reported.retain(|p| problems.contains(p));
        }
        for problem in problems {
            if self.reported.insert(problem.clone()) {
                tracing::error!("app registry: {problem}");
            }
        }
    }

    /// Applies one change event; `Some` when the stream must be reopened.
    fn apply_event(&mut self, event: ChangeStreamEvent<Document>) -> Option<Interrupt> {
        let oid = event
            .document_key
            .as_ref()
            .and_then(|k| k.get("_id"))
            .cloned()
            .unwrap_or(Bson::Null)
            .to_string();
        match event.operation_type {
            OperationType::Insert | OperationType::Update | OperationType::Replace => {
                // No document: it was deleted since; its delete event follows.
                let doc = event.full_document?;
                self.upsert(oid, &doc);
                None
            }
            OperationType::Delete => {
                if let Some(id) = self.oids.remove(&oid) {
                    let changes = self.store.remove_registry(&id);
                    (self.on_change)(&changes);
                }
                None
            }
            OperationType::Invalidate
            | OperationType::Drop
            | OperationType::DropDatabase
            | OperationType::Rename => {
                tracing::warn!("the apps collection was dropped or renamed; reading it afresh");
                self.resume = None;
                Some(Interrupt::Restart)
            }
            _ => None,
        }
    }

    fn upsert(&mut self, oid: String, doc: &Document) {
        let loaded = Loaded::from_document(doc);
        let record = match loaded.record {
            Ok(record) => record,
            Err(err) => {
                self.report(vec![format!("{err}; the last good version stays")], false);
                return;
            }
        };
        let previous = self.oids.insert(oid, record.config.id.clone());
        let (changes, conflicts) = self
            .store
            .upsert_registry(record.config, previous.as_deref());
        (self.on_change)(&changes);
        self.report(conflicts.into_iter().map(|c| c.message).collect(), false);
    }
}
