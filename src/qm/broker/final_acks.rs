//! FinalAcks (MS-MQQB 2.2.5, 3.1.5.7, 3.1.7.2.2; DIGEST §6.2, §6.3, §10.2), both sides.
//!
//! As the receiver: a transactional message from another queue manager that asked for a
//! FinalAck (UserHeader JP or JN, or TransactionHeader FA) gets one when it leaves its queue:
//! ACK_RECEIVE when an application receives it, a NACK class when it is purged, deleted or
//! expires; every transactional message refused at arrival gets a negative one whatever its
//! flags. The FinalAck is addressed as OrderAcks are, to
//! `DIRECT=TCP:<sender>\PRIVATE$\order_queue$` (DIGEST §6.3), and queued in the outgoing queue
//! to that machine as admin acknowledgements are. Where a sender's FinalAcks go is remembered
//! per sender GUID in [`FinalAckPeers`], one table per store partition: the partition that
//! stores a message notes its sender's address (told by mail, `Mail::FinalAckPeer`, when the
//! session is another shard's) and is the one that owes its FinalAck (received, purged,
//! expired), so the table is read and written only by the shard running that partition, with
//! no machine-wide lock. Each is bounded by [`FINAL_ACK_PEERS_MAX`] and kept in
//! `final_ack_peers.p<N>.json` ([`final_ack_peers_file`]; the older machine-wide
//! [`FINAL_ACK_PEERS_FILE`] is merged into every partition's table at start), so a FinalAck
//! owed after a restart still finds its way.
//!
//! As the sender: a transactional message of ours that asked for a FinalAck is not dropped by
//! its OrderAck but moved, in the same partition and the same commit, to the internal queue
//! [`AWAITING_FINAL_ACK_QUEUE`] (MS-MQQB AwaitingFinalACKTable: on disk, so a restart keeps
//! it; bounded by [`AWAITING_FINAL_ACK_MAX`] per partition). A FinalAck is matched by MessageID,
//! TxSequenceID and TxSequenceNumber there or in the outgoing queues (it may overtake the
//! OrderAck); the message is then removed, after a copy to the machine journal (positive, JP) or
//! the transactional dead-letter queue (negative, JN). Unmatched FinalAcks are counted and
//! logged.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use crate::qm::catalog::{DEADXACT_ID, JOURNAL_ID};
use crate::store::{Class, Cursor, LookupId, MessageMeta, QueueId, QueueStore};
use crate::wire::format_name::DirectName;
use crate::wire::headers::MessageClass;
use crate::wire::user::{FinalAckBody, QueueRef, UserMessage};
use crate::wire::{utf16z, Guid, Utf16};

use super::partition::Partition;
use super::{bump, encode_message, unix_now, AckSource, Broker, Delivered, Verdict};

/// Senders whose FinalAck address is remembered at most (one entry per sending queue manager;
/// past it the oldest-looking entry is forgotten, with a log line).
pub const FINAL_ACK_PEERS_MAX: usize = 4_096;
/// The machine-wide file an older lior kept [`FinalAckPeers`] in: read (merged into every
/// partition's table) at start, never written.
pub const FINAL_ACK_PEERS_FILE: &str = "final_ack_peers.json";

/// The file in the data directory that keeps partition `p`'s [`FinalAckPeers`] across
/// restarts.
pub fn final_ack_peers_file(p: usize) -> String {
    format!("final_ack_peers.p{p}.json")
}
/// The internal queue holding our transactional messages that got their OrderAck and wait for
/// their FinalAck (MS-MQQB AwaitingFinalACKTable), in the partition of their outgoing queue.
pub const AWAITING_FINAL_ACK_QUEUE: QueueId = QueueId(0xFFFF_FF11);
/// Messages [`AWAITING_FINAL_ACK_QUEUE`] holds at most per partition; past it an OrderAck
/// removes the message as if it had asked for no FinalAck (logged, counted in
/// `lior_final_acks_not_awaited_total`).
pub const AWAITING_FINAL_ACK_MAX: u64 = 100_000;

/// Does `m` ask for a FinalAck once it leaves its destination queue (MS-MQQB 3.1.7.2.2)?
pub fn wants_final_ack(m: &UserMessage<'_>) -> bool {
    m.transaction.is_some_and(|t| {
        t.flags.final_ack_requested()
            || m.user.flags.journal_positive()
            || m.user.flags.journal_negative()
    })
}

/// Where each sending queue manager's FinalAcks go: its address as last seen on a session that
/// brought a transactional message asking for one into this table's partition. Written to
/// [`final_ack_peers_file`] when an entry changes (rare: a new sender or a sender that moved).
#[derive(Debug)]
pub struct FinalAckPeers {
    path: PathBuf,
    map: HashMap<Guid, IpAddr>,
}

impl FinalAckPeers {
    /// Reads partition `partition`'s table from `dir`: the older machine-wide file first, then
    /// the partition's own (newer) entries over it. An unreadable file is logged and skipped.
    pub fn open(dir: &Path, partition: usize) -> Self {
        let mut map = HashMap::new();
        Self::read_into(&dir.join(FINAL_ACK_PEERS_FILE), &mut map);
        let path = dir.join(final_ack_peers_file(partition));
        Self::read_into(&path, &mut map);
        FinalAckPeers { path, map }
    }

    fn read_into(path: &Path, map: &mut HashMap<Guid, IpAddr>) {
        match std::fs::read(path) {
            Ok(b) => match serde_json::from_slice::<BTreeMap<String, String>>(&b) {
                Ok(m) => {
                    for (g, ip) in m {
                        if let (Some(g), Ok(ip)) = (Guid::parse_text(&g), ip.parse()) {
                            if map.len() < FINAL_ACK_PEERS_MAX || map.contains_key(&g) {
                                map.insert(g, ip);
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "cannot read the FinalAck addresses; FinalAcks owed to senders not heard from since are counted in lior_final_acks_unroutable_total (delete the file to start over)")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot read the FinalAck addresses")
            }
        }
    }

    pub fn get(&self, g: &Guid) -> Option<IpAddr> {
        self.map.get(g).copied()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// `sender`'s FinalAcks go to `ip` from now on; written to disk when that is new.
    pub fn note(&mut self, sender: Guid, ip: IpAddr) {
        if sender.is_null() || self.map.get(&sender) == Some(&ip) {
            return;
        }
        if self.map.len() >= FINAL_ACK_PEERS_MAX && !self.map.contains_key(&sender) {
            if let Some(k) = self.map.keys().next().copied() {
                self.map.remove(&k);
                tracing::warn!(forgotten = %k, "FINAL_ACK_PEERS_MAX ({FINAL_ACK_PEERS_MAX}) senders remembered; one is forgotten, FinalAcks owed to it are not sent");
            }
        }
        self.map.insert(sender, ip);
        let file: BTreeMap<String, String> = self
            .map
            .iter()
            .map(|(g, ip)| (g.to_string(), ip.to_string()))
            .collect();
        let written = serde_json::to_vec_pretty(&file)
            .map_err(std::io::Error::other)
            .and_then(|b| crate::qm::identity::write_atomic(&self.path, &b));
        if let Err(e) = written {
            tracing::error!(file = %self.path.display(), error = %e, "cannot save the FinalAck addresses; after a restart FinalAcks owed to {sender} wait for its next message");
        }
    }
}

impl Delivered {
    /// The negative FinalAck owed for transactional message `msg` (this delivery's message)
    /// when it was refused at arrival (bad or non-transactional queue, access denied, bad
    /// signature, encrypted, quota): sent whatever its flags (MS-MQQB 3.1.7.2.2).
    pub fn final_nack(&self, msg: &UserMessage<'_>) -> Option<MessageClass> {
        match self.verdict {
            Verdict::DeadLettered { class, .. } | Verdict::Forwarded { class, .. }
                if msg.transaction.is_some() =>
            {
                Some(class)
            }
            _ => None,
        }
    }
}

impl<S: QueueStore> Broker<S> {
    /// A transactional message of `sender` asking for a FinalAck arrived from `ip`, for a
    /// queue of partition `partition`: that partition remembers where its sender's FinalAcks
    /// go. Called by the shard running `partition` only (the session's shard mails the note,
    /// `Mail::FinalAckPeer`, to the owner when it is another): the table is that shard's.
    pub fn note_final_ack_peer(&self, partition: usize, sender: Guid, ip: IpAddr) {
        if let Some(t) = self.final_ack_peers.get(partition) {
            self.probe_ownership(partition);
            t.borrow("FinalAck address table", partition)
                .note(sender, ip);
        }
    }

    /// Where `sender`'s FinalAcks go, as partition `partition` knows it (on the shard running
    /// it). `usize::MAX` (a caller that does not know the message's partition: the paths that
    /// run on no shard yet, AMQP) looks in every partition's table.
    fn final_ack_peer(&self, partition: usize, sender: &Guid) -> Option<IpAddr> {
        match self.final_ack_peers.get(partition) {
            Some(t) => {
                self.probe_ownership(partition);
                t.borrow("FinalAck address table", partition).get(sender)
            }
            // Only the tables of the partitions this thread runs (another shard's is its own).
            None => self
                .final_ack_peers
                .iter()
                .enumerate()
                .filter(|(p, _)| super::partition::thread_runs_partition(*p))
                .find_map(|(p, t)| t.borrow("FinalAck address table", p).get(sender)),
        }
    }

    /// The FinalAck of transactional message `msg` (MS-MQQB 2.2.5), which left a queue of
    /// partition `partition`, built with MessageIdOrdinal `ordinal`, as a record for the
    /// outgoing queue to its sender, at `peer` or where [`FinalAckPeers`] says. None for a
    /// message of this queue manager or an acknowledgement, or when the sender's address is
    /// not known (counted in `lior_final_acks_unroutable_total`).
    pub fn final_ack_record(
        &self,
        msg: &UserMessage<'_>,
        class: MessageClass,
        partition: usize,
        peer: Option<IpAddr>,
        ordinal: u32,
    ) -> Option<super::SystemRecord> {
        let th = msg.transaction?;
        let sender = msg.user.source_queue_manager;
        if msg.properties.message_class != MessageClass::NORMAL
            || sender == self.guid()
            || sender.is_null()
        {
            return None;
        }
        let Some(ip) = peer.or_else(|| self.final_ack_peer(partition, &sender)) else {
            bump(&self.counters.final_acks_unroutable);
            if crate::ratelog::QUOTA.allow() {
                tracing::warn!(%sender, message = msg.user.message_id, "FinalAck not sent: the sender's address is not known (lior_final_acks_unroutable_total)");
            }
            return None;
        };
        let text = format!("TCP:{ip}\\PRIVATE$\\order_queue$");
        let dest = match DirectName::parse_wire(&text) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, to = %text, "cannot address a FinalAck");
                bump(&self.counters.final_acks_unroutable);
                return None;
            }
        };
        // A sender at one of our own addresses is another queue manager on this host (its GUID
        // is not ours): it is reached over the network like any other, on `remote_port` or its
        // `[remotes]` port, never stored here.
        let body = FinalAckBody {
            tx_sequence_id: th.tx_sequence_id,
            tx_sequence_number: th.tx_sequence_number,
            tx_previous_sequence_number: th.previous_tx_sequence_number,
            source_guid: sender,
            message_id: msg.user.message_id,
        }
        .to_bytes();
        let wire = utf16z(&text);
        let m = UserMessage::final_ack(
            self.guid(),
            ordinal,
            QueueRef::Direct(Utf16(&wire)),
            class,
            &body,
        )
        .with_sent_time(unix_now());
        let frame = match encode_message(&m) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "cannot build a FinalAck");
                return None;
            }
        };
        match self.outgoing_queue_for(&dest) {
            Ok(def) => {
                tracing::info!(class = class.name(), message = %format!("{sender}\\{}", msg.user.message_id), via = %def.key, "FinalAck queued");
                Some(super::SystemRecord {
                    kind: crate::qm::handoff::StoreKind::FinalAck,
                    queue: def.id,
                    partition: def.shard % self.partitions.len(),
                    frame,
                })
            }
            Err(e) => {
                if crate::ratelog::QUOTA.allow() {
                    tracing::error!(error = %e, "cannot queue a FinalAck");
                }
                None
            }
        }
    }

    /// An OrderAck covers message `l` of outgoing queue `queue` (in `part`): when it asked for
    /// a FinalAck it is appended to [`AWAITING_FINAL_ACK_QUEUE`] of the same partition (its
    /// removal from the outgoing queue, by the caller, commits with it).
    pub(super) fn keep_awaiting_final_ack(&self, part: &mut Partition<S>, queue: u32, l: LookupId) {
        let Some((frame, meta)) = part
            .store
            .peek(QueueId(queue), crate::store::Select::Lookup(l))
            .map(|m| (m.bytes.to_vec(), m.meta))
        else {
            return;
        };
        if !UserMessage::parse(&frame).is_ok_and(|m| wants_final_ack(&m)) {
            return;
        }
        let (waiting, _) = part.store.queue_len(AWAITING_FINAL_ACK_QUEUE);
        if waiting >= AWAITING_FINAL_ACK_MAX {
            bump(&self.counters.final_acks_not_awaited);
            if crate::ratelog::QUOTA.allow() {
                tracing::warn!(waiting, "AWAITING_FINAL_ACK_MAX ({AWAITING_FINAL_ACK_MAX}) messages await their FinalAck in this partition; an acknowledged message is dropped without waiting for its FinalAck (lior_final_acks_not_awaited_total)");
            }
            return;
        }
        if let Err(e) = part.store.append(AWAITING_FINAL_ACK_QUEUE, &meta, &frame) {
            bump(&self.counters.final_acks_not_awaited);
            tracing::error!(error = %e, "cannot keep a message awaiting its FinalAck");
        }
    }

    /// Messages of ours awaiting their FinalAck, over every partition (for metrics).
    pub fn awaiting_final_ack_len(&self) -> u64 {
        (0..self.partitions.len())
            .map(|i| {
                self.partition(i)
                    .store
                    .queue_len(AWAITING_FINAL_ACK_QUEUE)
                    .0
            })
            .sum()
    }

    /// FinalAck `fa` as partition `p`'s owner sees it: when the message it names is in `p`
    /// (its awaiting queue, or an outgoing queue `p` stores), the message leaves it (staged
    /// and committed, not waited for) and the answer is `Some(copy)`: the copy owed to the
    /// machine journal (positive, JP) or the transactional dead-letter queue (negative, JN),
    /// for the caller to store where that queue lives (`MsmqApp::store_record`). None: not
    /// in `p`. For `p`'s owner (or a thread that runs no shard).
    pub fn take_final_ack_in(
        &self,
        p: usize,
        class: MessageClass,
        fa: &FinalAckBody,
    ) -> Option<Option<super::SystemRecord>> {
        if fa.source_guid != self.guid() {
            return None;
        }
        let (queue, lookup, frame, outgoing) = self.find_final_ack_target_in(p, fa)?;
        let orig = UserMessage::parse(&frame).ok()?;
        let positive = class == MessageClass::ACK_RECEIVE;
        let copy = if positive && orig.user.flags.journal_positive() {
            Some(self.machine_journal_record(&frame))
        } else if !positive && orig.user.flags.journal_negative() {
            // Counted here, where it is decided (a `DeadLetter` record is not counted where
            // it lands).
            bump(&self.counters.dead_lettered);
            Some(super::SystemRecord {
                kind: crate::qm::handoff::StoreKind::DeadLetter,
                queue: DEADXACT_ID,
                partition: self.dead_letter_partition(DEADXACT_ID),
                frame: frame.clone(),
            })
        } else {
            None
        };
        {
            let mut part = self.partition(p);
            if let Err(e) = part.remove_delivered(queue, lookup) {
                tracing::error!(error = %e, "cannot remove a message whose FinalAck came");
            }
            if let Err(e) = part.commit(None) {
                tracing::error!(error = %e, "commit after a FinalAck failed");
            }
            if outgoing {
                part.tx_progress.push(queue.0);
            }
        }
        if outgoing {
            if let Some(f) = self.outgoing_dirty.get(p) {
                f.store(true, Ordering::Release);
            }
            self.wake(p);
        }
        bump(&self.counters.final_acks_received);
        tracing::info!(
            class = class.name(),
            message = %format!("{}\\{}", fa.source_guid, fa.message_id),
            copied_to = copy.as_ref().map_or("nowhere", |r| if r.queue == JOURNAL_ID { "system$;journal" } else { "system$;deadxact" }),
            "FinalAck received"
        );
        Some(copy)
    }

    /// A FinalAck no partition held (or not for our messages): counted and logged as refused.
    /// Returns `taken`.
    pub fn finish_final_ack(&self, from: &AckSource, taken: bool) -> bool {
        if !taken {
            bump(&self.counters.final_acks_unmatched);
            self.refuse_tx_ack(
                from,
                "FinalAck",
                "no message of ours awaits it (already taken, never sent, or not ours)",
            );
        }
        taken
    }

    /// The stored message of partition `p` a FinalAck names: (queue, lookup id, frame, whether
    /// the queue is an outgoing queue), looked for in `p`'s awaiting queue, then in the
    /// outgoing queues `p` stores.
    fn find_final_ack_target_in(
        &self,
        p: usize,
        fa: &FinalAckBody,
    ) -> Option<(QueueId, LookupId, Vec<u8>, bool)> {
        let n = self.partitions.len();
        let ids: Vec<u32> = self.outgoing.read(|t| {
            t.iter()
                .filter(|d| d.shard % n == p)
                .map(|d| d.id)
                .collect()
        });
        let part = self.partition(p);
        if let Some((l, f, _)) = scan_for(&part.store, AWAITING_FINAL_ACK_QUEUE, fa) {
            return Some((AWAITING_FINAL_ACK_QUEUE, l, f, false));
        }
        ids.into_iter().find_map(|id| {
            scan_for(&part.store, QueueId(id), fa).map(|(l, f, _)| (QueueId(id), l, f, true))
        })
    }
}

/// The transactional message of queue `q` that FinalAck `fa` names (by MessageID, then its
/// TxSequenceID and TxSequenceNumber).
fn scan_for<S: QueueStore>(
    store: &S,
    q: QueueId,
    fa: &FinalAckBody,
) -> Option<(LookupId, Vec<u8>, MessageMeta)> {
    let id = fa.message_id.to_le_bytes();
    let mut c = Cursor::new(q);
    while let Some(m) = store.cursor_next(&mut c) {
        if m.meta.class != Class::Transactional || m.meta.message_id.0[16..] != id {
            continue;
        }
        let Ok(u) = UserMessage::parse(m.bytes) else {
            continue;
        };
        if u.user.message_id == fa.message_id
            && u.transaction.is_some_and(|t| {
                t.tx_sequence_id == fa.tx_sequence_id
                    && t.tx_sequence_number == fa.tx_sequence_number
            })
        {
            return Some((m.lookup_id, m.bytes.to_vec(), m.meta));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_table_survives_a_reopen_and_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        let mut t = FinalAckPeers::open(d.path(), 0);
        t.note(Guid([1; 16]), "10.0.0.1".parse().unwrap());
        t.note(Guid([0; 16]), "10.0.0.2".parse().unwrap());
        let t = FinalAckPeers::open(d.path(), 0);
        assert_eq!(t.get(&Guid([1; 16])), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(t.len(), 1, "the null GUID is never kept");
        assert!(
            FinalAckPeers::open(d.path(), 1).is_empty(),
            "each partition keeps its own table"
        );
        let mut t = FinalAckPeers::open(d.path(), 0);
        for i in 0..=FINAL_ACK_PEERS_MAX as u32 {
            let mut g = [7u8; 16];
            g[..4].copy_from_slice(&i.to_le_bytes());
            t.map.insert(Guid(g), "10.0.0.3".parse().unwrap());
            if t.map.len() > FINAL_ACK_PEERS_MAX {
                t.map.remove(&Guid(g));
            }
        }
        t.note(Guid([2; 16]), "10.0.0.4".parse().unwrap());
        assert_eq!(t.len(), FINAL_ACK_PEERS_MAX);
        assert!(t.get(&Guid([2; 16])).is_some());
    }

    #[test]
    fn the_older_machine_wide_file_is_merged_under_each_partitions_own_entries() {
        let d = tempfile::tempdir().unwrap();
        let old: BTreeMap<String, String> = [
            (Guid([3; 16]).to_string(), "10.0.0.3".to_string()),
            (Guid([4; 16]).to_string(), "10.0.0.4".to_string()),
        ]
        .into_iter()
        .collect();
        std::fs::write(
            d.path().join(FINAL_ACK_PEERS_FILE),
            serde_json::to_vec(&old).unwrap(),
        )
        .unwrap();
        let mut t = FinalAckPeers::open(d.path(), 1);
        t.note(Guid([4; 16]), "10.0.0.40".parse().unwrap());
        for p in [0, 1] {
            let t = FinalAckPeers::open(d.path(), p);
            assert_eq!(t.get(&Guid([3; 16])), Some("10.0.0.3".parse().unwrap()));
        }
        let moved = FinalAckPeers::open(d.path(), 1);
        assert_eq!(
            moved.get(&Guid([4; 16])),
            Some("10.0.0.40".parse().unwrap()),
            "the partition's own, newer, entry wins"
        );
    }
}
