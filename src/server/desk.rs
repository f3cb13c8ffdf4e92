//! The request desk of a shard: the HTTP API's and SRMP's requests for the queues it runs
//! (`qm::requests::Desk`), served each turn, and the records those requests owe other queues
//! (`qm::broker::Owed`: receive acks, FinalAcks, journal copies), stored here or mailed to the
//! shard running their partition before the desk answers.

use super::{unix_now, MsmqApp};
use crate::qm::broker::{RecordStored, SystemRecord};
use crate::store::{QueueStore, Ticket};

impl<S: QueueStore> MsmqApp<S> {
    /// Serves the HTTP API's and SRMP's requests arriving on `rx` (this shard's channel; see
    /// `qm::requests`).
    pub fn take_requests(&mut self, rx: std::sync::mpsc::Receiver<crate::qm::requests::Request>) {
        self.desk = Some(crate::qm::requests::Desk::new(
            self.shared.broker.clone(),
            rx,
            self.shard,
            self.owned.clone(),
        ));
    }

    /// Takes this turn's requests: each stages its work on a partition this shard runs; the
    /// answers waiting for the disk make this turn commit those partitions and are given once
    /// the shard sees them durable (`Desk::settle`, after the commits).
    ///
    /// What answers owe other queues once their removals are durable (receive acks,
    /// FinalAcks, journal copies, stream receipts: `qm::broker::Owed`) is stored first, here
    /// or by mail to the shard running the queue it goes to (`store_record`'s rule), and the
    /// desk answers once those records are durable too.
    pub(super) fn serve_requests(&mut self, now_ms: u64) {
        let Some(mut desk) = self.desk.take() else {
            return;
        };
        for (id, owed) in desk.take_records() {
            for o in owed {
                let at = match self.owed_record(&o) {
                    Some(rec) => self.store_desk_record(now_ms, rec, id),
                    None => Some(None),
                };
                if let Some(at) = at {
                    desk.record_placed(id, at);
                }
            }
        }
        let mut touched = Vec::new();
        desk.serve(now_ms, &mut touched);
        let tx_acks = desk.take_tx_acks();
        self.desk = Some(desk);
        if !tx_acks.is_empty() {
            // SRMP stream receipts: taken as OrderAcks arriving on this shard are.
            self.tx_acks.extend(tx_acks);
            self.send_owed_acks(now_ms);
        }
        let here = self.here();
        for (p, t) in touched {
            if here(p) {
                if let Some(a) = self.appended.get_mut(p) {
                    *a = true;
                }
            }
            // Another shard's partition (a record stored there) is watched, never committed.
            self.await_ticket(p, t);
        }
    }

    /// Builds what `o` owes as a record (with one of this shard's leased ordinals).
    fn owed_record(&mut self, o: &crate::qm::broker::Owed) -> Option<SystemRecord> {
        let ordinal = if o.needs_ordinal() {
            self.next_ordinal()
        } else {
            0
        };
        self.shared.broker.owed_record(o, ordinal)
    }

    /// Builds and stores what `o` owes (`store_record`: by mail when another shard runs the
    /// queue it goes to); nobody waits for it.
    pub(super) fn store_owed(&mut self, now_ms: u64, o: crate::qm::broker::Owed) {
        if let Some(rec) = self.owed_record(&o) {
            self.store_record(now_ms, rec, None);
        }
    }

    /// [`MsmqApp::store_record`] for the request desk's record `id`: Some(where it was stored,
    /// None if not) when decided here, None when mailed to the shard running its partition
    /// (that shard's `Mail::Placed` answer comes back to the desk in `take_mail`).
    fn store_desk_record(
        &mut self,
        now_ms: u64,
        rec: SystemRecord,
        id: u64,
    ) -> Option<Option<(usize, Ticket)>> {
        let here = self.here();
        let mut rec = rec;
        loop {
            if !here(rec.partition) {
                let Some(h) = self.handoff.as_mut() else {
                    // No mesh means this shard runs every partition: never here.
                    let to = rec.partition % self.shared.shards;
                    tracing::error!(to, "a record for another shard without a mesh; dropped");
                    return Some(None);
                };
                // No session: the answer goes to the desk (`desk_records`).
                let reply = h.sessionless_reply(self.shard);
                h.desk_records.insert(reply.seq, id);
                self.mail_record(&rec, Some(reply));
                return None;
            }
            // This shard runs `rec.partition` (checked just above).
            match self
                .shared
                .broker
                .store_record(&rec, unix_now(), now_ms, &here)
            {
                RecordStored::At(p, ticket) => {
                    if let Some(a) = self.appended.get_mut(p) {
                        *a = true;
                    }
                    return Some(Some((p, ticket)));
                }
                RecordStored::Forward(next) => rec = next,
                RecordStored::Failed => return Some(None),
            }
        }
    }
}
