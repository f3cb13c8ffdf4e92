//! The local HTTP/JSON API (queue administration, peek, receive, metrics) on loopback, served by
//! axum on a thread of its own. It calls the queue manager; it holds no queue logic. With
//! `api_tls_cert` it speaks HTTPS, and beyond loopback (or with TLS) every request needs the
//! bearer token of `DATA_DIR/api-token` ([`tls`]).

pub mod api;
pub mod body_budget;
pub mod console;
pub mod message_json;
pub mod srmp;
pub mod srmp_client;
pub mod srmp_write;
pub mod tls;

pub use api::{serve_api, ApiHandle};

/// A listener for axum that holds at most `max` connections open: one past it is closed as soon
/// as it is accepted, with a rate-limited log line, so a flood on the local API cannot take the
/// descriptors of the other doors.
pub struct CappedListener {
    inner: tokio::net::TcpListener,
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    max: usize,
    what: &'static str,
    tls: Option<tls::ServerTls>,
}

impl CappedListener {
    pub fn new(inner: tokio::net::TcpListener, max: usize, what: &'static str) -> Self {
        let max = max.max(1);
        CappedListener {
            inner,
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(max)),
            max,
            what,
            tls: None,
        }
    }

    /// Serves TLS on every connection (the handshake runs on the connection's task).
    pub fn with_tls(mut self, tls: Option<tls::ServerTls>) -> Self {
        self.tls = tls;
        self
    }
}

/// A connection of a [`CappedListener`]; its slot comes back when it is dropped.
pub struct CappedStream {
    stream: tls::Door<tokio::net::TcpStream>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl axum::serve::Listener for CappedListener {
    type Io = CappedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (CappedStream, std::net::SocketAddr) {
        loop {
            let (stream, peer) = match self.inner.accept().await {
                Ok(a) => a,
                Err(error) => {
                    // Out of descriptors or a transient error: pause rather than spin.
                    if crate::ratelog::REFUSED.allow() {
                        tracing::warn!(what = self.what, %error, "accept failed; pausing 100 ms");
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            match std::sync::Arc::clone(&self.slots).try_acquire_owned() {
                Ok(slot) => {
                    let stream = match &self.tls {
                        Some(t) => t.wrap(stream, peer),
                        None => tls::Door::plain(stream, peer),
                    };
                    return (
                        CappedStream {
                            stream,
                            _slot: slot,
                        },
                        peer,
                    );
                }
                Err(_) => {
                    if crate::ratelog::REFUSED.allow() {
                        tracing::warn!(what = self.what, %peer, limit = self.max, "connections full; closing a new one");
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

impl tokio::io::AsyncRead for CappedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CappedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
