//! The send -> store -> ack path with no syscalls, for the criterion benches and the allocation
//! test: an initiator session fed by the bench's [`Sender`] (template patched, not re-encoded),
//! an acceptor session that hands each message to the queue manager (any [`QueueStore`], e.g.
//! the in-memory one) and emits SessionAcks, which the initiator consumes. Bytes move between
//! the two in plain vectors that are recycled, as the engine recycles its buffers.

use std::sync::Arc;

use crate::qm::broker::{Broker, Verdict};
use crate::session::{Event, Framer, Inbound, Session, SessionConfig, SessionState};
use crate::store::{QueueStore, Ticket};
use crate::wire::Guid;

use super::client::{encode_template, Sender, SessionPlan};

/// An initiator and an acceptor joined back to back.
pub struct Pair<S> {
    initiator: Session,
    acceptor: Session,
    init_framer: Framer,
    acc_framer: Framer,
    sender: Sender,
    broker: Option<Arc<Broker<S>>>,
    /// Recycled transmit buffers, one per direction.
    spare_out: Vec<u8>,
    spare_back: Vec<u8>,
    now_ms: u64,
    now_ns: u64,
    /// Messages acknowledged so far.
    pub acked: u64,
    /// Messages the broker did not store (there should be none).
    pub not_stored: u64,
}

impl<S: QueueStore> Pair<S> {
    /// Opens the two sessions (handshake done). With `broker`, every message is delivered to
    /// it (the destination in `plan` must name one of its queues); without, the acceptor only
    /// runs the protocol. `plan.window` applies to both sides.
    pub fn new(plan: &SessionPlan, broker: Option<Arc<Broker<S>>>) -> anyhow::Result<Pair<S>> {
        let own = Guid([0x42; 16]);
        let server = broker.as_ref().map_or(Guid([0x24; 16]), |b| b.guid());
        let (template, body_offset) = encode_template(own, plan)?;
        let cfg = |g| SessionConfig {
            own_guid: g,
            window_size: plan.window,
            ..SessionConfig::default()
        };
        let mut p = Pair {
            initiator: Session::initiator(cfg(own), Guid::NULL, 0),
            acceptor: Session::acceptor(cfg(server), 0),
            init_framer: Framer::new(),
            acc_framer: Framer::new(),
            sender: Sender::new(template, body_offset, plan),
            broker,
            spare_out: Vec::new(),
            spare_back: Vec::new(),
            now_ms: 1,
            now_ns: 1,
            acked: 0,
            not_stored: 0,
        };
        p.sender.start(0);
        for _ in 0..8 {
            p.round();
            if p.initiator.state() == SessionState::Open && p.acceptor.state() == SessionState::Open
            {
                while p.initiator.poll_event().is_some() {}
                while p.acceptor.poll_event().is_some() {}
                return Ok(p);
            }
        }
        anyhow::bail!("the handshake did not complete")
    }

    /// One round trip: the initiator sends what its window admits, the acceptor stores and
    /// acknowledges, the initiator takes the acks. Returns the messages acknowledged.
    pub fn round(&mut self) -> u64 {
        // The clock moves a little every round so that timers never fire.
        self.now_ns += 1_000;
        self.now_ms = 1 + self.now_ns / 1_000_000;
        let now_ms = self.now_ms;
        if self.initiator.state() == SessionState::Open {
            self.sender
                .fill(&mut self.initiator, now_ms, self.now_ns, self.now_ns);
        }
        let out = self
            .initiator
            .take_transmit(std::mem::take(&mut self.spare_out));
        let acceptor = &mut self.acceptor;
        let mut last_rec: Option<u16> = None;
        let mut wait_for: Option<Ticket> = None;
        let mut not_stored = 0;
        {
            let broker = self.broker.as_ref();
            let _ = self.acc_framer.feed(&out, |frame| {
                if let Ok(Inbound::Message { msg, rec_seq, .. }) =
                    acceptor.handle_frame(now_ms, frame)
                {
                    if let Some(b) = broker {
                        // One partition: every queue's owner is partition 0.
                        let d = b.deliver(frame, &msg, 1_700_000_000, now_ms);
                        match d.verdict {
                            Verdict::Stored { ticket, .. } => {
                                if ticket != Ticket::IMMEDIATE {
                                    wait_for = Some(wait_for.map_or(ticket, |w| w.max(ticket)));
                                }
                            }
                            _ => not_stored += 1,
                        }
                    }
                    if rec_seq.is_some() {
                        last_rec = rec_seq;
                    }
                }
                Ok::<(), ()>(())
            });
            // The group commit of the round, then the recoverable acks may go.
            if let Some(b) = broker {
                let _ = b.partition(0).commit(wait_for);
            }
        }
        self.not_stored += not_stored;
        if let Some(r) = last_rec {
            self.acceptor.handle_durable(now_ms, r);
        }
        self.acceptor.flush_acks();
        let back = self
            .acceptor
            .take_transmit(std::mem::take(&mut self.spare_back));
        let initiator = &mut self.initiator;
        let _ = self.init_framer.feed(&back, |frame| {
            let _ = initiator.handle_frame(now_ms, frame);
            Ok::<(), ()>(())
        });
        let mut acked = 0;
        while let Some(ev) = self.initiator.poll_event() {
            if let Event::Acked { token } = ev {
                self.sender.on_acked(token, self.now_ns);
                acked += 1;
            }
        }
        while self.acceptor.poll_event().is_some() {}
        self.spare_out = out;
        self.spare_back = back;
        self.acked += acked;
        acked
    }

    /// Runs rounds until at least `n` more messages are acknowledged; returns how many were.
    pub fn run(&mut self, n: u64) -> u64 {
        let start = self.acked;
        while self.acked - start < n {
            if self.round() == 0 && self.initiator.is_closed() {
                break;
            }
        }
        self.acked - start
    }
}

/// A disk in memory whose writes are durable at once: the "in-memory store" of the benches.
/// Unlike [`crate::store::SimDisk`] it simulates no crash (which copies whole segments per
/// sync), so it costs only the copy of each batch into its segment.
#[derive(Default)]
pub struct MemDisk {
    segs: std::collections::BTreeMap<u64, Vec<u8>>,
    inflight: Option<Vec<crate::store::Chunk>>,
}

impl crate::store::Disk for MemDisk {
    fn segments(&mut self) -> Result<Vec<u64>, crate::store::StoreError> {
        Ok(self.segs.keys().copied().collect())
    }

    fn create_segment(&mut self, base: u64, bytes: u32) -> Result<(), crate::store::StoreError> {
        self.segs.insert(base, vec![0u8; bytes as usize]);
        Ok(())
    }

    fn remove_segment(&mut self, base: u64) -> Result<(), crate::store::StoreError> {
        self.segs.remove(&base);
        Ok(())
    }

    fn read(&self, base: u64) -> &[u8] {
        self.segs.get(&base).map(|s| &s[..]).unwrap_or(&[])
    }

    fn submit(&mut self, chunks: Vec<crate::store::Chunk>) -> Result<(), crate::store::StoreError> {
        for c in &chunks {
            let seg = self
                .segs
                .get_mut(&c.segment)
                .ok_or(crate::store::StoreError::Io {
                    errno: libc::ENOENT,
                })?;
            let o = c.offset as usize;
            seg[o..o + c.buf.len()].copy_from_slice(&c.buf);
        }
        self.inflight = Some(chunks);
        Ok(())
    }

    fn poll(
        &mut self,
        _wait: bool,
    ) -> Result<Option<Vec<crate::store::Chunk>>, crate::store::StoreError> {
        Ok(self.inflight.take())
    }

    fn zero(&mut self, base: u64, offset: u64, len: u64) -> Result<(), crate::store::StoreError> {
        if let Some(s) = self.segs.get_mut(&base) {
            let o = offset as usize;
            let e = (o + len as usize).min(s.len());
            s[o..e].fill(0);
        }
        Ok(())
    }
}

/// The store type of the benches.
pub type MemStore = crate::store::Store<MemDisk>;

/// A broker over one in-memory store partition, with queue `bench` created. `dir` holds the
/// catalog and the queue-manager GUID (real files, as in the tests).
pub fn mem_broker(dir: &std::path::Path) -> anyhow::Result<Arc<Broker<MemStore>>> {
    let cfg = crate::config::Config {
        data_dir: dir.to_path_buf(),
        ..crate::config::Config::default()
    };
    let (store, _) = crate::store::Store::open(MemDisk::default(), Default::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let b = Broker::with_stores(cfg, vec![store])?;
    b.create_queue("bench", false)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Arc::new(b))
}
