//! `hyper-util+p2c`, what users build today for a service with several
//! endpoints: tower's power-of-two-choices balancer (least pending
//! requests) over one hyper-util legacy `Client` per endpoint, its
//! endpoint set fed by a `tower::discover` stream, behind a `Buffer` so
//! that any number of tasks share it.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::mpsc;
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::Change;
use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
use tower_service::Service;

use super::{LabConnector, StackError};
use crate::target::Target;

/// Requests queued in front of the balancer (above any load's in-flight bound).
const BUFFER: usize = 4096;

/// One endpoint's client: sends to the endpoint's address, with `Host`
/// kept as the logical service's authority.
#[derive(Clone, Debug)]
pub struct EndpointClient {
    client: Client<LabConnector, Full<Bytes>>,
    scheme: Scheme,
    endpoint: Authority,
    host: HeaderValue,
}

impl Service<Request<Full<Bytes>>> for EndpointClient {
    type Response = Response<Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<Request<Full<Bytes>>>::poll_ready(&mut self.client, cx)
    }

    fn call(&mut self, mut request: Request<Full<Bytes>>) -> Self::Future {
        let mut parts = request.uri().clone().into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.endpoint.clone());
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
        request.headers_mut().insert(HOST, self.host.clone());
        self.client.call(request)
    }
}

/// The endpoint changes, as a `tower::discover` stream fed from a channel.
#[derive(Debug)]
pub struct ChannelDiscover {
    changes: mpsc::UnboundedReceiver<Change<SocketAddr, EndpointClient>>,
}

impl futures_core::Stream for ChannelDiscover {
    type Item = Result<Change<SocketAddr, EndpointClient>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.changes.poll_recv(cx).map(|change| change.map(Ok))
    }
}

type Balanced =
    Balance<PendingRequestsDiscover<ChannelDiscover, CompleteOnResponse>, Request<Full<Bytes>>>;

/// The shared, clonable client: the buffer in front of the balancer.
pub type P2cClient =
    Buffer<Request<Full<Bytes>>, <Balanced as Service<Request<Full<Bytes>>>>::Future>;

/// The stack: its client, and the sender of its endpoint changes.
#[derive(Debug)]
pub struct P2c {
    client: P2cClient,
    connector: LabConnector,
    changes: mpsc::UnboundedSender<Change<SocketAddr, EndpointClient>>,
    current: Mutex<HashSet<SocketAddr>>,
}

impl P2c {
    /// A balancer with no endpoint yet (see [`P2c::set_endpoints`]); must
    /// be built inside a tokio runtime (the buffer's worker is spawned).
    pub fn new(connector: LabConnector) -> Self {
        let (changes, receiver) = mpsc::unbounded_channel();
        let discover = PendingRequestsDiscover::new(
            ChannelDiscover { changes: receiver },
            CompleteOnResponse::default(),
        );
        Self {
            client: Buffer::new(Balance::new(discover), BUFFER),
            connector,
            changes,
            current: Mutex::new(HashSet::new()),
        }
    }

    /// A clone of the shared client.
    pub fn client(&self) -> P2cClient {
        self.client.clone()
    }

    /// Makes `endpoints` the endpoints of `service`: each new one gets its
    /// own client (`Change::Insert`), each one gone is removed
    /// (`Change::Remove`, its client and its connections dropped).
    pub fn set_endpoints(
        &self,
        service: &Target,
        endpoints: &[SocketAddr],
    ) -> Result<(), StackError> {
        let host = service.host.clone();
        let scheme = service.uri.scheme().cloned().unwrap_or(Scheme::HTTP);
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let wanted: HashSet<SocketAddr> = endpoints.iter().copied().collect();
        let gone: Vec<SocketAddr> = current.difference(&wanted).copied().collect();
        for addr in gone {
            current.remove(&addr);
            self.send(Change::Remove(addr))?;
        }
        for &addr in endpoints {
            if !current.insert(addr) {
                continue;
            }
            let endpoint: Authority = addr
                .to_string()
                .parse()
                .map_err(|e| StackError::new(format!("endpoint {addr}: {e}")))?;
            let mut builder = Client::builder(TokioExecutor::new());
            builder.pool_timer(TokioTimer::new());
            let client = EndpointClient {
                client: builder.build(self.connector.clone()),
                scheme: scheme.clone(),
                endpoint,
                host: host.clone(),
            };
            self.send(Change::Insert(addr, client))?;
        }
        Ok(())
    }

    fn send(&self, change: Change<SocketAddr, EndpointClient>) -> Result<(), StackError> {
        self.changes
            .send(change)
            .map_err(|_| StackError::new("hyper-util+p2c: the balancer is gone"))
    }
}
