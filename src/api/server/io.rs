//! The socket as hyper sees it: reads are reported to the connection's [`Activity`] (for the
//! header and idle timeouts and the request line), and so is a socket that stops taking writes
//! (a client that reads nothing of its response); hyper's own refusals are answered in the AWS
//! error shape on their way out ([`super::refusal`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::activity::Activity;
use super::refusal;

pub(super) struct ObservedIo<T> {
    inner: T,
    activity: Arc<Activity>,
    /// The answer written in place of one of hyper's refusals, until it is all out.
    pending: Bytes,
    /// The last write found the socket full (reported to `activity` once, until it drains).
    blocked: bool,
}

impl<T> ObservedIo<T> {
    pub(super) fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self {
            inner,
            activity,
            pending: Bytes::new(),
            blocked: false,
        }
    }
}

impl<T> ObservedIo<T> {
    /// Tells `activity` when the socket stops taking bytes and when it takes them again.
    fn note_write<R>(&mut self, written: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match &written {
            Poll::Pending if !self.blocked => {
                self.blocked = true;
                self.activity.write_blocked(Instant::now());
            }
            Poll::Ready(Ok(_)) if self.blocked => {
                self.blocked = false;
                self.activity.write_flowing();
            }
            _ => {}
        }
        written
    }
}

impl<T: AsyncWrite + Unpin> ObservedIo<T> {
    /// Writes what is left of a replacement answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `written` in place of hyper's refusal, if it is one: its replacement goes out
    /// instead, and hyper is told its bytes were written.
    fn replace_refusal(
        &mut self,
        cx: &mut Context<'_>,
        written: &[u8],
    ) -> Option<io::Result<usize>> {
        let refusal::Replacement {
            answer,
            request_id,
            status,
        } = refusal::rewrite(written)?;
        // The access log's line for a request no route saw.
        tracing::info!(request_id, route = "(unparsed)", status, "request");
        self.pending = answer;
        match self.poll_pending(cx) {
            Poll::Ready(Err(e)) => Some(Err(e)),
            // The rest goes out on hyper's flush or next write.
            Poll::Ready(Ok(())) | Poll::Pending => Some(Ok(written.len())),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ObservedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            self.activity.read(read, Instant::now());
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ObservedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(done) = self.replace_refusal(cx, buf) {
            return Poll::Ready(done);
        }
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_write(written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        // A refusal is a head alone: one slice.
        let mut written = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (written.next(), written.next())
            && let Some(done) = self.replace_refusal(cx, only)
        {
            return Poll::Ready(done);
        }
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_write(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        self.note_write(flushed)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
