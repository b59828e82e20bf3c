//! `pushi apps`: create, list, show, update, rotate-secret, enable, disable and delete the
//! apps of the MongoDB registry. Running nodes see each change through their change stream
//! (or poll) within seconds; nothing here talks to them.
//!
//! Owns: the actions, their settings flags, credential generation (the OS CSPRNG), the
//! text and `--json` output. Must not touch: the server. Secrets are printed to stdout when
//! asked for and never logged.

use std::io::Write;

use clap::Subcommand;
use mongodb::bson::DateTime;
use rand::TryRngCore;
use serde_json::{json, Value};

use super::exit;
use crate::apps::document::AppRecord;
use crate::apps::mongo::{Loaded, Registry, RegistryError};
use crate::config::{AppConfig, Config, WebhookConfig};

/// What `pushi apps` does.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Create an app with a new id, key and secret (printed once, here).
    Create {
        /// A name for people.
        #[arg(long)]
        name: String,
        /// Settings.
        #[command(flatten)]
        settings: Settings,
    },
    /// List the apps (secrets only with --json).
    List,
    /// Show one app, with its secret.
    Show {
        /// App id.
        id: String,
    },
    /// Change an app's settings (only those given).
    Update {
        /// App id.
        id: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        /// Settings.
        #[command(flatten)]
        settings: Settings,
    },
    /// Give an app a new secret: signatures made with the old one are refused from then on.
    RotateSecret {
        /// App id.
        id: String,
    },
    /// Enable an app.
    Enable {
        /// App id.
        id: String,
    },
    /// Disable an app: its connections are closed with 4003, new ones refused.
    Disable {
        /// App id.
        id: String,
    },
    /// Delete an app: its connections are closed with 4001.
    Delete {
        /// App id.
        id: String,
    },
}

/// Per-app settings, with the names and meanings of `[[apps]]` keys.
#[derive(Debug, Default, clap::Args)]
pub struct Settings {
    /// Allow client-* events on private and presence channels.
    #[arg(long, value_name = "BOOL")]
    pub client_events: Option<bool>,
    /// Send pusher_internal:subscription_count to subscribers.
    #[arg(long, value_name = "BOOL")]
    pub subscription_count: Option<bool>,
    /// Require a sign-in within server.authorization_timeout.
    #[arg(long, value_name = "BOOL")]
    pub authorized_connections: Option<bool>,
    /// Most concurrent connections (0 = unlimited).
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Client events one connection may send per second.
    #[arg(long, value_name = "N")]
    pub max_client_events_per_second: Option<u32>,
    /// A webhook: "URL" for every event type, or "URL TYPE,TYPE" (repeatable; replaces the
    /// app's webhooks).
    #[arg(long = "webhook", value_name = "URL[ TYPES]")]
    pub webhooks: Vec<String>,
    /// Remove every webhook.
    #[arg(long, conflicts_with = "webhooks")]
    pub no_webhooks: bool,
    /// A browser origin allowed to connect (repeatable; replaces the app's list).
    #[arg(long = "allowed-origin", value_name = "PATTERN")]
    pub allowed_origins: Vec<String>,
    /// Allow every origin again.
    #[arg(long, conflicts_with = "allowed_origins")]
    pub any_origin: bool,
}

impl Settings {
    /// Applies the given settings to `app`.
    fn apply(&self, app: &mut AppConfig) {
        if let Some(v) = self.client_events {
            app.client_events = v;
        }
        if let Some(v) = self.subscription_count {
            app.subscription_count = v;
        }
        if let Some(v) = self.authorized_connections {
            app.authorized_connections = v;
        }
        if let Some(v) = self.max_connections {
            app.max_connections = v;
        }
        if let Some(v) = self.max_client_events_per_second {
            app.max_client_events_per_second = v;
        }
        if self.no_webhooks {
            app.webhooks.clear();
        }
        if !self.webhooks.is_empty() {
            app.webhooks = self
                .webhooks
                .iter()
                .map(|spec| {
                    let mut parts = spec.split_whitespace();
                    WebhookConfig {
                        url: parts.next().unwrap_or_default().to_string(),
                        event_types: parts
                            .flat_map(|types| types.split(','))
                            .filter(|t| !t.is_empty())
                            .map(str::to_string)
                            .collect(),
                    }
                })
                .collect();
        }
        if self.any_origin {
            app.allowed_origins.clear();
        }
        if !self.allowed_origins.is_empty() {
            app.allowed_origins = self.allowed_origins.clone();
        }
    }
}

/// A failed action: its exit code and message.
struct Failure(i32, String);

impl From<RegistryError> for Failure {
    fn from(err: RegistryError) -> Failure {
        Failure(exit::FAILED, err.to_string())
    }
}

/// Runs one action against the registry of `config`; returns the exit code.
pub async fn run(config: &Config, source: &str, action: Action, json: bool) -> i32 {
    let Some(mongo) = &config.mongodb else {
        eprintln!(
            "pushi apps: no [mongodb] section in {source}: apps come from the [[apps]] of that \
             file (edit it and send SIGHUP to reload)"
        );
        return exit::NO_REGISTRY;
    };
    let result = async {
        let registry = Registry::open(mongo).await?;
        act(&registry, config, action, json).await
    }
    .await;
    match result {
        Ok(()) => exit::OK,
        Err(Failure(code, message)) => {
            eprintln!("pushi apps: {message}");
            code
        }
    }
}

async fn act(
    registry: &Registry,
    config: &Config,
    action: Action,
    json: bool,
) -> Result<(), Failure> {
    match action {
        Action::Create { name, settings } => {
            registry.ensure_indexes().await?;
            let record = create(registry, config, name, &settings).await?;
            print_app(&record, json, true);
            Ok(())
        }
        Action::List => {
            let mut loaded = registry.load().await?;
            loaded.sort_by(|a, b| a.id.cmp(&b.id));
            let mut apps = Vec::new();
            for Loaded { record, .. } in loaded {
                match record {
                    Ok(record) => apps.push(record),
                    Err(err) => eprintln!("pushi apps: {err}"),
                }
            }
            if json {
                let list: Vec<Value> = apps.iter().map(app_json).collect();
                println!("{}", Value::Array(list));
            } else {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{:<12} {:<24} {:<8} NAME", "ID", "KEY", "ENABLED");
                for app in &apps {
                    let c = &app.config;
                    let _ = writeln!(
                        out,
                        "{:<12} {:<24} {:<8} {}",
                        c.id, c.key, c.enabled, app.name
                    );
                }
            }
            Ok(())
        }
        Action::Show { id } => {
            let record = fetch(registry, &id).await?;
            print_app(&record, json, true);
            Ok(())
        }
        Action::Update { id, name, settings } => {
            change(registry, &id, json, false, |record| {
                if let Some(name) = &name {
                    record.name = name.clone();
                }
                settings.apply(&mut record.config);
            })
            .await
        }
        Action::RotateSecret { id } => {
            let secret = random_hex(16)?;
            change(registry, &id, json, true, |record| {
                record.config.secret = secret.clone()
            })
            .await
        }
        Action::Enable { id } => {
            change(registry, &id, json, false, |r| r.config.enabled = true).await
        }
        Action::Disable { id } => {
            change(registry, &id, json, false, |r| r.config.enabled = false).await
        }
        Action::Delete { id } => {
            if !registry.delete(&id).await? {
                return Err(not_found(&id));
            }
            if json {
                println!("{}", json!({"id": id, "deleted": true}));
            } else {
                println!("deleted app {id}");
            }
            Ok(())
        }
    }
}

fn not_found(id: &str) -> Failure {
    Failure(exit::NOT_FOUND, format!("no app with id {id:?}"))
}

async fn fetch(registry: &Registry, id: &str) -> Result<AppRecord, Failure> {
    let loaded = registry.get(id).await?.ok_or_else(|| not_found(id))?;
    loaded.record.map_err(|err| {
        Failure(
            exit::FAILED,
            format!("{err} (fix the document in the database, e.g. with mongosh)"),
        )
    })
}

/// Reads the app, changes it, checks it and writes it back.
async fn change(
    registry: &Registry,
    id: &str,
    json: bool,
    with_secret: bool,
    edit: impl FnOnce(&mut AppRecord),
) -> Result<(), Failure> {
    let mut record = fetch(registry, id).await?;
    edit(&mut record);
    check(&record.config)?;
    if !registry.replace(&mut record).await? {
        return Err(not_found(id));
    }
    print_app(&record, json, with_secret);
    Ok(())
}

fn check(app: &AppConfig) -> Result<(), Failure> {
    let problems = app.problems();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure(
            exit::USAGE,
            format!("invalid settings: {}", problems.join("; ")),
        ))
    }
}

/// Creates an app with fresh credentials, drawing again on the (unlikely) clash with an
/// existing id or key, in the registry or in the config file's `[[apps]]`.
async fn create(
    registry: &Registry,
    config: &Config,
    name: String,
    settings: &Settings,
) -> Result<AppRecord, Failure> {
    for _ in 0..8 {
        let id = random_id()?;
        let key = random_hex(10)?;
        if config.apps.iter().any(|a| a.id == id || a.key == key) {
            continue;
        }
        let mut app = AppConfig::new(id, key, random_hex(16)?);
        settings.apply(&mut app);
        check(&app)?;
        let mut record = AppRecord {
            config: app,
            name: name.clone(),
            created_at: None,
            updated_at: None,
        };
        match registry.insert(&mut record).await {
            Ok(()) => return Ok(record),
            Err(RegistryError::Duplicate(_)) => continue,
            Err(err) => return Err(err.into()),
        }
    }
    Err(Failure(
        exit::FAILED,
        "could not draw an unused id and key".into(),
    ))
}

/// A 7-digit numeric id, like Pusher's (the Python SDK wants ids that look numeric).
fn random_id() -> Result<String, Failure> {
    let mut bytes = [0u8; 8];
    os_random(&mut bytes)?;
    Ok((1_000_000 + u64::from_le_bytes(bytes) % 9_000_000).to_string())
}

/// `n` random bytes from the OS, as lowercase hex.
fn random_hex(n: usize) -> Result<String, Failure> {
    let mut bytes = vec![0u8; n];
    os_random(&mut bytes)?;
    Ok(hex::encode(bytes))
}

fn os_random(buf: &mut [u8]) -> Result<(), Failure> {
    rand::rngs::OsRng
        .try_fill_bytes(buf)
        .map_err(|e| Failure(exit::FAILED, format!("the OS random source failed: {e}")))
}

fn date(at: Option<DateTime>) -> Value {
    at.and_then(|at| at.try_to_rfc3339_string().ok())
        .map(Value::String)
        .unwrap_or(Value::Null)
}

/// An app as `--json` prints it.
fn app_json(record: &AppRecord) -> Value {
    let c = &record.config;
    json!({
        "id": c.id,
        "key": c.key,
        "secret": c.secret,
        "name": record.name,
        "enabled": c.enabled,
        "client_events": c.client_events,
        "subscription_count": c.subscription_count,
        "authorized_connections": c.authorized_connections,
        "max_connections": c.max_connections,
        "max_client_events_per_second": c.max_client_events_per_second,
        "webhooks": c.webhooks,
        "allowed_origins": c.allowed_origins,
        "created_at": date(record.created_at),
        "updated_at": date(record.updated_at),
    })
}

fn print_app(record: &AppRecord, json: bool, with_secret: bool) {
    if json {
        println!("{}", app_json(record));
        return;
    }
    let c = &record.config;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "id:       {}", c.id);
    let _ = writeln!(out, "name:     {}", record.name);
    let _ = writeln!(out, "key:      {}", c.key);
    if with_secret {
        let _ = writeln!(out, "secret:   {}", c.secret);
    }
    let _ = writeln!(out, "enabled:  {}", c.enabled);
    let _ = writeln!(
        out,
        "settings: client_events={} subscription_count={} authorized_connections={} \
         max_connections={} max_client_events_per_second={}",
        c.client_events,
        c.subscription_count,
        c.authorized_connections,
        c.max_connections,
        c.max_client_events_per_second
    );
    for hook in &c.webhooks {
        let types = if hook.event_types.is_empty() {
            "all events".to_string()
        } else {
            hook.event_types.join(",")
        };
        let _ = writeln!(out, "webhook:  {} ({types})", hook.url);
    }
    if !c.allowed_origins.is_empty() {
        let _ = writeln!(out, "origins:  {}", c.allowed_origins.join(" "));
    }
}
