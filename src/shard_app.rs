//! The app each shard runs: MS-MQQB ([`MsmqApp`]) and AMQP 1.0 ([`AmqpApp`]) on the same loop,
//! slab and partitions. Connections are told apart by the listener they arrived on
//! ([`MSMQ_LISTENER`], [`AMQP_LISTENER`]) and by their variant afterwards; the per-turn hooks
//! run both (MS-MQQB first: its end of turn commits the shard's partitions, which the AMQP app
//! then looks at for durability and arrivals). AMQP links whose queue another shard runs reach
//! it by mail through the MS-MQQB app's port (`pump_amqp`, `MsmqApp::amqp_inbox`).

use std::net::SocketAddr;
use std::sync::Arc;

use crate::amqp::app::{AmqpApp, AmqpConn, AmqpShared};
use crate::amqp::AMQP_LISTENER;
use crate::engine::net::{App, AppError, CloseReason, ConnId, FileOp, Listener};
use crate::qm::broker::Broker;
use crate::server::{MsmqApp, MsmqConn, Shared, MSMQ_LISTENER};
use crate::store::QueueStore;

/// One connection of a shard: MS-MQQB or AMQP.
#[derive(Debug)]
pub enum ShardConn {
    Msmq(MsmqConn),
    Amqp(AmqpConn),
}

/// Both doors of one shard.
pub struct ShardApp<S> {
    pub msmq: MsmqApp<S>,
    pub amqp: AmqpApp<S>,
    broker: Arc<Broker<S>>,
    /// The partitions whose commit writes and fdatasyncs go on this shard's ring
    /// ([`ShardApp::commit_on_shard_ring`]).
    on_ring: Vec<usize>,
}

impl<S: QueueStore> ShardApp<S> {
    pub fn new(shared: Arc<Shared<S>>, amqp: Arc<AmqpShared>, shard: usize) -> Self {
        ShardApp {
            broker: shared.broker.clone(),
            msmq: MsmqApp::new(shared.clone(), shard),
            amqp: AmqpApp::new(shared, amqp, shard),
            on_ring: Vec::new(),
        }
    }

    /// From the shard's thread before its loop starts: the commit writes and fdatasyncs of
    /// the partitions it runs go on its own ring from now on ([`App::poll_file_ops`]); until
    /// the loop is over ([`App::file_ops_stopped`]), when each store drives them itself again.
    /// A partition that cannot keeps its store's own ring (logged).
    pub fn commit_on_shard_ring(&mut self, shard: usize, shards: usize) {
        for p in (shard..self.broker.partition_count()).step_by(shards.max(1)) {
            match self.broker.stage_on_shard(p, true) {
                Ok(true) => self.on_ring.push(p),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(shard, partition = p, error = %e, "cannot commit on the shard's ring; the store keeps its own")
                }
            }
        }
    }
}

impl<S: QueueStore> ShardApp<S> {
    /// Hands what the AMQP app has for other shards to the MS-MQQB app, which owns the
    /// shard's mail port (branch amqpown: the smaller change than moving the port into a
    /// struct both apps borrow, which would touch every mail path of the MS-MQQB app): mail
    /// as it is, records through `MsmqApp::store_record` (stored here when this shard runs
    /// their partition, else `Mail::Store` to the shard that does). Run after every AMQP hook.
    fn pump_amqp(&mut self, now_ms: u64) {
        self.amqp.set_meshed(self.msmq.is_meshed());
        if self.amqp.outbox.is_empty() {
            return;
        }
        let out = std::mem::take(&mut self.amqp.outbox);
        for (to, head, body) in out.mail {
            self.msmq.send_mail(to, &head, &body);
        }
        for (rec, reply) in out.records {
            self.msmq.store_record(now_ms, rec, reply);
        }
        // Hooks run after the end of turn too (`poll_transmit` of the connections it made
        // ready): the mail goes now, not at the next end of turn, which may be far.
        self.msmq.flush_mail();
    }
}

fn min_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl<S: QueueStore> App for ShardApp<S> {
    type Conn = ShardConn;

    fn accept(
        &mut self,
        now_ms: u64,
        id: ConnId,
        peer: SocketAddr,
        listener: Listener,
    ) -> Option<ShardConn> {
        if listener == MSMQ_LISTENER {
            self.msmq
                .accept(now_ms, id, peer, listener)
                .map(ShardConn::Msmq)
        } else if listener == AMQP_LISTENER {
            self.amqp.set_meshed(self.msmq.is_meshed());
            Some(ShardConn::Amqp(self.amqp.accept(now_ms, id, peer)))
        } else if listener == crate::amqp::AMQPS_LISTENER {
            self.amqp.set_meshed(self.msmq.is_meshed());
            self.amqp.accept_tls(now_ms, id, peer).map(ShardConn::Amqp)
        } else {
            tracing::debug!(%peer, %listener, "no app serves this listener: refused");
            None
        }
    }

    fn on_recv(&mut self, now_ms: u64, conn: &mut ShardConn, bytes: &[u8]) -> Result<(), AppError> {
        match conn {
            ShardConn::Msmq(c) => self.msmq.on_recv(now_ms, c, bytes),
            ShardConn::Amqp(c) => {
                let r = self.amqp.on_recv(now_ms, c, bytes);
                self.pump_amqp(now_ms);
                r
            }
        }
    }

    fn poll_transmit(&mut self, now_ms: u64, conn: &mut ShardConn, buf: &mut Vec<u8>) {
        match conn {
            ShardConn::Msmq(c) => self.msmq.poll_transmit(now_ms, c, buf),
            ShardConn::Amqp(c) => {
                self.amqp.poll_transmit(now_ms, c, buf);
                self.pump_amqp(now_ms);
            }
        }
    }

    fn deadline(&self, conn: &ShardConn) -> Option<u64> {
        match conn {
            ShardConn::Msmq(c) => self.msmq.deadline(c),
            ShardConn::Amqp(c) => self.amqp.deadline(c),
        }
    }

    fn on_timeout(&mut self, now_ms: u64, conn: &mut ShardConn) {
        match conn {
            ShardConn::Msmq(c) => self.msmq.on_timeout(now_ms, c),
            ShardConn::Amqp(c) => {
                self.amqp.on_timeout(now_ms, c);
                self.pump_amqp(now_ms);
            }
        }
    }

    fn wants_close(&self, conn: &ShardConn) -> bool {
        match conn {
            ShardConn::Msmq(c) => self.msmq.wants_close(c),
            ShardConn::Amqp(c) => self.amqp.wants_close(c),
        }
    }

    fn on_closed(&mut self, now_ms: u64, conn: ShardConn, reason: CloseReason) {
        match conn {
            ShardConn::Msmq(c) => self.msmq.on_closed(now_ms, c, reason),
            ShardConn::Amqp(c) => {
                self.amqp.on_closed(now_ms, c, reason);
                self.pump_amqp(now_ms);
            }
        }
    }

    fn end_of_turn(&mut self, now_ms: u64) {
        self.msmq.end_of_turn(now_ms);
        // Mail for the AMQP app (other shards' requests, answers to its own), then its end of
        // turn; what it sends goes out with this turn's flush.
        self.amqp.set_meshed(self.msmq.is_meshed());
        let inbox = std::mem::take(&mut self.msmq.amqp_inbox);
        if !inbox.is_empty() {
            self.amqp.take_mail(now_ms, inbox);
        }
        self.amqp.end_of_turn(now_ms);
        self.pump_amqp(now_ms);
    }

    fn poll_connect(&mut self, now_ms: u64) -> Option<(SocketAddr, ShardConn)> {
        self.msmq
            .poll_connect(now_ms)
            .map(|(a, c)| (a, ShardConn::Msmq(c)))
    }

    fn on_connected(&mut self, now_ms: u64, id: ConnId, conn: &mut ShardConn) {
        if let ShardConn::Msmq(c) = conn {
            self.msmq.on_connected(now_ms, id, c);
        }
    }

    fn poll_ready(&mut self) -> Option<ConnId> {
        self.msmq.poll_ready().or_else(|| self.amqp.poll_ready())
    }

    fn poll_close(&mut self) -> Option<(ConnId, AppError)> {
        self.msmq.poll_close()
    }

    fn app_deadline(&self) -> Option<u64> {
        min_opt(self.msmq.app_deadline(), self.amqp.app_deadline())
    }

    fn on_app_deadline(&mut self, now_ms: u64) {
        self.msmq.on_app_deadline(now_ms);
    }

    fn poll_file_ops(&mut self, out: &mut Vec<FileOp>) {
        for &p in &self.on_ring {
            self.broker.take_file_ops(p, out);
        }
    }

    fn on_file_complete(&mut self, _now_ms: u64, token: u64, result: i32) {
        // The partition's commit at this turn's end reaps it (a failure poisons its log).
        self.broker.file_complete(token, result);
    }

    fn file_ops_stopped(&mut self, all_completed: bool) {
        if !all_completed {
            tracing::error!(
                partitions = ?self.on_ring,
                "the shard stopped with store writes in flight on its ring; their buffers are \
                 leaked and the partitions' logs poisoned (restart recovers what was synced)"
            );
        }
        for p in std::mem::take(&mut self.on_ring) {
            if let Err(e) = self.broker.stage_on_shard(p, false) {
                tracing::error!(partition = p, error = %e, "handing the store its own ring back");
            }
        }
    }
}
