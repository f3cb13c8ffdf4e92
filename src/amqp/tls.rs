//! AMQPS: AMQP 1.0 over TLS (`[amqp] tls_listen`, `tls_cert`, `tls_key`) on the same shard
//! engine as plain AMQP. Each connection accepted on [`super::AMQPS_LISTENER`] holds a
//! [`TlsLayer`], a `rustls::ServerConnection` between the engine's bytes and the sans-IO
//! [`super::connection::Connection`]: ciphertext in from `on_recv` becomes plaintext for the
//! connection, the connection's transmit is encrypted in `poll_transmit`. No second runtime, no
//! thread per connection: rustls is sans-IO too.
//!
//! A TLS error (a bad handshake, garbage, a bad record) closes that connection: the alert rustls
//! prepared is sent, a rate-limited log line names the peer and the error, and
//! `lior_amqp_tls_errors_total` counts it.

use std::io::{Read as _, Write as _};
use std::sync::Arc;

use rustls::ServerConfig;

use super::config::AmqpConfig;
use super::connection::SaslConfig;

/// Bytes rustls may buffer unsent on one AMQPS connection: plaintext written before the
/// handshake finished, and encrypted records not yet taken (the app takes them every turn).
pub const AMQPS_TLS_BUFFER_BYTES_MAX: usize = 1 << 20;

/// Plaintext from the AMQP connection waiting for rustls to take it (only before the
/// handshake finishes); past it the connection is closed. AMQP's own transmit bound
/// ([`super::connection::MAX_TRANSMIT_BYTES`]) is the same.
pub const AMQPS_PENDING_PLAINTEXT_BYTES_MAX: usize = super::connection::MAX_TRANSMIT_BYTES;

/// Plaintext read out of rustls in one piece (the buffer is reused).
pub const AMQPS_READ_CHUNK_BYTES: usize = 16 * 1024;

/// The AMQPS door: its TLS configuration and its SASL layer (mechanisms decided for
/// `tls_listen`, see [`AmqpConfig::mechanisms_on`]).
pub struct AmqpsDoor {
    pub config: Arc<ServerConfig>,
    pub sasl: Option<SaslConfig>,
}

/// The AMQPS door of `[amqp]`, or None when AMQP is off or `tls_listen` is not set.
pub fn door(cfg: &AmqpConfig) -> Result<Option<AmqpsDoor>, String> {
    let (true, Some(addr), Some(cert), Some(key)) =
        (cfg.enabled, cfg.tls_listen, &cfg.tls_cert, &cfg.tls_key)
    else {
        return Ok(None);
    };
    let config = crate::http::tls::server_config("amqp.tls", cert, key, None, &[])?;
    let users = super::auth::UserTable::from_config(cfg).map_err(|e| format!("amqp.users: {e}"))?;
    let mut on_tls = cfg.clone();
    on_tls.listen = addr;
    let sasl = super::auth::sasl_config(&on_tls, Arc::new(users)).map_err(|e| e.to_string())?;
    Ok(Some(AmqpsDoor {
        config,
        sasl: Some(sasl),
    }))
}

/// The TLS state of one AMQPS connection.
pub struct TlsLayer {
    tls: rustls::ServerConnection,
    /// Plaintext the connection produced that rustls did not take yet.
    pending: Vec<u8>,
    /// Reused buffer for plaintext read out of rustls.
    chunk: Vec<u8>,
    failed: bool,
    peer_closed: bool,
    close_sent: bool,
}

impl TlsLayer {
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        let mut tls = rustls::ServerConnection::new(config)?;
        tls.set_buffer_limit(Some(AMQPS_TLS_BUFFER_BYTES_MAX));
        Ok(TlsLayer {
            tls,
            pending: Vec::new(),
            chunk: Vec::new(),
            failed: false,
            peer_closed: false,
            close_sent: false,
        })
    }

    /// Ciphertext from the peer: appends the plaintext it carries to `plain`. An error (the
    /// connection is then [`TlsLayer::failed`]) says what went wrong.
    pub fn on_ciphertext(&mut self, mut bytes: &[u8], plain: &mut Vec<u8>) -> Result<(), String> {
        if self.failed {
            return Ok(());
        }
        if self.chunk.len() != AMQPS_READ_CHUNK_BYTES {
            self.chunk.resize(AMQPS_READ_CHUNK_BYTES, 0);
        }
        while !bytes.is_empty() {
            match self.tls.read_tls(&mut bytes) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    self.failed = true;
                    return Err(format!("TLS: {e}"));
                }
            }
            if let Err(e) = self.tls.process_new_packets() {
                // rustls queued the alert to send; poll_transmit sends it before the close.
                self.failed = true;
                return Err(format!("TLS: {e}"));
            }
            loop {
                match self.tls.reader().read(&mut self.chunk) {
                    Ok(0) => {
                        self.peer_closed = true;
                        break;
                    }
                    Ok(n) => plain.extend_from_slice(&self.chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        // The peer closed the TCP stream without close_notify mid-record.
                        self.failed = true;
                        return Err(format!("TLS: {e}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Encrypts `plain` (the AMQP connection's transmit) and appends every TLS record ready to
    /// go (handshake messages, alerts, data) to `out`. With `closing`, ends with close_notify.
    pub fn transmit(
        &mut self,
        plain: &[u8],
        closing: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        if !self.failed {
            if self.pending.len() + plain.len() > AMQPS_PENDING_PLAINTEXT_BYTES_MAX {
                self.failed = true;
                return Err(format!(
                    "more than AMQPS_PENDING_PLAINTEXT_BYTES_MAX ({AMQPS_PENDING_PLAINTEXT_BYTES_MAX}) \
                     bytes waiting for the TLS handshake"
                ));
            }
            self.pending.extend_from_slice(plain);
            while !self.pending.is_empty() {
                let n = self
                    .tls
                    .writer()
                    .write(&self.pending)
                    .map_err(|e| format!("TLS: {e}"))?;
                self.pending.drain(..n);
                let mut wrote = false;
                while self.tls.wants_write() {
                    match self.tls.write_tls(out) {
                        Ok(0) => break,
                        Ok(_) => wrote = true,
                        Err(e) => return Err(format!("TLS: {e}")),
                    }
                }
                if n == 0 && !wrote {
                    break; // before the handshake's end: kept for later
                }
            }
            if closing && self.pending.is_empty() && !self.close_sent {
                self.close_sent = true;
                self.tls.send_close_notify();
            }
        }
        while self.tls.wants_write() {
            match self.tls.write_tls(out) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(format!("TLS: {e}")),
            }
        }
        Ok(())
    }

    /// A TLS error happened: the connection closes once the alert is sent.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// The peer sent close_notify.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// close_notify went out (after the AMQP close).
    pub fn close_sent(&self) -> bool {
        self.close_sent
    }

    /// The handshake has not finished (nothing of AMQP can reach the peer yet).
    pub fn is_handshaking(&self) -> bool {
        self.tls.is_handshaking()
    }
}
