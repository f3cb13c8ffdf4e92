//! Issue 13.2, MSMQ message signatures with real processes: a signed message that arrives over
//! a real MS-MQQB session is stored and shows `"authenticated": true`; a tampered one, or one
//! signed with MD5 where weak hashes are not allowed, is refused with NACK_BAD_SIGNATURE (sent
//! only under PermitInsecureNacks) and kept in the dead-letter queue; a lior configured with
//! SigningCertificate and SigningKey signs what it sends, and the receiving lior verifies it.

mod common;

use common::have_proton;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{Client, Server};
use lior::security::{HashAlg, Signer};
use lior::wire::headers::{AckFlags, SecurityFlags, SecurityHeader};
use lior::wire::user::{QueueRef, UserMessage};
use lior::wire::{utf16z, Guid, Utf16};

const BIN: &str = env!("CARGO_BIN_EXE_lior");
/// Test-only key (tests/vectors/sig/README.md).
const SIGNER_KEY: &str = include_str!("vectors/sig/signer-key.pem");

fn cert_pem(cn: &str) -> String {
    let kp = rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(SIGNER_KEY, &rcgen::PKCS_RSA_SHA256)
        .expect("RSA key");
    let mut p = rcgen::CertificateParams::new(vec![cn.to_string()]).expect("params");
    p.distinguished_name
        .push(rcgen::DnType::CommonName, cn.to_string());
    p.self_signed(&kp).expect("certificate").pem()
}

const SENDER: Guid = Guid([0x5A; 16]);

/// One message to `orders` on 127.0.0.1, signed by `signer` when given, asking for
/// negative-arrival acks on the local `adminq`.
fn frame(id: u32, label: &str, signer: Option<&Signer>) -> Vec<u8> {
    frame_claiming(id, label, signer, false)
}

/// [`frame`], with SecurityHeader.Flags.AS = 3 ("verified as MSMQ 2.0") set by the sender
/// when `claim` (a SecurityHeader with a SID is added to an unsigned message for it).
fn frame_claiming(id: u32, label: &str, signer: Option<&Signer>, claim: bool) -> Vec<u8> {
    let dest = utf16z("TCP:127.0.0.1\\private$\\orders");
    let admin = utf16z("TCP:127.0.0.1\\private$\\adminq");
    let label = utf16z(label);
    let mut m = UserMessage::new(
        SENDER,
        id,
        QueueRef::Direct(Utf16(&dest)),
        Utf16(&label),
        b"the signed body",
    )
    .with_recoverable(true)
    .with_admin_queue(QueueRef::Direct(Utf16(&admin)), AckFlags(AckFlags::NA));
    let sig = signer.map(|s| s.signature(&mut m).expect("sign"));
    if let (Some(s), Some(sig)) = (signer, &sig) {
        s.attach(&mut m, sig);
    }
    let sid = [1u8, 1, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0];
    if claim {
        let mut sec = m.security.unwrap_or(SecurityHeader::with_sid(&sid));
        sec.flags = SecurityFlags(sec.flags.0 | (3 << SecurityFlags::AS_SHIFT));
        m.security = Some(sec);
        m.sync();
    }
    let mut f = vec![0u8; m.frame_len()];
    let n = m.encode(&mut f).expect("encode");
    f.truncate(n);
    f
}

/// `frame` with one byte of its body changed (the body is the last thing in the packet).
fn tampered(mut f: Vec<u8>) -> Vec<u8> {
    let at = f
        .windows(4)
        .rposition(|w| w == b"body")
        .expect("body in frame");
    f[at] = b'B';
    f
}

fn config(dir: &std::path::Path, text: &str) -> String {
    let p = dir.join("lior.toml");
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn signed_messages_are_authenticated_and_bad_signatures_refused_over_a_real_session() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(
        d.path(),
        "[Parameters.Security]\nPermitInsecureNacks = true\n",
    );
    let s = Server::start_with(&d.path().join("data"), &["--config", &cfg]);
    for q in ["orders", "adminq"] {
        s.cli(&["queue", "create", q]);
    }
    let sha512 = Signer::from_pem(&cert_pem("windows-app"), SIGNER_KEY, HashAlg::Sha512).unwrap();
    let md5 = Signer::from_pem(&cert_pem("old-app"), SIGNER_KEY, HashAlg::Md5).unwrap();

    let mut c = Client::connect(s.listen, SENDER);
    c.send(&frame(1, "good", Some(&sha512)), true, 1);
    c.send(&tampered(frame(2, "tampered", Some(&sha512))), true, 2);
    c.send(&frame(3, "weak", Some(&md5)), true, 3);
    c.send(&frame(4, "plain", None), true, 4);
    // A sender cannot claim "verified" (AS) itself, signed badly or not signed at all.
    c.send(&frame_claiming(5, "claims", None, true), true, 5);
    let forged = tampered(frame_claiming(6, "tampered", Some(&sha512), true));
    c.send(&forged, true, 6);
    c.wait_acked();

    let mut got = s.receive_until("orders", 3);
    got.sort_by_key(|m| m["label"].as_str().unwrap().to_string());
    let summary: Vec<(String, bool)> = got
        .iter()
        .map(|m| {
            (
                m["label"].as_str().unwrap().to_string(),
                m["authenticated"].as_bool().expect("authenticated field"),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("claims".to_string(), false),
            ("good".to_string(), true),
            ("plain".to_string(), false)
        ]
    );
    assert_eq!(got[1]["signature"], "MSMQ 2.0");

    let mut nacks: Vec<(String, String)> = s
        .receive_until("adminq", 3)
        .iter()
        .map(|m| {
            (
                m["label"].as_str().unwrap().to_string(),
                m["message_class"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    nacks.sort();
    assert_eq!(
        nacks,
        [
            ("tampered".to_string(), "NACK_BAD_SIGNATURE".to_string()),
            ("tampered".to_string(), "NACK_BAD_SIGNATURE".to_string()),
            ("weak".to_string(), "NACK_BAD_SIGNATURE".to_string()),
        ]
    );
    let dead = s.receive_all("deadletter");
    assert_eq!(dead.len(), 3, "refused messages are kept, not dropped");
    assert!(dead.iter().all(|m| m["authenticated"] == false));
}

#[test]
fn weak_hashes_pass_when_configured_and_nacks_wait_for_permit_insecure_nacks() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(
        d.path(),
        "[Parameters.Security]\nWeakHashAlgorithms = [\"MD5\"]\n",
    );
    let s = Server::start_with(&d.path().join("data"), &["--config", &cfg]);
    for q in ["orders", "adminq"] {
        s.cli(&["queue", "create", q]);
    }
    let md5 = Signer::from_pem(&cert_pem("old-app"), SIGNER_KEY, HashAlg::Md5).unwrap();
    let sha1 = Signer::from_pem(&cert_pem("old-app"), SIGNER_KEY, HashAlg::Sha1).unwrap();
    let mut c = Client::connect(s.listen, SENDER);
    c.send(&frame(1, "md5", Some(&md5)), true, 1);
    c.send(&frame(2, "sha1", Some(&sha1)), true, 2);
    c.send(&tampered(frame(3, "tampered", Some(&md5))), true, 3);
    c.wait_acked();
    let got = s.receive_until("orders", 1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["label"], "md5");
    assert_eq!(got[0]["authenticated"], true);
    // SHA-1 is not listed and the tampered one fails: both dead-lettered, and no NACK leaves
    // without PermitInsecureNacks (NACK_BAD_SIGNATURE tells a prober what the queue wants).
    assert_eq!(s.receive_all("deadletter").len(), 2);
    assert!(s.receive_all("adminq").is_empty());
}

/// Two queue managers standing for two machines: B at `ip_b` holds `orders`; A at `ip_a`
/// signs with SHA-256 (`SigningCertificate`, `SigningKey`) and reaches B; `extra_a` are more
/// `lior serve` arguments for A.
fn signing_pair(
    ip_a: &str,
    ip_b: &str,
    extra_a: &[&str],
) -> (Server, Server, [tempfile::TempDir; 2]) {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cb = config(db.path(), &format!("aliases = [\"{ip_b}\"]\n"));
    let b = Server::start_with(
        &db.path().join("data"),
        &["--config", &cb, "--listen", &format!("{ip_b}:0")],
    );
    b.cli(&["queue", "create", "orders"]);
    let cert = da.path().join("cert.pem");
    let key = da.path().join("key.pem");
    std::fs::write(&cert, cert_pem("lior-a")).unwrap();
    std::fs::write(&key, SIGNER_KEY).unwrap();
    let ca = config(
        da.path(),
        &format!(
            "aliases = [\"{ip_a}\"]\nremote_port = {}\n[Parameters.Security]\n\
             HashAlgorithm = \"SHA256\"\nSigningCertificate = {:?}\nSigningKey = {:?}\n",
            b.listen.port(),
            cert.to_str().unwrap(),
            key.to_str().unwrap()
        ),
    );
    let listen_a = format!("{ip_a}:0");
    let mut args = vec!["--config", ca.as_str(), "--listen", listen_a.as_str()];
    args.extend_from_slice(extra_a);
    let a = Server::start_with(&da.path().join("data"), &args);
    (a, b, [da, db])
}

#[test]
fn lior_signs_what_it_sends_and_the_receiving_lior_verifies_it() {
    let (a, b, _dirs) = signing_pair("127.0.0.41", "127.0.0.42", &[]);
    a.cli(&["queue", "create", "local"]);
    a.cli(&[
        "send",
        "DIRECT=TCP:127.0.0.42\\private$\\orders",
        "--label",
        "signed by a",
        "--body",
        "hello",
        "--recoverable",
    ]);
    let got = b.receive_until("orders", 1);
    assert_eq!(got.len(), 1, "the message crossed");
    assert_eq!(got[0]["label"], "signed by a");
    assert_eq!(got[0]["authenticated"], true, "{}", got[0]);
    assert_eq!(got[0]["signature"], "MSMQ 2.0");
    // A local send is signed and verified the same way.
    a.cli(&["send", "DIRECT=OS:.\\private$\\local", "--body", "here"]);
    let here = a.receive_all("local");
    assert_eq!(here.len(), 1);
    assert_eq!(here[0]["authenticated"], true);
}

#[test]
fn an_amqp_producers_message_to_another_machine_is_signed() {
    if !have_proton() {
        return;
    }
    let (a, b, _dirs) = signing_pair(
        "127.0.0.43",
        "127.0.0.44",
        &["--amqp-listen", "127.0.0.1:0"],
    );
    let url = format!("amqp://{}", a.amqp.expect("amqp="));
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/amqp/client.py"))
        .arg(&url)
        .args([
            "send",
            "DIRECT=TCP:127.0.0.44\\private$\\orders",
            "1",
            "durable",
            "over amqp",
        ])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = b.receive_until("orders", 1);
    assert_eq!(got.len(), 1, "nothing reached B");
    assert_eq!(got[0]["label"], "over amqp");
    assert_eq!(got[0]["authenticated"], true, "{}", got[0]);
}

#[test]
fn a_signing_key_that_is_not_the_certificates_stops_serve_with_the_keys_named() {
    let d = tempfile::tempdir().unwrap();
    let cert = d.path().join("cert.pem");
    let key = d.path().join("key.pem");
    std::fs::write(&cert, cert_pem("x")).unwrap();
    std::fs::write(&key, include_str!("vectors/sig/other-key.pem")).unwrap();
    let cfg = config(
        d.path(),
        &format!(
            "[Parameters.Security]\nSigningCertificate = {:?}\nSigningKey = {:?}\n",
            cert.to_str().unwrap(),
            key.to_str().unwrap()
        ),
    );
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(d.path().join("data"))
        .args(["--config", &cfg])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SigningCertificate") && err.contains("not the certificate's"),
        "{err}"
    );
}

fn decode(input: &[u8]) -> String {
    let mut child = Command::new(BIN)
        .arg("decode")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn decode_says_whether_the_signature_is_valid_invalid_or_absent() {
    let s = Signer::from_pem(&cert_pem("windows-app"), SIGNER_KEY, HashAlg::Sha512).unwrap();
    let text = decode(&frame(1, "good", Some(&s)));
    assert!(
        text.contains("signature: valid (MSMQ 2.0, SHA-512, certificate CN=windows-app"),
        "{text}"
    );
    let text = decode(&tampered(frame(1, "bad", Some(&s))));
    assert!(
        text.contains("signature: invalid: signature does not verify"),
        "{text}"
    );
    assert!(decode(&frame(1, "plain", None)).contains("signature: absent"));
}

/// `frame(id, label, signer)` whose SecurityHeader also claims the SID S-1-5-18 (the SID is
/// not among the MSMQ 2.0 signed fields, so the signature still verifies).
fn frame_with_sid(id: u32, label: &str, signer: Option<&Signer>) -> Vec<u8> {
    let f = frame(id, label, signer);
    let m = UserMessage::parse(&f).expect("parse");
    let sid = [1u8, 1, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0];
    let mut m = m;
    let mut sec = m.security.unwrap_or(SecurityHeader::with_sid(&sid));
    sec.sender_id = &sid;
    sec.flags = sec
        .flags
        .with_sender_id_type(lior::wire::headers::SenderIdType::SID);
    m.security = Some(sec);
    m.sync();
    let mut out = vec![0u8; m.frame_len()];
    let n = m.encode(&mut out).expect("encode");
    out.truncate(n);
    out
}

/// Issue 13: a queue granting send to one SID takes a message claiming that SID only when it is
/// signed with the certificate registered to the SID (`RegisteredCertificates`, lior's stand-in
/// for Active Directory): unsigned, or signed with some other certificate, the claim is not
/// trusted and the message is refused at the target.
#[test]
fn a_sid_is_trusted_only_when_signed_with_the_certificate_registered_to_it() {
    let d = tempfile::tempdir().unwrap();
    let registered = cert_pem("alice");
    let registered_der = pem_der(&registered);
    let cfg = config(
        d.path(),
        &format!(
            "[[Parameters.Security.RegisteredCertificates]]\nSid = \"S-1-5-18\"\nSha256 = \"{}\"\n",
            lior::security::sha256_hex(&registered_der)
        ),
    );
    let s = Server::start_with(&d.path().join("data"), &["--config", &cfg]);
    for q in ["orders", "adminq"] {
        s.cli(&["queue", "create", q]);
    }
    s.cli(&["queue", "revoke", "orders", "Everyone", "send"]);
    s.cli(&["queue", "revoke", "orders", "Anonymous", "send"]);
    s.cli(&["queue", "grant", "orders", "S-1-5-18", "send"]);
    let alice = Signer::from_pem(&registered, SIGNER_KEY, HashAlg::Sha512).unwrap();
    let other_key = include_str!("vectors/sig/other-key.pem");
    let kp = rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(other_key, &rcgen::PKCS_RSA_SHA256)
        .expect("RSA key");
    let mut p = rcgen::CertificateParams::new(vec!["mallory".to_string()]).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "mallory".to_string());
    let mallory_pem = p.self_signed(&kp).unwrap().pem();
    let mallory = Signer::from_pem(&mallory_pem, other_key, HashAlg::Sha512).unwrap();

    let mut c = Client::connect(s.listen, SENDER);
    c.send(&frame_with_sid(1, "alice signed", Some(&alice)), true, 1);
    c.send(&frame_with_sid(2, "unsigned claim", None), true, 2);
    c.send(
        &frame_with_sid(3, "mallory signed", Some(&mallory)),
        true,
        3,
    );
    c.wait_acked();
    let got = s.receive_until("orders", 1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["label"], "alice signed");
    assert_eq!(got[0]["authenticated"], true);
    assert_eq!(
        common::api::metric(&s, "lior_access_denied_total"),
        2,
        "the two untrusted claims are refused at the target"
    );
}

fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM body")
}
