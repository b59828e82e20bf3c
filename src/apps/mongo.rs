//! The MongoDB app registry: the `apps` collection through the official driver. Reads,
//! writes (for `pushi apps`), indexes and the change stream.
//!
//! Owns: the client and its options, the collection's indexes, mapping driver errors to
//! messages that never show the URI's password. Must not touch: the snapshot (that is
//! [`super::sync`]), the CLI's output.
//!
//! Targets MongoDB 5.0 and later (change streams with `fullDocument: "updateLookup"`, which a
//! replica set or sharded cluster offers; a standalone server is followed by polling).

use std::time::Duration;

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::change_stream::event::{ChangeStreamEvent, ResumeToken};
use mongodb::change_stream::ChangeStream;
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, FullDocumentType, IndexOptions};
use mongodb::{Client, Collection, IndexModel};

use super::document::{self, AppRecord, DocumentError};
use crate::config::{redact_uri, MongoConfig};

/// The collection holding the apps.
pub const COLLECTION: &str = "apps";

/// What went wrong talking to the registry.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The URI does not parse, or names options the driver refuses.
    #[error("mongodb.uri {uri}: {why}")]
    Uri {
        /// The URI, password redacted.
        uri: String,
        /// The driver's message.
        why: String,
    },
    /// An id or key already in use (unique index).
    #[error("duplicate app: {0}")]
    Duplicate(String),
    /// The server could not be reached or failed the operation.
    #[error("MongoDB at {uri}: {why}")]
    Database {
        /// The URI, password redacted.
        uri: String,
        /// The driver's message.
        why: String,
    },
}

impl RegistryError {
    /// Whether the server answered that it offers no change streams (a standalone server),
    /// as opposed to being unreachable.
    pub fn no_change_streams(&self) -> bool {
        match self {
            RegistryError::Database { why, .. } => {
                why.contains("only supported on replica sets")
                    || why.contains("$changeStream")
                    || why.contains("CommandNotSupported")
            }
            _ => false,
        }
    }
}

/// A client on `[mongodb]`, shared by the registry and the MongoDB store (the driver pools
/// connections and finds the primary again after a failover).
#[derive(Debug, Clone)]
pub struct Connection {
    /// The driver's client.
    pub client: Client,
    /// `mongodb.database`.
    pub database: String,
    /// The URI, password redacted.
    pub uri: String,
    /// The URI's password, scrubbed from every message.
    pub password: Option<String>,
}

impl Connection {
    /// Parses the URI and builds the client; no server is contacted yet.
    pub async fn open(config: &MongoConfig) -> Result<Connection, RegistryError> {
        let uri = redact_uri(&config.uri);
        let mut options =
            ClientOptions::parse(&config.uri)
                .await
                .map_err(|e| RegistryError::Uri {
                    uri: uri.clone(),
                    why: e.kind.to_string(),
                })?;
        let password = options.credential.as_ref().and_then(|c| c.password.clone());
        options.app_name = Some("pushi".into());
        options.connect_timeout = Some(Duration::from_secs(config.connect_timeout));
        options.server_selection_timeout =
            Some(Duration::from_secs(config.server_selection_timeout));
        let client = Client::with_options(options).map_err(|e| RegistryError::Uri {
            uri: uri.clone(),
            why: e.kind.to_string(),
        })?;
        Ok(Connection {
            client,
            database: config.database.clone(),
            uri,
            password,
        })
    }

    /// `message` with the URI's password replaced by `***` (driver messages name hosts, not
    /// passwords; this makes sure of it).
    pub fn scrub(&self, message: &str) -> String {
        match &self.password {
            Some(p) if !p.is_empty() => message.replace(p.as_str(), "***"),
            _ => message.to_string(),
        }
    }
}

/// The registry: the `apps` collection.
#[derive(Debug, Clone)]
pub struct Registry {
    apps: Collection<Document>,
    uri: String,
    password: Option<String>,
}

impl Registry {
    /// Parses the URI and builds the client; no server is contacted yet.
    pub async fn open(config: &MongoConfig) -> Result<Registry, RegistryError> {
        Ok(Registry::on(&Connection::open(config).await?))
    }

    /// The registry over an open connection.
    pub fn on(connection: &Connection) -> Registry {
        Registry {
            apps: connection
                .client
                .database(&connection.database)
                .collection(COLLECTION),
            uri: connection.uri.clone(),
            password: connection.password.clone(),
        }
    }

    /// The URI, password redacted.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn error(&self, err: mongodb::error::Error) -> RegistryError {
        if let ErrorKind::Write(WriteFailure::WriteError(w)) = err.kind.as_ref() {
            if w.code == 11000 {
                return RegistryError::Duplicate(self.scrub(&w.message));
            }
        }
        RegistryError::Database {
            uri: self.uri.clone(),
            why: self.scrub(&err.kind.to_string()),
        }
    }

    /// Driver messages name hosts, not passwords; this makes sure of it.
    fn scrub(&self, message: &str) -> String {
        match &self.password {
            Some(p) if !p.is_empty() => message.replace(p.as_str(), "***"),
            _ => message.to_string(),
        }
    }

    /// Creates the unique indexes on `id` and `key` (a no-op when they exist). Fails when
    /// the collection already holds a duplicate, naming it.
    pub async fn ensure_indexes(&self) -> Result<(), RegistryError> {
        for field in ["id", "key"] {
            let index = IndexModel::builder()
                .keys(doc! { field: 1 })
                .options(IndexOptions::builder().unique(true).build())
                .build();
            self.apps.create_index(index).await.map_err(|e| {
                let err = self.error(e);
                match err {
                    RegistryError::Database { why, .. } if why.contains("E11000") => {
                        RegistryError::Duplicate(format!("cannot index {field}: {why}"))
                    }
                    other => other,
                }
            })?;
        }
        Ok(())
    }

    /// Every document, each read and checked, with its `_id`.
    pub async fn load(&self) -> Result<Vec<Loaded>, RegistryError> {
        let cursor = self.apps.find(doc! {}).await.map_err(|e| self.error(e))?;
        let docs: Vec<Document> = cursor.try_collect().await.map_err(|e| self.error(e))?;
        Ok(docs.iter().map(Loaded::from_document).collect())
    }

    /// One app by id.
    pub async fn get(&self, id: &str) -> Result<Option<Loaded>, RegistryError> {
        let found = self
            .apps
            .find_one(doc! { "id": id })
            .await
            .map_err(|e| self.error(e))?;
        Ok(found.as_ref().map(Loaded::from_document))
    }

    /// Inserts a new app, stamping `created_at` and `updated_at`.
    pub async fn insert(&self, record: &mut AppRecord) -> Result<(), RegistryError> {
        let now = DateTime::now();
        record.created_at = Some(now);
        record.updated_at = Some(now);
        self.apps
            .insert_one(document::to_document(record))
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Replaces the app with `record.config.id`, stamping `updated_at`; false when there is
    /// no such app.
    pub async fn replace(&self, record: &mut AppRecord) -> Result<bool, RegistryError> {
        record.updated_at = Some(DateTime::now());
        let result = self
            .apps
            .replace_one(
                doc! { "id": &record.config.id },
                document::to_document(record),
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(result.matched_count == 1)
    }

    /// Deletes the app; false when there is no such app.
    pub async fn delete(&self, id: &str) -> Result<bool, RegistryError> {
        let result = self
            .apps
            .delete_one(doc! { "id": id })
            .await
            .map_err(|e| self.error(e))?;
        Ok(result.deleted_count == 1)
    }

    /// Opens a change stream on the collection, after `resume` when given. Updates carry the
    /// whole current document.
    pub async fn watch(
        &self,
        resume: Option<ResumeToken>,
    ) -> Result<ChangeStream<ChangeStreamEvent<Document>>, RegistryError> {
        self.apps
            .watch()
            .full_document(FullDocumentType::UpdateLookup)
            .resume_after(resume)
            .await
            .map_err(|e| self.error(e))
    }

    /// Maps a driver error met while reading a change stream.
    pub fn stream_error(&self, err: mongodb::error::Error) -> RegistryError {
        self.error(err)
    }
}

/// One document as read: its `_id` and either the app or what is wrong with it.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The document's `_id`, which delete events name.
    pub oid: Bson,
    /// The app's id, when the document has a readable one.
    pub id: Option<String>,
    /// The app, or what is wrong.
    pub record: Result<AppRecord, DocumentError>,
}

impl Loaded {
    /// Reads one document.
    pub fn from_document(doc: &Document) -> Loaded {
        Loaded {
            oid: doc.get("_id").cloned().unwrap_or(Bson::Null),
            id: doc.get_str("id").ok().map(str::to_string),
            record: document::parse(doc),
        }
    }
}
