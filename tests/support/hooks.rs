//! A webhook receiver for tests: a minimal HTTP/1.1 server on a free loopback port that
//! answers 200 to everything and hands each request (path, headers, body, JSON) to the test,
//! checking the app's key and signature.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub(crate) const HOOK_KEY: &str = "hook-key";
pub(crate) const HOOK_SECRET: &str = "hook-secret";

/// One request the receiver got.
#[derive(Debug)]
pub(crate) struct Hook {
    pub(crate) path: String,
    pub(crate) headers: HashMap<String, String>,
    pub(crate) body: Vec<u8>,
    pub(crate) json: Value,
}

/// A minimal HTTP/1.1 webhook receiver that answers 200 to everything.
pub(crate) struct Receiver {
    port: u16,
    rx: mpsc::UnboundedReceiver<Hook>,
}

pub(crate) async fn receiver() -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, tx.clone()));
        }
    });
    Receiver { port, rx }
}

/// Serves requests on one (keep-alive) connection until the peer closes.
async fn serve(mut stream: TcpStream, tx: mpsc::UnboundedSender<Hook>) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let path = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("")
            .to_string();
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let start = head_end + 4;
        while buf.len() < start + len {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[start..start + len].to_vec();
        buf.drain(..start + len);
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let _ = tx.send(Hook {
            path,
            headers,
            body,
            json,
        });
        let reply = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        if stream.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

impl Receiver {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Collects the events of successive requests until `n` have arrived (panics after
    /// 6 s, or when a request brings more than `n`); sorted, so that which node sent
    /// what, and in which batch, does not matter.
    pub(crate) async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut all = Vec::new();
        while all.len() < n {
            let h = tokio::time::timeout(Duration::from_secs(6), self.rx.recv())
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| panic!("{n} webhook events within 6 s; got {all:?}"));
            assert_eq!(h.path, "/hook", "{h:?}");
            assert_eq!(
                h.headers.get("x-pusher-key").map(String::as_str),
                Some(HOOK_KEY),
                "{h:?}"
            );
            assert_eq!(
                h.headers.get("x-pusher-signature"),
                Some(&pushi::auth::webhook_signature(HOOK_SECRET, &h.body)),
                "{h:?}"
            );
            let events = h.json["events"]
                .as_array()
                .unwrap_or_else(|| panic!("events array: {}", h.json))
                .clone();
            all.extend(events);
        }
        assert_eq!(all.len(), n, "more events than expected: {all:?}");
        all.sort_by_key(|e| e.to_string());
        all
    }

    pub(crate) async fn expect_none(&mut self, wait: Duration) {
        if let Ok(Some(h)) = tokio::time::timeout(wait, self.rx.recv()).await {
            panic!("expected no webhook within {wait:?}, got {}", h.json);
        }
    }
}

pub(crate) fn sorted(mut events: Vec<Value>) -> Vec<Value> {
    events.sort_by_key(|e| e.to_string());
    events
}
