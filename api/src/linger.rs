//! Lingering close: a connection that the server ends while the client is
//! still sending is not reset under the client.
//!
//! When the server answers before it has read the request body (413 from
//! `Content-Length`, or a streamed body cut off at the limit), hyper stops
//! reading and closes the connection after the answer. Closing a socket whose
//! receive queue still holds data makes the kernel send a TCP reset: the
//! client's next write fails (`EPIPE`/`ECONNRESET`), most clients then report
//! "connection closed" instead of the 413, and on some systems the answer
//! still in flight is thrown away.
//!
//! [`Linger`] wraps the TCP stream (under TLS, when there is TLS). Its
//! `poll_shutdown` first shuts down the write side, so the answer is followed
//! by a FIN, then reads and discards whatever the client still sends until it
//! closes its side, stays quiet for [`IDLE`], [`TOTAL`] has passed, or
//! [`MAX_DRAIN`] bytes were thrown away (the same idea as nginx's
//! `lingering_close`). Only then is the socket dropped.
//!
//! Guarantees: a client that sends at most [`MAX_DRAIN`] bytes more than the
//! server read, at a steady pace, finishes sending and reads the whole answer.
//! Not guaranteed: a client that keeps sending past those bounds is reset.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

/// How long the client may stay quiet while the rest of its request is drained.
pub const IDLE: Duration = Duration::from_secs(2);
/// How long draining may take in all.
pub const TOTAL: Duration = Duration::from_secs(10);
/// How many unread bytes are drained at most before the connection is dropped.
pub const MAX_DRAIN: u64 = 64 << 20;

enum State {
    Open,
    Draining { timer: Pin<Box<Sleep>>, deadline: Instant, drained: u64 },
    Closed,
}

/// A stream whose shutdown lingers: see the module doc.
pub struct Linger<T> {
    inner: T,
    state: State,
}

impl<T> Linger<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Self { inner, state: State::Open }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Linger<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Linger<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Open => {
                    let shut = ready!(Pin::new(&mut this.inner).poll_shutdown(cx));
                    if shut.is_err() {
                        this.state = State::Closed;
                        return Poll::Ready(shut);
                    }
                    let deadline = Instant::now() + TOTAL;
                    let timer = Box::pin(tokio::time::sleep(IDLE));
                    this.state = State::Draining { timer, deadline, drained: 0 };
                }
                State::Draining { timer, deadline, drained } => {
                    let mut scratch = [0u8; 16 * 1024];
                    let mut buf = ReadBuf::new(&mut scratch);
                    match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                        Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                            *drained += buf.filled().len() as u64;
                            if *drained > MAX_DRAIN {
                                tracing::debug!(drained = *drained, "client kept sending after the answer; dropping");
                                this.state = State::Closed;
                                return Poll::Ready(Ok(()));
                            }
                            let next = (Instant::now() + IDLE).min(*deadline);
                            timer.as_mut().reset(next);
                        }
                        // The client closed its side (or the connection broke): done.
                        Poll::Ready(_) => {
                            this.state = State::Closed;
                            return Poll::Ready(Ok(()));
                        }
                        Poll::Pending => {
                            ready!(timer.as_mut().poll(cx));
                            this.state = State::Closed;
                            return Poll::Ready(Ok(()));
                        }
                    }
                }
                State::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// A connection that must send its first byte within a deadline: a client
/// that connects (or finishes its TLS handshake) and then says nothing would
/// otherwise hold its connection for good, since hyper's header timeout only
/// starts with the first byte. Past the deadline reads fail with `TimedOut`
/// and hyper closes the connection; after the first byte it is transparent.
pub struct FirstByte<T> {
    inner: T,
    /// Until the first byte arrives.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> FirstByte<T> {
    /// Wraps `inner`, which must send a byte within `within`.
    pub fn new(inner: T, within: std::time::Duration) -> Self {
        Self { inner, deadline: Some(Box::pin(tokio::time::sleep(within))) }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FirstByte<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.deadline = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let expired = this.deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if !expired {
                    return Poll::Pending;
                }
                metrics::counter!("myelin_connections_idle_closed_total").increment(1);
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "no request within the header timeout")))
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FirstByte<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
