//! The local HTTP/JSON API (queue administration, peek, receive, metrics) on loopback, served by
//! axum on a thread of its own. It calls the queue manager; it holds no queue logic.

pub mod api;
pub mod message_json;
pub mod srmp;

pub use api::{serve_api, ApiHandle};
