//! A read buffer under TLS. rustls asks the socket for at most 4 KiB at a time, so a 16 KiB
//! record costs several `read` syscalls; this reads up to 64 KiB at once while data flows, and
//! holds no buffer once the connection goes quiet.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const BUFFER_SIZE: usize = 64 * 1024;

#[derive(Debug)]
pub struct ReadBuffered<T> {
    inner: T,
    /// Allocated only while reads come back large.
    buf: Option<Box<[u8]>>,
    start: usize,
    end: usize,
}

impl<T> ReadBuffered<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            buf: None,
            start: 0,
            end: 0,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadBuffered<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.start == this.end {
            if out.remaining() >= BUFFER_SIZE {
                // The caller's buffer is as large as ours: no point copying twice.
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            let buf = this
                .buf
                .get_or_insert_with(|| vec![0u8; BUFFER_SIZE].into_boxed_slice());
            let mut fill = ReadBuf::new(buf);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut fill))?;
            this.start = 0;
            this.end = fill.filled().len();
        }
        let Some(buf) = this.buf.as_ref() else {
            return Poll::Ready(Ok(()));
        };
        let n = out.remaining().min(this.end - this.start);
        out.put_slice(&buf[this.start..this.start + n]);
        this.start += n;
        if this.start == this.end && this.end < BUFFER_SIZE / 4 {
            // A small read: the flow is not bulk, so do not keep 64 KiB for it.
            this.buf = None;
            this.start = 0;
            this.end = 0;
        }
        Poll::Ready(Ok(()))
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

    #[tokio::test]
    async fn serves_small_reads_from_one_large_read_and_releases_when_quiet() {
        let (mut writer, reader) = tokio::io::duplex(256 * 1024);
        let mut reader = ReadBuffered::new(reader);
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        writer.write_all(&payload).await.unwrap();
        drop(writer);
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = reader.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            received.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(received, payload);
        // The final reads were small (the tail, then EOF): no buffer is kept.
        assert!(reader.buf.is_none());
    }

    #[tokio::test]
    async fn a_trickle_never_keeps_a_buffer() {
        let (mut writer, reader) = tokio::io::duplex(1024);
        let mut reader = ReadBuffered::new(reader);
        writer.write_all(b"ping").await.unwrap();
        let mut out = [0u8; 4];
        reader.read_exact(&mut out).await.unwrap();
        assert_eq!(&out, b"ping");
        assert!(reader.buf.is_none());
    }
}
