//! Reading a running `lior serve` over its HTTP API: JSON resources and metrics.

use super::Server;

/// GET `path` (e.g. `/v1/outgoing`) of `s`'s API, parsed as JSON.
pub fn get_json(s: &Server, path: &str) -> serde_json::Value {
    serde_json::from_str(
        &ureq::get(&format!("http://{}{path}", s.api))
            .call()
            .unwrap()
            .into_string()
            .unwrap(),
    )
    .unwrap()
}

/// The value of the metric `name` (its full name, `lior_…`) on `s`'s `/metrics`, or None when
/// `s` does not report it.
pub fn metric_or_none(s: &Server, name: &str) -> Option<u64> {
    let text = ureq::get(&format!("http://{}/metrics", s.api))
        .call()
        .expect("metrics")
        .into_string()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map(|v| v.trim().parse().unwrap())
}

/// The value of the metric `name` (its full name, `lior_…`); panics when `s` does not report it.
pub fn metric(s: &Server, name: &str) -> u64 {
    metric_or_none(s, name).unwrap_or_else(|| panic!("no metric {name}"))
}

/// Messages waiting in `s`'s outgoing queues, summed.
pub fn outgoing_len(s: &Server) -> u64 {
    get_json(s, "/v1/outgoing")
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["messages"].as_u64().unwrap())
        .sum()
}
