//! [`Conn`]: the handle through which anything outside a session reaches one connection: a
//! bounded outbound queue and a way to ask the session to close.

use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, Notify};

use crate::protocol::{Close, SocketId};

/// One outbound text frame. `Utf8Bytes` is reference-counted, so an event serialized once is
/// shared by every subscriber and handed to tungstenite without a copy.
pub type Frame = tokio_tungstenite::tungstenite::Utf8Bytes;

/// The shared half of a connection. The session task owns the receiving end of the queue.
#[derive(Debug)]
pub struct Conn {
    /// The connection's id.
    pub socket_id: SocketId,
    tx: mpsc::Sender<Frame>,
    close: OnceLock<Close>,
    wake: Notify,
}

impl Conn {
    /// A handle and the receiving end of its queue, which holds at most `capacity` frames.
    pub fn new(socket_id: SocketId, capacity: usize) -> (Arc<Conn>, mpsc::Receiver<Frame>) {
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
        match self.tx.try_send(frame) {
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
