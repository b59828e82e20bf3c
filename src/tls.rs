//! Native TLS: the server's certificate chain and key, read from PEM files and swapped in
//! place when the files change (checked every [`CHECK_EVERY`]) or on SIGHUP, so a renewal
//! (Let's Encrypt, cert-manager) needs no restart. Connections already open keep their
//! session; the next handshake gets the new certificate.
//!
//! Owns: reading and checking the PEM files, the rustls server configuration, the reload.
//! Must not touch: sockets (`server` accepts and runs the handshake).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// How often the files' modification times are compared.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Why the certificate files could not be used; names the file and the config key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("server.tls.{key}: {path}: {why}")]
    File {
        /// `cert` or `key`.
        key: &'static str,
        /// The file.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// The key does not belong to the certificate, or rustls refused it.
    #[error("server.tls: {cert} and {key} do not make a usable certificate: {why}")]
    Pair {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// rustls's reason.
        why: String,
    },
}

/// The modification times last loaded, to see a renewal.
type Stamps = (Option<SystemTime>, Option<SystemTime>);

/// The current certificate, shared by every handshake.
pub struct Certs {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    loaded: Mutex<Stamps>,
}

impl fmt::Debug for Certs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certs")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Certs {
    /// Reads `cert` (the chain, leaf first) and `key` (PKCS#8, PKCS#1 or SEC1); an error
    /// names the file and what is wrong.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Certs>, TlsError> {
        let stamps = stamps(cert, key);
        let pair = read(cert, key)?;
        Ok(Arc::new(Certs {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: ArcSwap::from_pointee(pair),
            loaded: Mutex::new(stamps),
        }))
    }

    /// Reads the files again and, when they make a usable certificate, serves it from the
    /// next handshake on. On an error the running certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = stamps(&self.cert, &self.key);
        let pair = read(&self.cert, &self.key)?;
        self.current.store(Arc::new(pair));
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = stamps;
        Ok(())
    }

    /// [`Certs::reload`] when either file's modification time changed since the last load;
    /// `Ok(true)` when a new certificate is served.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamps(&self.cert, &self.key);
        let last = *self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if now == last {
            return Ok(false);
        }
        match self.reload() {
            Ok(()) => Ok(true),
            Err(e) => {
                // Half-written files (the key renewed before the certificate) fail until
                // both are in place: remember these times so the error is reported once,
                // and try again when they change once more.
                *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = now;
                Err(e)
            }
        }
    }

    /// The rustls configuration for the listener: HTTP/1.1 only (WebSocket upgrades need
    /// it), certificates from `self`.
    pub fn server_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// The certificate served now (tests compare it).
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn stamps(cert: &Path, key: &Path) -> Stamps {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (modified(cert), modified(key))
}

fn read(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let file_err = |which: &'static str, path: &Path, why: String| TlsError::File {
        key: which,
        path: path.display().to_string(),
        why,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err("cert", cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err("cert", cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_err(
            "cert",
            cert,
            "no CERTIFICATE block in the file".into(),
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        file_err(
            "key",
            key,
            format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
        )
    })?;
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    CertifiedKey::from_der(chain, private, &provider).map_err(|e| TlsError::Pair {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        why: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `name`, as (cert PEM, key PEM).
    fn self_signed(name: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("rcgen");
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    fn dir() -> PathBuf {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("pushi-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Writes a fresh self-signed pair for `name` as `d/cert.pem` and `d/key.pem`; returns
    /// their paths.
    fn write_pair(d: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (d.join("cert.pem"), d.join("key.pem"));
        let (c, k) = self_signed(name);
        std::fs::write(&cert, c).unwrap();
        std::fs::write(&key, k).unwrap();
        (cert, key)
    }

    #[test]
    fn loads_a_pair_and_swaps_it_when_the_files_change() {
        let d = dir();
        let (cert, key) = write_pair(&d, "one.test");
        let certs = Certs::load(&cert, &key).expect("a valid pair");
        let first = certs.current();
        assert!(!certs.reload_if_changed().unwrap(), "nothing changed");

        write_pair(&d, "two.test");
        // Some filesystems keep whole-second times: make the change visible.
        let later = SystemTime::now() + Duration::from_secs(2);
        for p in [&cert, &key] {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(later)
                .unwrap();
        }
        assert!(certs.reload_if_changed().unwrap(), "a renewal is picked up");
        assert_ne!(certs.current().cert[0], first.cert[0]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn bad_files_name_the_key_and_keep_the_running_certificate() {
        let d = dir();
        let (cert, key) = write_pair(&d, "one.test");
        let certs = Certs::load(&cert, &key).unwrap();
        let running = certs.current();

        let missing = Certs::load(&d.join("nope.pem"), &key)
            .unwrap_err()
            .to_string();
        assert!(missing.starts_with("server.tls.cert:"), "{missing}");
        std::fs::write(d.join("empty.pem"), "").unwrap();
        let empty = Certs::load(&d.join("empty.pem"), &key)
            .unwrap_err()
            .to_string();
        assert!(empty.contains("no CERTIFICATE"), "{empty}");
        let no_key = Certs::load(&cert, &cert).unwrap_err().to_string();
        assert!(no_key.starts_with("server.tls.key:"), "{no_key}");
        // Another certificate's key: refused as a pair.
        let (_, other_key) = self_signed("other.test");
        std::fs::write(d.join("other.pem"), other_key).unwrap();
        let mismatch = Certs::load(&cert, &d.join("other.pem"))
            .unwrap_err()
            .to_string();
        assert!(
            mismatch.contains("do not make a usable certificate"),
            "{mismatch}"
        );

        // A broken renewal is reported and the running certificate stays.
        std::fs::write(&cert, "garbage").unwrap();
        assert!(certs.reload().is_err());
        assert_eq!(certs.current().cert[0], running.cert[0]);
        let _ = std::fs::remove_dir_all(&d);
    }
}
