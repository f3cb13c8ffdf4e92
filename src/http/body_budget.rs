//! The SRMP door's memory bound for unfinished request bodies ([`BodyBudget`], shared by the
//! HTTP connections of the SRMP endpoint's thread) and the body reader that charges it. Not on
//! the queue manager's message path: the lock here guards the door's admission of bytes, before
//! a message exists; the message itself goes to its owning shard by request (`qm::requests`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use http_body_util::BodyExt;
use tokio::sync::Notify;

use crate::http::srmp::SRMP_BODY_BYTES_MAX;

/// The memory of unfinished request bodies, shared by every connection. A body reserves what
/// it allocates before allocating it; when the total would pass the bound, the oldest other
/// unfinished bodies are dropped first (their requests answered 503), so a flood of slow bodies
/// can hold at most `max` bytes and cannot starve a newcomer.
#[derive(Debug)]
pub struct BodyBudget {
    max: usize,
    state: Mutex<BudgetState>,
}

#[derive(Debug, Default)]
struct BudgetState {
    used: usize,
    next_id: u64,
    /// Unfinished bodies by age (ids only grow): bytes held and the signal that drops them.
    holders: BTreeMap<u64, (usize, Arc<BodyDrop>)>,
    dropped: u64,
}

#[derive(Debug, Default)]
struct BodyDrop {
    dropped: AtomicBool,
    notify: Notify,
}

impl BodyBudget {
    pub fn new(max: usize) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            max,
            state: Mutex::new(BudgetState::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.state().used
    }

    /// Bodies dropped to make room so far.
    pub fn dropped(&self) -> u64 {
        self.state().dropped
    }

    fn register(self: &Arc<Self>) -> BodyTicket {
        let mut s = self.state();
        let id = s.next_id;
        s.next_id += 1;
        let signal = Arc::new(BodyDrop::default());
        s.holders.insert(id, (0, Arc::clone(&signal)));
        BodyTicket {
            budget: Arc::clone(self),
            id,
            signal,
        }
    }

    /// Reserves `n` more bytes for body `id`, dropping the oldest other bodies while the total
    /// would pass the bound. False when even that cannot make room (never for one body of at
    /// most `max`), or when `id` itself was dropped meanwhile.
    fn reserve(&self, id: u64, n: usize) -> bool {
        let mut s = self.state();
        let Some(&(own, _)) = s.holders.get(&id) else {
            return false;
        };
        if own + n > self.max {
            // Dropping every other body would not make room: drop none.
            return false;
        }
        while s.used + n > self.max {
            // The oldest other body that holds memory (ids grow with age).
            let Some(victim) = s
                .holders
                .iter()
                .find(|(k, (bytes, _))| **k != id && *bytes > 0)
                .map(|(k, _)| *k)
            else {
                return false;
            };
            if let Some((bytes, signal)) = s.holders.remove(&victim) {
                s.used -= bytes;
                s.dropped += 1;
                signal.dropped.store(true, Ordering::SeqCst);
                signal.notify.notify_one();
                if crate::ratelog::SRMP.allow() {
                    tracing::warn!(
                        freed = bytes,
                        limit = self.max,
                        "SRMP body memory full (limits.srmp_body_bytes_in_flight_max); dropping \
                         the oldest unfinished request body"
                    );
                }
            }
        }
        s.used += n;
        if let Some(h) = s.holders.get_mut(&id) {
            h.0 += n;
        }
        true
    }

    fn release(&self, id: u64) {
        let mut s = self.state();
        if let Some((bytes, _)) = s.holders.remove(&id) {
            s.used -= bytes;
        }
    }
}

/// One unfinished body's share of the budget; dropping it gives the bytes back.
struct BodyTicket {
    budget: Arc<BodyBudget>,
    id: u64,
    signal: Arc<BodyDrop>,
}

impl BodyTicket {
    async fn dropped(&self) {
        loop {
            let notified = self.signal.notify.notified();
            if self.signal.dropped.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for BodyTicket {
    fn drop(&mut self) {
        self.budget.release(self.id);
    }
}

/// Reads a request body into memory under the budget: at most [`SRMP_BODY_BYTES_MAX`] bytes,
/// every chunk reserved before it is kept, within `timeout`. The chunks are hyper's own buffers
/// (no copy, no growing allocation); they are joined once, into one allocation of the exact
/// size, when the body is complete. The SRMP thread handles one finished body at a time, so the
/// join adds at most one body to the bound.
pub(crate) async fn read_body(
    body: axum::body::Body,
    budget: &Arc<BodyBudget>,
    timeout: Duration,
) -> Result<Vec<u8>, (StatusCode, String)> {
    let ticket = budget.register();
    let read = async {
        let mut body = body;
        let mut chunks: Vec<axum::body::Bytes> = Vec::new();
        let mut len = 0usize;
        loop {
            let frame = tokio::select! {
                _ = ticket.dropped() => {
                    return Err((
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the SRMP body memory is full and this request was the oldest; retry"
                            .to_string(),
                    ));
                }
                f = body.frame() => f,
            };
            let Some(frame) = frame else {
                break;
            };
            let frame = frame.map_err(|e| {
                (
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}"),
                )
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            len += data.len();
            if len > SRMP_BODY_BYTES_MAX {
                return Err((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body larger than {SRMP_BODY_BYTES_MAX} bytes"),
                ));
            }
            if !budget.reserve(ticket.id, data.len()) {
                return Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the SRMP body memory is full; retry".to_string(),
                ));
            }
            chunks.push(data);
        }
        let mut whole = Vec::with_capacity(len);
        for c in chunks {
            whole.extend_from_slice(&c);
        }
        Ok(whole)
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(r) => r,
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} ms (limits.srmp_body_timeout_ms)",
                timeout.as_millis()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_budget_drops_the_oldest_holder_first() {
        let b = BodyBudget::new(100);
        let (t1, t2, t3) = (b.register(), b.register(), b.register());
        assert!(b.reserve(t1.id, 40) && b.reserve(t2.id, 40));
        // t3 needs 30: the oldest (t1) goes, t2 stays.
        assert!(b.reserve(t3.id, 30));
        assert!(t1.signal.dropped.load(Ordering::SeqCst));
        assert!(!t2.signal.dropped.load(Ordering::SeqCst));
        assert_eq!(b.used(), 70);
        assert!(!b.reserve(t1.id, 1), "a dropped body gets nothing more");
        // One body alone never exceeds the bound.
        assert!(!b.reserve(t3.id, 200));
        assert!(!t2.signal.dropped.load(Ordering::SeqCst));
        drop((t2, t3));
        assert_eq!(b.used(), 0);
        assert_eq!(b.dropped(), 1);
    }
}
