//! SRMP (MSMQ over HTTP) into `lior serve`, and hardened mode: no raw listener, only SRMP in,
//! non-HTTP outgoing queues locked, local queues working.

mod common;

use common::Server;

const EXAMPLE_4_1: &str = "--MSMQ - SOAP boundary, 53287\r\nContent-Type: text/xml; charset=UTF-8\r\nContent-Length: 619\r\n\r\n<se:Envelope xmlns:se=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns=\"http://schemas.xmlsoap.org/srmp/\"><se:Header><path xmlns=\"http://schemas.xmlsoap.org/rp/\" se:mustUnderstand=\"1\"><action>MSMQ:mqsender label</action><to>http://machine2/msmq/private$/simpleq</to><id>uuid:1@00000000-0000-0000-0000-000000000000</id></path><properties se:mustUnderstand=\"1\"><expiresAt>20380119T031407</expiresAt></properties><services><durable/></services></se:Header><se:Body></se:Body></se:Envelope>--MSMQ - SOAP boundary, 53287\r\nContent-Type: application/octet-stream\r\nContent-Length: 13\r\nContent-Id: body@ff3af301-3196-497a-a918-72147c871a13\r\n\r\nFirst Message--MSMQ - SOAP boundary, 53287--";
const CT: &str = "multipart/related; boundary=\"MSMQ - SOAP boundary, 53287\"; type=text/xml";

fn post(server: &Server, path: &str, body: &str) -> u16 {
    let url = format!("http://{}{path}", server.srmp.expect("an SRMP endpoint"));
    match ureq::post(&url)
        .set("Content-Type", CT)
        .set("SOAPAction", "\"MSMQMessage\"")
        .send_string(body)
    {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn hardened_mode_takes_srmp_only_and_locks_raw_outgoing_queues() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("lior.toml");
    std::fs::write(
        &cfg,
        "srmp_listen = \"127.0.0.1:0\"\n[Parameters]\nHardened_MSMQ = true\n",
    )
    .unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );
    assert_eq!(
        server.listen.port(),
        0,
        "no raw MS-MQQB listener in hardened mode"
    );
    server.cli(&["queue", "create", "simpleq"]);

    // The spec's SRMP message (MC-MQSRM 4.1, made durable) is stored and received.
    assert_eq!(post(&server, "/msmq/private$/simpleq", EXAMPLE_4_1), 200);
    let got = server.receive_all("simpleq");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["label"], "mqsender label");
    assert_eq!(got[0]["class"], "recoverable");
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD
        .decode(got[0]["body_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(body, b"First Message");
    // The spec's example as printed (sent 2007-06-08, expiresAt a day later): MC-MQSRM
    // 3.1.5.1.4 checks the lifetime while sending, not on receipt, so it is stored, not
    // dead-lettered as expired (issue 12, item 2).
    let dated = EXAMPLE_4_1
        .replace(
            "<expiresAt>20380119T031407</expiresAt>",
            "<expiresAt>20070609T164419</expiresAt><sentAt>20070608T164419</sentAt>",
        )
        .replace("uuid:1@", "uuid:2@");
    assert_ne!(dated, EXAMPLE_4_1);
    assert_eq!(post(&server, "/msmq/private$/simpleq", &dated), 200);
    assert_eq!(
        server.receive_all("simpleq").len(),
        1,
        "stored, whatever its dates"
    );
    assert!(server.receive_all("deadletter").is_empty());
    // Unknown queue, malformed body: 400, and nothing stored.
    assert_eq!(post(&server, "/msmq/private$/nosuch", EXAMPLE_4_1), 400);
    assert_eq!(
        post(
            &server,
            "/msmq/private$/simpleq",
            "--MSMQ - SOAP boundary, 53287\r\n\r\n<se:Envelope"
        ),
        400
    );

    // A raw (non-HTTP) remote destination is accepted into a locked outgoing queue.
    let out = server.cli(&[
        "send",
        "DIRECT=TCP:127.0.0.9\\private$\\q",
        "--body",
        "kept",
    ]);
    assert!(out.contains("outgoing"), "{out}");
    // The answer says the message is held, and why (issue 12, item 5).
    assert!(out.contains("locked: hardened mode"), "{out}");
    // Local queues keep working.
    let out = server.cli(&[
        "send",
        "DIRECT=OS:localhost\\private$\\simpleq",
        "--body",
        "local",
    ]);
    assert!(out.contains("local queue simpleq"), "{out}");
    assert_eq!(server.receive_all("simpleq").len(), 1);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let list: serde_json::Value = serde_json::from_str(
        &ureq::get(&format!("http://{}/v1/outgoing", server.api))
            .call()
            .unwrap()
            .into_string()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(list[0]["messages"], 1, "the message waits, locked: {list}");
    assert_eq!(list[0]["state"], "locked", "{list}");
}
