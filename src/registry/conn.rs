//! [`Conn`]: the handle through which anything outside a session reaches one connection: a
//! bounded outbound queue with direct writes (`wire::Outlet`) and a way to ask the session
//! to close.

use std::sync::Arc;

use tokio::net::TcpStream;

use crate::protocol::{Close, SocketId};
use crate::wire::{Outlet, Queued};

pub use crate::wire::Frame;

/// The queue items that are not plain frames.
#[derive(Debug, Clone)]
pub enum Special {
    /// A stored event on a personal channel, with its id: the session drops it when its
    /// subscription replay already held it (a publish racing the subscribe).
    Stored {
        /// The stored event's id.
        id: u64,
        /// The frame.
        frame: Frame,
    },
    /// A change to the session's subscriptions.
    Control(Control),
}

/// Something the server does to a session's subscriptions from outside it (a peer pair
/// formed or ended); the session applies it when it reads its queue, so that its own record of
/// its channels and the registry never disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Subscribe to `channel` as `user_id` (no-op when subscribed).
    Subscribe {
        /// The channel.
        channel: String,
        /// The user the socket is there (client events carry it).
        user_id: Arc<str>,
    },
    /// Unsubscribe from `channel` (no-op when not subscribed).
    Unsubscribe {
        /// The channel.
        channel: String,
    },
}

/// The shared half of a connection: its id and its [`Outlet`], through which other tasks
/// write to it. The session task reads through the same socket.
#[derive(Debug)]
pub struct Conn {
    /// The connection's id.
    pub socket_id: SocketId,
    /// The write side (see `wire::outlet`).
    pub out: Outlet,
}

impl Conn {
    /// A handle over `socket` queueing at most `capacity` events (no socket: every frame
    /// queues, for tests to read with [`Outlet::take_queued`]).
    pub fn new(socket_id: SocketId, socket: Option<TcpStream>, capacity: usize) -> Arc<Conn> {
        Arc::new(Conn {
            socket_id,
            out: Outlet::new(socket, capacity),
        })
    }

    /// A connection over TLS (handshake done): its frames are encrypted on their way out.
    pub fn new_tls(
        socket_id: SocketId,
        socket: TcpStream,
        tls: Box<rustls::ServerConnection>,
        capacity: usize,
    ) -> Arc<Conn> {
        Arc::new(Conn {
            socket_id,
            out: Outlet::new_tls(socket, tls, capacity),
        })
    }

    /// Delivers a frame: written at once when the connection keeps up, queued otherwise. A
    /// full queue means the client is not keeping up: the frame is dropped and the session
    /// is asked to close with [`Close::TOO_SLOW`], so memory per connection stays bounded.
    pub fn send(&self, frame: &Frame) {
        self.out.deliver(frame);
    }

    /// Queues a change to the session's subscriptions.
    pub fn control(&self, control: Control) {
        self.out
            .enqueue(Queued::Special(Box::new(Special::Control(control))));
    }

    /// Queues a stored event of a personal channel (see [`Special::Stored`]).
    pub fn send_stored(&self, id: u64, frame: Frame) {
        self.out
            .enqueue(Queued::Special(Box::new(Special::Stored { id, frame })));
    }

    /// Asks the session to close with `reason`. The first reason wins.
    pub fn request_close(&self, reason: Close) {
        self.out.request_close(reason);
    }
}
