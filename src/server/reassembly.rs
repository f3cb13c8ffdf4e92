//! Reassembly accounting of a shard: the bytes of partial packets its sessions' framers hold,
//! against the per-session and per-shard budgets (`limits.reassembly_bytes_per_*_max`), and
//! which session is dropped (the oldest partial packet first) when the shard's budget is full.

use std::sync::atomic::Ordering;

use super::{close_code, MsmqApp, MsmqConn};

impl<S> MsmqApp<S> {
    /// Accounts the partial packet `conn` now holds (`held` bytes) against the session's and the
    /// shard's reassembly budgets. Past the shard's, the sessions whose partial packets are the
    /// oldest are dropped first (a flood of half-sent packets cannot lock out a newcomer); Err
    /// closes `conn` itself (over the per-session budget, or nothing older to drop).
    pub(super) fn account_reassembly(
        &mut self,
        now_ms: u64,
        conn: &MsmqConn,
        held: usize,
    ) -> Result<(), u32> {
        let old = match held {
            0 => self.partials.remove(&conn.id).map_or(0, |(_, b)| b),
            n => {
                let e = self.partials.entry(conn.id).or_insert((now_ms, 0));
                std::mem::replace(&mut e.1, n)
            }
        };
        self.reassembly_bytes = (self.reassembly_bytes + held).saturating_sub(old);
        let limits = &self.shared.broker.config.limits;
        let (per_session, per_shard) = (
            limits.reassembly_bytes_per_session_max,
            limits.reassembly_bytes_per_shard_max,
        );
        if held > per_session {
            if crate::ratelog::MALFORMED.allow() {
                tracing::warn!(peer = %conn.peer, held, limit = per_session, "partial packet over limits.reassembly_bytes_per_session_max; closing the session");
            }
            self.shared
                .counters
                .sessions_closed_protocol
                .fetch_add(1, Ordering::Relaxed);
            return Err(close_code::PROTOCOL);
        }
        while held > old && self.reassembly_bytes > per_shard {
            let victim = self
                .partials
                .iter()
                .filter(|(id, _)| **id != conn.id)
                .min_by_key(|(_, (since, _))| *since)
                .map(|(id, (since, bytes))| (*id, *since, *bytes));
            let Some((id, since, bytes)) = victim else {
                if crate::ratelog::MALFORMED.allow() {
                    tracing::warn!(peer = %conn.peer, held = self.reassembly_bytes, limit = per_shard, "partial packets over limits.reassembly_bytes_per_shard_max; closing the session");
                }
                self.shared
                    .counters
                    .sessions_closed_protocol
                    .fetch_add(1, Ordering::Relaxed);
                return Err(close_code::PROTOCOL);
            };
            self.partials.remove(&id);
            self.reassembly_bytes = self.reassembly_bytes.saturating_sub(bytes);
            self.evicted.insert(id);
            self.closes.push((id, close_code::PROTOCOL));
            self.shared
                .counters
                .sessions_dropped_reassembly
                .fetch_add(1, Ordering::Relaxed);
            if crate::ratelog::MALFORMED.allow() {
                tracing::warn!(
                    held = bytes,
                    age_ms = now_ms.saturating_sub(since),
                    limit = per_shard,
                    "partial packets over limits.reassembly_bytes_per_shard_max; dropping the \
                     session whose partial packet is the oldest"
                );
            }
        }
        Ok(())
    }
}
