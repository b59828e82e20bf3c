//! The `apps` collection's document schema: reading a BSON document into an [`AppRecord`]
//! (every field checked, each problem naming its field) and writing one back.
//!
//! Owns: field names, types and defaults of a registry document. Must not touch: the
//! database connection, the snapshot.
//!
//! A document holds what an `[[apps]]` table holds, with the same names and defaults, plus
//! `name`, `created_at` and `updated_at`. Fields are checked as strictly as the config file:
//! a wrong type or an unknown field (a typo such as `client_event`) refuses the document,
//! so a mistake is reported instead of silently becoming a default.

use mongodb::bson::{self, Bson, DateTime, Document};

use crate::config::{AppConfig, WebhookConfig};

/// One registry app: its settings plus the registry's own fields.
#[derive(Debug, Clone, PartialEq)]
pub struct AppRecord {
    /// The settings, as an `[[apps]]` table would give them.
    pub config: AppConfig,
    /// A name for people; not used by the protocol.
    pub name: String,
    /// When the app was created (absent on documents written by other tools).
    pub created_at: Option<DateTime>,
    /// When the app last changed.
    pub updated_at: Option<DateTime>,
}

/// A document that is not a valid app. `Display` names the document and each field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("apps document {}: {}", .document, .problems.join("; "))]
pub struct DocumentError {
    /// The document, by `id` when it has a readable one, else by `_id`.
    pub document: String,
    /// `field: problem`, one per problem.
    pub problems: Vec<String>,
}

/// The fields a document may have besides `_id`.
pub const FIELDS: &[&str] = &[
    "id",
    "key",
    "secret",
    "name",
    "enabled",
    "client_events",
    "subscription_count",
    "authorized_connections",
    "max_connections",
    "max_client_events_per_second",
    "webhooks",
    "allowed_origins",
    "created_at",
    "updated_at",
];

/// Reads and checks one document.
pub fn parse(doc: &Document) -> Result<AppRecord, DocumentError> {
    let mut p = Problems::default();
    for field in doc.keys() {
        if field != "_id" && !FIELDS.contains(&field.as_str()) {
            p.push(field, "unknown field".into());
        }
    }
    let id = p.string(doc, "id");
    let document = match (&id, doc.get("_id")) {
        (Some(id), _) => format!("id {id:?}"),
        (None, Some(oid)) => format!("_id {oid}"),
        (None, None) => "without _id".into(),
    };
    let key = p.string(doc, "key");
    let secret = p.string(doc, "secret");
    let name = p.optional_string(doc, "name").unwrap_or_default();
    let config = AppConfig {
        id: id.unwrap_or_default(),
        key: key.unwrap_or_default(),
        secret: secret.unwrap_or_default(),
        enabled: p.bool(doc, "enabled", true),
        client_events: p.bool(doc, "client_events", false),
        subscription_count: p.bool(doc, "subscription_count", false),
        authorized_connections: p.bool(doc, "authorized_connections", false),
        max_connections: p.count(doc, "max_connections", 0, usize::MAX as u64) as usize,
        max_client_events_per_second: p.count(
            doc,
            "max_client_events_per_second",
            10,
            u32::MAX.into(),
        ) as u32,
        webhooks: p.webhooks(doc),
        allowed_origins: p.strings(doc, "allowed_origins"),
    };
    let created_at = p.date(doc, "created_at");
    let updated_at = p.date(doc, "updated_at");
    // Semantic checks shared with `[[apps]]` (empty values, webhook URLs, origin patterns),
    // for the fields that were readable at all.
    if p.0.is_empty() {
        p.0.extend(config.problems());
    }
    if p.0.is_empty() {
        Ok(AppRecord {
            config,
            name,
            created_at,
            updated_at,
        })
    } else {
        Err(DocumentError {
            document,
            problems: p.0,
        })
    }
}

/// Writes a record as a document (without `_id`, which the database assigns).
pub fn to_document(record: &AppRecord) -> Document {
    let c = &record.config;
    let webhooks: Vec<Bson> = c
        .webhooks
        .iter()
        .map(|h| {
            Bson::Document(bson::doc! {
                "url": &h.url,
                "event_types": h.event_types.clone(),
            })
        })
        .collect();
    let mut doc = bson::doc! {
        "id": &c.id,
        "key": &c.key,
        "secret": &c.secret,
        "name": &record.name,
        "enabled": c.enabled,
        "client_events": c.client_events,
        "subscription_count": c.subscription_count,
        "authorized_connections": c.authorized_connections,
        "max_connections": c.max_connections as i64,
        "max_client_events_per_second": i64::from(c.max_client_events_per_second),
        "webhooks": webhooks,
        "allowed_origins": c.allowed_origins.clone(),
    };
    if let Some(at) = record.created_at {
        doc.insert("created_at", at);
    }
    if let Some(at) = record.updated_at {
        doc.insert("updated_at", at);
    }
    doc
}

/// Problems found so far, with typed getters that record one when a field is wrong.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, field: &str, problem: String) {
        self.0.push(format!("{field}: {problem}"));
    }

    fn wrong(&mut self, field: &str, expected: &str, found: &Bson) {
        self.push(
            field,
            format!("expected {expected}, found {}", type_name(found)),
        );
    }

    fn string(&mut self, doc: &Document, field: &str) -> Option<String> {
        match doc.get(field) {
            None => {
                self.push(field, "missing".into());
                None
            }
            Some(Bson::String(s)) => Some(s.clone()),
            Some(other) => {
                self.wrong(field, "a string", other);
                None
            }
        }
    }

    fn optional_string(&mut self, doc: &Document, field: &str) -> Option<String> {
        match doc.get(field) {
            None | Some(Bson::Null) => None,
            Some(Bson::String(s)) => Some(s.clone()),
            Some(other) => {
                self.wrong(field, "a string", other);
                None
            }
        }
    }

    fn bool(&mut self, doc: &Document, field: &str, default: bool) -> bool {
        match doc.get(field) {
            None | Some(Bson::Null) => default,
            Some(Bson::Boolean(b)) => *b,
            Some(other) => {
                self.wrong(field, "true or false", other);
                default
            }
        }
    }

    /// A non-negative whole number up to `max`. The mongo shell writes numbers as doubles,
    /// so a double with no fraction is accepted too.
    fn count(&mut self, doc: &Document, field: &str, default: u64, max: u64) -> u64 {
        let value = match doc.get(field) {
            None | Some(Bson::Null) => return default,
            Some(Bson::Int32(n)) => i128::from(*n),
            Some(Bson::Int64(n)) => i128::from(*n),
            Some(Bson::Double(d)) if d.fract() == 0.0 && d.is_finite() => *d as i128,
            Some(other) => {
                self.wrong(field, "a whole number", other);
                return default;
            }
        };
        if value < 0 || value > i128::from(max) {
            self.push(field, format!("must be between 0 and {max}, found {value}"));
            return default;
        }
        value as u64
    }

    fn strings(&mut self, doc: &Document, field: &str) -> Vec<String> {
        match doc.get(field) {
            None | Some(Bson::Null) => Vec::new(),
            Some(Bson::Array(items)) => self.string_items(field, items),
            Some(other) => {
                self.wrong(field, "an array of strings", other);
                Vec::new()
            }
        }
    }

    fn string_items(&mut self, field: &str, items: &[Bson]) -> Vec<String> {
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item {
                Bson::String(s) => out.push(s.clone()),
                other => self.wrong(&format!("{field}[{i}]"), "a string", other),
            }
        }
        out
    }

    fn webhooks(&mut self, doc: &Document) -> Vec<WebhookConfig> {
        let items = match doc.get("webhooks") {
            None | Some(Bson::Null) => return Vec::new(),
            Some(Bson::Array(items)) => items,
            Some(other) => {
                self.wrong("webhooks", "an array of {url, event_types}", other);
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let field = format!("webhooks[{i}]");
            let Bson::Document(hook) = item else {
                self.wrong(&field, "a document {url, event_types}", item);
                continue;
            };
            for k in hook.keys() {
                if k != "url" && k != "event_types" {
                    self.push(&format!("{field}.{k}"), "unknown field".into());
                }
            }
            let url = match hook.get("url") {
                Some(Bson::String(s)) => s.clone(),
                Some(other) => {
                    self.wrong(&format!("{field}.url"), "a string", other);
                    continue;
                }
                None => {
                    self.push(&format!("{field}.url"), "missing".into());
                    continue;
                }
            };
            let event_types = match hook.get("event_types") {
                None | Some(Bson::Null) => Vec::new(),
                Some(Bson::Array(types)) => {
                    self.string_items(&format!("{field}.event_types"), types)
                }
                Some(other) => {
                    self.wrong(
                        &format!("{field}.event_types"),
                        "an array of strings",
                        other,
                    );
                    Vec::new()
                }
            };
            out.push(WebhookConfig { url, event_types });
        }
        out
    }

    fn date(&mut self, doc: &Document, field: &str) -> Option<DateTime> {
        match doc.get(field) {
            None | Some(Bson::Null) => None,
            Some(Bson::DateTime(at)) => Some(*at),
            Some(other) => {
                self.wrong(field, "a date", other);
                None
            }
        }
    }
}

fn type_name(value: &Bson) -> &'static str {
    match value {
        Bson::Double(_) => "a double",
        Bson::String(_) => "a string",
        Bson::Array(_) => "an array",
        Bson::Document(_) => "a document",
        Bson::Boolean(_) => "a boolean",
        Bson::Null => "null",
        Bson::Int32(_) | Bson::Int64(_) => "an integer",
        Bson::DateTime(_) => "a date",
        Bson::ObjectId(_) => "an ObjectId",
        _ => "another BSON type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    fn valid() -> Document {
        doc! {"id": "1234567", "key": "k", "secret": "s", "name": "Shop"}
    }

    #[test]
    fn defaults_match_the_config_file() {
        let record = parse(&valid()).unwrap();
        let from_file =
            crate::config::from_toml("[[apps]]\nid = \"1234567\"\nkey = \"k\"\nsecret = \"s\"\n")
                .unwrap()
                .apps
                .remove(0);
        assert_eq!(format!("{:?}", record.config), format!("{from_file:?}"));
        assert_eq!(record.name, "Shop");
    }

    #[test]
    fn round_trips() {
        let mut record = parse(&valid()).unwrap();
        record.config.client_events = true;
        record.config.max_connections = 7;
        record.config.webhooks = vec![WebhookConfig {
            url: "https://h/x".into(),
            event_types: vec!["member_added".into()],
        }];
        record.config.allowed_origins = vec!["*.example.com".into()];
        record.created_at = Some(DateTime::from_millis(1_000));
        assert_eq!(parse(&to_document(&record)).unwrap(), record);
    }

    #[test]
    fn every_problem_names_its_field_and_the_document() {
        let mut doc = valid();
        doc.insert("enabled", "yes");
        doc.insert("max_connections", -1);
        doc.insert("client_event", true);
        doc.insert("webhooks", vec![Bson::Document(doc! {"url": 5})]);
        doc.remove("secret");
        let err = parse(&doc).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("apps document id \"1234567\""), "{text}");
        for needle in [
            "enabled: expected true or false, found a string",
            "max_connections: must be between 0",
            "client_event: unknown field",
            "webhooks[0].url: expected a string",
            "secret: missing",
        ] {
            assert!(text.contains(needle), "{needle} not in {text}");
        }
    }

    #[test]
    fn shell_doubles_are_counts_and_semantics_are_checked() {
        let mut doc = valid();
        doc.insert("max_connections", 100.0);
        assert_eq!(parse(&doc).unwrap().config.max_connections, 100);
        doc.insert("max_connections", 1.5);
        assert!(parse(&doc).is_err());
        let mut doc = valid();
        doc.insert("webhooks", vec![Bson::Document(doc! {"url": "ftp://x"})]);
        let text = parse(&doc).unwrap_err().to_string();
        assert!(
            text.contains("webhooks[0].url: must start with http"),
            "{text}"
        );
        let text = parse(&doc! {"_id": 1, "key": 2}).unwrap_err().to_string();
        assert!(text.contains("apps document _id 1") && text.contains("key: expected a string"));
    }
}
