//! The server glue of an outgoing HTTP (SRMP) connection: an `MsmqConn` opened for an outgoing
//! queue whose transport is HTTP carries a [`HttpOut`] instead of an MS-MQQB session; the app's
//! callbacks hand it here. The protocol decisions are `qm::srmp_out`'s; this file moves stored
//! messages into requests and settles them with the store.

use std::sync::atomic::Ordering;

use super::{close_code, unix_now, MsmqApp, MsmqConn};
use crate::engine::net::AppError;
use crate::qm::srmp_out::{build_request, Closing, HttpOut, InFlight, Outcome};
use crate::store::{Class, Cursor, LookupId, QueueId, QueueStore};
use crate::wire::user::UserMessage;

impl<S: QueueStore> MsmqApp<S> {
    /// Sends the next stored message of the connection's outgoing queue, if nothing is in
    /// flight; closes an idle connection whose queue is empty.
    pub(super) fn http_transmit(&mut self, now_ms: u64, conn: &mut MsmqConn, buf: &mut Vec<u8>) {
        let (Some(q), Some(h)) = (conn.outgoing, conn.http.as_deref_mut()) else {
            return;
        };
        // What TLS has to send (the handshake, records) goes first.
        if h.wire_out(&[], buf).is_err() || !h.ready() {
            return;
        }
        let broker = self.shared.broker.clone();
        let here = self.here();
        let Some(out) = self.out.get_mut(&q) else {
            h.close_idle();
            return;
        };
        if out.session() != Some(conn.id) {
            return;
        }
        let resend_ms = self.resend_ms[out.resend_interval()];
        // Only the shard running the queue's partition sends it.
        debug_assert!(
            here(out.def.shard),
            "{}",
            super::not_run_here(self.shard, out.def.shard)
        );
        let part = broker.partition(out.def.shard);
        // From the queue's cursor (messages before it are sent or settled), or from the front
        // when new messages came (one of a higher priority sorts before the cursor).
        if out.take_rescan() {
            out.cursor = Cursor::new(QueueId(q));
        }
        let mut tx_sent = None;
        while let Some(m) = part.store.cursor_next(&mut out.cursor) {
            let lookup = m.lookup_id.0;
            if out.was_sent(lookup) {
                continue;
            }
            let transactional = m.meta.class == Class::Transactional;
            match build_request(
                m.bytes,
                broker.guid(),
                self.srmp_receipts_to.as_deref(),
                unix_now(),
            ) {
                Ok(req) => {
                    h.begin(
                        now_ms,
                        InFlight {
                            lookup,
                            transactional,
                        },
                    );
                    if let Err(e) = h.wire_out(&req, buf) {
                        out.note_error(e);
                        break;
                    }
                    out.note_sent(now_ms, lookup, transactional, resend_ms);
                    if transactional
                        && self.srmp_receipts_to.is_none()
                        && crate::ratelog::SRMP.allow()
                    {
                        tracing::warn!(destination = %out.def.key, "a transactional message goes over SRMP without sendReceiptsTo: srmp_listen is not set, so no stream receipt can come back and it is sent again on the resend schedule; set srmp_listen");
                    }
                    if transactional {
                        tx_sent = UserMessage::parse(m.bytes)
                            .ok()
                            .and_then(|u| u.transaction)
                            .map(|t| (t.tx_sequence_id, t.tx_sequence_number));
                    }
                    break;
                }
                Err(e) => {
                    // Kept (never lost), not sent again on this connection; shown and logged.
                    out.note_sent(now_ms, lookup, false, resend_ms);
                    out.note_error(format!("a stored message cannot be sent over SRMP: {e}"));
                    broker
                        .counters
                        .srmp_out_failures
                        .fetch_add(1, Ordering::Relaxed);
                    if crate::ratelog::SRMP.allow() {
                        tracing::error!(destination = %out.def.key, lookup, error = %e, "a stored message cannot be sent over SRMP; it stays in its outgoing queue");
                    }
                }
            }
        }
        let empty = part.store.queue_len(QueueId(q)).0 == 0;
        drop(part);
        if let Some((seq_id, no)) = tx_sent {
            broker.note_tx_sent(q, seq_id, no);
        }
        if empty {
            h.close_idle();
        }
    }

    /// Bytes of an answer arrived.
    pub(super) fn http_recv(&mut self, conn: &mut MsmqConn, bytes: &[u8]) -> Result<(), AppError> {
        let (Some(q), Some(h)) = (conn.outgoing, conn.http.as_deref_mut()) else {
            return Ok(());
        };
        match h.feed_wire(bytes) {
            Ok(Some(outcome)) => {
                self.http_settle(q, conn, outcome);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(why) => {
                self.shared
                    .broker
                    .counters
                    .srmp_out_failures
                    .fetch_add(1, Ordering::Relaxed);
                if crate::ratelog::SRMP.allow() {
                    tracing::warn!(peer = %conn.peer, error = %why, "bad answer to an SRMP post; closing the connection, the message stays queued (counted in lior_srmp_out_failures_total)");
                }
                if let Some(out) = self.out.get_mut(&q) {
                    out.note_error(format!("bad answer from {}: {why}", conn.peer));
                }
                Err(AppError(close_code::PROTOCOL))
            }
        }
    }

    /// What an answer means for the message it answers.
    fn http_settle(&mut self, q: u32, conn: &MsmqConn, outcome: Outcome) {
        let here = self.here();
        let broker = &self.shared.broker;
        let Some(out) = self.out.get_mut(&q) else {
            return;
        };
        match outcome {
            Outcome::Accepted(f) if !f.transactional => {
                out.handle_acked(f.lookup);
                debug_assert!(
                    here(out.def.shard),
                    "{}",
                    super::not_run_here(self.shard, out.def.shard)
                );
                let mut part = broker.partition(out.def.shard);
                if let Err(e) = part.remove_delivered(QueueId(q), LookupId(f.lookup)) {
                    tracing::error!(error = %e, "cannot remove a delivered message");
                }
                broker
                    .counters
                    .outgoing_sent_acked
                    .fetch_add(1, Ordering::Relaxed);
            }
            // A stream message waits for its stream receipt.
            Outcome::Accepted(_) => {}
            Outcome::Refused(f, status) => {
                broker
                    .counters
                    .srmp_out_failures
                    .fetch_add(1, Ordering::Relaxed);
                out.note_error(format!(
                    "{} answered HTTP {status} to an SRMP post",
                    conn.peer
                ));
                if crate::ratelog::SRMP.allow() {
                    tracing::warn!(destination = %out.def.key, status, lookup = f.lookup, "SRMP post refused; the message stays queued and is sent again (counted in lior_srmp_out_failures_total)");
                }
            }
        }
    }

    /// The connection closed: an answer that ran until the close is settled; the reason is
    /// kept for the queue's status. Returns the error to show, if any.
    pub(super) fn http_closed(&mut self, conn: &mut MsmqConn) -> Option<String> {
        let q = conn.outgoing?;
        let h = conn.http.as_deref_mut()?;
        let last = h.on_closed();
        let why = match h.closing() {
            Some(Closing::Idle) => None,
            Some(Closing::Failed(why)) => Some(why.clone()),
            None => Some(format!("the connection to {} closed", conn.peer)),
        };
        if let Some(o) = last {
            self.http_settle(q, conn, o);
        }
        why
    }
}

/// A new outgoing connection's HTTP state, for an outgoing queue sent over HTTP or HTTPS.
pub(super) fn http_state(
    def: Option<&crate::qm::outgoing::OutgoingDef>,
    tls: &Result<std::sync::Arc<rustls::ClientConfig>, String>,
) -> Option<Box<HttpOut>> {
    let def = def.filter(|d| d.transport == crate::qm::outgoing::Transport::Http)?;
    Some(Box::new(if def.https() {
        HttpOut::https(tls.clone(), &def.host)
    } else {
        HttpOut::new()
    }))
}
