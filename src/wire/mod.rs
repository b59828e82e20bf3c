//! The WebSocket wire after the handshake: server frames encoded once and shared
//! ([`Frame`]), written straight to sockets by the fan-out ([`Outlet`]), and client frames
//! parsed into messages ([`Reader`]).
//!
//! This is pushi's hot path. An event published to a channel with N subscribers is
//! serialized and framed once; each subscriber then costs one non-blocking `send` of those
//! shared bytes from the publishing task when its socket is keeping up, and one vectored
//! write of everything waiting when it is not. The handshake stays with hyper and
//! tungstenite's accept-key helper (see `session`).
//!
//! Owns: frame encoding, the per-connection write queue and its order, client frame
//! parsing. Must not touch: the Pusher protocol (what the frames say).

mod frame;
mod outlet;
mod reader;

pub use frame::Frame;
pub use outlet::{Outlet, Queued, Written, IOV};
pub use reader::{Inbound, ReadError, Reader};

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::future::poll_fn;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), server.unwrap().0)
    }

    /// The frames a standard WebSocket client (tungstenite) decodes are exactly the events
    /// published, in order, whether they went out directly, queued behind a backlog, or in
    /// one vectored write with others.
    #[tokio::test]
    async fn frames_decode_with_a_standard_client_exactly_and_in_order() {
        let (client, server) = pair().await;
        let out = Outlet::new(Some(server), 100_000);
        let mut ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let events: Vec<String> = (0..3000)
            .map(|i| {
                // Sizes across all three header forms.
                let pad = "x".repeat([10, 300, 70_000][i % 3]);
                format!(r#"{{"event":"e{i}","channel":"c","data":"{pad}"}}"#)
            })
            .collect();
        let frames: Vec<Frame> = events.iter().map(|e| Frame::text(e)).collect();
        // The client does not read yet: the socket fills, later frames queue.
        for frame in &frames {
            out.deliver(frame);
        }
        assert!(out.writing(), "a backlog must have formed");
        let writer = async {
            match poll_fn(|cx| out.poll_write(cx)).await.unwrap() {
                Written::Idle => {}
                other => panic!("unexpected {other:?}"),
            }
        };
        let reader = async {
            for expected in &events {
                match ws.next().await.unwrap().unwrap() {
                    Message::Text(t) => assert_eq!(t.as_str(), expected),
                    other => panic!("unexpected {other:?}"),
                }
            }
        };
        tokio::join!(writer, reader);
        assert_eq!(
            out.written(),
            frames.iter().map(|f| f.len() as u64).sum::<u64>()
        );
    }

    /// Replies go before queued events; while held, events queue instead of being written.
    #[tokio::test]
    async fn held_outlet_puts_replies_first() {
        let (client, server) = pair().await;
        let out = Outlet::new(Some(server), 100);
        let mut ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        out.hold(true);
        out.deliver(&Frame::text("event"));
        out.reply(Frame::text("reply"));
        out.hold(false);
        assert!(matches!(
            poll_fn(|cx| out.poll_write(cx)).await.unwrap(),
            Written::Idle
        ));
        // Direct now that nothing waits.
        out.deliver(&Frame::text("direct"));
        for expected in ["reply", "event", "direct"] {
            let msg = ws.next().await.unwrap().unwrap();
            assert_eq!(msg, Message::Text(expected.into()));
        }
    }

    /// Staged frames wait for one flush, which writes them all in order; only the first
    /// stage asks for the flush.
    #[tokio::test]
    async fn staged_frames_go_out_together_on_flush() {
        let (client, server) = pair().await;
        let out = Outlet::new(Some(server), 100);
        let mut ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        assert!(out.stage(&Frame::text("a")));
        assert!(!out.stage(&Frame::text("b")), "a flush is already due");
        assert!(out.writing());
        let before = out.written();
        out.flush();
        assert!(!out.writing());
        assert_eq!(out.written() - before, 6);
        for expected in ["a", "b"] {
            let msg = ws.next().await.unwrap().unwrap();
            assert_eq!(msg, Message::Text(expected.into()));
        }
        // Held: nothing is written until the session lets go.
        out.hold(true);
        assert!(out.stage(&Frame::text("c")));
        out.flush();
        assert!(out.writing());
    }

    /// A close request is seen by the writer even when it arrives while the writer waits.
    #[tokio::test]
    async fn close_request_wakes_the_writer() {
        let (_client, server) = pair().await;
        let out = std::sync::Arc::new(Outlet::new(Some(server), 100));
        assert!(matches!(
            poll_fn(|cx| out.poll_write(cx)).await.unwrap(),
            Written::Idle
        ));
        let other = out.clone();
        let wait = tokio::spawn(async move {
            poll_fn(|cx| match other.poll_write(cx) {
                std::task::Poll::Ready(Ok(Written::Close(c))) => std::task::Poll::Ready(c),
                _ => std::task::Poll::Pending,
            })
            .await
        });
        tokio::task::yield_now().await;
        out.request_close(crate::protocol::Close::TERMINATED);
        assert_eq!(wait.await.unwrap(), crate::protocol::Close::TERMINATED);
    }
}
