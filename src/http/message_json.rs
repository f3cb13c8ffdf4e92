//! How a stored message looks to a Linux application: the JSON object of `lior receive --json`
//! and of the API. Built from the stored packet bytes, parsed once.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::qm::broker::Received;
use crate::store::Class;
use crate::wire::format_name::FormatName;
use crate::wire::user::{QueueRef, UserMessage};

fn format_name_text(q: &QueueRef<'_>, m: &UserMessage<'_>, admin: Option<&FormatName>) -> Value {
    if q.code() == 0 {
        return Value::Null;
    }
    match FormatName::from_queue_ref(
        q,
        m.user.source_queue_manager,
        m.user.queue_manager_address,
        admin,
    ) {
        Ok(f) => json!(f.to_string()),
        Err(e) => json!(format!("(unreadable: {e})")),
    }
}

/// The JSON object for one received or peeked message.
pub fn message_value(r: &Received) -> Value {
    let class = match r.class {
        Class::Express => "express",
        Class::Recoverable => "recoverable",
        Class::Transactional => "transactional",
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut v = json!({
        "queue": r.queue,
        "lookup_id": r.lookup_id,
        "priority": r.priority,
        "class": class,
    });
    let Ok(m) = UserMessage::parse(&r.bytes) else {
        // Stored bytes always parsed once; if they no longer do, say so rather than hide them.
        v["error"] = json!("stored packet does not parse");
        v["packet_base64"] = json!(b64.encode(&r.bytes));
        return v;
    };
    let u = &m.user;
    let p = &m.properties;
    let admin = FormatName::from_queue_ref(
        &u.admin,
        u.source_queue_manager,
        u.queue_manager_address,
        None,
    )
    .ok();
    v["message_id"] = json!(format!("{}\\{}", u.source_queue_manager, u.message_id));
    v["label"] = json!(p.label.to_string_lossy());
    v["body_base64"] = json!(b64.encode(m.body()));
    v["body_size"] = json!(m.body().len());
    v["message_class"] = json!(p.message_class.name());
    v["correlation_id_base64"] = json!(b64.encode(p.correlation_id));
    v["app_specific"] = json!(p.application_tag);
    v["body_type"] = json!(p.body_type);
    v["sent_time"] = json!(u.sent_time);
    v["source_qm"] = json!(u.source_queue_manager.to_string());
    v["destination"] = format_name_text(&u.destination, &m, None);
    v["admin_queue"] = format_name_text(&u.admin, &m, None);
    v["response_queue"] = format_name_text(&u.response, &m, admin.as_ref());
    if let Some(s) = &m.security {
        if let Some(sid) = s.sender_sid() {
            v["sender_sid"] = json!(sid.to_string());
        }
    }
    // Set at arrival when the signature verified (SecurityHeader.Flags.AS, `security`).
    let auth = crate::security::stored_authentication(&m);
    v["authenticated"] = json!(auth.is_some());
    if let Some(kind) = auth {
        v["signature"] = json!(kind.name());
    }
    // A copy of a send to a multiple-element or DL= name: every destination, and the admin and
    // response lists (MS-MQMQ 2.2.20.1).
    if let Some(mq) = &m.multi_queue {
        use crate::qm::fanout::list_texts;
        v["destination_mqf"] = json!(list_texts(&mq.destination));
        v["admin_mqf"] = json!(list_texts(&mq.administration));
        v["response_mqf"] = json!(list_texts(&mq.response));
    }
    if let Some(t) = &m.transaction {
        v["tx_sequence_id"] = json!(format!("{:#018x}", t.tx_sequence_id));
        v["tx_sequence_number"] = json!(t.tx_sequence_number);
    }
    v
}
