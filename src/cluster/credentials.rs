//! Cluster credentials: a private certificate authority and one certificate per node, used for
//! mutual TLS on every inter-node QUIC connection. Only holders of a certificate signed by the
//! cluster's CA can join, and a node's certificate proves its node id.
//!
//! # Operator flow
//!
//! ```text
//! # once per cluster, on a trusted machine; ca/ca.key never leaves it
//! ioswarm cluster init-ca --dir ca/
//! # once per node (add --san for names/IPs operators want in the certificate)
//! ioswarm cluster issue --ca ca/ --node-id 1 --out node1/
//! ioswarm cluster issue --ca ca/ --node-id 2 --out node2/ --san 10.0.0.2
//! # copy nodeN/ to node N and start it with --node-id N and that directory
//! ```
//!
//! Layout on disk (PEM; private keys are written with mode 0600 and files are never
//! overwritten):
//!
//! | file | in | what |
//! |---|---|---|
//! | `ca.pem` | CA dir, node dir | the CA certificate, the only trust anchor |
//! | `ca.key` | CA dir only | the CA private key (PKCS#8) |
//! | `node.pem` | node dir | the node certificate |
//! | `node.key` | node dir | the node private key (PKCS#8) |
//!
//! A node certificate has the DNS name `node-<id>.ioswarm` (see [`node_server_name`]) plus any
//! extra SANs, and both the server-auth and client-auth extended key usages, because one QUIC
//! endpoint per node both accepts and dials. A dialer checks the acceptor's certificate against
//! the node id it expects (the TLS server name); an acceptor checks the dialer's certificate
//! against the node id its `Hello` claims ([`NodeCredentials::verify_peer`]).
//!
//! Revocation is by rotation: to evict a node, create a new CA and reissue every other node.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;

use super::message::NodeId;

/// ALPN protocol of the inter-node QUIC connections.
pub const ALPN: &[u8] = b"ioswarm/1";
/// CA certificate file name.
pub const CA_CERT_FILE: &str = "ca.pem";
/// CA private key file name.
pub const CA_KEY_FILE: &str = "ca.key";
/// Node certificate file name.
pub const NODE_CERT_FILE: &str = "node.pem";
/// Node private key file name.
pub const NODE_KEY_FILE: &str = "node.key";

/// The CA's subject common name. The CA is re-created as an [`Issuer`] from its key and this
/// fixed name, so the name is part of the on-disk format: do not change it.
const CA_COMMON_NAME: &str = "ioswarm cluster CA";
const CA_ORGANIZATION: &str = "ioswarm";
/// Validity, in years from the start of the current year.
const CA_VALID_YEARS: i32 = 20;
const NODE_VALID_YEARS: i32 = 10;

/// Why credentials could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file already exists; credentials are never overwritten.
    #[error("{} already exists; refusing to overwrite it", .0.display())]
    Exists(PathBuf),
    /// Generating a key or certificate failed.
    #[error("generating credentials: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM file could not be parsed.
    #[error("{}: {source}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// The error.
        source: rustls::pki_types::pem::Error,
    },
    /// A PEM file holds no certificate.
    #[error("{}: no certificate in the file", .0.display())]
    NoCertificate(PathBuf),
    /// The certificate is not signed by the CA, or is not for this node id.
    #[error("certificate is not valid for node {node_id} under this CA: {source}")]
    NotForNode {
        /// The node id checked.
        node_id: NodeId,
        /// What rustls found.
        source: rustls::Error,
    },
    /// Building the TLS configuration failed.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// Building the client-certificate verifier failed.
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The `ioswarm cluster …` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ClusterCommand {
    /// Create a new cluster certificate authority in DIR (ca.pem, ca.key).
    InitCa {
        /// Directory to create the CA in (created if missing).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a node certificate signed by the cluster CA.
    Issue {
        /// Directory holding the CA (from `init-ca`).
        #[arg(long)]
        ca: PathBuf,
        /// The node's id (the same as its `--node-id`).
        #[arg(long)]
        node_id: NodeId,
        /// Output directory (ca.pem, node.pem, node.key).
        #[arg(long)]
        out: PathBuf,
        /// Extra subject alternative names (DNS names or IP addresses); repeatable.
        #[arg(long = "san")]
        sans: Vec<String>,
    },
}

/// Runs an `ioswarm cluster …` subcommand and returns the line to print.
pub fn run_cli(command: ClusterCommand) -> Result<String, CredentialsError> {
    match command {
        ClusterCommand::InitCa { dir } => {
            generate_ca(&dir)?;
            Ok(format!(
                "cluster CA written to {}; keep {} secret, copy only {} to nodes",
                dir.display(),
                dir.join(CA_KEY_FILE).display(),
                CA_CERT_FILE
            ))
        }
        ClusterCommand::Issue { ca, node_id, out, sans } => {
            issue_node_cert(&ca, node_id, &sans, &out)?;
            Ok(format!("certificate for node {node_id} ({}) written to {}", node_server_name(node_id), out.display()))
        }
    }
}

/// The DNS name a node's certificate is issued for, and the TLS server name peers dial it by.
pub fn node_server_name(node_id: NodeId) -> String {
    format!("node-{node_id}.ioswarm")
}

/// Creates a cluster CA in `dir` (`ca.pem`, `ca.key`). Refuses to overwrite existing files.
pub fn generate_ca(dir: &Path) -> Result<(), CredentialsError> {
    create_dir(dir)?;
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    for path in [&cert_path, &key_path] {
        if path.exists() {
            return Err(CredentialsError::Exists(path.clone()));
        }
    }
    let key = KeyPair::generate()?;
    let mut params = ca_params();
    let year = current_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + CA_VALID_YEARS, 1, 1);
    let cert = params.self_signed(&key)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_new(&cert_path, cert.pem().as_bytes(), false)?;
    Ok(())
}

/// Issues a certificate for `node_id` signed by the CA in `ca_dir`, and writes `node.pem`,
/// `node.key` and a copy of `ca.pem` into `out_dir`. `sans` are extra DNS names or IP addresses.
/// The new certificate is verified against the CA before anything is written.
pub fn issue_node_cert(
    ca_dir: &Path,
    node_id: NodeId,
    sans: &[String],
    out_dir: &Path,
) -> Result<(), CredentialsError> {
    let ca_cert_pem = read(&ca_dir.join(CA_CERT_FILE))?;
    let ca_key_path = ca_dir.join(CA_KEY_FILE);
    let ca_key_pem = String::from_utf8_lossy(&read(&ca_key_path)?).into_owned();
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    let issuer = Issuer::new(ca_params(), ca_key);

    let own = node_server_name(node_id);
    let mut names = vec![own.clone()];
    names.extend(sans.iter().filter(|san| **san != own).cloned());
    let mut params = CertificateParams::new(names)?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, format!("ioswarm node {node_id}"));
    subject.push(DnType::OrganizationName, CA_ORGANIZATION);
    params.distinguished_name = subject;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let year = current_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + NODE_VALID_YEARS, 1, 1);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;

    // Check before writing: catches a CA key that does not belong to ca.pem.
    let ca_cert_pem = String::from_utf8_lossy(&ca_cert_pem).into_owned();
    NodeCredentials::from_pem(node_id, &ca_cert_pem, &cert.pem(), &key.serialize_pem())?;

    create_dir(out_dir)?;
    let paths = [out_dir.join(NODE_KEY_FILE), out_dir.join(NODE_CERT_FILE), out_dir.join(CA_CERT_FILE)];
    for path in &paths {
        if path.exists() {
            return Err(CredentialsError::Exists(path.clone()));
        }
    }
    let [key_path, cert_path, ca_copy] = paths;
    write_new(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_new(&cert_path, cert.pem().as_bytes(), false)?;
    write_new(&ca_copy, ca_cert_pem.as_bytes(), false)?;
    Ok(())
}

/// The CA's certificate parameters. [`issue_node_cert`] rebuilds the issuer from these and the
/// CA key, so everything that ends up in a child certificate (the subject name, the key
/// identifier method, the key usages) must stay stable.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, CA_COMMON_NAME);
    subject.push(DnType::OrganizationName, CA_ORGANIZATION);
    params.distinguished_name = subject;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

/// One node's loaded credentials: its certificate and key and the cluster CA.
pub struct NodeCredentials {
    node_id: NodeId,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for NodeCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCredentials").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

impl Clone for NodeCredentials {
    fn clone(&self) -> Self {
        Self { node_id: self.node_id, roots: self.roots.clone(), chain: self.chain.clone(), key: self.key.clone_key() }
    }
}

impl NodeCredentials {
    /// Loads `ca.pem`, `node.pem` and `node.key` from `dir` and checks that the certificate is
    /// signed by the CA and issued for `node_id`.
    pub fn load(dir: &Path, node_id: NodeId) -> Result<Self, CredentialsError> {
        let ca_path = dir.join(CA_CERT_FILE);
        let cert_path = dir.join(NODE_CERT_FILE);
        let key_path = dir.join(NODE_KEY_FILE);
        let ca = certificates(&read(&ca_path)?, &ca_path)?;
        let chain = certificates(&read(&cert_path)?, &cert_path)?;
        let key = PrivateKeyDer::from_pem_slice(&read(&key_path)?)
            .map_err(|source| CredentialsError::Pem { path: key_path, source })?;
        Self::new(node_id, ca, chain, key)
    }

    /// Builds credentials from PEM text (the CA certificate, the node certificate, its key).
    pub fn from_pem(node_id: NodeId, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, CredentialsError> {
        let ca = certificates(ca_pem.as_bytes(), Path::new("<ca>"))?;
        let chain = certificates(cert_pem.as_bytes(), Path::new("<cert>"))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|source| CredentialsError::Pem { path: PathBuf::from("<key>"), source })?;
        Self::new(node_id, ca, chain, key)
    }

    fn new(
        node_id: NodeId,
        ca: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, CredentialsError> {
        let mut roots = RootCertStore::empty();
        for cert in ca {
            roots.add(cert)?;
        }
        let credentials = Self { node_id, roots: Arc::new(roots), chain, key };
        credentials.verify_peer(&credentials.chain, node_id)?;
        // Fails early when the key does not belong to the certificate.
        credentials.client_config()?;
        Ok(credentials)
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Checks that `chain` (a peer's certificates, end entity first) is signed by the cluster CA
    /// and issued for `node_id`.
    pub fn verify_peer(&self, chain: &[CertificateDer<'_>], node_id: NodeId) -> Result<(), CredentialsError> {
        let not_for_node = |source| CredentialsError::NotForNode { node_id, source };
        let (end_entity, intermediates) =
            chain.split_first().ok_or_else(|| not_for_node(rustls::Error::NoCertificatesPresented))?;
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider()).build()?;
        let name = ServerName::try_from(node_server_name(node_id))
            .map_err(|_| not_for_node(rustls::Error::General("invalid server name".into())))?;
        verifier.verify_server_cert(end_entity, intermediates, &name, &[], UnixTime::now()).map_err(not_for_node)?;
        Ok(())
    }

    /// TLS 1.3 server configuration that requires a client certificate from the cluster CA.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, CredentialsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider()).build()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// Like [`NodeCredentials::client_config`], for dialing an address whose node id is not
    /// known yet (`--join HOST:PORT`): the server's certificate must chain to the cluster CA, but
    /// any node name is accepted. The caller must then check the certificate against the id the
    /// peer's `Hello` claims ([`NodeCredentials::verify_peer`]).
    pub fn discovery_client_config(&self) -> Result<rustls::ClientConfig, CredentialsError> {
        let inner =
            rustls::client::WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider()).build()?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyNodeVerifier { inner }))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// TLS 1.3 client configuration that trusts only the cluster CA and presents this node's
    /// certificate. Dial with [`node_server_name`] of the expected peer as the server name.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, CredentialsError> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}

/// Accepts a server certificate that chains to the cluster CA whatever node name it carries
/// (webpki checks the chain, validity and usage before the name, so a name mismatch is the only
/// error let through). Used only to learn the id of a `--join` address.
#[derive(Debug)]
struct AnyNodeVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl rustls::client::danger::ServerCertVerifier for AnyNodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The one crypto provider: ring (both ring and aws-lc may be compiled in, so never rely on the
/// process default).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, CredentialsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| CredentialsError::Pem { path: path.to_path_buf(), source })?;
    if certs.is_empty() {
        return Err(CredentialsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

fn read(path: &Path) -> Result<Vec<u8>, CredentialsError> {
    fs::read(path).map_err(|source| CredentialsError::Io { path: path.to_path_buf(), source })
}

fn create_dir(dir: &Path) -> Result<(), CredentialsError> {
    fs::create_dir_all(dir).map_err(|source| CredentialsError::Io { path: dir.to_path_buf(), source })
}

/// Writes a new file (never overwrites); `secret` files are readable by the owner only.
fn write_new(path: &Path, contents: &[u8], secret: bool) -> Result<(), CredentialsError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let io = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            CredentialsError::Exists(path.to_path_buf())
        } else {
            CredentialsError::Io { path: path.to_path_buf(), source }
        }
    };
    let mut file = options.open(path).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)
}

/// The current UTC year, close enough for certificate validity bounds.
fn current_year() -> i32 {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    1970 + i32::try_from(secs / 31_556_952).unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A directory under the system temp dir, removed on drop.
    #[derive(Debug)]
    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new(label: &str) -> Self {
            use std::sync::atomic::{AtomicU64, Ordering};
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let unique = format!("ioswarm-{label}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
            let path = std::env::temp_dir().join(unique);
            let _ = fs::remove_dir_all(&path);
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A CA and credentials for `ids`, loaded the way a node loads them.
    pub(crate) fn cluster(label: &str, ids: &[NodeId]) -> (TempDir, Vec<NodeCredentials>) {
        let dir = TempDir::new(label);
        let ca = dir.0.join("ca");
        generate_ca(&ca).expect("ca");
        let creds = ids
            .iter()
            .map(|&id| {
                let out = dir.0.join(format!("node{id}"));
                issue_node_cert(&ca, id, &["127.0.0.1".into()], &out).expect("issue");
                NodeCredentials::load(&out, id).expect("load")
            })
            .collect();
        (dir, creds)
    }

    #[test]
    fn init_ca_then_issue_then_load() {
        let dir = TempDir::new("creds");
        let ca = dir.0.join("ca");
        let line = run_cli(ClusterCommand::InitCa { dir: ca.clone() }).expect("init-ca");
        assert!(line.contains("cluster CA"));
        let node = dir.0.join("node2");
        run_cli(ClusterCommand::Issue {
            ca: ca.clone(),
            node_id: 2,
            out: node.clone(),
            sans: vec!["db.example".into()],
        })
        .expect("issue");
        for file in [CA_CERT_FILE, NODE_CERT_FILE, NODE_KEY_FILE] {
            assert!(node.join(file).exists(), "{file}");
        }
        assert!(!node.join(CA_KEY_FILE).exists(), "the CA key must not be copied to nodes");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(node.join(NODE_KEY_FILE)).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = fs::metadata(ca.join(CA_KEY_FILE)).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let creds = NodeCredentials::load(&node, 2).expect("load");
        assert_eq!(creds.node_id(), 2);
        creds.server_config().expect("server config");
        creds.client_config().expect("client config");
    }

    #[test]
    fn a_certificate_proves_only_its_own_node_id() {
        let (_dir, creds) = cluster("ids", &[1, 2]);
        let node1_chain = creds[0].chain.clone();
        creds[1].verify_peer(&node1_chain, 1).expect("node 1 is node 1");
        assert!(matches!(creds[1].verify_peer(&node1_chain, 2), Err(CredentialsError::NotForNode { .. })));
        assert!(creds[1].verify_peer(&[], 1).is_err());
        // Loading a node directory under another id is refused.
        let node1_dir = _dir.0.join("node1");
        assert!(matches!(NodeCredentials::load(&node1_dir, 3), Err(CredentialsError::NotForNode { .. })));
    }

    #[test]
    fn another_cas_certificate_is_refused() {
        let (_a, ours) = cluster("ca-a", &[1]);
        let (_b, theirs) = cluster("ca-b", &[1]);
        assert!(matches!(ours[0].verify_peer(&theirs[0].chain, 1), Err(CredentialsError::NotForNode { .. })));
    }

    #[test]
    fn existing_credentials_are_never_overwritten() {
        let dir = TempDir::new("overwrite");
        let ca = dir.0.join("ca");
        generate_ca(&ca).expect("ca");
        let before = fs::read(ca.join(CA_KEY_FILE)).expect("read");
        assert!(matches!(generate_ca(&ca), Err(CredentialsError::Exists(_))));
        assert_eq!(fs::read(ca.join(CA_KEY_FILE)).expect("read"), before);
        let out = dir.0.join("n");
        issue_node_cert(&ca, 1, &[], &out).expect("issue");
        assert!(matches!(issue_node_cert(&ca, 1, &[], &out), Err(CredentialsError::Exists(_))));
    }

    #[test]
    fn a_ca_key_that_does_not_match_ca_pem_is_caught() {
        let dir = TempDir::new("mismatch");
        let (a, b) = (dir.0.join("a"), dir.0.join("b"));
        generate_ca(&a).expect("ca a");
        generate_ca(&b).expect("ca b");
        fs::copy(b.join(CA_KEY_FILE), a.join("other.key")).expect("copy");
        fs::rename(a.join("other.key"), a.join(CA_KEY_FILE)).expect("swap");
        let out = dir.0.join("n");
        assert!(matches!(issue_node_cert(&a, 1, &[], &out), Err(CredentialsError::NotForNode { .. })));
        assert!(!out.join(NODE_KEY_FILE).exists());
    }
}
