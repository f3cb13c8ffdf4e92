//! Queue journals (MS-MQDMPR 3.1.1.2 Journal, JournalQuota): a queue whose `journal` setting is
//! on keeps a copy of every message an application receives from it in `NAME;journal`. The
//! journal is a store queue of its own (id [`journal_id`]) in the queue's owning partition: the
//! copy is appended under the same partition lock as the removal it comes with, so both are
//! durable with the same commit (the receive is answered only then). Over `JournalQuota` (KB,
//! `[Parameters]`) the copy is dropped and counted (`lior_journal_dropped_total`) and the
//! receive still succeeds, as MSMQ does. A journal is read, peeked at and purged through the
//! API and the CLI like any queue (`lior receive 'NAME;journal'`); nothing can be sent to it.

use crate::qm::catalog::{QueueDef, FIRST_USER_QUEUE_ID};
use crate::store::{MessageMeta, QueueId, QueueStore};

use super::partition::Partition;
use super::{bump, ApiError, Broker};

/// Set in the store queue id of a queue's journal: `journal_id(q) = q | JOURNAL_QUEUE_BIT`.
/// Queue ids stay far below it (`limits.queues_max`), and the outgoing and system ranges
/// (0xFFFE_xxxx, 0xFFFF_FFxx) are never journaled.
pub const JOURNAL_QUEUE_BIT: u32 = 0x4000_0000;

/// The suffix naming a queue's journal (`orders;journal`, MS-MQMQ 2.1 format name suffix).
pub const JOURNAL_SUFFIX: &str = ";journal";

/// The store queue id of queue `id`'s journal.
pub fn journal_id(id: u32) -> u32 {
    id | JOURNAL_QUEUE_BIT
}

/// `name` without its `;journal` suffix (any case), when it names a journal.
pub fn journal_base(name: &str) -> Option<&str> {
    let n = name.len().checked_sub(JOURNAL_SUFFIX.len())?;
    (name.is_char_boundary(n) && name[n..].eq_ignore_ascii_case(JOURNAL_SUFFIX)).then(|| &name[..n])
}

impl<S: QueueStore> Broker<S> {
    /// Source journaling (MS-MQQB 3.1.5.5.4; DIGEST §14.3): a copy of non-transactional
    /// message `l` of outgoing queue `q` when it asked for positive journaling (JP), taken as
    /// the next hop acknowledges it; the caller stores it with [`Broker::keep_source_journal`]
    /// once it holds no partition lock. Transactional messages are journaled on their
    /// FinalAck instead (`final_acks`).
    pub fn source_journal_copy(
        &self,
        store: &S,
        q: QueueId,
        l: crate::store::LookupId,
    ) -> Option<(Vec<u8>, MessageMeta)> {
        let m = store.peek(q, crate::store::Select::Lookup(l))?;
        if m.meta.class == crate::store::Class::Transactional {
            return None;
        }
        let u = crate::wire::user::UserMessage::parse(m.bytes).ok()?;
        (u.user.flags.journal_positive()
            && u.properties.message_class == crate::wire::headers::MessageClass::NORMAL)
            .then(|| (m.bytes.to_vec(), m.meta))
    }

    /// Stores a source-journal copy in the machine journal (`SYSTEM$;JOURNAL`, under
    /// `MachineJournalQuota`) at once, from a thread that runs no shard (a shard stores
    /// [`Broker::machine_journal_record`] with `MsmqApp::store_record`). Call with no
    /// partition lock held.
    pub fn keep_source_journal(&self, frame: &[u8], _meta: &MessageMeta) {
        self.send_owed(vec![super::Owed::MachineJournal {
            frame: frame.to_vec(),
        }]);
    }

    /// A copy of `frame` for the machine journal, as a record for the partition owning it
    /// (stored by that partition's shard: [`Broker::store_record`], kind `MachineJournal`).
    pub fn machine_journal_record(&self, frame: &[u8]) -> super::SystemRecord {
        let q = crate::qm::catalog::JOURNAL_ID;
        super::SystemRecord {
            kind: crate::qm::handoff::StoreKind::MachineJournal,
            queue: q,
            partition: self.dead_letter_partition(q),
            frame: frame.to_vec(),
        }
    }

    /// Appends a machine-journal copy of `frame` in `part` (the journal's owning partition,
    /// run by the caller), under `MachineJournalQuota` and never expiring (it would owe its
    /// sender a NACK); counted. None when dropped (full, logged and counted) or not stored.
    pub(super) fn append_machine_journal(
        &self,
        part: &mut Partition<S>,
        frame: &[u8],
        meta: &MessageMeta,
    ) -> Option<crate::store::Ticket> {
        let q = QueueId(crate::qm::catalog::JOURNAL_ID);
        let quota_kb = self.config.parameters.MachineJournalQuota;
        let (_, bytes) = part.store.queue_len(q);
        if bytes.saturating_add(frame.len() as u64) > quota_kb.saturating_mul(1024) {
            bump(&self.counters.journal_dropped);
            if crate::ratelog::QUOTA.allow() {
                tracing::warn!(quota_kb, bytes, "machine journal full (Parameters.MachineJournalQuota, KB): a journal copy is dropped (lior_journal_dropped_total)");
            }
            return None;
        }
        let meta = MessageMeta {
            expiry_unix_s: crate::store::EXPIRY_NEVER,
            ..*meta
        };
        match part.store.append(q, &meta, frame) {
            Ok(a) => {
                bump(&self.counters.journal_copies);
                Some(a.ticket)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot store a machine journal copy");
                None
            }
        }
    }

    /// The journal of application queue `base` as a queue of its own: its store id, its name
    /// `BASE;journal`, the base queue's owning partition. System queues have no journal.
    pub(super) fn journal_def(&self, base: &str) -> Result<QueueDef, ApiError> {
        let full = format!("{base}{JOURNAL_SUFFIX}");
        let q = self
            .catalog()
            .lookup(base)
            .cloned()
            .ok_or_else(|| ApiError::NoSuchQueue(full.clone()))?;
        if q.id < FIRST_USER_QUEUE_ID || q.id >= JOURNAL_QUEUE_BIT {
            return Err(ApiError::NoSuchQueue(format!(
                "{full}: only application queues have a journal (the machine journal is \
                 `journal`)"
            )));
        }
        Ok(QueueDef {
            id: journal_id(q.id),
            name: format!("{}{JOURNAL_SUFFIX}", q.name),
            journal: false,
            quota_bytes: None,
            ..q
        })
    }

    /// A receive of `queue` takes a message (`meta`, `bytes`) in `part`: when the queue keeps a
    /// journal, a copy goes there first, in the same partition (durable with the removal).
    pub fn journal_received(
        &self,
        part: &mut Partition<S>,
        queue: &QueueDef,
        meta: &MessageMeta,
        bytes: &[u8],
    ) {
        if !queue.journal || queue.id >= JOURNAL_QUEUE_BIT {
            return;
        }
        let j = QueueId(journal_id(queue.id));
        let quota_kb = self.config.parameters.JournalQuota;
        let (_, used) = part.store.queue_len(j);
        if used.saturating_add(bytes.len() as u64) > quota_kb.saturating_mul(1024) {
            bump(&self.counters.journal_dropped);
            if crate::ratelog::QUOTA.allow() {
                tracing::warn!(queue = %queue.name, quota_kb, used, "journal full (Parameters.JournalQuota, KB): the copy of a received message is dropped (lior_journal_dropped_total); purge `{}{JOURNAL_SUFFIX}`", queue.name);
            }
            return;
        }
        match part.store.append(j, meta, bytes) {
            Ok(_) => bump(&self.counters.journal_copies),
            Err(e) => {
                bump(&self.counters.journal_dropped);
                if crate::ratelog::QUOTA.allow() {
                    tracing::error!(queue = %queue.name, error = %e, "cannot keep the journal copy of a received message; the receive goes on");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_names_and_ids() {
        assert_eq!(journal_base("orders;journal"), Some("orders"));
        assert_eq!(
            journal_base("private$\\Orders;JOURNAL"),
            Some("private$\\Orders")
        );
        assert_eq!(journal_base("orders"), None);
        assert_eq!(journal_base("é;journal"), Some("é"));
        assert_eq!(journal_id(0x10), 0x4000_0010);
    }
}
