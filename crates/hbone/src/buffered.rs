//! A read buffer under TLS. rustls asks the socket for at most 4 KiB at a time, so a 16 KiB
//! record costs several `read` syscalls; this reads up to 64 KiB at once while data flows, and
//! holds no buffer once the connection goes quiet. A short read marks the socket drained, so
//! the next poll waits for readiness instead of making a `read` that fails with EAGAIN.

use crate::copy::{MAX_DATA_FRAME, read_draining};
use bytes::BytesMut;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The largest HTTP/2 DATA frame the copy engine sends, as it arrives (in TLS 1.3 records of at
/// most 16 KiB of plaintext, each with a 5-byte header, the inner content type and a 16-byte
/// AEAD tag), and one byte more. A plain 64 KiB took such a frame in two reads, the second of a
/// few bytes, which also dropped the reader out of bulk mode; the byte more makes a read of one
/// whole frame short, so it marks the socket drained: a read that fills the buffer cannot tell,
/// and the next one fails with EAGAIN.
pub(crate) const BUFFER_SIZE: usize = tls_wire_size(MAX_DATA_FRAME) + 1;

const fn tls_wire_size(plaintext: usize) -> usize {
    const RECORD_PLAINTEXT: usize = 16 * 1024;
    const RECORD_OVERHEAD: usize = 5 + 1 + 16;
    plaintext + plaintext.div_ceil(RECORD_PLAINTEXT) * RECORD_OVERHEAD
}

#[derive(Debug)]
pub struct ReadBuffered<T = TcpStream> {
    inner: T,
    /// Read ahead of the caller; empty (and unallocated) unless the flow is bulk.
    buf: BytesMut,
    /// Reads have been filling the caller's buffer: read ahead in large chunks.
    bulk: bool,
}

impl<T> ReadBuffered<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            buf: BytesMut::new(),
            bulk: false,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl AsyncRead for ReadBuffered<TcpStream> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.buf.is_empty() {
            if this.bulk && out.remaining() < BUFFER_SIZE {
                this.buf.reserve(BUFFER_SIZE);
                let want = this.buf.capacity() - this.buf.len();
                let n = ready!(poll_read_once(&this.inner, cx, want, |s| {
                    s.try_read_buf(&mut this.buf)
                }))?;
                if n < BUFFER_SIZE / 4 {
                    // The flow slowed down: read straight into the caller's buffer again.
                    this.bulk = false;
                }
            } else {
                // Small messages: no read-ahead, so no extra copy and no allocation.
                let want = out.remaining();
                let n = ready!(poll_read_once(&this.inner, cx, want, |s| {
                    s.try_read(out.initialize_unfilled())
                }))?;
                out.advance(n);
                this.bulk = n == want;
                return Poll::Ready(Ok(()));
            }
        }
        let n = out.remaining().min(this.buf.len());
        out.put_slice(&this.buf.split_to(n));
        if this.buf.is_empty() && !this.bulk {
            this.buf = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

/// One successful read of up to `want` bytes from `stream` (retrying spurious readiness).
fn poll_read_once(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    want: usize,
    mut read: impl FnMut(&TcpStream) -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(stream.poll_read_ready(cx))?;
        match read_draining(stream, want, &mut read) {
            Ok(n) => return Poll::Ready(Ok(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadBuffered<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, ReadBuffered) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let writer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (reader, _) = listener.accept().await.unwrap();
        (writer, ReadBuffered::new(reader))
    }

    #[test]
    fn the_buffer_takes_one_whole_frame_and_a_byte() {
        // Five records (four of 16 KiB, one of the last 9 bytes) of 22 bytes' overhead each, as
        // `strace` shows the sending tunnel's `writev`s.
        assert_eq!(tls_wire_size(MAX_DATA_FRAME), 64 * 1024 + 9 + 5 * 22);
        assert_eq!(BUFFER_SIZE, 65_656);
    }

    #[tokio::test]
    async fn delivers_every_byte_through_small_reads_and_releases_when_quiet() {
        let (mut writer, mut reader) = pair().await;
        let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let sender = tokio::spawn(async move {
            writer.write_all(&sent).await.unwrap();
        });
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = reader.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            received.extend_from_slice(&chunk[..n]);
        }
        sender.await.unwrap();
        assert_eq!(received, payload);
        assert_eq!(
            reader.buf.capacity(),
            0,
            "a drained, closed stream keeps no buffer"
        );
    }

    #[tokio::test]
    async fn a_trickle_never_keeps_a_buffer_and_a_drained_socket_still_wakes() {
        let (mut writer, mut reader) = pair().await;
        for message in [&b"ping"[..], b"pong"] {
            writer.write_all(message).await.unwrap();
            let mut out = [0u8; 4];
            // The first read drains the socket and clears its readiness; the second message
            // must still wake the reader.
            tokio::time::timeout(
                std::time::Duration::from_secs(5),
                reader.read_exact(&mut out),
            )
            .await
            .expect("woken by new data")
            .unwrap();
            assert_eq!(&out, message);
            assert_eq!(reader.buf.capacity(), 0);
        }
    }

    /// Two messages a moment apart, then silence until both are read: the second often lands
    /// between the read that drained the first and the clearing of the socket's readiness. If
    /// that clearing swallowed its wakeup, the reader would wait for data already there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn data_arriving_while_a_short_read_clears_readiness_still_wakes() {
        let (mut writer, mut reader) = pair().await;
        let (ack_tx, mut ack_rx) = tokio::sync::mpsc::channel::<()>(1);
        const ROUNDS: u32 = 20_000;
        let sender = tokio::spawn(async move {
            for round in 0..ROUNDS {
                writer.write_all(b"a").await.unwrap();
                // A varying gap puts the second byte anywhere around the reader's first read.
                for _ in 0..(round % 64) {
                    std::hint::spin_loop();
                }
                writer.write_all(b"b").await.unwrap();
                if ack_rx.recv().await.is_none() {
                    return;
                }
            }
        });
        for round in 0..ROUNDS {
            let mut got = 0;
            while got < 2 {
                let mut byte = [0u8; 2];
                let n = tokio::time::timeout(
                    std::time::Duration::from_secs(2),
                    reader.read(&mut byte[..2 - got]),
                )
                .await
                .unwrap_or_else(|_| {
                    panic!("round {round}: a byte sent is never read: its wakeup was lost")
                })
                .unwrap();
                assert!(n > 0);
                got += n;
            }
            ack_tx.send(()).await.unwrap();
        }
        sender.await.unwrap();
    }
}
