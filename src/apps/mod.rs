//! Apps: the [`App`] record and the [`AppStore`] through which sessions and the HTTP API find
//! them: a live snapshot merged from two sources, the config file's `[[apps]]` (re-read on
//! SIGHUP) and the MongoDB registry (`[mongodb]`, followed live by [`sync`]), with every
//! change reported so that the server can act on it (close a disabled or deleted app's
//! sockets).
//!
//! Owns: app lookup by key and by id, merging the sources (an id or key claimed twice is a
//! conflict that names both), change detection, the registry's health for `/ready`. Must not
//! touch: channels, sockets, HTTP.

pub mod document;
pub mod mongo;
pub mod sync;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::config::{AppConfig, WebhookConfig};
use crate::origin::OriginPattern;

/// One Pusher app, as the rest of the server sees it. `Debug` leaves the secret out.
#[derive(Clone, PartialEq, Eq)]
pub struct App {
    /// Id used in `/apps/{id}` paths.
    pub id: String,
    /// Key used in `/app/{key}` and in signatures.
    pub key: String,
    /// Signing secret.
    pub secret: String,
    /// Disabled apps refuse connections and API calls.
    pub enabled: bool,
    /// `client-*` events allowed.
    pub client_events: bool,
    /// `pusher_internal:subscription_count` sent.
    pub subscription_count: bool,
    /// Connections must authorize within a timeout.
    pub authorized_connections: bool,
    /// Concurrent connection quota; 0 = unlimited.
    pub max_connections: usize,
    /// Client events per second per connection.
    pub max_client_events_per_second: u32,
    /// Webhook targets.
    pub webhooks: Vec<WebhookConfig>,
    /// Browser origins allowed to connect; empty = any.
    pub allowed_origins: Vec<OriginPattern>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl From<&AppConfig> for App {
    fn from(c: &AppConfig) -> App {
        App {
            id: c.id.clone(),
            key: c.key.clone(),
            secret: c.secret.clone(),
            enabled: c.enabled,
            client_events: c.client_events,
            subscription_count: c.subscription_count,
            authorized_connections: c.authorized_connections,
            max_connections: c.max_connections,
            max_client_events_per_second: c.max_client_events_per_second,
            webhooks: c.webhooks.clone(),
            // The config was validated, so every pattern parses.
            allowed_origins: c
                .allowed_origins
                .iter()
                .filter_map(|p| OriginPattern::parse(p).ok())
                .collect(),
        }
    }
}

/// What changed between two sets of apps, by app id.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AppChanges {
    /// Apps that are new.
    pub added: Vec<String>,
    /// Apps whose settings changed (secret, switches, quotas, webhooks, origins).
    pub updated: Vec<String>,
    /// Apps that were enabled and are now disabled: their sockets are closed with 4003.
    pub disabled: Vec<String>,
    /// Apps that are gone: their sockets are closed with 4001.
    pub removed: Vec<String>,
}

impl AppChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.updated.is_empty()
            && self.disabled.is_empty()
            && self.removed.is_empty()
    }
}

/// One consistent set of apps, indexed by key and by id.
#[derive(Debug, Default)]
struct Snapshot {
    by_key: HashMap<String, Arc<App>>,
    by_id: HashMap<String, Arc<App>>,
}

/// An app id or key claimed by two apps. The message names both.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Conflict {
    /// What is claimed twice, and by whom.
    pub message: String,
    /// One of the two is an `[[apps]]` entry of the config file (at startup, an error).
    pub with_file: bool,
}

/// Where an app was declared, for conflict messages.
fn origin_of(from_file: bool, id: &str) -> String {
    if from_file {
        format!("[[apps]] id {id:?} in the config file")
    } else {
        format!("MongoDB document id {id:?}")
    }
}

/// The inputs of the snapshot: the apps of each source as last accepted.
#[derive(Debug, Default)]
struct Sources {
    file: Vec<AppConfig>,
    registry: BTreeMap<String, AppConfig>,
}

/// How the app registry is doing, as `/ready` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Health {
    /// `"config"` (only `[[apps]]`) or `"mongodb"`.
    pub source: &'static str,
    /// The registry has been read once: the apps are known (filled in from the store's
    /// flag by [`AppStore::health`]).
    pub loaded: bool,
    /// When the registry became unreachable, while it is (seconds since the epoch).
    pub degraded_since: Option<u64>,
    /// Why, while it is.
    pub error: Option<String>,
}

/// The apps this node serves: an in-memory snapshot that sessions and the HTTP API read on
/// every connect, request and check, and that the sources replace as a whole. Lookups never
/// wait on I/O or a lock: the snapshot is swapped atomically, so an unknown key costs one
/// hash lookup and never reaches MongoDB. Changes (rare) take a mutex over the sources.
#[derive(Debug)]
pub struct AppStore {
    snapshot: ArcSwap<Snapshot>,
    sources: Mutex<Sources>,
    loaded: AtomicBool,
    health: Mutex<Health>,
}

impl AppStore {
    /// A store serving the config file's `apps` (validated: ids and keys are unique) and
    /// nothing else: loaded at once.
    pub fn new(apps: &[AppConfig]) -> AppStore {
        let store = AppStore::with_health(Health {
            source: "config",
            loaded: true,
            degraded_since: None,
            error: None,
        });
        store.loaded.store(true, Ordering::Release);
        store
            .set_file(apps)
            .expect("no registry apps to conflict with");
        store
    }

    /// A store serving the config file's `apps` and, once [`AppStore::set_registry`] has
    /// run, the registry's; until then it is not loaded (`/ready` answers 503 and
    /// connections are asked to come back later).
    pub fn awaiting_registry(apps: &[AppConfig]) -> AppStore {
        let store = AppStore::with_health(Health {
            source: "mongodb",
            loaded: false,
            degraded_since: None,
            error: None,
        });
        store
            .set_file(apps)
            .expect("no registry apps to conflict with");
        store
    }

    fn with_health(health: Health) -> AppStore {
        AppStore {
            snapshot: ArcSwap::default(),
            sources: Mutex::new(Sources::default()),
            loaded: AtomicBool::new(false),
            health: Mutex::new(health),
        }
    }

    /// The app with this key, if any.
    pub fn find_by_key(&self, key: &str) -> Option<Arc<App>> {
        self.snapshot.load().by_key.get(key).cloned()
    }

    /// The app with this id, if any.
    pub fn find_by_id(&self, id: &str) -> Option<Arc<App>> {
        self.snapshot.load().by_id.get(id).cloned()
    }

    /// Whether every source has been read once (false only while the registry's first load
    /// is pending).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// The registry's health, for `/ready`.
    pub fn health(&self) -> Health {
        let mut health = self.lock_health().clone();
        health.loaded = self.is_loaded();
        health
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_sources(&self) -> std::sync::MutexGuard<'_, Sources> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that the registry is unreachable (`Some(why)`) or reachable again (`None`);
    /// returns whether that is a change, so the caller logs each transition once.
    pub fn set_degraded(&self, error: Option<String>) -> bool {
        let mut health = self.lock_health();
        let was = health.degraded_since.is_some();
        match error {
            Some(why) => {
                if !was {
                    let now = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    health.degraded_since = Some(now);
                }
                health.error = Some(why);
                !was
            }
            None => {
                health.degraded_since = None;
                health.error = None;
                was
            }
        }
    }

    /// Replaces the config file's apps (validated among themselves). Refused as a whole,
    /// with the running apps kept, when one claims an id or key of a registry app.
    pub fn set_file(&self, apps: &[AppConfig]) -> Result<AppChanges, Vec<Conflict>> {
        let mut sources = self.lock_sources();
        let (_, conflicts) = merge(apps, &sources.registry, &sources.registry);
        if !conflicts.is_empty() {
            return Err(conflicts);
        }
        sources.file = apps.to_vec();
        Ok(self.publish(&sources))
    }

    /// The registry's apps as last accepted, by id.
    pub fn registry_apps(&self) -> BTreeMap<String, AppConfig> {
        self.lock_sources().registry.clone()
    }

    /// Replaces the registry's apps (each valid on its own) and marks the store loaded. An
    /// app whose id or key is already claimed (by the config file, or by another registry
    /// app that held it first) keeps its last accepted version, or is left out if it has
    /// none; each such conflict is returned, naming both claimants.
    pub fn set_registry(&self, apps: BTreeMap<String, AppConfig>) -> (AppChanges, Vec<Conflict>) {
        let mut sources = self.lock_sources();
        let (accepted, conflicts) = merge(&sources.file, &apps, &sources.registry);
        sources.registry = accepted;
        let changes = self.publish(&sources);
        drop(sources);
        self.loaded.store(true, Ordering::Release);
        (changes, conflicts)
    }

    /// Adds or replaces one registry app, which leaves `previous_id` when its id changed;
    /// see [`AppStore::set_registry`].
    pub fn upsert_registry(
        &self,
        app: AppConfig,
        previous_id: Option<&str>,
    ) -> (AppChanges, Vec<Conflict>) {
        let mut apps = self.registry_apps();
        if let Some(old) = previous_id.filter(|old| *old != app.id) {
            apps.remove(old);
        }
        apps.insert(app.id.clone(), app);
        self.set_registry(apps)
    }

    /// Removes one registry app.
    pub fn remove_registry(&self, id: &str) -> AppChanges {
        let mut apps = self.registry_apps();
        if apps.remove(id).is_none() {
            return AppChanges::default();
        }
        self.set_registry(apps).0
    }

    /// Swaps in the snapshot of `sources` and says what changed.
    fn publish(&self, sources: &Sources) -> AppChanges {
        let mut next = Snapshot::default();
        for config in sources.file.iter().chain(sources.registry.values()) {
            let app = Arc::new(App::from(config));
            next.by_key.insert(app.key.clone(), app.clone());
            next.by_id.insert(app.id.clone(), app);
        }
        let old = self.snapshot.swap(Arc::new(next));
        let new = self.snapshot.load();
        let mut changes = AppChanges::default();
        for (id, app) in &new.by_id {
            match old.by_id.get(id) {
                None => changes.added.push(id.clone()),
                Some(before) if before.enabled && !app.enabled => changes.disabled.push(id.clone()),
                Some(before) if **before != **app => changes.updated.push(id.clone()),
                Some(_) => {}
            }
        }
        for id in old.by_id.keys() {
            if !new.by_id.contains_key(id) {
                changes.removed.push(id.clone());
            }
        }
        for list in [
            &mut changes.added,
            &mut changes.updated,
            &mut changes.disabled,
            &mut changes.removed,
        ] {
            list.sort();
        }
        changes
    }
}

/// Merges the registry's `wanted` apps into the file's: returns the registry apps accepted
/// and the conflicts. Apps that keep the key they had in `previous` claim it first, so an app
/// inserted behind pushi's back cannot take a live app's key; among the rest, the lower id
/// wins. A refused app falls back to its `previous` version when that still fits.
fn merge(
    file: &[AppConfig],
    wanted: &BTreeMap<String, AppConfig>,
    previous: &BTreeMap<String, AppConfig>,
) -> (BTreeMap<String, AppConfig>, Vec<Conflict>) {
    // What claims each id and key: (who, for messages; whether it is a file app).
    let mut ids: HashMap<&str, (String, bool)> = HashMap::new();
    let mut keys: HashMap<&str, (String, bool)> = HashMap::new();
    for app in file {
        ids.insert(&app.id, (origin_of(true, &app.id), true));
        keys.insert(&app.key, (origin_of(true, &app.id), true));
    }
    let mut order: Vec<&AppConfig> = wanted.values().collect();
    order.sort_by_key(|app| {
        let kept = previous.get(&app.id).is_some_and(|p| p.key == app.key);
        (!kept, app.id.clone())
    });
    let mut accepted = BTreeMap::new();
    let mut conflicts = Vec::new();
    for app in order {
        let me = origin_of(false, &app.id);
        if let Some((other, with_file)) = ids.get(app.id.as_str()) {
            conflicts.push(Conflict {
                message: format!(
                    "app id {:?} is claimed twice: by {other} and by {me}",
                    app.id
                ),
                with_file: *with_file,
            });
            continue;
        }
        let candidate = match keys.get(app.key.as_str()) {
            None => Some(app),
            Some((other, with_file)) => {
                conflicts.push(Conflict {
                    message: format!(
                        "app key {:?} is claimed twice: by {other} and by {me}",
                        app.key
                    ),
                    with_file: *with_file,
                });
                previous
                    .get(&app.id)
                    .filter(|p| !keys.contains_key(p.key.as_str()))
            }
        };
        if let Some(app) = candidate {
            ids.insert(&app.id, (me.clone(), false));
            keys.insert(&app.key, (me, false));
            accepted.insert(app.id.clone(), app.clone());
        }
    }
    (accepted, conflicts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(id: &str, key: &str, secret: &str, enabled: bool) -> AppConfig {
        let text = format!(
            "[[apps]]\nid = \"{id}\"\nkey = \"{key}\"\nsecret = \"{secret}\"\nenabled = {enabled}\n"
        );
        crate::config::from_toml(&text).unwrap().apps.remove(0)
    }

    #[test]
    fn replace_reports_every_kind_of_change() {
        let store = AppStore::new(&[app("1", "k1", "s1", true), app("2", "k2", "s2", true)]);
        assert_eq!(store.find_by_key("k1").unwrap().secret, "s1");
        let changes = store
            .set_file(&[app("1", "k1", "rotated", true), app("3", "k3", "s3", true)])
            .unwrap();
        assert_eq!(changes.updated, vec!["1"]);
        assert_eq!(changes.added, vec!["3"]);
        assert_eq!(changes.removed, vec!["2"]);
        assert_eq!(store.find_by_id("1").unwrap().secret, "rotated");
        assert!(store.find_by_key("k2").is_none());
        let same = [app("1", "k1", "rotated", false), app("3", "k3", "s3", true)];
        assert_eq!(store.set_file(&same).unwrap().disabled, vec!["1"]);
        assert!(store.set_file(&same).unwrap().is_empty());
    }

    fn registry(apps: &[AppConfig]) -> BTreeMap<String, AppConfig> {
        apps.iter().map(|a| (a.id.clone(), a.clone())).collect()
    }

    #[test]
    fn registry_apps_join_the_file_apps_and_load_the_store() {
        let store = AppStore::awaiting_registry(&[app("1", "k1", "s1", true)]);
        assert!(!store.is_loaded());
        assert!(store.find_by_key("k1").is_some());
        let (changes, conflicts) = store.set_registry(registry(&[app("2", "k2", "s2", true)]));
        assert!(conflicts.is_empty());
        assert_eq!(changes.added, vec!["2"]);
        assert!(store.is_loaded() && store.health().loaded);
        assert_eq!(store.remove_registry("2").removed, vec!["2"]);
        assert!(store.remove_registry("2").is_empty());
    }

    #[test]
    fn a_registry_app_may_not_claim_a_file_apps_id_or_key() {
        let store = AppStore::awaiting_registry(&[app("1", "k1", "s1", true)]);
        let (_, conflicts) = store.set_registry(registry(&[
            app("1", "other", "s", true),
            app("2", "k1", "s", true),
        ]));
        assert_eq!(conflicts.len(), 2, "{conflicts:?}");
        assert!(conflicts[0].message.contains("config file") && conflicts[0].with_file);
        assert!(store.find_by_id("2").is_none());
        assert_eq!(store.find_by_key("k1").unwrap().id, "1");
        // And a reloaded file may not claim a registry app's key: the old file apps stay.
        store.set_registry(registry(&[app("2", "k2", "s", true)]));
        let err = store
            .set_file(&[app("1", "k1", "s1", true), app("9", "k2", "s", true)])
            .unwrap_err();
        assert!(err[0].message.contains("\"k2\""), "{err:?}");
        assert!(store.find_by_id("9").is_none());
    }

    #[test]
    fn a_key_taken_behind_the_stores_back_keeps_the_last_good_versions() {
        let store = AppStore::awaiting_registry(&[]);
        store.set_registry(registry(&[
            app("5", "k5", "s", true),
            app("6", "k6", "s", true),
        ]));
        // App 3 (a lower id, new) takes app 5's key, and app 6 moves onto it too.
        let (_, conflicts) = store.set_registry(registry(&[
            app("3", "k5", "s", true),
            app("5", "k5", "s", true),
            app("6", "k5", "s", true),
        ]));
        assert_eq!(conflicts.len(), 2, "{conflicts:?}");
        assert_eq!(store.find_by_key("k5").unwrap().id, "5");
        assert_eq!(
            store.find_by_key("k6").unwrap().id,
            "6",
            "app 6 keeps its last good key"
        );
        assert!(store.find_by_id("3").is_none());
    }
}
