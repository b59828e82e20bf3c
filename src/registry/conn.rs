//! [`Conn`]: the handle through which anything outside a session reaches one connection: a
//! bounded outbound queue and a way to ask the session to close.

use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, Notify};

use crate::protocol::{Close, SocketId};

/// One outbound text frame. `Utf8Bytes` is reference-counted, so an event serialized once is
/// shared by every subscriber and handed to tungstenite without a copy.
pub type Frame = tokio_tungstenite::tungstenite::Utf8Bytes;

/// One item of a connection's queue: as small as a frame (32 bytes), because every
/// connection's queue allocates room for a block of them up front; the rare items are boxed.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A frame to write.
    Frame(Frame),
    /// A stored event or a change to the session's subscriptions.
    Special(Box<Special>),
}

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

impl Outbound {
    /// The frame's text.
    pub fn as_str(&self) -> &str {
        match self {
            Outbound::Frame(frame) => frame.as_str(),
            Outbound::Special(special) => match &**special {
                Special::Stored { frame, .. } => frame.as_str(),
                Special::Control(_) => "",
            },
        }
    }
}

/// The shared half of a connection. The session task owns the receiving end of the queue.
#[derive(Debug)]
pub struct Conn {
    /// The connection's id.
    pub socket_id: SocketId,
    tx: mpsc::Sender<Outbound>,
    close: OnceLock<Close>,
    wake: Notify,
}

impl Conn {
    /// A handle and the receiving end of its queue, which holds at most `capacity` frames.
    pub fn new(socket_id: SocketId, capacity: usize) -> (Arc<Conn>, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(capacity);
        let conn = Conn {
            socket_id,
            tx,
            close: OnceLock::new(),
            wake: Notify::new(),
        };
        (Arc::new(conn), rx)
    }

    /// Queues a frame without waiting. A full queue means the client is not keeping up: the
    /// frame is dropped and the session is asked to close with [`Close::TOO_SLOW`], so memory
    /// per connection stays bounded.
    pub fn send(&self, frame: Frame) {
        self.push(Outbound::Frame(frame));
    }

    /// Queues a change to the session's subscriptions.
    pub fn control(&self, control: Control) {
        self.push(Outbound::Special(Box::new(Special::Control(control))));
    }

    /// Queues a stored event of a personal channel (see [`Special::Stored`]).
    pub fn send_stored(&self, id: u64, frame: Frame) {
        self.push(Outbound::Special(Box::new(Special::Stored { id, frame })));
    }

    fn push(&self, item: Outbound) {
        match self.tx.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.request_close(Close::TOO_SLOW),
            // The session is gone; its cleanup will remove this handle.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Asks the session to close with `reason`. The first reason wins.
    pub fn request_close(&self, reason: Close) {
        if self.close.set(reason).is_ok() {
            self.wake.notify_one();
        }
    }

    /// Resolves once someone asked this connection to close, with the reason.
    pub async fn close_requested(&self) -> Close {
        loop {
            if let Some(reason) = self.close.get() {
                return *reason;
            }
            self.wake.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_item_is_no_bigger_than_a_frame() {
        // Each connection's queue allocates a block of items up front: memory per idle
        // connection depends on this size.
        assert_eq!(
            std::mem::size_of::<Outbound>(),
            std::mem::size_of::<Frame>()
        );
    }
}
