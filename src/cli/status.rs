//! `lior status`: one object built from `/v1/status`, `/v1/queues`, `/v1/outgoing` and
//! `/metrics`, and the screen a person reads from it.

use serde_json::{json, Map, Value};

use super::human_bytes;

/// A counter's value in Prometheus text (`lior_NAME V`), summed over its labels.
fn metric(text: &str, name: &str) -> Option<u64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, v)) = line.rsplit_once(' ') else {
            continue;
        };
        let key = key.split('{').next().unwrap_or(key);
        if key == name {
            let v = v.parse::<f64>().ok()? as u64;
            found = Some(found.unwrap_or(0) + v);
        }
    }
    found
}

/// The one object `lior status --json` prints.
pub fn compose(
    api: &str,
    status: &Value,
    queues: &Value,
    outgoing: &Value,
    metrics: &str,
) -> Value {
    let mut v = status.as_object().cloned().unwrap_or_default();
    v.insert("api".into(), json!(api));
    let qs = queues.as_array().cloned().unwrap_or_default();
    let sum = |list: &[Value], k: &str| list.iter().filter_map(|q| q[k].as_u64()).sum::<u64>();
    v.insert(
        "queues".into(),
        json!({
            "count": qs.len(),
            "messages": sum(&qs, "messages"),
            "bytes": sum(&qs, "bytes"),
        }),
    );
    let os = outgoing.as_array().cloned().unwrap_or_default();
    let mut by_state = Map::new();
    for o in &os {
        let s = o["state"].as_str().unwrap_or("?").to_string();
        let n = by_state.get(&s).and_then(Value::as_u64).unwrap_or(0);
        by_state.insert(s, json!(n + 1));
    }
    v.insert(
        "outgoing".into(),
        json!({
            "count": os.len(),
            "by_state": by_state,
            "messages": sum(&os, "messages"),
            "bytes": sum(&os, "bytes"),
        }),
    );
    v.insert(
        "sessions".into(),
        json!({
            "open": metric(metrics, "lior_sessions_open").unwrap_or(0),
            "accepted": metric(metrics, "lior_sessions_accepted_total").unwrap_or(0),
            "established": metric(metrics, "lior_sessions_established_total").unwrap_or(0),
            "refused": metric(metrics, "lior_sessions_refused_total").unwrap_or(0),
            "connections_accepted": metric(metrics, "lior_connections_accepted_total").unwrap_or(0),
        }),
    );
    Value::Object(v)
}

/// The screen: one fact a line, labels aligned.
pub fn text(v: &Value) -> String {
    let s = |k: &str| v[k].as_str().map_or_else(|| "?".to_string(), String::from);
    let addr = |k: &str| match v["listen"][k].as_str() {
        None => "off".to_string(),
        Some(a) if a.ends_with(":0") => {
            format!("{a} (port chosen at start: see the `lior ready` line)")
        }
        Some(a) => a.to_string(),
    };
    let n = |x: &Value| x.as_u64().unwrap_or(0);
    let cores = v["cores"].as_array().filter(|c| !c.is_empty()).map_or_else(
        || "all".to_string(),
        |c| {
            c.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        },
    );
    let by_state = v["outgoing"]["by_state"]
        .as_object()
        .filter(|m| !m.is_empty())
        .map_or_else(
            || "none".to_string(),
            |m| {
                m.iter()
                    .map(|(k, c)| format!("{} {k}", n(c)))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        );
    let store = if v["store_poisoned"].as_bool() == Some(true) {
        format!("POISONED: {}", s("health"))
    } else {
        "ok".to_string()
    };
    let lines = [
        (
            "queue manager",
            format!("{} (lior {})", s("qm_guid"), s("version")),
        ),
        ("MS-MQQB", addr("msmq")),
        ("API", s("api")),
        ("SRMP", addr("srmp")),
        ("AMQP", addr("amqp")),
        (
            "partitions",
            format!("{} (cores: {cores})", n(&v["partitions"])),
        ),
        (
            "sessions",
            format!(
                "{} open; {} accepted, {} established, {} refused since start",
                n(&v["sessions"]["open"]),
                n(&v["sessions"]["accepted"]),
                n(&v["sessions"]["established"]),
                n(&v["sessions"]["refused"])
            ),
        ),
        (
            "queues",
            format!(
                "{} holding {} messages ({})",
                n(&v["queues"]["count"]),
                n(&v["queues"]["messages"]),
                human_bytes(n(&v["queues"]["bytes"]))
            ),
        ),
        (
            "outgoing",
            format!(
                "{} queues: {by_state}; {} messages ({})",
                n(&v["outgoing"]["count"]),
                n(&v["outgoing"]["messages"]),
                human_bytes(n(&v["outgoing"]["bytes"]))
            ),
        ),
        (
            "disk",
            format!(
                "{} in {}",
                human_bytes(n(&v["data_dir_bytes"])),
                s("data_dir")
            ),
        ),
        ("store", store),
    ];
    let mut out = String::new();
    for (k, line) in lines {
        out.push_str(&format!("{:<14} {line}\n", format!("{k}:")));
    }
    out
}
