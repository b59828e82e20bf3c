//! Native TLS (`[server.tls]`): `wss://` and `https://` on one port with a certificate the
//! test makes (its own CA, trusted by the test's clients), events through the encrypted fast
//! path (single, burst, larger than a TLS record), a plain request answered with a 400 that
//! says to use TLS, and a certificate renewed on disk while a connection stays open.

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use support::{Api, TestServer, APP_ID, KEY, SECRET, TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ca = rcgen::CertifiedIssuer<'static, rcgen::KeyPair>;

/// The test's own certificate authority.
fn ca() -> Ca {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pushi test CA");
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// A fresh `localhost` certificate signed by `ca`: (cert PEM, key PEM).
fn leaf(ca: &Ca) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, ca)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

struct Tls {
    server: TestServer,
    dir: std::path::PathBuf,
    connector: TlsConnector,
    ca: Ca,
}

async fn start() -> Tls {
    let ca = ca();
    let (cert, key) = leaf(&ca);
    let dir = std::env::temp_dir().join(format!("pushi-tls-test-{}", support::unique("d")));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    let server = TestServer::start_with(&format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    ))
    .await;
    let mut roots = rustls::RootCertStore::empty();
    let der = CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap();
    roots.add(der).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Tls {
        server,
        dir,
        connector: TlsConnector::from(Arc::new(config)),
        ca,
    }
}

impl Drop for Tls {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type Wss = WebSocketStream<TlsStream<TcpStream>>;

impl Tls {
    async fn tls(&self) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.server.addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        self.connector
            .connect(name, tcp)
            .await
            .expect("TLS handshake")
    }

    async fn wss(&self) -> Wss {
        let url = format!(
            "wss://localhost:{}/app/{KEY}?protocol=7",
            self.server.addr.port()
        );
        let (ws, _) = tokio_tungstenite::client_async(url.as_str(), self.tls().await)
            .await
            .expect("WebSocket over TLS");
        ws
    }

    fn api(&self) -> Api {
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca.pem().as_bytes()).unwrap())
            .resolve("localhost", self.server.addr)
            .build()
            .unwrap();
        Api {
            base: format!("https://localhost:{}", self.server.addr.port()),
            app_id: APP_ID.into(),
            key: KEY.into(),
            secret: SECRET.into(),
            http,
        }
    }
}

async fn next_json(ws: &mut Wss) -> Value {
    loop {
        let msg = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("a valid frame");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            // The fixture's app reports subscription counts; they are not what is tested.
            if v["event"] != "pusher_internal:subscription_count" {
                return v;
            }
        }
    }
}

async fn subscribed(tls: &Tls, channel: &str) -> Wss {
    let mut ws = tls.wss().await;
    assert_eq!(
        next_json(&mut ws).await["event"],
        "pusher:connection_established"
    );
    let sub = json!({"event": "pusher:subscribe", "data": {"channel": channel}});
    ws.send(Message::text(sub.to_string())).await.unwrap();
    assert_eq!(
        next_json(&mut ws).await["event"],
        "pusher_internal:subscription_succeeded"
    );
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_and_https_carry_every_event_in_order() {
    let tls = start().await;
    let channel = support::unique("tls");
    let mut a = subscribed(&tls, &channel).await;
    let mut b = subscribed(&tls, &channel).await;
    let api = tls.api();

    // One event, then a burst (queued behind each other and sent in vectored writes), then
    // one larger than a TLS record (16 KiB) split across records.
    api.publish(&channel, "one", "1").await;
    for n in 0..200 {
        api.publish(&channel, "burst", &n.to_string()).await;
    }
    let big = "x".repeat(9 * 1024);
    let batch: Vec<Value> = (0..3)
        .map(|_| json!({"name": "big", "channel": channel, "data": big}))
        .collect();
    api.post("batch_events", &json!({ "batch": batch }))
        .await
        .ok();
    for ws in [&mut a, &mut b] {
        let first = next_json(ws).await;
        assert_eq!(
            (first["event"].as_str(), first["data"].as_str()),
            (Some("one"), Some("1"))
        );
        for n in 0..200 {
            let v = next_json(ws).await;
            assert_eq!(v["event"], "burst");
            assert_eq!(v["data"], n.to_string().as_str(), "in order");
        }
        for _ in 0..3 {
            let v = next_json(ws).await;
            assert_eq!(v["event"], "big");
            assert_eq!(v["data"].as_str().map(str::len), Some(big.len()));
        }
    }
    // A client message and its answer go through TLS both ways.
    a.send(Message::text(r#"{"event":"pusher:ping","data":{}}"#))
        .await
        .unwrap();
    assert_eq!(next_json(&mut a).await["event"], "pusher:pong");
    a.close(None).await.unwrap();
}

#[tokio::test]
async fn a_plain_request_on_the_tls_port_is_told_to_use_tls() {
    let tls = start().await;
    let mut tcp = TcpStream::connect(tls.server.addr).await.unwrap();
    tcp.write_all(b"GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    tokio::time::timeout(TIMEOUT, tcp.read_to_string(&mut reply))
        .await
        .expect("answered and closed")
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 400 "), "{reply}");
    let body: Value = serde_json::from_str(reply.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert!(body["error"].as_str().unwrap().contains("wss://"), "{body}");
    // The TLS side is unaffected.
    let mut ws = tls.wss().await;
    assert_eq!(
        next_json(&mut ws).await["event"],
        "pusher:connection_established"
    );
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_dropping_connections() {
    let tls = start().await;
    let channel = support::unique("renew");
    let mut kept = subscribed(&tls, &channel).await;
    let before = peer_cert(&tls.tls().await);

    // A renewal from the same CA, written in place (key first, as a renewal tool might),
    // with a later modification time than the first pair.
    let (cert, key) = leaf(&tls.ca);
    std::fs::write(tls.dir.join("key.pem"), key).unwrap();
    std::fs::write(tls.dir.join("cert.pem"), cert).unwrap();
    let later = SystemTime::now() + Duration::from_secs(2);
    for f in ["cert.pem", "key.pem"] {
        std::fs::File::options()
            .write(true)
            .open(tls.dir.join(f))
            .unwrap()
            .set_modified(later)
            .unwrap();
    }
    // The files are checked every 5 s: new handshakes get the new certificate by then.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if peer_cert(&tls.tls().await) != before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewed certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The connection made before the renewal still works, both ways.
    tls.api().publish(&channel, "after", "x").await;
    assert_eq!(next_json(&mut kept).await["event"], "after");
    kept.send(Message::text(r#"{"event":"pusher:ping","data":{}}"#))
        .await
        .unwrap();
    assert_eq!(next_json(&mut kept).await["event"], "pusher:pong");
}

/// A WebSocket upgrade over a raw TLS stream, so that how the stream ends can be seen.
async fn upgraded(tls: &Tls, key: &str) -> TlsStream<TcpStream> {
    let mut s = tls.tls().await;
    let req = format!(
        "GET /app/{key}?protocol=7 HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(s.read_u8().await.unwrap());
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101 "),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// Reads to the end: `Ok` only when the server ended TLS with `close_notify` (rustls calls
/// an end without it an unexpected EOF).
async fn read_to_close_notify(s: &mut TlsStream<TcpStream>) -> Vec<u8> {
    let mut rest = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut rest))
        .await
        .expect("the server ends the connection")
        .expect("TLS ended with close_notify");
    rest
}

#[tokio::test]
async fn tls_connections_end_with_close_notify() {
    let tls = start().await;
    // The server closes (unknown app): error, close frame 4001, then close_notify.
    let mut refused = upgraded(&tls, "no-such-key").await;
    let rest = read_to_close_notify(&mut refused).await;
    // A close frame: 0x88, a payload length under 126, then the code.
    let close = rest
        .windows(4)
        .any(|w| w[0] == 0x88 && w[1] < 126 && u16::from_be_bytes([w[2], w[3]]) == 4001);
    assert!(close, "a close frame with 4001 before the end: {rest:?}");
    // The client closes: the server echoes the close frame, then close_notify.
    let mut s = upgraded(&tls, KEY).await;
    let mut first = [0u8; 2];
    // connection_established's header: the session is up.
    s.read_exact(&mut first).await.unwrap();
    // A masked close frame with code 1000 (mask 0: the payload is sent as is).
    s.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8])
        .await
        .unwrap();
    let rest = read_to_close_notify(&mut s).await;
    assert!(
        rest.windows(4).any(|w| w == [0x88, 0x02, 0x03, 0xe8]),
        "the echoed close frame before the end"
    );
}

fn peer_cert(s: &TlsStream<TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}
