//! The outgoing side of a shard: the outgoing queues it sends (those stored in partitions it
//! runs), their connections, name resolutions and resend timers (`manage_outgoing`), and the
//! messages moved from the store into an MS-MQQB session's window (`fill_window`). The
//! decisions are `qm::outgoing_queue`'s; SRMP over HTTP is `srmp_conn`.

use std::sync::atomic::Ordering;

use super::{close_code, not_run_here, MsmqApp, MsmqConn};
use crate::engine::net::ConnId;
use crate::qm::outgoing_queue::{OutAction, OutPhase, OutPolicy, OutQueue};
use crate::store::{Cursor, LookupId, QueueId, QueueStore};
use crate::wire::user::UserMessage;

impl<S: QueueStore> MsmqApp<S> {
    /// Sends messages of outgoing queue `q` while the peer's window has room.
    pub(super) fn fill_window(&mut self, now_ms: u64, conn: &mut MsmqConn, q: u32) {
        let here = self.here();
        let Some(out) = self.out.get_mut(&q) else {
            return;
        };
        if out.session().is_none() {
            return;
        }
        debug_assert!(
            here(out.def.shard),
            "{}",
            not_run_here(self.shard, out.def.shard)
        );
        let part = self.shared.broker.partition(out.def.shard);
        // The highest transactional position sent now (noted once the partition is unlocked).
        let mut tx_sent: Option<(u64, u32)> = None;
        let resend_ms = self.resend_ms[out.resend_interval()];
        // New messages of a priority above the cursor's sort before it: send those first.
        if out.take_rescan() {
            if let Some((cp, cl)) = out.cursor.last {
                let mut c = Cursor::new(QueueId(q));
                while let Some(m) = part.store.cursor_next(&mut c) {
                    let (p, l) = c.last.unwrap_or((0, LookupId(0)));
                    if p < cp || (p == cp && l >= cl) {
                        break;
                    }
                    if out.was_sent(m.lookup_id.0) {
                        continue;
                    }
                    if conn.session.window_available() == 0
                        || !send_one(now_ms, conn, out, &m, resend_ms, &mut tx_sent)
                    {
                        out.keep_rescan();
                        break;
                    }
                }
            }
        }
        while conn.session.window_available() > 0 {
            let before = out.cursor;
            let Some(m) = part.store.cursor_next(&mut out.cursor) else {
                break;
            };
            if out.was_sent(m.lookup_id.0) {
                continue;
            }
            if !send_one(now_ms, conn, out, &m, resend_ms, &mut tx_sent) {
                out.cursor = before;
                break;
            }
        }
        drop(part);
        if let Some((seq_id, no)) = tx_sent {
            self.shared.broker.note_tx_sent(q, seq_id, no);
        }
    }

    /// Starts connections for outgoing queues with messages, resolves names, retries.
    pub(super) fn manage_outgoing(&mut self, now_ms: u64) {
        let broker = self.shared.broker.clone();
        let mut dirty = false;
        for &p in &self.owned {
            dirty |= broker.take_outgoing_dirty(p);
        }
        if dirty {
            for o in self.out.values_mut() {
                o.handle_new_messages();
            }
            for def in broker.outgoing_for(&self.owned) {
                match self.out.get_mut(&def.id) {
                    Some(o) => {
                        if o.def.paused != def.paused {
                            tracing::info!(destination = %def.key, paused = def.paused, "outgoing queue paused or resumed");
                            if let Some(c) = o.set_paused(def.paused) {
                                self.closes.push((c, close_code::PAUSED));
                            }
                        }
                    }
                    None => {
                        self.out.insert(def.id, OutQueue::new(def));
                    }
                }
            }
        }
        // OrderAck progress restarts the resend schedule; a time-out without progress sends
        // every waiting message again, with the next (longer) interval.
        let progressed: Vec<u32> = self
            .owned
            .iter()
            .flat_map(|&p| broker.take_tx_progress(p))
            .collect();
        let here = self.here();
        for id in progressed {
            if let Some(o) = self.out.get_mut(&id) {
                // Forget what the OrderAck removed.
                debug_assert!(
                    here(o.def.shard),
                    "{}",
                    not_run_here(self.shard, o.def.shard)
                );
                let part = broker.partition(o.def.shard);
                o.handle_tx_progress(|l| {
                    part.store
                        .peek(QueueId(id), crate::store::Select::Lookup(LookupId(l)))
                        .is_some()
                });
            }
        }
        let schedule = self.resend_ms.len();
        for o in self.out.values_mut() {
            debug_assert!(
                here(o.def.shard),
                "{}",
                not_run_here(self.shard, o.def.shard)
            );
            let part = broker.partition(o.def.shard);
            let q = QueueId(o.def.id);
            // Transactional messages are sent again; others still in flight are not.
            if o.handle_resend_timer(now_ms, schedule, |l| {
                part.store
                    .peek(q, crate::store::Select::Lookup(LookupId(l)))
                    .is_none_or(|m| m.meta.class == crate::store::Class::Transactional)
            }) {
                tracing::info!(destination = %o.def.key, interval = o.resend_interval(), "no OrderAck in time; resending");
            }
        }
        let base = OutPolicy {
            hardened: broker.config.parameters.Hardened_MSMQ,
            port: broker.config.remote_port,
            mqqb_default_port: broker.config.remote_port,
            retry_ms: u64::from(broker.config.parameters.TryConnectInterval),
        };
        for out in self.out.values_mut() {
            let id = out.def.id;
            // `[remotes."HOST"] port` where the machine has its own port.
            let policy = OutPolicy {
                port: broker.config.remote_port_for(&out.def.host),
                ..base
            };
            if let Some(rx) = self.resolving.get(&id) {
                let result = match rx.try_recv() {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(std::sync::mpsc::TryRecvError::Empty) => continue,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        Err("the resolver thread ended".into())
                    }
                };
                self.resolving.remove(&id);
                if let Err(e) = &result {
                    tracing::warn!(destination = %out.def.key, error = %e, "cannot resolve; will retry");
                }
                if let Some(OutAction::Connect(addr)) =
                    out.handle_resolved(now_ms, result, policy.retry_ms)
                {
                    self.connects.push_back((addr, id));
                }
                continue;
            }
            if let Some(c) = out.session() {
                // New messages may have arrived for an open session.
                self.ready.push(c);
                continue;
            }
            if !out.wants_pending(now_ms) {
                continue;
            }
            debug_assert!(
                here(out.def.shard),
                "{}",
                not_run_here(self.shard, out.def.shard)
            );
            let pending = broker
                .partition(out.def.shard)
                .store
                .queue_len(QueueId(id))
                .0;
            match out.poll_action(now_ms, pending, &policy) {
                Some(OutAction::Connect(addr)) => self.connects.push_back((addr, id)),
                Some(OutAction::Resolve { host, port }) => {
                    // Name resolution may block: it runs on a short-lived thread.
                    let (tx, rx) = std::sync::mpsc::channel();
                    let spawned = std::thread::Builder::new()
                        .name("lior-resolve".into())
                        .spawn(move || {
                            use std::net::ToSocketAddrs;
                            let r = (host.as_str(), port).to_socket_addrs().and_then(|mut a| {
                                a.next().ok_or_else(|| {
                                    std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
                                })
                            });
                            let _ = tx.send(r);
                        });
                    match spawned {
                        Ok(_) => {
                            self.resolving.insert(id, rx);
                        }
                        Err(e) => {
                            out.handle_resolved(now_ms, Err(e.to_string()), policy.retry_ms);
                        }
                    }
                }
                None => {
                    if out.phase() == OutPhase::Locked {
                        tracing::warn!(destination = %out.def.key, pending, "outgoing queue locked");
                    }
                }
            }
        }
        // What the API shows: published when it changed.
        for (id, out) in &self.out {
            let st = out.status();
            if self.published.get(id) != Some(&st) {
                broker.note_outgoing_status(*id, st.clone());
                self.published.insert(*id, st);
            }
        }
    }

    /// The peer acknowledged the message of outgoing queue `q` sent with `token` (session
    /// event `Acked`): one not transactional is delivered, so removed (its source journal copy
    /// stored); a transactional one stays until its OrderAck.
    pub(super) fn outgoing_acked(&mut self, q: u32, token: u64) {
        let Some(p) = self.out.get(&q).map(|o| o.def.shard) else {
            return;
        };
        debug_assert!(self.here()(p), "{}", not_run_here(self.shard, p));
        let mut part = self.shared.broker.partition(p);
        let transactional = part
            .store
            .peek(QueueId(q), crate::store::Select::Lookup(LookupId(token)))
            .is_some_and(|m| m.meta.class == crate::store::Class::Transactional);
        let mut journal = None;
        // A transactional message stays until its OrderAck (MS-MQQB 3.1.5.5.5).
        if !transactional {
            journal =
                self.shared
                    .broker
                    .source_journal_copy(&part.store, QueueId(q), LookupId(token));
            if let Some(o) = self.out.get_mut(&q) {
                o.handle_acked(token);
            }
            if let Err(e) = part.remove_delivered(QueueId(q), LookupId(token)) {
                tracing::error!(error = %e, "cannot remove a delivered message");
            }
            self.shared
                .broker
                .counters
                .outgoing_sent_acked
                .fetch_add(1, Ordering::Relaxed);
        }
        drop(part);
        if let Some((frame, _)) = journal {
            let o = crate::qm::broker::Owed::MachineJournal { frame };
            self.store_owed(self.now_ms, o);
        }
    }
}

/// Sends one stored message of an outgoing queue on `conn`; false when the session cannot take
/// it now.
fn send_one(
    now_ms: u64,
    conn: &mut MsmqConn,
    out: &mut OutQueue<ConnId>,
    m: &crate::store::MessageRef<'_>,
    resend_ms: u64,
    tx_sent: &mut Option<(u64, u32)>,
) -> bool {
    let recoverable = m.meta.class != crate::store::Class::Express;
    if conn
        .session
        .send_message(now_ms, m.bytes, recoverable, m.lookup_id.0)
        .is_err()
    {
        return false;
    }
    let transactional = m.meta.class == crate::store::Class::Transactional;
    out.note_sent(now_ms, m.lookup_id.0, transactional, resend_ms);
    if transactional {
        if let Some(t) = UserMessage::parse(m.bytes).ok().and_then(|u| u.transaction) {
            let pos = (t.tx_sequence_id, t.tx_sequence_number);
            *tx_sent = Some(tx_sent.map_or(pos, |p| p.max(pos)));
        }
    }
    true
}
