//! One connection's task: admission, `pusher:connection_established`, then a loop over
//! client frames, queued outbound frames, the activity timer and shutdown.
//!
//! The loop is generic over a `Sink + Stream` of tungstenite messages, so it runs the same
//! over a real socket and in tests.
//!
//! Everything other tasks send to this connection goes through its bounded queue (see
//! `registry::Conn`); replies to the client's own frames are written directly, in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::apps::App;
use crate::auth;
use crate::protocol::message::{self, PresenceMember, SigninUser};
use crate::protocol::{
    codes, protocol_version, ChannelKind, ChannelName, ClientMessage, Close, SocketId,
};
use crate::registry::{Change, Conn, Frame};
use crate::server::Context;
use crate::webhooks::Event;

/// How long a closing handshake may take before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Most queued frames written before one flush.
const WRITE_BATCH: usize = 32;

/// How a session ends.
enum End {
    /// The client closed or the connection broke: nothing more to send.
    Gone,
    /// Close with this code after a `pusher:error`.
    Close(Close),
}

/// Runs one connection to its end. `path` and `query` come from the upgrade request.
pub async fn run<S>(mut ws: S, ctx: Context, path: &str, query: Option<&str>)
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin + Send,
{
    let app = match admit(&ctx, path, query).await {
        Ok(app) => app,
        Err(close) => {
            tracing::debug!(code = close.code, path, "connection refused");
            close_with(&mut ws, close).await;
            return;
        }
    };
    let socket_id = ctx.next_socket_id();
    let (conn, rx) = Conn::new(socket_id, ctx.config.server.max_queued_messages);
    let auth_deadline = app
        .authorized_connections
        .then(|| Instant::now() + Duration::from_secs(ctx.config.server.authorization_timeout));
    let mut session = Session {
        auth_deadline,
        user: None,
        ws,
        ctx: ctx.clone(),
        app,
        socket: socket_id.to_string(),
        conn,
        rx,
        subscriptions: HashMap::new(),
        window_start: Instant::now(),
        window_count: 0,
    };
    tracing::debug!(socket_id = %session.socket, app = %session.app.id, "connected");
    let end = session.serve().await;
    session.cleanup();
    ctx.registry.disconnect(&session.app.id);
    tracing::debug!(socket_id = %session.socket, "disconnected");
    if let End::Close(close) = end {
        close_with(&mut session.ws, close).await;
    }
}

/// Checks path, protocol, app and quota; counts the connection when admitted.
async fn admit(ctx: &Context, path: &str, query: Option<&str>) -> Result<Arc<App>, Close> {
    let key = path
        .strip_prefix("/app/")
        .filter(|k| !k.is_empty() && !k.contains('/'))
        .ok_or(Close::PATH_NOT_FOUND)?;
    protocol_version(query)?;
    let app = ctx
        .apps
        .find_by_key(key)
        .await
        .ok_or(Close::APP_NOT_FOUND)?;
    if !app.enabled {
        return Err(Close::APP_DISABLED);
    }
    ctx.registry.connect(&app.id, app.max_connections)?;
    Ok(app)
}

/// Sends `pusher:error` and the close frame, then waits briefly for the client's close.
async fn close_with<S>(ws: &mut S, close: Close)
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    let frames = async {
        if close.code >= 4000 || close == Close::MESSAGE_TOO_BIG {
            ws.feed(text(message::error(Some(close.code), close.message)))
                .await?;
        }
        let frame = CloseFrame {
            code: CloseCode::from(close.code),
            reason: close.message.into(),
        };
        ws.send(Message::Close(Some(frame))).await
    };
    if let Ok(Ok(())) = timeout(CLOSE_GRACE, frames).await {
        // Drain until the client answers the close, so the close frame is not lost to a reset.
        let _ = timeout(CLOSE_GRACE, async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }
}

fn text(s: String) -> Message {
    Message::Text(s.into())
}

struct Session<S> {
    ws: S,
    ctx: Context,
    app: Arc<App>,
    /// The socket id as clients see it (`conn.socket_id` formatted once).
    socket: String,
    conn: Arc<Conn>,
    rx: mpsc::Receiver<Frame>,
    /// Channels this socket is subscribed to, with its presence user id there.
    subscriptions: HashMap<String, Option<Arc<str>>>,
    window_start: Instant,
    window_count: u32,
    /// `authorized_connections` apps: when the connection must be authorized by.
    auth_deadline: Option<Instant>,
    /// The signed-in user and its watchlist.
    user: Option<(Arc<str>, Vec<String>)>,
}

/// What woke the loop.
enum Step {
    Stop(Close),
    Outbound(Option<Frame>),
    Inbound(Option<Result<Message, WsError>>),
    Idle,
}

impl<S> Session<S>
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin + Send,
{
    fn socket_id(&self) -> SocketId {
        self.conn.socket_id
    }

    async fn serve(&mut self) -> End {
        let hello =
            message::connection_established(&self.socket, self.ctx.config.server.activity_timeout);
        if let Err(end) = self.write(vec![text(hello)]).await {
            return end;
        }
        let activity = Duration::from_secs(self.ctx.config.server.activity_timeout);
        let pong_wait = Duration::from_secs(self.ctx.config.server.pong_timeout);
        let idle = sleep(activity);
        tokio::pin!(idle);
        let mut pinged = false;
        loop {
            let auth_deadline = self.auth_deadline;
            let step = tokio::select! {
                biased;
                _ = self.ctx.shutdown.cancelled() => Step::Stop(Close::SHUTTING_DOWN),
                reason = self.conn.close_requested() => Step::Stop(reason),
                _ = tokio::time::sleep_until(auth_deadline.unwrap_or_else(Instant::now)), if auth_deadline.is_some() => {
                    Step::Stop(Close::UNAUTHORIZED)
                }
                frame = self.rx.recv() => Step::Outbound(frame),
                msg = self.ws.next() => Step::Inbound(msg),
                _ = &mut idle => Step::Idle,
            };
            let result = match step {
                Step::Stop(reason) => return End::Close(reason),
                Step::Outbound(None) => return End::Gone,
                Step::Outbound(Some(frame)) => self.write_queued(frame).await,
                Step::Inbound(msg) => {
                    idle.as_mut().reset(Instant::now() + activity);
                    pinged = false;
                    // Boxed: the handlers' state lives on the heap only while a frame is
                    // handled, so an idle connection's task stays small.
                    Box::pin(self.on_message(msg)).await
                }
                Step::Idle if pinged => return End::Close(Close::PONG_TIMEOUT),
                Step::Idle => {
                    pinged = true;
                    idle.as_mut().reset(Instant::now() + pong_wait);
                    self.write(vec![text(message::ping())]).await
                }
            };
            if let Err(end) = result {
                return end;
            }
        }
    }

    /// Writes messages and flushes; gives up if the connection is asked to close meanwhile
    /// (a client that stopped reading must not hold its task forever).
    async fn write(&mut self, msgs: Vec<Message>) -> Result<(), End> {
        let ws = &mut self.ws;
        let writing = async {
            for m in msgs {
                ws.feed(m).await?;
            }
            ws.flush().await
        };
        tokio::select! {
            r = writing => r.map_err(|_| End::Gone),
            reason = self.conn.close_requested() => Err(End::Close(reason)),
            _ = self.ctx.shutdown.cancelled() => Err(End::Close(Close::SHUTTING_DOWN)),
        }
    }

    /// Writes a queued frame and whatever else is already waiting, with one flush.
    async fn write_queued(&mut self, first: Frame) -> Result<(), End> {
        let mut batch = vec![Message::Text(first)];
        while batch.len() < WRITE_BATCH {
            match self.rx.try_recv() {
                Ok(frame) => batch.push(Message::Text(frame)),
                Err(_) => break,
            }
        }
        self.write(batch).await
    }

    async fn error(&mut self, code: Option<u16>, msg: &str) -> Result<(), End> {
        self.write(vec![text(message::error(code, msg))]).await
    }

    async fn on_message(&mut self, msg: Option<Result<Message, WsError>>) -> Result<(), End> {
        match msg {
            None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => Err(End::Gone),
            Some(Err(WsError::Capacity(_))) => Err(End::Close(Close::MESSAGE_TOO_BIG)),
            Some(Err(err)) => {
                tracing::debug!(socket_id = %self.socket, cause = %err, "read failed");
                Err(End::Gone)
            }
            Some(Ok(Message::Text(t))) => self.on_text(t.as_str()).await,
            Some(Ok(Message::Binary(_))) => {
                self.error(
                    None,
                    "Binary frames are not supported: send JSON text frames",
                )
                .await
            }
            // tungstenite queued the pong; flush it out.
            Some(Ok(Message::Ping(_))) => self.write(Vec::new()).await,
            Some(Ok(Message::Close(_))) => {
                // tungstenite queued the close reply; send it so the client sees a clean close.
                let _ = timeout(CLOSE_GRACE, self.ws.flush()).await;
                Err(End::Gone)
            }
            Some(Ok(Message::Pong(_) | Message::Frame(_))) => Ok(()),
        }
    }

    async fn on_text(&mut self, text_frame: &str) -> Result<(), End> {
        let msg = match ClientMessage::parse(text_frame) {
            Ok(msg) => msg,
            Err(err) => return self.error(None, &err.to_string()).await,
        };
        match msg {
            ClientMessage::Ping => self.write(vec![text(message::pong())]).await,
            ClientMessage::Pong => Ok(()),
            ClientMessage::Subscribe {
                channel,
                auth,
                channel_data,
            } => self.subscribe(channel, auth, channel_data).await,
            ClientMessage::Unsubscribe { channel } => {
                if self.subscriptions.remove(&channel).is_some() {
                    self.leave(&channel);
                }
                Ok(())
            }
            ClientMessage::Signin { auth, user_data } => self.signin(auth, user_data).await,
            ClientMessage::ClientEvent {
                event,
                channel,
                data,
            } => self.client_event(event, channel, data).await,
        }
    }

    /// Reports a refused subscription both ways Pusher clients listen for it: `pusher:error`
    /// on the connection and `pusher:subscription_error` on the channel.
    async fn refuse_subscription(
        &mut self,
        channel: &str,
        kind: &str,
        msg: &str,
        status: u16,
    ) -> Result<(), End> {
        self.write(vec![
            text(message::error(None, msg)),
            text(message::subscription_error(channel, kind, msg, status)),
        ])
        .await
    }

    async fn subscribe(
        &mut self,
        channel: String,
        token: Option<String>,
        channel_data: Option<String>,
    ) -> Result<(), End> {
        let name = match ChannelName::parse(&channel) {
            Ok(name) => name,
            Err(err) => {
                return self
                    .refuse_subscription(&channel, "SubscriptionError", &err.to_string(), 400)
                    .await
            }
        };
        let kind = name.kind();
        if kind == ChannelKind::ServerToUser {
            let own = match (&self.user, name.server_to_user_id()) {
                (Some((me, _)), Some(id)) => **me == *id,
                _ => false,
            };
            if !own {
                let msg = "#server-to-user- channels are only for the signed-in user they name";
                return self
                    .refuse_subscription(&channel, "AuthError", msg, 403)
                    .await;
            }
        }
        if kind.needs_auth() {
            let signed = auth::channel_string(&self.socket, &channel, channel_data.as_deref());
            let token = token.as_deref().unwrap_or("");
            if let Err(err) = auth::verify_token(&self.app.key, &self.app.secret, token, &signed) {
                return self
                    .refuse_subscription(&channel, "AuthError", &err.to_string(), 401)
                    .await;
            }
        }
        let limits = &self.ctx.config.limits;
        let member = if kind == ChannelKind::Presence {
            let parsed = match channel_data.as_deref() {
                Some(data) => PresenceMember::parse(data, limits.max_presence_user_info_kb * 1024),
                None => Err(message::PresenceDataError::Missing),
            };
            match parsed {
                Ok(m) => Some(m),
                Err(err) => {
                    return self
                        .refuse_subscription(&channel, "SubscriptionError", &err.to_string(), 400)
                        .await
                }
            }
        } else {
            None
        };
        let user_id = member
            .as_ref()
            .map(|m| Arc::<str>::from(m.user_id.as_str()));
        let max_members = limits.max_presence_members;
        let count = self.counts(kind);
        let subscribed = self.ctx.registry.subscribe(
            &self.app.id,
            &channel,
            &self.conn,
            member,
            max_members,
            count,
        );
        match subscribed {
            Ok((data, change)) => {
                let fresh = self
                    .subscriptions
                    .insert(channel.clone(), user_id)
                    .is_none();
                if fresh {
                    self.report(&channel, &change, count);
                }
                if kind.needs_auth() {
                    self.auth_deadline = None;
                }
                let mut frames = vec![text(message::subscription_succeeded(&channel, &data))];
                if name.is_cache() {
                    match self.ctx.registry.cache_get(&self.app.id, &channel) {
                        Some(entry) => frames.push(Message::Text(entry.frame)),
                        None => {
                            frames.push(text(message::cache_miss(&channel)));
                            let miss = Event::CacheMiss {
                                channel: channel.clone(),
                            };
                            self.ctx.webhooks.emit(&self.app, miss);
                        }
                    }
                }
                self.write(frames).await
            }
            Err(err) => {
                self.refuse_subscription(&channel, "SubscriptionError", &err.to_string(), 400)
                    .await
            }
        }
    }

    async fn client_event(
        &mut self,
        event: String,
        channel: String,
        data: Box<RawValue>,
    ) -> Result<(), End> {
        if !self.app.client_events {
            return self
                .error(None, "Client events are not enabled for this app")
                .await;
        }
        // A name that is not subscribed is refused below either way; only the prefix matters.
        if !matches!(
            ChannelKind::of(&channel),
            ChannelKind::Private | ChannelKind::Presence
        ) {
            let msg =
                format!("Client event rejected: {channel:?} is not a private or presence channel");
            return self.error(None, &msg).await;
        }
        let Some(user_id) = self.subscriptions.get(&channel).cloned() else {
            let msg = format!("Client event rejected: not subscribed to channel {channel}");
            return self.error(None, &msg).await;
        };
        let limit = self.ctx.config.limits.max_event_payload_kb * 1024;
        if data.get().len() > limit {
            let msg = format!(
                "Client event rejected: data is {} bytes, the limit is {limit} bytes",
                data.get().len()
            );
            return self.error(None, &msg).await;
        }
        let now = Instant::now();
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.window_count = 0;
        }
        self.window_count += 1;
        let max = self.app.max_client_events_per_second;
        if self.window_count > max {
            let msg = format!("Client event rejected due to rate limit: at most {max} per second");
            return self.error(Some(codes::CLIENT_EVENT_RATE_LIMIT), &msg).await;
        }
        let frame = message::client_event(&event, &channel, &data, user_id.as_deref());
        self.ctx
            .adapter
            .publish(
                &self.app.id,
                &channel,
                Frame::from(frame),
                Some(self.socket_id()),
            )
            .await;
        let hook = Event::ClientEvent {
            channel,
            event,
            data,
            socket_id: self.socket.clone(),
            user_id: user_id.map(|u| u.to_string()),
        };
        self.ctx.webhooks.emit(&self.app, hook);
        Ok(())
    }

    /// `pusher:signin`: checks the signature over `socket_id::user::user_data`, records the
    /// user (one per connection) and answers with `pusher:signin_success`, then the initial
    /// watchlist state.
    async fn signin(&mut self, token: String, user_data: String) -> Result<(), End> {
        let signed = auth::user_string(&self.socket, &user_data);
        if let Err(err) = auth::verify_token(&self.app.key, &self.app.secret, &token, &signed) {
            return self.error(None, &format!("Invalid signin: {err}")).await;
        }
        let user = match SigninUser::parse(&user_data) {
            Ok(user) => user,
            Err(problem) => {
                return self
                    .error(None, &format!("Invalid signin: {problem}"))
                    .await
            }
        };
        if let Some((current, _)) = &self.user {
            if **current != *user.id {
                let msg = format!(
                    "Invalid signin: this connection is already signed in as user {current}"
                );
                return self.error(None, &msg).await;
            }
            // The same user again: nothing changes.
            return self
                .write(vec![text(message::signin_success(&user_data))])
                .await;
        }
        let (online, offline) =
            self.ctx
                .registry
                .sign_in(&self.app.id, &user.id, &self.conn, &user.watchlist);
        self.user = Some((Arc::from(user.id.as_str()), user.watchlist.clone()));
        self.auth_deadline = None;
        let mut frames = vec![text(message::signin_success(&user_data))];
        if !user.watchlist.is_empty() {
            let online: Vec<&str> = online.iter().map(String::as_str).collect();
            let offline: Vec<&str> = offline.iter().map(String::as_str).collect();
            frames.push(text(message::watchlist_events(&online, &offline)));
        }
        if user.watchlist_truncated {
            let msg = "Watchlist limit exceeded. Only the first 100 user IDs are accepted.";
            frames.push(text(message::error(Some(codes::WATCHLIST_LIMIT), msg)));
        }
        self.write(frames).await
    }

    /// Whether subscribers of this kind of channel are sent subscription counts.
    fn counts(&self, kind: ChannelKind) -> bool {
        self.app.subscription_count && kind != ChannelKind::Presence
    }

    /// Turns a registry change into webhook events.
    fn report(&self, channel: &str, change: &Change, counted: bool) {
        let hooks = &self.ctx.webhooks;
        let ch = || channel.to_string();
        if change.occupied {
            hooks.emit(&self.app, Event::ChannelOccupied { channel: ch() });
        }
        if let Some(user) = &change.member_added {
            let user_id = user.to_string();
            hooks.emit(
                &self.app,
                Event::MemberAdded {
                    channel: ch(),
                    user_id,
                },
            );
        }
        if let Some(user) = &change.member_removed {
            let user_id = user.to_string();
            hooks.emit(
                &self.app,
                Event::MemberRemoved {
                    channel: ch(),
                    user_id,
                },
            );
        }
        if change.vacated {
            hooks.emit(&self.app, Event::ChannelVacated { channel: ch() });
        }
        if counted {
            let count = change.subscription_count;
            hooks.emit(
                &self.app,
                Event::SubscriptionCount {
                    channel: ch(),
                    count,
                },
            );
        }
    }

    /// Leaves one channel in the registry and reports the change.
    fn leave(&self, channel: &str) {
        let count = self.counts(ChannelKind::of(channel));
        let change =
            self.ctx
                .registry
                .unsubscribe(&self.app.id, channel, self.conn.socket_id, count);
        if let Some(change) = change {
            self.report(channel, &change, count);
        }
    }

    /// Leaves every channel (presence members see `member_removed` where due).
    fn cleanup(&mut self) {
        let channels: Vec<String> = self.subscriptions.drain().map(|(c, _)| c).collect();
        for channel in channels {
            self.leave(&channel);
        }
        if let Some((user, watchlist)) = self.user.take() {
            self.ctx
                .registry
                .sign_out(&self.app.id, &user, self.conn.socket_id, &watchlist);
        }
    }
}
