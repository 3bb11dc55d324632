//! Socket plumbing: the mark that keeps the tunnel's own traffic out of capture, original
//! destinations, and aborting a client with RST.

use ambit_handoff::TUNNEL_MARK;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// Connects with SO_MARK set, so the pod's capture rules let the connection through.
pub async fn connect_marked(target: SocketAddr) -> io::Result<TcpStream> {
    let tcp = ambit_hbone::connect_marked(target, Some(TUNNEL_MARK)).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// The destination a redirected connection was headed to before nftables rewrote it.
pub fn original_dst(tcp: &TcpStream) -> io::Result<SocketAddr> {
    let sock = socket2::SockRef::from(tcp);
    let addr = match tcp.local_addr()? {
        SocketAddr::V4(_) => sock.original_dst_v4()?,
        SocketAddr::V6(_) => sock.original_dst_v6()?,
    };
    addr.as_socket()
        .ok_or_else(|| io::Error::other("original destination is not an IP address"))
}

/// Closes with RST: the application sees its connection reset, not a clean end.
pub fn reset(tcp: TcpStream) {
    let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
    drop(tcp);
}
