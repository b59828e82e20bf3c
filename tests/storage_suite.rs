//! One contract, every backend: the stored-event and offline-subscription traits
//! (`pushi::storage`) checked against the embedded store (redb in a scratch directory) and the
//! MongoDB store (SecantusDB over TCP with the official driver, one server per test). Each case is a generic async
//! function over a [`Harness`]; the `suite!` macro runs all of them for one backend.

mod support;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use pushi::storage::{self, ChannelRange, NewEvent, Order, Retention, Storage, StoredEvent};
use serde_json::value::RawValue;

/// Opens one backend, and opens it again over the same data.
trait Harness: Sized {
    fn open() -> impl Future<Output = Self>;
    fn storage(&self) -> &Storage;
    /// Drops the store and opens a new one over the same data.
    fn reopen(self) -> Pin<Box<dyn Future<Output = Self>>>;
}

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_string()).unwrap()
}

fn event(channel: &str, name: &str, ts: u64) -> NewEvent {
    NewEvent {
        channel: channel.into(),
        event: name.into(),
        data: raw(&format!("\"{name}\"")),
        user_id: None,
        timestamp_ms: ts,
    }
}

async fn append(s: &Storage, app: &str, events: Vec<NewEvent>) -> Vec<u64> {
    s.events
        .append(app, events, Box::new(|_| {}))
        .await
        .expect("append")
}

async fn publish(s: &Storage, app: &str, channel: &str, name: &str) -> u64 {
    append(s, app, vec![event(channel, name, storage::now_ms())]).await[0]
}

fn names(events: &[StoredEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event.as_str()).collect()
}

fn all(channel: &str) -> Vec<ChannelRange> {
    vec![ChannelRange {
        channel: channel.into(),
        ids: 0..u64::MAX,
    }]
}

async fn ids_increase<H: Harness>() {
    let h = H::open().await;
    let s = h.storage();
    let ids = append(
        s,
        "1",
        vec![event("a", "x", 1), event("b", "y", 2), event("a", "z", 3)],
    )
    .await;
    assert_eq!(ids.len(), 3);
    assert!(ids[0] >= 1 && ids[0] < ids[1] && ids[1] < ids[2], "{ids:?}");
    // Another app counts on its own.
    let other = append(s, "2", vec![event("a", "x", 1)]).await;
    assert!(other[0] >= 1);
    // Concurrent appends share commits but never an id.
    let mut tasks = Vec::new();
    for i in 0..64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.events
                .append(
                    "1",
                    vec![event("c", &format!("e{i}"), 10)],
                    Box::new(|_| {}),
                )
                .await
                .unwrap()[0]
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    got.sort_unstable();
    got.dedup();
    assert_eq!(got.len(), 64, "every concurrent append got its own id");
    assert!(got[0] > ids[2]);
    let stored = s
        .events
        .events("1", all("c"), 100, Order::OldestFirst)
        .await
        .unwrap();
    assert_eq!(stored.len(), 64);
    let h = h.reopen().await;
    let after = publish(h.storage(), "1", "a", "after").await;
    assert!(after > got[63], "ids keep increasing across a reopen");
}

async fn reads_ranges_in_both_orders<H: Harness>() {
    let h = H::open().await;
    let s = h.storage();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(publish(s, "1", "a", &format!("a{i}")).await);
        ids.push(publish(s, "1", "b", &format!("b{i}")).await);
    }
    let both = vec![
        ChannelRange {
            channel: "a".into(),
            ids: 0..u64::MAX,
        },
        ChannelRange {
            channel: "b".into(),
            ids: ids[4]..ids[8],
        },
    ];
    let newest = s
        .events
        .events("1", both.clone(), 4, Order::NewestFirst)
        .await
        .unwrap();
    assert_eq!(names(&newest), ["a4", "b3", "a3", "b2"]);
    let oldest = s
        .events
        .events("1", both, 3, Order::OldestFirst)
        .await
        .unwrap();
    assert_eq!(names(&oldest), ["a0", "a1", "a2"]);
    let e = &newest[0];
    assert_eq!(e.channel, "a");
    assert_eq!(e.data.get(), "\"a4\"");
    assert_eq!(e.id, ids[8]);
    assert!(e.timestamp_ms > 0);
    // Raw JSON data (client events) and the sender survive as they are.
    let mut client = event("private-c", "client-x", 7);
    client.data = raw(r#"{"n":[1,2]}"#);
    client.user_id = Some("u1".into());
    append(s, "1", vec![client]).await;
    let got = s
        .events
        .events("1", all("private-c"), 1, Order::NewestFirst)
        .await
        .unwrap();
    assert_eq!(got[0].data.get(), r#"{"n":[1,2]}"#);
    assert_eq!(got[0].user_id.as_deref(), Some("u1"));
    assert_eq!(got[0].timestamp_ms, 7);
    // Other apps and unknown channels read empty.
    assert!(s
        .events
        .events("2", all("a"), 10, Order::NewestFirst)
        .await
        .unwrap()
        .is_empty());
}

async fn subscriptions_select_what_was_published_meanwhile<H: Harness>() {
    let h = H::open().await;
    let s = h.storage();
    let subs = &s.subscriptions;
    publish(s, "1", "news", "before").await;
    assert!(subs.subscribe("1", "u", "news").await.unwrap());
    assert!(
        !subs.subscribe("1", "u", "news").await.unwrap(),
        "subscribe is idempotent"
    );
    publish(s, "1", "news", "during1").await;
    assert!(subs.subscribe("1", "u", "sport").await.unwrap());
    publish(s, "1", "sport", "during2").await;
    publish(s, "1", "other", "not-subscribed").await;
    assert!(subs.unsubscribe("1", "u", "news").await.unwrap());
    assert!(
        !subs.unsubscribe("1", "u", "news").await.unwrap(),
        "unsubscribe is idempotent"
    );
    publish(s, "1", "news", "after").await;
    assert!(subs.subscribe("1", "u", "news").await.unwrap());
    publish(s, "1", "news", "again").await;

    assert_eq!(
        storage::user_channels(s, "1", "u").await.unwrap(),
        ["news", "sport"]
    );
    let events = storage::user_events(s, "1", "u", None, 10).await.unwrap();
    assert_eq!(names(&events), ["again", "during2", "during1"]);
    // `before` pages back from a cursor.
    let page = storage::user_events(s, "1", "u", Some(events[0].id), 1)
        .await
        .unwrap();
    assert_eq!(names(&page), ["during2"]);
    // Events stored while subscribed stay the user's after the unsubscribe.
    assert!(subs.unsubscribe("1", "u", "sport").await.unwrap());
    let events = storage::user_events(s, "1", "u", None, 10).await.unwrap();
    assert_eq!(names(&events), ["again", "during2", "during1"]);
    assert_eq!(storage::user_channels(s, "1", "u").await.unwrap(), ["news"]);
    let user = subs.user("1", "u").await.unwrap();
    let news = user.iter().find(|c| c.channel == "news").unwrap();
    assert_eq!(news.intervals.len(), 2);
    assert!(news.intervals[0].to.is_some() && news.intervals[1].to.is_none());

    // The open subscriptions of every app, for the index.
    subs.subscribe("2", "v", "news").await.unwrap();
    let mut active: Vec<(String, String, String)> = subs
        .active()
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.app, a.channel, a.user))
        .collect();
    active.sort();
    assert_eq!(
        active,
        [
            ("1".into(), "news".into(), "u".into()),
            ("2".into(), "news".into(), "v".into())
        ]
    );

    // A user never seen has nothing.
    assert!(subs.user("1", "nobody").await.unwrap().is_empty());
    assert!(storage::user_events(s, "1", "nobody", None, 10)
        .await
        .unwrap()
        .is_empty());
    // Subscriptions survive a reopen.
    let h = h.reopen().await;
    assert_eq!(
        storage::user_channels(h.storage(), "1", "u").await.unwrap(),
        ["news"]
    );
}

async fn unsubscribe_and_resubscribe_without_events_is_one_interval<H: Harness>() {
    let h = H::open().await;
    let s = h.storage();
    let subs = &s.subscriptions;
    subs.subscribe("1", "u", "c").await.unwrap();
    subs.unsubscribe("1", "u", "c").await.unwrap();
    assert!(
        subs.user("1", "u").await.unwrap().is_empty(),
        "an interval that held no id is dropped"
    );
    subs.subscribe("1", "u", "c").await.unwrap();
    publish(s, "1", "c", "x").await;
    subs.unsubscribe("1", "u", "c").await.unwrap();
    subs.subscribe("1", "u", "c").await.unwrap();
    let user = subs.user("1", "u").await.unwrap();
    assert_eq!(user[0].intervals.len(), 1, "{user:?}");
    assert_eq!(user[0].intervals[0].to, None);
}

async fn replay_last_and_since<H: Harness>() {
    let h = H::open().await;
    let s = h.storage();
    s.subscriptions.subscribe("1", "u", "a").await.unwrap();
    s.subscriptions.subscribe("1", "u", "b").await.unwrap();
    let mut ids = Vec::new();
    for i in 0..6 {
        let channel = if i % 2 == 0 { "a" } else { "b" };
        ids.push(publish(s, "1", channel, &format!("e{i}")).await);
    }
    let last = storage::replay(s, "1", "u", None, 3, 100).await.unwrap();
    assert_eq!(last.channels, ["a", "b"]);
    assert_eq!(names(&last.events), ["e3", "e4", "e5"], "oldest first");
    assert!(!last.truncated);
    let since = storage::replay(s, "1", "u", Some(ids[1]), 3, 100)
        .await
        .unwrap();
    assert_eq!(names(&since.events), ["e2", "e3", "e4", "e5"]);
    assert!(!since.truncated);
    let capped = storage::replay(s, "1", "u", Some(ids[0]), 3, 2)
        .await
        .unwrap();
    assert_eq!(
        names(&capped.events),
        ["e4", "e5"],
        "the newest up to the cap"
    );
    assert!(capped.truncated);
    let none = storage::replay(s, "1", "u", Some(ids[5]), 3, 100)
        .await
        .unwrap();
    assert!(none.events.is_empty() && !none.truncated);
}

async fn prune_by_count_and_age<H: Harness>() {
    let h = H::open().await;
    let s = h.storage();
    let subs = &s.subscriptions;
    subs.subscribe("1", "u", "a").await.unwrap();
    subs.subscribe("1", "gone", "b").await.unwrap();
    let mut batch = Vec::new();
    for i in 0..10 {
        batch.push(event("a", &format!("a{i}"), 1_000 + i));
    }
    append(s, "1", batch).await;
    append(s, "1", vec![event("b", "b-old", 500)]).await;
    subs.unsubscribe("1", "gone", "b").await.unwrap();
    // Count: keep 4 per channel; age: nothing before t=1_005 (now 2_000, age 995).
    let retention = Retention {
        max_per_channel: 4,
        max_age_ms: 995,
    };
    let removed = s.events.prune(retention, 2_000).await.unwrap();
    assert_eq!(removed, 6 + 1, "6 over the count on a, 1 too old on b");
    let left = s
        .events
        .events("1", all("a"), 100, Order::OldestFirst)
        .await
        .unwrap();
    assert_eq!(names(&left), ["a6", "a7", "a8", "a9"]);
    let retention = Retention {
        max_per_channel: 4,
        max_age_ms: 2_000 - 1_008,
    };
    assert_eq!(s.events.prune(retention, 2_000).await.unwrap(), 2);
    let left = storage::user_events(s, "1", "u", None, 100).await.unwrap();
    assert_eq!(names(&left), ["a9", "a8"]);
    // The closed interval over b selects nothing any more: it is gone, and the user with it.
    assert!(subs.user("1", "gone").await.unwrap().is_empty());
    assert_eq!(subs.user("1", "u").await.unwrap().len(), 1);
}

/// Embedded: redb in a scratch directory.
struct Redb {
    dir: PathBuf,
    storage: Storage,
}

fn open_redb(dir: &std::path::Path) -> Storage {
    // The previous store's thread lets go of the file lock when it sees its queue closed.
    let deadline = std::time::Instant::now() + support::TIMEOUT;
    loop {
        match pushi::storage::embedded::Embedded::open(dir, 1000) {
            Ok(s) => return s,
            Err(e) if std::time::Instant::now() < deadline => {
                assert!(e.reason.contains("another process"), "{e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

impl Harness for Redb {
    async fn open() -> Self {
        let dir = std::env::temp_dir().join(support::unique(&format!(
            "pushi-suite-{}-",
            std::process::id()
        )));
        let storage = open_redb(&dir);
        Redb { dir, storage }
    }

    fn storage(&self) -> &Storage {
        &self.storage
    }

    fn reopen(self) -> Pin<Box<dyn Future<Output = Self>>> {
        Box::pin(async move {
            let Redb { dir, storage } = self;
            drop(storage);
            let storage = open_redb(&dir);
            Redb { dir, storage }
        })
    }
}

/// MongoDB: SecantusDB (one server per test) with the official driver, a fresh database.
struct Mongo {
    server: support::mongo::MongoServer,
    database: String,
    storage: Storage,
}

async fn open_mongo(server: &support::mongo::MongoServer, database: &str) -> Storage {
    let config = pushi::config::MongoConfig {
        uri: server.uri(),
        database: database.to_string(),
        connect_timeout: 5,
        server_selection_timeout: 5,
        startup_timeout: 30,
        change_stream: true,
        poll_interval: 1,
    };
    let connection = pushi::apps::mongo::Connection::open(&config)
        .await
        .expect("connection");
    let (storage, store) = pushi::storage::mongo::MongoStore::open(&connection);
    store.ensure_indexes().await.expect("indexes");
    storage
}

impl Harness for Mongo {
    async fn open() -> Self {
        let server = support::mongo::MongoServer::start();
        let database = support::unique("suite");
        let storage = open_mongo(&server, &database).await;
        Mongo {
            server,
            database,
            storage,
        }
    }

    fn storage(&self) -> &Storage {
        &self.storage
    }

    fn reopen(self) -> Pin<Box<dyn Future<Output = Self>>> {
        Box::pin(async move {
            let Mongo {
                server,
                database,
                storage,
            } = self;
            drop(storage);
            let storage = open_mongo(&server, &database).await;
            Mongo {
                server,
                database,
                storage,
            }
        })
    }
}

macro_rules! suite {
    ($backend:ident, $harness:ty) => {
        mod $backend {
            use super::*;

            #[tokio::test]
            async fn ids_increase() {
                super::ids_increase::<$harness>().await;
            }
            #[tokio::test]
            async fn reads_ranges_in_both_orders() {
                super::reads_ranges_in_both_orders::<$harness>().await;
            }
            #[tokio::test]
            async fn subscriptions_select_what_was_published_meanwhile() {
                super::subscriptions_select_what_was_published_meanwhile::<$harness>().await;
            }
            #[tokio::test]
            async fn unsubscribe_and_resubscribe_without_events_is_one_interval() {
                super::unsubscribe_and_resubscribe_without_events_is_one_interval::<$harness>()
                    .await;
            }
            #[tokio::test]
            async fn replay_last_and_since() {
                super::replay_last_and_since::<$harness>().await;
            }
            #[tokio::test]
            async fn prune_by_count_and_age() {
                super::prune_by_count_and_age::<$harness>().await;
            }
        }
    };
}

suite!(embedded, Redb);
suite!(mongodb, Mongo);
