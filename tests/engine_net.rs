//! The network engine on real io_uring and real loopback sockets (127.0.0.1, port 0), driven by
//! small test apps: echo, refusal, deadlines, outgoing connects and shutdown. Every wait is
//! bounded so a broken engine fails the test instead of hanging it.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use lior::engine::net::{
    now_ms, App, AppError, CloseReason, ConnId, CountersSnapshot, Engine, EngineConfig,
    EngineHandle, Errno, Listener,
};

const WAIT: Duration = Duration::from_secs(5);

fn loopback_config(cores: Vec<usize>) -> EngineConfig {
    EngineConfig {
        listen: vec![(Listener::FIRST, "127.0.0.1:0".parse().expect("address"))],
        cores,
        ring_entries: 256,
        recv_buffer_count: 64,
        recv_buffer_size: 4096,
        ..EngineConfig::default()
    }
}

fn connect(handle: &EngineHandle) -> TcpStream {
    let addr = handle.local_addr().expect("listening");
    let stream = TcpStream::connect(addr).expect("connect to the engine");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    stream.set_write_timeout(Some(WAIT)).expect("write timeout");
    stream
}

fn round_trip(stream: &mut TcpStream, message: &[u8]) {
    stream.write_all(message).expect("write");
    let mut back = vec![0; message.len()];
    stream.read_exact(&mut back).expect("echo comes back");
    assert_eq!(back, message);
}

/// Reads until the engine closes the connection; a timeout fails the test.
fn expect_closed(stream: &mut TcpStream) {
    let mut byte = [0u8; 64];
    loop {
        match read_some(stream, &mut byte) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(error) if error.kind() == ErrorKind::ConnectionReset => return,
            Err(error) => panic!("expected the engine to close the connection, got {error}"),
        }
    }
}

/// Shuts the engine down and returns its counters once every completion has been counted (a
/// client can read echoed bytes before the shard has processed the send's completion).
fn final_counters(handle: EngineHandle) -> CountersSnapshot {
    let live: Vec<_> = (0..handle.shard_count())
        .map(|shard| handle.shard_counters(shard).expect("shard"))
        .collect();
    handle.shutdown().expect("clean shutdown");
    let mut total = CountersSnapshot::default();
    for counters in live {
        total.add(&counters.snapshot());
    }
    total
}

/// `read` that retries when a signal interrupts it.
fn read_some(stream: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Polls `done` every few milliseconds for at most `WAIT`.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64: deterministic per seed, good enough to vary chunk sizes and bytes.
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }
}

// ----- the echo app -----

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Accepted(usize),
    Closed(usize, CloseReason),
    EndOfTurn(usize),
}

struct Echo {
    shard: usize,
    events: mpsc::Sender<Event>,
    /// Bytes containing this value make `on_recv` fail with AppError(7).
    poison: Option<u8>,
    /// Record every end_of_turn (only where the test needs it: it is called very often).
    log_turns: bool,
}

struct EchoConn {
    out: Vec<u8>,
}

impl App for Echo {
    type Conn = EchoConn;

    fn accept(
        &mut self,
        _now_ms: u64,
        _id: ConnId,
        _peer: SocketAddr,
        _listener: Listener,
    ) -> Option<EchoConn> {
        let _ = self.events.send(Event::Accepted(self.shard));
        Some(EchoConn { out: Vec::new() })
    }

    fn on_recv(&mut self, _now_ms: u64, conn: &mut EchoConn, bytes: &[u8]) -> Result<(), AppError> {
        if let Some(poison) = self.poison {
            if bytes.contains(&poison) {
                return Err(AppError(7));
            }
        }
        conn.out.extend_from_slice(bytes);
        Ok(())
    }

    fn poll_transmit(&mut self, _now_ms: u64, conn: &mut EchoConn, buf: &mut Vec<u8>) {
        std::mem::swap(buf, &mut conn.out);
    }

    fn deadline(&self, _conn: &EchoConn) -> Option<u64> {
        None
    }

    fn on_timeout(&mut self, _now_ms: u64, _conn: &mut EchoConn) {}

    fn wants_close(&self, _conn: &EchoConn) -> bool {
        false
    }

    fn on_closed(&mut self, _now_ms: u64, _conn: EchoConn, reason: CloseReason) {
        let _ = self.events.send(Event::Closed(self.shard, reason));
    }

    fn end_of_turn(&mut self, _now_ms: u64) {
        if self.log_turns {
            let _ = self.events.send(Event::EndOfTurn(self.shard));
        }
    }
}

fn start_echo(
    config: EngineConfig,
    poison: Option<u8>,
    log_turns: bool,
) -> (EngineHandle, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel();
    let handle = Engine::start(config, move |shard| Echo {
        shard,
        events: tx.clone(),
        poison,
        log_turns,
    })
    .expect("engine starts");
    (handle, rx)
}

/// Each client streams `total` random bytes in random chunks from one thread and reads them
/// back on another; everything must come back, in order.
fn stream_random(handle: &EngineHandle, clients: usize, total: usize, seed: u64) {
    let mut threads = Vec::new();
    for client in 0..clients {
        let mut stream = connect(handle);
        let mut reader = stream.try_clone().expect("clone");
        let seed = seed + client as u64 * 7919;
        threads.push(thread::spawn(move || {
            let mut rng = Rng(seed);
            let data: Vec<u8> = (0..total).map(|_| rng.next() as u8).collect();
            let expected = data.clone();
            let writer = thread::spawn(move || {
                let mut rng = Rng(seed ^ 0x5555);
                let mut at = 0;
                while at < data.len() {
                    let chunk = (1 + rng.below(9000)).min(data.len() - at);
                    stream
                        .write_all(&data[at..at + chunk])
                        .expect("client write");
                    at += chunk;
                }
                stream
            });
            let mut got = vec![0u8; expected.len()];
            let mut rng = Rng(seed ^ 0xaaaa);
            let mut at = 0;
            while at < got.len() {
                let want = (1 + rng.below(7000)).min(got.len() - at);
                let n = read_some(&mut reader, &mut got[at..at + want]).expect("client read");
                assert!(n > 0, "client {client}: engine closed after {at} bytes");
                at += n;
            }
            let _stream = writer.join().expect("writer");
            assert!(got == expected, "client {client}: bytes differ");
        }));
    }
    for thread in threads {
        thread.join().expect("client thread");
    }
}

#[test]
fn echo_many_connections_random_chunks_in_order() {
    // Every CPU the test may use: with two or more, SO_REUSEPORT spreads the clients.
    let (handle, _events) = start_echo(loopback_config(Vec::new()), None, false);
    let clients = 24;
    let total = 256 * 1024;
    stream_random(&handle, clients, total, 1);
    let counters = final_counters(handle);
    assert_eq!(counters.accepted, clients as u64);
    assert_eq!(counters.bytes_in, (clients * total) as u64);
    assert_eq!(counters.bytes_out, (clients * total) as u64);
}

#[test]
fn tiny_receive_buffers_still_deliver_everything_in_order() {
    // Four 64-byte buffers for eight busy connections: receives run out of buffers (ENOBUFS)
    // and must be re-armed without losing or reordering a byte.
    let config = EngineConfig {
        recv_buffer_count: 4,
        recv_buffer_size: 64,
        ..loopback_config(vec![0])
    };
    let (handle, _events) = start_echo(config, None, false);
    stream_random(&handle, 8, 64 * 1024, 99);
    let counters = final_counters(handle);
    assert_eq!(counters.bytes_out, 8 * 64 * 1024);
    eprintln!("recv_buffer_exhausted = {}", counters.recv_buffer_exhausted);
}

#[test]
fn app_error_closes_only_that_connection() {
    let (handle, events) = start_echo(loopback_config(vec![0]), Some(b'!'), false);
    let mut a = connect(&handle);
    let mut b = connect(&handle);
    let mut c = connect(&handle);
    for stream in [&mut a, &mut b, &mut c] {
        round_trip(stream, b"hello");
    }
    b.write_all(b"bad!").expect("write");
    expect_closed(&mut b);
    round_trip(&mut a, b"still here");
    round_trip(&mut c, b"me too");
    // The client sees the close (the engine shuts the socket down first) before the shard has
    // counted it and called on_closed, so read both after shutdown.
    let counters = final_counters(handle);
    let closed: Vec<CloseReason> = events
        .try_iter()
        .filter_map(|event| match event {
            Event::Closed(_, reason) => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(
        closed,
        vec![
            CloseReason::App(AppError(7)),
            CloseReason::Shutdown,
            CloseReason::Shutdown
        ]
    );
    assert_eq!(counters.closed_app_error, 1);
    assert_eq!(counters.closed_shutdown, 2);
}

#[test]
fn flood_beyond_max_connections_is_refused_and_existing_keep_working() {
    let config = EngineConfig {
        max_connections: 4,
        ..loopback_config(vec![0])
    };
    let (handle, _events) = start_echo(config, None, false);
    let mut kept: Vec<TcpStream> = (0..4).map(|_| connect(&handle)).collect();
    for stream in &mut kept {
        round_trip(stream, b"in");
    }
    let mut flood: Vec<TcpStream> = (0..12).map(|_| connect(&handle)).collect();
    for stream in &mut flood {
        // The write may land before the close; the engine must close without echoing.
        let _ = stream.write_all(b"x");
        expect_closed(stream);
    }
    assert_eq!(handle.counters().refused_limit, 12);
    for stream in &mut kept {
        round_trip(stream, b"still served");
    }
    // Freeing one slot lets a new connection in.
    drop(kept.pop());
    eventually("a freed slot to be reused", || {
        let mut stream = connect(&handle);
        if stream.write_all(b"again").is_err() {
            return false;
        }
        let mut back = [0u8; 5];
        stream.read_exact(&mut back).is_ok() && &back == b"again"
    });
    assert_eq!(handle.counters().accepted, 5);
    handle.shutdown().expect("clean shutdown");
}

#[test]
fn shutdown_closes_open_connections_and_joins() {
    let (handle, events) = start_echo(loopback_config(Vec::new()), None, true);
    let shards = handle.shard_count();
    let mut streams: Vec<TcpStream> = (0..6).map(|_| connect(&handle)).collect();
    for stream in &mut streams {
        round_trip(stream, b"ping");
    }
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = done_tx.send(handle.shutdown().map_err(|e| e.to_string()));
    });
    done_rx
        .recv_timeout(WAIT)
        .expect("shutdown joins in time")
        .expect("clean shutdown");
    for stream in &mut streams {
        expect_closed(stream);
    }
    let events: Vec<Event> = events.try_iter().collect();
    let closes = events
        .iter()
        .filter(|e| matches!(e, Event::Closed(_, CloseReason::Shutdown)))
        .count();
    assert_eq!(closes, 6);
    // Each shard's last call is an end_of_turn that follows all of its closes.
    for shard in 0..shards {
        let last_close = events
            .iter()
            .rposition(|e| matches!(e, Event::Closed(s, _) if *s == shard));
        let last_turn = events
            .iter()
            .rposition(|e| *e == Event::EndOfTurn(shard))
            .expect("end_of_turn ran");
        if let Some(last_close) = last_close {
            assert!(
                last_turn > last_close,
                "shard {shard}: no end_of_turn after its closes"
            );
        }
        let last_event = events
            .iter()
            .rposition(|e| matches!(e, Event::Closed(s, _) | Event::EndOfTurn(s) | Event::Accepted(s) if *s == shard));
        assert_eq!(last_event, Some(last_turn));
    }
}

// ----- deadlines -----

struct Ticker;

struct TickerConn {
    next_ms: Option<u64>,
    ticks: u32,
    out: Vec<u8>,
}

impl App for Ticker {
    type Conn = TickerConn;

    fn accept(
        &mut self,
        now_ms: u64,
        _id: ConnId,
        _peer: SocketAddr,
        _listener: Listener,
    ) -> Option<TickerConn> {
        Some(TickerConn {
            next_ms: Some(now_ms + 40),
            ticks: 0,
            out: Vec::new(),
        })
    }

    fn on_recv(
        &mut self,
        now_ms: u64,
        conn: &mut TickerConn,
        bytes: &[u8],
    ) -> Result<(), AppError> {
        // Any byte restarts the ticking: the deadline moves, so the stale heap entry must not
        // fire.
        if !bytes.is_empty() {
            conn.ticks = 0;
            conn.next_ms = Some(now_ms + 40);
        }
        Ok(())
    }

    fn poll_transmit(&mut self, _now_ms: u64, conn: &mut TickerConn, buf: &mut Vec<u8>) {
        std::mem::swap(buf, &mut conn.out);
    }

    fn deadline(&self, conn: &TickerConn) -> Option<u64> {
        conn.next_ms
    }

    fn on_timeout(&mut self, now_ms: u64, conn: &mut TickerConn) {
        conn.ticks += 1;
        conn.out
            .extend_from_slice(format!("T{};", conn.ticks).as_bytes());
        conn.next_ms = (conn.ticks < 3).then_some(now_ms + 20);
    }

    fn wants_close(&self, conn: &TickerConn) -> bool {
        conn.ticks >= 3 && conn.out.is_empty()
    }

    fn on_closed(&mut self, _now_ms: u64, _conn: TickerConn, _reason: CloseReason) {}

    fn end_of_turn(&mut self, _now_ms: u64) {}
}

#[test]
fn deadlines_fire_in_order_and_wants_close_flushes_first() {
    let handle = Engine::start(loopback_config(vec![0]), |_| Ticker).expect("engine starts");
    let clients: Vec<_> = (0..5)
        .map(|_| {
            let start = Instant::now();
            (start, connect(&handle))
        })
        .collect();
    for (start, mut stream) in clients {
        let mut got = Vec::new();
        // wants_close after the third tick: the engine sends "T3;" and then closes.
        stream.read_to_end(&mut got).expect("ticks then close");
        assert_eq!(got, b"T1;T2;T3;");
        // Timers must never fire early: 40 + 20 + 20 ms after the accept (1 ms of clock
        // granularity allowed).
        assert!(
            start.elapsed() >= Duration::from_millis(79),
            "{:?}",
            start.elapsed()
        );
    }
    assert_eq!(final_counters(handle).closed_app_requested, 5);
}

/// Starts with a 30 ms deadline and moves it to 300 ms after the first received byte; ticks
/// say which deadline produced them.
struct Mover;

struct MoverConn {
    deadline_ms: Option<u64>,
    moved: bool,
    out: Vec<u8>,
}

impl App for Mover {
    type Conn = MoverConn;

    fn accept(
        &mut self,
        now_ms: u64,
        _id: ConnId,
        _peer: SocketAddr,
        _listener: Listener,
    ) -> Option<MoverConn> {
        Some(MoverConn {
            deadline_ms: Some(now_ms + 30),
            moved: false,
            out: Vec::new(),
        })
    }

    fn on_recv(
        &mut self,
        now_ms: u64,
        conn: &mut MoverConn,
        _bytes: &[u8],
    ) -> Result<(), AppError> {
        if !conn.moved && conn.deadline_ms.is_some() {
            conn.moved = true;
            conn.deadline_ms = Some(now_ms + 300);
        }
        Ok(())
    }

    fn poll_transmit(&mut self, _now_ms: u64, conn: &mut MoverConn, buf: &mut Vec<u8>) {
        std::mem::swap(buf, &mut conn.out);
    }

    fn deadline(&self, conn: &MoverConn) -> Option<u64> {
        conn.deadline_ms
    }

    fn on_timeout(&mut self, _now_ms: u64, conn: &mut MoverConn) {
        conn.out.push(if conn.moved { b'M' } else { b'T' });
        conn.deadline_ms = None;
    }

    fn wants_close(&self, _conn: &MoverConn) -> bool {
        false
    }

    fn on_closed(&mut self, _now_ms: u64, _conn: MoverConn, _reason: CloseReason) {}

    fn end_of_turn(&mut self, _now_ms: u64) {}
}

#[test]
fn a_moved_deadline_does_not_fire_at_the_old_time() {
    let handle = Engine::start(loopback_config(vec![0]), |_| Mover).expect("engine starts");
    for _ in 0..3 {
        let mut stream = connect(&handle);
        let sent = Instant::now();
        stream.write_all(b"m").expect("write");
        let mut tick = [0u8; 1];
        stream.read_exact(&mut tick).expect("a tick");
        match tick[0] {
            // The old deadline legitimately fired before the byte was processed (a slow run).
            b'T' => {}
            // The moved deadline: never earlier than 300 ms after the byte was sent. A stale
            // heap entry for the old deadline would show up here at about 30 ms.
            b'M' => assert!(
                sent.elapsed() >= Duration::from_millis(299),
                "{:?}",
                sent.elapsed()
            ),
            other => panic!("unexpected byte {other}"),
        }
    }
    handle.shutdown().expect("clean shutdown");
}

// ----- outgoing connections -----

#[derive(Debug)]
enum Outgoing {
    Connected(u32),
    Received(u32, Vec<u8>),
    Closed(u32, CloseReason),
}

struct Dialer {
    queue: Arc<Mutex<VecDeque<(SocketAddr, u32)>>>,
    events: mpsc::Sender<Outgoing>,
}

struct DialConn {
    tag: u32,
    out: Vec<u8>,
}

impl App for Dialer {
    type Conn = DialConn;

    fn accept(
        &mut self,
        _now_ms: u64,
        _id: ConnId,
        _peer: SocketAddr,
        _listener: Listener,
    ) -> Option<DialConn> {
        None
    }

    fn poll_connect(&mut self, _now_ms: u64) -> Option<(SocketAddr, DialConn)> {
        let (addr, tag) = self.queue.lock().ok()?.pop_front()?;
        Some((
            addr,
            DialConn {
                tag,
                out: Vec::new(),
            },
        ))
    }

    fn on_connected(&mut self, _now_ms: u64, _id: ConnId, conn: &mut DialConn) {
        conn.out.extend_from_slice(b"HELLO");
        let _ = self.events.send(Outgoing::Connected(conn.tag));
    }

    fn on_recv(&mut self, _now_ms: u64, conn: &mut DialConn, bytes: &[u8]) -> Result<(), AppError> {
        let _ = self
            .events
            .send(Outgoing::Received(conn.tag, bytes.to_vec()));
        Ok(())
    }

    fn poll_transmit(&mut self, _now_ms: u64, conn: &mut DialConn, buf: &mut Vec<u8>) {
        std::mem::swap(buf, &mut conn.out);
    }

    fn deadline(&self, _conn: &DialConn) -> Option<u64> {
        None
    }

    fn on_timeout(&mut self, _now_ms: u64, _conn: &mut DialConn) {}

    fn wants_close(&self, _conn: &DialConn) -> bool {
        false
    }

    fn on_closed(&mut self, _now_ms: u64, conn: DialConn, reason: CloseReason) {
        let _ = self.events.send(Outgoing::Closed(conn.tag, reason));
    }

    fn end_of_turn(&mut self, _now_ms: u64) {}
}

type DialQueue = Arc<Mutex<VecDeque<(SocketAddr, u32)>>>;

fn start_dialer(connect_timeout_ms: u64) -> (EngineHandle, DialQueue, mpsc::Receiver<Outgoing>) {
    let queue: DialQueue = Arc::default();
    let (tx, rx) = mpsc::channel();
    let config = EngineConfig {
        listen: Vec::new(),
        connect_timeout_ms,
        ..loopback_config(vec![0])
    };
    let app_queue = Arc::clone(&queue);
    let handle = Engine::start(config, move |_| Dialer {
        queue: Arc::clone(&app_queue),
        events: tx.clone(),
    })
    .expect("engine starts");
    (handle, queue, rx)
}

fn dial(handle: &EngineHandle, queue: &DialQueue, addr: SocketAddr, tag: u32) {
    queue.lock().expect("queue").push_back((addr, tag));
    // The shard sleeps with nothing to do: only the waker makes it poll_connect.
    handle.waker(0).expect("shard 0").wake().expect("wake");
}

fn accept_within(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).expect("nonblocking");
    let start = Instant::now();
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).expect("blocking");
                stream.set_read_timeout(Some(WAIT)).expect("read timeout");
                return stream;
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                assert!(start.elapsed() < WAIT, "the engine never connected");
                thread::sleep(Duration::from_millis(2));
            }
            Err(error) => panic!("accept: {error}"),
        }
    }
}

#[test]
fn outgoing_connect_exchanges_bytes_and_failures_are_reported() {
    let (handle, queue, events) = start_dialer(5000);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    dial(&handle, &queue, listener.local_addr().expect("addr"), 1);
    let mut peer = accept_within(&listener);
    let mut hello = [0u8; 5];
    peer.read_exact(&mut hello).expect("HELLO arrives");
    assert_eq!(&hello, b"HELLO");
    assert!(matches!(
        events.recv_timeout(WAIT),
        Ok(Outgoing::Connected(1))
    ));
    peer.write_all(b"WORLD").expect("write");
    let mut received = Vec::new();
    while received.len() < 5 {
        match events.recv_timeout(WAIT) {
            Ok(Outgoing::Received(1, bytes)) => received.extend(bytes),
            other => panic!("expected WORLD, got {other:?}"),
        }
    }
    assert_eq!(received, b"WORLD");

    // A closed port: connection refused, reported through on_closed.
    let closed_port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    dial(&handle, &queue, closed_port, 2);
    match events.recv_timeout(WAIT) {
        Ok(Outgoing::Closed(2, reason)) => {
            assert_eq!(
                reason,
                CloseReason::ConnectFailed(Errno(libc::ECONNREFUSED))
            )
        }
        other => panic!("expected a refused connect, got {other:?}"),
    }
    let counters = handle.counters();
    assert_eq!(counters.connected, 1);
    assert_eq!(counters.connect_failed, 1);

    // The peer closing is reported too.
    drop(peer);
    match events.recv_timeout(WAIT) {
        Ok(Outgoing::Closed(1, reason)) => assert_eq!(reason, CloseReason::PeerClosed),
        other => panic!("expected the peer's close, got {other:?}"),
    }
    handle.shutdown().expect("clean shutdown");
}

#[test]
fn outgoing_connect_times_out() {
    // A listener whose accept queue is full drops new SYNs, so a connect to it hangs until
    // the engine's connect timeout cancels it.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    // SAFETY: listen(2) on a socket this test owns; it only changes the backlog to zero.
    assert_eq!(
        unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 0) },
        0
    );
    let addr = listener.local_addr().expect("addr");
    let _filler = TcpStream::connect(addr).expect("the one queued connection");
    let (handle, queue, events) = start_dialer(150);
    let start = Instant::now();
    dial(&handle, &queue, addr, 3);
    match events.recv_timeout(WAIT) {
        Ok(Outgoing::Closed(3, reason)) => assert_eq!(reason, CloseReason::ConnectTimedOut),
        other => panic!("expected a connect timeout, got {other:?}"),
    }
    assert!(start.elapsed() >= Duration::from_millis(149));
    assert_eq!(handle.counters().connect_timed_out, 1);
    handle.shutdown().expect("clean shutdown");
}

// ----- start-up errors -----

#[test]
fn start_reports_bad_configuration_and_cores() {
    let bad = EngineConfig {
        recv_buffer_count: 3,
        ..loopback_config(vec![0])
    };
    let error = Engine::start(bad, |_| Ticker).err().expect("refused");
    assert!(error.to_string().contains("recv_buffer_count"), "{error}");

    let no_such_core = EngineConfig {
        cores: vec![100_000],
        ..loopback_config(Vec::new())
    };
    let error = Engine::start(no_such_core, |_| Ticker)
        .err()
        .expect("refused");
    assert!(error.to_string().contains("sched_setaffinity"), "{error}");
}

// ----- cross-connection work through poll_ready -----

/// Forwards what one member sends to every other member. The receivers are not touched by IO,
/// so only `poll_ready` gets their transmits polled.
#[derive(Default)]
struct Hub {
    members: Vec<ConnId>,
    outbox: std::collections::HashMap<ConnId, Vec<u8>>,
    ready: VecDeque<ConnId>,
}

impl App for Hub {
    type Conn = ConnId;

    fn accept(
        &mut self,
        _now_ms: u64,
        id: ConnId,
        _peer: SocketAddr,
        _listener: Listener,
    ) -> Option<ConnId> {
        self.members.push(id);
        Some(id)
    }

    fn on_recv(&mut self, _now_ms: u64, conn: &mut ConnId, bytes: &[u8]) -> Result<(), AppError> {
        for other in self.members.iter().filter(|m| *m != conn) {
            self.outbox
                .entry(*other)
                .or_default()
                .extend_from_slice(bytes);
            self.ready.push_back(*other);
        }
        Ok(())
    }

    fn poll_transmit(&mut self, _now_ms: u64, conn: &mut ConnId, buf: &mut Vec<u8>) {
        if let Some(out) = self.outbox.get_mut(conn) {
            std::mem::swap(buf, out);
        }
    }

    fn deadline(&self, _conn: &ConnId) -> Option<u64> {
        None
    }

    fn on_timeout(&mut self, _now_ms: u64, _conn: &mut ConnId) {}

    fn wants_close(&self, _conn: &ConnId) -> bool {
        false
    }

    fn on_closed(&mut self, _now_ms: u64, conn: ConnId, _reason: CloseReason) {
        self.members.retain(|m| *m != conn);
        self.outbox.remove(&conn);
    }

    fn end_of_turn(&mut self, _now_ms: u64) {}

    fn poll_ready(&mut self) -> Option<ConnId> {
        self.ready.pop_front()
    }
}

#[test]
fn poll_ready_drives_transmits_on_connections_without_io() {
    let handle = Engine::start(loopback_config(vec![0]), |_| Hub::default()).expect("starts");
    let mut a = connect(&handle);
    let mut b = connect(&handle);
    let mut c = connect(&handle);
    eventually("three members", || handle.counters().accepted == 3);
    a.write_all(b"hi all").expect("write");
    for stream in [&mut b, &mut c] {
        let mut got = [0u8; 6];
        stream.read_exact(&mut got).expect("forwarded");
        assert_eq!(&got, b"hi all");
    }
    c.write_all(b"back").expect("write");
    for stream in [&mut a, &mut b] {
        let mut got = [0u8; 4];
        stream.read_exact(&mut got).expect("forwarded");
        assert_eq!(&got, b"back");
    }
    handle.shutdown().expect("clean shutdown");
}

// ----- shutdown with a transmit stuck behind a peer that never reads -----

struct Firehose;

impl App for Firehose {
    type Conn = Vec<u8>;

    fn accept(
        &mut self,
        _now_ms: u64,
        _id: ConnId,
        _peer: SocketAddr,
        _listener: Listener,
    ) -> Option<Vec<u8>> {
        // Far more than loopback socket buffers hold, so the send stays in flight.
        Some(vec![0x5a; 4 * 1024 * 1024])
    }

    fn on_recv(
        &mut self,
        _now_ms: u64,
        _conn: &mut Vec<u8>,
        _bytes: &[u8],
    ) -> Result<(), AppError> {
        Ok(())
    }

    fn poll_transmit(&mut self, _now_ms: u64, conn: &mut Vec<u8>, buf: &mut Vec<u8>) {
        std::mem::swap(buf, conn);
    }

    fn deadline(&self, _conn: &Vec<u8>) -> Option<u64> {
        None
    }

    fn on_timeout(&mut self, _now_ms: u64, _conn: &mut Vec<u8>) {}

    fn wants_close(&self, _conn: &Vec<u8>) -> bool {
        false
    }

    fn on_closed(&mut self, _now_ms: u64, _conn: Vec<u8>, _reason: CloseReason) {}

    fn end_of_turn(&mut self, _now_ms: u64) {}
}

#[test]
fn shutdown_cancels_a_stuck_transmit_after_the_grace_period() {
    let config = EngineConfig {
        shutdown_grace_ms: 100,
        ..loopback_config(vec![0])
    };
    let handle = Engine::start(config, |_| Firehose).expect("starts");
    let counters = handle.shard_counters(0).expect("shard 0");
    let _silent = connect(&handle);
    eventually("the send to start", || counters.snapshot().bytes_out > 0);
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = done_tx.send(handle.shutdown().map_err(|e| e.to_string()));
    });
    done_rx
        .recv_timeout(WAIT)
        .expect("shutdown does not wait for a peer that never reads")
        .expect("clean shutdown");
    let counters = counters.snapshot();
    assert_eq!(counters.closed_shutdown, 1);
    assert!(counters.bytes_out < 4 * 1024 * 1024);
}

// ----- admission: per-address limits and closing another connection -----

/// A connection to the engine from the loopback address `src` (127.0.0.2, ...).
fn connect_from(handle: &EngineHandle, src: &str) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let to = handle.local_addr().expect("listening");
    let stream = rt
        .block_on(async {
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.bind(format!("{src}:0").parse().expect("address"))?;
            sock.connect(to).await?.into_std()
        })
        .expect("connect from another loopback address");
    stream.set_nonblocking(false).expect("blocking");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    stream.set_write_timeout(Some(WAIT)).expect("write timeout");
    stream
}

#[test]
fn one_address_past_its_limit_is_refused_on_every_shard_while_others_are_served() {
    let config = EngineConfig {
        max_connections_per_ip: 3,
        ..loopback_config(vec![0, 1])
    };
    let (handle, _events) = start_echo(config, None, false);
    let mut kept: Vec<TcpStream> = (0..3).map(|_| connect_from(&handle, "127.0.0.2")).collect();
    for stream in &mut kept {
        round_trip(stream, b"in");
    }
    // The kernel spreads one address's connections over both shards; the count is shared.
    let mut flood: Vec<TcpStream> = (0..8).map(|_| connect_from(&handle, "127.0.0.2")).collect();
    for stream in &mut flood {
        let _ = stream.write_all(b"x");
        expect_closed(stream);
    }
    assert_eq!(handle.counters().refused_per_ip, 8);
    let mut other = connect(&handle);
    round_trip(&mut other, b"another address is served");
    // A closed connection gives its address a slot back.
    drop(kept.pop());
    eventually("the address's freed slot to be reused", || {
        let mut stream = connect_from(&handle, "127.0.0.2");
        if stream.write_all(b"again").is_err() {
            return false;
        }
        let mut back = [0u8; 5];
        stream.read_exact(&mut back).is_ok() && &back == b"again"
    });
    handle.shutdown().expect("clean shutdown");
}

/// Echoes; a `K` received on one connection closes every other one through `poll_close`.
struct Closer {
    open: Vec<ConnId>,
    to_close: Vec<ConnId>,
}

struct CloserConn {
    id: ConnId,
    out: Vec<u8>,
}

impl App for Closer {
    type Conn = CloserConn;

    fn accept(
        &mut self,
        _now_ms: u64,
        id: ConnId,
        _peer: SocketAddr,
        _listener: Listener,
    ) -> Option<CloserConn> {
        self.open.push(id);
        Some(CloserConn {
            id,
            out: Vec::new(),
        })
    }

    fn on_recv(
        &mut self,
        _now_ms: u64,
        conn: &mut CloserConn,
        bytes: &[u8],
    ) -> Result<(), AppError> {
        if bytes.contains(&b'K') {
            let me = conn.id;
            self.to_close
                .extend(self.open.iter().copied().filter(|id| *id != me));
        }
        conn.out.extend_from_slice(bytes);
        Ok(())
    }

    fn poll_transmit(&mut self, _now_ms: u64, conn: &mut CloserConn, buf: &mut Vec<u8>) {
        std::mem::swap(buf, &mut conn.out);
    }

    fn deadline(&self, _conn: &CloserConn) -> Option<u64> {
        None
    }

    fn on_timeout(&mut self, _now_ms: u64, _conn: &mut CloserConn) {}

    fn wants_close(&self, _conn: &CloserConn) -> bool {
        false
    }

    fn on_closed(&mut self, _now_ms: u64, conn: CloserConn, _reason: CloseReason) {
        self.open.retain(|id| *id != conn.id);
    }

    fn end_of_turn(&mut self, _now_ms: u64) {}

    fn poll_close(&mut self) -> Option<(ConnId, AppError)> {
        self.to_close.pop().map(|id| (id, AppError(9)))
    }
}

#[test]
fn the_app_can_close_another_connection_through_poll_close() {
    let handle = Engine::start(loopback_config(vec![0]), |_| Closer {
        open: Vec::new(),
        to_close: Vec::new(),
    })
    .expect("engine starts");
    let mut others: Vec<TcpStream> = (0..3).map(|_| connect(&handle)).collect();
    for stream in &mut others {
        round_trip(stream, b"in");
    }
    let mut killer = connect(&handle);
    round_trip(&mut killer, b"K");
    for stream in &mut others {
        expect_closed(stream);
    }
    round_trip(&mut killer, b"still served");
    let counters = final_counters(handle);
    assert_eq!(counters.closed_app_error, 3);
}

#[test]
fn a_second_engine_on_a_listening_address_is_refused() {
    let (first, _events) = start_echo(loopback_config(vec![0]), None, false);
    let addr = first.local_addr().expect("listening");
    let config = EngineConfig {
        listen: vec![(Listener::FIRST, addr)],
        ..loopback_config(vec![0])
    };
    let (tx, _rx) = mpsc::channel();
    let second = Engine::start(config, move |shard| Echo {
        shard,
        events: tx.clone(),
        poison: None,
        log_turns: false,
    });
    match second {
        Err(error) => {
            let text = error.to_string();
            assert!(
                text.contains(&addr.to_string()) && text.contains("in use"),
                "{text}"
            );
        }
        Ok(_) => panic!("a second engine joined {addr} through SO_REUSEPORT"),
    }
    let mut stream = connect(&first);
    round_trip(&mut stream, b"the first engine still serves");
    first.shutdown().expect("clean shutdown");
}

// ----- the app's own deadline and cross-thread wakes, on a shard with no connection -----

#[derive(Debug, PartialEq)]
enum Tick {
    /// `on_app_deadline` ran for the deadline `at`, at `now`.
    Deadline { at: u64, now: u64 },
    /// The `end_of_turn` that followed an `on_app_deadline`.
    TurnAfterDeadline,
    /// An `end_of_turn` saw a new request count from another thread.
    Request(u64),
}

struct Idle {
    deadline: Option<u64>,
    /// Intervals of the deadlines still to come, each set from the one before.
    intervals: VecDeque<u64>,
    deadline_ran: bool,
    requests: Arc<AtomicU64>,
    seen_requests: u64,
    events: mpsc::Sender<Tick>,
}

impl App for Idle {
    type Conn = ();

    fn accept(
        &mut self,
        _now_ms: u64,
        _id: ConnId,
        _peer: SocketAddr,
        _listener: Listener,
    ) -> Option<()> {
        None
    }

    fn on_recv(&mut self, _now_ms: u64, _conn: &mut (), _bytes: &[u8]) -> Result<(), AppError> {
        Ok(())
    }

    fn poll_transmit(&mut self, _now_ms: u64, _conn: &mut (), _buf: &mut Vec<u8>) {}

    fn deadline(&self, _conn: &()) -> Option<u64> {
        None
    }

    fn on_timeout(&mut self, _now_ms: u64, _conn: &mut ()) {}

    fn wants_close(&self, _conn: &()) -> bool {
        false
    }

    fn on_closed(&mut self, _now_ms: u64, _conn: (), _reason: CloseReason) {}

    fn end_of_turn(&mut self, _now_ms: u64) {
        if std::mem::take(&mut self.deadline_ran) {
            let _ = self.events.send(Tick::TurnAfterDeadline);
        }
        let requests = self.requests.load(Ordering::SeqCst);
        if requests != self.seen_requests {
            self.seen_requests = requests;
            let _ = self.events.send(Tick::Request(requests));
        }
    }

    fn app_deadline(&self) -> Option<u64> {
        self.deadline
    }

    fn on_app_deadline(&mut self, now_ms: u64) {
        let at = self.deadline.expect("called only with a deadline");
        let _ = self.events.send(Tick::Deadline { at, now: now_ms });
        self.deadline = self.intervals.pop_front().map(|interval| now_ms + interval);
        self.deadline_ran = true;
    }
}

/// An engine with no listener and no connection, whose one app is a [`Idle`].
fn start_idle(
    first_in_ms: Option<u64>,
    intervals: &[u64],
) -> (EngineHandle, Arc<AtomicU64>, mpsc::Receiver<Tick>) {
    let (tx, rx) = mpsc::channel();
    let requests = Arc::new(AtomicU64::new(0));
    let shared = Arc::clone(&requests);
    let intervals: VecDeque<u64> = intervals.iter().copied().collect();
    let config = EngineConfig {
        listen: Vec::new(),
        ..loopback_config(vec![0])
    };
    let handle = Engine::start(config, move |_| Idle {
        deadline: first_in_ms.map(|ms| now_ms() + ms),
        intervals: intervals.clone(),
        deadline_ran: false,
        requests: Arc::clone(&shared),
        seen_requests: 0,
        events: tx.clone(),
    })
    .expect("engine starts");
    (handle, requests, rx)
}

#[test]
fn app_deadline_wakes_an_idle_shard() {
    // Nothing else would ever end this shard's wait: no listener, no connection, no waker.
    let (handle, _requests, events) = start_idle(Some(30), &[20, 20]);
    for round in 0..3 {
        match events.recv_timeout(WAIT) {
            Ok(Tick::Deadline { at, now }) => {
                assert!(
                    now >= at,
                    "round {round}: ran at {now}, before its deadline {at}"
                )
            }
            other => panic!("round {round}: expected on_app_deadline, got {other:?}"),
        }
        assert_eq!(
            events.recv_timeout(WAIT),
            Ok(Tick::TurnAfterDeadline),
            "round {round}: end_of_turn follows on_app_deadline"
        );
    }
    // The app cleared its deadline: it does not run again.
    assert_eq!(
        events.recv_timeout(Duration::from_millis(200)),
        Err(mpsc::RecvTimeoutError::Timeout)
    );
    handle.shutdown().expect("clean shutdown");
}

#[test]
fn a_waker_from_another_thread_runs_end_of_turn() {
    let (handle, requests, events) = start_idle(None, &[]);
    let waker = handle.waker(0).expect("shard 0");
    for request in 1..=100 {
        requests.store(request, Ordering::SeqCst);
        let waker = waker.clone();
        // From another thread, as the HTTP API would.
        thread::spawn(move || waker.wake().expect("wake"))
            .join()
            .expect("waking thread");
        let got = events.recv_timeout(WAIT);
        if got != Ok(Tick::Request(request)) {
            // A shard deaf to its waker would also never see the shutdown request: do not
            // join it (dropping the handle would), fail.
            std::mem::forget(handle);
            panic!("wake {request}: expected end_of_turn to see it, got {got:?}");
        }
    }
    handle.shutdown().expect("clean shutdown");
}

// ----- several listeners on one engine -----

/// Answers the first byte of every connection with the connection's listener tag and the shard
/// that accepted it, and reports both.
struct Tagger {
    shard: usize,
    accepted: mpsc::Sender<(usize, Listener)>,
}

struct TaggerConn {
    answer: [u8; 2],
    out: Vec<u8>,
}

impl App for Tagger {
    type Conn = TaggerConn;

    fn accept(
        &mut self,
        _now_ms: u64,
        _id: ConnId,
        _peer: SocketAddr,
        listener: Listener,
    ) -> Option<TaggerConn> {
        let _ = self.accepted.send((self.shard, listener));
        Some(TaggerConn {
            answer: [listener.0 as u8, self.shard as u8],
            out: Vec::new(),
        })
    }

    fn on_recv(
        &mut self,
        _now_ms: u64,
        conn: &mut TaggerConn,
        _bytes: &[u8],
    ) -> Result<(), AppError> {
        conn.out.extend_from_slice(&conn.answer);
        Ok(())
    }

    fn poll_transmit(&mut self, _now_ms: u64, conn: &mut TaggerConn, buf: &mut Vec<u8>) {
        std::mem::swap(buf, &mut conn.out);
    }

    fn deadline(&self, _conn: &TaggerConn) -> Option<u64> {
        None
    }

    fn on_timeout(&mut self, _now_ms: u64, _conn: &mut TaggerConn) {}

    fn wants_close(&self, _conn: &TaggerConn) -> bool {
        false
    }

    fn on_closed(&mut self, _now_ms: u64, _conn: TaggerConn, _reason: CloseReason) {}

    fn end_of_turn(&mut self, _now_ms: u64) {}
}

const AMQP_LIKE: Listener = Listener(7);

fn start_tagger(
    listen: Vec<(Listener, SocketAddr)>,
) -> Result<(EngineHandle, mpsc::Receiver<(usize, Listener)>), lior::engine::net::EngineError> {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let config = EngineConfig {
        listen,
        ..loopback_config(vec![0, 1])
    };
    let handle = Engine::start(config, move |shard| Tagger {
        shard,
        accepted: tx.lock().expect("sender").clone(),
    })?;
    Ok((handle, rx))
}

#[test]
fn connections_on_each_listener_reach_the_app_with_its_tag_on_every_shard() {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let (handle, accepted) =
        start_tagger(vec![(Listener::FIRST, any), (AMQP_LIKE, any)]).expect("engine starts");
    let first = handle
        .local_addr_of(Listener::FIRST)
        .expect("first listener");
    let second = handle.local_addr_of(AMQP_LIKE).expect("second listener");
    assert_ne!(first.port(), second.port());
    assert_eq!(handle.local_addr(), Some(first));
    assert_eq!(
        handle.local_addrs(),
        &[(Listener::FIRST, first), (AMQP_LIKE, second)]
    );
    assert_eq!(handle.local_addr_of(Listener(3)), None);

    // The kernel spreads each listener's connections over the shards by a hash of the
    // addresses: with 48 connections per listener, both shards see each listener (the chance
    // that one does not is 2^-47 per listener).
    let mut seen = std::collections::BTreeSet::new();
    let mut kept = Vec::new();
    for round in 0..48 {
        for (tag, addr) in [(Listener::FIRST, first), (AMQP_LIKE, second)] {
            let mut stream = TcpStream::connect(addr).expect("connect");
            stream.set_read_timeout(Some(WAIT)).expect("timeout");
            stream.write_all(&[round]).expect("write");
            let mut answer = [0u8; 2];
            stream.read_exact(&mut answer).expect("the app answers");
            assert_eq!(
                answer[0], tag.0 as u8,
                "connection to {addr} tagged {answer:?}"
            );
            seen.insert((usize::from(answer[1]), tag));
            kept.push(stream);
        }
    }
    let expected: std::collections::BTreeSet<_> = [0, 1]
        .into_iter()
        .flat_map(|shard| [(shard, Listener::FIRST), (shard, AMQP_LIKE)])
        .collect();
    assert_eq!(seen, expected, "every shard accepts on every listener");
    // What accept reported agrees with what the connections were told.
    let reported: Vec<_> = accepted.try_iter().collect();
    assert_eq!(reported.len(), 96);
    assert_eq!(reported.iter().filter(|(_, l)| *l == AMQP_LIKE).count(), 48);
    drop(kept);
    let counters = final_counters(handle);
    assert_eq!(counters.accepted, 96);
}

#[test]
fn one_listener_that_cannot_bind_fails_the_start_naming_its_address() {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    // 192.0.2.1 (TEST-NET-1, RFC 5737) is not an address of this machine: its bind fails with
    // EADDRNOTAVAIL after the first listener was bound.
    let foreign: SocketAddr = "192.0.2.1:5672".parse().expect("address");
    let error = start_tagger(vec![(Listener::FIRST, any), (AMQP_LIKE, foreign)])
        .err()
        .expect("the start fails");
    let text = error.to_string();
    assert!(text.contains("192.0.2.1:5672"), "{text}");
    assert!(
        matches!(error, lior::engine::net::EngineError::Listen { addr, .. } if addr == foreign),
        "{error:?}"
    );

    // A second listener on an address another socket holds is refused the same way, naming it.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    let error = start_tagger(vec![(Listener::FIRST, any), (AMQP_LIKE, taken_addr)])
        .err()
        .expect("the start fails");
    assert!(
        error.to_string().contains(&taken_addr.to_string()),
        "{error}"
    );

    // The first listener of a failed start was released: a new engine can start at once.
    let (handle, _accepted) = start_tagger(vec![(Listener::FIRST, any)]).expect("engine starts");
    handle.shutdown().expect("clean shutdown");
}

#[test]
fn listener_tags_must_be_unique() {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let error = start_tagger(vec![(AMQP_LIKE, any), (AMQP_LIKE, any)])
        .err()
        .expect("refused");
    assert!(error.to_string().contains("same Listener tag"), "{error}");
    let config = EngineConfig::listening_on(any);
    assert_eq!(config.listen, vec![(Listener::FIRST, any)]);
}
