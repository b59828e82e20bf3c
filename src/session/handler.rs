//! One connection's task: admission, `pusher:connection_established`, then a loop over
//! client frames, queued outbound items, the activity timer and shutdown.
//!
//! Events from other tasks reach the socket through the connection's outlet
//! (`wire::Outlet`), mostly written by the publishing task itself; the session writes only
//! what had to wait, its own replies, and the stored events and subscription changes it
//! must look at first. Replies go before queued events, and while a client frame is being
//! handled the outlet is held, so an event on a channel just joined never overtakes the
//! `subscription_succeeded` that confirms it.
//!
//! Writing never blocks the loop: [`poll_io`] writes what waits as far as the socket takes
//! it and reads client frames, in one poll. So the heartbeat, shutdown and close requests
//! are served while a write is pending, and a socket that accepts no bytes for
//! `server.write_timeout` is closed. Reading pauses while replies pile up, so a client that
//! sends but does not read cannot grow them.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::time::{sleep, timeout, Instant};

use crate::apps::App;
use crate::auth;
use crate::context::Context;
use crate::feed::Record;
use crate::metrics::{AppMetrics, Ended};
use crate::protocol::message::{self, PresenceMember, SigninUser};
use crate::protocol::{
    codes, parse_peer, protocol_version, ChannelKind, ChannelName, ClientMessage, Close, SocketId,
    PERSONAL_PREFIX,
};
use crate::publish::{Data, Publication, Sender};
use crate::registry::{Change, Conn, Control, Frame, Special, SubscribeError};
use crate::session::{Handshake, Link};
use crate::storage::{self, StoreError};
use crate::webhooks::Event;
use crate::wire::{Inbound, Outlet, ReadError, Reader, Written};

/// How long a closing handshake may take before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Client frames are read only while fewer replies than this wait to be written.
const READ_PAUSE: usize = 64;

/// Bytes read from the socket at a time, into a buffer on the stack: nothing is held per
/// connection between reads.
const READ_CHUNK: usize = 8 * 1024;

/// How a session ends.
enum End {
    /// The client closed or the connection broke: nothing more to send.
    Gone,
    /// Close with this code after a `pusher:error`.
    Close(Close),
}

/// Runs one connection to its end. `initial` holds client bytes read with the handshake.
///
/// Only `serve`'s state lasts, so everything before and after it is boxed and dropped when
/// done: a task is as large as the largest state it can be in, and an async fn keeps its
/// arguments for its whole life (hence a plain fn returning a future that holds one box).
pub fn run(
    link: Link,
    initial: Bytes,
    ctx: Arc<Context>,
    handshake: Box<Handshake>,
) -> impl std::future::Future<Output = ()> + Send {
    let start = Box::pin(start(link, initial, ctx, handshake));
    async move {
        let Some(mut session) = start.await else {
            return;
        };
        let end = session.serve().await;
        Box::pin(session.finish(end)).await;
    }
}

/// Admission: the app, the protocol, the quota. A session, or `None` when the connection
/// was refused (and closed).
async fn start(
    link: Link,
    initial: Bytes,
    ctx: Arc<Context>,
    handshake: Box<Handshake>,
) -> Option<Session> {
    let mut reader = Reader::new(crate::session::transport_cap(&ctx));
    reader.feed(&initial);
    // A slice of hyper's read buffer keeps all of it: let go of it now.
    drop(initial);
    let socket_id = ctx.next_socket_id();
    let capacity = ctx.config.server.max_queued_messages;
    let conn = match link {
        Link::Plain(socket) => Conn::new(socket_id, Some(socket), capacity),
        Link::Tls(socket, tls) => Conn::new_tls(socket_id, socket, tls, capacity),
    };
    let app = match admit(&ctx, &handshake).await {
        Ok(app) => app,
        Err(close) => {
            tracing::debug!(code = close.code, path = %handshake.path, "connection refused");
            ctx.metrics.refused(close.code);
            close_with(&conn, &mut reader, close).await;
            return None;
        }
    };
    if let Err(close) = ctx.membership.connect(&app, &conn).await {
        tracing::debug!(code = close.code, app = %app.id, "connection refused");
        ctx.metrics.refused(close.code);
        close_with(&conn, &mut reader, close).await;
        return None;
    }
    let stats = ctx.metrics.app(&app.id);
    stats.connected();
    ctx.feed.emit(&app.id, || Record {
        socket_id: Some(socket_id.to_string()),
        ..Record::new("connected")
    });
    // Shutdown asks every registered connection to close; one registered after that
    // finds the token cancelled instead.
    if ctx.shutdown.is_cancelled() {
        conn.request_close(Close::SHUTTING_DOWN);
    }
    let auth_deadline = app
        .authorized_connections
        .then(|| Instant::now() + Duration::from_secs(ctx.config.server.authorization_timeout));
    let burst = ctx.config.limits.max_channels_per_connection;
    let session = Session {
        auth_deadline,
        user: None,
        reader,
        floors: Vec::new(),
        subscribes: Bucket::full(burst),
        ctx,
        app,
        stats,
        socket: socket_id.to_string(),
        conn,
        subscriptions: HashMap::new(),
        window_start: Instant::now(),
        window_count: 0,
    };
    tracing::debug!(socket_id = %session.socket, app = %session.app.id, "connected");
    Some(session)
}

/// Checks path, protocol, app and origin (the quota is checked when the connection is
/// counted).
async fn admit(ctx: &Context, handshake: &Handshake) -> Result<Arc<App>, Close> {
    let key = handshake
        .path
        .strip_prefix("/app/")
        .filter(|k| !k.is_empty() && !k.contains('/'))
        .ok_or(Close::PATH_NOT_FOUND)?;
    protocol_version(handshake.query.as_deref())?;
    let app = ctx.apps.find_by_key(key).ok_or(if ctx.apps.is_loaded() {
        Close::APP_NOT_FOUND
    } else {
        Close::NOT_READY
    })?;
    if !app.enabled {
        return Err(Close::APP_DISABLED);
    }
    if !crate::origin::allowed(&app.allowed_origins, handshake.origin.as_deref()) {
        return Err(Close::ORIGIN_NOT_ALLOWED);
    }
    Ok(app)
}

/// Sends `pusher:error` and the close frame, then waits briefly for the client's close.
async fn close_with(conn: &Conn, reader: &mut Reader, close: Close) {
    conn.out.seal();
    if close.announces() {
        conn.out
            .reply(text(message::error(Some(close.code), close.message)));
    }
    conn.out.reply(Frame::close(close.code, close.message));
    if let Ok(Ok(())) = timeout(CLOSE_GRACE, flush(&conn.out)).await {
        // Read until the client answers the close, so the close frame is not lost to a
        // reset (unread bytes at close make the kernel send RST).
        let out = &conn.out;
        if out.socket().is_none() {
            return;
        }
        let _ = timeout(CLOSE_GRACE, async {
            while let Read::Message(msg) = poll_fn(|cx| poll_read(out, reader, cx)).await {
                if matches!(msg, Inbound::Close(_)) {
                    break;
                }
            }
        })
        .await;
        out.close_notify();
    }
}

/// Writes everything the outlet holds (after [`Outlet::seal`], only replies).
async fn flush(out: &Outlet) -> io::Result<()> {
    loop {
        match poll_fn(|cx| out.poll_write(cx)).await? {
            Written::Idle => return Ok(()),
            // Sealed: no special item or close request is returned any more.
            Written::Special(_) | Written::Close(_) => {}
        }
    }
}

/// What one read gave.
enum Read {
    /// A whole message.
    Message(Inbound),
    /// Bytes that break the protocol or a limit.
    Bad(ReadError),
    /// The connection ended or failed.
    Gone,
}

/// Reads client bytes until a whole message is parsed or the socket has no more for now.
fn poll_read(out: &Outlet, reader: &mut Reader, cx: &mut TaskContext<'_>) -> Poll<Read> {
    let Some(socket) = out.socket() else {
        return Poll::Pending;
    };
    loop {
        match reader.message() {
            Ok(Some(msg)) => return Poll::Ready(Read::Message(msg)),
            Err(err) => return Poll::Ready(Read::Bad(err)),
            Ok(None) => {}
        }
        // Read before waiting: over TLS, plaintext may already wait in rustls. On a plain
        // socket that is not readable, tokio answers WouldBlock without a syscall.
        let mut chunk = [0u8; READ_CHUNK];
        match out.read(&mut chunk) {
            Ok(0) => return Poll::Ready(Read::Gone),
            Ok(n) => {
                reader.feed(&chunk[..n]);
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Poll::Ready(Read::Gone),
        }
        match socket.poll_read_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(Read::Gone),
            Poll::Ready(Ok(())) => {}
        }
    }
}

/// The `since` of a personal channel's channel_data: absent, or a non-negative integer.
fn personal_since(channel_data: &str) -> Result<Option<u64>, String> {
    let value: serde_json::Value = serde_json::from_str(channel_data)
        .map_err(|_| "Invalid channel_data: not JSON".to_string())?;
    let Some(obj) = value.as_object() else {
        return Err("Invalid channel_data: a personal channel takes a JSON object".into());
    };
    match obj.get("since") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            format!("Invalid channel_data: 'since' must be an event id (a non-negative integer), not {v}")
        }),
    }
}

fn text(s: String) -> Frame {
    Frame::text(&s)
}

/// What [`poll_io`] saw.
enum Io {
    /// A client message, a bad frame, or the end of the connection.
    Inbound(Read),
    /// The socket failed while writing.
    WriteFailed,
    /// The server changed this session's subscriptions (a peer pair formed or ended).
    Control(Control),
    /// Someone asked this connection to close.
    Close(Close),
}

/// Whether a stored event of a personal channel was not in that channel's replay.
/// `floors`: see [`Session::floors`].
fn fresh(floors: &[(String, u64)], id: u64, frame: &Frame) -> bool {
    match floors {
        [] => true,
        // One personal channel: every stored event is for it.
        [(_, floor)] => id > *floor,
        floors => {
            #[derive(serde::Deserialize)]
            struct Head<'a> {
                #[serde(borrow)]
                channel: std::borrow::Cow<'a, str>,
            }
            let head: Option<Head<'_>> = serde_json::from_str(frame.as_str()).ok();
            let floor = head.and_then(|h| {
                floors
                    .iter()
                    .find(|(c, _)| *c == h.channel)
                    .map(|(_, f)| *f)
            });
            floor.is_none_or(|floor| id > floor)
        }
    }
}

/// Writes what waits as far as the socket takes it, then reads a client message if
/// replies are not piling up. Ready only with something for the session to act on.
fn poll_io(
    conn: &Conn,
    reader: &mut Reader,
    floors: &[(String, u64)],
    cx: &mut TaskContext<'_>,
) -> Poll<Io> {
    loop {
        match conn.out.poll_write(cx) {
            Poll::Ready(Ok(Written::Close(reason))) => return Poll::Ready(Io::Close(reason)),
            Poll::Ready(Ok(Written::Special(special))) => match *special {
                Special::Stored { id, frame } => {
                    // Nothing is before it (partial frame and replies were written), so as
                    // a reply it goes out next, in its place.
                    if fresh(floors, id, &frame) {
                        conn.out.reply(frame);
                    }
                }
                Special::Control(control) => return Poll::Ready(Io::Control(control)),
            },
            Poll::Ready(Ok(Written::Idle)) | Poll::Pending => break,
            Poll::Ready(Err(_)) => return Poll::Ready(Io::WriteFailed),
        }
    }
    if conn.out.replies_waiting() < READ_PAUSE && conn.out.socket().is_some() {
        if let Poll::Ready(read) = poll_read(&conn.out, reader, cx) {
            return Poll::Ready(Io::Inbound(read));
        }
    }
    Poll::Pending
}

/// A token bucket for `pusher:subscribe` requests: `burst` at once, then `rate` per second.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: usize) -> Bucket {
        Bucket {
            tokens: burst as f64,
            at: Instant::now(),
        }
    }

    fn take(&mut self, rate: u32, burst: usize) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * f64::from(rate);
        self.tokens = (self.tokens + refill).min(burst as f64);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Session {
    /// Client bytes not parsed into a message yet.
    reader: Reader,
    /// Personal channels this socket is subscribed to, with the highest stored-event id
    /// their subscription replayed: a stored event at or below it was replayed already. In a
    /// cluster also its presence channels, with the version of the last member notice its
    /// `subscription_succeeded` reflected: older notices are not delivered.
    floors: Vec<(String, u64)>,
    ctx: Arc<Context>,
    app: Arc<App>,
    /// The app's counters, looked up once.
    stats: Arc<AppMetrics>,
    /// The socket id as clients see it (`conn.socket_id` formatted once).
    socket: String,
    conn: Arc<Conn>,
    /// Channels this socket is subscribed to, with its presence user id there.
    subscriptions: HashMap<String, Option<Arc<str>>>,
    /// `pusher:subscribe` rate limit.
    subscribes: Bucket,
    window_start: Instant,
    window_count: u32,
    /// `authorized_connections` apps: when the connection must be authorized by.
    auth_deadline: Option<Instant>,
    /// The signed-in user and its watchlist.
    user: Option<(Arc<str>, Vec<String>)>,
}

/// What woke the loop.
enum Step {
    Io(Io),
    Timer,
}

impl Session {
    fn socket_id(&self) -> SocketId {
        self.conn.socket_id
    }

    async fn serve(&mut self) -> End {
        let hello =
            message::connection_established(&self.socket, self.ctx.config.server.activity_timeout);
        self.send(vec![text(hello)]);
        let server = &self.ctx.config.server;
        let activity = Duration::from_secs(server.activity_timeout);
        let pong_wait = Duration::from_secs(server.pong_timeout);
        let write_timeout = Duration::from_secs(server.write_timeout);
        // The write timeout is checked a few times per period, so a stall is caught within
        // about a quarter of it past the limit.
        let write_check = (write_timeout / 4).max(Duration::from_millis(100));
        // One timer for every deadline (ping or pong, authorization, write check): each
        // timer costs every idle connection its size.
        let mut idle_at = Instant::now() + activity;
        let timer = sleep(activity);
        tokio::pin!(timer);
        let mut pinged = false;
        // Bytes written and when that count last moved, while something waits to be written.
        let mut written = self.conn.out.written();
        let mut progress_at = Instant::now();
        let mut check_at = Instant::now();
        let mut was_writing = false;
        loop {
            let writing = self.conn.out.writing();
            if writing && !was_writing {
                written = self.conn.out.written();
                progress_at = Instant::now();
                check_at = progress_at + write_check;
            }
            was_writing = writing;
            let mut deadline = idle_at;
            if let Some(auth) = self.auth_deadline {
                deadline = deadline.min(auth);
            }
            if writing {
                deadline = deadline.min(check_at);
            }
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            let (conn, reader, floors) = (&self.conn, &mut self.reader, &self.floors);
            let step = tokio::select! {
                biased;
                io = poll_fn(|cx| poll_io(conn, reader, floors, cx)) => Step::Io(io),
                _ = &mut timer => Step::Timer,
            };
            match step {
                Step::Io(Io::WriteFailed | Io::Inbound(Read::Gone)) => return End::Gone,
                Step::Io(Io::Close(reason)) => return End::Close(reason),
                Step::Io(Io::Control(control)) => {
                    self.conn.out.hold(true);
                    Box::pin(self.control(control)).await;
                    self.conn.out.hold(false);
                }
                Step::Io(Io::Inbound(msg)) => {
                    // Every check reads the app as it is now: a rotated secret, a switch or a
                    // webhook changed since the handshake applies at once.
                    match self.ctx.apps.find_by_id(&self.app.id) {
                        Some(app) if app.enabled => self.app = app,
                        Some(_) => return End::Close(Close::APP_DISABLED),
                        None => return End::Close(Close::APP_NOT_FOUND),
                    }
                    idle_at = Instant::now() + activity;
                    pinged = false;
                    // Held: events wait behind this frame's replies (see the module header).
                    // Boxed: the handlers' state lives on the heap only while a frame is
                    // handled, so an idle connection's task stays small.
                    self.conn.out.hold(true);
                    let handled = Box::pin(self.on_message(msg)).await;
                    self.conn.out.hold(false);
                    if let Err(end) = handled {
                        return end;
                    }
                }
                Step::Timer => {
                    let now = Instant::now();
                    if self.auth_deadline.is_some_and(|at| at <= now) {
                        return End::Close(Close::UNAUTHORIZED);
                    }
                    if idle_at <= now {
                        if pinged {
                            return End::Close(Close::PONG_TIMEOUT);
                        }
                        pinged = true;
                        idle_at = now + pong_wait;
                        self.send(vec![text(message::ping())]);
                    }
                    if writing && check_at <= now {
                        check_at = now + write_check;
                        let bytes = self.conn.out.written();
                        if bytes != written {
                            written = bytes;
                            progress_at = now;
                        } else if self.conn.out.writing()
                            && now.duration_since(progress_at) >= write_timeout
                        {
                            return End::Close(Close::WRITE_TIMEOUT);
                        }
                    }
                }
            }
        }
    }

    /// Queues replies for the client, after the replies queued before them and ahead of
    /// queued events.
    fn send(&mut self, frames: Vec<Frame>) {
        let bytes = frames.iter().map(Frame::len).sum();
        self.stats.sent(frames.len(), bytes);
        for frame in frames {
            self.conn.out.reply(frame);
        }
    }

    fn error(&mut self, code: Option<u16>, msg: &str) -> Result<(), End> {
        self.send(vec![text(message::error(code, msg))]);
        Ok(())
    }

    async fn on_message(&mut self, read: Read) -> Result<(), End> {
        match read {
            Read::Gone => Err(End::Gone),
            Read::Bad(err) => {
                tracing::debug!(socket_id = %self.socket, cause = %err, "bad frame");
                Err(End::Close(match err {
                    ReadError::TooBig => Close::MESSAGE_TOO_BIG,
                    ReadError::Utf8 => Close::INVALID_PAYLOAD,
                    ReadError::Protocol(_) => Close::PROTOCOL_ERROR,
                }))
            }
            Read::Message(Inbound::Text(t)) => {
                self.stats.received(t.len());
                self.on_text(&t).await
            }
            Read::Message(Inbound::Binary) => self.error(
                None,
                "Binary frames are not supported: send JSON text frames",
            ),
            Read::Message(Inbound::Ping(payload)) => {
                self.conn.out.reply(Frame::pong(&payload));
                Ok(())
            }
            Read::Message(Inbound::Close(code)) => {
                // Answer the close (RFC 6455 5.5.1: echo its code) so the client sees a
                // clean close, then end.
                self.conn.out.seal();
                self.conn.out.reply(Frame::close(code.unwrap_or(1000), ""));
                if let Ok(Ok(())) = timeout(CLOSE_GRACE, flush(&self.conn.out)).await {
                    self.conn.out.close_notify();
                }
                Err(End::Gone)
            }
            Read::Message(Inbound::Pong) => Ok(()),
        }
    }

    async fn on_text(&mut self, text_frame: &str) -> Result<(), End> {
        let msg = match ClientMessage::parse(text_frame) {
            Ok(msg) => msg,
            Err(err) => return self.error(None, &err.to_string()),
        };
        match msg {
            ClientMessage::Ping => {
                self.send(vec![text(message::pong())]);
                Ok(())
            }
            ClientMessage::Pong => Ok(()),
            ClientMessage::Subscribe {
                channel,
                auth,
                channel_data,
            } => self.subscribe(channel, auth, channel_data).await,
            ClientMessage::Unsubscribe { channel } => {
                if self.subscriptions.remove(&channel).is_some() {
                    self.leave(&channel).await;
                    self.floors.retain(|(c, _)| *c != channel);
                    // Leaving a presence channel leaves its peer pairs, whatever the
                    // membership could tell (EXTENSIONS.md §3: the pair is for members).
                    let pairs: Vec<String> = self
                        .subscriptions
                        .keys()
                        .filter(|c| parse_peer(c).is_some_and(|(p, _, _)| p == channel))
                        .cloned()
                        .collect();
                    for pair in pairs {
                        self.subscriptions.remove(&pair);
                        self.leave(&pair).await;
                    }
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
    fn refuse_subscription(
        &mut self,
        channel: &str,
        kind: &str,
        msg: &str,
        status: u16,
    ) -> Result<(), End> {
        self.refuse_with_code(channel, None, kind, msg, status)
    }

    /// [`Session::refuse_subscription`] with a `pusher:error` code.
    fn refuse_with_code(
        &mut self,
        channel: &str,
        code: Option<u16>,
        kind: &str,
        msg: &str,
        status: u16,
    ) -> Result<(), End> {
        self.send(vec![
            text(message::error(code, msg)),
            text(message::subscription_error(channel, kind, msg, status)),
        ]);
        Ok(())
    }

    async fn subscribe(
        &mut self,
        channel: String,
        token: Option<String>,
        channel_data: Option<String>,
    ) -> Result<(), End> {
        let limits = &self.ctx.config.limits;
        let (rate, most) = (
            limits.max_subscribes_per_second,
            limits.max_channels_per_connection,
        );
        if !self.subscribes.take(rate, most) {
            let msg = format!(
                "Subscription rejected due to rate limit: at most {rate} pusher:subscribe per second"
            );
            let code = Some(codes::SUBSCRIBE_RATE_LIMIT);
            return self.refuse_with_code(&channel, code, "LimitReached", &msg, 429);
        }
        if self.subscriptions.len() >= most && !self.subscriptions.contains_key(&channel) {
            let msg = format!(
                "Subscription rejected: this connection is subscribed to {most} channels, the limit"
            );
            let code = Some(codes::SUBSCRIPTION_LIMIT);
            return self.refuse_with_code(&channel, code, "LimitReached", &msg, 429);
        }
        let name = match ChannelName::parse(&channel) {
            Ok(name) => name,
            Err(err) => {
                return self.refuse_subscription(
                    &channel,
                    "SubscriptionError",
                    &err.to_string(),
                    400,
                )
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
                return self.refuse_subscription(&channel, "AuthError", msg, 403);
            }
        }
        // A peer channel is its pair's: the socket must be one of the two users on the
        // presence channel, both flagged `peer` (EXTENSIONS.md §3).
        let mut peer_user = None;
        if kind == ChannelKind::Peer {
            let mut mine = None;
            if let Some((presence, a, b)) = parse_peer(&channel) {
                if let Some(Some(me)) = self.subscriptions.get(&presence).cloned() {
                    let pair = self.ctx.membership.is_pair(&self.app.id, &presence, a, b);
                    if pair.await && (*me == *a || *me == *b) {
                        mine = Some(me);
                    }
                }
            }
            let Some(me) = mine else {
                let msg = "Peer channels are only for the two peer members they name, \
                           while both are on the presence channel";
                return self.refuse_subscription(&channel, "AuthError", msg, 403);
            };
            if self.subscriptions.contains_key(&channel) {
                // The server subscribed it when the pair formed; subscribing twice is harmless.
                self.send(vec![text(message::subscription_succeeded(&channel, "{}"))]);
                return Ok(());
            }
            peer_user = Some(me);
        }
        if kind.needs_auth() {
            let signed = auth::channel_string(&self.socket, &channel, channel_data.as_deref());
            let token = token.as_deref().unwrap_or("");
            if let Err(err) = auth::verify_token(&self.app.key, &self.app.secret, token, &signed) {
                return self.refuse_subscription(&channel, "AuthError", &err.to_string(), 401);
            }
        }
        // A personal channel may carry `{"since": <event id>}` in its signed channel_data.
        let personal = channel.strip_prefix(PERSONAL_PREFIX).map(str::to_string);
        let since = match (&personal, channel_data.as_deref()) {
            (Some(_), Some(data)) => match personal_since(data) {
                Ok(since) => since,
                Err(msg) => {
                    return self.refuse_subscription(&channel, "SubscriptionError", &msg, 400)
                }
            },
            _ => None,
        };
        let limits = &self.ctx.config.limits;
        let member = if kind == ChannelKind::Presence {
            let parsed = match channel_data.as_deref() {
                Some(data) => PresenceMember::parse(data, limits.max_presence_user_info_kb * 1024),
                None => Err(message::PresenceDataError::Missing),
            };
            match parsed {
                Ok(m) => Some(m),
                Err(err) => {
                    return self.refuse_subscription(
                        &channel,
                        "SubscriptionError",
                        &err.to_string(),
                        400,
                    )
                }
            }
        } else {
            None
        };
        let user_id = member
            .as_ref()
            .map(|m| Arc::<str>::from(m.user_id.as_str()))
            .or(peer_user);
        let max_members = limits.max_presence_members;
        let count = self.counts(kind);
        let subscribed = self
            .ctx
            .membership
            .join(
                &self.app.id,
                &channel,
                &self.conn,
                member,
                max_members,
                count,
            )
            .await;
        match subscribed {
            Ok((data, change)) => {
                let fresh = self
                    .subscriptions
                    .insert(channel.clone(), user_id)
                    .is_none();
                if fresh {
                    self.report(&channel, &change, count);
                    self.show("subscribed", &channel);
                }
                if kind.needs_auth() {
                    self.auth_deadline = None;
                }
                // In a cluster, member notices older than the member list just read are
                // dropped when they reach this socket (see `Wire::fresh`).
                if let Some(floor) = change.notice_floor {
                    self.floors.retain(|(c, _)| *c != channel);
                    self.floors.push((channel.clone(), floor));
                }
                let data = match personal {
                    None => data,
                    // Registered first, then read: an event stored meanwhile is in the
                    // replay or queued after it, and the floor drops the copy in the queue.
                    Some(user) => match self.personal_replay(&user, since).await {
                        Ok((data, floor)) => {
                            self.floors.retain(|(c, _)| *c != channel);
                            self.floors.push((channel.clone(), floor));
                            data
                        }
                        Err(err) => {
                            self.subscriptions.remove(&channel);
                            self.leave(&channel).await;
                            self.floors.retain(|(c, _)| *c != channel);
                            let msg = format!("Stored events are unavailable: {err}");
                            return self.refuse_subscription(
                                &channel,
                                "SubscriptionError",
                                &msg,
                                503,
                            );
                        }
                    },
                };
                let mut frames = vec![text(message::subscription_succeeded(&channel, &data))];
                if name.is_cache() {
                    match self.ctx.adapter.cache_get(&self.app.id, &channel).await {
                        Ok(Some(entry)) => frames.push(entry.frame),
                        // The cluster's cache could not be read: a miss for the client,
                        // but no webhook claiming the channel has nothing cached.
                        Err(err) => {
                            tracing::debug!(channel = %channel, error = %err, "cache unreadable");
                            frames.push(text(message::cache_miss(&channel)));
                        }
                        Ok(None) => {
                            frames.push(text(message::cache_miss(&channel)));
                            let miss = Event::CacheMiss {
                                channel: channel.clone(),
                            };
                            self.ctx.webhooks.emit(&self.app, miss);
                        }
                    }
                }
                {
                    self.send(frames);
                    Ok(())
                }
            }
            Err(err) => {
                // 503 when the cluster could not be asked; 400 for this request's problem.
                let status = match err {
                    SubscribeError::Unavailable(_) => 503,
                    _ => 400,
                };
                self.refuse_subscription(&channel, "SubscriptionError", &err.to_string(), status)
            }
        }
    }

    /// The `subscription_succeeded` data of `user`'s personal channel (EXTENSIONS.md §2)
    /// and the highest id it replays. (Owned arguments: the session is not `Sync`, so no
    /// borrow of it may live across the read.)
    fn personal_replay(
        &self,
        user: &str,
        since: Option<u64>,
    ) -> impl std::future::Future<Output = Result<(String, u64), StoreError>> + Send + 'static {
        let config = self.ctx.config.storage.clone();
        let storage = self.ctx.publisher.storage().clone();
        let (app, user) = (self.app.id.clone(), user.to_string());
        async move {
            let replay = storage::replay(
                &storage,
                &app,
                &user,
                since,
                config.replay_last,
                config.replay_max,
            )
            .await?;
            let floor = replay
                .events
                .last()
                .map(|e| e.id)
                .unwrap_or(0)
                .max(since.unwrap_or(0));
            let mut data = serde_json::json!({
                "channels": replay.channels,
                "events": replay.events,
            });
            if replay.truncated {
                data["truncated"] = serde_json::Value::Bool(true);
            }
            Ok((data.to_string(), floor))
        }
    }

    async fn client_event(
        &mut self,
        event: String,
        channel: String,
        data: Box<RawValue>,
    ) -> Result<(), End> {
        if !self.app.client_events {
            return self.error(None, "Client events are not enabled for this app");
        }
        // A name that is not subscribed is refused below either way; only the prefix matters.
        if !matches!(
            ChannelKind::of(&channel),
            ChannelKind::Private | ChannelKind::Presence | ChannelKind::Peer
        ) {
            let msg = format!(
                "Client event rejected: {channel:?} is not a private, presence or peer channel"
            );
            return self.error(None, &msg);
        }
        let Some(user_id) = self.subscriptions.get(&channel).cloned() else {
            let msg = format!("Client event rejected: not subscribed to channel {channel}");
            return self.error(None, &msg);
        };
        let limit = self.ctx.config.limits.max_event_payload_kb * 1024;
        if data.get().len() > limit {
            let msg = format!(
                "Client event rejected: data is {} bytes, the limit is {limit} bytes",
                data.get().len()
            );
            return self.error(None, &msg);
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
            return self.error(Some(codes::CLIENT_EVENT_RATE_LIMIT), &msg);
        }
        let publication = Publication {
            channel,
            event,
            data: Data::Raw(data),
            except: Some(self.socket_id()),
            sender: Some(Sender {
                socket: self.socket.clone(),
                user_id,
            }),
        };
        if let Err(err) = self
            .ctx
            .publisher
            .publish(&self.app, vec![publication])
            .await
        {
            return self.error(None, &format!("Client event rejected: {err}"));
        }
        Ok(())
    }

    /// `pusher:signin`: checks the signature over `socket_id::user::user_data`, records the
    /// user (one per connection) and answers with `pusher:signin_success`, then the initial
    /// watchlist state.
    async fn signin(&mut self, token: String, user_data: String) -> Result<(), End> {
        let signed = auth::user_string(&self.socket, &user_data);
        if let Err(err) = auth::verify_token(&self.app.key, &self.app.secret, &token, &signed) {
            return self.error(None, &format!("Invalid signin: {err}"));
        }
        let user = match SigninUser::parse(&user_data) {
            Ok(user) => user,
            Err(problem) => {
                return self.error(None, &format!("Invalid signin: {problem}"));
            }
        };
        if let Some((current, _)) = &self.user {
            if **current != *user.id {
                let msg = format!(
                    "Invalid signin: this connection is already signed in as user {current}"
                );
                return self.error(None, &msg);
            }
            // The same user again: nothing changes.
            self.send(vec![text(message::signin_success(&user_data))]);
            return Ok(());
        }
        let (online, offline) = self
            .ctx
            .membership
            .sign_in(&self.app.id, &user.id, &self.conn, &user.watchlist)
            .await;
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
        {
            self.send(frames);
            Ok(())
        }
    }

    /// Whether subscribers of this kind of channel are sent subscription counts.
    fn counts(&self, kind: ChannelKind) -> bool {
        self.app.subscription_count && kind != ChannelKind::Presence
    }

    /// Turns a membership change into webhook events.
    fn report(&self, channel: &str, change: &Change, counted: bool) {
        self.ctx
            .webhooks
            .report(&self.app, channel, change, counted);
    }

    /// Applies a change the server made to this session's subscriptions.
    async fn control(&mut self, control: Control) {
        match control {
            Control::Subscribe { channel, user_id } => {
                if self.subscriptions.contains_key(&channel) {
                    return;
                }
                let kind = ChannelKind::of(&channel);
                let count = self.counts(kind);
                let max = self.ctx.config.limits.max_presence_members;
                let subscribed = self
                    .ctx
                    .membership
                    .join(&self.app.id, &channel, &self.conn, None, max, count)
                    .await;
                if let Ok((_, change)) = subscribed {
                    self.subscriptions.insert(channel.clone(), Some(user_id));
                    self.report(&channel, &change, count);
                    self.show("subscribed", &channel);
                }
            }
            Control::Unsubscribe { channel } => {
                if self.subscriptions.remove(&channel).is_some() {
                    self.leave(&channel).await;
                }
            }
        }
    }

    /// Leaves one channel in the registry and reports the change.
    async fn leave(&mut self, channel: &str) {
        let count = self.counts(ChannelKind::of(channel));
        let change = self
            .ctx
            .membership
            .leave(&self.app.id, channel, self.conn.socket_id, count)
            .await;
        if let Some(change) = change {
            self.report(channel, &change, count);
        }
        self.show("unsubscribed", channel);
    }

    /// The debug console's record of a subscription change (built only while one watches).
    fn show(&self, kind: &'static str, channel: &str) {
        self.ctx.feed.emit(&self.app.id, || Record {
            socket_id: Some(self.socket.clone()),
            channel: Some(channel.to_string()),
            user_id: self
                .subscriptions
                .get(channel)
                .and_then(|u| u.as_deref().map(str::to_string)),
            ..Record::new(kind)
        });
    }

    /// Leaves every channel (presence members see `member_removed` where due).
    /// Leaves every channel, forgets the connection, and closes the socket the way `end`
    /// says.
    async fn finish(mut self, end: End) {
        // Counted before the connection leaves the registry, so that a connection count of
        // zero means its end is in the metrics.
        let how = match &end {
            End::Close(close) => Ended::Closed(*close),
            End::Gone => Ended::Client,
        };
        self.stats.disconnected(how);
        self.cleanup().await;
        // After the unsubscribes, as a console reads it.
        self.ctx.feed.emit(&self.app.id, || Record {
            socket_id: Some(self.socket.clone()),
            detail: Some(match &end {
                End::Close(close) => format!("{} {}", close.code, close.message),
                End::Gone => "closed by the client".to_string(),
            }),
            ..Record::new("disconnected")
        });
        let socket_id = self.socket_id();
        self.ctx
            .membership
            .disconnect(&self.app.id, socket_id)
            .await;
        tracing::debug!(socket_id = %self.socket, ended = ?how, "disconnected");
        match end {
            // Frames the client had not received yet are dropped, so that the error and
            // the close come next (after whatever the socket already holds).
            End::Close(close) => close_with(&self.conn, &mut self.reader, close).await,
            End::Gone => self.conn.out.seal(),
        }
    }

    async fn cleanup(&mut self) {
        let channels: Vec<String> = self.subscriptions.drain().map(|(c, _)| c).collect();
        for channel in channels {
            self.leave(&channel).await;
        }
        if let Some((user, watchlist)) = self.user.take() {
            self.ctx
                .membership
                .sign_out(&self.app.id, &user, self.conn.socket_id, &watchlist)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn subscribe_bucket_bursts_then_refills_at_its_rate() {
        let mut bucket = Bucket::full(5);
        for _ in 0..5 {
            assert!(bucket.take(2, 5));
        }
        assert!(!bucket.take(2, 5), "the burst is spent");
        tokio::time::advance(Duration::from_millis(400)).await;
        assert!(!bucket.take(2, 5), "0.8 of a token after 400 ms at 2/s");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(bucket.take(2, 5), "one token after 500 ms at 2/s");
        assert!(!bucket.take(2, 5));
        tokio::time::advance(Duration::from_secs(3600)).await;
        for _ in 0..5 {
            assert!(bucket.take(2, 5));
        }
        assert!(!bucket.take(2, 5), "refill is capped at the burst");
    }
}
