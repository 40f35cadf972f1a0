//! The deadline a client connection must meet to say what it is.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// HTTP/2's connection preface: what an h2 client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What an h2 client must send at once: the preface and the header of its
/// mandatory SETTINGS frame.
const H2_OPENING: usize = H2_PREFACE.len() + 9;

/// A client connection that must say what it is before a deadline: the
/// first byte of an HTTP/1 request, or an HTTP/2 preface with its SETTINGS
/// frame.
///
/// NB: hyper-util's protocol detection has no timeout of its own, and
/// hyper's HTTP/1 head timeout starts only once HTTP/1 was chosen; without
/// this a connection that sends nothing, part of the preface, or the
/// preface alone is held open for good.
pub struct OpeningDeadline<I> {
    inner: I,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    seen: Vec<u8>,
}

impl<I> OpeningDeadline<I> {
    pub fn new(inner: I, within: Duration) -> Self {
        Self {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
            seen: Vec::with_capacity(H2_OPENING),
        }
    }

    /// Records bytes read; the deadline is lifted once the opening is
    /// complete.
    fn observe(&mut self, bytes: &[u8]) {
        let room = H2_OPENING.saturating_sub(self.seen.len());
        self.seen.extend_from_slice(&bytes[..bytes.len().min(room)]);
        let compared = self.seen.len().min(H2_PREFACE.len());
        let h2 = self.seen[..compared] == H2_PREFACE[..compared];
        if (!self.seen.is_empty() && !h2) || self.seen.len() >= H2_OPENING {
            // HTTP/1 (hyper's head timeout takes over), or an h2 client
            // that opened properly (keep-alive pings take over).
            self.deadline = None;
            self.seen = Vec::new();
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for OpeningDeadline<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.deadline.is_some() {
                    this.observe(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client did not open its connection in time",
                    )))
                } else {
                    Poll::Pending
                }
            }
            other => other,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for OpeningDeadline<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn opened_by(sent: &[u8]) -> io::Result<usize> {
        let (client, server) = tokio::io::duplex(1024);
        let (mut client, mut server) = (client, OpeningDeadline::new(server, Duration::from_millis(200)));
        client.write_all(sent).await.unwrap();
        let mut buf = [0u8; 64];
        let mut total = 0;
        // Reads until the deadline error, or the opening is complete and
        // the reader then waits (which the outer timeout ends).
        loop {
            match tokio::time::timeout(Duration::from_millis(600), server.read(&mut buf)).await {
                Ok(Ok(n)) => total += n,
                Ok(Err(error)) => return Err(error),
                Err(_) => return Ok(total),
            }
        }
    }

    #[tokio::test]
    async fn connections_that_do_not_open_in_time_are_ended() {
        for sent in [&b""[..], b"PRI * HTTP/2.0\r\n", H2_PREFACE] {
            let error = opened_by(sent).await.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{sent:?}");
        }
    }

    #[tokio::test]
    async fn http1_and_complete_h2_openings_are_left_to_hyper() {
        assert_eq!(
            opened_by(b"G").await.unwrap(),
            1,
            "HTTP/1 waits on hyper's own head timeout"
        );
        let mut opening = H2_PREFACE.to_vec();
        opening.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(opened_by(&opening).await.unwrap(), H2_OPENING);
    }
}
