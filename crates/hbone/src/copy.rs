//! The byte-copy engine: both directions of a tunnel in one task, half-close propagated, and
//! read buffers that grow with the flow instead of a large fixed buffer per connection.
//!
//! An idle connection holds no buffer at all: a TCP read allocates only once the socket is
//! readable, sized by what the previous reads returned.

use crate::stream::{H2Stream, h2_to_io};
use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use std::future::{Future, poll_fn};
use std::io;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

/// Smallest read buffer: one small request fits.
const MIN_READ: usize = 4 * 1024;
/// Largest read buffer: one read fills an H2 DATA frame of the default maximum size.
const MAX_READ: usize = 256 * 1024;

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
    let result = {
        let (tcp_read, tcp_write) = tcp.split();
        let forward = pump(TcpSource::new(tcp_read), H2Sink(send));
        let backward = pump(H2Source(recv), TcpSink(tcp_write));
        tokio::try_join!(forward, backward)
    };
    finish(tcp, result)
}

/// Copies between two TCP streams with the same engine (the plain proxy baseline).
pub async fn splice_tcp_tcp(a: &mut TcpStream, b: &mut TcpStream) -> io::Result<Transferred> {
    a.set_nodelay(true)?;
    b.set_nodelay(true)?;
    let result = {
        let (a_read, a_write) = a.split();
        let (b_read, b_write) = b.split();
        let forward = pump(TcpSource::new(a_read), TcpSink(b_write));
        let backward = pump(TcpSource::new(b_read), TcpSink(a_write));
        tokio::try_join!(forward, backward)
    };
    if result.is_err() {
        let _ = b.set_zero_linger();
    }
    finish(a, result)
}

fn finish(tcp: &TcpStream, result: io::Result<(u64, u64)>) -> io::Result<Transferred> {
    match result {
        Ok((forward, backward)) => Ok(Transferred { forward, backward }),
        Err(error) => {
            // Closing with RST carries the abort to the application.
            let _ = tcp.set_zero_linger();
            Err(error)
        }
    }
}

/// Moves chunks from `source` to `sink` until end of stream, then closes the sink's direction.
async fn pump(mut source: impl ChunkSource, mut sink: impl ChunkSink) -> io::Result<u64> {
    let mut total = 0u64;
    while let Some(chunk) = source.next_chunk().await? {
        total += chunk.len() as u64;
        sink.send(chunk).await?;
    }
    sink.close().await?;
    Ok(total)
}

trait ChunkSource {
    /// The next non-empty chunk, or `None` at end of stream.
    fn next_chunk(&mut self) -> impl Future<Output = io::Result<Option<Bytes>>>;
}

trait ChunkSink {
    fn send(&mut self, chunk: Bytes) -> impl Future<Output = io::Result<()>>;
    /// Half-closes this direction (TCP FIN, or H2 END_STREAM).
    fn close(&mut self) -> impl Future<Output = io::Result<()>>;
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

struct TcpSource<'a> {
    half: ReadHalf<'a>,
    sizer: ReadSizer,
}

impl<'a> TcpSource<'a> {
    fn new(half: ReadHalf<'a>) -> Self {
        Self {
            half,
            sizer: ReadSizer::new(),
        }
    }
}

impl ChunkSource for TcpSource<'_> {
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        let stream: &TcpStream = self.half.as_ref();
        loop {
            stream.readable().await?;
            let mut buf = BytesMut::with_capacity(self.sizer.next);
            match stream.try_read_buf(&mut buf) {
                Ok(0) => return Ok(None),
                Ok(n) => {
                    self.sizer.record(n);
                    return Ok(Some(buf.freeze()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

struct TcpSink<'a>(WriteHalf<'a>);

impl ChunkSink for TcpSink<'_> {
    async fn send(&mut self, chunk: Bytes) -> io::Result<()> {
        self.0.write_all(&chunk).await
    }

    async fn close(&mut self) -> io::Result<()> {
        self.0.shutdown().await
    }
}

struct H2Source(RecvStream);

impl ChunkSource for H2Source {
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            match poll_fn(|cx| self.0.poll_data(cx)).await {
                Some(Ok(data)) if data.is_empty() => continue,
                Some(Ok(data)) => {
                    // Releasing on receipt is safe: we hold at most this one chunk before the
                    // sink accepts it, so the window still bounds what is buffered.
                    self.0
                        .flow_control()
                        .release_capacity(data.len())
                        .map_err(h2_to_io)?;
                    return Ok(Some(data));
                }
                Some(Err(error)) => return Err(h2_to_io(error)),
                None => return Ok(None),
            }
        }
    }
}

struct H2Sink(SendStream<Bytes>);

impl ChunkSink for H2Sink {
    async fn send(&mut self, mut chunk: Bytes) -> io::Result<()> {
        while !chunk.is_empty() {
            self.0.reserve_capacity(chunk.len());
            let granted = match poll_fn(|cx| self.0.poll_capacity(cx)).await {
                Some(Ok(granted)) => granted,
                Some(Err(error)) => return Err(h2_to_io(error)),
                None => return Err(io::ErrorKind::BrokenPipe.into()),
            };
            if granted == 0 {
                continue;
            }
            let part = chunk.split_to(granted.min(chunk.len()));
            self.0.send_data(part, false).map_err(h2_to_io)?;
        }
        Ok(())
    }

    async fn close(&mut self) -> io::Result<()> {
        self.0.send_data(Bytes::new(), true).map_err(h2_to_io)
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
