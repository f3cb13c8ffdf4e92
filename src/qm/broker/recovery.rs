//! What a start restores from the stores beyond the messages themselves: each partition's
//! transactional sequence states (read back from [`TXN_STATE_QUEUE`]), the move of queues an
//! older lior spread over several partitions into their owners ([`migrate_spread`]), and the
//! duplicate and sequence tables rebuilt from the messages still stored.

use crate::qm::txn::TxKey;
use std::collections::HashSet;

use crate::qm::catalog::Catalog;
use crate::qm::txn::IncomingSequence;
use crate::store::{Class, Cursor, QueueId, QueueStore, StoreError, Ticket};
use crate::wire::user::UserMessage;
use crate::wire::Guid;

use super::partition::{Partition, TXN_STATE_QUEUE};

/// Restores the transactional sequence states recorded in `part` into `txn`; older records of
/// a key go (their removal is staged for the next commit). Returns how many states `txn` had
/// no room for.
pub(super) fn restore_txn_states<S: QueueStore>(
    part: &mut Partition<S>,
    now_s: u32,
) -> Result<u64, StoreError> {
    let mut not_restored = 0u64;
    let mut cursor = Cursor::new(TXN_STATE_QUEUE);
    let mut older = Vec::new();
    while let Some(m) = part.store.cursor_next(&mut cursor) {
        if m.bytes.len() == 12 || m.bytes.len() == 24 {
            let id = m.meta.message_id.0;
            let mut g = [0u8; 16];
            g.copy_from_slice(&id[..16]);
            let q = u32::from_le_bytes([id[16], id[17], id[18], id[19]]);
            let b = m.bytes;
            let seq_id = u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]));
            let seq_no = u32::from_le_bytes(b[8..12].try_into().unwrap_or([0; 4]));
            let prior = (b.len() == 24).then(|| {
                (
                    u64::from_le_bytes(b[12..20].try_into().unwrap_or([0; 8])),
                    u32::from_le_bytes(b[20..24].try_into().unwrap_or([0; 4])),
                )
            });
            let key = (Guid(g), q);
            if let Some(prev) = part.txn_records.insert(key, m.lookup_id) {
                older.push(prev);
            }
            let s = IncomingSequence {
                seq_id,
                seq_no,
                prior,
                ..Default::default()
            };
            if !part.txn.restore(key, s, now_s) {
                not_restored += 1;
            }
        }
    }
    for l in older {
        part.drop_txn_record(l)?;
    }
    Ok(not_restored)
}

/// Rebuilds the duplicate table and raises the transactional sequence states from the messages
/// still stored, and finds the queues with messages outside their owning partition. Returns
/// those queues and how many sequence states `txn` had no room for.
///
/// Windows keeps the duplicate table across restarts; lior rebuilds it from the messages still
/// stored, so a sender's resend after a crash of ours is still recognised. The transactional
/// sequence states are also raised to the highest message still stored: a torn commit can keep
/// a message record without the state record written after it. A raised state is owed to the
/// disk (`txn_dirty` of the queue's owner, written by its next commit, which the caller starts
/// before anything else is staged): otherwise, once that message is received and a second crash
/// comes, neither the message nor the state would say the sequence got that far, and the
/// sender's resend would be stored again (found by the simulation, seed 5745108551312288137).
pub(super) fn rebuild_tables<S: QueueStore>(
    partitions: &mut [Partition<S>],
    catalog: &Catalog,
    now_s: u32,
) -> (HashSet<u32>, u64) {
    let mut not_restored = 0u64;
    let mut spread = HashSet::new();
    let n = partitions.len();
    // (owner partition, key, position) of the transactional messages still stored, raised
    // into their owner's table once every partition was read.
    let mut stored_tx: Vec<(usize, TxKey, IncomingSequence)> = Vec::new();
    // Rebuilt entries count as seen now, on the clock deliveries and the cleanup use
    // (CLOCK_MONOTONIC, since boot): stamped 0, the first cleanup after a restart on a machine
    // up longer than RemoveDuplicateCleanup dropped them all, and a sender's resend after our
    // crash was stored twice (tests/srmp_exchange.rs saw it as a doubled recoverable message).
    let seen_ms = crate::engine::net::now_ms();
    for part in partitions.iter_mut() {
        for q in catalog.iter() {
            if q.partition as usize % n != part.index
                && part.store.queue_len(QueueId(q.id)).0 > 0
                && spread.insert(q.id)
            {
                tracing::warn!(
                    queue = %q.name,
                    owner = q.partition,
                    found_in = part.index,
                    "the queue has messages outside its owning partition (stored by an \
                     older lior): they are all delivered, but not in FIFO order across \
                     partitions; new messages go to the owner"
                );
            }
            let mut c = Cursor::new(QueueId(q.id));
            while let Some(m) = part.store.cursor_next(&mut c) {
                if m.meta.class == Class::Transactional {
                    let Ok(msg) = UserMessage::parse(m.bytes) else {
                        continue;
                    };
                    if let Some(t) = msg.transaction {
                        let s = IncomingSequence {
                            seq_id: t.tx_sequence_id,
                            seq_no: t.tx_sequence_number,
                            ..Default::default()
                        };
                        let key = (msg.user.source_queue_manager, q.id);
                        stored_tx.push((q.partition as usize % n, key, s));
                    }
                    continue;
                }
                let id = m.meta.message_id.0;
                let mut g = [0u8; 16];
                g.copy_from_slice(&id[..16]);
                let n = u32::from_le_bytes([id[16], id[17], id[18], id[19]]);
                let origin = (part.index, 0);
                part.dedup.check_and_insert((Guid(g), n), seen_ms, origin);
            }
        }
    }
    for (owner, key, s) in stored_tx {
        let part = &mut partitions[owner];
        let before = part.txn.get(&key);
        if !part.txn.restore(key, s, now_s) {
            not_restored += 1;
        } else if part.txn.get(&key) != before {
            let raised = part.txn.get(&key);
            part.txn_dirty.insert(key, raised);
        }
    }
    (spread, not_restored)
}

/// What [`migrate_spread`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MigrationReport {
    /// Queues that had messages outside their owning partition.
    pub queues: usize,
    /// Messages copied into their queue's owner.
    pub moved: u64,
    /// Messages removed from non-owning partitions (copied now or by an interrupted earlier run).
    pub purged: u64,
    /// Queues left spread because a copy or a commit failed (read from every partition).
    pub failed: usize,
}

/// Moves the messages of every queue found outside its owning partition (an older lior stored
/// a queue in the partition of the shard that received each message) into the owner.
///
/// Copy before remove: the foreign messages are appended to the owner, in MSMQ order (priority,
/// then SentTime, then partition and arrival), and that is made durable before the foreign
/// copies are purged. A message whose id the owner already holds is not copied again, so a crash
/// between the two steps leaves no duplicate: the next start purges what was copied. The exact
/// arrival order across partitions was never recorded; SentTime (1 s) and then the partition
/// index break ties. Memory stays bounded: one message is copied at a time.
///
/// A queue whose copy or commit fails stays spread (peek and receive read every partition) and
/// is logged; nothing is removed from a partition before its copy is durable.
pub fn migrate_spread<S: QueueStore>(
    parts: &mut [Partition<S>],
    catalog: &Catalog,
) -> MigrationReport {
    let mut report = MigrationReport::default();
    let n = parts.len();
    if n < 2 {
        return report;
    }
    // (queue, owner, foreign partitions) whose copies are staged; purged once durable.
    let mut staged: Vec<(QueueId, usize, Vec<usize>)> = Vec::new();
    let mut wait: Vec<Option<Ticket>> = vec![None; n];
    let mut buf = Vec::new();
    for q in catalog.iter() {
        let queue = QueueId(q.id);
        let owner = q.partition as usize % n;
        let foreign: Vec<usize> = (0..n)
            .filter(|&p| p != owner && parts[p].store.queue_len(queue).0 > 0)
            .collect();
        if foreign.is_empty() {
            continue;
        }
        report.queues += 1;
        let mut present = std::collections::HashSet::new();
        let mut c = Cursor::new(queue);
        while let Some(m) = parts[owner].store.cursor_next(&mut c) {
            present.insert(m.meta.message_id);
        }
        // Each foreign partition's cursor and the MSMQ order key of the message it would give
        // next (priority high first, SentTime, partition), computed once per message.
        type Key = (std::cmp::Reverse<u8>, u32, usize);
        let head = |parts: &[Partition<S>], p: usize, cur: &Cursor| -> Option<Key> {
            let mut probe = *cur;
            let m = parts[p].store.cursor_next(&mut probe)?;
            let sent = UserMessage::parse(m.bytes).map_or(0, |u| u.user.sent_time);
            Some((std::cmp::Reverse(m.meta.priority), sent, p))
        };
        let mut cursors: Vec<(usize, Cursor, Option<Key>)> = foreign
            .iter()
            .map(|&p| {
                let c = Cursor::new(queue);
                (p, c, head(parts, p, &c))
            })
            .collect();
        let mut ok = true;
        // The next message in MSMQ order among the foreign partitions' heads.
        while let Some(k) = (0..cursors.len())
            .filter(|&k| cursors[k].2.is_some())
            .min_by_key(|&k| cursors[k].2)
        {
            let (p, mut cur) = (cursors[k].0, cursors[k].1);
            let Some(m) = parts[p].store.cursor_next(&mut cur) else {
                break;
            };
            let (id, meta) = (m.meta.message_id, m.meta);
            buf.clear();
            buf.extend_from_slice(m.bytes);
            cursors[k].1 = cur;
            cursors[k].2 = head(parts, p, &cur);
            if !present.insert(id) {
                continue;
            }
            match parts[owner].store.append(queue, &meta, &buf) {
                Ok(a) => {
                    report.moved += 1;
                    wait[owner] = Some(wait[owner].map_or(a.ticket, |t| t.max(a.ticket)));
                }
                Err(e) => {
                    tracing::error!(queue = %q.name, owner, error = %e, "cannot move a message of a spread queue into its owning partition; the queue stays spread (all its messages are still delivered)");
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            staged.push((queue, owner, foreign));
        } else {
            report.failed += 1;
        }
    }
    if staged.is_empty() {
        return report;
    }
    // The copies are durable before any original goes.
    let mut durable = vec![true; n];
    for (p, t) in wait.iter().enumerate() {
        if let Some(t) = *t {
            if let Err(e) = parts[p].commit(Some(t)) {
                tracing::error!(partition = p, error = %e, "cannot commit the messages moved into partition {p}; the queues stay spread");
                durable[p] = false;
            }
        }
    }
    let mut purge_wait: Vec<Option<Ticket>> = vec![None; n];
    for (queue, owner, foreign) in staged {
        if !durable[owner] {
            report.failed += 1;
            continue;
        }
        for p in foreign {
            let before = parts[p].store.queue_len(queue).0;
            match parts[p].store.purge(queue) {
                Ok(t) => {
                    report.purged += before;
                    purge_wait[p] = Some(purge_wait[p].map_or(t, |w| w.max(t)));
                }
                Err(e) => {
                    tracing::error!(partition = p, queue = queue.0, error = %e, "cannot remove the moved messages from partition {p}; they stay and are skipped by the next start");
                }
            }
        }
    }
    for (p, t) in purge_wait.iter().enumerate() {
        if let Some(t) = *t {
            if let Err(e) = parts[p].commit(Some(t)) {
                tracing::error!(partition = p, error = %e, "cannot commit the removal of moved messages; the next start removes them");
            }
        }
    }
    report
}
