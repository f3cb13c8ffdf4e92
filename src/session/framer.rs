//! Splits a TCP byte stream into MS-MQQB frames (DIGEST §1.1) with a bounded reassembly buffer.
//!
//! A frame that lies whole inside the chunk handed in is passed on as a slice of that chunk
//! (zero-copy); only a frame split across chunks is copied into the reassembly buffer, which
//! never holds more than one maximal frame.

use crate::wire::base::MAX_PACKET_SIZE;
use crate::wire::control::SESSION_HEADER_LEN;
use crate::wire::{frame_len, WireError};

/// The most bytes one frame can occupy: the largest PacketSize plus a trailing SessionHeader.
pub const FRAME_LEN_MAX: usize = MAX_PACKET_SIZE as usize + SESSION_HEADER_LEN;

/// Why the stream cannot be framed: the session must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError<E> {
    /// The BaseHeader at the start of a frame is invalid (version, signature, PacketSize).
    Wire(WireError),
    /// The frame handler refused the frame.
    Handler(E),
}

/// Reassembles frames from chunks of a byte stream.
#[derive(Debug, Default)]
pub struct Framer {
    partial: Vec<u8>,
}

impl Framer {
    pub fn new() -> Self {
        Framer::default()
    }

    /// Bytes held back waiting for the rest of a frame.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Feeds one chunk of the stream and calls `on_frame` with every complete frame, in order.
    /// Stops at the first error; the session is then to be closed, so no state is kept.
    pub fn feed<E>(
        &mut self,
        mut input: &[u8],
        mut on_frame: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), FrameError<E>> {
        // First complete a frame that an earlier chunk started.
        if !self.partial.is_empty() {
            loop {
                let need = frame_len(&self.partial)
                    .map_err(FrameError::Wire)?
                    .unwrap_or(16);
                debug_assert!(need <= FRAME_LEN_MAX);
                let missing = need - self.partial.len();
                let take = missing.min(input.len());
                self.partial.extend_from_slice(&input[..take]);
                input = &input[take..];
                if self.partial.len() < need {
                    return Ok(());
                }
                // `need` may have been the 16-byte BaseHeader only; loop to learn the real size.
                if let Some(n) = frame_len(&self.partial).map_err(FrameError::Wire)? {
                    if self.partial.len() == n {
                        let frame = std::mem::take(&mut self.partial);
                        let r = on_frame(&frame);
                        // Keep the allocation for the next split frame.
                        self.partial = frame;
                        self.partial.clear();
                        r.map_err(FrameError::Handler)?;
                        break;
                    }
                }
            }
        }
        // Then every whole frame inside the chunk, zero-copy.
        loop {
            match frame_len(input).map_err(FrameError::Wire)? {
                Some(n) if n <= input.len() => {
                    let (frame, rest) = input.split_at(n);
                    on_frame(frame).map_err(FrameError::Handler)?;
                    input = rest;
                }
                _ => break,
            }
        }
        self.partial.extend_from_slice(input);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{SessionAck, SessionHeader};

    fn ack(n: u16) -> Vec<u8> {
        let mut b = vec![0u8; 36];
        SessionAck::new(SessionHeader {
            ack_sequence_number: n,
            window_size: 64,
            ..Default::default()
        })
        .encode(&mut b)
        .unwrap();
        b
    }

    #[test]
    fn frames_survive_any_split() {
        let stream: Vec<u8> = (1..=5).flat_map(ack).collect();
        for chunk in 1..=stream.len() {
            let mut f = Framer::new();
            let mut seen = Vec::new();
            for c in stream.chunks(chunk) {
                f.feed(c, |fr| {
                    seen.push(fr[20]);
                    Ok::<(), ()>(())
                })
                .unwrap();
            }
            assert_eq!(seen, vec![1, 2, 3, 4, 5], "chunk size {chunk}");
            assert_eq!(f.buffered(), 0);
        }
    }

    #[test]
    fn hostile_size_is_refused_before_buffering() {
        let mut b = ack(1);
        b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut f = Framer::new();
        let e = f.feed(&b, |_| Ok::<(), ()>(())).unwrap_err();
        assert!(matches!(e, FrameError::Wire(_)));
        // Split before the size field: the error comes once the header is complete.
        let mut f = Framer::new();
        f.feed(&b[..10], |_| Ok::<(), ()>(())).unwrap();
        assert!(f.feed(&b[10..], |_| Ok::<(), ()>(())).is_err());
        assert!(f.buffered() <= 16);
    }

    #[test]
    fn handler_error_stops_the_feed() {
        let stream: Vec<u8> = (1..=3).flat_map(ack).collect();
        let mut f = Framer::new();
        let mut n = 0;
        let r = f.feed(&stream, |_| {
            n += 1;
            if n == 2 {
                Err("stop")
            } else {
                Ok(())
            }
        });
        assert_eq!(r, Err(FrameError::Handler("stop")));
        assert_eq!(n, 2);
    }
}
