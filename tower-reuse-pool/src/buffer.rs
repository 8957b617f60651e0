//! [`BufferBodyLayer`]: makes request bodies that are whole at once
//! replayable, so that a stream an HTTP/2 server refused can be sent again
//! (gRPC unary calls, whose bodies are streams that hold one message).

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::Request;
use http_body::{Body, Frame, SizeHint};
use tower_layer::Layer;
use tower_service::Service;

use crate::error::BoxError;
use crate::replay::ReplayBody;

/// Buffers each request body that is whole at once, up to a size, so that
/// the pool can send the request again when the server never processed it
/// (a refused HTTP/2 stream, one above a graceful GOAWAY's last stream id,
/// see [`ReplayBody`]).
///
/// The pool replays an empty body, or one a [`ReplayBody`] can make again.
/// A body that is a stream (tonic's, for one) is neither, even when it
/// holds a single message ready at once, as a gRPC unary call's does: such
/// a request would fail on a refusal. Stacked under the caller and over
/// the pool, this layer takes the body's frames that are ready without
/// waiting (it never waits: it polls the body once per frame with a no-op
/// waker), and if the body ends among them within `max_bytes`, hands the
/// pool a [`BufferedBody`] holding the bytes, with a [`ReplayBody`] that
/// makes it again. Otherwise (a body still streaming, over the size, with
/// trailers or an error) the frames taken go first and the rest of the body
/// follows as it comes: the request is sent as it would have been, only
/// not replayable.
///
/// The pool's body type is then `BufferedBody<B>`:
///
/// ```
/// use hyper_util::client::legacy::connect::HttpConnector;
/// use tower::ServiceBuilder;
/// use tower_reuse_pool::{BufferBodyLayer, BufferedBody, PoolConfig, PoolLayer};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // The transport of a gRPC client (tonic's request body is `B` here).
/// type B = http_body_util::Full<bytes::Bytes>;
/// let pool = PoolLayer::<BufferedBody<B>>::new(PoolConfig::default().http2_prior_knowledge(true))?;
/// let transport = ServiceBuilder::new()
///     .layer(BufferBodyLayer::new(64 * 1024))
///     .layer(pool)
///     .service(HttpConnector::new());
/// # let _ = transport;
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct BufferBodyLayer {
    max_bytes: usize,
}

impl BufferBodyLayer {
    /// Buffer bodies of up to `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        BufferBodyLayer { max_bytes }
    }
}

impl<S> Layer<S> for BufferBodyLayer {
    type Service = BufferBody<S>;

    fn layer(&self, inner: S) -> BufferBody<S> {
        BufferBody {
            inner,
            max_bytes: self.max_bytes,
        }
    }
}

/// The service of [`BufferBodyLayer`].
#[derive(Clone, Debug)]
pub struct BufferBody<S> {
    inner: S,
    max_bytes: usize,
}

impl<S, B> Service<Request<B>> for BufferBody<S>
where
    S: Service<Request<BufferedBody<B>>>,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let body = BufferedBody::take(body, self.max_bytes);
        if let Inner::Whole(Some(bytes)) = &body.inner {
            let bytes = bytes.clone();
            parts
                .extensions
                .insert(ReplayBody::new(move || BufferedBody::<B> {
                    inner: Inner::Whole(Some(bytes.clone())),
                }));
        }
        self.inner.call(Request::from_parts(parts, body))
    }
}

/// A request body as [`BufferBodyLayer`] hands it on: whole in memory, or
/// the frames already taken followed by the rest of the original body.
pub struct BufferedBody<B> {
    inner: Inner<B>,
}

enum Inner<B> {
    /// The whole body; `None` once sent (or empty).
    Whole(Option<Bytes>),
    /// Frames taken, then an error met while taking them, then the rest.
    Streaming {
        taken: VecDeque<Frame<Bytes>>,
        error: Option<BoxError>,
        rest: Option<B>,
    },
}

impl<B> BufferedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// Take the frames of `body` that are ready at once.
    fn take(mut body: B, max_bytes: usize) -> Self {
        if body.is_end_stream() {
            return BufferedBody {
                inner: Inner::Whole(None),
            };
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut taken = VecDeque::new();
        let mut len = 0;
        let (error, rest) = loop {
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(None) => break (None, None),
                Poll::Ready(Some(Ok(frame))) => {
                    let data = frame.is_data();
                    if let Some(data) = frame.data_ref() {
                        len += data.len();
                    }
                    taken.push_back(frame);
                    if !data || len > max_bytes {
                        break (None, Some(body));
                    }
                    if body.is_end_stream() {
                        break (None, None);
                    }
                }
                Poll::Ready(Some(Err(error))) => break (Some(error.into()), None),
                Poll::Pending => break (None, Some(body)),
            }
        };
        if error.is_none() && rest.is_none() && taken.iter().all(Frame::is_data) {
            let mut whole = BytesMut::with_capacity(len);
            for frame in taken {
                if let Ok(data) = frame.into_data() {
                    whole.extend_from_slice(&data);
                }
            }
            return BufferedBody {
                inner: Inner::Whole(Some(whole.freeze()).filter(|b| !b.is_empty())),
            };
        }
        BufferedBody {
            inner: Inner::Streaming { taken, error, rest },
        }
    }
}

impl<B> Default for BufferedBody<B> {
    /// An empty body.
    fn default() -> Self {
        BufferedBody {
            inner: Inner::Whole(None),
        }
    }
}

impl<B> fmt::Debug for BufferedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Whole(bytes) => f
                .debug_struct("BufferedBody")
                .field("whole", &bytes.as_ref().map_or(0, Bytes::len))
                .finish(),
            Inner::Streaming { taken, .. } => f
                .debug_struct("BufferedBody")
                .field("taken_frames", &taken.len())
                .finish_non_exhaustive(),
        }
    }
}

impl<B> Body for BufferedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.inner {
            Inner::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Streaming { taken, error, rest } => {
                if let Some(frame) = taken.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                if let Some(error) = error.take() {
                    return Poll::Ready(Some(Err(error)));
                }
                match rest {
                    Some(rest) => Pin::new(rest)
                        .poll_frame(cx)
                        .map(|frame| frame.map(|f| f.map_err(Into::into))),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Whole(bytes) => bytes.is_none(),
            Inner::Streaming { taken, error, rest } => {
                taken.is_empty() && error.is_none() && rest.as_ref().is_none_or(B::is_end_stream)
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Whole(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Inner::Streaming { .. } => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http_body_util::BodyExt;
    use tokio::sync::mpsc;
    use tower::ServiceExt;

    use super::*;

    /// Chunks ready at once, then, if given, more as a channel yields them.
    struct Chunks {
        ready: VecDeque<&'static str>,
        more: Option<mpsc::Receiver<&'static str>>,
    }

    impl Chunks {
        fn ready(chunks: &[&'static str]) -> Self {
            Chunks {
                ready: chunks.iter().copied().collect(),
                more: None,
            }
        }
    }

    impl Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            if let Some(chunk) = self.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(chunk.as_bytes())))));
            }
            match &mut self.more {
                Some(more) => more
                    .poll_recv(cx)
                    .map(|c| c.map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))),
                None => Poll::Ready(None),
            }
        }

        fn is_end_stream(&self) -> bool {
            self.ready.is_empty() && self.more.is_none()
        }
    }

    /// Keeps the requests it is called with.
    #[derive(Clone, Default)]
    struct Keep(Arc<Mutex<Vec<Request<BufferedBody<Chunks>>>>>);

    impl Service<Request<BufferedBody<Chunks>>> for Keep {
        type Response = ();
        type Error = BoxError;
        type Future = std::future::Ready<Result<(), BoxError>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<BufferedBody<Chunks>>) -> Self::Future {
            self.0.lock().unwrap().push(req);
            std::future::ready(Ok(()))
        }
    }

    async fn through(body: Chunks, max_bytes: usize) -> Request<BufferedBody<Chunks>> {
        let keep = Keep::default();
        let service = BufferBodyLayer::new(max_bytes).layer(keep.clone());
        let req = Request::post("http://127.0.0.1/").body(body).unwrap();
        service.oneshot(req).await.unwrap();
        keep.0.lock().unwrap().pop().unwrap()
    }

    fn replay_of(req: &Request<BufferedBody<Chunks>>) -> Option<ReplayBody<BufferedBody<Chunks>>> {
        req.extensions().get().cloned()
    }

    #[tokio::test]
    async fn a_body_ready_at_once_becomes_whole_and_replayable() {
        let req = through(Chunks::ready(&["hello, ", "world"]), 1024).await;
        let replay = replay_of(&req).expect("replayable");
        assert_eq!(req.body().size_hint().exact(), Some(12));
        let sent = req.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&sent[..], b"hello, world");
        let again = replay.body().collect().await.unwrap().to_bytes();
        assert_eq!(again, sent);
    }

    #[tokio::test]
    async fn a_body_over_the_size_streams_on_whole_and_not_replayable() {
        let req = through(Chunks::ready(&["0123", "4567", "89"]), 5).await;
        assert!(replay_of(&req).is_none());
        let sent = req.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&sent[..], b"0123456789");
    }

    #[tokio::test]
    async fn a_body_still_streaming_is_sent_as_it_comes() {
        let (tx, rx) = mpsc::channel(4);
        let body = Chunks {
            ready: VecDeque::from(["first "]),
            more: Some(rx),
        };
        let req = through(body, 1024).await;
        assert!(replay_of(&req).is_none());
        tx.send("second").await.unwrap();
        drop(tx);
        let sent = req.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&sent[..], b"first second");
    }

    #[tokio::test]
    async fn an_empty_body_stays_empty() {
        let req = through(Chunks::ready(&[]), 1024).await;
        assert!(req.body().is_end_stream());
        assert!(replay_of(&req).is_none());
    }
}
