//! Apps: the [`App`] record and the [`AppStore`] through which sessions and the HTTP API find
//! them: a live snapshot, replaced as a whole when its source changes (the `[[apps]]` of the
//! config file, re-read on SIGHUP), with the difference reported so that the server can act
//! on it (close a disabled or deleted app's sockets).
//!
//! Owns: app lookup by key and by id, change detection. Must not touch: channels, sockets,
//! HTTP.

use std::collections::HashMap;
use std::sync::Arc;

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

/// The apps this node serves: an in-memory snapshot that sessions and the HTTP API read on
/// every connect, request and check, and that a source (the config file today, on SIGHUP)
/// replaces as a whole. Lookups never wait on I/O or a lock: the snapshot is swapped
/// atomically, so an unknown key costs one hash lookup and reaches no backing store.
#[derive(Debug, Default)]
pub struct AppStore {
    snapshot: ArcSwap<Snapshot>,
}

impl AppStore {
    /// A store holding `apps` (validated: ids and keys are unique).
    pub fn new(apps: &[AppConfig]) -> AppStore {
        let store = AppStore::default();
        store.replace(apps);
        store
    }

    /// The app with this key, if any.
    pub fn find_by_key(&self, key: &str) -> Option<Arc<App>> {
        self.snapshot.load().by_key.get(key).cloned()
    }

    /// The app with this id, if any.
    pub fn find_by_id(&self, id: &str) -> Option<Arc<App>> {
        self.snapshot.load().by_id.get(id).cloned()
    }

    /// Replaces every app with `apps` (validated) and says what changed.
    pub fn replace(&self, apps: &[AppConfig]) -> AppChanges {
        let mut next = Snapshot::default();
        for config in apps {
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
        let changes = store.replace(&[app("1", "k1", "rotated", true), app("3", "k3", "s3", true)]);
        assert_eq!(changes.updated, vec!["1"]);
        assert_eq!(changes.added, vec!["3"]);
        assert_eq!(changes.removed, vec!["2"]);
        assert_eq!(store.find_by_id("1").unwrap().secret, "rotated");
        assert!(store.find_by_key("k2").is_none());
        let changes =
            store.replace(&[app("1", "k1", "rotated", false), app("3", "k3", "s3", true)]);
        assert_eq!(changes.disabled, vec!["1"]);
        assert!(store
            .replace(&[app("1", "k1", "rotated", false), app("3", "k3", "s3", true)])
            .is_empty());
    }
}
