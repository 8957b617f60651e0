//! A real rustls server for the TLS tests, on loopback or over in-memory
//! pipes (for paused time): an rcgen CA signs its certificate (for
//! `127.0.0.1` and `localhost`) and the clients' identities; each test picks
//! the ALPN protocols, client authentication, TLS version, key-exchange
//! groups, tickets per handshake, a close after N requests, a delay before
//! the handshake or a stall. The server records every handshake from its own
//! side: its kind (full, full after a HelloRetryRequest, resumed), the
//! client certificate it saw and, for a resumed one, which connection's
//! session it resumed; the HTTP requests it served (see
//! [`server`](crate::server)); its in-memory connector records every URI it
//! was asked to dial.
//!
//! Every rustls configuration here gets the `ring` provider explicitly
//! (`builder_with_provider`), never the process default.

use std::collections::HashMap;
use std::fmt;
use std::future::{Ready, ready};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions, WebPkiClientVerifier};
use rustls::{
    ClientConfig, HandshakeKind, NamedGroup, ProtocolVersion, RootCertStore, ServerConfig,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::Service;

use crate::duplex::DuplexIo;
use crate::server::{Seen, ServerOptions, ServerStats, serve};

/// The crypto provider of every configuration in these tests.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client certificates a CA issued (DER), by identity name.
type Issued = Arc<Mutex<HashMap<Vec<u8>, String>>>;

/// A certificate authority made for one test: it signs the server's
/// certificate and the clients' identities.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    issued: Issued,
}

impl fmt::Debug for TestCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA (an ECDSA P-256 key) named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names to check");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("generate a CA key");
        let cert = params.self_signed(&key).expect("self-sign the CA");
        TestCa {
            issuer: Issuer::new(params, key),
            cert: cert.der().clone(),
            issued: Arc::default(),
        }
    }

    /// A root store trusting this CA alone.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.cert.clone())
            .expect("a CA rcgen made parses");
        roots
    }

    /// A leaf certificate for `names` with `usage`, and its key.
    fn issue(
        &self,
        names: Vec<String>,
        common_name: &str,
        usage: ExtendedKeyUsagePurpose,
    ) -> (CertificateDer<'static>, PrivatePkcs8KeyDer<'static>) {
        let mut params = CertificateParams::new(names).expect("valid subject names");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages.push(KeyUsagePurpose::DigitalSignature);
        params.extended_key_usages.push(usage);
        let key = KeyPair::generate().expect("generate a leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign the leaf");
        (
            cert.der().clone(),
            PrivatePkcs8KeyDer::from(key.serialize_der()),
        )
    }

    /// A client identity for mutual TLS: CN `name`, SAN `name.client.test`.
    /// Servers of this CA report it by `name`.
    pub fn client_identity(&self, name: &str) -> ClientIdentity {
        let (cert, key) = self.issue(
            vec![format!("{name}.client.test")],
            name,
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        self.issued
            .lock()
            .expect("not poisoned")
            .insert(cert.to_vec(), name.to_owned());
        ClientIdentity {
            name: name.to_owned(),
            cert,
            key,
        }
    }

    /// A client configuration (TLS 1.2 and 1.3, no ALPN: the connector adds
    /// its default) trusting this CA, presenting `identity` if given.
    pub fn client_config(&self, identity: Option<&ClientIdentity>) -> ClientConfig {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .expect("ring supports TLS 1.2 and 1.3")
            .with_root_certificates(self.roots());
        match identity {
            Some(identity) => builder
                .with_client_auth_cert(
                    vec![identity.cert.clone()],
                    PrivateKeyDer::Pkcs8(identity.key.clone_key()),
                )
                .expect("a valid client key"),
            None => builder.with_no_client_auth(),
        }
    }
}

/// A client certificate and its key, issued by a [`TestCa`].
pub struct ClientIdentity {
    name: String,
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl ClientIdentity {
    /// The name servers report it by.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The protocols the server offers over ALPN.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Alpn {
    /// `h2` and `http/1.1`: an ALPN client gets HTTP/2.
    #[default]
    H2AndHttp1,
    /// `http/1.1` only.
    Http1Only,
    /// No ALPN at all: the server selects nothing.
    Off,
}

/// Whether the server asks for a client certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// It does not ask.
    #[default]
    Off,
    /// It asks and verifies one if sent, and accepts clients without.
    Optional,
    /// It refuses clients without a certificate of its CA.
    Required,
}

/// The one TLS version the server speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.3.
    #[default]
    Tls13,
    /// TLS 1.2.
    Tls12,
}

/// How the TLS server behaves.
#[derive(Clone, Debug, Default)]
pub struct TlsServerOptions {
    /// ALPN protocols offered.
    pub alpn: Alpn,
    /// Client certificates.
    pub client_auth: ClientAuth,
    /// TLS version.
    pub version: TlsVersion,
    /// Answer the Nth request of a connection with `Connection: close` and
    /// close it (HTTP/1.1; HTTP/2 connections ignore it).
    pub close_after: Option<u64>,
    /// Accept connections and never answer: no handshake, no close.
    pub stall: bool,
    /// Accept connections and wait this long before reading the
    /// ClientHello: every client hello of a burst is sent (and its ticket
    /// taken) before any handshake completes.
    pub handshake_delay: Option<Duration>,
    /// The only key-exchange groups the server accepts (of ring's); `None`
    /// for all of them. A client whose first key share is not among them
    /// gets a HelloRetryRequest.
    pub kx_groups: Option<Vec<NamedGroup>>,
    /// TLS 1.3 tickets sent after each handshake, full or resumed; `None`
    /// for rustls' default (2).
    pub tickets_per_handshake: Option<usize>,
    /// The names the server's certificate is for; empty: `127.0.0.1` and
    /// `localhost`.
    pub names: Vec<String>,
    /// The HTTP behaviour behind TLS.
    pub http: ServerOptions,
}

/// One completed handshake, as the server saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Handshake {
    /// The connection (`x-conn-id` of its responses).
    pub conn: u64,
    /// A resumed session, not a full handshake.
    pub resumed: bool,
    /// For a resumed session, the connection whose handshake issued it: the
    /// server writes each connection's id into the TLS 1.3 sessions it hands
    /// out, and its session store notes which connection stored each TLS
    /// 1.2 session.
    pub resumed_from: Option<u64>,
    /// The server name the client sent (SNI).
    pub server_name: Option<String>,
    /// What rustls reports: full, full with a HelloRetryRequest, resumed.
    pub kind: Option<HandshakeKind>,
    /// The client identity presented (kept in resumed sessions too), by
    /// [`ClientIdentity::name`]; `"unknown"` for a certificate the CA did
    /// not issue through [`TestCa::client_identity`].
    pub client: Option<String>,
    /// The TLS version.
    pub version: Option<ProtocolVersion>,
    /// The protocol the server selected over ALPN.
    pub alpn: Option<Vec<u8>>,
}

/// What the TLS server saw.
#[derive(Debug, Default)]
pub struct TlsServerStats {
    accepted: AtomicU64,
    failed: AtomicU64,
    handshakes: Mutex<Vec<Handshake>>,
    http: Arc<ServerStats>,
}

impl TlsServerStats {
    /// Transport connections accepted (TCP or in-memory), handshake or not.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
    /// Handshakes that failed.
    pub fn failed_handshakes(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }
    /// Completed handshakes, in order of completion.
    pub fn handshakes(&self) -> Vec<Handshake> {
        self.handshakes.lock().expect("not poisoned").clone()
    }
    /// The handshake of connection `conn`.
    pub fn handshake(&self, conn: u64) -> Option<Handshake> {
        self.handshakes().into_iter().find(|h| h.conn == conn)
    }
    /// Full handshakes completed.
    pub fn full(&self) -> usize {
        self.handshakes().iter().filter(|h| !h.resumed).count()
    }
    /// Resumed handshakes completed.
    pub fn resumed(&self) -> usize {
        self.handshakes().iter().filter(|h| h.resumed).count()
    }
    /// Requests served.
    pub fn requests(&self) -> u64 {
        self.http.requests()
    }
    /// Connections open now, past their handshake.
    pub fn open(&self) -> usize {
        self.http.open()
    }
    /// Every request head the server saw, in order of arrival.
    pub fn seen(&self) -> Vec<Seen> {
        self.http.seen()
    }
}

/// A running TLS server; stops (closing its connections) when dropped.
#[derive(Debug)]
pub struct TlsServer {
    addr: Option<SocketAddr>,
    /// What it saw.
    pub stats: Arc<TlsServerStats>,
    handler: Arc<Handler>,
    _stop: watch::Sender<()>,
}

impl TlsServer {
    /// A server on 127.0.0.1 (a free port), certified by `ca`; also
    /// reachable through [`connector`](Self::connector).
    pub async fn start(ca: &TestCa, options: TlsServerOptions) -> TlsServer {
        TlsServer::start_on("127.0.0.1:0", ca, options).await
    }

    /// A server on `addr` (a loopback address), certified by `ca`.
    pub async fn start_on(addr: &str, ca: &TestCa, options: TlsServerOptions) -> TlsServer {
        let listener = TcpListener::bind(addr).await.expect("bind loopback");
        let mut server = TlsServer::in_memory(ca, options);
        server.addr = Some(listener.local_addr().expect("local addr"));
        let handler = server.handler.clone();
        tokio::spawn(async move {
            let mut stopped = handler.stop.clone();
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    _ = stopped.changed() => return,
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(handler.clone().handle(stream));
            }
        });
        server
    }

    /// A server reachable only through [`connector`](Self::connector): no
    /// sockets, so tests on paused time stay deterministic.
    pub fn in_memory(ca: &TestCa, options: TlsServerOptions) -> TlsServer {
        let (stop, stopped) = watch::channel(());
        let stats = Arc::new(TlsServerStats::default());
        let mut http = options.http.clone();
        http.max_requests_per_conn = options.close_after.or(http.max_requests_per_conn);
        let handler = Arc::new(Handler {
            config: server_config(ca, &options),
            sessions: Arc::new(Sessions::new()),
            stall: options.stall,
            handshake_delay: options.handshake_delay,
            http: Arc::new(http),
            stats: stats.clone(),
            issued: ca.issued.clone(),
            conn_ids: AtomicU64::new(0),
            stop: stopped,
        });
        TlsServer {
            addr: None,
            stats,
            handler,
            _stop: stop,
        }
    }

    /// The address it listens on (none for an in-memory server).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// `https://127.0.0.1:port` followed by `path`; for an in-memory server,
    /// `https://localhost` (any authority reaches it through the connector).
    pub fn url(&self, path: &str) -> String {
        match self.addr {
            Some(addr) => format!("https://{addr}{path}"),
            None => format!("https://localhost{path}"),
        }
    }

    /// A transport connector whose every connect is a new in-memory pipe to
    /// this server.
    pub fn connector(&self) -> MemoryConnector {
        MemoryConnector {
            handler: self.handler.clone(),
            dialed: Arc::default(),
        }
    }
}

/// The rustls configuration of a server with `options`: a fresh leaf for
/// `127.0.0.1` and `localhost`, rustls' default (stateful) resumption.
fn server_config(ca: &TestCa, options: &TlsServerOptions) -> Arc<ServerConfig> {
    let versions: &[&rustls::SupportedProtocolVersion] = match options.version {
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
        TlsVersion::Tls12 => &[&rustls::version::TLS12],
    };
    let server_provider = match &options.kx_groups {
        Some(groups) => {
            let mut provider = rustls::crypto::ring::default_provider();
            provider
                .kx_groups
                .retain(|group| groups.contains(&group.name()));
            assert!(
                !provider.kx_groups.is_empty(),
                "ring has none of {groups:?}"
            );
            Arc::new(provider)
        }
        None => provider(),
    };
    let builder = ServerConfig::builder_with_provider(server_provider)
        .with_protocol_versions(versions)
        .expect("ring supports TLS 1.2 and 1.3");
    let verifier = || WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()), provider());
    let builder = match options.client_auth {
        ClientAuth::Off => builder.with_no_client_auth(),
        ClientAuth::Optional => builder.with_client_cert_verifier(
            verifier()
                .allow_unauthenticated()
                .build()
                .expect("a client verifier"),
        ),
        ClientAuth::Required => {
            builder.with_client_cert_verifier(verifier().build().expect("a client verifier"))
        }
    };
    let names = match options.names.as_slice() {
        [] => vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
        names => names.to_vec(),
    };
    let common_name = names[0].clone();
    let (cert, key) = ca.issue(names, &common_name, ExtendedKeyUsagePurpose::ServerAuth);
    let mut config = builder
        .with_single_cert(vec![cert], PrivateKeyDer::Pkcs8(key))
        .expect("a valid server key");
    config.alpn_protocols = match options.alpn {
        Alpn::H2AndHttp1 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        Alpn::Http1Only => vec![b"http/1.1".to_vec()],
        Alpn::Off => Vec::new(),
    };
    if let Some(tickets) = options.tickets_per_handshake {
        config.send_tls13_tickets = tickets;
    }
    Arc::new(config)
}

/// The server's stateful session store (rustls keeps TLS 1.2 sessions and,
/// without a ticketer, TLS 1.3 tickets in it), with which connection put
/// each session there.
#[derive(Debug)]
struct Sessions {
    store: Arc<dyn StoresServerSessions>,
    issued_by: Mutex<HashMap<Vec<u8>, u64>>,
}

impl Sessions {
    fn new() -> Self {
        Sessions {
            store: ServerSessionMemoryCache::new(256),
            issued_by: Mutex::default(),
        }
    }
}

/// One connection's view of [`Sessions`]: notes the connection that issued
/// the session this one resumes, under TLS 1.2 as under TLS 1.3.
#[derive(Debug)]
struct ConnSessions {
    conn: u64,
    shared: Arc<Sessions>,
    resumed_from: Mutex<Option<u64>>,
}

impl ConnSessions {
    fn found(&self, key: &[u8], value: Option<Vec<u8>>) -> Option<Vec<u8>> {
        if value.is_some() {
            let issuer = self
                .shared
                .issued_by
                .lock()
                .expect("not poisoned")
                .get(key)
                .copied();
            *self.resumed_from.lock().expect("not poisoned") = issuer;
        }
        value
    }
}

impl StoresServerSessions for ConnSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.shared
            .issued_by
            .lock()
            .expect("not poisoned")
            .insert(key.clone(), self.conn);
        self.shared.store.put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.found(key, self.shared.store.get(key))
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.found(key, self.shared.store.take(key))
    }

    fn can_cache(&self) -> bool {
        self.shared.store.can_cache()
    }
}

/// Serves connections from any transport.
struct Handler {
    /// Cloned per connection, with that connection's view of `sessions`.
    config: Arc<ServerConfig>,
    sessions: Arc<Sessions>,
    stall: bool,
    handshake_delay: Option<Duration>,
    http: Arc<ServerOptions>,
    stats: Arc<TlsServerStats>,
    issued: Issued,
    conn_ids: AtomicU64,
    stop: watch::Receiver<()>,
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handler")
            .field("stall", &self.stall)
            .field("handshake_delay", &self.handshake_delay)
            .finish_non_exhaustive()
    }
}

impl Handler {
    /// Handshake, record it, serve HTTP until the connection or the server ends.
    async fn handle<I>(self: Arc<Self>, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let conn = self.conn_ids.fetch_add(1, Ordering::SeqCst);
        self.stats.accepted.fetch_add(1, Ordering::SeqCst);
        let mut stopped = self.stop.clone();
        if self.stall {
            // Hold the connection, unread, until the server stops.
            let _ = stopped.changed().await;
            drop(io);
            return;
        }
        if let Some(delay) = self.handshake_delay {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stopped.changed() => return,
            }
        }
        let sessions = Arc::new(ConnSessions {
            conn,
            shared: self.sessions.clone(),
            resumed_from: Mutex::new(None),
        });
        let mut config = (*self.config).clone();
        config.session_storage = sessions.clone();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let accepted = tokio::select! {
            accepted = acceptor.accept_with(io, |session| {
                session.set_resumption_data(&conn.to_be_bytes());
            }) => accepted,
            _ = stopped.changed() => return,
        };
        let Ok(stream) = accepted else {
            self.stats.failed.fetch_add(1, Ordering::SeqCst);
            return;
        };
        let session = stream.get_ref().1;
        let client = session.peer_certificates().and_then(|chain| {
            let leaf = chain.first()?;
            let issued = self.issued.lock().expect("not poisoned");
            Some(
                issued
                    .get(leaf.as_ref())
                    .cloned()
                    .unwrap_or_else(|| "unknown".to_owned()),
            )
        });
        let resumed = session.handshake_kind() == Some(HandshakeKind::Resumed);
        // TLS 1.3 gives back the issuer written into the ticket; TLS 1.2
        // only the session id, whose issuer the store noted.
        let resumed_from = session
            .received_resumption_data()
            .and_then(|data| Some(u64::from_be_bytes(data.try_into().ok()?)))
            .or(*sessions.resumed_from.lock().expect("not poisoned"))
            .filter(|_| resumed);
        let handshake = Handshake {
            conn,
            resumed,
            resumed_from,
            server_name: session.server_name().map(str::to_owned),
            kind: session.handshake_kind(),
            client,
            version: session.protocol_version(),
            alpn: session.alpn_protocol().map(<[u8]>::to_vec),
        };
        self.stats
            .handshakes
            .lock()
            .expect("not poisoned")
            .push(handshake);
        serve(
            stream,
            conn,
            self.http.clone(),
            self.stats.http.clone(),
            stopped,
        )
        .await;
    }
}

/// Connects to a [`TlsServer`] over in-memory pipes; a `Service<Uri>`, so
/// a transport for the pool's TLS connector. Its clones share the record of
/// the URIs dialed.
#[derive(Clone, Debug)]
pub struct MemoryConnector {
    handler: Arc<Handler>,
    dialed: Arc<Mutex<Vec<Uri>>>,
}

impl MemoryConnector {
    /// The URIs this connector and its clones were asked to dial, in order.
    pub fn dialed(&self) -> Vec<Uri> {
        self.dialed.lock().expect("not poisoned").clone()
    }
}

impl Service<Uri> for MemoryConnector {
    type Response = DuplexIo;
    type Error = io::Error;
    type Future = Ready<io::Result<DuplexIo>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        self.dialed.lock().expect("not poisoned").push(uri);
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(self.handler.clone().handle(server));
        ready(Ok(DuplexIo::new(client)))
    }
}
