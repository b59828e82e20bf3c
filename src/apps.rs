//! Apps: the [`App`] record and the [`AppStore`] seam through which sessions and the HTTP API
//! find them. [`StaticAppStore`] serves the `[[apps]]` of the config file.
//!
//! Owns: app lookup by key and by id. Must not touch: channels, sockets, HTTP.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{AppConfig, WebhookConfig};
use crate::origin::OriginPattern;

/// One Pusher app, as the rest of the server sees it.
#[derive(Debug, Clone)]
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

/// Finds apps. Implementations must be cheap to call on every connection and API request
/// (cache if the backing store is remote).
#[async_trait]
pub trait AppStore: Send + Sync + std::fmt::Debug {
    /// The app with this key, if any.
    async fn find_by_key(&self, key: &str) -> Option<Arc<App>>;
    /// The app with this id, if any.
    async fn find_by_id(&self, id: &str) -> Option<Arc<App>>;
    /// Every app.
    async fn all(&self) -> Vec<Arc<App>>;
}

/// Apps from the config file, fixed for the life of the process.
#[derive(Debug, Default)]
pub struct StaticAppStore {
    by_key: HashMap<String, Arc<App>>,
    by_id: HashMap<String, Arc<App>>,
}

impl StaticAppStore {
    /// Builds the store from `[[apps]]` (validated: ids and keys are unique).
    pub fn new(apps: &[AppConfig]) -> StaticAppStore {
        let mut store = StaticAppStore::default();
        for config in apps {
            let app = Arc::new(App::from(config));
            store.by_key.insert(app.key.clone(), app.clone());
            store.by_id.insert(app.id.clone(), app);
        }
        store
    }
}

#[async_trait]
impl AppStore for StaticAppStore {
    async fn find_by_key(&self, key: &str) -> Option<Arc<App>> {
        self.by_key.get(key).cloned()
    }

    async fn find_by_id(&self, id: &str) -> Option<Arc<App>> {
        self.by_id.get(id).cloned()
    }

    async fn all(&self) -> Vec<Arc<App>> {
        self.by_id.values().cloned().collect()
    }
}
