//! User info in a request URL (`http://user:password@host/`): the pool
//! drops it. Seen from a real server on loopback (the `Host` header, the
//! HTTP/2 `:authority`) and from everything the pool and its TLS connector
//! say: errors, events, `Display` and `Debug`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::Layer;
use tower_reuse_pool::events::{
    CheckedIn, CheckedOut, Closed, ConnectFailed, ConnectStarted, Connected, PoolEvents, Retried,
};
use tower_reuse_pool::tls::TlsLayer;
use tower_reuse_pool::{Pool, PoolConfig, PoolLayer, Target};
use tower_reuse_tests::tls_server::{TestCa, TlsServer, TlsServerOptions};
use tower_reuse_tests::{get, send};

/// The password every URL here carries; nothing may ever show it.
const PASSWORD: &str = "pw-not-for-the-wire";

/// `http(s)://user:PASSWORD@addr/path`.
fn with_credentials(scheme: &str, addr: SocketAddr, path: &str) -> String {
    format!("{scheme}://user:{PASSWORD}@{addr}{path}")
}

/// A request head as the server decoded it.
#[derive(Clone, Debug)]
struct Head {
    /// The `Host` header.
    host: Option<String>,
    /// The request target's authority: HTTP/2's `:authority` (an
    /// HTTP/1.1 request in origin form has none).
    authority: Option<String>,
    /// Everything: method, URI, version and every header.
    whole: String,
}

/// A hyper server on loopback (HTTP/1.1 and h2c) that records every
/// request head it receives and answers 200.
struct RecordingServer {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<Head>>>,
    accept: JoinHandle<()>,
}

impl RecordingServer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = heads.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let recorded = recorded.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let header = |name| {
                        req.headers()
                            .get(name)
                            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    };
                    recorded.lock().unwrap().push(Head {
                        host: header(http::header::HOST),
                        authority: req.uri().authority().map(|a| a.as_str().to_owned()),
                        whole: format!(
                            "{} {} {:?} {:?}",
                            req.method(),
                            req.uri(),
                            req.version(),
                            req.headers()
                        ),
                    });
                    async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok")))) }
                });
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        RecordingServer {
            addr,
            heads,
            accept,
        }
    }

    fn heads(&self) -> Vec<Head> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for RecordingServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Every event the pool reported, as its `Debug`.
#[derive(Debug, Default)]
struct Said(Mutex<Vec<String>>);

impl Said {
    fn push(&self, event: &dyn std::fmt::Debug) {
        self.0.lock().unwrap().push(format!("{event:?}"));
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl PoolEvents for Said {
    fn on_connect_start(&self, event: &ConnectStarted<'_>) {
        self.push(event);
    }
    fn on_connect(&self, event: &Connected<'_>) {
        self.push(event);
    }
    fn on_connect_error(&self, event: &ConnectFailed<'_>) {
        self.push(event);
        self.push(&format_args!("{}", event.error()));
    }
    fn on_checkout(&self, event: &CheckedOut<'_>) {
        self.push(event);
    }
    fn on_checkin(&self, event: &CheckedIn<'_>) {
        self.push(event);
    }
    fn on_close(&self, event: &Closed<'_>) {
        self.push(event);
    }
    fn on_retry(&self, event: &Retried<'_>) {
        self.push(event);
    }
}

fn tcp() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.enforce_http(false);
    connector.set_nodelay(true);
    connector
}

fn pool_with_events<C: tower_reuse_pool::Connect>(
    config: PoolConfig,
    connector: C,
) -> (Pool<C>, Arc<Said>) {
    let said = Arc::new(Said::default());
    let pool = PoolLayer::<Full<Bytes>>::new(config)
        .unwrap()
        .shared_events(said.clone())
        .layer(connector);
    (pool, said)
}

/// Fails the test if any of `texts` shows the password or the user.
fn assert_no_credentials<'a>(what: &str, texts: impl IntoIterator<Item = &'a String>) {
    for text in texts {
        assert!(
            !text.contains(PASSWORD) && !text.contains("user:"),
            "{what} shows the URL's user info: {text}"
        );
    }
}

/// What a pool shows of itself: `Debug` of the pool, of its control
/// handle's snapshot, and each target's `Display` and `Debug`.
fn shown<C: tower_reuse_pool::Connect>(pool: &Pool<C>) -> Vec<String> {
    let snapshot = pool.control().snapshot();
    let mut shown = vec![format!("{pool:?}"), format!("{snapshot:?}")];
    for target in &snapshot.targets {
        shown.push(format!("{target:?}"));
    }
    shown
}

#[tokio::test]
async fn user_info_is_never_sent_in_the_host_header_nor_shown() {
    let server = RecordingServer::start().await;
    let (mut pool, said) = pool_with_events(PoolConfig::default(), tcp());
    let url = with_credentials("http", server.addr, "/a");
    let (parts, _) = send(&mut pool, get(&url, 1)).await.unwrap();
    assert_eq!(parts.status, 200);
    // Another user, the same host: the same target and connection.
    let other = format!("http://someone-else@{}/b", server.addr);
    send(&mut pool, get(&other, 2)).await.unwrap();

    let heads = server.heads();
    assert_eq!(heads.len(), 2);
    let host_and_port = server.addr.to_string();
    for head in &heads {
        assert_eq!(
            head.host.as_deref(),
            Some(host_and_port.as_str()),
            "{head:?}"
        );
        assert!(!head.whole.contains('@'), "{head:?}");
    }
    assert_no_credentials("the server's request heads", heads.iter().map(|h| &h.whole));
    let snapshot = pool.control().snapshot();
    assert_eq!(snapshot.targets.len(), 1, "{snapshot:?}");
    assert_eq!(snapshot.targets[0].opened(), 1, "{snapshot:?}");
    assert_no_credentials("the pool", &shown(&pool));
    assert_no_credentials("an event", &said.all());
    assert!(!said.all().is_empty());

    let target = Target::from_uri(&url.parse().unwrap(), None).unwrap();
    assert_eq!(target.to_string(), format!("http://{host_and_port}"));
    assert_no_credentials("a target", &[target.to_string(), format!("{target:?}")]);
}

#[tokio::test]
async fn user_info_is_never_sent_as_the_http2_authority() {
    let server = RecordingServer::start().await;
    let config = PoolConfig::default().http2_prior_knowledge(true);
    let (mut pool, said) = pool_with_events(config, tcp());
    let url = with_credentials("http", server.addr, "/h2");
    let (parts, _) = send(&mut pool, get(&url, 1)).await.unwrap();
    assert_eq!(parts.status, 200);
    assert_eq!(parts.version, http::Version::HTTP_2);

    let heads = server.heads();
    assert_eq!(heads.len(), 1);
    assert_eq!(
        heads[0].authority.as_deref(),
        Some(server.addr.to_string().as_str()),
        "{heads:?}"
    );
    assert_no_credentials("the server's request heads", heads.iter().map(|h| &h.whole));
    assert_no_credentials("the pool", &shown(&pool));
    assert_no_credentials("an event", &said.all());
}

#[tokio::test]
async fn errors_and_events_of_a_failed_connect_show_no_user_info() {
    // A port nothing listens on: bound, then closed.
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let (mut pool, said) = pool_with_events(PoolConfig::default(), tcp());
    let error = send(&mut pool, get(&with_credentials("http", addr, "/"), 1))
        .await
        .unwrap_err();
    assert!(error.is_connect(), "{error:?}");
    let mut texts = vec![error.to_string(), format!("{error:?}")];
    texts.extend(error.target().map(str::to_owned));
    assert_no_credentials("the error", &texts);
    assert_no_credentials("an event", &said.all());
    assert!(said.all().iter().any(|e| e.contains("ConnectFailed")));

    // A request without a scheme says where it went without its user info.
    let error = send(&mut pool, get(&format!("user:{PASSWORD}@{addr}"), 2))
        .await
        .unwrap_err();
    assert!(error.is_invalid_request(), "{error:?}");
    assert_no_credentials("the error", &[error.to_string(), format!("{error:?}")]);
}

#[tokio::test]
async fn the_tls_connector_sees_and_shows_no_user_info() {
    let ca = TestCa::new("credentials-ca");
    let server = TlsServer::start(&ca, TlsServerOptions::default()).await;
    let addr: SocketAddr = server
        .url("")
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    let url = with_credentials("https", addr, "/tls");

    let layer = TlsLayer::new(Arc::new(ca.client_config(None)));
    let (mut pool, said) = pool_with_events(PoolConfig::default(), layer.layer(tcp()));
    let (parts, _) = send(&mut pool, get(&url, 1)).await.unwrap();
    assert_eq!(parts.status, 200);
    assert_no_credentials("the pool", &shown(&pool));
    assert_no_credentials("an event", &said.all());
    assert_no_credentials("the TLS layer", &[format!("{layer:?}")]);

    // A server the client does not trust: the handshake error.
    let stranger = TestCa::new("stranger-ca");
    let layer = TlsLayer::new(Arc::new(stranger.client_config(None)));
    let (mut pool, said) = pool_with_events(PoolConfig::default(), layer.layer(tcp()));
    let error = send(&mut pool, get(&url, 2)).await.unwrap_err();
    assert!(error.is_connect(), "{error:?}");
    let mut texts = vec![error.to_string(), format!("{error:?}")];
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        texts.push(cause.to_string());
        source = cause.source();
    }
    assert_no_credentials("the TLS error", &texts);
    assert_no_credentials("an event", &said.all());
}
