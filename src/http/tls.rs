//! TLS on lior's HTTP doors (rustls with the `ring` provider, through tokio-rustls; no
//! OpenSSL): HTTPS for the SRMP endpoint (`srmp_tls_cert`, `srmp_tls_key`, optional
//! `srmp_tls_client_ca` to require client certificates) and for the local API (`api_tls_cert`,
//! `api_tls_key`), the API's bearer token (`DATA_DIR/api-token`), and the client-side
//! configuration an HTTPS sender (SRMP outgoing queues, issue 12) and the `lior` CLI use.
//!
//! The certificate loading here is shared with AMQPS ([`crate::amqp::tls`]).
//!
//! A TLS connection is a [`Door`]: the handshake runs on the connection's own task (lazily, on
//! its first read or write, so a slow or silent client never holds up `accept`), bounded by a
//! time-out; a failed handshake closes that connection with a rate-limited log line and a
//! counter (`lior_tls_handshake_failures_total{door=...}`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::Config;

/// The API's bearer token file, in the data directory.
pub const API_TOKEN_FILE: &str = "api-token";

/// A TLS handshake on an HTTP door (API or SRMP) must finish within this time, or the
/// connection is closed (an idle socket must not hold a connection slot).
pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// Certificates one PEM file given to lior may hold (a chain, or a CA bundle).
pub const PEM_CERTS_MAX: usize = 1024;

/// Handshake failures per HTTP door, for `/metrics`.
static API_TLS_FAILURES: AtomicU64 = AtomicU64::new(0);
static SRMP_TLS_FAILURES: AtomicU64 = AtomicU64::new(0);
/// API requests refused for a missing or wrong bearer token.
static API_UNAUTHORIZED: AtomicU64 = AtomicU64::new(0);

/// The crypto provider of every TLS door: rustls' `ring` provider.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain (leaf first), naming the key and the file when it fails.
pub fn load_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{key} = {shown:?}: cannot read it: {e}"))?;
    let mut certs = Vec::new();
    for c in iter {
        let c = c.map_err(|e| format!("{key} = {shown:?}: not a PEM certificate file: {e}"))?;
        if certs.len() == PEM_CERTS_MAX {
            return Err(format!(
                "{key} = {shown:?}: more than PEM_CERTS_MAX ({PEM_CERTS_MAX}) certificates"
            ));
        }
        certs.push(c);
    }
    if certs.is_empty() {
        return Err(format!(
            "{key} = {shown:?}: no `-----BEGIN CERTIFICATE-----` block in it; give a PEM file"
        ));
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        format!(
            "{key} = {:?}: cannot read a PEM private key (PKCS#8, PKCS#1 or SEC1) from it: {e}",
            path.display()
        )
    })
}

/// A root store from a PEM CA file.
pub fn load_roots(key: &str, path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(key, path)? {
        roots
            .add(c)
            .map_err(|e| format!("{key} = {:?}: a CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// A server configuration from a certificate chain and its key; with `client_ca`, clients must
/// present a certificate signed by one of its CAs. `door` names the keys in errors (`srmp`,
/// `api`, `amqp.tls`); `alpn` is what the door speaks (`http/1.1` for HTTP, none for AMQPS).
pub fn server_config(
    door: &str,
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, String> {
    let certs = load_certs(&format!("{door}_cert"), cert)?;
    let private = load_key(&format!("{door}_key"), key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{door}: TLS set-up: {e}"))?;
    let builder = match client_ca {
        Some(ca) => {
            let roots = load_roots(&format!("{door}_client_ca"), ca)?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.into(),
                provider(),
            )
            .build()
            .map_err(|e| format!("{door}_client_ca = {:?}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(certs, private).map_err(|e| {
        format!(
            "{door}_cert = {:?} and {door}_key = {:?} do not make a usable pair: {e}",
            cert.display(),
            key.display()
        )
    })?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// The client side, for HTTPS outgoing queues (the SRMP sender of issue 12) and the `lior`
/// CLI: servers are verified against the CAs of `ca` (a PEM file) only, and with
/// `client_cert` (chain, key) the client presents that certificate when asked.
pub fn client_config(
    ca: &Path,
    client_cert: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, String> {
    let roots = load_roots("ca", ca)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(roots);
    let cfg = match client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                load_certs("client_cert", cert)?,
                load_key("client_key", key)?,
            )
            .map_err(|e| format!("client certificate {:?}: {e}", cert.display()))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

/// Which HTTP door a TLS connection belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DoorKind {
    Api,
    Srmp,
}

impl DoorKind {
    fn name(self) -> &'static str {
        match self {
            DoorKind::Api => "API",
            DoorKind::Srmp => "SRMP",
        }
    }

    fn failures(self) -> &'static AtomicU64 {
        match self {
            DoorKind::Api => &API_TLS_FAILURES,
            DoorKind::Srmp => &SRMP_TLS_FAILURES,
        }
    }
}

/// A door's TLS acceptor.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
    kind: DoorKind,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerTls({})", self.kind.name())
    }
}

impl ServerTls {
    pub fn new(config: Arc<ServerConfig>, kind: DoorKind) -> Self {
        ServerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(config),
            kind,
            handshake_timeout: Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS),
        }
    }

    /// Wraps an accepted connection; the handshake runs on its first read or write.
    pub fn wrap<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: S, peer: SocketAddr) -> Door<S> {
        Door {
            state: State::Handshaking(
                Box::new(self.acceptor.accept(stream)),
                Box::pin(tokio::time::sleep(self.handshake_timeout)),
            ),
            peer,
            kind: self.kind,
        }
    }
}

/// The SRMP door's TLS, from `srmp_tls_cert` / `srmp_tls_key` / `srmp_tls_client_ca`.
pub fn srmp_tls(config: &Config) -> Result<Option<ServerTls>, String> {
    let (Some(cert), Some(key)) = (&config.srmp_tls_cert, &config.srmp_tls_key) else {
        return Ok(None);
    };
    let cfg = server_config(
        "srmp_tls",
        cert,
        key,
        config.srmp_tls_client_ca.as_deref(),
        &[b"http/1.1"],
    )?;
    Ok(Some(ServerTls::new(cfg, DoorKind::Srmp)))
}

/// How the local API is protected: TLS, and the bearer token every request must carry.
#[derive(Clone, Debug, Default)]
pub struct ApiSecurity {
    pub tls: Option<ServerTls>,
    pub token: Option<Arc<ApiToken>>,
}

/// The API's bearer token (kept as its SHA-256, compared in constant time).
pub struct ApiToken {
    digest: [u8; 32],
    file: PathBuf,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiToken({})", self.file.display())
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(b).into()
}

impl ApiToken {
    pub fn new(token: &str, file: PathBuf) -> Self {
        ApiToken {
            digest: sha256(token.as_bytes()),
            file,
        }
    }

    /// Whether an `Authorization` header value carries this token (constant time).
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(given) = authorization.and_then(|h| {
            h.strip_prefix(b"Bearer ")
                .or_else(|| h.strip_prefix(b"bearer "))
        }) else {
            return false;
        };
        let d = sha256(given.trim_ascii());
        d.iter()
            .zip(self.digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Reads `DATA_DIR/api-token`, or creates it (mode 0600, 32 random bytes as hex) when it does
/// not exist. A token file others can read is refused: anyone reading it owns the API.
pub fn load_or_create_token(data_dir: &Path) -> Result<(String, PathBuf), String> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let path = data_dir.join(API_TOKEN_FILE);
    let shown = path.display();
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut f) => {
            let mut raw = [0u8; 32];
            provider()
                .secure_random
                .fill(&mut raw)
                .map_err(|_| "no random bytes from the system for the API token".to_string())?;
            let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            f.write_all(format!("{token}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| format!("cannot write the API token to {shown}: {e}"))?;
            tracing::info!(file = %shown, "created the API bearer token");
            return Ok((token, path));
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create the API token file {shown}: {e}")),
    }
    let meta = std::fs::metadata(&path).map_err(|e| format!("{shown}: {e}"))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "the API token file {shown} is readable by others (mode {:o}): `chmod 600 {shown}` \
             (or delete it: a new token is made at start)",
            meta.permissions().mode() & 0o777
        ));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let token = text.trim().to_string();
    if token.len() < 16 || token.len() > 4096 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "the API token in {shown} must be 16..=4096 printable ASCII characters; delete the \
             file and a new token is made at start"
        ));
    }
    Ok((token, path))
}

/// The API's TLS (`api_tls_cert`, `api_tls_key`) and, when [`Config::api_needs_token`], its
/// token (read or created in the data directory).
pub fn api_security(config: &Config) -> Result<ApiSecurity, String> {
    let tls = match (&config.api_tls_cert, &config.api_tls_key) {
        (Some(cert), Some(key)) => Some(ServerTls::new(
            server_config("api_tls", cert, key, None, &[b"http/1.1"])?,
            DoorKind::Api,
        )),
        _ => None,
    };
    let token = if config.api_needs_token() {
        let (t, file) = load_or_create_token(&config.data_dir)?;
        Some(Arc::new(ApiToken::new(&t, file)))
    } else {
        None
    };
    Ok(ApiSecurity { tls, token })
}

impl ApiSecurity {
    /// Puts the token check in front of every route but the console's static files (the page,
    /// its stylesheet and script hold no data; the script sends the token on every call).
    pub fn protect(&self, app: axum::Router) -> axum::Router {
        match &self.token {
            Some(t) => app.layer(axum::middleware::from_fn_with_state(
                t.clone(),
                require_token,
            )),
            None => app,
        }
    }
}

async fn require_token(
    axum::extract::State(token): axum::extract::State<Arc<ApiToken>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let path = req.uri().path();
    let public = req.method() == axum::http::Method::GET
        && [
            super::console::INDEX_PATH,
            super::console::CSS_PATH,
            super::console::JS_PATH,
        ]
        .contains(&path);
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if public || token.admits(given) {
        return next.run(req).await;
    }
    API_UNAUTHORIZED.fetch_add(1, Ordering::Relaxed);
    if crate::ratelog::REFUSED.allow() {
        tracing::warn!(path, "API request without a valid bearer token: 401");
    }
    (
        axum::http::StatusCode::UNAUTHORIZED,
        [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(serde_json::json!({
            "error": format!(
                "this API needs `Authorization: Bearer <token>`; the token is in {} on the \
                 server (the lior CLI: --api-token-file)",
                token.file.display()
            )
        })),
    )
        .into_response()
}

/// Appends the TLS counters of the HTTP doors to a Prometheus text exposition.
pub fn render_metrics(out: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "# HELP lior_tls_handshake_failures_total TLS handshakes that failed or timed out on an \
         HTTP door (each logged, rate-limited).\n# TYPE lior_tls_handshake_failures_total \
         counter\nlior_tls_handshake_failures_total{{door=\"api\"}} {}\n\
         lior_tls_handshake_failures_total{{door=\"srmp\"}} {}",
        API_TLS_FAILURES.load(Ordering::Relaxed),
        SRMP_TLS_FAILURES.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP lior_api_unauthorized_total API requests answered 401 (no or a wrong bearer \
         token).\n# TYPE lior_api_unauthorized_total counter\nlior_api_unauthorized_total {}",
        API_UNAUTHORIZED.load(Ordering::Relaxed)
    );
}

enum State<S> {
    Plain(S),
    Handshaking(Box<tokio_rustls::Accept<S>>, Pin<Box<tokio::time::Sleep>>),
    Tls(Box<tokio_rustls::server::TlsStream<S>>),
    Failed,
}

/// One connection of an HTTP door: plain, or TLS once its handshake is done.
pub struct Door<S> {
    state: State<S>,
    peer: SocketAddr,
    kind: DoorKind,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Door<S> {
    /// A connection without TLS.
    pub fn plain(stream: S, peer: SocketAddr) -> Self {
        Door {
            state: State::Plain(stream),
            peer,
            kind: DoorKind::Api,
        }
    }

    /// Drives the handshake; Ready(Ok) once bytes can flow.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let State::Handshaking(accept, timer) = &mut self.state else {
            return match self.state {
                State::Failed => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "the TLS handshake failed",
                ))),
                _ => Poll::Ready(Ok(())),
            };
        };
        let error = match Pin::new(&mut **accept).poll(cx) {
            Poll::Ready(Ok(s)) => {
                self.state = State::Tls(Box::new(s));
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => e,
            Poll::Pending => match timer.as_mut().poll(cx) {
                Poll::Ready(()) => io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no TLS handshake within TLS_HANDSHAKE_TIMEOUT_MS ({TLS_HANDSHAKE_TIMEOUT_MS} ms)"),
                ),
                Poll::Pending => return Poll::Pending,
            },
        };
        self.state = State::Failed;
        self.kind.failures().fetch_add(1, Ordering::Relaxed);
        if crate::ratelog::MALFORMED.allow() {
            tracing::warn!(door = self.kind.name(), peer = %self.peer, %error, "TLS handshake failed; connection closed");
        }
        Poll::Ready(Err(error))
    }

    /// Finishes the handshake (for a server that serves a connection only once it is done).
    pub async fn handshake(mut self) -> io::Result<Self> {
        std::future::poll_fn(|cx| self.poll_ready(cx)).await?;
        Ok(self)
    }
}

macro_rules! ready_or_return {
    ($self:ident, $cx:ident) => {
        match $self.poll_ready($cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    };
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Door<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready_or_return!(this, cx);
        match &mut this.state {
            State::Plain(s) => Pin::new(s).poll_read(cx, buf),
            State::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            _ => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Door<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready_or_return!(this, cx);
        match &mut this.state {
            State::Plain(s) => Pin::new(s).poll_write(cx, buf),
            State::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            _ => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready_or_return!(this, cx);
        match &mut this.state {
            State::Plain(s) => Pin::new(s).poll_flush(cx),
            State::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.state {
            State::Plain(s) => Pin::new(s).poll_shutdown(cx),
            State::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            _ => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_and_leaf(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let (c, l, k) = (
            dir.join("ca.pem"),
            dir.join("leaf.pem"),
            dir.join("leaf.key"),
        );
        std::fs::write(&c, ca.pem()).unwrap();
        std::fs::write(&l, leaf.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, l, k)
    }

    /// A client configuration from [`client_config`] completes a handshake with a server
    /// whose certificate the configured CA signed, and refuses one it did not sign.
    #[test]
    fn the_client_config_trusts_exactly_the_configured_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, leaf, key) = ca_and_leaf(dir.path());
        let other = tempfile::tempdir().unwrap();
        let (other_ca, _, _) = ca_and_leaf(other.path());
        let server = server_config("srmp_tls", &leaf, &key, None, &[]).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        for (roots, ok) in [(&ca, true), (&other_ca, false)] {
            let client = client_config(roots, None).unwrap();
            let mut c = rustls::ClientConnection::new(client, name.clone()).unwrap();
            let mut s = rustls::ServerConnection::new(server.clone()).unwrap();
            let mut failed = None;
            for _ in 0..10 {
                let mut buf = Vec::new();
                while c.wants_write() {
                    c.write_tls(&mut buf).unwrap();
                }
                let mut rd = &buf[..];
                while !rd.is_empty() {
                    s.read_tls(&mut rd).unwrap();
                }
                if let Err(e) = s.process_new_packets() {
                    failed = Some(e.to_string());
                    break;
                }
                let mut buf = Vec::new();
                while s.wants_write() {
                    s.write_tls(&mut buf).unwrap();
                }
                let mut rd = &buf[..];
                while !rd.is_empty() {
                    c.read_tls(&mut rd).unwrap();
                }
                if let Err(e) = c.process_new_packets() {
                    failed = Some(e.to_string());
                    break;
                }
                if !c.is_handshaking() && !s.is_handshaking() {
                    break;
                }
            }
            if ok {
                assert_eq!(failed, None);
                assert!(!c.is_handshaking());
            } else {
                let e = failed.expect("a server the CA did not sign is refused");
                assert!(e.contains("invalid peer certificate"), "{e}");
            }
        }
    }

    #[test]
    fn bad_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem").unwrap();
        let e = server_config("srmp_tls", &junk, &junk, None, &[]).unwrap_err();
        assert!(e.contains("srmp_tls_cert") && e.contains("junk.pem"), "{e}");
        let e = client_config(&dir.path().join("missing.pem"), None).unwrap_err();
        assert!(e.contains("missing.pem"), "{e}");
    }

    #[test]
    fn the_token_file_is_private_and_compared_whole() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (t, file) = load_or_create_token(dir.path()).unwrap();
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_or_create_token(dir.path()).unwrap().0, t, "kept");
        let tok = ApiToken::new(&t, file.clone());
        assert!(tok.admits(Some(format!("Bearer {t}").as_bytes())));
        assert!(!tok.admits(Some(format!("Bearer {}", &t[1..]).as_bytes())));
        assert!(!tok.admits(Some(t.as_bytes())));
        assert!(!tok.admits(None));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create_token(dir.path()).unwrap_err();
        assert!(e.contains("chmod 600"), "{e}");
    }
}
