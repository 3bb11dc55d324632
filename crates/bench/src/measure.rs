//! Load generators that run in the benchmark driver against any path's entry address.

use crate::roles::{MODE_ECHO, MODE_SINK};
use anyhow::{Context, Result, ensure};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Payload of one echo round trip.
pub const ECHO_SIZE: usize = 1024;

async fn connect(addr: SocketAddr, mode: u8) -> Result<TcpStream> {
    let mut socket = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    socket.set_nodelay(true)?;
    socket.write_all(&[mode]).await?;
    Ok(socket)
}

/// What one stream carried.
pub struct Throughput {
    pub gbps: f64,
    /// Bytes the far end counted.
    pub bytes: u64,
}

/// One stream sends as fast as it can for `duration`; the rate is what the far end counted,
/// over the time until it confirmed.
pub async fn throughput(addr: SocketAddr, duration: Duration) -> Result<Throughput> {
    let mut socket = connect(addr, MODE_SINK).await?;
    let chunk = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    while start.elapsed() < duration {
        socket.write_all(&chunk).await?;
    }
    socket.shutdown().await?;
    let received = socket.read_u64().await.context("sink byte count")?;
    let elapsed = start.elapsed().as_secs_f64();
    Ok(Throughput {
        gbps: received as f64 * 8.0 / elapsed / 1e9,
        bytes: received,
    })
}

#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    pub p50_us: f64,
    pub p99_us: f64,
}

/// A warm connection for closed-loop 1 KiB echo round trips.
pub struct EchoConnection {
    socket: TcpStream,
    request: Vec<u8>,
    reply: Vec<u8>,
}

impl EchoConnection {
    pub async fn open(addr: SocketAddr, warmup: usize) -> Result<Self> {
        let mut connection = Self {
            socket: connect(addr, MODE_ECHO).await?,
            request: vec![0xa5u8; ECHO_SIZE],
            reply: vec![0u8; ECHO_SIZE],
        };
        let mut discard = Vec::with_capacity(warmup);
        connection.sample(warmup, &mut discard).await?;
        Ok(connection)
    }

    /// Appends `count` round-trip times to `rtts`.
    pub async fn sample(&mut self, count: usize, rtts: &mut Vec<Duration>) -> Result<()> {
        for _ in 0..count {
            let start = Instant::now();
            self.socket.write_all(&self.request).await?;
            self.socket.read_exact(&mut self.reply).await?;
            rtts.push(start.elapsed());
        }
        ensure!(self.reply == self.request, "echo corrupted the payload");
        Ok(())
    }
}

pub fn percentiles(samples: &mut [Duration]) -> Percentiles {
    samples.sort_unstable();
    let at = |q: f64| {
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(index).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    Percentiles {
        p50_us: at(0.50),
        p99_us: at(0.99),
    }
}

/// Opens `count` connections through `addr`, each proven end to end with one small echo, and
/// keeps them open.
pub async fn open_idle_connections(addr: SocketAddr, count: usize) -> Result<Vec<TcpStream>> {
    const PARALLEL: usize = 64;
    let mut open = Vec::with_capacity(count);
    while open.len() < count {
        let batch = PARALLEL.min(count - open.len());
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..batch {
            tasks.spawn(async move {
                let mut socket = connect(addr, MODE_ECHO).await?;
                socket.write_all(b"hello").await?;
                let mut reply = [0u8; 5];
                socket.read_exact(&mut reply).await?;
                anyhow::Ok(socket)
            });
        }
        while let Some(socket) = tasks.join_next().await {
            open.push(socket??);
        }
    }
    Ok(open)
}

/// The soft limit on open files, so a benchmark can say what it needs before it fails halfway.
pub fn open_files_limit() -> Result<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .context("Max open files in /proc/self/limits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let p = percentiles(&mut samples);
        assert_eq!(p.p50_us, 51.0);
        assert_eq!(p.p99_us, 99.0);
    }
}
