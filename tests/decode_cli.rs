//! `lior decode` as a user runs it: the spec's frames, streams, hex dumps and broken input.

use std::io::Write;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_lior");

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/vectors/mqqb-4.1/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn decode(input: &[u8], args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .arg("decode")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn frame7_shows_destination_label_body_and_sender_sid() {
    let (code, text, _) = decode(&vector("frame7-user-message-express.bin"), &[]);
    assert_eq!(code, 0);
    for want in [
        "DirectName: OS:a04bm02\\q",
        "Label: mqsender label",
        "MessageSize: 2000",
        "SenderId (SID): S-1-5-21-3181267629-1039849782-3663111779-1000",
        "acks requested: PA, PR, NA, NR",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let (code, json, _) = decode(&vector("frame7-user-message-express.bin"), &["--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["MessagePropertiesHeader"]["Label"], "mqsender label");
    assert_eq!(
        v["UserHeader"]["DestinationQueue"]["format_name"],
        "DIRECT=OS:a04bm02\\q"
    );
}

#[test]
fn a_whole_session_stream_decodes_packet_by_packet() {
    let mut stream = Vec::new();
    for f in [
        "frame3-establish-connection-request.bin",
        "frame4-establish-connection-response.bin",
        "frame5-connection-parameters-request.bin",
        "frame6-connection-parameters-response.bin",
        "frame7-user-message-express.bin",
        "frame8-session-ack.bin",
    ] {
        stream.extend(vector(f));
    }
    let (code, json, _) = decode(&stream, &["--json"]);
    assert_eq!(code, 0);
    let kinds: Vec<String> = json
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["packet"].to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "\"EstablishConnection\"",
            "\"EstablishConnection\"",
            "\"ConnectionParameters\"",
            "\"ConnectionParameters\"",
            "\"UserMessage\"",
            "\"SessionAck\""
        ]
    );
}

#[test]
fn hex_dumps_are_accepted() {
    let hex: String = vector("frame8-session-ack.bin")
        .chunks(16)
        .enumerate()
        .map(|(i, c)| {
            let bytes: Vec<String> = c.iter().map(|b| format!("{b:02X}")).collect();
            format!("{:04X}  {}\n", i * 16, bytes.join(" "))
        })
        .collect();
    let (code, text, _) = decode(hex.as_bytes(), &[]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("AckSequenceNumber: 1"));
    let ping = vector("frame1-ping-request.bin");
    let (code, text, _) = decode(&ping, &[]);
    assert_eq!(code, 0);
    assert!(text.contains("Cookie: 4"));
}

#[test]
fn malformed_input_names_the_field_and_offset_and_fails() {
    let mut f7 = vector("frame7-user-message-express.bin");
    // LabelLength larger than the packet can hold.
    f7[0x89] = 0xFA;
    let (code, _, err) = decode(&f7, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("offset"), "{err}");
    // A good packet followed by a truncated one: the first is printed, then the error.
    let mut s = vector("frame8-session-ack.bin");
    s.extend_from_slice(&vector("frame5-connection-parameters-request.bin")[..20]);
    let (code, text, err) = decode(&s, &[]);
    assert_eq!(code, 1);
    assert!(text.contains("SessionAck"));
    assert!(err.contains("packet 1 at input offset 36"), "{err}");
    let (code, _, err) = decode(b"", &[]);
    assert_eq!(code, 0, "{err}");
}

/// A UserMessage with the AH flag whose CompoundMessageHeader is followed by the 12-byte MQRR
/// ExtensionHeader (the fuzz seed; built by tests/wire_extension.rs, which checks it).
#[test]
fn ah_message_with_an_extension_header_shows_the_header() {
    let seed = std::fs::read(format!(
        "{}/tests/fuzz/corpus/parse_packet/seed-ah-compound-extension.bin",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let (code, text, err) = decode(&seed, &[]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "CompoundMessageHeader:",
        "ExtensionHeader:",
        "HeaderSize: 12",
        "RemainingHeadersSize: 0",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let (code, json, err) = decode(&seed, &["--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["ExtensionHeader"]["HeaderSize"], 12);
    assert_eq!(v["ExtensionHeader"]["RemainingHeadersSize"], 0);
    assert_eq!(v["ExtensionHeader"]["Flags"]["value"], "0x00");
    // HeaderSize past the packet: refused, naming the field.
    let mut lying = seed.clone();
    let at = lying.len() - 12;
    lying[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let (code, _, err) = decode(&lying, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("ExtensionHeader.HeaderSize"), "{err}");
}
