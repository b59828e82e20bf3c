//! [`Outlet`]: the write side of one connection, where the fan-out's shared frames reach the
//! socket.
//!
//! The fast path: a publisher finding the connection's queue empty writes the frame's bytes
//! straight to the socket (one non-blocking `send`), with no copy, no wake-up and no task
//! switch. Only when the socket cannot take the whole frame, or frames already wait, is the
//! frame queued and the session task woken; the session then writes everything that waits
//! in one vectored write (up to [`IOV`] frames per syscall).
//!
//! Order: bytes reach the socket in one order for everyone, because every write (direct or
//! by the session) happens under the connection's lock and a direct write is allowed only
//! when nothing waits. The session's replies (`subscription_succeeded`, errors, pongs) go
//! before queued events, and while the session handles a client frame it *holds* the
//! outlet, so an event on a channel just joined cannot overtake the reply that confirms it.
//!
//! Bounds: at most `capacity` queued events; one more asks the session to close with
//! 4200-range [`Close::TOO_SLOW`] and is dropped, so a slow reader costs bounded memory.
//!
//! The lock is per connection (never global) and held for at most one non-blocking syscall.
//!
//! TLS: a `wss://` connection's rustls state lives under the same lock. Frames are
//! encrypted into it as they are written, and ciphertext the socket has not taken waits in
//! it, ahead of everything queued (the socket counts as full until it is sent). The session
//! reads through it too ([`Outlet::read`]).

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read as _, Write as _};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use rustls::ServerConnection;
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::Frame;
use crate::protocol::Close;
use crate::registry::Special;

/// Most frames handed to one vectored write.
pub const IOV: usize = 64;

/// One queued item: a frame, or something the session must look at first.
#[derive(Debug, Clone)]
pub enum Queued {
    /// A frame to write.
    Frame(Frame),
    /// A stored event or a change to the session's subscriptions.
    Special(Box<Special>),
}

/// What [`Outlet::poll_write`] has for the session.
#[derive(Debug)]
pub enum Written {
    /// Everything was written; the session is woken when something new waits.
    Idle,
    /// A queued item the session must handle before the rest is written.
    Special(Box<Special>),
    /// Someone asked the session to close (checked under the same lock as the waker is
    /// registered, so a request is never missed).
    Close(Close),
}

/// How far [`Outlet::write_some`] got.
enum Drained {
    /// Nothing waits.
    All,
    /// A special item is next.
    UpToSpecial,
    /// The socket takes no more for now.
    SocketFull,
}

#[derive(Debug, Default)]
struct State {
    /// The frame the socket took part of, and how many bytes of it: it goes first.
    partial: Option<(Frame, usize)>,
    /// The session's own replies, before queued events.
    replies: VecDeque<Frame>,
    /// Events and specials from other tasks.
    queue: VecDeque<Queued>,
    /// The session is handling a client frame: nothing is written directly.
    held: bool,
    /// The session is closing: events are dropped, only its last replies go out.
    sealed: bool,
    /// Someone asked the session to close.
    close: Option<Close>,
    /// The session task, when it waits.
    waker: Option<Waker>,
    /// Bytes the socket accepted, for the write timeout.
    written: u64,
    /// A TLS connection's rustls state: frames are encrypted into it under this lock, and
    /// ciphertext the socket has not taken yet waits in it (ahead of anything queued).
    tls: Option<Box<ServerConnection>>,
}

impl State {
    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    fn clear(&self) -> bool {
        self.partial.is_none()
            && self.replies.is_empty()
            && self.queue.is_empty()
            && !self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Drops `n` written bytes from the front: partial frame, replies, queued frames.
    fn advance(&mut self, mut n: usize) {
        self.written += n as u64;
        if let Some((frame, at)) = &mut self.partial {
            let rest = frame.len() - *at;
            if n < rest {
                *at += n;
                return;
            }
            n -= rest;
            self.partial = None;
        }
        while n > 0 {
            let len = match self.replies.front() {
                Some(f) => f.len(),
                None => break,
            };
            let frame = self.replies.pop_front().expect("front exists");
            if n < len {
                self.partial = Some((frame, n));
                return;
            }
            n -= len;
        }
        while n > 0 {
            let len = match self.queue.front() {
                Some(Queued::Frame(f)) => f.len(),
                _ => break,
            };
            let Some(Queued::Frame(frame)) = self.queue.pop_front() else {
                unreachable!("front is a frame")
            };
            if n < len {
                self.partial = Some((frame, n));
                return;
            }
            n -= len;
        }
        // A drained queue gives back what a burst grew it to.
        if self.queue.is_empty() && self.queue.capacity() > 16 {
            self.queue = VecDeque::new();
        }
    }
}

/// One non-blocking `sendmsg` of `iov`. Not `writev` (tokio's `try_write_vectored`): on a
/// socket that goes through the file layer first (position lock, `vfs_writev`), which
/// `perf` put at 14% of the server's CPU when every delivery is its own syscall. A peer that
/// has gone away gives `EPIPE`, not a signal: Rust's runtime ignores `SIGPIPE`.
fn send(socket: &TcpStream, iov: &[IoSlice<'_>]) -> io::Result<usize> {
    socket.try_io(Interest::WRITABLE, || {
        SockRef::from(socket).send_vectored(iov)
    })
}

/// Writes `iov` through TLS: ciphertext still waiting goes first (nothing is encrypted
/// while it cannot: that is the socket being full), then the frames are encrypted and as
/// much ciphertext as the socket takes is sent; the rest waits in rustls. Returns the
/// plaintext bytes taken.
fn send_tls(
    socket: &TcpStream,
    tls: &mut ServerConnection,
    iov: &[IoSlice<'_>],
) -> io::Result<usize> {
    push_tls(socket, tls)?;
    let n = tls.writer().write_vectored(iov)?;
    match push_tls(socket, tls) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    Ok(n)
}

/// Sends the ciphertext rustls holds; `WouldBlock` when the socket does not take all of it.
fn push_tls(socket: &TcpStream, tls: &mut ServerConnection) -> io::Result<()> {
    while tls.wants_write() {
        tls.write_tls(&mut SocketIo(socket))?;
    }
    Ok(())
}

/// A `TcpStream` as a blocking-style `Read`/`Write` for rustls, over tokio's non-blocking
/// `try_*` calls (which clear readiness on `WouldBlock`, so the next poll waits for it).
struct SocketIo<'a>(&'a TcpStream);

impl io::Write for SocketIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        send(self.0, &[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        send(self.0, bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl io::Read for SocketIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

/// The write side of one connection. See the module header.
#[derive(Debug)]
pub struct Outlet {
    /// `None` for connections without a socket (unit tests): everything queues.
    socket: Option<TcpStream>,
    /// Whether `state` holds a TLS state (fixed at creation: plain reads skip the lock).
    tls: bool,
    capacity: usize,
    state: Mutex<State>,
}

impl Outlet {
    /// An outlet over `socket` queueing at most `capacity` events.
    pub fn new(socket: Option<TcpStream>, capacity: usize) -> Outlet {
        Outlet {
            socket,
            tls: false,
            capacity,
            state: Mutex::new(State::default()),
        }
    }

    /// An outlet over a TLS connection whose handshake is done: frames are encrypted with
    /// `tls` on their way to `socket`.
    pub fn new_tls(socket: TcpStream, tls: Box<ServerConnection>, capacity: usize) -> Outlet {
        let state = State {
            tls: Some(tls),
            ..State::default()
        };
        Outlet {
            socket: Some(socket),
            tls: true,
            capacity,
            state: Mutex::new(state),
        }
    }

    /// Reads client bytes into `buf`: straight from the socket, or through TLS (plaintext
    /// rustls holds first). `WouldBlock` when there is nothing for now; `Ok(0)` at the end.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(socket) = &self.socket else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        if !self.tls {
            return socket.try_read(buf);
        }
        let mut st = self.lock();
        let Some(tls) = st.tls.as_deref_mut() else {
            return socket.try_read(buf);
        };
        loop {
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                // rustls: no plaintext buffered (and the peer has not closed).
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if tls.read_tls(&mut SocketIo(socket))? == 0 {
                return Ok(0);
            }
            let state = tls
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            // What TLS itself has to say back (a key update, an alert) goes out now, or
            // with the next write.
            if state.tls_bytes_to_write() > 0 {
                match push_tls(socket, tls) {
                    Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                    _ => {}
                }
            }
        }
    }

    /// The socket, for the session's reads.
    pub fn socket(&self) -> Option<&TcpStream> {
        self.socket.as_ref()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under this lock leaves the state consistent (every change is one field
        // at a time), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Delivers an event frame: written to the socket at once when nothing waits before
    /// it, queued otherwise.
    pub fn deliver(&self, frame: &Frame) {
        let mut st = self.lock();
        if st.sealed || st.close.is_some() {
            return;
        }
        if let Some(socket) = &self.socket {
            if !st.held && st.clear() {
                let iov = [IoSlice::new(frame.as_bytes())];
                let sent = match st.tls.as_deref_mut() {
                    Some(tls) => send_tls(socket, tls, &iov),
                    None => send(socket, &iov),
                };
                match sent {
                    Ok(n) if n == frame.len() => {
                        st.written += n as u64;
                        return;
                    }
                    Ok(n) => {
                        // The socket took part of it: the rest goes first, from the session.
                        st.written += n as u64;
                        st.partial = Some((frame.clone(), n));
                        st.wake();
                        return;
                    }
                    // Full socket buffer (or a broken socket, which the session's next
                    // write or read reports): queue it.
                    Err(_) => {}
                }
            }
        }
        self.push(&mut st, Queued::Frame(frame.clone()));
    }

    /// Queues an item the session must see (never written directly).
    pub fn enqueue(&self, item: Queued) {
        let mut st = self.lock();
        if st.sealed || st.close.is_some() {
            return;
        }
        self.push(&mut st, item);
    }

    fn push(&self, st: &mut State, item: Queued) {
        if st.queue.len() >= self.capacity {
            // The client is not keeping up: close it rather than buffer without limit.
            st.close.get_or_insert(Close::TOO_SLOW);
        } else {
            st.queue.push_back(item);
        }
        st.wake();
    }

    /// Queues the session's own reply, ahead of queued events; the session writes it on its
    /// next poll.
    pub fn reply(&self, frame: Frame) {
        self.lock().replies.push_back(frame);
    }

    /// How many replies wait: the session stops reading client frames while this is high,
    /// so a client that sends but does not read cannot grow it.
    pub fn replies_waiting(&self) -> usize {
        self.lock().replies.len()
    }

    /// While held, events queue instead of being written directly (see the module header).
    pub fn hold(&self, held: bool) {
        self.lock().held = held;
    }

    /// Asks the session to close with `reason`. The first reason wins.
    pub fn request_close(&self, reason: Close) {
        let mut st = self.lock();
        if st.close.is_none() {
            st.close = Some(reason);
            st.wake();
        }
    }

    /// Why the session was asked to close, if it was.
    pub fn close_requested(&self) -> Option<Close> {
        self.lock().close
    }

    /// Starts closing: queued events and replies are dropped and no event is accepted any
    /// more; a frame the socket took part of is finished, so the close frame that follows
    /// stays readable.
    pub fn seal(&self) {
        let mut st = self.lock();
        st.sealed = true;
        st.replies.clear();
        st.queue = VecDeque::new();
    }

    /// Ends a TLS connection's writing with a `close_notify` alert, sent as far as the
    /// socket takes it now (the connection is about to be dropped: nothing waits for it).
    /// Without it a client sees the TLS stream cut, which some report as a truncation
    /// attack rather than a close. Plain connections have nothing to do.
    pub fn close_notify(&self) {
        let Some(socket) = &self.socket else { return };
        if !self.tls {
            return;
        }
        let mut st = self.lock();
        if let Some(tls) = st.tls.as_mut() {
            tls.send_close_notify();
            let _ = push_tls(socket, tls);
        }
    }

    /// Bytes the socket accepted so far.
    pub fn written(&self) -> u64 {
        self.lock().written
    }

    /// Whether bytes wait to be written.
    pub fn writing(&self) -> bool {
        !self.lock().clear()
    }

    /// Writes what waits, as far as the socket takes it. `Pending` while the socket is full
    /// (the task is woken when it drains); `Ready(Idle)` when everything was written (the
    /// task is woken when something new waits or a close is requested).
    pub fn poll_write(&self, cx: &mut Context<'_>) -> Poll<io::Result<Written>> {
        let mut st = self.lock();
        if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            st.waker = Some(cx.waker().clone());
        }
        if let (Some(reason), false) = (st.close, st.sealed) {
            return Poll::Ready(Ok(Written::Close(reason)));
        }
        loop {
            match self.write_some(&mut st) {
                Ok(Drained::All) => return Poll::Ready(Ok(Written::Idle)),
                Ok(Drained::UpToSpecial) => {
                    let Some(Queued::Special(special)) = st.queue.pop_front() else {
                        unreachable!("front is special")
                    };
                    return Poll::Ready(Ok(Written::Special(special)));
                }
                Ok(Drained::SocketFull) => {
                    let Some(socket) = &self.socket else {
                        // No socket: items stay queued for the test reading them.
                        return Poll::Pending;
                    };
                    match socket.poll_write_ready(cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Queues an event frame for [`Outlet::flush`], without writing and without waking the
    /// session. True when nothing waited before it: the caller must then flush this
    /// outlet (frames staged after it ride along in the same write).
    pub fn stage(&self, frame: &Frame) -> bool {
        let mut st = self.lock();
        if st.sealed || st.close.is_some() {
            return false;
        }
        let first = st.clear();
        if st.queue.len() >= self.capacity {
            st.close = Some(Close::TOO_SLOW);
            st.wake();
            return false;
        }
        st.queue.push_back(Queued::Frame(frame.clone()));
        first
    }

    /// Writes what waits, in as few syscalls as the socket allows, from the caller's task;
    /// what the socket does not take (or a special item) is left to the session, woken.
    /// Nothing is written while the session holds the outlet: it writes when it lets go.
    pub fn flush(&self) {
        let mut st = self.lock();
        if st.held {
            return;
        }
        match self.write_some(&mut st) {
            Ok(Drained::All) => {}
            _ => st.wake(),
        }
    }

    /// Writes partial frame, replies and queued frames as far as the socket takes them,
    /// up to the first special item.
    fn write_some(&self, st: &mut State) -> io::Result<Drained> {
        loop {
            let mut iov = [IoSlice::new(&[]); IOV];
            let mut n = 0;
            if let Some((frame, at)) = &st.partial {
                iov[n] = IoSlice::new(&frame.as_bytes()[*at..]);
                n += 1;
            }
            for frame in st.replies.iter().take(IOV - n) {
                iov[n] = IoSlice::new(frame.as_bytes());
                n += 1;
            }
            for item in st.queue.iter().take(IOV - n) {
                match item {
                    Queued::Frame(frame) => {
                        iov[n] = IoSlice::new(frame.as_bytes());
                        n += 1;
                    }
                    Queued::Special(_) => break,
                }
            }
            if n == 0 {
                if let (Some(socket), Some(tls)) = (&self.socket, st.tls.as_deref_mut()) {
                    match push_tls(socket, tls) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            return Ok(Drained::SocketFull)
                        }
                        Err(e) => return Err(e),
                    }
                }
                return Ok(match st.queue.front() {
                    Some(Queued::Special(_)) => Drained::UpToSpecial,
                    _ => Drained::All,
                });
            }
            let Some(socket) = &self.socket else {
                return Ok(Drained::SocketFull);
            };
            let sent = match st.tls.as_deref_mut() {
                Some(tls) => send_tls(socket, tls, &iov[..n]),
                None => send(socket, &iov[..n]),
            };
            match sent {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(w) => st.advance(w),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Drained::SocketFull),
                Err(e) => return Err(e),
            }
        }
    }

    /// Everything queued, replies first (tests of code that sends to connections).
    pub fn take_queued(&self) -> Vec<Queued> {
        let mut st = self.lock();
        let mut out: Vec<Queued> = st.replies.drain(..).map(Queued::Frame).collect();
        out.extend(st.queue.drain(..));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_socket_everything_queues_and_the_bound_closes() {
        let out = Outlet::new(None, 2);
        out.deliver(&Frame::text("a"));
        out.deliver(&Frame::text("b"));
        assert_eq!(out.close_requested(), None);
        out.deliver(&Frame::text("c"));
        assert_eq!(out.close_requested(), Some(Close::TOO_SLOW));
        let got: Vec<String> = out
            .take_queued()
            .into_iter()
            .map(|q| match q {
                Queued::Frame(f) => f.as_str().to_string(),
                Queued::Special(_) => "special".into(),
            })
            .collect();
        assert_eq!(got, ["a", "b"]);
    }

    #[test]
    fn advance_splits_frames_across_writes() {
        let mut st = State::default();
        st.replies.push_back(Frame::text("r1"));
        st.queue.push_back(Queued::Frame(Frame::text("q1")));
        st.queue.push_back(Queued::Frame(Frame::text("q2")));
        // Every frame here is 4 bytes: write 1 reply and half of q1.
        st.advance(6);
        assert!(st.replies.is_empty());
        assert_eq!(
            st.partial.as_ref().map(|(f, at)| (f.as_str(), *at)),
            Some(("q1", 2))
        );
        assert_eq!(st.queue.len(), 1);
        st.advance(2 + 4);
        assert!(st.clear());
        assert_eq!(st.written, 12);
    }
}
