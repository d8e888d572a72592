//! A connection with bytes already read from it put back in front.
//!
//! The first request head of a connection is read before pingora sees it (to tell `CONNECT`
//! from plain HTTP), and a client may send early bytes right after a `CONNECT` head. Both must
//! reach whoever reads next, so the stream is wrapped rather than peeked: TLS streams cannot
//! peek. Everything except reading is passed straight to the inner stream, including its TLS
//! digest, which carries the mTLS identity.

use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::{Buf, Bytes};
use pingora::protocols::{Peek, Shutdown, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `inner` with `prefix` replayed first.
#[derive(Debug)]
pub struct Rewound {
    prefix: Bytes,
    inner: Stream,
}

impl Rewound {
    /// Replays `prefix` before reading `inner`, as a concrete type (what pingora's TLS
    /// handshake needs: it is generic over the stream and `Box<dyn IO>` is not `IO`).
    pub fn new(inner: Stream, prefix: Bytes) -> Self {
        Rewound { prefix, inner }
    }

    /// Replays `prefix` before reading `inner`; an empty prefix adds no wrapper.
    pub fn wrap(inner: Stream, prefix: Bytes) -> Stream {
        if prefix.is_empty() {
            inner
        } else {
            Box::new(Rewound { prefix, inner })
        }
    }
}

impl AsyncRead for Rewound {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewound {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Rewound {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

crate::stream_wrap::forward_stream_digests!(impl for Rewound);

#[async_trait]
impl Peek for Rewound {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        // Only what is already in hand can be peeked without consuming the inner stream.
        if buf.len() <= self.prefix.len() {
            buf.copy_from_slice(&self.prefix[..buf.len()]);
            Ok(true)
        } else {
            Ok(false)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn replays_the_prefix_then_reads_and_writes_the_inner_stream() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut s = Rewound::wrap(Box::new(a), Bytes::from_static(b"GET / HT"));
        b.write_all(b"TP/1.1\r\n").await.unwrap();
        let mut got = vec![0u8; 16];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET / HTTP/1.1\r\n");
        s.write_all(b"pong").await.unwrap();
        let mut back = [0u8; 4];
        b.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"pong");
    }
}
