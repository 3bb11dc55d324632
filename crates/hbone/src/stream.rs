//! One HBONE tunnel: an HTTP/2 CONNECT stream, usable as a byte stream.

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Released when a tunnel ends, e.g. to return a stream slot to its pooled connection.
pub(crate) type StreamLease = Box<dyn Send + Sync>;

/// An established tunnel. The copy engine moves [`Bytes`] through it without copying; it also
/// implements `AsyncRead`/`AsyncWrite` for code that wants a plain byte stream.
pub struct H2Stream {
    pub(crate) send: SendStream<Bytes>,
    pub(crate) recv: RecvStream,
    /// Received bytes not yet handed to an `AsyncRead` caller.
    unread: Bytes,
    lease: Option<StreamLease>,
}

impl fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H2Stream")
            .field("stream_id", &self.send.stream_id().as_u32())
            .finish_non_exhaustive()
    }
}

impl H2Stream {
    pub(crate) fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        lease: Option<StreamLease>,
    ) -> Self {
        Self {
            send,
            recv,
            unread: Bytes::new(),
            lease,
        }
    }

    pub(crate) fn into_parts(self) -> (SendStream<Bytes>, RecvStream, Bytes, Option<StreamLease>) {
        (self.send, self.recv, self.unread, self.lease)
    }

    /// Aborts the tunnel (RST_STREAM), telling the peer this was not a clean close.
    pub fn reset(&mut self) {
        self.send.send_reset(h2::Reason::CANCEL);
    }
}

pub(crate) fn h2_to_io(error: h2::Error) -> io::Error {
    if let Some(io) = error.get_io() {
        return io::Error::new(io.kind(), error.to_string());
    }
    let kind = if error.is_reset() || error.is_go_away() {
        io::ErrorKind::ConnectionReset
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, error)
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.unread.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let len = data.len();
                    self.recv
                        .flow_control()
                        .release_capacity(len)
                        .map_err(h2_to_io)?;
                    self.unread = data;
                }
                Some(Err(error)) => return Poll::Ready(Err(h2_to_io(error))),
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.unread.len().min(buf.remaining());
        buf.put_slice(&self.unread[..n]);
        self.unread.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(buf.len());
        loop {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(granted)) => {
                    let n = granted.min(buf.len());
                    self.send
                        .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                        .map_err(h2_to_io)?;
                    return Poll::Ready(Ok(n));
                }
                Some(Err(error)) => return Poll::Ready(Err(h2_to_io(error))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 writes as soon as the connection task runs; there is nothing to flush here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.send.send_data(Bytes::new(), true).map_err(h2_to_io))
    }
}
