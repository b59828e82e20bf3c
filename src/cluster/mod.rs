//! The cluster: several pushi nodes behind a load balancer serve the same apps as one
//! Pusher app, joined through Redis. [`Node`] implements both seams:
//!
//! - [`Membership`]: every join, leave, connect and sign-in runs one Lua script (see
//!   `scripts`) that decides the cluster-wide transition and publishes its notice; counts,
//!   channels and presence are read from Redis, never by asking the other nodes.
//! - [`Adapter`]: a publish is delivered to this node's subscribers at once and published
//!   to the channel's pub/sub topic for the others; a node subscribes in Redis only to the
//!   channels it has local subscribers on (and to the topics of apps it has connections of).
//!
//! Liveness: every node extends its deadline in `P:nodes` every third of
//! `cluster.node_timeout`, and in the same script reaps every node past its deadline,
//! undoing what the dead node held (its members leave with `member_removed`, its channels'
//! counts drop). A reaped node's transitions are reported by the reaper, once.
//!
//! Outage: when Redis stops answering, the node says so once in the log and at `/ready`,
//! refuses new connections (4100, so clients back off and the load balancer moves them)
//! and presence subscriptions, and keeps delivering locally. It reconnects with back-off,
//! resubscribes its topics and re-asserts everything it holds (the scripts are idempotent:
//! what Redis still has changes nothing, what it lost is added back with its notices), then
//! says it is back.
//!
//! Owns: the Redis connections, the topics, liveness and recovery. Must not touch:
//! sessions, HTTP, storage.

mod envelope;
mod scripts;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use redis::Value;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, RwLock};
use tokio_util::sync::CancellationToken;

use crate::adapter::{terminate_local, Adapter};
use crate::apps::App;
use crate::config::{redact_uri, ClusterConfig};
use crate::membership::{Membership, Unavailable};
use crate::protocol::message::{self, PresenceMember};
use crate::protocol::{Close, SocketId};
use crate::registry::{CacheEntry, Change, ChannelStats, Conn, Frame, Registry, SubscribeError};
use envelope::{AppNotice, Envelope, Topic};
use scripts::Scripts;

/// A transition the node learnt outside a session (reaping a dead node, re-asserting its
/// own state): the server turns it into webhooks.
#[derive(Debug, Clone)]
pub struct Transition {
    /// The app.
    pub app_id: String,
    /// The channel.
    pub channel: String,
    /// What changed.
    pub change: Change,
}

/// Why the node could not join the cluster at startup.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `cluster.redis_url` is not a Redis URL the client accepts.
    #[error("cluster.redis_url: {0}")]
    Url(String),
    /// Redis did not answer within `cluster.startup_timeout`.
    #[error("could not reach Redis at {url} within cluster.startup_timeout ({secs} s): {why}")]
    Unreachable {
        /// The URL, password redacted.
        url: String,
        /// The timeout.
        secs: u64,
        /// The last error.
        why: String,
    },
}

/// Whether the node is part of the cluster now.
#[derive(Debug, Default)]
struct Health {
    up: AtomicBool,
    /// Why and since when (unix seconds) it is not.
    down: Mutex<Option<(String, u64)>>,
}

impl Health {
    fn set_down(&self, why: String) {
        let mut down = self.down.lock().expect("health lock");
        if self.up.swap(false, Ordering::AcqRel) || down.is_none() {
            tracing::error!(error = %why, "cluster: Redis unreachable; this node serves its own connections only until it is back");
            *down = Some((why, unix_now()));
        }
    }

    fn set_up(&self) {
        let mut down = self.down.lock().expect("health lock");
        if !self.up.swap(true, Ordering::AcqRel) && down.take().is_some() {
            tracing::info!("cluster: Redis reachable again; state re-asserted");
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What the node's cluster state looks like, for `/ready`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterStatus {
    /// This node's id.
    pub node: String,
    /// `ok` or `disconnected`.
    pub state: &'static str,
    /// Since when (unix seconds) it is disconnected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnected_since: Option<u64>,
    /// Why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A request to the topic keeper: make the Redis subscriptions of `topic` follow the
/// registry (subscribed while it has local subscribers or connections).
struct Want {
    topic: Topic,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// One pushi node of a cluster. Cheap to share (`Arc`).
pub struct Node {
    id: String,
    prefix: String,
    url: String,
    config: ClusterConfig,
    registry: Registry,
    conn: ConnectionManager,
    client: redis::Client,
    scripts: Scripts,
    health: Health,
    wants: mpsc::UnboundedSender<Want>,
    /// Taken by the supervisor when it starts.
    wants_rx: Mutex<Option<mpsc::UnboundedReceiver<Want>>>,
    /// Joins and leaves hold it shared; re-asserting the node's state holds it alone, so
    /// nothing is re-added that a session removed meanwhile.
    gate: RwLock<()>,
    transitions: mpsc::UnboundedSender<Transition>,
    /// Cross-node messages received, for `/metrics` and tests.
    received: AtomicU64,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("redis", &self.url)
            .finish_non_exhaustive()
    }
}

fn err_text(err: &redis::RedisError) -> String {
    err.to_string()
}

impl Node {
    /// Connects to Redis (retrying for `cluster.startup_timeout`), registers the node and
    /// starts its supervisor. Transitions the node learns outside sessions arrive on the
    /// returned receiver.
    pub async fn start(
        config: &ClusterConfig,
        registry: Registry,
        shutdown: CancellationToken,
    ) -> Result<(Arc<Node>, mpsc::UnboundedReceiver<Transition>), StartError> {
        let url = redact_uri(&config.redis_url);
        let client = redis::Client::open(config.redis_url.as_str())
            .map_err(|e| StartError::Url(format!("{url}: {e}")))?;
        let timeout = Duration::from_secs(config.command_timeout);
        let manager = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(2);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(config.startup_timeout);
        let mut wait = Duration::from_millis(100);
        let conn = loop {
            let attempt = ConnectionManager::new_with_config(client.clone(), manager.clone()).await;
            match attempt {
                Ok(conn) => break conn,
                Err(err) => {
                    if tokio::time::Instant::now() + wait >= deadline {
                        return Err(StartError::Unreachable {
                            url,
                            secs: config.startup_timeout,
                            why: err_text(&err),
                        });
                    }
                    tracing::warn!(redis = %url, error = %err, "cluster: Redis not reachable yet; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        };
        let (wants, wants_rx) = mpsc::unbounded_channel();
        let (transitions, transitions_rx) = mpsc::unbounded_channel();
        let node = Arc::new(Node {
            id: format!("{:016x}", rand::random::<u64>()),
            prefix: config.prefix.clone(),
            url,
            config: config.clone(),
            registry,
            conn,
            client,
            scripts: Scripts::new(),
            health: Health::default(),
            wants,
            wants_rx: Mutex::new(Some(wants_rx)),
            gate: RwLock::new(()),
            transitions,
            received: AtomicU64::new(0),
        });
        // Joined before the node serves: a first connection is then never refused.
        let pubsub = loop {
            match node.join_cluster().await {
                Ok(pubsub) => break pubsub,
                Err(why) => {
                    if tokio::time::Instant::now() + wait >= deadline {
                        return Err(StartError::Unreachable {
                            url: node.url.clone(),
                            secs: config.startup_timeout,
                            why,
                        });
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        };
        node.health.set_up();
        tracing::info!(node = %node.id, redis = %node.url, prefix = %node.prefix, "cluster: joined");
        tokio::spawn(node.clone().supervise(pubsub, shutdown));
        Ok((node, transitions_rx))
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the node is part of the cluster now, and since when it is not.
    pub fn status(&self) -> ClusterStatus {
        let down = self.health.down.lock().expect("health lock").clone();
        let up = self.health.up.load(Ordering::Acquire);
        ClusterStatus {
            node: self.id.clone(),
            state: if up { "ok" } else { "disconnected" },
            disconnected_since: down.as_ref().filter(|_| !up).map(|d| d.1),
            error: down.filter(|_| !up).map(|d| d.0),
        }
    }

    /// Whether the node is part of the cluster now.
    pub fn is_up(&self) -> bool {
        self.health.up.load(Ordering::Acquire)
    }

    /// Messages received from other nodes so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    fn cut_off(&self) -> Unavailable {
        let why = self
            .health
            .down
            .lock()
            .expect("health lock")
            .as_ref()
            .map(|d| d.0.clone())
            .unwrap_or_else(|| "reconnecting".into());
        Unavailable(format!("Redis at {} is unreachable: {why}", self.url))
    }

    /// A failed command: the node is cut off until the supervisor has reconnected and
    /// re-asserted its state.
    fn failed(&self, err: &redis::RedisError) -> Unavailable {
        self.health.set_down(err_text(err));
        self.cut_off()
    }

    fn check_up(&self) -> Result<(), Unavailable> {
        match self.is_up() {
            true => Ok(()),
            false => Err(self.cut_off()),
        }
    }

    /// Connects the pub/sub connection, subscribes every topic the registry needs, then
    /// registers the node (heartbeat) and re-asserts what it holds.
    async fn join_cluster(&self) -> Result<(PubSubSink, PubSubStream), String> {
        let timeout = Duration::from_secs(self.config.command_timeout);
        let pubsub = tokio::time::timeout(timeout, self.client.get_async_pubsub())
            .await
            .map_err(|_| "no answer to connect".to_string())?
            .map_err(|e| err_text(&e))?;
        let (mut sink, stream) = pubsub.split();
        let topics = self.wanted_topics();
        for chunk in topics.chunks(512) {
            let names: Vec<String> = chunk.iter().map(|t| t.name(&self.prefix)).collect();
            tokio::time::timeout(timeout, sink.subscribe(&names))
                .await
                .map_err(|_| "no answer to SUBSCRIBE".to_string())?
                .map_err(|e| err_text(&e))?;
        }
        self.heartbeat().await.map_err(|e| err_text(&e))?;
        self.reassert().await.map_err(|e| err_text(&e))?;
        Ok((sink, stream))
    }

    /// Every topic the registry needs now.
    fn wanted_topics(&self) -> Vec<Topic> {
        let mut topics = Vec::new();
        for app in self.registry.snapshot() {
            let channels: HashSet<&str> = app
                .subscriptions
                .iter()
                .map(|s| s.channel.as_str())
                .collect();
            for channel in channels {
                topics.push(Topic::Channel(app.app_id.clone(), channel.to_string()));
            }
            if !app.sockets.is_empty() {
                topics.push(Topic::App(app.app_id.clone()));
            }
        }
        topics
    }

    /// Extends the node's deadline and reaps dead nodes; re-asserts when Redis did not know
    /// the node (it lost its state, or declared the node dead).
    async fn heartbeat(&self) -> Result<bool, redis::RedisError> {
        let timeout_ms = self.config.node_timeout * 1000;
        let out: Vec<Value> = self
            .scripts
            .heartbeat
            .arg(&self.prefix)
            .arg(&self.id)
            .arg(timeout_ms)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let known = out.first().and_then(int).unwrap_or(0) == 1;
        self.report(&out[1.min(out.len())..]);
        Ok(known)
    }

    /// Turns a script's flat transitions (A, C, vacated, removed, count, user)... into
    /// [`Transition`]s for the server.
    fn report(&self, flat: &[Value]) {
        for t in flat.chunks_exact(6) {
            let (Some(app_id), Some(channel)) = (string(&t[0]), string(&t[1])) else {
                continue;
            };
            let user = string(&t[5]).unwrap_or_default();
            let removed = int(&t[3]) == Some(1);
            let change = Change {
                occupied: false,
                vacated: int(&t[2]) == Some(1),
                member_added: None,
                member_removed: removed.then(|| Arc::from(user.as_str())),
                subscription_count: int(&t[4]).unwrap_or(0) as usize,
            };
            let _ = self.transitions.send(Transition {
                app_id,
                channel,
                change,
            });
        }
    }

    /// Re-runs the scripts for everything the registry holds and undoes what Redis holds
    /// for this node that the registry does not (leaves that failed while cut off).
    async fn reassert(&self) -> Result<(), redis::RedisError> {
        let _alone = self.gate.write().await;
        let mut conn = self.conn.clone();
        let held: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
            .arg(format!("{}:node:{}", self.prefix, self.id))
            .query_async(&mut conn)
            .await?;
        let snapshot = self.registry.snapshot();
        let mut wanted: HashSet<Vec<u8>> = HashSet::new();
        for app in &snapshot {
            for s in &app.sockets {
                wanted.insert(entry(&["a", &app.app_id, &s.to_string()]));
            }
            for s in &app.subscriptions {
                wanted.insert(entry(&[
                    "c",
                    &app.app_id,
                    &s.channel,
                    &s.socket.to_string(),
                ]));
            }
            for (u, s) in &app.users {
                wanted.insert(entry(&["u", &app.app_id, u, &s.to_string()]));
            }
        }
        for stale in held.iter().filter(|e| !wanted.contains(*e)) {
            let fields: Vec<&[u8]> = stale.split(|b| *b == 0).collect();
            let text = |i: usize| {
                String::from_utf8_lossy(fields.get(i).copied().unwrap_or(b"")).into_owned()
            };
            match fields.first().copied() {
                Some(&[b'c']) => {
                    let out: Option<Vec<Value>> = self
                        .scripts
                        .leave
                        .arg(&self.prefix)
                        .arg(&self.id)
                        .arg(text(1))
                        .arg(text(2))
                        .arg(text(3))
                        .invoke_async(&mut conn)
                        .await?;
                    if let Some(out) = out {
                        let mut flat = vec![
                            Value::BulkString(text(1).into_bytes()),
                            Value::BulkString(text(2).into_bytes()),
                        ];
                        flat.extend(out);
                        self.report(&flat);
                    }
                }
                Some(&[b'a']) => {
                    let _: Value = self
                        .scripts
                        .disconnect
                        .arg(&self.prefix)
                        .arg(&self.id)
                        .arg(text(1))
                        .arg(text(2))
                        .invoke_async(&mut conn)
                        .await?;
                }
                Some(&[b'u']) => {
                    let _: Value = self
                        .scripts
                        .sign_out
                        .arg(&self.prefix)
                        .arg(&self.id)
                        .arg(text(1))
                        .arg(text(2))
                        .arg(text(3))
                        .invoke_async(&mut conn)
                        .await?;
                }
                _ => {}
            }
        }
        for app in &snapshot {
            for s in &app.sockets {
                let _: Value = self
                    .scripts
                    .connect
                    .arg(&self.prefix)
                    .arg(&self.id)
                    .arg(&app.app_id)
                    .arg(s.to_string())
                    .arg(0)
                    .invoke_async(&mut conn)
                    .await?;
            }
            for s in &app.subscriptions {
                let (user, info) = match &s.member {
                    Some((u, i)) => (u.to_string(), i.clone()),
                    None => (String::new(), String::new()),
                };
                let counted = self.registry.counted(&app.app_id, &s.channel);
                let out: Vec<Value> = self
                    .scripts
                    .join
                    .arg(&self.prefix)
                    .arg(&self.id)
                    .arg(&app.app_id)
                    .arg(&s.channel)
                    .arg(s.socket.to_string())
                    .arg(&user)
                    .arg(&info)
                    .arg(0)
                    .arg(if counted { "1" } else { "0" })
                    .invoke_async(&mut conn)
                    .await?;
                if let Some(change) = joined_change(&out) {
                    if change.occupied || change.member_added.is_some() {
                        let _ = self.transitions.send(Transition {
                            app_id: app.app_id.clone(),
                            channel: s.channel.clone(),
                            change: Change {
                                member_added: change.member_added.map(|_| Arc::from(user.as_str())),
                                ..change
                            },
                        });
                    }
                }
            }
            for (u, s) in &app.users {
                let _: Value = self
                    .scripts
                    .sign_in
                    .arg(&self.prefix)
                    .arg(&self.id)
                    .arg(&app.app_id)
                    .arg(&**u)
                    .arg(s.to_string())
                    .invoke_async(&mut conn)
                    .await?;
            }
        }
        Ok(())
    }

    /// The node's background task: delivers what other nodes publish, keeps the topics,
    /// heartbeats, and reconnects after an outage.
    async fn supervise(
        self: Arc<Node>,
        first: (PubSubSink, PubSubStream),
        shutdown: CancellationToken,
    ) {
        let mut wants = self
            .wants_rx
            .lock()
            .expect("wants lock")
            .take()
            .expect("one supervisor");
        let mut pubsub = Some(first);
        let beat = Duration::from_millis(self.config.node_timeout * 1000 / 3);
        let mut wait = Duration::from_millis(100);
        loop {
            let (mut sink, mut stream) = match pubsub.take() {
                Some(p) => p,
                None => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    // Requests that came while cut off are answered by the resubscribe.
                    while let Ok(want) = wants.try_recv() {
                        if let Some(done) = want.done {
                            let _ = done.send(Err("reconnecting".into()));
                        }
                    }
                    match self.join_cluster().await {
                        Ok(p) => {
                            wait = Duration::from_millis(100);
                            self.health.set_up();
                            p
                        }
                        Err(why) => {
                            self.health.set_down(why);
                            wait = (wait * 2).min(Duration::from_secs(2));
                            continue;
                        }
                    }
                }
            };
            let mut subscribed: HashSet<String> = self
                .wanted_topics()
                .iter()
                .map(|t| t.name(&self.prefix))
                .collect();
            let mut ticker = tokio::time::interval(beat);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            let why = loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    msg = stream.next() => match msg {
                        Some(msg) => self.deliver(msg.get_channel_name(), msg.get_payload_bytes()),
                        None => break "the pub/sub connection closed".to_string(),
                    },
                    want = wants.recv() => {
                        let Some(want) = want else { return };
                        let mut batch = vec![want];
                        while let Ok(w) = wants.try_recv() {
                            batch.push(w);
                        }
                        if let Err(why) = self.keep_topics(&mut sink, &mut subscribed, batch).await {
                            break why;
                        }
                    }
                    _ = ticker.tick() => match self.heartbeat().await {
                        Ok(true) => {}
                        Ok(false) => {
                            // Redis forgot this node (restarted empty, or declared it dead
                            // while it was stalled): everything it holds goes back.
                            tracing::warn!(node = %self.id, "cluster: Redis did not know this node; re-asserting its state");
                            if let Err(err) = self.reassert().await {
                                break err_text(&err);
                            }
                        }
                        Err(err) => break err_text(&err),
                    },
                }
            };
            self.health.set_down(why);
        }
    }

    /// Makes the Redis subscriptions of the requested topics follow the registry, in one
    /// SUBSCRIBE and one UNSUBSCRIBE, then answers the requests.
    async fn keep_topics(
        &self,
        sink: &mut PubSubSink,
        subscribed: &mut HashSet<String>,
        batch: Vec<Want>,
    ) -> Result<(), String> {
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for want in &batch {
            let name = want.topic.name(&self.prefix);
            let needed = match &want.topic {
                Topic::Channel(app, channel) => self.registry.has_subscribers(app, channel),
                Topic::App(app) => self.registry.has_connections(app),
            };
            if needed && subscribed.insert(name.clone()) {
                add.push(name);
            } else if !needed && subscribed.remove(&name) {
                remove.push(name);
            }
        }
        let timeout = Duration::from_secs(self.config.command_timeout);
        let result = async {
            if !add.is_empty() {
                tokio::time::timeout(timeout, sink.subscribe(&add))
                    .await
                    .map_err(|_| "no answer to SUBSCRIBE".to_string())?
                    .map_err(|e| err_text(&e))?;
            }
            if !remove.is_empty() {
                tokio::time::timeout(timeout, sink.unsubscribe(&remove))
                    .await
                    .map_err(|_| "no answer to UNSUBSCRIBE".to_string())?
                    .map_err(|e| err_text(&e))?;
            }
            Ok::<(), String>(())
        }
        .await;
        for want in batch {
            if let Some(done) = want.done {
                let _ = done.send(result.clone());
            }
        }
        result
    }

    /// Delivers one message from another node (or a script's notice) to local sockets.
    fn deliver(&self, topic: &str, payload: &[u8]) {
        let Some(topic) = Topic::parse(&self.prefix, topic) else {
            return;
        };
        self.received.fetch_add(1, Ordering::Relaxed);
        match topic {
            Topic::Channel(app, channel) => {
                let Some(env) = Envelope::parse(payload) else {
                    return;
                };
                // This node delivered its own publishes before sending them.
                if env.origin == self.id.as_bytes() {
                    return;
                }
                let frame = Frame::from(env.frame);
                match env.stored_id {
                    Some(id) => self
                        .registry
                        .publish_stored(&app, &channel, id, &frame, env.except),
                    None => {
                        self.registry.publish(&app, &channel, &frame, env.except);
                    }
                }
            }
            Topic::App(app) => match AppNotice::parse(payload) {
                Some(AppNotice::Online(user)) => self.registry.notify_watchers(&app, &user, true),
                Some(AppNotice::Offline(user)) => self.registry.notify_watchers(&app, &user, false),
                Some(AppNotice::Terminate { origin, user }) if origin != self.id => {
                    terminate_local(&self.registry, &app, &user);
                }
                Some(AppNotice::Terminate { .. }) | None => {}
            },
        }
    }

    /// Asks the topic keeper to follow the registry for `topic` and waits until it did.
    async fn want(&self, topic: Topic) -> Result<(), Unavailable> {
        let (done, rx) = oneshot::channel();
        let _ = self.wants.send(Want {
            topic,
            done: Some(done),
        });
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => {
                self.health.set_down(why);
                Err(self.cut_off())
            }
            Err(_) => Err(self.cut_off()),
        }
    }

    /// Lets the topic keeper drop `topic` if the registry no longer needs it.
    fn unwant(&self, topic: Topic) {
        let _ = self.wants.send(Want { topic, done: None });
    }

    /// Leaves the cluster for good: undoes what the node still holds (its sessions have
    /// ended) and unregisters it, so the others need not wait for its deadline.
    pub async fn goodbye(&self) {
        let out: Result<Vec<Value>, _> = self
            .scripts
            .goodbye
            .arg(&self.prefix)
            .arg(&self.id)
            .invoke_async(&mut self.conn.clone())
            .await;
        match out {
            Ok(out) => {
                self.report(&out);
                tracing::info!(node = %self.id, "cluster: left");
            }
            Err(err) => {
                tracing::warn!(node = %self.id, error = %err, "cluster: could not say goodbye; the other nodes will reap this one after cluster.node_timeout")
            }
        }
    }

    async fn publish_envelope(
        &self,
        app_id: &str,
        channel: &str,
        env: Vec<u8>,
    ) -> Result<(), Unavailable> {
        self.check_up()?;
        let topic = Topic::Channel(app_id.to_string(), channel.to_string()).name(&self.prefix);
        let sent: Result<Value, _> = redis::cmd("PUBLISH")
            .arg(topic)
            .arg(env)
            .query_async(&mut self.conn.clone())
            .await;
        sent.map(|_| ()).map_err(|e| self.failed(&e))
    }
}

/// A node-set entry: fields joined by NUL.
fn entry(fields: &[&str]) -> Vec<u8> {
    fields.join("\0").into_bytes()
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// The change a JOIN script answered (without the user id, which the caller knows), or
/// `None` when the presence channel is full.
fn joined_change(out: &[Value]) -> Option<Change> {
    if out.first().and_then(int) == Some(-1) {
        return None;
    }
    Some(Change {
        occupied: out.first().and_then(int) == Some(1),
        vacated: false,
        member_added: (out.get(1).and_then(int) == Some(1)).then(|| Arc::from("")),
        member_removed: None,
        subscription_count: out.get(2).and_then(int).unwrap_or(0) as usize,
    })
}

#[async_trait]
impl Membership for Node {
    async fn connect(&self, app: &App, conn: &Arc<Conn>) -> Result<(), Close> {
        // A node cut off from the cluster cannot enforce cluster-wide limits or show this
        // socket to the others: the client backs off and the load balancer moves it.
        if !self.is_up() {
            return Err(Close::CLUSTER_UNAVAILABLE);
        }
        let _shared = self.gate.read().await;
        let admitted: Result<i64, _> = self
            .scripts
            .connect
            .arg(&self.prefix)
            .arg(&self.id)
            .arg(&app.id)
            .arg(conn.socket_id.to_string())
            .arg(app.max_connections)
            .invoke_async(&mut self.conn.clone())
            .await;
        match admitted {
            Ok(1) => {}
            Ok(_) => return Err(Close::OVER_QUOTA),
            Err(err) => {
                self.failed(&err);
                return Err(Close::CLUSTER_UNAVAILABLE);
            }
        }
        self.registry.connect(&app.id, 0, conn)?;
        if let Err(err) = self.want(Topic::App(app.id.clone())).await {
            drop(_shared);
            self.registry.disconnect(&app.id, conn.socket_id);
            self.disconnect_redis(&app.id, conn.socket_id).await;
            tracing::debug!(error = %err, "connection refused: cluster unavailable");
            return Err(Close::CLUSTER_UNAVAILABLE);
        }
        Ok(())
    }

    async fn disconnect(&self, app_id: &str, socket: SocketId) {
        self.registry.disconnect(app_id, socket);
        self.unwant(Topic::App(app_id.to_string()));
        let _shared = self.gate.read().await;
        self.disconnect_redis(app_id, socket).await;
    }

    async fn join(
        &self,
        app_id: &str,
        channel: &str,
        conn: &Arc<Conn>,
        member: Option<PresenceMember>,
        max_members: usize,
        count: bool,
    ) -> Result<(String, Change), SubscribeError> {
        let presence = member.is_some();
        if presence && self.registry.is_subscribed(app_id, channel, conn.socket_id) {
            return Err(SubscribeError::Existing(channel.to_string()));
        }
        if presence && !self.is_up() {
            return Err(SubscribeError::Unavailable(self.cut_off().0));
        }
        let (user, info) = match &member {
            Some(m) => (m.user_id.clone(), m.user_info.get().to_string()),
            None => (String::new(), String::new()),
        };
        let local_member = member.map(|m| (Arc::<str>::from(m.user_id.as_str()), m.user_info));
        let _shared = self.gate.read().await;
        let (added, _) = self.registry.attach(app_id, channel, conn, local_member);
        self.registry.set_counted(app_id, channel, count);
        let topic = Topic::Channel(app_id.to_string(), channel.to_string());
        let result = match self.want(topic).await {
            Err(err) => Err(err),
            Ok(()) => {
                let out: Result<Vec<Value>, _> = self
                    .scripts
                    .join
                    .arg(&self.prefix)
                    .arg(&self.id)
                    .arg(app_id)
                    .arg(channel)
                    .arg(conn.socket_id.to_string())
                    .arg(&user)
                    .arg(&info)
                    .arg(max_members)
                    .arg(if count { "1" } else { "0" })
                    .invoke_async(&mut self.conn.clone())
                    .await;
                out.map_err(|e| self.failed(&e))
            }
        };
        let out = match result {
            Ok(out) => out,
            // Cut off: a public or private subscription works locally and is re-asserted
            // when Redis is back; presence needs the members, which only Redis has.
            Err(err) if presence => {
                if added {
                    self.registry.detach(app_id, channel, conn.socket_id);
                }
                return Err(SubscribeError::Unavailable(err.0));
            }
            Err(_) => return Ok(("{}".to_string(), Change::default())),
        };
        let Some(mut change) = joined_change(&out) else {
            if added {
                self.registry.detach(app_id, channel, conn.socket_id);
                self.unwant(Topic::Channel(app_id.to_string(), channel.to_string()));
            }
            return Err(SubscribeError::Full(channel.to_string(), max_members));
        };
        if change.member_added.is_some() {
            change.member_added = Some(Arc::from(user.as_str()));
        }
        if !presence {
            return Ok(("{}".to_string(), change));
        }
        let members = match out.get(3) {
            Some(Value::Array(items)) => items.clone(),
            _ => Vec::new(),
        };
        let mut pairs: Vec<(String, Box<RawValue>)> = Vec::with_capacity(members.len() / 2);
        for pair in members.chunks_exact(2) {
            let (Some(id), Some(info)) = (string(&pair[0]), string(&pair[1])) else {
                continue;
            };
            let info = RawValue::from_string(info)
                .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("null is JSON"));
            pairs.push((id, info));
        }
        let data = message::presence_data(pairs.iter().map(|(id, info)| (id.as_str(), &**info)));
        Ok((data, change))
    }

    async fn leave(
        &self,
        app_id: &str,
        channel: &str,
        socket: SocketId,
        _count: bool,
    ) -> Option<Change> {
        let (_, last) = self.registry.detach(app_id, channel, socket)?;
        if last {
            self.unwant(Topic::Channel(app_id.to_string(), channel.to_string()));
        }
        let _shared = self.gate.read().await;
        let out: Result<Option<Vec<Value>>, _> = self
            .scripts
            .leave
            .arg(&self.prefix)
            .arg(&self.id)
            .arg(app_id)
            .arg(channel)
            .arg(socket.to_string())
            .invoke_async(&mut self.conn.clone())
            .await;
        match out {
            Ok(Some(out)) => {
                let user = out.get(3).and_then(string).unwrap_or_default();
                Some(Change {
                    occupied: false,
                    vacated: out.first().and_then(int) == Some(1),
                    member_added: None,
                    member_removed: (out.get(1).and_then(int) == Some(1))
                        .then(|| Arc::from(user.as_str())),
                    subscription_count: out.get(2).and_then(int).unwrap_or(0) as usize,
                })
            }
            // Redis did not have it (it was re-asserted without it, or lost it).
            Ok(None) => Some(Change::default()),
            // Cut off: re-asserting the node's state removes it from Redis later.
            Err(err) => {
                self.failed(&err);
                Some(Change::default())
            }
        }
    }

    async fn sign_in(
        &self,
        app_id: &str,
        user_id: &str,
        conn: &Arc<Conn>,
        watchlist: &[String],
    ) -> (Vec<String>, Vec<String>) {
        self.registry
            .sign_in(app_id, user_id, conn, watchlist, false);
        let _shared = self.gate.read().await;
        let mut invocation = self.scripts.sign_in.prepare_invoke();
        invocation
            .arg(&self.prefix)
            .arg(&self.id)
            .arg(app_id)
            .arg(user_id)
            .arg(conn.socket_id.to_string());
        for w in watchlist {
            invocation.arg(w);
        }
        let online: Vec<i64> = match invocation.invoke_async(&mut self.conn.clone()).await {
            Ok(online) => online,
            Err(err) => {
                self.failed(&err);
                // Cut off: only this node's users are known.
                watchlist
                    .iter()
                    .map(|w| i64::from(!self.registry.user_connections(app_id, w).is_empty()))
                    .collect()
            }
        };
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for (w, o) in watchlist.iter().zip(online) {
            if o == 1 {
                on.push(w.clone());
            } else {
                off.push(w.clone());
            }
        }
        (on, off)
    }

    async fn sign_out(&self, app_id: &str, user_id: &str, socket: SocketId, watchlist: &[String]) {
        self.registry
            .sign_out(app_id, user_id, socket, watchlist, false);
        let _shared = self.gate.read().await;
        let out: Result<Value, _> = self
            .scripts
            .sign_out
            .arg(&self.prefix)
            .arg(&self.id)
            .arg(app_id)
            .arg(user_id)
            .arg(socket.to_string())
            .invoke_async(&mut self.conn.clone())
            .await;
        if let Err(err) = out {
            self.failed(&err);
        }
    }

    async fn stats(&self, app_id: &str, channel: &str) -> Result<ChannelStats, Unavailable> {
        self.check_up()?;
        let (subs, users): (usize, usize) = redis::pipe()
            .cmd("HLEN")
            .arg(format!("{}:{app_id}:ch:{channel}", self.prefix))
            .cmd("HLEN")
            .arg(format!("{}:{app_id}:pm:{channel}", self.prefix))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(&e))?;
        Ok(ChannelStats {
            subscription_count: subs,
            user_count: users,
        })
    }

    async fn channels(&self, app_id: &str) -> Result<Vec<(String, ChannelStats)>, Unavailable> {
        self.check_up()?;
        let flat: Vec<Value> = self
            .scripts
            .channels
            .arg(&self.prefix)
            .arg(app_id)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(&e))?;
        Ok(flat
            .chunks_exact(3)
            .filter_map(|c| {
                Some((
                    string(&c[0])?,
                    ChannelStats {
                        subscription_count: int(&c[1])? as usize,
                        user_count: int(&c[2])? as usize,
                    },
                ))
            })
            .collect())
    }

    async fn presence_users(
        &self,
        app_id: &str,
        channel: &str,
    ) -> Result<Vec<String>, Unavailable> {
        self.check_up()?;
        redis::cmd("HKEYS")
            .arg(format!("{}:{app_id}:pm:{channel}", self.prefix))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(&e))
    }

    async fn is_pair(&self, _app_id: &str, _presence: &str, _a: &str, _b: &str) -> bool {
        // Peer pairs are formed by one node's registry; across nodes they are not yet.
        false
    }
}

impl Node {
    async fn disconnect_redis(&self, app_id: &str, socket: SocketId) {
        let out: Result<Value, _> = self
            .scripts
            .disconnect
            .arg(&self.prefix)
            .arg(&self.id)
            .arg(app_id)
            .arg(socket.to_string())
            .invoke_async(&mut self.conn.clone())
            .await;
        if let Err(err) = out {
            self.failed(&err);
        }
    }
}

#[async_trait]
impl Adapter for Node {
    async fn publish(
        &self,
        app_id: &str,
        channel: &str,
        frame: Frame,
        except: Option<SocketId>,
    ) -> Result<(), Unavailable> {
        self.registry.publish(app_id, channel, &frame, except);
        let env = Envelope::frame(&self.id, except, None, frame.as_str());
        self.publish_envelope(app_id, channel, env).await
    }

    async fn publish_stored(
        &self,
        app_id: &str,
        channel: &str,
        id: u64,
        frame: Frame,
        except: Option<SocketId>,
    ) -> Result<(), Unavailable> {
        self.registry
            .publish_stored(app_id, channel, id, &frame, except);
        let env = Envelope::frame(&self.id, except, Some(id), frame.as_str());
        self.publish_envelope(app_id, channel, env).await
    }

    async fn terminate_user(&self, app_id: &str, user_id: &str) -> Result<(), Unavailable> {
        terminate_local(&self.registry, app_id, user_id);
        self.check_up()?;
        let notice = AppNotice::Terminate {
            origin: self.id.clone(),
            user: user_id.to_string(),
        };
        let sent: Result<Value, _> = redis::cmd("PUBLISH")
            .arg(Topic::App(app_id.to_string()).name(&self.prefix))
            .arg(notice.encode())
            .query_async(&mut self.conn.clone())
            .await;
        sent.map(|_| ()).map_err(|e| self.failed(&e))
    }

    async fn cache_put(
        &self,
        app_id: &str,
        channel: &str,
        frame: Frame,
        data: &str,
        ttl: Duration,
    ) -> Result<(), Unavailable> {
        self.check_up()?;
        let value = serde_json::json!({ "frame": frame.as_str(), "data": data }).to_string();
        let set: Result<Value, _> = redis::cmd("SET")
            .arg(format!("{}:{app_id}:cache:{channel}", self.prefix))
            .arg(value)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut self.conn.clone())
            .await;
        set.map(|_| ()).map_err(|e| self.failed(&e))
    }

    async fn cache_get(
        &self,
        app_id: &str,
        channel: &str,
    ) -> Result<Option<CacheEntry>, Unavailable> {
        self.check_up()?;
        let key = format!("{}:{app_id}:cache:{channel}", self.prefix);
        let (value, pttl): (Option<String>, i64) = redis::pipe()
            .cmd("GET")
            .arg(&key)
            .cmd("PTTL")
            .arg(&key)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(&e))?;
        let Some(value) = value else {
            return Ok(None);
        };
        #[derive(serde::Deserialize)]
        struct Cached {
            frame: String,
            data: String,
        }
        let Ok(cached) = serde_json::from_str::<Cached>(&value) else {
            return Ok(None);
        };
        Ok(Some(CacheEntry {
            frame: Frame::from(cached.frame),
            data: cached.data,
            ttl: (pttl.max(0) as u64).div_ceil(1000),
        }))
    }
}
