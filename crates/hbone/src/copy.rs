//! The byte-copy engine: both directions of a tunnel in one task, half-close propagated, and
//! read buffers that grow with the flow instead of a large fixed buffer per connection.
//!
//! It is a hand-written future rather than `async` code because its size is paid by every open
//! tunnel: an idle tunnel holds two endpoints, two empty directions and no buffer at all. A TCP
//! read allocates only once the socket is readable, sized by what the previous reads returned.

use crate::stream::{H2Stream, h2_to_io};
use bytes::{Buf, Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Smallest read buffer: one small request fits.
const MIN_READ: usize = 4 * 1024;
/// Largest read buffer: one read fills an H2 DATA frame of the default maximum size. Kept under
/// glibc's 128 KiB mmap threshold: larger chunks were mapped, faulted in and unmapped on every
/// read, which cost about a third of the throughput.
const MAX_READ: usize = 64 * 1024;
/// The largest HTTP/2 DATA frame the engine makes, as written: one read and the frame's 9-byte
/// header.
pub(crate) const MAX_DATA_FRAME: usize = MAX_READ + 9;

/// Bytes moved by a finished splice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    /// From the first endpoint to the second.
    pub forward: u64,
    /// From the second endpoint back to the first.
    pub backward: u64,
}

/// Copies between an accepted/connected TCP stream and an HBONE tunnel until both directions
/// are closed. On error the TCP side is closed with RST so the application sees an abort, not a
/// clean end of stream.
pub async fn splice_tcp_h2(tcp: &mut TcpStream, tunnel: H2Stream) -> io::Result<Transferred> {
    tcp.set_nodelay(true)?;
    let (send, recv, unread, _lease) = tunnel.into_parts();
    if !unread.is_empty() {
        // Bytes an earlier AsyncRead caller received but did not consume.
        tcp.write_all(&unread).await?;
    }
    let result = Splice::new(TcpEnd(&mut *tcp), H2End::new(send, recv)).await;
    abort_on_error(tcp, result)
}

/// Copies between two TCP streams with the same engine (the plain proxy baseline).
pub async fn splice_tcp_tcp(a: &mut TcpStream, b: &mut TcpStream) -> io::Result<Transferred> {
    a.set_nodelay(true)?;
    b.set_nodelay(true)?;
    let result = Splice::new(TcpEnd(&mut *a), TcpEnd(&mut *b)).await;
    if result.is_err() {
        let _ = b.set_zero_linger();
    }
    abort_on_error(a, result)
}

fn abort_on_error(tcp: &TcpStream, result: io::Result<Transferred>) -> io::Result<Transferred> {
    if result.is_err() {
        // Closing with RST carries the abort to the application.
        let _ = tcp.set_zero_linger();
    }
    result
}

/// One side of a splice, readable and writable in chunks.
trait Endpoint: Unpin {
    /// The next non-empty chunk, or `None` at end of stream.
    fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        sizer: &mut ReadSizer,
    ) -> Poll<io::Result<Option<Bytes>>>;
    /// Writes some of `chunk`, advancing it past what was written.
    fn poll_send(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<()>>;
    /// Half-closes our sending direction (TCP FIN, or H2 END_STREAM).
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// The copy state of one direction.
#[derive(Debug)]
struct Direction {
    /// Read but not yet fully written.
    pending: Option<Bytes>,
    sizer: ReadSizer,
    total: u64,
    state: DirectionState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirectionState {
    Copying,
    Closing,
    Done,
}

impl Direction {
    fn new() -> Self {
        Self {
            pending: None,
            sizer: ReadSizer::new(),
            total: 0,
            state: DirectionState::Copying,
        }
    }

    fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut impl Endpoint,
        to: &mut impl Endpoint,
    ) -> Poll<io::Result<()>> {
        loop {
            match self.state {
                DirectionState::Done => return Poll::Ready(Ok(())),
                DirectionState::Closing => {
                    ready!(to.poll_close(cx))?;
                    self.state = DirectionState::Done;
                }
                DirectionState::Copying => {
                    if let Some(chunk) = self.pending.as_mut() {
                        while !chunk.is_empty() {
                            ready!(to.poll_send(cx, chunk))?;
                        }
                        self.pending = None;
                    }
                    match ready!(from.poll_chunk(cx, &mut self.sizer))? {
                        Some(chunk) => {
                            self.total += chunk.len() as u64;
                            self.pending = Some(chunk);
                        }
                        None => self.state = DirectionState::Closing,
                    }
                }
            }
        }
    }
}

/// Both directions between `a` and `b`, polled by one task.
struct Splice<A, B> {
    a: A,
    b: B,
    forward: Direction,
    backward: Direction,
}

impl<A: Endpoint, B: Endpoint> Splice<A, B> {
    fn new(a: A, b: B) -> Self {
        Self {
            a,
            b,
            forward: Direction::new(),
            backward: Direction::new(),
        }
    }
}

impl<A: Endpoint, B: Endpoint> Future for Splice<A, B> {
    type Output = io::Result<Transferred>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        // Either direction failing ends both: the tunnel is broken.
        let forward = this.forward.poll_copy(cx, &mut this.a, &mut this.b)?;
        let backward = this.backward.poll_copy(cx, &mut this.b, &mut this.a)?;
        if forward.is_ready() && backward.is_ready() {
            return Poll::Ready(Ok(Transferred {
                forward: this.forward.total,
                backward: this.backward.total,
            }));
        }
        Poll::Pending
    }
}

/// Picks the next read size from how full the previous reads were.
#[derive(Debug)]
struct ReadSizer {
    next: usize,
}

impl ReadSizer {
    fn new() -> Self {
        Self { next: MIN_READ }
    }

    fn record(&mut self, read: usize) {
        if read >= self.next {
            self.next = (self.next * 2).min(MAX_READ);
        } else if read < self.next / 4 {
            self.next = (self.next / 2).max(MIN_READ);
        }
    }
}

/// One read from `stream` through `read`. A read shorter than `want` left the socket drained:
/// its readiness is forgotten now, instead of learned from one more `read` failing with EAGAIN.
///
/// The readiness cleared is the one seen *before* the read (tokio's `try_io` snapshot), so
/// data that arrives after the read began keeps its wakeup. Clearing a snapshot taken after
/// the read would swallow the readiness of data that landed in between, and the connection
/// would sit on it until the next packet came (seen as tunnels stalling until a keepalive).
pub(crate) fn read_draining(
    stream: &TcpStream,
    want: usize,
    read: impl FnOnce(&TcpStream) -> io::Result<usize>,
) -> io::Result<usize> {
    let mut short_read = None;
    let result = stream.try_io(tokio::io::Interest::READABLE, || {
        let n = read(stream)?;
        // Zero is end of stream: nothing more will come, readiness can stay.
        if n > 0 && n < want {
            short_read = Some(n);
            // WouldBlock is how try_io is told to clear the readiness it saw.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    short_read.map_or(result, Ok)
}

struct TcpEnd<'a>(&'a mut TcpStream);

impl Endpoint for TcpEnd<'_> {
    fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        sizer: &mut ReadSizer,
    ) -> Poll<io::Result<Option<Bytes>>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            let mut buf = BytesMut::with_capacity(sizer.next);
            match read_draining(self.0, sizer.next, |s| s.try_read_buf(&mut buf)) {
                Ok(0) => return Poll::Ready(Ok(None)),
                Ok(n) => {
                    sizer.record(n);
                    return Poll::Ready(Ok(Some(buf.freeze())));
                }
                // Spurious readiness: poll again, which re-registers interest.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<()>> {
        let written = ready!(Pin::new(&mut *self.0).poll_write(cx, chunk))?;
        if written == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        chunk.advance(written);
        Poll::Ready(Ok(()))
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

struct H2End {
    send: SendStream<Bytes>,
    recv: RecvStream,
}

impl H2End {
    fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self { send, recv }
    }
}

impl Endpoint for H2End {
    fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        _sizer: &mut ReadSizer,
    ) -> Poll<io::Result<Option<Bytes>>> {
        loop {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) if data.is_empty() => continue,
                Some(Ok(data)) => {
                    // Releasing on receipt is safe: we hold at most this one chunk until the
                    // other side takes it, so the window still bounds what is buffered.
                    self.recv
                        .flow_control()
                        .release_capacity(data.len())
                        .map_err(h2_to_io)?;
                    return Poll::Ready(Ok(Some(data)));
                }
                Some(Err(error)) => return Poll::Ready(Err(h2_to_io(error))),
                None => return Poll::Ready(Ok(None)),
            }
        }
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<()>> {
        self.send.reserve_capacity(chunk.len());
        loop {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(granted)) => {
                    let part = chunk.split_to(granted.min(chunk.len()));
                    self.send.send_data(part, false).map_err(h2_to_io)?;
                    return Poll::Ready(Ok(()));
                }
                Some(Err(error)) => return Poll::Ready(Err(h2_to_io(error))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    fn poll_close(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.send.send_data(Bytes::new(), true).map_err(h2_to_io))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_size_grows_with_full_reads_and_shrinks_with_small_ones() {
        let mut sizer = ReadSizer::new();
        assert_eq!(sizer.next, MIN_READ);
        for _ in 0..10 {
            let full = sizer.next;
            sizer.record(full);
        }
        assert_eq!(sizer.next, MAX_READ);
        sizer.record(100);
        assert_eq!(sizer.next, MAX_READ / 2);
        for _ in 0..10 {
            sizer.record(100);
        }
        assert_eq!(sizer.next, MIN_READ);
        // A read between a quarter and all of the buffer keeps the size.
        sizer.record(MIN_READ / 2);
        assert_eq!(sizer.next, MIN_READ);
    }
}
