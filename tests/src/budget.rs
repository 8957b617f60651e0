//! Support for the connection budget's tests: servers on several loopback
//! addresses counted as one, and the pool's count checked against its
//! targets'.

use std::sync::Arc;

use tower_reuse_pool::{Connect, Pool, Target};

use crate::server::{ServerOptions, ServerStats, TestServer};

/// Servers on 127.0.0.2 .. 127.0.0.(n + 1), counting as one (the kernel's
/// count at each accept: see [`ServerStats::kernel_counted`]).
pub async fn servers(n: u8, options: ServerOptions) -> (Vec<TestServer>, Arc<ServerStats>) {
    let stats = ServerStats::kernel_counted();
    let mut servers = Vec::new();
    for i in 0..n {
        let addr = format!("127.0.0.{}:0", i + 2);
        servers.push(TestServer::start_counting(&addr, options.clone(), stats.clone()).await);
    }
    (servers, stats)
}

/// The target a server's URLs name.
pub fn target(server: &TestServer) -> Target {
    Target::from_uri(&server.url("/").parse().expect("a valid URL"), None).expect("a target")
}

/// The connections the pool's budget counts, and those its targets count
/// (idle, active, connecting, dedicated and closing).
pub fn counts<C: Connect>(client: &Pool<C>) -> (usize, usize) {
    let snapshot = client.control().snapshot();
    let open = snapshot
        .total(|t| (t.idle() + t.active() + t.connecting() + t.dedicated() + t.closing()) as u64);
    (
        snapshot.budget.connections,
        usize::try_from(open).expect("fits"),
    )
}

/// The connections the pool counts, checked against its targets' counts
/// (for a pool at rest: a snapshot is not taken all at once).
pub fn counted<C: Connect>(client: &Pool<C>) -> usize {
    let (budget, targets) = counts(client);
    assert_eq!(budget, targets, "{:?}", client.control().snapshot());
    budget
}

/// A TCP connector that counts the sockets it opened and that are not
/// closed yet (a socket closes when the pool drops its byte stream): the
/// client's own count, exact at every instant.
#[derive(Clone, Debug, Default)]
pub struct CountingConnector {
    counts: Arc<SocketCounts>,
}

/// Sockets open now, and the most open at once.
#[derive(Debug, Default)]
pub struct SocketCounts {
    open: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

impl SocketCounts {
    /// The most sockets open at once so far.
    pub fn peak(&self) -> usize {
        self.peak.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl CountingConnector {
    /// Its counts.
    pub fn counts(&self) -> Arc<SocketCounts> {
        self.counts.clone()
    }
}

/// A socket counted until dropped.
#[derive(Debug)]
pub struct CountedIo {
    io: hyper_util::rt::TokioIo<tokio::net::TcpStream>,
    _counted: Counted,
}

/// One socket in the counts, from its connect until dropped.
#[derive(Debug)]
struct Counted(Arc<SocketCounts>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl CountedIo {
    fn guard(counts: Arc<SocketCounts>) -> Counted {
        Counted(counts)
    }
}

impl Counted {
    fn with(self, stream: tokio::net::TcpStream) -> CountedIo {
        CountedIo {
            io: hyper_util::rt::TokioIo::new(stream),
            _counted: self,
        }
    }
}

impl hyper::rt::Read for CountedIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for CountedIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connect for CountingConnector {
    type Io = CountedIo;
    type Future = std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<
                        tower_reuse_pool::Established<CountedIo>,
                        tower_reuse_pool::ConnectError,
                    >,
                > + Send,
        >,
    >;

    fn connect(&self, target: &Target) -> Self::Future {
        let counts = self.counts.clone();
        let authority = target.authority().as_str().to_owned();
        Box::pin(async move {
            use std::sync::atomic::Ordering::SeqCst;
            // Counted from before the SYN: the server may see the socket
            // before the connect returns here.
            let open = counts.open.fetch_add(1, SeqCst) + 1;
            counts.peak.fetch_max(open, SeqCst);
            let counted = CountedIo::guard(counts);
            let stream = tokio::net::TcpStream::connect(authority)
                .await
                .map_err(tower_reuse_pool::ConnectError::transport)?;
            let _ = stream.set_nodelay(true);
            Ok(tower_reuse_pool::Established::new(counted.with(stream)))
        })
    }
}
