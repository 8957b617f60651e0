//! TLS material for the lab: a self-signed rcgen identity, the embedded
//! server's rustls configuration and the clients' configurations.
//!
//! Every configuration is built with the `ring` provider passed explicitly
//! (`builder_with_provider`), never from the process-default provider.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore};

/// How many `127.0.0.x` addresses the generated certificate names.
pub const CERT_LOOPBACK_ADDRESSES: u8 = 64;

/// The crypto provider every lab configuration uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A self-signed certificate and its key, for the embedded server.
///
/// The certificate names `localhost` and `127.0.0.1` ..
/// `127.0.0.`[`CERT_LOOPBACK_ADDRESSES`].
#[derive(Clone)]
pub struct TlsIdentity {
    cert: CertificateDer<'static>,
    key: Arc<PrivatePkcs8KeyDer<'static>>,
    cert_pem: String,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// Generates a fresh self-signed identity.
    pub fn generate() -> Result<Self, rcgen::Error> {
        let mut names = vec!["localhost".to_owned()];
        names.extend(
            (1..=CERT_LOOPBACK_ADDRESSES)
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)).to_string()),
        );
        let certified = rcgen::generate_simple_self_signed(names)?;
        let cert_pem = certified.cert.pem();
        let cert = certified.cert.der().clone();
        let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        Ok(Self {
            cert,
            key: Arc::new(key),
            cert_pem,
        })
    }

    /// The certificate, PEM encoded.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes the certificate (PEM) to `path`, so external tools can trust it.
    pub fn write_cert_pem(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, &self.cert_pem)
    }

    /// A root store that trusts only this identity.
    pub fn root_store(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        // A certificate rcgen just made always parses.
        let _ = roots.add(self.cert.clone());
        roots
    }

    /// A server configuration with ALPN `h2`, `http/1.1` and stateless
    /// TLS 1.3 session tickets (two per full handshake), so clients can resume.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let key = PrivateKeyDer::Pkcs8(self.key.as_ref().clone_key());
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        config.send_tls13_tickets = 2;
        Ok(Arc::new(config))
    }
}

/// A client configuration trusting `roots`, with rustls' default session
/// resumption (an in-memory cache of 256 servers). Build one per client
/// stack: tickets must not leak from one stack's run into another's.
pub fn client_config(roots: RootCertStore) -> Result<ClientConfig, rustls::Error> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Loads every certificate of a PEM file into a root store (`--ca FILE`).
pub fn load_roots(path: &Path) -> io::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    for cert in certs {
        let cert = cert.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no certificate in {}", path.display()),
        ));
    }
    Ok(roots)
}
