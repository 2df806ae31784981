//! The bodies the connection's service wraps: a request body that must arrive whole before its
//! deadline, and a response body that reports when it is done.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::activity::Activity;

/// The error a request body yields once its deadline has passed: the handler reading it answers
/// 408 `RequestTimeoutException` (see `payload::read_limited`).
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimeout(pub Duration);

/// A request body that fails with [`BodyTimeout`] unless it has arrived whole by its deadline
/// (`--http-body-timeout` after its head). A total, not a per-read, deadline: a client sending
/// one byte a second keeps a per-read timer happy forever.
pub(super) struct Deadline<B = Incoming> {
    inner: B,
    deadline: Instant,
    timeout: Duration,
    /// Made only once the body has to be waited for: most bodies are in hand at once.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<B> Deadline<B> {
    /// A body due `timeout` from now, the end of its request's head.
    pub(super) fn new(inner: B, timeout: Duration) -> Self {
        Self::until(inner, Instant::now() + timeout, timeout)
    }

    fn until(inner: B, deadline: Instant, timeout: Duration) -> Self {
        Self {
            inner,
            deadline,
            timeout,
            sleep: None,
        }
    }
}

impl<B> Body for Deadline<B>
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
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = self.deadline;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Some(Err(Box::new(BodyTimeout(self.timeout)))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Marks its request as in flight for as long as it lives: from the service call until the
/// response body is done with (or the response is dropped with its connection).
pub(super) struct InFlight(std::sync::Arc<Activity>);

impl InFlight {
    pub(super) fn start(activity: std::sync::Arc<Activity>) -> (Self, Option<Vec<u8>>) {
        let line = activity.request_started();
        (Self(activity), line)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.response_done(Instant::now());
    }
}

/// A response body that ends its request's [`InFlight`] when hyper is done with it.
pub(super) struct Finished {
    inner: axum::body::Body,
    _in_flight: InFlight,
}

impl Finished {
    pub(super) fn new(inner: axum::body::Body, in_flight: InFlight) -> Self {
        Self {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl Body for Finished {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, StreamBody};
    use tokio::sync::mpsc;

    use super::*;

    type Chunk = Result<Frame<Bytes>, std::convert::Infallible>;
    type Channel = StreamBody<tokio_stream_adapter::Receiver>;

    /// A body whose chunks come from a channel, due at `deadline`.
    fn channel_body(deadline: Instant) -> (mpsc::Sender<Chunk>, Deadline<Channel>) {
        let (tx, rx) = mpsc::channel(4);
        let body = StreamBody::new(tokio_stream_adapter::Receiver(rx));
        (tx, Deadline::until(body, deadline, Duration::from_secs(30)))
    }

    fn chunk(bytes: &'static [u8]) -> Chunk {
        Ok(Frame::data(Bytes::from_static(bytes)))
    }

    #[tokio::test]
    async fn a_body_that_arrives_in_time_is_read_whole() {
        let (tx, mut body) = channel_body(Instant::now() + Duration::from_secs(30));
        tx.send(chunk(b"a")).await.unwrap();
        tx.send(chunk(b"b")).await.unwrap();
        drop(tx);
        let whole = (&mut body).collect().await.unwrap().to_bytes();
        assert_eq!(&whole[..], b"ab");
    }

    #[tokio::test]
    async fn a_body_still_arriving_at_its_deadline_fails() {
        // The deadline is the one set with the head: bytes arriving do not move it.
        let (tx, mut body) = channel_body(Instant::now());
        tx.send(chunk(b"x")).await.unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert!(frame.is_data(), "bytes in hand are still handed over");
        let err = body.frame().await.unwrap().unwrap_err();
        let timeout = err.downcast_ref::<BodyTimeout>().expect("a BodyTimeout");
        assert_eq!(timeout.0, Duration::from_secs(30));
        drop(tx);
    }

    /// An mpsc receiver as a stream, without tokio-stream.
    mod tokio_stream_adapter {
        use std::pin::Pin;
        use std::task::{Context, Poll};

        pub struct Receiver(pub tokio::sync::mpsc::Receiver<super::Chunk>);

        impl futures_util::Stream for Receiver {
            type Item = super::Chunk;

            fn poll_next(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Self::Item>> {
                self.0.poll_recv(cx)
            }
        }
    }
}
