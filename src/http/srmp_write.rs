//! Writes SRMP (MC-MQSRM) messages: the SOAP envelope, the MIME multipart/related body the
//! message travels in, and the single-part receipts (delivery, commitment, stream). The layout
//! follows the spec's section 4 examples: envelope part first (`text/xml; charset=UTF-8`), then
//! the body part (`application/octet-stream`, `Content-Id: body@<GUID>`); receipts carry no MIME
//! attachment (MC-MQSRM 2.2.2). Sans-IO: bytes out, no socket; the reader is `http::srmp`.

use std::fmt::Write as _;

use quick_xml::escape::escape;

use crate::wire::Guid;

/// A body part whose bytes contain a candidate boundary gets another one, at most this often.
const BOUNDARY_TRIES_MAX: u32 = 64;

/// What a receiver is asked to send back (MC-MQSRM 2.2.5.2.2, 2.2.5.2.3).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReceiptRequests {
    /// `<deliveryReceiptRequest><sendTo>`: an HTTP(S) URI of the admin queue.
    pub delivery_to: Option<String>,
    /// `<commitmentReceiptRequest><sendTo>`, with `<positiveOnly/>` / `<negativeOnly/>`.
    pub commitment_to: Option<String>,
    pub commitment_positive: bool,
    pub commitment_negative: bool,
}

/// The `<stream>` element of an exactly-once message (MC-MQSRM 2.2.5.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamOut {
    /// The sending QM's GUID and the 64-bit sequence identifier: `uid:<guid>\<u64>`.
    pub qm: Guid,
    pub sequence: u64,
    /// Position in the stream, from 1.
    pub current: u64,
    /// The preceding message when the sender skipped some (`<previous>`).
    pub previous: Option<u64>,
    /// First message of the stream only: `<start><sendReceiptsTo>` (and its `expiresAt`).
    pub start_receipts_to: Option<String>,
}

/// One message to write, as the envelope names its fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrmpOut<'a> {
    /// `<to>`: `http://host/msmq/private$/q` (or https).
    pub to: &'a str,
    /// The label (`<action>MSMQ:label</action>`).
    pub label: &'a str,
    /// `<id>uuid:<index>@<qm>`; the same QM GUID goes into `<SourceQmGuid>`.
    pub qm: Guid,
    pub index: u64,
    /// Unix seconds: `<sentAt>` and `<expiresAt>` (TimeToReachQueue as an instant).
    pub sent_at: u32,
    pub expires_at: u32,
    /// `<TTrq>` of the Msmq element, when the sender has one distinct from expiresAt.
    pub ttrq: Option<u32>,
    pub durable: bool,
    pub priority: u8,
    pub class: u16,
    pub app: u32,
    pub body_type: u32,
    pub correlation: Option<[u8; 20]>,
    pub journal: bool,
    pub dead_letter: bool,
    /// `<rev><via>`: the response queue, as a URI or `MSMQ:` format name.
    pub response: Option<&'a str>,
    pub receipts: ReceiptRequests,
    pub stream: Option<StreamOut>,
    pub body: &'a [u8],
}

/// A written request body and the Content-Type header that goes with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub content_type: String,
    pub body: Vec<u8>,
}

/// `YYYYMMDDThhmmss` in UTC (MC-MQSRM 2.2.1.2), the inverse of `srmp::parse_srmp_time`.
pub fn format_srmp_time(unix: u32) -> String {
    let secs = i64::from(unix);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn open_envelope(out: &mut String) {
    out.push_str(
        "<se:Envelope xmlns:se=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         xmlns=\"http://schemas.xmlsoap.org/srmp/\"><se:Header>",
    );
}

fn close_envelope(out: &mut String) {
    out.push_str("</se:Header><se:Body></se:Body></se:Envelope>");
}

fn path(out: &mut String, action: &str, to: &str, id: &str, via: Option<&str>) {
    let _ = write!(
        out,
        "<path xmlns=\"http://schemas.xmlsoap.org/rp/\" se:mustUnderstand=\"1\">\
         <action>{}</action><to>{}</to><id>{}</id>",
        escape(action),
        escape(to),
        escape(id)
    );
    if let Some(v) = via {
        let _ = write!(out, "<rev><via>{}</via></rev>", escape(v));
    }
    out.push_str("</path>");
}

fn message_id(index: u64, qm: Guid) -> String {
    format!("uuid:{index}@{}", guid_text(qm))
}

/// A GUID as SRMP writes it: lower case, no braces (MC-MQSRM 2.2.1.1).
pub fn guid_text(g: Guid) -> String {
    g.to_uuid().hyphenated().to_string()
}

/// The SOAP envelope of a message (one line, as Windows writes it).
pub fn envelope(m: &SrmpOut<'_>) -> String {
    let mut out = String::with_capacity(1024);
    open_envelope(&mut out);
    path(
        &mut out,
        &format!("MSMQ:{}", m.label),
        m.to,
        &message_id(m.index, m.qm),
        m.response,
    );
    let _ = write!(
        out,
        "<properties se:mustUnderstand=\"1\"><expiresAt>{}</expiresAt><sentAt>{}</sentAt></properties>",
        format_srmp_time(m.expires_at),
        format_srmp_time(m.sent_at)
    );
    let r = &m.receipts;
    // A stream message MUST be durable (2.2.5.2.1).
    let durable = m.durable || m.stream.is_some();
    if durable || r.delivery_to.is_some() || r.commitment_to.is_some() {
        out.push_str("<services se:mustUnderstand=\"1\">");
        if durable {
            out.push_str("<durable/>");
        }
        if let Some(to) = &r.delivery_to {
            let _ = write!(
                out,
                "<deliveryReceiptRequest><sendTo>{}</sendTo></deliveryReceiptRequest>",
                escape(to.as_str())
            );
        }
        if let Some(to) = &r.commitment_to {
            let _ = write!(
                out,
                "<commitmentReceiptRequest><sendTo>{}</sendTo>",
                escape(to.as_str())
            );
            if r.commitment_negative {
                out.push_str("<negativeOnly/>");
            }
            if r.commitment_positive {
                out.push_str("<positiveOnly/>");
            }
            out.push_str("</commitmentReceiptRequest>");
        }
        out.push_str("</services>");
    }
    if let Some(s) = &m.stream {
        let _ = write!(
            out,
            "<stream se:mustUnderstand=\"1\"><streamId>uid:{}\\{}</streamId><current>{}</current>",
            guid_text(s.qm),
            s.sequence,
            s.current
        );
        if let Some(p) = s.previous {
            let _ = write!(out, "<previous>{p}</previous>");
        }
        if let Some(to) = &s.start_receipts_to {
            let _ = write!(
                out,
                "<start><sendReceiptsTo>{}</sendReceiptsTo><expiresAt>{}</expiresAt></start>",
                escape(to.as_str()),
                format_srmp_time(m.expires_at)
            );
        }
        out.push_str("<streamReceiptRequest/></stream>");
    }
    use base64::Engine as _;
    let correlation =
        base64::engine::general_purpose::STANDARD.encode(m.correlation.unwrap_or([0u8; 20]));
    let _ = write!(
        out,
        "<Msmq xmlns=\"msmq.namespace.xml\"><Class>{}</Class><Priority>{}</Priority>",
        m.class,
        m.priority.min(7)
    );
    if m.journal {
        out.push_str("<Journal/>");
    }
    if m.dead_letter {
        out.push_str("<DeadLetter/>");
    }
    let _ = write!(
        out,
        "<Correlation>{correlation}</Correlation><App>{}</App><BodyType>{}</BodyType>\
         <SourceQmGuid>{}</SourceQmGuid>",
        m.app,
        m.body_type,
        guid_text(m.qm)
    );
    if let Some(t) = m.ttrq {
        let _ = write!(out, "<TTrq>{}</TTrq>", format_srmp_time(t));
    }
    out.push_str("</Msmq>");
    close_envelope(&mut out);
    out
}

/// A boundary in the spec examples' form that occurs in none of the parts.
fn boundary_for(parts: &[&[u8]], seed: u64) -> Option<String> {
    (0..BOUNDARY_TRIES_MAX).find_map(|i| {
        let n = (seed
            .wrapping_add(u64::from(i))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            >> 48)
            % 100_000;
        let b = format!("MSMQ - SOAP boundary, {n}");
        let needle = format!("--{b}");
        parts
            .iter()
            .all(|p| memchr::memmem::find(p, needle.as_bytes()).is_none())
            .then_some(b)
    })
}

/// The whole multipart/related request body of a message, and its Content-Type.
/// `None` only when no boundary could be found that the body does not contain.
pub fn write_message(m: &SrmpOut<'_>) -> Option<Written> {
    let env = envelope(m);
    let boundary = boundary_for(&[env.as_bytes(), m.body], m.index ^ u64::from(m.sent_at))?;
    let qm = guid_text(m.qm);
    let (env_len, body_len) = (env.len(), m.body.len());
    let mut body = Vec::with_capacity(env_len + body_len + 512);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Type: text/xml; charset=UTF-8\r\nContent-Length: {env_len}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(env.as_bytes());
    body.extend_from_slice(
        format!(
            "\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Length: \
             {body_len}\r\nContent-Id: body@{qm}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(m.body);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Some(Written {
        content_type: format!("multipart/related; boundary=\"{boundary}\"; type=text/xml"),
        body,
    })
}

/// A receipt the receiver sends back (single-part `text/xml`, MC-MQSRM 2.2.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Receipt<'a> {
    /// The message was placed in its queue (2.2.5.4).
    Delivery {
        received_at: u32,
        original_id: &'a str,
    },
    /// The message was received by the application (positive) or removed otherwise (2.2.5.5).
    Commitment {
        decided_at: u32,
        positive: bool,
        original_id: &'a str,
    },
    /// Every stream message up to `last_ordinal` was accepted (2.2.5.6).
    Stream {
        qm: Guid,
        sequence: u64,
        last_ordinal: u64,
    },
}

/// The envelope of a receipt: `to` is the `sendTo` (or `sendReceiptsTo`) URI, `label` the
/// original message's label (2.2.4.1; a stream receipt's label is "QM Ordering Ack"),
/// `from_qm`/`index` this queue manager's id for the receipt itself.
pub fn write_receipt(
    receipt: &Receipt<'_>,
    to: &str,
    label: &str,
    from_qm: Guid,
    index: u64,
    now: u32,
) -> Written {
    let mut out = String::with_capacity(768);
    open_envelope(&mut out);
    let action = match receipt {
        Receipt::Stream { .. } => "MSMQ:QM Ordering Ack".to_string(),
        _ => format!("MSMQ:{label}"),
    };
    path(&mut out, &action, to, &message_id(index, from_qm), None);
    let _ = write!(
        out,
        "<properties se:mustUnderstand=\"1\"><expiresAt>{}</expiresAt><sentAt>{}</sentAt></properties>",
        format_srmp_time(now.saturating_add(RECEIPT_LIFETIME_S)),
        format_srmp_time(now)
    );
    match receipt {
        Receipt::Delivery {
            received_at,
            original_id,
        } => {
            let _ = write!(
                out,
                "<deliveryReceipt><receivedAt>{}</receivedAt><id>{}</id></deliveryReceipt>",
                format_srmp_time(*received_at),
                escape(*original_id)
            );
        }
        Receipt::Commitment {
            decided_at,
            positive,
            original_id,
        } => {
            let _ = write!(
                out,
                "<commitmentReceipt><decidedAt>{}</decidedAt><decision>{}</decision><id>{}</id>\
                 </commitmentReceipt>",
                format_srmp_time(*decided_at),
                if *positive { "positive" } else { "negative" },
                escape(*original_id)
            );
        }
        Receipt::Stream {
            qm,
            sequence,
            last_ordinal,
        } => {
            let _ = write!(
                out,
                "<streamReceipt><streamId>uid:{}\\{sequence}</streamId><lastOrdinal>{last_ordinal}\
                 </lastOrdinal></streamReceipt>",
                guid_text(*qm)
            );
        }
    }
    close_envelope(&mut out);
    Written {
        content_type: "text/xml; charset=UTF-8".into(),
        body: out.into_bytes(),
    }
}

/// How long a receipt may take to reach its queue (its `expiresAt` minus `sentAt`).
pub const RECEIPT_LIFETIME_S: u32 = 24 * 3600;

/// The HTTP/1.1 request head of an SRMP post (`path_and_query` like `/msmq/private$/q`).
pub fn request_head(host: &str, path_and_query: &str, w: &Written) -> String {
    format!(
        "POST {path_and_query} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         SOAPAction: \"MSMQMessage\"\r\nProxy-Accept: NonInteractiveClient\r\n\r\n",
        w.content_type,
        w.body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::srmp::{parse_srmp, parse_srmp_time};

    fn guid() -> Guid {
        Guid::parse_text("caf195ea-615c-4264-ae08-11a4e60194c0").unwrap()
    }

    fn sample<'a>(body: &'a [u8]) -> SrmpOut<'a> {
        SrmpOut {
            to: "http://machine2/msmq/private$/simpleq",
            label: "orders & <more>",
            qm: guid(),
            index: 20503,
            sent_at: 1_184_814_700,
            expires_at: 1_185_160_300,
            ttrq: None,
            durable: true,
            priority: 5,
            class: 0,
            app: 77,
            body_type: 8,
            correlation: Some([7u8; 20]),
            journal: true,
            dead_letter: true,
            response: Some("http://machine1/msmq/private$/replies"),
            receipts: ReceiptRequests::default(),
            stream: None,
            body,
        }
    }

    #[test]
    fn srmp_time_round_trips_and_matches_the_spec_examples() {
        // 4.2: sentAt 20070719T031140.
        let t = parse_srmp_time("20070719T031140").unwrap();
        assert_eq!(format_srmp_time(t), "20070719T031140");
        for t in [0u32, 951_782_400, 1_709_164_799, 4_102_444_800, u32::MAX] {
            assert_eq!(parse_srmp_time(&format_srmp_time(t)), Some(t), "{t}");
        }
    }

    #[test]
    fn a_written_message_is_read_back_with_every_field() {
        let body = b"<Order><orderId>3</orderId></Order>";
        let w = write_message(&sample(body)).unwrap();
        let m = parse_srmp(&w.content_type, &w.body).unwrap();
        assert_eq!(m.to, "http://machine2/msmq/private$/simpleq");
        assert_eq!(m.label, "orders & <more>");
        assert_eq!(m.source_qm, guid());
        assert_eq!(m.index, 20503);
        assert_eq!(m.sent_at, Some(1_184_814_700));
        assert_eq!(m.expires_at, Some(1_185_160_300));
        assert!(m.durable && m.journal && m.dead_letter);
        assert_eq!((m.priority, m.app, m.body_type), (5, 77, 8));
        assert_eq!(m.correlation, Some([7u8; 20]));
        assert_eq!(m.body, body);
        assert_eq!(m.stream, None);
    }

    #[test]
    fn a_stream_message_carries_its_sequence_and_is_durable() {
        let mut out = sample(b"First Message");
        out.durable = false;
        out.stream = Some(StreamOut {
            qm: guid(),
            sequence: 4_839_986_701_558_349_830,
            current: 7,
            previous: Some(5),
            start_receipts_to: Some("http://machine1/msmq/private$/receipts".into()),
        });
        let w = write_message(&out).unwrap();
        let m = parse_srmp(&w.content_type, &w.body).unwrap();
        assert_eq!(m.stream, Some((4_839_986_701_558_349_830, 7, 5)));
        assert!(m.durable, "a stream message must be durable (2.2.5.2.1)");
        let env = envelope(&out);
        assert!(env.contains("<start><sendReceiptsTo>http://machine1/msmq/private$/receipts"));
    }

    #[test]
    fn receipt_requests_are_written_as_the_spec_example_shows() {
        let mut out = sample(b"x");
        out.receipts = ReceiptRequests {
            delivery_to: Some("http://machine1/MSMQ/private$/receipts".into()),
            commitment_to: Some("http://machine1/MSMQ/private$/deliverydone".into()),
            commitment_positive: true,
            commitment_negative: true,
        };
        let env = envelope(&out);
        assert!(env.contains(
            "<deliveryReceiptRequest><sendTo>http://machine1/MSMQ/private$/receipts</sendTo>\
             </deliveryReceiptRequest>"
        ));
        assert!(env.contains(
            "<commitmentReceiptRequest><sendTo>http://machine1/MSMQ/private$/deliverydone</sendTo>\
             <negativeOnly/><positiveOnly/></commitmentReceiptRequest>"
        ));
    }

    #[test]
    fn a_body_holding_the_boundary_gets_another_boundary() {
        let first = boundary_for(&[b""], 1).unwrap();
        let body = format!("x\r\n--{first}\r\ny");
        let mut out = sample(body.as_bytes());
        out.index = 1;
        out.sent_at = 0;
        let w = write_message(&out).unwrap();
        assert!(!w.content_type.contains(&first));
        let m = parse_srmp(&w.content_type, &w.body).unwrap();
        assert_eq!(m.body, body.as_bytes());
    }

    #[test]
    fn receipts_are_single_part_xml_with_the_spec_elements() {
        let w = write_receipt(
            &Receipt::Stream {
                qm: guid(),
                sequence: 9,
                last_ordinal: 2,
            },
            "http://machine1/msmq/private$/receipts",
            "ignored",
            guid(),
            3,
            1_184_814_700,
        );
        let text = String::from_utf8(w.body).unwrap();
        assert_eq!(w.content_type, "text/xml; charset=UTF-8");
        assert!(text.contains("<action>MSMQ:QM Ordering Ack</action>"));
        assert!(text.contains(&format!(
            "<streamReceipt><streamId>uid:{}\\9</streamId><lastOrdinal>2</lastOrdinal>",
            guid_text(guid())
        )));
        let w = write_receipt(
            &Receipt::Commitment {
                decided_at: 1_184_814_700,
                positive: false,
                original_id: "uuid:1@x",
            },
            "http://m/msmq/private$/a",
            "lbl",
            guid(),
            4,
            1_184_814_700,
        );
        let text = String::from_utf8(w.body).unwrap();
        assert!(text.contains("<action>MSMQ:lbl</action>"));
        assert!(text.contains("<decision>negative</decision><id>uuid:1@x</id>"));
    }
}
