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

mod adapter;
mod calls;
mod console;
mod envelope;
mod membership;
mod resync;
mod scripts;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use redis::Value;
use tokio::sync::{mpsc, oneshot, RwLock};
use tokio_util::sync::CancellationToken;

use crate::adapter::terminate_local;
use crate::config::{redact_uri, ClusterConfig};
use crate::feed::Feed;
use crate::membership::Unavailable;
use crate::protocol::{message, peer_channel};
use crate::publish::Publisher;
use crate::registry::{Change, Control, Frame, Registry};
use calls::Left;
use envelope::{AppNotice, Envelope, OfflineNotice, PeerNotice, Topic};
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
            tracing::error!(error = %why, "cluster: cut off from Redis; this node serves its own connections only until it has rejoined");
            *down = Some((why, unix_now()));
        }
    }

    fn set_up(&self) {
        let mut down = self.down.lock().expect("health lock");
        if !self.up.swap(true, Ordering::AcqRel) && down.take().is_some() {
            tracing::info!("cluster: rejoined; state re-asserted");
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
    /// The node's publish pipeline, whose offline-subscription index other nodes' changes
    /// update (set once the server is built).
    publisher: OnceLock<Publisher>,
    /// The debug console's feed, whose records cross nodes (set once the server is built).
    feed: OnceLock<Feed>,
    /// Wakes the supervisor to re-assert the node's state (a command failed).
    repair: tokio::sync::Notify,
    /// Redis lost the node's state: the next re-assert re-sends presence members.
    lost: AtomicBool,
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
            publisher: OnceLock::new(),
            feed: OnceLock::new(),
            repair: tokio::sync::Notify::new(),
            lost: AtomicBool::new(false),
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
        tokio::spawn(node.clone().beat(shutdown.clone()));
        tokio::spawn(node.clone().supervise(pubsub, shutdown));
        Ok((node, transitions_rx))
    }

    /// Lets other nodes' offline (un)subscriptions reach this node's publish pipeline.
    pub fn attach_publisher(&self, publisher: Publisher) {
        let _ = self.publisher.set(publisher);
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
        self.repair.notify_one();
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
    async fn join_cluster(&self) -> Result<(PubSubSink, PubSubStream, HashSet<String>), String> {
        let timeout = Duration::from_secs(self.config.command_timeout);
        let pubsub = tokio::time::timeout(timeout, self.client.get_async_pubsub())
            .await
            .map_err(|_| "no answer to connect".to_string())?
            .map_err(|e| err_text(&e))?;
        let (mut sink, stream) = pubsub.split();
        // Exactly these are subscribed: the topic keeper starts from this set, so a channel
        // joined or left meanwhile is (un)subscribed by its queued request.
        let names: Vec<String> = self
            .wanted_topics()
            .iter()
            .map(|t| t.name(&self.prefix))
            .collect();
        for chunk in names.chunks(512) {
            tokio::time::timeout(timeout, sink.subscribe(chunk))
                .await
                .map_err(|_| "no answer to SUBSCRIBE".to_string())?
                .map_err(|e| err_text(&e))?;
        }
        self.lost.store(true, Ordering::Release);
        self.repair_state().await?;
        Ok((sink, stream, names.into_iter().collect()))
    }

    /// Every topic the registry needs now.
    fn wanted_topics(&self) -> Vec<Topic> {
        let mut topics = vec![Topic::Offline, Topic::ConsoleWatch];
        if let Some(feed) = self.feed.get() {
            topics.extend(feed.watched_here().into_iter().map(Topic::Console));
        }
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

    /// Extends the node's deadline and reaps dead nodes; `false` when Redis did not know
    /// the node (it lost its state, or declared the node dead), which must then re-assert.
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
        let known = out.first().and_then(calls::int) == Some(1);
        let reaped = calls::parse_reaped(out.get(1));
        if !reaped.is_empty() {
            tracing::info!(node = %self.id, channels = reaped.len(), "cluster: reaped a dead node's members and subscriptions");
        }
        self.reaped(reaped).await;
        Ok(known)
    }

    /// Reports what undoing a dead (or departing) node's state changed: webhooks through
    /// the server, and the end of its members' peer pairs for their partners.
    async fn reaped(&self, reaped: Vec<(String, String, Left)>) {
        for (app_id, channel, left) in reaped {
            if left.removed {
                self.peer_notices(&app_id, &channel, &left.user, &left.peers, false)
                    .await;
            }
            self.transition(&app_id, &channel, left.change());
        }
    }

    /// Hands a transition learnt outside a session to the server (for webhooks).
    fn transition(&self, app_id: &str, channel: &str, change: Change) {
        let _ = self.transitions.send(Transition {
            app_id: app_id.to_string(),
            channel: channel.to_string(),
            change,
        });
    }

    /// Tells the sockets of each of `peers` on `presence`, on every node, that their pair
    /// with `user` formed (`added`) or ended, and subscribes or unsubscribes them.
    async fn peer_notices(
        &self,
        app_id: &str,
        presence: &str,
        user: &str,
        peers: &[String],
        added: bool,
    ) {
        let Some(base) = presence.strip_prefix("presence-") else {
            return;
        };
        let topic = Topic::Channel(app_id.to_string(), presence.to_string()).name(&self.prefix);
        for other in peers {
            let Some(peer) = peer_channel(base, user, other) else {
                continue;
            };
            let notice = PeerNotice {
                added,
                user: other.clone(),
                frame: message::peer_event(added, presence, &peer, user),
                peer,
            };
            let sent: Result<Value, _> = redis::cmd("PUBLISH")
                .arg(&topic)
                .arg(notice.encode())
                .query_async(&mut self.conn.clone())
                .await;
            if let Err(err) = sent {
                self.failed(&err);
            }
        }
    }

    /// Extends the node's deadline every third of `cluster.node_timeout`, apart from
    /// everything else the node does (a long re-assert must not let it be declared dead).
    /// A failed heartbeat, or one that finds the node unknown to Redis, asks the supervisor
    /// to repair.
    async fn beat(self: Arc<Node>, shutdown: CancellationToken) {
        let beat = Duration::from_millis(self.config.node_timeout * 1000 / 3);
        let mut ticker = tokio::time::interval(beat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match self.heartbeat().await {
                Ok(true) => {}
                Ok(false) => {
                    // Redis forgot this node (restarted empty, or declared it dead while it
                    // was stalled): everything it holds must go back.
                    self.lost.store(true, Ordering::Release);
                    self.health.set_down(
                        "Redis did not know this node (restarted empty, or declared it dead)"
                            .into(),
                    );
                    self.repair.notify_one();
                }
                Err(err) => {
                    self.failed(&err);
                }
            }
        }
    }

    /// The node's background task: delivers what other nodes publish, keeps the topics,
    /// repairs the node's state after a failed command and reconnects after an outage.
    async fn supervise(
        self: Arc<Node>,
        first: (PubSubSink, PubSubStream, HashSet<String>),
        shutdown: CancellationToken,
    ) {
        let mut wants = self
            .wants_rx
            .lock()
            .expect("wants lock")
            .take()
            .expect("one supervisor");
        let mut pubsub = Some(first);
        let mut wait = Duration::from_millis(100);
        loop {
            let (mut sink, mut stream, mut subscribed) = match pubsub.take() {
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
                            // Offline subscriptions other nodes changed meanwhile.
                            if let Some(publisher) = self.publisher.get().cloned() {
                                tokio::spawn(async move {
                                    if let Err(err) = publisher.reload().await {
                                        tracing::warn!(error = %err, "cluster: could not reload the offline subscriptions after reconnecting");
                                    }
                                });
                            }
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
                    // A command failed (or Redis forgot the node) while the pub/sub connection
                    // lived: what failed may have left Redis and the registry apart, so the
                    // node's state is re-asserted before it counts as joined again. If that
                    // fails too, Redis is really gone: reconnect.
                    _ = self.repair.notified() => {
                        if let Err(why) = self.repair_state().await {
                            break why;
                        }
                    }
                }
            };
            self.health.set_down(why);
        }
    }

    /// Registers the node (heartbeat), re-asserts its state, and counts it as joined.
    async fn repair_state(&self) -> Result<(), String> {
        let known = self.heartbeat().await.map_err(|e| err_text(&e))?;
        let lost = self.lost.swap(false, Ordering::AcqRel) || !known;
        if let Err(err) = self.reassert(lost).await {
            self.lost.fetch_or(lost, Ordering::AcqRel);
            return Err(err_text(&err));
        }
        self.health.set_up();
        Ok(())
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
                Topic::Offline | Topic::ConsoleWatch => true,
                Topic::Console(app) => self.feed.get().is_some_and(|f| f.is_watched_here(app)),
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
        match topic {
            Topic::Channel(app, channel) => {
                let Some(env) = Envelope::parse(payload) else {
                    if let Some(n) = PeerNotice::parse(payload) {
                        let control = match n.added {
                            true => Control::Subscribe {
                                channel: n.peer,
                                user_id: Arc::from(n.user.as_str()),
                            },
                            false => Control::Unsubscribe { channel: n.peer },
                        };
                        let frame = Frame::from(n.frame);
                        self.registry
                            .to_member(&app, &channel, &n.user, &frame, &control);
                    }
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
            Topic::Offline => {
                let Some(n) = OfflineNotice::parse(payload) else {
                    return;
                };
                if n.origin == self.id {
                    return;
                }
                if let Some(publisher) = self.publisher.get() {
                    publisher.apply_remote(&n.app, &n.channel, &n.user, n.subscribed);
                }
                // Acknowledged once applied: the origin answers its API call after every
                // live node did.
                let mut conn = self.conn.clone();
                let key = format!("{}:ack:{}", self.prefix, n.nonce);
                tokio::spawn(async move {
                    let _: Result<Value, _> = redis::pipe()
                        .cmd("INCR")
                        .arg(&key)
                        .cmd("EXPIRE")
                        .arg(&key)
                        .arg(60)
                        .query_async(&mut conn)
                        .await;
                });
            }
            Topic::ConsoleWatch => {
                if let (Some(feed), Some(app)) = (self.feed.get(), self.others(payload)) {
                    feed.remote_watch(app);
                }
            }
            Topic::Console(app) => {
                if let (Some(feed), Some(record)) = (self.feed.get(), self.others(payload)) {
                    feed.from_remote(&app, Arc::from(record));
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
        let out: Result<Value, _> = self
            .scripts
            .goodbye
            .arg(&self.prefix)
            .arg(&self.id)
            .invoke_async(&mut self.conn.clone())
            .await;
        match out {
            Ok(out) => {
                self.reaped(calls::parse_reaped(Some(&out))).await;
                tracing::info!(node = %self.id, "cluster: left");
            }
            Err(err) => {
                tracing::warn!(node = %self.id, error = %err, "cluster: could not say goodbye; the other nodes will reap this one after cluster.node_timeout")
            }
        }
    }
}
