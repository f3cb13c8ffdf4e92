//! The AMQP hot path allocates nothing: decoding a transfer frame and its message, a flow and
//! a disposition, and encoding a disposition, a flow and a (multi-frame) transfer into a
//! caller's reused `Vec<u8>`. A counting global allocator watches this thread only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use lior::amqp::frame::{encode_amqp_frame, frame_len, parse_frame};
use lior::amqp::message::{encode_data, Message};
use lior::amqp::performatives::{DeliveryState, Disposition, Flow, Performative, Role, Transfer};

struct Counting;

thread_local! {
    /// Allocations made by this thread (tests run in parallel; each counts only its own).
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const MAX_FRAME: u32 = 64 * 1024;

fn disposition(first: u32) -> Performative<'static> {
    Performative::Disposition(Disposition {
        role: Role::Receiver,
        first,
        last: Some(first + 10),
        settled: true,
        state: Some(DeliveryState::Accepted),
        batchable: false,
    })
}

fn flow(credit: u32) -> Performative<'static> {
    Performative::Flow(Flow {
        next_incoming_id: Some(1),
        incoming_window: 2048,
        next_outgoing_id: 1,
        outgoing_window: 2048,
        handle: Some(0),
        delivery_count: Some(7),
        link_credit: Some(credit),
        available: None,
        drain: false,
        echo: false,
        properties: None,
    })
}

#[test]
fn hot_path_decode_and_encode_do_not_allocate() {
    // Inputs built beforehand (allocation allowed here).
    let mut message = Vec::new();
    encode_data(&mut message, &[0x42; 100]).unwrap();
    let mut frames = Vec::new();
    let tag = 7u64.to_be_bytes();
    Transfer::new(0, 7, &tag)
        .encode_frames(&mut frames, 1, &message, MAX_FRAME)
        .unwrap();
    let mut control = Vec::new();
    encode_amqp_frame(&mut control, 1, &flow(100), &[], MAX_FRAME).unwrap();
    let flow_len = control.len();
    encode_amqp_frame(&mut control, 1, &disposition(3), &[], MAX_FRAME).unwrap();
    let big = vec![0x17u8; 200_000];
    let mut out: Vec<u8> = Vec::with_capacity(512 * 1024);

    let before = allocs();
    let mut bodies = 0;
    for i in 0..1000u32 {
        // Decode: a transfer frame, its message, a flow, a disposition.
        let n = frame_len(&frames, MAX_FRAME).unwrap().unwrap();
        let f = parse_frame(&frames[..n], MAX_FRAME).unwrap();
        let Some((Performative::Transfer(t), payload)) = f.performative().unwrap() else {
            panic!("not a transfer")
        };
        assert_eq!(t.delivery_tag, Some(&tag[..]));
        let m = Message::decode(payload).unwrap();
        bodies += m.body.data_len();
        let f = parse_frame(&control[..flow_len], MAX_FRAME).unwrap();
        assert!(matches!(
            f.performative().unwrap(),
            Some((Performative::Flow(_), _))
        ));
        let f = parse_frame(&control[flow_len..], MAX_FRAME).unwrap();
        assert!(matches!(
            f.performative().unwrap(),
            Some((Performative::Disposition(_), _))
        ));

        // Encode into the reused buffer: disposition, flow, a 200 kB transfer in 4 frames.
        out.clear();
        encode_amqp_frame(&mut out, 1, &disposition(i), &[], MAX_FRAME).unwrap();
        encode_amqp_frame(&mut out, 1, &flow(i), &[], MAX_FRAME).unwrap();
        let frames_sent = Transfer::new(0, i, &tag)
            .encode_frames(&mut out, 1, &big, MAX_FRAME)
            .unwrap();
        assert_eq!(frames_sent, 4);
    }
    let after = allocs();
    assert_eq!(bodies, 100_000);
    assert_eq!(after - before, 0, "allocations on the AMQP hot path");
}
