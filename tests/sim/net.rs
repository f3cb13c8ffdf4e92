//! A simulated TCP connection: two in-order byte pipes. MS-MQQB runs over TCP, so bytes are never
//! lost, duplicated or reordered inside one connection; what TCP does expose is modelled here:
//! arbitrary splitting and coalescing of the stream, latency, and resets that lose what is in
//! flight. Message-level reordering and duplication then come from reconnect-and-resend.

use std::collections::VecDeque;

use super::rng::Rng;

/// One direction of a connection: chunks of bytes with the time they become readable.
#[derive(Debug, Default)]
pub struct Pipe {
    chunks: VecDeque<(u64, Vec<u8>)>,
    /// TCP delivers in order: no chunk becomes readable before the one written before it.
    last_at_ms: u64,
}

/// Latency and segmentation of a pipe, drawn from the seed.
#[derive(Clone, Copy, Debug)]
pub struct PipeShape {
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    /// Largest piece a write is cut into.
    pub split_max: usize,
    /// Largest read the receiver makes (a read may join several pieces).
    pub read_max: usize,
}

impl Pipe {
    /// Writes `bytes`, cut into random pieces, each arriving after a random latency but never
    /// before the piece ahead of it.
    pub fn write(&mut self, rng: &mut Rng, now_ms: u64, shape: &PipeShape, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = (rng.range(1, shape.split_max as u64) as usize).min(rest.len());
            let (piece, tail) = rest.split_at(n);
            let at = (now_ms + rng.range(shape.latency_min_ms, shape.latency_max_ms))
                .max(self.last_at_ms);
            self.last_at_ms = at;
            self.chunks.push_back((at, piece.to_vec()));
            rest = tail;
        }
    }

    /// One read of up to a random number of the bytes readable at `now_ms`; None if none are.
    pub fn read(&mut self, rng: &mut Rng, now_ms: u64, shape: &PipeShape) -> Option<Vec<u8>> {
        if self.chunks.front().is_none_or(|c| c.0 > now_ms) {
            return None;
        }
        let want = rng.range(1, shape.read_max as u64) as usize;
        let mut out = Vec::new();
        while out.len() < want {
            let Some((at, mut chunk)) = self.chunks.pop_front() else {
                break;
            };
            if at > now_ms {
                self.chunks.push_front((at, chunk));
                break;
            }
            let take = (want - out.len()).min(chunk.len());
            out.extend_from_slice(&chunk[..take]);
            if take < chunk.len() {
                chunk.drain(..take);
                self.chunks.push_front((at, chunk));
            }
        }
        Some(out)
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// When the next byte becomes readable.
    pub fn next_at(&self) -> Option<u64> {
        self.chunks.front().map(|c| c.0)
    }

    /// A reset: whatever is in flight is gone.
    pub fn clear(&mut self) {
        self.chunks.clear();
    }
}

/// One TCP connection between a client and the server.
#[derive(Debug)]
pub struct Link {
    /// Unique for the whole run; messages carry it so the auditor knows which copy it sees.
    pub serial: u32,
    pub client: usize,
    pub c2s: Pipe,
    pub s2c: Pipe,
    /// The server's connection (its shard and id in that shard's turn), while open there.
    pub server_slot: Option<(usize, lior::engine::net::ConnId)>,
    /// The client reset the connection: the server's shard learns it at its next turn (a
    /// receive failing with ECONNRESET).
    pub peer_reset: bool,
    /// The server side is closed: the client sees end of stream once `s2c` is drained.
    pub server_gone: bool,
    /// The client side is closed.
    pub client_gone: bool,
    /// Message index of each recoverable message the client sent on this connection, by
    /// recoverable sequence number - 1: how the auditor reads the server's SessionAcks.
    pub rec_map: Vec<usize>,
    /// The highest recoverable sequence number the server's acks named so far (0: none).
    pub rec_acked: u16,
}

impl Link {
    pub fn new(serial: u32, client: usize) -> Link {
        Link {
            serial,
            client,
            c2s: Pipe::default(),
            s2c: Pipe::default(),
            server_slot: None,
            peer_reset: false,
            server_gone: false,
            client_gone: false,
            rec_map: Vec::new(),
            rec_acked: 0,
        }
    }
}
