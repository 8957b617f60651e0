//! Bodies over an HTTP/2 stream: the request's, sent by a task of its own,
//! and the response's, read with its flow control given back.

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use super::H2Sender;
use crate::BoxError;

/// Sends a request body on its stream: a frame at a time, each once the
/// stream has room for it; stops when `stopped` fires (the response was
/// dropped) or the server resets the stream. A failed body resets the
/// stream.
pub(super) async fn pipe_body<B>(
    body: B,
    mut stream: SendStream<Bytes>,
    mut stopped: oneshot::Receiver<()>,
) where
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    poll_fn(|cx| {
        if Pin::new(&mut stopped).poll(cx).is_ready() {
            return Poll::Ready(());
        }
        loop {
            stream.reserve_capacity(1);
            if stream.capacity() == 0 {
                match ready!(stream.poll_capacity(cx)) {
                    Some(Ok(0)) => continue,
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return Poll::Ready(()),
                }
            } else if stream.poll_reset(cx).is_ready() {
                return Poll::Ready(());
            }
            let frame = match ready!(body.as_mut().poll_frame(cx)) {
                None => {
                    let _ = stream.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
                Some(Err(_)) => {
                    stream.send_reset(h2::Reason::INTERNAL_ERROR);
                    return Poll::Ready(());
                }
                Some(Ok(frame)) => frame,
            };
            match frame.into_data() {
                Ok(mut data) => {
                    let end = body.is_end_stream();
                    let bytes = data.copy_to_bytes(data.remaining());
                    if stream.send_data(bytes, end).is_err() || end {
                        return Poll::Ready(());
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let _ = stream.send_trailers(trailers);
                        return Poll::Ready(());
                    }
                }
            }
        }
    })
    .await
}

/// An HTTP/2 response body. Received bytes are given back to the flow
/// control window as they are read; the request body's task stops when this
/// is dropped.
pub(crate) struct H2Body {
    pub(super) recv: RecvStream,
    pub(super) data_done: bool,
    /// Bytes still due by the response's `content-length`.
    pub(super) remaining: Option<u64>,
    pub(super) conn: H2Sender,
    pub(super) _pipe: Option<oneshot::Sender<()>>,
}

impl fmt::Debug for H2Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H2Body")
            .field("end_stream", &self.recv.is_end_stream())
            .finish()
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(remaining) = &mut this.remaining {
                        *remaining = remaining.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(this.conn.explain(error)))),
                None => this.data_done = true,
            }
        }
        Poll::Ready(match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
            Ok(None) => None,
            Err(error) => Some(Err(this.conn.explain(error))),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            _ if self.recv.is_end_stream() => SizeHint::with_exact(0),
            Some(remaining) => SizeHint::with_exact(remaining),
            None => SizeHint::default(),
        }
    }
}
