//! TLS for the Socket.IO and Redis-protocol listeners (rustls with ring).
//!
//! [`ServerTls::load`] reads a PEM certificate chain and its private key once at start and
//! refuses files that are unreadable, hold no certificate or no key, or whose key does not match
//! the certificate; every error names the setting (`tls_cert`, `redis_tls_key`, ...). The
//! certificate lives in a cell the rustls resolver reads at each handshake, so
//! [`ServerTls::reload`] (on SIGHUP, see [`reload_on_sighup`]) swaps it for new connections while
//! the open ones keep theirs; a reload that fails leaves the old certificate in place.
//! [`ServerTls::accept`] runs one handshake under a deadline, so a silent client cannot hold a
//! connection slot forever.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// How long a client may take to complete the TLS handshake on the Redis-protocol listener (the
/// Socket.IO listener uses its header read timeout).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a certificate or key could not be loaded. Each message starts with the setting it came
/// from, like the configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("invalid setting `{setting}`: cannot read {path}: {source}")]
    Read {
        /// The setting naming the file (`tls_cert`, `tls_key`, `redis_tls_cert`, ...).
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate, or a malformed one.
    #[error("invalid setting `{setting}`: {path} holds no PEM certificate ({message})")]
    NoCertificate {
        /// The certificate setting.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        message: String,
    },
    /// The key file holds no PEM private key (PKCS#8, PKCS#1 or SEC1), or a malformed one.
    #[error("invalid setting `{setting}`: {path} holds no PEM private key ({message})")]
    NoKey {
        /// The key setting.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        message: String,
    },
    /// The key is not usable, or it does not belong to the certificate.
    #[error("invalid setting `{setting}`: the key in {key} does not match the certificate in {cert} ({message})")]
    KeyMismatch {
        /// The key setting.
        setting: &'static str,
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
        /// What rustls said.
        message: String,
    },
    /// rustls refused the server configuration.
    #[error("building the TLS configuration for `{setting}`: {message}")]
    Config {
        /// The certificate setting.
        setting: &'static str,
        /// What rustls said.
        message: String,
    },
}

/// Where a listener's certificate and key come from, and the settings that named them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf certificate.
    pub key: PathBuf,
    /// Setting of `cert`, for messages (`tls_cert` or `redis_tls_cert`).
    pub cert_setting: &'static str,
    /// Setting of `key`, for messages (`tls_key` or `redis_tls_key`).
    pub key_setting: &'static str,
}

impl CertFiles {
    /// Reads and checks both files.
    fn load(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        let cert_pem = read(&self.cert, self.cert_setting)?;
        let key_pem = read(&self.key, self.key_setting)?;
        let no_cert =
            |message: String| TlsError::NoCertificate { setting: self.cert_setting, path: self.cert.clone(), message };
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| no_cert(e.to_string()))?;
        if chain.is_empty() {
            return Err(no_cert("no CERTIFICATE block".to_owned()));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NoKey {
            setting: self.key_setting,
            path: self.key.clone(),
            message: e.to_string(),
        })?;
        let mismatch = |source: rustls::Error| TlsError::KeyMismatch {
            setting: self.key_setting,
            key: self.key.clone(),
            cert: self.cert.clone(),
            message: source.to_string(),
        };
        let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(mismatch)?;
        // `from_der` lets a key whose public half it cannot compute through; ring's keys all
        // have one, so anything but a confirmed match is refused.
        certified.keys_match().map_err(mismatch)?;
        Ok(Arc::new(certified))
    }
}

fn read(path: &Path, setting: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { setting, path: path.to_path_buf(), source })
}

/// The one crypto provider: ring (never the process default; see `CRATES.md`).
fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The rustls certificate resolver: every handshake takes the certificate current at that moment.
#[derive(Debug)]
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().clone())
    }
}

/// A listener's TLS: the server configuration and the certificate it can reload.
#[derive(Clone)]
pub struct ServerTls {
    files: CertFiles,
    current: Arc<CurrentCert>,
    acceptor: tokio_rustls::TlsAcceptor,
    listener: &'static str,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("listener", &self.listener)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads `files` for the listener `listener` (`"socketio"`, `"redis"`: log lines and the
    /// metric label), offering `alpn` (e.g. `http/1.1`; empty: no ALPN).
    pub fn load(files: CertFiles, alpn: &[&[u8]], listener: &'static str) -> Result<Self, TlsError> {
        let current = Arc::new(CurrentCert(RwLock::new(files.load()?)));
        let config_err = |e: rustls::Error| TlsError::Config { setting: files.cert_setting, message: e.to_string() };
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .map_err(config_err)?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Ok(Self { files, current, acceptor, listener })
    }

    /// Whether `self` and `other` are the same listener's TLS (clones of one [`ServerTls`]).
    pub fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.current, &other.current)
    }

    /// Reads the files again and, if they are valid, serves the new certificate to every new
    /// connection; open connections keep theirs. On error the old certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let result = self.files.load().map(|cert| *self.current.0.write() = cert);
        let label = if result.is_ok() { "ok" } else { "error" };
        ::metrics::counter!(crate::metrics::TLS_RELOADS, crate::metrics::label::RESULT => label).increment(1);
        result
    }

    /// The TLS handshake on an accepted connection, bounded by `timeout`. A failed or timed-out
    /// handshake is counted and logged at debug level.
    pub async fn accept(&self, stream: TcpStream, timeout: Duration) -> Option<TlsStream<TcpStream>> {
        let remote = stream.peer_addr().ok();
        let error = match tokio::time::timeout(timeout, self.acceptor.accept(stream)).await {
            Ok(Ok(tls)) => return Some(tls),
            Ok(Err(err)) => err.to_string(),
            Err(_) => "handshake timed out".to_owned(),
        };
        ::metrics::counter!(crate::metrics::TLS_HANDSHAKE_ERRORS, crate::metrics::label::LISTENER => self.listener)
            .increment(1);
        tracing::debug!(listener = self.listener, ?remote, %error, "TLS handshake failed");
        None
    }
}

/// Until `shutdown`, reloads every listed certificate on each SIGHUP (logging the outcome).
/// `hangup` must be installed before the node reports ready, so no early SIGHUP ends the
/// process.
pub async fn reload_on_sighup(
    mut hangup: tokio::signal::unix::Signal,
    certs: Vec<ServerTls>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            got = hangup.recv() => if got.is_none() { return },
        }
        for tls in &certs {
            match tls.reload() {
                Ok(()) => tracing::info!(
                    listener = tls.listener, cert = %tls.files.cert.display(), "SIGHUP: TLS certificate reloaded"
                ),
                Err(err) => tracing::error!(
                    listener = tls.listener, error = %err, "SIGHUP: TLS certificate not reloaded; keeping the old one"
                ),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(label: &str) -> Self {
            use std::sync::atomic::{AtomicU64, Ordering};
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let unique = format!("ioswarm-tls-{label}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
            let dir = std::env::temp_dir().join(unique);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        /// Writes a self-signed certificate for `localhost` and its key as `name.pem`/`name.key`.
        fn self_signed(&self, name: &str) -> CertFiles {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&key).unwrap();
            let files = self.files(name);
            std::fs::write(&files.cert, cert.pem()).unwrap();
            std::fs::write(&files.key, key.serialize_pem()).unwrap();
            files
        }

        fn files(&self, name: &str) -> CertFiles {
            CertFiles {
                cert: self.0.join(format!("{name}.pem")),
                key: self.0.join(format!("{name}.key")),
                cert_setting: "tls_cert",
                key_setting: "tls_key",
            }
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn served(tls: &ServerTls) -> Vec<u8> {
        tls.current.0.read().cert[0].to_vec()
    }

    #[test]
    fn loads_a_certificate_and_its_key() {
        let dir = Dir::new("load");
        let files = dir.self_signed("a");
        let tls = ServerTls::load(files.clone(), &[b"http/1.1"], "socketio").unwrap();
        let pem = std::fs::read(&files.cert).unwrap();
        assert_eq!(served(&tls), CertificateDer::from_pem_slice(&pem).unwrap().to_vec());
    }

    #[test]
    fn errors_name_the_setting() {
        let dir = Dir::new("errors");
        let a = dir.self_signed("a");
        let b = dir.self_signed("b");
        let missing = CertFiles { cert: dir.0.join("nope.pem"), ..a.clone() };
        let err = ServerTls::load(missing, &[], "socketio").unwrap_err().to_string();
        assert!(err.starts_with("invalid setting `tls_cert`: cannot read") && err.contains("nope.pem"), "{err}");

        let no_cert = CertFiles { cert: a.key.clone(), ..a.clone() };
        let err = ServerTls::load(no_cert, &[], "socketio").unwrap_err().to_string();
        assert!(err.starts_with("invalid setting `tls_cert`:") && err.contains("no PEM certificate"), "{err}");

        let no_key = CertFiles { key: a.cert.clone(), ..a.clone() };
        let err = ServerTls::load(no_key, &[], "socketio").unwrap_err().to_string();
        assert!(err.starts_with("invalid setting `tls_key`:") && err.contains("no PEM private key"), "{err}");

        let other_key = CertFiles { key: b.key.clone(), ..a.clone() };
        let err = ServerTls::load(other_key, &[], "socketio").unwrap_err().to_string();
        assert!(err.starts_with("invalid setting `tls_key`:") && err.contains("does not match"), "{err}");
    }

    #[test]
    fn reload_swaps_the_certificate_and_a_bad_one_keeps_the_old() {
        let dir = Dir::new("reload");
        let files = dir.self_signed("a");
        let tls = ServerTls::load(files.clone(), &[], "socketio").unwrap();
        let first = served(&tls);

        let b = dir.self_signed("b");
        std::fs::copy(&b.cert, &files.cert).unwrap();
        std::fs::copy(&b.key, &files.key).unwrap();
        tls.reload().unwrap();
        let second = served(&tls);
        assert_ne!(first, second);

        // A certificate whose key was not replaced along with it is refused.
        let c = dir.self_signed("c");
        std::fs::copy(&c.cert, &files.cert).unwrap();
        assert!(matches!(tls.reload().unwrap_err(), TlsError::KeyMismatch { .. }));
        std::fs::write(&files.cert, "garbage").unwrap();
        assert!(matches!(tls.reload().unwrap_err(), TlsError::NoCertificate { .. }));
        assert_eq!(served(&tls), second);
    }
}
