//! HTTPS for the management API: a listener whose connections arrive after their TLS
//! handshake, each handshake in its own task, and the peer each request sees (its address,
//! and the user a verified client certificate names).

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use postino_core::user_of_certificate;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client has to complete its handshake.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const READY_MAX: usize = 64;

/// Who sent a request.
#[derive(Debug, Clone)]
pub struct Peer {
    pub address: SocketAddr,
    /// The user a client certificate the handshake verified names (its subject's CN).
    pub certificate_user: Option<String>,
}

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Self {
            address: *stream.remote_addr(),
            certificate_user: None,
        }
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A TCP listener whose connections are handed over once their TLS handshake succeeds.
#[derive(Debug)]
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, Peer)>,
}

impl TlsListener {
    /// Starts accepting on `listener`; handshakes run as connections arrive.
    ///
    /// # Errors
    /// The listener's address cannot be read.
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (sender, ready) = mpsc::channel(READY_MAX);
        tokio::spawn(handshakes(listener, acceptor, sender));
        Ok(Self { local, ready })
    }
}

async fn handshakes(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, Peer)>,
) {
    loop {
        let (socket, address) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting an https connection failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if ready.is_closed() {
            return;
        }
        let (acceptor, ready) = (acceptor.clone(), ready.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_WAIT, acceptor.accept(socket)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::info!(peer = %address, %error, "https handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(peer = %address, "https handshake timed out");
                    return;
                }
            };
            let certificate_user = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|certificate| user_of_certificate(certificate));
            let peer = Peer {
                address,
                certificate_user,
            };
            let _ = ready.send((stream, peer)).await;
        });
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task ended (it never does while the listener lives): wait forever,
            // as a listener that accepts nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer {
            address: self.local,
            certificate_user: None,
        })
    }
}
