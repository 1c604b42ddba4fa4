//! The network seam: where berth processes accept connections ([`bind`])
//! and how their gRPC channels reach each other (`dial::connect`,
//! `dial::connect_lazy`). Production uses real TCP: tokio's listener and
//! tonic's own connector, exactly as if this module did not exist. The
//! deterministic simulator installs a simulated network once per process
//! with [`set`]; from then on every listener and every dial in the process
//! goes through it. No TLS runs over a simulated network.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_stream::Stream;

/// A byte stream of either network.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed future, as the seam's methods return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Accepted connections of a simulated listener.
pub type Incoming = Pin<Box<dyn Stream<Item = io::Result<Conn>> + Send>>;

/// A network other than the host's TCP stack.
pub trait Net: Send + Sync + 'static {
    /// Opens a connection to `host:port`.
    fn dial(&self, host: String, port: u16) -> BoxFuture<io::Result<Box<dyn Io>>>;
    /// Listens on `addr` (`host:port`).
    fn listen(&self, addr: String) -> BoxFuture<io::Result<Incoming>>;
}

static NET: OnceLock<Arc<dyn Net>> = OnceLock::new();

/// Routes every later listener and dial of this process through `net`
/// (once per process; a second call is refused).
pub fn set(net: Arc<dyn Net>) -> Result<(), String> {
    NET.set(net)
        .map_err(|_| "a network is already installed".to_string())
}

/// The installed network, if not the host's TCP.
pub fn installed() -> Option<&'static Arc<dyn Net>> {
    NET.get()
}

/// A bound listener: real TCP, or the installed network's.
pub enum Listener {
    Tcp(TcpListener),
    Simulated(Incoming),
}

/// Binds `addr` on the installed network, else on TCP.
pub async fn bind(addr: &str) -> io::Result<Listener> {
    match installed() {
        Some(net) => Ok(Listener::Simulated(net.listen(addr.to_string()).await?)),
        None => Ok(Listener::Tcp(TcpListener::bind(addr).await?)),
    }
}

/// The connections a plain TCP listener accepts, with TCP_NODELAY set on
/// each (tonic sets it on the sockets it dials, not on ones it is handed:
/// without it small gRPC frames wait out Nagle's delay, about 40 ms).
pub fn tcp_incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// One accepted or dialed connection of an installed network.
pub struct Conn(pub Box<dyn Io>);

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}
