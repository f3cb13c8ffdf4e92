//! Helpers of the tests that drive the store or the broker in-process: a delegating
//! `QueueStore` a test can step into, and the records and frames they store.

use lior::store::{
    Appended, Class, Cursor, LookupId, Maintenance, MessageId, MessageMeta, MessageRef, QueueId,
    QueueQuota, QueueStore, Reservation, Select, SimStore, StoreError, StoreStats, Ticket,
    EXPIRY_NEVER,
};
use lior::wire::user::{QueueRef, UserMessage};
use lior::wire::{utf16z, Guid, Utf16};

/// What a test does before the wrapped store's `append` or `poll_durable` runs: wait, or fail
/// the call (the error is returned in its place and the inner store is not called).
pub trait Hook: Sync {
    fn before_append(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn before_poll_durable(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A simulated store whose every call goes to `inner`, after `hook` had its say.
pub struct Hooked<H> {
    pub inner: SimStore,
    pub hook: H,
}

impl<H: Hook> QueueStore for Hooked<H> {
    fn append(
        &mut self,
        queue: QueueId,
        meta: &MessageMeta,
        bytes: &[u8],
    ) -> Result<Appended, StoreError> {
        self.hook.before_append()?;
        self.inner.append(queue, meta, bytes)
    }
    fn flush(&mut self) -> Result<(), StoreError> {
        self.inner.flush()
    }
    fn poll_durable(&mut self, wait: bool) -> Result<Ticket, StoreError> {
        self.hook.before_poll_durable()?;
        self.inner.poll_durable(wait)
    }
    fn is_durable(&self, ticket: Ticket) -> bool {
        self.inner.is_durable(ticket)
    }
    fn peek(&self, queue: QueueId, select: Select) -> Option<MessageRef<'_>> {
        self.inner.peek(queue, select)
    }
    fn cursor_next(&self, cursor: &mut Cursor) -> Option<MessageRef<'_>> {
        self.inner.cursor_next(cursor)
    }
    fn receive(
        &mut self,
        queue: QueueId,
        select: Select,
    ) -> Result<Option<Reservation>, StoreError> {
        self.inner.receive(queue, select)
    }
    fn reserved(&self, r: &Reservation) -> Result<MessageRef<'_>, StoreError> {
        self.inner.reserved(r)
    }
    fn release(&mut self, r: Reservation) -> Result<(), StoreError> {
        self.inner.release(r)
    }
    fn purge(&mut self, queue: QueueId) -> Result<Ticket, StoreError> {
        self.inner.purge(queue)
    }
    fn delete_queue(&mut self, queue: QueueId) -> Result<Ticket, StoreError> {
        self.inner.delete_queue(queue)
    }
    fn set_queue_quota(&mut self, queue: QueueId, quota: QueueQuota) {
        self.inner.set_queue_quota(queue, quota)
    }
    fn expired(&self, now: u32, max: usize, out: &mut Vec<(QueueId, LookupId)>) {
        self.inner.expired(now, max, out)
    }
    fn queue_len(&self, queue: QueueId) -> (u64, u64) {
        self.inner.queue_len(queue)
    }
    fn maintain(&mut self) -> Result<Maintenance, StoreError> {
        self.inner.maintain()
    }
    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }
}

/// A small recoverable UserMessage from `source` to `OS:localhost\private$\q`, labelled "x",
/// with the body "body".
pub fn recoverable_to_q(source: Guid, id: u32) -> Vec<u8> {
    let d = utf16z("OS:localhost\\private$\\q");
    let label = utf16z("x");
    let m = UserMessage::new(
        source,
        id,
        QueueRef::Direct(Utf16(&d)),
        Utf16(&label),
        b"body",
    )
    .with_recoverable(true);
    let mut out = vec![0u8; m.frame_len()];
    let n = m.encode(&mut out).unwrap();
    out.truncate(n);
    out
}

/// The meta of a recoverable message that never expires, whose message id begins with `tag`.
pub fn tagged_meta(tag: u64, priority: u8) -> MessageMeta {
    let mut id = [0u8; 20];
    id[..8].copy_from_slice(&tag.to_le_bytes());
    MessageMeta {
        priority,
        class: Class::Recoverable,
        message_id: MessageId(id),
        expiry_unix_s: EXPIRY_NEVER,
    }
}

/// `len` (at least 8) bytes of `tag % 251` whose first eight are `tag`: a body that names its
/// message.
pub fn tagged_body(tag: u64, len: usize) -> Vec<u8> {
    let mut v = vec![(tag % 251) as u8; len];
    v[..8].copy_from_slice(&tag.to_le_bytes());
    v
}

/// Flushes and waits until nothing is staged or in flight; panics after `rounds` rounds.
pub fn settle<S: QueueStore>(s: &mut S, rounds: usize) {
    for _ in 0..rounds {
        s.flush().unwrap();
        s.poll_durable(true).unwrap();
        if s.stats().pending_bytes == 0 {
            s.poll_durable(true).unwrap();
            if s.stats().pending_bytes == 0 {
                return;
            }
        }
    }
    panic!("store never settled in {rounds} rounds");
}
