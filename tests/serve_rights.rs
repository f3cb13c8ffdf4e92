//! Issue 13 items 1 and 3: queue rights checked at the target over a real MS-MQQB session and
//! over SRMP, and encrypted bodies refused (lior holds no key to decrypt them). A refused
//! message is acknowledged to the session (handled), not stored, counted in /metrics, and
//! dead-lettered with its class when its sender asked for negative journaling.

mod common;

use common::api::{get_json, metric};
use common::{Client, Server};
use lior::wire::headers::{AckFlags, SecurityFlags, SecurityHeader};
use lior::wire::user::{QueueRef, UserFlags, UserMessage};
use lior::wire::{utf16z, Guid, Utf16};

const ALICE: &str = "S-1-5-21-1004336348-1177238915-682003330-1001";
const BOB: &str = "S-1-5-21-1004336348-1177238915-682003330-1002";

/// The binary form of a SID string (MS-DTYP 2.4.2.2).
fn sid_bytes(text: &str) -> Vec<u8> {
    let parts: Vec<&str> = text.split('-').collect();
    let authority: u64 = parts[2].parse().unwrap();
    let subs: Vec<u32> = parts[3..].iter().map(|p| p.parse().unwrap()).collect();
    let mut b = vec![1u8, subs.len() as u8];
    b.extend_from_slice(&authority.to_be_bytes()[2..]);
    for s in subs {
        b.extend_from_slice(&s.to_le_bytes());
    }
    b
}

struct Msg<'a> {
    id: u32,
    queue: &'a str,
    sid: Option<&'a str>,
    encrypted: bool,
    /// Negative journaling (JN): the sender asks for a dead letter if it is refused.
    dead_letter: bool,
}

fn frame(source: Guid, m: &Msg<'_>) -> Vec<u8> {
    let dest = utf16z(&format!("OS:.\\private$\\{}", m.queue));
    let label = utf16z(&format!("msg {}", m.id));
    let admin = utf16z("OS:.\\private$\\adminq");
    let sid = m.sid.map(sid_bytes).unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    let mut u = UserMessage::new(
        source,
        m.id,
        QueueRef::Direct(Utf16(&dest)),
        Utf16(&label),
        b"secret body",
    )
    .with_recoverable(true)
    .with_sent_time(now)
    .with_time_to_reach_queue(3600)
    .with_admin_queue(QueueRef::Direct(Utf16(&admin)), AckFlags(AckFlags::NA));
    if m.sid.is_some() || m.encrypted {
        let mut sec = SecurityHeader::with_sid(&sid);
        if m.sid.is_none() {
            sec = SecurityHeader {
                flags: SecurityFlags::default(),
                ..sec
            };
        }
        sec.flags = sec.flags.with(SecurityFlags::EB, m.encrypted);
        u = u.with_security(sec);
    }
    u.user.flags = u.user.flags.with(UserFlags::JN, m.dead_letter);
    u.sync();
    let mut out = vec![0u8; u.frame_len()];
    let n = u.encode(&mut out).expect("encode");
    out.truncate(n);
    out
}

fn labels(msgs: &[serde_json::Value]) -> Vec<String> {
    let mut l: Vec<String> = msgs
        .iter()
        .map(|m| m["label"].as_str().unwrap().to_string())
        .collect();
    l.sort();
    l
}

#[test]
fn a_queue_granting_send_to_one_sid_refuses_other_senders_at_the_target() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path());
    s.cli(&["queue", "create", "secure"]);
    s.cli(&["queue", "create", "open"]);
    s.cli(&["queue", "create", "adminq"]);
    // Send only for Alice: taken from Everyone and Anonymous.
    s.cli(&["queue", "revoke", "secure", "Everyone", "send"]);
    s.cli(&["queue", "revoke", "secure", "Anonymous", "send"]);
    let shown = s.cli(&["queue", "grant", "secure", ALICE, "send"]);
    assert!(shown.contains(ALICE) && shown.contains("send"), "{shown}");
    // Kept in the catalog, shown by `lior queue show`.
    let v: serde_json::Value =
        serde_json::from_str(&s.cli(&["queue", "show", "secure", "--json"])).unwrap();
    let rights: Vec<(String, Vec<String>)> = v["rights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["principal"].as_str().unwrap().to_string(),
                e["rights"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        rights,
        [
            (
                "Everyone".to_string(),
                vec!["get-properties".to_string(), "get-permissions".to_string()]
            ),
            (ALICE.to_string(), vec!["send".to_string()]),
        ]
    );

    let source = Guid([0x41; 16]);
    let mut c = Client::connect(s.listen, source);
    let sends = [
        // Bob: no right. Alice: granted, but her SID is not authenticated (lior verifies no
        // signatures yet), so it is not trusted. No identity: Anonymous, no right.
        Msg {
            id: 1,
            queue: "secure",
            sid: Some(BOB),
            encrypted: false,
            dead_letter: false,
        },
        Msg {
            id: 2,
            queue: "secure",
            sid: Some(ALICE),
            encrypted: false,
            dead_letter: false,
        },
        Msg {
            id: 3,
            queue: "secure",
            sid: None,
            encrypted: false,
            dead_letter: false,
        },
        // Bob asks for a dead letter when refused.
        Msg {
            id: 4,
            queue: "secure",
            sid: Some(BOB),
            encrypted: false,
            dead_letter: true,
        },
        // The default rights: Everyone and Anonymous may send.
        Msg {
            id: 5,
            queue: "open",
            sid: Some(BOB),
            encrypted: false,
            dead_letter: false,
        },
        Msg {
            id: 6,
            queue: "open",
            sid: None,
            encrypted: false,
            dead_letter: false,
        },
        // An encrypted body: refused whatever the rights, dead-lettered when asked.
        Msg {
            id: 7,
            queue: "open",
            sid: Some(BOB),
            encrypted: true,
            dead_letter: false,
        },
        Msg {
            id: 8,
            queue: "open",
            sid: Some(BOB),
            encrypted: true,
            dead_letter: true,
        },
    ];
    for m in &sends {
        c.send(&frame(source, m), true, u64::from(m.id));
    }
    // Every message is acknowledged as handled: refused, not lost.
    c.wait_acked();
    assert_eq!(c.acked.len(), sends.len());

    assert_eq!(labels(&s.receive_all("open")), ["msg 5", "msg 6"]);
    assert!(
        s.receive_all("secure").is_empty(),
        "nothing refused is stored"
    );
    assert_eq!(metric(&s, "lior_access_denied_total"), 4);
    assert_eq!(metric(&s, "lior_encrypted_refused_total"), 2);
    // Dead letters only for the senders that asked (JN), each with its reason.
    let dl = get_json(&s, "/v1/queues/deadletter/messages/decoded?count=10");
    let mut reasons: Vec<(String, String)> = dl
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["label"].as_str().unwrap().to_string(),
                m["dead_letter_reason"]["class"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("msg 4".to_string(), "NACK_ACCESS_DENIED".to_string()),
            ("msg 8".to_string(), "NACK_BAD_ENCRYPTION".to_string()),
        ]
    );
    // PermitInsecureNacks is off: the NACKs asked for (NA) are not sent (they would leak
    // that the queue exists).
    assert!(s.receive_all("adminq").is_empty());

    // Granting Everyone send again opens the queue for the next message, in the same session.
    s.cli(&["queue", "grant", "secure", "Everyone", "send"]);
    let m = Msg {
        id: 9,
        queue: "secure",
        sid: Some(BOB),
        encrypted: false,
        dead_letter: false,
    };
    c.send(&frame(source, &m), true, 9);
    c.wait_acked();
    assert_eq!(labels(&s.receive_all("secure")), ["msg 9"]);
    assert_eq!(metric(&s, "lior_access_denied_total"), 4);
}

#[test]
fn insecure_nacks_are_sent_when_permitted_and_authenticate_refuses_with_bad_signature() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("lior.toml");
    std::fs::write(&cfg, "[Parameters.Security]\nPermitInsecureNacks = true\n").unwrap();
    let s = Server::start_with(&d.path().join("data"), &["--config", cfg.to_str().unwrap()]);
    s.cli(&["queue", "create", "secure"]);
    s.cli(&["queue", "create", "signed"]);
    s.cli(&["queue", "create", "adminq"]);
    s.cli(&["queue", "revoke", "secure", "Everyone", "send"]);
    let shown = s.cli(&["queue", "authenticate", "signed", "on"]);
    assert!(shown.contains("authenticate: yes"), "{shown}");
    let source = Guid([0x42; 16]);
    let mut c = Client::connect(s.listen, source);
    for m in [
        Msg {
            id: 1,
            queue: "secure",
            sid: Some(BOB),
            encrypted: false,
            dead_letter: false,
        },
        Msg {
            id: 2,
            queue: "signed",
            sid: Some(ALICE),
            encrypted: false,
            dead_letter: false,
        },
    ] {
        c.send(&frame(source, &m), true, u64::from(m.id));
    }
    c.wait_acked();
    let acks = s.receive_until("adminq", 2);
    let mut classes: Vec<&str> = acks
        .iter()
        .map(|m| m["message_class"].as_str().unwrap())
        .collect();
    classes.sort();
    assert_eq!(classes, ["NACK_ACCESS_DENIED", "NACK_BAD_SIGNATURE"]);
    assert!(s.receive_all("secure").is_empty());
    assert!(s.receive_all("signed").is_empty());
    assert_eq!(metric(&s, "lior_access_denied_total"), 2);
}

#[test]
fn srmp_messages_are_checked_at_the_target_too() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("lior.toml");
    std::fs::write(&cfg, "srmp_listen = \"127.0.0.1:0\"\n").unwrap();
    let s = Server::start_with(&d.path().join("data"), &["--config", cfg.to_str().unwrap()]);
    s.cli(&["queue", "create", "q"]);
    let post = |id: u32| {
        let envelope = format!(
            "<se:Envelope xmlns:se=\"http://schemas.xmlsoap.org/soap/envelope/\"><se:Header>\
             <path xmlns=\"http://schemas.xmlsoap.org/rp/\"><action>MSMQ:srmp {id}</action>\
             <to>http://localhost/msmq/private$/q</to>\
             <id>uuid:{id}@00000000-0000-0000-0000-000000000000</id></path></se:Header>\
             <se:Body/></se:Envelope>"
        );
        let body = format!(
            "--MSMQ\r\nContent-Type: text/xml\r\n\r\n{envelope}\r\n--MSMQ\r\nContent-Type: \
             application/octet-stream\r\nContent-Id: body@1\r\n\r\nhello\r\n--MSMQ--\r\n"
        );
        let url = format!("http://{}/msmq/private$/q", s.srmp.unwrap());
        match ureq::post(&url)
            .set(
                "Content-Type",
                "multipart/related; boundary=MSMQ; type=text/xml",
            )
            .set("SOAPAction", "\"MSMQMessage\"")
            .send_string(&body)
        {
            Ok(r) => (r.status(), String::new()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
            Err(e) => panic!("{e}"),
        }
    };
    // An SRMP sender has no SID: Anonymous, who may send by default.
    assert_eq!(post(1).0, 200);
    s.cli(&["queue", "revoke", "q", "Anonymous", "send"]);
    let (code, text) = post(2);
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("NACK_ACCESS_DENIED"), "{text}");
    assert_eq!(labels(&s.receive_all("q")), ["srmp 1"]);
    assert_eq!(metric(&s, "lior_access_denied_total"), 1);
}

#[test]
fn rights_changes_persist_and_bad_ones_are_refused_with_the_reason() {
    let d = tempfile::tempdir().unwrap();
    let mut s = Server::start(d.path());
    s.cli(&["queue", "create", "orders"]);
    s.cli(&[
        "queue",
        "grant",
        "orders",
        "s-1-5-21-7-8-9-1001",
        "receive",
        "MQSEC_WRITE_MESSAGE",
    ]);
    let fail = |args: &[&str]| {
        let out = std::process::Command::new(common::BIN)
            .args(args)
            .args(["--api", &s.api])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    assert!(fail(&["queue", "grant", "orders", "bob", "send"]).contains("unknown principal"));
    assert!(fail(&["queue", "grant", "orders", "Everyone", "write"]).contains("unknown right"));
    assert!(fail(&["queue", "grant", "nosuch", "Everyone", "send"]).contains("no queue named"));
    s.kill9();
    let s = Server::start(d.path());
    let shown = s.cli(&["queue", "show", "orders"]);
    assert!(
        shown.contains("S-1-5-21-7-8-9-1001  send, receive"),
        "kept across a restart: {shown}"
    );
    assert!(
        shown.contains("transactional: no") && shown.contains("partition: "),
        "{shown}"
    );
}
