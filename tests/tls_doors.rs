//! TLS on every door of a real `lior serve`, with real clients: curl over HTTPS to the SRMP
//! endpoint (server certificate, then client certificates required) and to the API (bearer
//! token: 401 without it; the `lior` CLI with `--api https://... --api-ca --api-token-file`),
//! the API refusing to leave loopback without TLS, python-qpid-proton over AMQPS
//! (`tests/amqp/tls_client.py`, proton's SSLDomain with the test CA) sending and receiving, and
//! garbage on the AMQPS port closing that connection while the server keeps serving.
//!
//! Every certificate is made here with rcgen (a CA, a server certificate for `localhost` and
//! 127.0.0.1, a client certificate) in the test's temporary directory.
//!
//! curl and python-qpid-proton (with SSL) are installed by `.ci/run`; without them these tests
//! fail with a clear message under `CI=true` and skip loudly elsewhere.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Server, BIN};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/amqp/tls_client.py");

/// The SRMP example of MC-MQSRM 4.1 (as tests/serve_srmp.rs sends it), to queue `simpleq`.
const EXAMPLE_4_1: &str = "--MSMQ - SOAP boundary, 53287\r\nContent-Type: text/xml; charset=UTF-8\r\nContent-Length: 619\r\n\r\n<se:Envelope xmlns:se=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns=\"http://schemas.xmlsoap.org/srmp/\"><se:Header><path xmlns=\"http://schemas.xmlsoap.org/rp/\" se:mustUnderstand=\"1\"><action>MSMQ:mqsender label</action><to>http://machine2/msmq/private$/simpleq</to><id>uuid:1@00000000-0000-0000-0000-000000000000</id></path><properties se:mustUnderstand=\"1\"><expiresAt>20380119T031407</expiresAt></properties><services><durable/></services></se:Header><se:Body></se:Body></se:Envelope>--MSMQ - SOAP boundary, 53287\r\nContent-Type: application/octet-stream\r\nContent-Length: 13\r\nContent-Id: body@ff3af301-3196-497a-a918-72147c871a13\r\n\r\nFirst Message--MSMQ - SOAP boundary, 53287--";
const CT: &str =
    "Content-Type: multipart/related; boundary=\"MSMQ - SOAP boundary, 53287\"; type=text/xml";

fn required(what: &str, ok: bool) -> bool {
    if !ok {
        let msg = format!("{what} is not installed (bash .ci/run installs it)");
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED (loudly): {msg}");
    }
    ok
}

fn have_curl() -> bool {
    let ok = Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("SSL"));
    required("curl (with TLS)", ok)
}

fn have_proton_ssl() -> bool {
    let ok = Command::new("python3")
        .args([
            "-c",
            "import proton, proton.utils, sys; sys.exit(0 if proton.SSL.present() else 1)",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    required("python3 with python-qpid-proton built with SSL", ok)
}

/// The test PKI, written as PEM files into `dir`.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// A CA that signed nothing here.
    other_ca: PathBuf,
}

fn make_ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, name.to_string());
    (p.self_signed(&key).unwrap(), key)
}

fn pki(dir: &Path) -> Pki {
    let (ca, ca_key) = make_ca("lior test CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let ckey = rcgen::KeyPair::generate().unwrap();
    let mut cp = rcgen::CertificateParams::new(vec!["client.test".into()]).unwrap();
    cp.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let ccert = cp.signed_by(&ckey, &ca, &ca_key).unwrap();
    let (other, _) = make_ca("some other CA");
    let p = Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
        other_ca: dir.join("other-ca.pem"),
    };
    std::fs::write(&p.ca, ca.pem()).unwrap();
    std::fs::write(&p.cert, cert.pem()).unwrap();
    std::fs::write(&p.key, key.serialize_pem()).unwrap();
    std::fs::write(&p.client_cert, ccert.pem()).unwrap();
    std::fs::write(&p.client_key, ckey.serialize_pem()).unwrap();
    std::fs::write(&p.other_ca, other.pem()).unwrap();
    p
}

fn start(dir: &Path, toml: &str) -> Server {
    let cfg = dir.join("lior.toml");
    std::fs::write(&cfg, toml).unwrap();
    let data = dir.join("data");
    Server::start_with(&data, &["--config", cfg.to_str().unwrap()])
}

fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("run curl")
}

/// curl's HTTP status (`-w %{http_code}`), 0 when no answer came.
fn curl_status(args: &[&str]) -> (u16, String) {
    let out = curl(&[&["-o", "/dev/null", "-w", "%{http_code}"], args].concat());
    let code = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (code, String::from_utf8_lossy(&out.stderr).to_string())
}

fn srmp_post(srmp: std::net::SocketAddr, body: &Path, extra: &[&str]) -> (u16, String) {
    let url = format!("https://localhost:{}/msmq/private$/simpleq", srmp.port());
    let resolve = format!("localhost:{}:127.0.0.1", srmp.port());
    let data = format!("@{}", body.display());
    let mut args = vec![
        "--resolve",
        &resolve,
        "--data-binary",
        &data,
        "-H",
        CT,
        "-H",
        "SOAPAction: \"MSMQMessage\"",
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    curl_status(&args)
}

#[test]
fn srmp_over_https_takes_a_message_from_curl_and_plain_http_is_not_served() {
    if !have_curl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let server = start(
        dir.path(),
        &format!(
            "srmp_listen = \"127.0.0.1:0\"\nsrmp_tls_cert = {:?}\nsrmp_tls_key = {:?}\n",
            p.cert, p.key
        ),
    );
    server.cli(&["queue", "create", "simpleq"]);
    let body = dir.path().join("msg.mime");
    std::fs::write(&body, EXAMPLE_4_1).unwrap();
    let srmp = server.srmp.expect("srmp=");
    // A client that connects and never starts its handshake holds up nobody else.
    let _silent = TcpStream::connect(srmp).unwrap();
    let (code, err) = srmp_post(srmp, &body, &["--cacert", p.ca.to_str().unwrap()]);
    assert_eq!(code, 200, "curl over HTTPS: {err}");
    let got = server.receive_all("simpleq");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["label"], "mqsender label", "{got:?}");
    // A client that does not trust the CA refuses the server; plain HTTP gets no answer.
    let (code, err) = srmp_post(srmp, &body, &["--cacert", p.other_ca.to_str().unwrap()]);
    assert_eq!(code, 0, "an untrusted server certificate is refused: {err}");
    let (code, _) = curl_status(&[
        "--data-binary",
        "x",
        &format!("http://127.0.0.1:{}/msmq/private$/simpleq", srmp.port()),
    ]);
    assert_ne!(code, 200, "plain HTTP on the HTTPS endpoint stores nothing");
    assert!(server.receive_all("simpleq").is_empty());
    // The server still serves over TLS after both.
    let (code, err) = srmp_post(srmp, &body, &["--cacert", p.ca.to_str().unwrap()]);
    assert_eq!(code, 200, "{err}");
    // The untrusted client's abort and the plain request (and the silent client, should it
    // have timed out already).
    let failures = metric(&server, "lior_tls_handshake_failures_total{door=\"srmp\"}");
    assert!(failures >= 2, "handshake failures counted: {failures}");
}

#[test]
fn srmp_with_a_client_ca_requires_a_client_certificate() {
    if !have_curl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let server = start(
        dir.path(),
        &format!(
            "srmp_listen = \"127.0.0.1:0\"\nsrmp_tls_cert = {:?}\nsrmp_tls_key = {:?}\n\
             srmp_tls_client_ca = {:?}\n",
            p.cert, p.key, p.ca
        ),
    );
    server.cli(&["queue", "create", "simpleq"]);
    let body = dir.path().join("msg.mime");
    std::fs::write(&body, EXAMPLE_4_1).unwrap();
    let srmp = server.srmp.expect("srmp=");
    let ca = p.ca.to_str().unwrap();
    let (code, _) = srmp_post(srmp, &body, &["--cacert", ca]);
    assert_eq!(code, 0, "no client certificate: no answer");
    assert!(server.receive_all("simpleq").is_empty());
    let (code, err) = srmp_post(
        srmp,
        &body,
        &[
            "--cacert",
            ca,
            "--cert",
            p.client_cert.to_str().unwrap(),
            "--key",
            p.client_key.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 200, "with the client certificate: {err}");
    assert_eq!(server.receive_all("simpleq").len(), 1);
}

fn lior(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run lior")
}

#[test]
fn the_api_over_https_needs_its_bearer_token_and_the_cli_sends_it() {
    if !have_curl() {
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let server = start(
        dir.path(),
        &format!("api_tls_cert = {:?}\napi_tls_key = {:?}\n", p.cert, p.key),
    );
    let token_file = dir.path().join("data").join("api-token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the token file is private");
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(token.len() >= 32);
    let port = server.api.rsplit(':').next().unwrap().to_string();
    // A client that connects and never starts its handshake holds up nobody else.
    let _silent = TcpStream::connect(server.api.as_str()).unwrap();
    let base = format!("https://localhost:{port}");
    let resolve = format!("localhost:{port}:127.0.0.1");
    let ca = p.ca.to_str().unwrap();
    let status = format!("{base}/v1/status");
    let (code, err) = curl_status(&["--resolve", &resolve, "--cacert", ca, &status]);
    assert_eq!(code, 401, "no token: {err}");
    let wrong = "Authorization: Bearer 0000000000000000000000000000000000";
    let (code, _) = curl_status(&["--resolve", &resolve, "--cacert", ca, "-H", wrong, &status]);
    assert_eq!(code, 401, "a wrong token");
    let auth = format!("Authorization: Bearer {token}");
    let (code, err) = curl_status(&["--resolve", &resolve, "--cacert", ca, "-H", &auth, &status]);
    assert_eq!(code, 200, "with the token: {err}");
    // The console page itself holds no data and loads without the token (its script sends it).
    let (code, _) = curl_status(&["--resolve", &resolve, "--cacert", ca, &format!("{base}/")]);
    assert_eq!(code, 200);
    let (code, _) = curl_status(&[
        "--resolve",
        &resolve,
        "--cacert",
        ca,
        &format!("{base}/metrics"),
    ]);
    assert_eq!(code, 401, "/metrics needs the token");
    // Plain HTTP on the HTTPS API is not served.
    let (code, _) = curl_status(&[&format!("http://127.0.0.1:{port}/v1/status")]);
    assert_ne!(code, 200);

    // The CLI: --api https://..., --api-ca, --api-token-file.
    let api = format!("https://127.0.0.1:{port}");
    let tf = token_file.to_str().unwrap();
    let with = |args: &[&str]| -> Output {
        lior(
            &[
                args,
                &["--api", &api, "--api-ca", ca, "--api-token-file", tf],
            ]
            .concat(),
        )
    };
    let out = with(&["queue", "create", "orders"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = with(&[
        "send",
        "DIRECT=OS:localhost\\private$\\orders",
        "--body",
        "over https",
        "--label",
        "tls",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = with(&["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = with(&["receive", "orders", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(m["label"], "tls", "{m}");
    // Without the token file the CLI says what is missing.
    let out = lior(&[
        "status",
        "--api",
        &api,
        "--api-ca",
        ca,
        "--api-token-file",
        dir.path().join("nothing").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("token"), "{err}");
    let out = Command::new(BIN)
        .args(["status", "--api", &api, "--api-ca", ca])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("401") && err.contains("--api-token-file"),
        "{err}"
    );
    // Without the CA the server's certificate is not trusted.
    let out = lior(&["status", "--api", &api, "--api-token-file", tf]);
    assert!(!out.status.success());
}

#[test]
fn an_api_beyond_loopback_without_tls_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--api",
            "0.0.0.0:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("lior serve started with a non-loopback API and no TLS");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "it must not start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a loopback address")
            && err.contains("api_tls_cert")
            && err.contains("api-token"),
        "{err}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "no ready line"
    );
}

fn proton(url: &str, ca: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(SCRIPT)
        .arg(url)
        .arg(ca)
        .args(args)
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "tls_client.py {args:?} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn amqps_server(dir: &Path, p: &Pki) -> (Server, String) {
    let server = start(
        dir,
        &format!(
            "[amqp]\nenabled = true\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\n\
             tls_cert = {:?}\ntls_key = {:?}\n",
            p.cert, p.key
        ),
    );
    let url = format!(
        "amqps://{}",
        server.amqps.expect("the ready line names amqps=")
    );
    (server, url)
}

fn metric(server: &Server, name: &str) -> u64 {
    let m = ureq::get(&format!("http://{}/metrics", server.api))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    m.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {m}"))
}

#[test]
fn proton_sends_and_receives_over_amqps_with_the_test_ca() {
    if !have_proton_ssl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let (server, url) = amqps_server(dir.path(), &p);
    server.cli(&["queue", "create", "orders"]);
    let r = proton(&url, &p.ca, &["send", "orders", "hello over amqps"]);
    assert_eq!(r["sent"], "hello over amqps");
    // The message is an MSMQ message like any other.
    let peek = server.cli(&["peek", "orders", "--json"]);
    assert!(peek.contains("over tls"), "{peek}");
    let r = proton(&url, &p.ca, &["receive", "orders"]);
    assert_eq!(r["body"], "hello over amqps", "{r}");
    assert_eq!(r["subject"], "over tls", "{r}");
    assert!(server.receive_all("orders").is_empty(), "accepted: removed");
    // A client that does not trust the CA fails its handshake; the server counts it.
    let r = proton(&url, &p.other_ca, &["untrusted", "orders"]);
    assert!(r["error"].is_string(), "{r}");
    assert!(server.receive_all("orders").is_empty());
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&server, "lior_amqp_tls_errors_total") < 1 {
        assert!(
            Instant::now() < deadline,
            "the refused handshake is counted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads until the server closes the connection (Ok) or 15 s pass (Err).
fn wait_closed(s: &mut TcpStream) -> Result<usize, String> {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut got = 0;
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Ok(got), // reset: closed too
        }
        if Instant::now() > deadline {
            return Err(format!("still open after 15 s ({got} bytes read)"));
        }
    }
}

#[test]
fn garbage_on_the_amqps_port_closes_that_connection_and_the_server_still_serves() {
    if !have_proton_ssl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let (server, url) = amqps_server(dir.path(), &p);
    server.cli(&["queue", "create", "orders"]);
    let addr = server.amqps.unwrap();
    // A connection that stays open meanwhile (a handshake in progress elsewhere is untouched).
    let mut idle = TcpStream::connect(addr).unwrap();
    // Pseudo-random bytes (xorshift, fixed seed), then an AMQP header sent in clear, then a
    // TLS record header announcing an oversized record.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let cases: [&[u8]; 3] = [&random, b"AMQP\x03\x01\x00\x00", b"\x16\x03\x01\xff\xff"];
    for (i, bytes) in cases.iter().enumerate() {
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(bytes);
        wait_closed(&mut s).unwrap_or_else(|e| panic!("case {i}: {e}"));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&server, "lior_amqp_tls_errors_total") < 3 {
        assert!(
            Instant::now() < deadline,
            "each garbage connection is counted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The idle connection was not closed by the others (well before the AMQP open time-out).
    idle.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut b = [0u8; 1];
    match idle.read(&mut b) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("the idle connection was touched: {other:?}"),
    }
    // The server still serves AMQPS.
    let r = proton(&url, &p.ca, &["send", "orders", "after the garbage"]);
    assert_eq!(r["sent"], "after the garbage");
    let r = proton(&url, &p.ca, &["receive", "orders"]);
    assert_eq!(r["body"], "after the garbage", "{r}");
}
